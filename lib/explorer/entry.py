"""Notebook 05's entry point: `open_explorer(params_file, ...)` opens the gamma explorer on a finished run of any
domain (the run's domain decides how samples are made and drawn)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from lib.config import RunConfig, load
from lib.domains.base import Domain
from lib.explorer.preview import Previewer, preview_pairs
from lib.explorer.state import PRESETS, ExplorerState
from lib.explorer.view import GammaExplorer
from lib.runs import RunPaths, make_domain, repo_path, run_paths
from lib.search.presets import searched_presets

TRAINED_BY = "notebooks/01_training.ipynb"
SCORED_BY = "notebooks/03_metrics.ipynb"
RERUN = "run notebooks 01-03 for this run first (python -m lib.reproduce <params file> --only 01,02,03)"


def adapter_file(paths: RunPaths) -> Path:
    """The run's DRaFT adapter."""
    return paths.train(0.0) / "adapter.safetensors"


def require_artefacts(domain: Domain, paths: RunPaths) -> None:
    """Raise FileNotFoundError naming the first missing artefact of the run and the notebook that writes it: the
    domain's base model (the domain itself says whether it has one), the DRaFT adapter, metrics.csv."""
    try:
        domain.base_model()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. The gamma explorer needs the run's base model, which {TRAINED_BY} writes: "
                                f"{RERUN}") from None
    for f, made_by in ((adapter_file(paths), TRAINED_BY), (paths.metrics, SCORED_BY)):
        if not Path(f).exists():
            raise FileNotFoundError(f"the gamma explorer needs {f}, which {made_by} writes: {RERUN}")


def run_previewer(cfg: RunConfig, domain: Domain, paths: RunPaths, preview_samples: int = 0, prompt: str | int = "",
                  seeds: Sequence[int] = (0, 1, 2, 3)) -> Previewer:
    """The preview of a run: its DRaFT model, the run's metrics, its coverage prompts (all, or one; see
    `lib.explorer.preview.preview_pairs`); preview_samples 0 takes the domain's default (Domain.preview_samples)."""
    tuned = domain.load_adapter(adapter_file(paths))
    pairs = preview_pairs(domain.prompts("coverage"), preview_samples or domain.preview_samples, cfg.sweep.seed_offset,
                          cfg.sweep.samples_per_prompt, prompt, seeds)
    return Previewer(domain, tuned, pairs, cfg.metrics.names, cfg.metrics.k, cfg.sweep.batch_size)


def open_explorer(params_file: str | Path, run_dir: str | Path = "", preview_samples: int = 0,
                  initial_spec: str = "power:2", diversity: str = "fid", prompt: str | int = "",
                  seeds: Sequence[int] = (0, 1, 2, 3), export_to: str | Path = "") -> GammaExplorer:
    """The explorer on a finished run (results/<run> of params_file, or run_dir).

    The preview shows every coverage prompt with `preview_samples` samples each (the run's own first seeds; 0: the
    domain's default, 64 points of the toy, 2 images of an image domain), or,
    with `prompt` (a coverage prompt's text or index), that prompt alone with one sample per seed in `seeds`. The
    export button appends to `export_to` (default: params_file).
    """
    cfg = load(repo_path(params_file))
    paths = run_paths(cfg, run_dir or None)
    domain = make_domain(cfg, paths)
    require_artefacts(domain, paths)
    state = ExplorerState(num_steps=domain.num_steps, max_steps=int(domain.scheduler.config.num_train_timesteps))
    if not state.load_spec(initial_spec):
        raise ValueError(f"initial_spec: {state.message}")
    previewer = run_previewer(cfg, domain, paths, preview_samples, prompt, seeds)
    metrics = pd.read_csv(paths.metrics, keep_default_na=False, na_values=[""])
    presets = PRESETS + tuple(p for p in searched_presets(paths.root) if p not in PRESETS)  # notebook 07's front
    explorer = GammaExplorer(state, previewer, metrics, repo_path(export_to or params_file), diversity, presets)
    explorer.cfg, explorer.paths = cfg, paths
    return explorer
