"""Where a run keeps its artefacts, and how a run's domain is built from its config.

results/<run>/
  config.yaml, manifest.json      resolved parameters; commit, versions, stage times
  models/                         what the domain's `prepare` builds (the toy's pre-trained base model)
  train/draft/, train/kl_lambda-<l>/, train/<name>/   adapter.safetensors, log.csv, train.json of each
                                  fine-tuning run (DRaFT, each KL run, each extra training of sweep.adapters)
  samples/<prompt set>/<method key>/   npz shards of notebook 02 (lib.store)
  metrics.csv, dominance.csv, figures/, notebooks/
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lib.config import RunConfig
from lib.domains.base import Domain
from lib.domains.registry import make_domain as build_domain
from lib.errors import check

ROOT = Path(__file__).resolve().parent.parent


def repo_path(p: str | Path) -> Path:
    """A path relative to the repository root (absolute paths pass through)."""
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


def training_name(kl_lambda: float = 0.0) -> str:
    """The folder name under train/ of DRaFT (kl_lambda = 0, 'draft') or of a KL run ('kl_lambda-<l>')."""
    return "draft" if kl_lambda == 0 else f"kl_lambda-{kl_lambda:g}"


@dataclass(frozen=True)
class RunPaths:
    """The folders and files of one run."""

    root: Path

    def train(self, kl_lambda: float = 0.0) -> Path:
        """Folder of the DRaFT run (kl_lambda = 0) or of a KL-regularised run."""
        return self.root / "train" / training_name(kl_lambda)

    def adapter(self, name: str) -> Path:
        """Folder of a fine-tuning run by name: 'draft', 'kl_lambda-<l>' or an extra training of sweep.adapters."""
        return self.root / "train" / name

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def figures(self) -> Path:
        return self.root / "figures"


RESULTS = ROOT / "results"


def check_run_dir(root: Path, explicit: bool = False) -> Path:
    """The run folder itself, or a ConfigError: results/<run> must resolve inside results/ (no '..', no symlink out of
    it); an explicit folder must not be the repository, one of its parents, or a folder of it outside results/."""
    resolved, repo, results = Path(root).resolve(), ROOT.resolve(), RESULTS.resolve()
    if not explicit:
        check("run", root.name, resolved.is_relative_to(results) and resolved != results,
              f"a run folder inside {RESULTS} (results/{root.name} resolves to {resolved})")
    elif repo.is_relative_to(resolved) or (resolved.is_relative_to(repo) and not resolved.is_relative_to(results)) \
            or resolved == results:
        check("run_dir", str(root), False, f"a folder inside {RESULTS} or outside the repository {ROOT} "
                                           f"(it resolves to {resolved}, where a run would overwrite the workbook's files)")
    return Path(root)


def run_paths(cfg: RunConfig, run_dir: str | Path | None = None) -> RunPaths:
    """RunPaths for results/<cfg.run> (or an explicit folder), checked by `check_run_dir`."""
    root = check_run_dir(repo_path(run_dir), explicit=True) if run_dir else check_run_dir(RESULTS / cfg.run)
    return RunPaths(root)


def make_domain(cfg: RunConfig, paths: RunPaths) -> Domain:
    """The domain named by cfg.domain, wired to this run's folder."""
    return build_domain(cfg.domain, cfg.domain_config, root=paths.root, device=cfg.device)
