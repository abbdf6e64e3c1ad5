"""The gamma search as a persisted optuna study: NSGA-II over (reward, diversity) of AIG (paper Eq. 11) with a
searched spline gamma (`lib.search.space`), each trial sampling the run's coverage prompts with the run's base and
DRaFT models on the selection seeds and scoring them with the run's own metrics code (`lib.evaluate.method_rows`).

The study lives in results/<run>/gamma_search/study.db (optuna's SQLite storage) under a name that hashes what its
values depend on (search space, objectives, seeds, the run's base model and adapters), so a changed run starts a
new study and an unchanged one resumes: `run_search` runs only the trials still missing to `search.trials`.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import optuna
import pandas as pd
from sqlalchemy import event

from lib.config import RunConfig
from lib.errors import ConfigError
from lib.evaluate import features_of, method_rows
from lib.files import config_hash, run_lock, write_text
from lib.generate import generate, paired_seeds
from lib.methods import Method, method_denoiser
from lib.metrics import METRICS
from lib.runs import RunPaths, make_domain
from lib.search.front import greedy_subset, pareto_indices, unit_points
from lib.search.presets import FRONT_FILE, search_dir
from lib.search.space import SearchConfig, param_names, spline_of
from lib.stages import load_models
from lib.train import adapter_sha256

Pairs = list[tuple[int, int]]


def search_config(cfg: RunConfig, **overrides) -> SearchConfig:
    """The run's `search:` section (SearchConfig() where the params have none) with the notebook's overrides;
    an override of 0, '' or None means 'keep the params value'."""
    base = getattr(cfg, "search", None) or SearchConfig()
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v not in (0, "", None)})


def seed_ranges(cfg: RunConfig, scfg: SearchConfig, num_prompts: int) -> dict[str, Pairs]:
    """'selection' and 'heldout-r' (r < heldout_repeats) paired (prompt, seed) lists, P x per_prompt each; raises
    ConfigError if two ranges, or a range and the run's own coverage seeds (notebook 02), share a seed."""
    per = scfg.per_prompt or cfg.sweep.samples_per_prompt
    size = num_prompts * per
    starts = {"selection": scfg.selection_offset,
              **{f"heldout-{r}": scfg.heldout_offset + r * size for r in range(scfg.heldout_repeats)}}
    spans = {**{k: (lo, lo + size) for k, lo in starts.items()},
             "the run's coverage seeds (sweep.seed_offset)": (cfg.sweep.seed_offset,
                                                              cfg.sweep.seed_offset + num_prompts * cfg.sweep.samples_per_prompt)}
    names = list(spans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]:
                raise ConfigError(f"search seed ranges overlap: {a} {spans[a]} and {b} {spans[b]} (seeds [lo, hi)); "
                                  "move search.selection_offset or search.heldout_offset apart")
    return {k: paired_seeds(num_prompts, per, lo) for k, lo in starts.items()}


def _sqlite_pragmas(conn, _record) -> None:
    """Write-ahead log with synchronous=NORMAL: a commit survives a crash of the process (not of the machine, which
    at worst loses the last trials, run again on resume); halves optuna's per-trial storage time here."""
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class SearchRun:
    """A run's models, prompts and seed ranges, with the base model's features per range computed once."""

    def __init__(self, cfg: RunConfig, paths: RunPaths, scfg: SearchConfig):
        self.cfg, self.paths, self.scfg = cfg, paths, scfg
        self.domain = make_domain(cfg, paths)
        need = METRICS[scfg.diversity].needs
        if need not in self.domain.capabilities(cfg.domain_config):
            raise ConfigError(f"search.diversity = {scfg.diversity!r} is not allowed on domain {cfg.domain!r}: "
                              f"it needs {need!r}, which the domain does not provide")
        self.tuned, self.kl = load_models(cfg, paths, self.domain)
        self.prompts = self.domain.prompts("coverage")
        self.ranges = seed_ranges(cfg, scfg, len(self.prompts))
        self.names = tuple(dict.fromkeys((scfg.diversity, *cfg.metrics.diversity)))  # feature metrics scored
        # what every measurement depends on (base model, DRaFT adapter, metrics' k, steps); KL models add their own
        self.stamp = config_hash([self.domain.stamp(), cfg.metrics.k, self.domain.num_steps,
                                  adapter_sha256(paths.train(0.0))])
        self.kl_stamps = {float(lam): adapter_sha256(paths.train(lam)) for lam in cfg.sweep.kl_lambdas}
        self._refs: dict[str, np.ndarray] = {}
        self._storage: Optional[optuna.storages.RDBStorage] = None

    @property
    def folder(self) -> Path:
        return search_dir(self.paths.root)

    @property
    def directions(self) -> list[str]:
        """optuna directions of (reward, diversity)."""
        return ["maximize", "maximize" if METRICS[self.scfg.diversity].maximize else "minimize"]

    def storage(self) -> optuna.storages.RDBStorage:
        """optuna's SQLite storage in the run folder (gamma_search/study.db), opened once."""
        if self._storage is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._storage = optuna.storages.RDBStorage(f"sqlite:///{self.folder / 'study.db'}")
            event.listen(self._storage.engine, "connect", _sqlite_pragmas)
            self._storage.engine.dispose()  # the next connection gets the pragmas
        return self._storage

    def sample(self, m: Method, range_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Stored samples (N, ...) of method m on a seed range and their prompt indices (N,)."""
        pairs = self.ranges[range_name]
        with method_denoiser(self.domain, m, self.tuned, self.kl) as den:
            x = generate(self.domain, den, self.prompts, pairs, self.cfg.sweep.batch_size)
        return x, np.array([j for j, _ in pairs])

    def reference(self, range_name: str) -> np.ndarray:
        """The base model's features on a seed range (N, D), the reference of every diversity metric."""
        if range_name not in self._refs:
            x, _ = self.sample(Method("base"), range_name)
            self._refs[range_name] = features_of(self.domain, x, self.cfg.sweep.batch_size)
        return self._refs[range_name]

    def measure(self, m: Method, range_name: str) -> dict[str, float]:
        """Reward and every scored diversity metric of method m on a seed range (lib.evaluate.method_rows)."""
        ref = self.reference(range_name)
        x, p = self.sample(m, range_name)
        rows = method_rows(self.domain, m, "coverage", x, p, ref, self.names, self.cfg.metrics.k,
                           self.cfg.sweep.batch_size, features=ref if m == Method("base") else None)
        return {r["metric"]: float(r["value"]) for r in rows}


def open_search(cfg: RunConfig, paths: RunPaths, scfg: SearchConfig, force: bool = False) -> SearchRun:
    """The search of a trained run (notebook 01's models); force=True deletes its stored study and measurements."""
    if force and search_dir(paths.root).exists():
        with run_lock(paths.root):
            shutil.rmtree(search_dir(paths.root))
    return SearchRun(cfg, paths, scfg)


def study_name(run: SearchRun) -> str:
    """'gamma-<hash>' of everything a trial's values depend on (not the trial budget)."""
    s = run.scfg
    return "gamma-" + config_hash([run.stamp, s.control_points, s.free_positions, s.free_ends, s.decimals, s.diversity,
                                   run.ranges["selection"][:1], len(run.ranges["selection"]), s.population, s.seed])


def load_study(run: SearchRun) -> optuna.Study:
    """The run's study (created when missing); its NSGA-II sampler is seeded by search.seed plus the number of trials
    already stored, so a resumed study continues deterministically instead of replaying the first generation."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(run)
    try:
        stored = len(optuna.load_study(study_name=name, storage=run.storage()).trials)
    except KeyError:
        stored = 0
    sampler = optuna.samplers.NSGAIISampler(population_size=run.scfg.population, seed=run.scfg.seed + stored)
    return optuna.create_study(study_name=name, storage=run.storage(), sampler=sampler, directions=run.directions,
                               load_if_exists=True)


class Objective:
    """One trial: unit coordinates -> rounded monotone spline -> AIG samples on the selection seeds -> (reward, div)."""

    def __init__(self, run: SearchRun):
        self.run = run

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        scfg = self.run.scfg
        params = {n: trial.suggest_float(n, 0.0, 1.0) for n in param_names(scfg)}
        spec = spline_of(params, scfg).spec
        start = time.perf_counter()
        values = self.run.measure(Method("aig", spec), "selection")
        trial.set_user_attr("spec", spec)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.set_user_attr("metrics", values)
        return values["reward"], values[scfg.diversity]


def run_search(run: SearchRun, n_trials: Optional[int] = None, progress: bool = False) -> dict:
    """Bring the study to n_trials (default search.trials) completed trials; returns what it found and did.

    Holds the run folder's lock (`lib.files.run_lock`), so a trial left RUNNING was left by a process that died: it is
    marked FAIL first; failed trials do not count. An exception in a trial (Ctrl-C included) stops the search with
    the trial marked FAIL."""
    with run_lock(run.paths.root):
        return _run_search(run, n_trials, progress)


def _run_search(run: SearchRun, n_trials: Optional[int], progress: bool) -> dict:
    study = load_study(run)
    stale = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for number in stale:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    target = int(n_trials or run.scfg.trials)
    before = _complete(study)
    todo = max(0, target - before)
    start = time.perf_counter()
    if todo:
        study.optimize(Objective(run), n_trials=todo, show_progress_bar=progress)
    after = _complete(study)
    return {"study": study.study_name, "stored_before": before, "added": after - before, "complete": after,
            "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials), "stale_marked_failed": stale,
            "wall_seconds": time.perf_counter() - start,
            "wall_seconds_per_trial": (time.perf_counter() - start) / max(1, after - before)}


def _complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def trials_table(run: SearchRun) -> pd.DataFrame:
    """Every completed trial: number, spec, reward, the diversity objective, seconds (sampling and scoring),
    trial_seconds (optuna's start to end, the sampler's proposal and the storage's writes included), on_front."""
    study = load_study(run)
    rows = [dict(number=t.number, spec=t.user_attrs["spec"], reward=t.values[0], **{run.scfg.diversity: t.values[1]},
                 seconds=t.user_attrs["seconds"], trial_seconds=(t.datetime_complete - t.datetime_start).total_seconds())
            for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    df = pd.DataFrame(rows, columns=["number", "spec", "reward", run.scfg.diversity, "seconds", "trial_seconds"])
    maximize = [True, METRICS[run.scfg.diversity].maximize]
    df["on_front"] = False
    df.loc[df.index[pareto_indices(df[["reward", run.scfg.diversity]].to_numpy(), maximize)], "on_front"] = True
    return df


def selection_front(run: SearchRun, trials: pd.DataFrame) -> pd.DataFrame:
    """The selection-seed front, each point on base/DRaFT's unit square (x, y) and `chosen` in order of hypervolume
    gain for the re-measured subset (at most search.front_size); sorted by reward."""
    div = run.scfg.diversity
    anchors = {m: run.measure(Method(m), "selection") for m in ("base", "draft")}
    front = trials[trials.on_front].drop_duplicates("spec").reset_index(drop=True)
    u = unit_points(front[["reward", div]].to_numpy(), [anchors["base"]["reward"], anchors["base"][div]],
                    [anchors["draft"]["reward"], anchors["draft"][div]], METRICS[div].maximize)
    front["x"], front["y"] = u[:, 0], u[:, 1]
    order = greedy_subset(u, run.scfg.front_size)
    front["chosen"] = -1
    front.loc[order, "chosen"] = np.arange(len(order))
    return front.sort_values("reward").reset_index(drop=True)


def export_front(run: SearchRun, front: pd.DataFrame) -> Path:
    """Write gamma_search/front.json: the chosen specs, best first (for params `sweep.aig` and the explorer's presets,
    `lib.search.presets.searched_presets`)."""
    chosen = front[front.chosen >= 0].sort_values("chosen")
    record = {"study": study_name(run), "diversity": run.scfg.diversity, "selection_seeds": run.scfg.selection_offset,
              "specs": chosen.spec.tolist(), "reward": chosen.reward.round(6).tolist(),
              run.scfg.diversity: chosen[run.scfg.diversity].round(6).tolist()}
    path = run.folder / FRONT_FILE
    with run_lock(run.paths.root):
        write_text(path, json.dumps(record, indent=1))
    return path
