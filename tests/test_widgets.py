"""The gamma explorer (lib.explorer) without a browser: widget and mouse callbacks -> specs, refusals, the paired-seed
preview on the toy and on the tiny SD pipeline (one backend for both), and the export into a params file."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.backend_bases import MouseEvent

from explorer_run import toy_run
from lib.config import load
from lib.domains.sd.domain import SDDomain
from lib.domains.toy import ToyDomain
from lib.drawing import STYLE
from lib.explorer import (PRESETS, ExplorerState, GammaExplorer, Preview, Previewer, append_to_params, open_explorer,
                          preview_pairs, torch_threads)
from lib.explorer.drawing import draw_pareto
from lib.explorer.entry import run_previewer
from lib.runs import make_domain
from lib.schedules import parse

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    with torch_threads(1):
        return toy_run(tmp_path_factory.getbasetemp() / "explorer_run")


class CountingBackend:
    """A preview backend that records what it was asked and what it drew (the interface the view relies on)."""

    def __init__(self, state, prompts=("p0", "p1")):
        self.num_steps, self.prompts = state.num_steps, list(prompts)
        self.calls, self.draws = [], []

    def preview(self, schedule, num_steps=None):
        self.calls.append((schedule.spec, num_steps))
        groups = np.repeat(np.arange(len(self.prompts)), 2)
        panels = {m: np.full((len(groups), 2), float(len(self.calls))) for m in ("base", "draft", "aig")}
        rows = [dict(method=m, reward=0.0, fid=0.0, n=len(groups)) for m in ("base", "draft", "aig")]
        return Preview(schedule.spec, panels, groups, self.prompts, pd.DataFrame(rows).set_index("method"),
                       num_steps=num_steps or 0)

    def draw_samples(self, ax, stored, prompt_index, color=None):
        self.draws.append((len(stored), sorted(set(prompt_index.tolist())), color))
        ax.scatter(stored[:, 0], stored[:, 1], color=color)


@pytest.fixture
def view():
    state = ExplorerState(num_steps=10)
    return GammaExplorer(state, CountingBackend(state))


def mouse(view, name, s, g, button=1, key=None):
    """Send a matplotlib mouse event at data point (s, g) of the curve plot through the canvas' callbacks."""
    canvas = view.curve_fig.canvas
    x, y = view.ax_curve.transData.transform((s, g))
    canvas.callbacks.process(name, MouseEvent(name, canvas, x, y, button=button, key=key))


def test_power_slider_gives_power_spec(view):
    view.family.value = "power"
    view.sliders[("power", "p")].value = 3
    assert view.state.spec == "power:3"
    assert view.spec.value == "power:3"
    assert view.backend.calls[-1] == ("power:3", 10)
    assert parse(view.state.spec)(0.5) == pytest.approx(1 - 0.5**3)


def test_family_and_presets(view):
    view.preset.value = "step:0.4"
    assert view.state.family == "step" and view.family.value == "step"
    assert view.sliders[("step", "c")].value == pytest.approx(0.4)
    assert view.sliders[("power", "p")].layout.display == "none"
    view.family.value = "sigmoid"
    view.sliders[("sigmoid", "k")].value = 20
    view.sliders[("sigmoid", "c")].value = 0.3
    assert view.state.spec == "sigmoid:20,0.3"
    assert view.preset.value == "sigmoid:20,0.3"  # a preset again
    view.preset.value = "tuned"
    assert view.state.spec == "tuned" and view.state.family == "const"
    for p in ("power:1", "power:1.25", "power:1.5", "power:2", "power:3", "power:4", "power:5"):
        assert p in PRESETS


def test_choosing_spline_starts_from_the_current_curve(view):
    view.preset.value = "power:2"
    view.family.value = "spline"
    assert view.state.spec == "spline:0=0,0.25=0.44,0.5=0.75,0.75=0.94,1=1"
    assert view.table.value.splitlines() == ["0=0", "0.25=0.44", "0.5=0.75", "0.75=0.94", "1=1"]
    assert view.spline_box.layout.display == ""


def test_click_adds_drag_moves_and_right_or_shift_click_removes(view):
    view.family.value = "spline"
    view.table.value = "0=0\n1=1"
    assert view.state.spec == "spline:0=0,1=1"
    mouse(view, "button_press_event", 0.5, 0.7)
    assert view.state.spec == "spline:0=0,0.5=0.7,1=1"
    assert "0.5=0.7" in view.table.value.splitlines()
    n = len(view.backend.calls)
    # drag: press on the point, move (curve only), release (preview)
    mouse(view, "button_press_event", 0.5, 0.7)
    mouse(view, "motion_notify_event", 0.55, 0.5)
    mouse(view, "motion_notify_event", 0.6, 0.4)
    assert view.state.spec == "spline:0=0,0.6=0.4,1=1"
    assert len(view.backend.calls) == n  # no preview while dragging
    mouse(view, "button_release_event", 0.6, 0.4)
    assert view.backend.calls[-1][0] == "spline:0=0,0.6=0.4,1=1"
    # clicks snap to the 0.01 grid
    mouse(view, "button_press_event", 0.30201, 0.1149)
    assert view.state.spec == "spline:0=0,0.3=0.11,0.6=0.4,1=1"
    mouse(view, "button_press_event", 0.6, 0.4, button=3)  # right click removes
    assert view.state.spec == "spline:0=0,0.3=0.11,1=1"
    mouse(view, "button_press_event", 0.3, 0.11, key="shift")  # shift-click removes
    assert view.state.spec == "spline:0=0,1=1"
    mouse(view, "button_press_event", 0.8, 0.2, button=3)  # right click on empty space: nothing
    assert view.state.spec == "spline:0=0,1=1"


def test_table_edit_round_trips(view):
    view.family.value = "spline"
    view.table.value = "# s = g\n0 = 0\n0.3=0.6, 0.7=0.9\n\n1=1\n"
    assert view.state.spec == "spline:0=0,0.3=0.6,0.7=0.9,1=1"
    assert view.table.value == "0=0\n0.3=0.6\n0.7=0.9\n1=1"
    assert parse(view.state.spec).spec == view.state.spec
    state = ExplorerState()
    assert state.load_spec(view.state.spec) and state.points_text() == view.table.value


def test_invalid_curves_are_refused_and_the_last_valid_curve_stays(view):
    view.family.value = "spline"
    view.table.value = "0=0\n1=1"
    n = len(view.backend.calls)
    mouse(view, "button_press_event", 1.0, 1.0, button=3)  # would leave one point
    assert view.state.spec == "spline:0=0,1=1"
    assert "refused" in view.message.value and "at least 2 control points" in view.message.value
    view.table.value = "0=0\n0.5=1.2\n1=1"  # typed values are not clamped
    assert view.state.spec == "spline:0=0,1=1" and "outside [0, 1]" in view.message.value
    assert view.table.value == "0=0\n0.5=1.2\n1=1"  # the typed text stays so it can be fixed
    view.table.value = "0=0\n0.5=x"
    assert "not s=g" in view.message.value
    mouse(view, "button_press_event", 0.0, 0.5)  # a second point at s = 0
    assert view.state.spec == "spline:0=0,1=1" and "already a control point" in view.message.value
    assert len(view.backend.calls) == n  # refused edits do not recompute the preview
    view.spec.value = "power:-1"
    assert view.state.spec == "spline:0=0,1=1" and "must be > 0" in view.message.value
    view.spec.value = "power:0.7"  # a typed valid spec loads
    assert view.state.spec == "power:0.7" and view.message.value == ""
    view.family.value = "step"
    assert view.state.set_param("c", 1.5) is False and view.state.spec == "step:0.5"
    view.family.value = "power"
    mouse(view, "button_press_event", 0.5, 0.5)  # clicks need the spline family
    assert view.state.spec == "power:0.7" and "spline family" in view.state.message
    assert ExplorerState().set_num_steps(0) is False


def test_non_monotone_curves_are_allowed_with_a_note():
    state = ExplorerState()
    assert state.set_points_text("0=0\n0.5=0.9\n0.7=0.3\n1=1")
    assert state.spec == "spline:0=0,0.5=0.9,0.7=0.3,1=1"
    assert state.message.startswith("note:") and "not monotone" in state.message
    assert state.load_spec("const:0.5") and "convention" in state.message


def test_markers_and_weights_at_the_step_indexed_time(view):
    view.preset.value = "power:2"
    view.steps.value = 4
    s = view.state.step_s()
    assert np.allclose(s, [1, 0.75, 0.5, 0.25])  # s_i = 1 - i/N, whatever the scheduler's timesteps
    base, tuned = view.state.step_weights()
    assert np.allclose(base, 1 - (1 - s) ** 2) and np.allclose(base + tuned, 1) and base[0] == 1
    assert view.backend.calls[-1] == ("power:2", 4)
    markers = [ln for ln in view.ax_curve.lines if ln.get_label().startswith("sampler steps")][0]
    assert np.allclose(markers.get_xdata(), s) and np.allclose(markers.get_ydata(), base)
    heights = [b.get_height() for b in view.ax_weights.patches]
    assert len(heights) == 8 and np.allclose(heights[:4], base) and np.allclose(heights[4:], tuned)
    assert ExplorerState(max_steps=50).set_num_steps(51) is False
    assert ExplorerState(max_steps=50).set_num_steps(50) is True


def test_preview_cells_are_drawn_by_the_backend_with_the_method_colours(view):
    draws = view.backend.draws
    assert len(draws) == 6  # 3 panels x 2 prompts at the start
    assert {d[2] for d in draws} == {STYLE[m]["color"] for m in ("base", "draft", "aig")}
    assert sorted(d[1][0] for d in draws) == [0, 0, 0, 1, 1, 1] and all(d[0] == 2 for d in draws)
    titles = [ax.get_title() for ax in view.preview_fig.axes]
    assert titles[:2] == ["p0", "p1"]
    n = len(draws)
    view.sliders[("power", "p")].value = 3  # new samples in every panel of the counting backend: all redrawn
    assert len(draws) == n + 6
    one = GammaExplorer(ExplorerState(num_steps=3), CountingBackend(ExplorerState(num_steps=3), prompts=("only",)))
    assert [ax.get_title() for ax in one.preview_fig.axes] == ["base", "DRaFT", "AIG γ"]  # one prompt: side by side
    assert "'only'" in one.preview_fig.get_suptitle()


def test_toy_preview_uses_paired_seeds(run, monkeypatch):
    cfg = load(run.params)
    ex = open_explorer(run.params, run.run_dir, preview_samples=16, initial_spec="power:3")
    be = ex.backend
    assert isinstance(be, Previewer)
    # the preview's seeds are the first ones of the run's coverage set (notebook 02's layout)
    per = cfg.sweep.samples_per_prompt
    assert be.pairs[:3] == [(0, 0), (0, 1), (0, 2)] and be.pairs[16] == (1, per)
    seen = []
    noise = be.domain.noise
    monkeypatch.setattr(be.domain, "noise", lambda seeds: seen.append(list(seeds)) or noise(seeds))
    be.select(be.pairs)  # clears the caches
    p = be.preview("power:2")
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2] == [s for _, s in be.pairs]  # base, DRaFT, AIG
    assert be.preview("power:2") is p and len(seen) == 3  # cached: nothing sampled again
    assert be.preview("power:2", num_steps=4).num_steps == 4 and len(seen) == 6  # other steps: base, DRaFT, AIG again
    assert np.array_equal(be.preview("base").panels["aig"], p.panels["base"])
    assert np.array_equal(be.preview("tuned").panels["aig"], p.panels["draft"])
    assert not np.array_equal(p.panels["base"], p.panels["draft"])
    assert not np.array_equal(p.panels["aig"], p.panels["draft"])
    m = p.metrics
    assert list(m.index) == ["base", "draft", "aig"] and m.loc["base", "fid"] == pytest.approx(0, abs=1e-9)
    assert {"reward", "fid", "recall", "scd", "lscd"} <= set(m.columns) and (m["n"] == 64).all()
    assert m.loc["draft", "reward"] > m.loc["base", "reward"]  # the DRaFT model of the run raises the reward


def test_preview_pairs_every_prompt_or_one_prompt_with_seeds(run):
    prompts = ["a", "b", "c"]
    assert preview_pairs(prompts, 2, seed_offset=100, seed_stride=10) == [
        (0, 100), (0, 101), (1, 110), (1, 111), (2, 120), (2, 121)]
    assert preview_pairs(prompts, 12, seed_stride=10)[12] == (1, 12)  # a stride below per_prompt never repeats seeds
    assert preview_pairs(prompts, prompt="b", seeds=(7, 3)) == [(1, 7), (1, 3)]
    assert preview_pairs(prompts, prompt=2, seeds=[5]) == preview_pairs(prompts, prompt="2", seeds=[5]) == [(2, 5)]
    with pytest.raises(ValueError, match="not one of the 3 prompts"):
        preview_pairs(prompts, prompt="d")
    with pytest.raises(ValueError, match="indices 0-2"):
        preview_pairs(prompts, prompt=3)
    ex = open_explorer(run.params, run.run_dir, prompt="gmm-1", seeds=(5, 6, 7))
    assert ex.backend.pairs == [(1, 5), (1, 6), (1, 7)]
    assert ex.preview.panels["aig"].shape == (3, 2) and (ex.preview.metrics["n"] == 3).all()
    assert [ax.get_title() for ax in ex.preview_fig.axes] == ["base", "DRaFT", "AIG γ"]


def test_explorer_on_a_run_updates_preview_and_pareto(run):
    ex = open_explorer(run.params, run.run_dir, preview_samples=16, initial_spec="power:2", diversity="recall")
    assert ex.preview.spec == "power:2" and ex.state.num_steps == 8 and ex.state.max_steps == 1000
    assert ex.diversity.options == ("recall", "fid", "precision", "scd", "lscd")  # the run's metrics.csv
    before = ex.preview.panels["aig"].copy()
    ex.sliders[("power", "p")].value = 4
    assert ex.state.spec == "power:4" and ex.preview.spec == "power:4"
    assert not np.array_equal(before, ex.preview.panels["aig"])
    assert "gamma-metrics" in ex.metrics_html._dom_classes and "<table" in ex.metrics_html.value
    labels = ex.pareto_ax.get_legend_handles_labels()[1]
    assert any("current γ (preview" in lb for lb in labels) and any("AIG" in lb for lb in labels)
    ex.steps.value = 5
    assert ex.preview.num_steps == 5
    png = ex.snapshot(run.run_dir / "figures" / "explorer.png")
    assert png[:4] == b"\x89PNG" and (run.run_dir / "figures" / "explorer.png").exists()
    assert "spec: power:4" in ex.summary()
    assert ex.summary(["reward"]).splitlines()[2].split() == ["reward", "n"]


def test_pareto_plot_draws_each_guidance_variant_as_its_own_curve():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = []
    for setting, fid, reward in (("-", 0.0, 0.2), ("power:1", 1.0, 0.5), ("power:2", 0.5, 0.4),
                                 ("power:1 cfg=7.5/1", 1.2, 0.6), ("power:2 cfg=7.5/1", 0.7, 0.5)):
        method = "base" if setting == "-" else "aig"
        rows += [dict(method=method, setting=setting, prompt_set="coverage", metric=m, value=v, n=10)
                 for m, v in (("fid", fid), ("reward", reward))]
    rows.append(dict(method="draft", setting="-", prompt_set="eval", metric="reward", value=0.9, n=10))
    ax = Figure().subplots()
    draw_pareto(ax, pd.DataFrame(rows), "fid")
    lines = {ln.get_label(): ln for ln in ax.lines}
    assert set(lines) == {"AIG (γ)", "AIG (γ) cfg=7.5/1"}
    assert list(lines["AIG (γ) cfg=7.5/1"].get_xdata()) == [1.2, 0.7] and lines["AIG (γ) cfg=7.5/1"].get_linestyle() == "--"
    assert ax.get_xlabel() == "FID ↓" and ax.get_ylabel() == "reward ↑"
    labels = ax.get_legend_handles_labels()[1]
    assert "base (run)" in labels and "DRaFT (run)" not in labels  # DRaFT has no coverage rows here


def test_full_size_preview_reproduces_the_runs_metrics(run):
    """With the run's samples per prompt, the preview's seeds are the run's coverage seeds: same numbers as metrics.csv."""
    import pandas as pd

    per = load(run.params).sweep.samples_per_prompt
    ex = open_explorer(run.params, run.run_dir, preview_samples=per, initial_spec="power:2")
    t = pd.read_csv(run.paths.metrics).pivot_table(index=["method", "setting"], columns="metric", values="value")
    for row, key in (("base", ("base", "-")), ("draft", ("draft", "-")), ("aig", ("aig", "power:2"))):
        for metric in ("reward", "fid", "recall", "scd", "lscd"):
            assert ex.preview.metrics.loc[row, metric] == pytest.approx(t.loc[key, metric], rel=1e-4, abs=1e-6)


def test_missing_artefacts_name_the_file_and_the_notebook(run, tmp_path):
    empty = tmp_path / "empty_run"
    with pytest.raises(FileNotFoundError, match=r"models/base\.safetensors.*01_training"):
        open_explorer(run.params, empty)
    shutil.copytree(run.run_dir / "models", empty / "models")
    with pytest.raises(FileNotFoundError, match=r"train/draft/adapter\.safetensors.*01_training"):
        open_explorer(run.params, empty)
    shutil.copytree(run.run_dir / "train", empty / "train")
    with pytest.raises(FileNotFoundError, match=r"metrics\.csv.*03_metrics"):
        open_explorer(run.params, empty)
    with pytest.raises(ValueError, match="initial_spec.*must be > 0"):
        open_explorer(run.params, run.run_dir, initial_spec="power:0")


def test_export_appends_once_and_keeps_everything_else(tmp_path):
    params = tmp_path / "smoke.yaml"
    shutil.copy(ROOT / "params" / "smoke.yaml", params)
    text0 = params.read_text()
    data0 = yaml.safe_load(text0)
    ok, msg = append_to_params(params, "spline:0=0,0.5=0.7,1=1")
    assert ok and "appended" in msg and "comments" not in msg
    data1 = yaml.safe_load(params.read_text())
    assert data1["sweep"]["aig"] == data0["sweep"]["aig"] + ["spline:0=0,0.5=0.7,1=1"]
    assert {k: v for k, v in data1.items() if k != "sweep"} == {k: v for k, v in data0.items() if k != "sweep"}
    assert {k: v for k, v in data1["sweep"].items() if k != "aig"} == {k: v for k, v in data0["sweep"].items() if k != "aig"}
    assert params.read_text().splitlines()[0] == text0.splitlines()[0]  # the header comment stays
    assert load(params).sweep.aig[-1] == "spline:0=0,0.5=0.7,1=1"
    text1 = params.read_text()
    ok, msg = append_to_params(params, "power:2")  # already there
    assert not ok and "already" in msg and params.read_text() == text1
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_export_block_lists_missing_lists_and_the_button(tmp_path, view):
    block = tmp_path / "block.yaml"
    block.write_text("run: x\n# keep me\nsweep:\n  aig:\n    - power:1  # first\n    - 'step:0.5'\n  samples_per_prompt: 10\n"
                     "train:\n  steps: 3\n")
    assert append_to_params(block, "sigmoid:10,0.5")[0]
    text = block.read_text()
    assert "# keep me" in text and "# first" in text
    assert yaml.safe_load(text)["sweep"] == {"aig": ["power:1", "step:0.5", "sigmoid:10,0.5"], "samples_per_prompt": 10}
    bare = tmp_path / "bare.yaml"
    bare.write_text("run: y  # a run\n")
    from lib.config import SweepConfig

    assert append_to_params(bare, "power:0.5")[0]
    assert yaml.safe_load(bare.read_text())["sweep"]["aig"] == list(SweepConfig().aig) + ["power:0.5"]
    # a file that extends another inherits its list: the parent's specs stay, the parent file is untouched
    parent = tmp_path / "parent.yaml"
    parent.write_text("run: p\nsweep:\n  aig: [power:3]\n  samples_per_prompt: 10\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml  # the parent's sweep\nrun: c\n")
    parent_text = parent.read_text()
    assert not append_to_params(child, "power:3")[0]  # inherited: already there
    assert append_to_params(child, "power:0.5")[0]
    assert "# the parent's sweep" in child.read_text() and parent.read_text() == parent_text
    assert load(child).sweep.aig == ("power:3", "power:0.5") and load(child).sweep.samples_per_prompt == 10
    with pytest.raises(ValueError, match="sweep.aig|outside"):
        append_to_params(child, "step:2")  # refused like the loader refuses it
    # through the view's export button
    view.preset.value = "power:5"
    view.family.value = "spline"
    view.export_path.value = str(block)
    view.export_button.click()
    assert "appended" in view.export_status.value
    assert yaml.safe_load(block.read_text())["sweep"]["aig"][-1] == view.state.spec
    view.export_path.value = str(tmp_path / "missing.yaml")
    view.export_button.click()
    assert "export failed" in view.export_status.value


def test_the_same_preview_on_the_tiny_sd_pipeline(tmp_path, cache):
    import torch

    from lib.domains.sd.domain import SDConfig, SDDomain

    domain = SDDomain(SDConfig.tiny(cache_dir=cache), device="cpu")
    unet = domain.add_adapter(domain.base_model(), rank=4, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh adapter equals the base (B = 0): make it differ
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    domain.save_adapter(unet, tmp_path / "adapter.safetensors")
    tuned = domain.load_adapter(tmp_path / "adapter.safetensors")
    prompts = domain.prompts("coverage")
    pairs = preview_pairs(prompts, prompt=prompts[1], seeds=(0, 1))
    be = Previewer(domain, tuned, pairs, names=("fid", "recall", "dino_diversity", "clip"), k=10, batch_size=2,
                   num_steps=2)
    p = be.preview("base")
    assert p.panels["base"].shape == (2, 3, 64, 64) and p.panels["base"].dtype == np.uint8
    assert np.array_equal(p.panels["aig"], p.panels["base"])
    assert not np.array_equal(p.panels["draft"], p.panels["base"])
    assert np.array_equal(be.preview("tuned").panels["aig"], p.panels["draft"])
    m = p.metrics
    assert {"reward", "fid", "recall", "dino_diversity", "clip"} <= set(m.columns) and (m["n"] == 2).all()
    assert m.loc["base", "fid"] == pytest.approx(0, abs=1e-6) and m.loc["aig", "reward"] == m.loc["base", "reward"]
    state = ExplorerState(num_steps=be.num_steps, max_steps=domain.num_train_timesteps)
    assert np.allclose(state.step_s(), [1, 0.5])
    view = GammaExplorer(state, be)
    assert view.preview.panels["aig"].shape == (2, 3, 64, 64)
    axes = view.preview_fig.axes  # one prompt: base, DRaFT, AIG side by side, each a mosaic of the two images
    assert [ax.get_title() for ax in axes] == ["base", "DRaFT", "AIG γ"]
    assert all(len(ax.images) == 1 and ax.images[0].get_array().shape == (64, 129, 3) for ax in axes)
    assert view.snapshot()[:4] == b"\x89PNG"


def test_preview_size_defaults_to_the_domains(run):
    """preview_samples 0 (notebook 05's default) takes the domain's own size: 64 points per toy prompt, 2 images per
    prompt of an image domain (a CPU previews the miniature world in seconds); a number overrides it."""
    assert ToyDomain.preview_samples == 64 and SDDomain.preview_samples == 2
    cfg = load(run.params)
    domain = make_domain(cfg, run.paths)
    n = len(domain.prompts("coverage"))
    domain.preview_samples = 3
    assert len(run_previewer(cfg, domain, run.paths).pairs) == 3 * n
    assert len(run_previewer(cfg, domain, run.paths, 5).pairs) == 5 * n


def test_many_captions_wrap_their_column_titles():
    """The world's preview puts 16 captions side by side: each column title wraps onto two lines instead of running
    into its neighbours'; two captions keep one line."""
    prompts = tuple(f"a yellow square{i}" for i in range(16))
    state = ExplorerState(num_steps=3)
    ex = GammaExplorer(state, CountingBackend(state, prompts=prompts))
    titles = [ax.get_title() for ax in ex.preview_fig.axes if ax.get_title()]
    assert titles[:2] == ["a yellow\nsquare0", "a yellow\nsquare1"] and len(titles) == 16
