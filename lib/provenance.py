"""Where and how a run ran, as its records show it: the environment for manifest.json (git commit, package versions,
platform), and paths relative to the repository root in executed notebooks (a committed notebook names no machine's
folders)."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

from lib.files import atomic_path
from lib.runs import ROOT

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pandas", "diffusers", "transformers", "peft", "accelerate",
            "open_clip_torch", "torch-fidelity", "papermill", "matplotlib", "optuna")


def environment() -> dict:
    """Git commit, package versions and platform, for the manifest."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "python": platform.python_version(), "platform": platform.platform(), "packages": versions}


def shown(path: Path) -> Path:
    """A path as an executed notebook shows it: relative to the repository root where it lies inside (the notebooks
    resolve it there, lib.runs.repo_path), so a committed notebook names no machine's folders."""
    try:
        return Path(path).resolve().relative_to(ROOT.resolve())
    except ValueError:
        return Path(path)


def relative_paths(out: Path) -> None:
    """Rewrite papermill's record of the input and output notebooks in `out` relative to the repository root."""
    import nbformat

    nb = nbformat.read(out, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = str(shown(Path(meta[key])))
    with atomic_path(out) as tmp:
        nbformat.write(nb, str(tmp))
