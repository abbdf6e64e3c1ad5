"""Batch runner: execute the numbered notebooks with papermill into results/<run>/notebooks/.

    python -m lib.reproduce params/<file>.yaml [--only 00,01] [--force]

Writes results/<run>/config.yaml (resolved parameters) and manifest.json (git commit, package versions, start and
end of each stage). A stage that already finished with the same config and notebook is skipped unless --force.
A failing notebook stops the run with its error; the executed copy stays for inspection.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

from lib.config import RunConfig, load, to_dict
from lib.errors import ConfigError
from lib.files import config_hash, write_text
from lib.runs import ROOT, repo_path, run_paths

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pandas", "diffusers", "transformers", "peft", "accelerate",
            "open_clip_torch", "torch-fidelity", "papermill", "matplotlib")


def notebooks(only: list[str] | None = None, folder: Path = ROOT / "notebooks") -> list[Path]:
    """The numbered notebooks in order, optionally only those whose number is listed."""
    found = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = set(only) - {p.name[:2] for p in found}
        if unknown:
            raise ConfigError(f"--only {','.join(only)}: no notebook numbered {', '.join(sorted(unknown))}; "
                              f"available: {', '.join(p.name[:2] for p in found)}")
        found = [p for p in found if p.name[:2] in only]
    return found


def notebook_code(nb: Path) -> list[str]:
    """The notebook's cell sources: what a stage's result depends on (outputs and metadata are not)."""
    import nbformat

    return [c.source for c in nbformat.read(nb, as_version=4).cells]


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


def parameters_for(nb: Path, params_file: str, run_root: Path, force: bool = False) -> dict:
    """The runner's parameters that this notebook's parameters cell declares (--force reaches the stages too)."""
    import papermill as pm

    declared = set(pm.inspect_notebook(str(nb)))
    offer = {"params_file": params_file, "run_dir": str(run_root), "figures_dir": str(run_root / "figures"),
             "progress": False, "force": force}
    return {k: v for k, v in offer.items() if k in declared}


def run(params_file: str, only: list[str] | None = None, force: bool = False,
        notebook_dir: Path = ROOT / "notebooks", run_dir: Path | None = None) -> Path:
    """Execute the stages; returns the run folder."""
    import papermill as pm

    cfg: RunConfig = load(repo_path(params_file))
    paths = run_paths(cfg, run_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(cfg)
    write_text(paths.root / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    manifest_path = paths.root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"stages": {}}
    manifest.update({"run": cfg.run, "params_file": str(params_file), **environment()})
    for nb in notebooks(only, notebook_dir):
        stage = nb.stem
        key = config_hash([resolved, notebook_code(nb)])
        out = paths.root / "notebooks" / nb.name
        out.parent.mkdir(parents=True, exist_ok=True)
        done = manifest["stages"].get(stage, {})
        if not force and done.get("status") == "done" and done.get("hash") == key and out.exists():
            print(f"[{stage}] up to date, skipped")
            continue
        start = dt.datetime.now(dt.timezone.utc)
        print(f"[{stage}] running ...", flush=True)
        manifest["stages"][stage] = {"status": "running", "hash": key, "start": start.isoformat()}
        write_text(manifest_path, json.dumps(manifest, indent=1))
        try:
            pm.execute_notebook(str(nb), str(out), parameters=parameters_for(nb, str(params_file), paths.root, force),
                                cwd=str(ROOT), kernel_name="python3", progress_bar=False)
            status = "done"
        except pm.PapermillExecutionError as e:
            status = "failed"
            error = f"{e.ename}: {e.evalue}"
        end = dt.datetime.now(dt.timezone.utc)
        manifest["stages"][stage].update(status=status, end=end.isoformat(), seconds=round((end - start).total_seconds(), 1))
        write_text(manifest_path, json.dumps(manifest, indent=1))
        if status == "failed":
            raise RuntimeError(f"stage {stage} failed ({error}); the executed notebook is kept at {out}")
        print(f"[{stage}] done in {manifest['stages'][stage]['seconds']} s", flush=True)
    return paths.root


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; errors are one line on stderr."""
    ap = argparse.ArgumentParser(prog="python -m lib.reproduce", description=__doc__.split("\n")[0])
    ap.add_argument("params", help="params/<file>.yaml")
    ap.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,01")
    ap.add_argument("--force", action="store_true", help="re-run stages that are up to date")
    args = ap.parse_args(argv)
    try:
        root = run(args.params, args.only.split(",") if args.only else None, args.force)
    except (ConfigError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"results in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
