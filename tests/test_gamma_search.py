"""The gamma search (lib.search): a monotone spline space whose specs round-trip through the params loader, a
persisted NSGA-II study that resumes after an interruption and adds nothing once complete, disjoint seed ranges,
and the held-out hypervolume comparison with its measurement cache."""
import shutil

import numpy as np
import optuna
import pytest

from lib.config import RunConfig
from lib.errors import ConfigError
from lib.evaluate import MetricsConfig
from lib.methods import Method, SweepConfig
from lib.runs import RunPaths
from lib.schedules import Spline, parse
from lib.search.front import NoSquare, greedy_subset, unit_hypervolume, unit_points
from lib.search.heldout import comparison, hypervolume_table, measure_ranges, other_metrics_table
from lib.search.space import SearchConfig, ordered, param_names, spline_of, unit_of
from lib.search.presets import searched_presets
from lib.search.study import (export_front, load_study, open_search, run_search, seed_ranges, selection_front,
                              trials_table)

from conftest import TOY

# ---- the search space -----------------------------------------------------------------------------------------


def test_ordered_is_a_monotone_bijection_with_uniform_order_statistics():
    rng = np.random.default_rng(0)
    u = rng.uniform(size=(20000, 4))
    v = np.array([ordered(row) for row in u])  # (n, 4)
    assert (np.diff(v, axis=1) >= 0).all() and (v >= 0).all() and (v <= 1).all()
    np.testing.assert_allclose([unit_of(row) for row in v[:200]], u[:200], atol=1e-9)
    # uniform ordered 4-tuples: E[v_j] = j / 5
    np.testing.assert_allclose(v.mean(0), np.arange(1, 5) / 5, atol=0.01)


@pytest.mark.parametrize("k,free_positions,free_ends", [(1, False, False), (3, True, False), (4, True, True),
                                                        (2, False, True), (0, True, True)])
def test_every_trial_is_a_monotone_spline_whose_spec_round_trips(k, free_positions, free_ends):
    cfg = SearchConfig(control_points=k, free_positions=free_positions, free_ends=free_ends)
    names = param_names(cfg)
    assert len(names) == cfg.dimension
    rng = np.random.default_rng(k)
    draws = [rng.uniform(size=len(names)) for _ in range(200)]
    draws += [np.zeros(len(names)), np.ones(len(names)), np.full(len(names), 1e-9)]  # the cube's corners
    s = np.linspace(0, 1, 1001)
    for u in draws:
        sp = spline_of(dict(zip(names, u)), cfg)
        assert isinstance(sp, Spline) and len(sp.points) == k + 2
        xs, gs = np.array(sp.points).T
        assert xs[0] == 0 and xs[-1] == 1 and (np.diff(xs) > 0).all()
        assert (np.diff(gs) >= 0).all()
        if not free_ends:
            assert sp(0.0) == pytest.approx(0.0, abs=1e-12) and sp(1.0) == pytest.approx(1.0, abs=1e-12)
        assert (np.diff(sp(s)) >= -1e-12).all(), sp.spec  # PCHIP through monotone points stays monotone
        assert parse(sp.spec) == sp and parse(sp.spec).spec == sp.spec
        assert all(len(p.split("=")[1].split(".")[-1]) <= cfg.decimals for p in sp.spec[7:].split(","))
        SweepConfig(aig=(sp.spec,))  # what params accept
        assert Method("aig", sp.spec).setting == sp.spec


def test_fixed_positions_are_evenly_spaced():
    sp = spline_of({"g1": 0.5, "g2": 0.5, "g3": 0.5}, SearchConfig(control_points=3, free_positions=False))
    assert [p[0] for p in sp.points] == [0, 0.25, 0.5, 0.75, 1]


def test_search_config_errors_name_key_value_and_rule():
    with pytest.raises(ConfigError, match=r"search.diversity = 'bogus' is not allowed: expected one of fid"):
        SearchConfig(diversity="bogus")
    with pytest.raises(ConfigError, match=r"search.heldout_repeats = 1 is not allowed"):
        SearchConfig(heldout_repeats=1)
    with pytest.raises(ConfigError, match=r"search.power: bad gamma spec 'power:-1'"):
        SearchConfig(power=("power:-1",))
    with pytest.raises(ConfigError, match=r"search.control_points = 0"):
        SearchConfig(control_points=0)


def test_seed_ranges_are_disjoint_and_overlaps_are_refused():
    cfg = RunConfig(sweep=SweepConfig(samples_per_prompt=10))
    ranges = seed_ranges(cfg, SearchConfig(heldout_repeats=3), num_prompts=4)
    assert list(ranges) == ["selection", "heldout-0", "heldout-1", "heldout-2"]
    seeds = [{s for _, s in pairs} for pairs in ranges.values()]
    assert all(len(s) == 40 for s in seeds) and len(set().union(*seeds)) == 160
    assert not set().union(*seeds) & set(range(40))  # the run's own coverage seeds
    assert [j for j, _ in ranges["heldout-1"]] == [j for j, _ in ranges["selection"]]  # same prompts, paired layout
    with pytest.raises(ConfigError, match="overlap: selection"):
        seed_ranges(cfg, SearchConfig(selection_offset=0), num_prompts=4)
    with pytest.raises(ConfigError, match="overlap: selection"):
        seed_ranges(cfg, SearchConfig(selection_offset=100, heldout_offset=120), num_prompts=4)


def test_unit_square_hypervolume_and_greedy_subset():
    u = unit_points([[1.0, 0.9], [2.0, 0.1]], base=[1.0, 0.9], draft=[2.0, 0.1], maximize_div=True)
    np.testing.assert_allclose(u, [[0, 1], [1, 0]])
    u = unit_points([[1.0, 0.0], [2.0, 8.0]], base=[1.0, 0.0], draft=[2.0, 8.0], maximize_div=False)  # FID-like
    np.testing.assert_allclose(u, [[0, 1], [1, 0]])
    assert unit_hypervolume(u) == 0 and unit_hypervolume([[1, 1]]) == 1
    pts = np.array([[0.5, 0.5], [0.9, 0.2], [0.2, 0.9], [0.4, 0.4]])  # the last is dominated
    assert greedy_subset(pts, 10) == [0, 1, 2]
    assert greedy_subset(pts, 1) == [0]
    with pytest.raises(NoSquare, match="do not span"):
        unit_points([[1, 1]], base=[2.0, 0.9], draft=[1.0, 0.1], maximize_div=True)


# ---- the study on a small trained toy run ----------------------------------------------------------------------

SMALL = SearchConfig(trials=4, population=2, control_points=2, per_prompt=12, heldout_repeats=2, front_size=2,
                     power=("power:1", "power:3"), step=("step:0.5",), sigmoid=("sigmoid:10,0.5",))


@pytest.fixture(scope="module")
def run_root(toy, draft_run, tmp_path_factory):
    """A run folder laid out as notebook 01 leaves it: the toy base model and the DRaFT run."""
    root = tmp_path_factory.mktemp("search_run")
    (root / "models").mkdir()
    shutil.copy(toy.base_path, root / "models" / "base.safetensors")
    shutil.copytree(draft_run[2], root / "train" / "draft")  # adapter, log and train.json with the file records
    return root


def _cfg():
    return RunConfig(run="search", domain_config=TOY, sweep=SweepConfig(kl_lambdas=(), lora_scales=(0.0, 0.5, 1.0),
                                                                        samples_per_prompt=12, batch_size=256),
                     metrics=MetricsConfig(k=3))


def test_study_resumes_where_it_stopped_and_adds_nothing_when_complete(run_root):
    cfg, paths = _cfg(), RunPaths(run_root)
    run = open_search(cfg, paths, SMALL, force=True)
    first = run_search(run, n_trials=2)
    assert (first["stored_before"], first["added"], first["complete"]) == (0, 2, 2)
    assert (run_root / "gamma_search" / "study.db").exists()
    before = trials_table(run)
    again = run_search(open_search(cfg, paths, SMALL))  # a new process would do exactly this: reload from SQLite
    assert (again["stored_before"], again["added"], again["complete"]) == (2, 2, 4)
    after = trials_table(run)
    assert after.number.tolist() == [0, 1, 2, 3]
    assert after.iloc[:2][["spec", "reward", "recall"]].equals(before[["spec", "reward", "recall"]])
    assert run_search(run)["added"] == 0  # target reached: a re-execution adds no trials
    assert after.spec.map(lambda s: parse(s).spec == s).all() and (after.seconds > 0).all()


def test_interrupted_and_stale_trials_are_failed_and_the_search_completes(run_root, monkeypatch):
    cfg, paths = _cfg(), RunPaths(run_root)
    run = open_search(cfg, paths, SMALL, force=True)
    run_search(run, n_trials=1)
    real, calls = run.measure, []

    def interrupted(m, r):
        calls.append(m)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(run)
    monkeypatch.setattr(run, "measure", real)
    load_study(run).ask()  # a trial left RUNNING, as by a process that was killed
    out = run_search(run)
    assert len(calls) == 1 and out["stale_marked_failed"] == [2]
    assert (out["stored_before"], out["complete"], out["failed"]) == (1, 4, 2)


def test_a_fresh_study_with_the_same_seed_gives_the_same_trials(run_root):
    cfg, paths = _cfg(), RunPaths(run_root)
    a = open_search(cfg, paths, SMALL, force=True)
    run_search(a)
    first = trials_table(a)
    b = open_search(cfg, paths, SMALL, force=True)
    run_search(b)
    assert trials_table(b)[["spec", "reward", "recall"]].equals(first[["spec", "reward", "recall"]])


def test_heldout_comparison_remeasures_the_front_on_disjoint_seeds(run_root, monkeypatch):
    cfg, paths = _cfg(), RunPaths(run_root)
    run = open_search(cfg, paths, SMALL, force=True)
    run_search(run)
    trials = trials_table(run)
    front = selection_front(run, trials)
    chosen = front[front.chosen >= 0].sort_values("chosen")
    assert 1 <= len(chosen) <= SMALL.front_size and set(chosen.spec) <= set(trials.spec[trials.on_front])
    export_front(run, front)
    assert list(searched_presets(run_root)) == chosen.spec.tolist()
    fams = comparison(run, chosen.spec.tolist())
    assert [m.value for m in fams["lora_scale"]] == [0.5] and fams["kl"] == []
    measured = measure_ranges(run, fams)
    assert set(measured.range) == {"selection", "heldout-0", "heldout-1"}
    sel = measured[(measured.range == "selection") & (measured.family == "searched") & (measured.metric == "reward")]
    by_spec = dict(zip(trials.spec, trials.reward))
    assert all(by_spec[s] == v for s, v in zip(sel.setting, sel.value))  # the selection range is the study's seeds
    held = measured[(measured.range == "heldout-0") & (measured.family == "searched") & (measured.metric == "reward")]
    assert not np.allclose(held.value.to_numpy(), sel.value.to_numpy())  # other seeds, other samples
    table = hypervolume_table(measured, "recall")
    assert table.family.tolist() == ["searched", "power", "step", "sigmoid", "lora_scale", "union of families"]
    assert (table.ranges == 2).all() and table.hv_heldout.between(0, 1.5).all() and (table.ci95 >= 0).all()
    assert table.set_index("family").loc["power", "points"] == 2
    assert table.hv_selection.notna().tolist() == [True] + [False] * 5  # families are measured on held-out seeds only
    other = other_metrics_table(measured, "recall", ["fid", "recall", "lscd"]).set_index("metric")
    assert other.loc["recall", "searched"] == table.hv_heldout[0] and bool(other.loc["recall", "objective"])
    monkeypatch.setattr(run, "measure", lambda m, r: pytest.fail(f"{m.label} on {r} was measured again"))
    assert measure_ranges(run, fams).equals(measured)  # every measurement comes from gamma_search/measured.csv


def test_storage_is_optuna_sqlite_with_both_objectives(run_root):
    run = open_search(_cfg(), RunPaths(run_root), SMALL)
    study = optuna.load_study(study_name=load_study(run).study_name, storage=f"sqlite:///{run_root}/gamma_search/study.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]  # reward, recall


def test_searched_presets_are_empty_without_an_export_and_refuse_a_bad_spec(tmp_path):
    assert searched_presets(tmp_path) == ()
    (tmp_path / "gamma_search").mkdir()
    (tmp_path / "gamma_search" / "front.json").write_text('{"specs": ["spline:0=0,0.5=0.3,1=1", "power:0"]}')
    with pytest.raises(ValueError, match=r"front.json: bad gamma spec 'power:0'"):
        searched_presets(tmp_path)
