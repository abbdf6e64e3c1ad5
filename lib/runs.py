"""Where a run keeps its artefacts, and how a run's domain is built from its config.

results/<run>/
  config.yaml, manifest.json      resolved parameters; commit, versions, stage times
  models/                         what the domain's `prepare` builds (the toy's pre-trained base model)
  train/draft/, train/kl_lambda-<l>/   adapter.safetensors, log.csv, train.json of each fine-tuning run
  samples/<prompt set>/<method key>/   npz shards of notebook 02 (lib.store)
  metrics.csv, dominance.csv, figures/, notebooks/
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lib.config import RunConfig
from lib.domains.base import Domain
from lib.domains.registry import make_domain as build_domain

ROOT = Path(__file__).resolve().parent.parent


def repo_path(p: str | Path) -> Path:
    """A path relative to the repository root (absolute paths pass through)."""
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


@dataclass(frozen=True)
class RunPaths:
    """The folders and files of one run."""

    root: Path

    def train(self, kl_lambda: float = 0.0) -> Path:
        """Folder of the DRaFT run (kl_lambda = 0) or of a KL-regularised run."""
        return self.root / "train" / ("draft" if kl_lambda == 0 else f"kl_lambda-{kl_lambda:g}")

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def figures(self) -> Path:
        return self.root / "figures"


def run_paths(cfg: RunConfig, run_dir: str | Path | None = None) -> RunPaths:
    """RunPaths for results/<cfg.run> (or an explicit folder)."""
    return RunPaths(repo_path(run_dir) if run_dir else ROOT / "results" / cfg.run)


def make_domain(cfg: RunConfig, paths: RunPaths) -> Domain:
    """The domain named by cfg.domain, wired to this run's folder."""
    return build_domain(cfg.domain, cfg.domain_config, root=paths.root, device=cfg.device)
