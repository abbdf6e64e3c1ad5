"""Batch runner: execute the numbered notebooks with papermill into results/<run>/notebooks/.

    python -m lib.reproduce params/<file>.yaml [--only 00,01] [--force] [--accept-hub-changes]
    python -m lib.reproduce params/<file>.yaml --launcher slurm --partition gpu [--shards 8]   # lib.cluster

Writes results/<run>/config.yaml (resolved parameters), manifest.json (git commit, package versions, start, end and
status of each stage, and the hub revisions and data-file hashes the stages resolved) and artefacts/<stage>.json:
the path, size and sha256 of every file the stage wrote or reused (`lib.files`). A stage is skipped only when it
finished with the same resolved config, cell code and upstream artefacts (the earlier stages' recorded files, less
logs: executed notebooks, training logs and checkpoints), and every file in its record is still present and matches;
otherwise it runs again and the log says why. On a fresh clone the records are there but the git-ignored models,
adapters and samples are not, so the stages that make them run again, and the later ones only if their inputs
changed. A failing notebook stops the run with its error; the executed copy stays for inspection.

The run folder is locked while the runner writes to it (a second run into it is refused, naming the holder). Ctrl-C
(SIGINT) or SIGTERM interrupts the running notebook's kernel within seconds, marks the stage "interrupted", keeps
every finished artefact (all writes are atomic) and exits with 130 (143 for SIGTERM); running the same command again
resumes (training from its last checkpoint, sampling from its finished sweep points).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import yaml

from lib.cluster import add_arguments, launch
from lib.config import RunConfig, load, to_dict
from lib.errors import ArtefactError, ConfigError
from lib.files import (ACCEPT_HUB_ENV, ARTEFACT_LOG, LOCK_NAME, config_hash, read_json, record_files, run_lock,
                       verify_records, write_text)
from lib.provenance import environment, relative_paths, shown
from lib.runs import ROOT, repo_path, run_paths

RECORDS = "artefacts"  # results/<run>/artefacts/<stage>.json
NOT_RECORDED = {"manifest.json", "config.yaml", LOCK_NAME}  # the runner's own files
NOT_RECORDED_DIRS = {RECORDS, "cache", "cluster", "tracking"}  # records; caches; job and tracker logs
STOP_GRACE = 5.0  # seconds the kernel gets to stop at KeyboardInterrupt before it is killed


class Stopped(BaseException):
    """SIGINT or SIGTERM reached the runner (raised in the main thread by the runner's handler)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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

    try:
        return [c.source for c in nbformat.read(nb, as_version=4).cells]
    except Exception as e:  # noqa: BLE001 - nbformat raises several types for a broken file
        raise ArtefactError(f"{nb}: not a readable notebook ({type(e).__name__}: {e})") from None


def parameters_for(nb: Path, params_file: str, run_root: Path, force: bool = False) -> dict:
    """The runner's parameters that this notebook's parameters cell declares (--force reaches the stages too)."""
    import papermill as pm

    declared = set(pm.inspect_notebook(str(nb)))
    run_root = shown(run_root)
    offer = {"params_file": params_file, "run_dir": str(run_root), "figures_dir": str(run_root / "figures"),
             "progress": False, "force": force}
    return {k: v for k, v in offer.items() if k in declared}


# ---------------------------------------------------------------------------------------------------- manifest
def read_manifest(path: Path) -> dict:
    """The run's manifest (a fresh one if absent), or an ArtefactError naming the file."""
    if not path.exists():
        return {"stages": {}}
    fix = "delete it to re-run every stage (the hub revisions it recorded are then recorded afresh)"
    data = read_json(path, "run manifest", fix)
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise ArtefactError(f"{path}: not a run manifest (expected a mapping with 'stages'); {fix}")
    data.setdefault("stages", {})
    return data


def _save_manifest(path: Path, manifest: dict) -> None:
    """Write the manifest, keeping the "hub" section the stages' kernels record into the file meanwhile."""
    with contextlib.suppress(ArtefactError):
        disk = read_json(path) if path.exists() else {}
        if isinstance(disk, dict) and "hub" in disk:
            manifest["hub"] = disk["hub"]
    write_text(path, json.dumps(manifest, indent=1))


def _record_path(root: Path, stage: str) -> Path:
    return root / RECORDS / f"{stage}.json"


def _read_record(root: Path, stage: str) -> Optional[dict]:
    try:
        rec = read_json(_record_path(root, stage))
        return rec if isinstance(rec, dict) and isinstance(rec.get("files"), list) else None
    except ArtefactError:
        return None


def why_stale(root: Path, stage: str, key: str, manifest: dict) -> Optional[str]:
    """None if the stage is up to date: done with this key, and every file of its record present and matching;
    else the reason."""
    done = manifest["stages"].get(stage, {})
    if done.get("status") != "done":
        return "not run yet" if not done else f"its last run is {done.get('status', 'unknown')}"
    if done.get("hash") != key:
        return "its config, cell code or upstream artefacts changed"
    rec = _read_record(root, stage)
    if rec is None or rec.get("hash") != key:
        return f"{_record_path(root, stage).relative_to(root)} is missing or out of date"
    return verify_records(rec["files"], root)


LOGS = {"log.csv", "checkpoint.pt", "train.json"}  # training logs and resumable state: they hold timings


def _is_input(path: str) -> bool:
    """Whether a recorded file of an earlier stage counts as an input of the later ones: everything but logs
    (executed notebooks, training logs, checkpoints), whose bytes change from run to run with the same results."""
    p = Path(path)
    return p.parts[0] != "notebooks" and p.name not in LOGS and "checkpoints" not in p.parts


def _upstream(root: Path, stage: str, names: list[str]) -> list:
    """What earlier stages' artefacts hold (path, sha256), so a stage re-runs when its inputs changed."""
    out = []
    for other in sorted(n for n in names if n < stage):
        rec = _read_record(root, other) or {"files": []}
        out.append([other, [(f["path"], f["sha256"]) for f in rec["files"] if _is_input(f["path"])]])
    return out


def _files(root: Path) -> dict[Path, tuple]:
    """(mtime, size, inode) of every file under root but the runner's own files, records, caches and hidden files."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts and rel.parts[0] in NOT_RECORDED_DIRS:
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .ipynb_checkpoints and the like
        for name in filenames:
            if (rel.parts or name not in NOT_RECORDED) and not name.startswith("."):
                p = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    found[p] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return found


def _changed(root: Path, before: dict[Path, tuple]) -> list[Path]:
    """Files new or changed since a `_files` snapshot: what a stage wrote, also without the atomic helpers."""
    return [p for p, sig in _files(root).items() if before.get(p) != sig]


# ----------------------------------------------------------------------------------------- execution and signals
def _on_signal(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def _signals():
    """SIGINT and SIGTERM raise Stopped in the main thread while the runner runs (also when the runner started
    with SIGINT ignored, as background jobs of a shell do)."""
    try:
        old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _children() -> list[int]:
    """Process ids of this process's children (the notebook kernel), from /proc (Linux)."""
    me, out = os.getpid(), []
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.append(int(d))
    return out


def _stop_kernel(worker: threading.Thread) -> None:
    """KeyboardInterrupt in the kernel's running cell; if it has not stopped after STOP_GRACE seconds, kill it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
    try:
        for pid in _children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        worker.join(STOP_GRACE)
        if worker.is_alive():
            for pid in _children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            worker.join(STOP_GRACE)
    finally:
        signal.signal(signal.SIGINT, previous)


def _execute(nb: Path, out: Path, parameters: dict) -> Optional[BaseException]:
    """Run a notebook with papermill in a worker thread (so that signals reach the runner, not nbclient's loop);
    returns the execution error, None on success; Stopped propagates after the kernel was stopped."""
    import papermill as pm

    box: dict = {}

    def work():
        try:
            pm.execute_notebook(str(nb), str(out), parameters=parameters, cwd=str(ROOT), kernel_name="python3",
                                progress_bar=False)
            relative_paths(out)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e

    worker = threading.Thread(target=work, name=f"papermill {nb.stem}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except Stopped:
        _stop_kernel(worker)
        raise
    return box.get("error")


def _error_line(e: BaseException) -> str:
    import papermill as pm

    if isinstance(e, pm.PapermillExecutionError):
        return f"{e.ename}: {e.evalue}"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# ------------------------------------------------------------------------------------------------------ the run
@contextlib.contextmanager
def _env(name: str, value: Optional[str]):
    """Set an environment variable (inherited by the kernels) for the duration; None leaves it as it is."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None and old is None:
            os.environ.pop(name, None)
        elif value is not None:
            os.environ[name] = old


def run(params_file: str, only: list[str] | None = None, force: bool = False,
        notebook_dir: Path = ROOT / "notebooks", run_dir: Path | None = None, accept_hub_changes: bool = False) -> Path:
    """Execute the stages; returns the run folder. Raises Stopped on SIGINT / SIGTERM (the stage is marked)."""
    cfg: RunConfig = load(repo_path(params_file))
    paths = run_paths(cfg, run_dir)
    nbs = notebooks(only, notebook_dir)
    with _signals(), run_lock(paths.root), _env(ACCEPT_HUB_ENV, "1" if accept_hub_changes else None):
        resolved = to_dict(cfg)
        manifest_path = paths.root / "manifest.json"
        manifest = read_manifest(manifest_path)
        write_text(paths.root / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        manifest.update({"run": cfg.run, "params_file": str(params_file), **environment()})
        names = [nb.stem for nb in notebooks(None, notebook_dir)]
        for nb in nbs:
            _stage(nb, names, resolved, paths.root, manifest, manifest_path, str(params_file), force)
    return paths.root


def _stage(nb: Path, names: list[str], resolved: dict, root: Path, manifest: dict, manifest_path: Path,
           params_file: str, force: bool) -> None:
    """Run one stage unless it is up to date (see the module docstring)."""
    stage = nb.stem
    key = config_hash([resolved, notebook_code(nb), _upstream(root, stage, names)])
    out = root / "notebooks" / nb.name
    out.parent.mkdir(parents=True, exist_ok=True)
    why = "--force" if force else why_stale(root, stage, key, manifest)
    if why is None:
        n = len(_read_record(root, stage)["files"])
        print(f"[{stage}] up to date ({n} artefacts verified), skipped", flush=True)
        return
    start = dt.datetime.now(dt.timezone.utc)
    print(f"[{stage}] running ({why}) ...", flush=True)
    manifest["stages"][stage] = {"status": "running", "hash": key, "start": start.isoformat()}
    _save_manifest(manifest_path, manifest)
    log = root / RECORDS / f".{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    os.environ[ARTEFACT_LOG] = str(log)
    before = _files(root)
    error, status = None, "failed"
    try:
        error = _execute(nb, out, parameters_for(nb, params_file, root, force))
        status = "failed" if error is not None else "done"
    except Stopped:
        status = "interrupted"
        raise
    except BaseException as e:
        error = e
        raise
    finally:
        os.environ.pop(ARTEFACT_LOG, None)
        end = dt.datetime.now(dt.timezone.utc)
        entry = manifest["stages"][stage]
        entry.update(status=status, end=end.isoformat(), seconds=round((end - start).total_seconds(), 1))
        if status == "done":
            noted = [Path(p) for p in log.read_text().splitlines() if p]
            files = record_files([*noted, *_changed(root, before), out], root)
            write_text(_record_path(root, stage), json.dumps({"stage": stage, "hash": key, "files": files}, indent=1))
            entry["artefacts"] = len(files)
        elif error is not None:
            entry["error"] = _error_line(error)
        log.unlink(missing_ok=True)
        _save_manifest(manifest_path, manifest)
        if status == "interrupted":
            print(f"[{stage}] interrupted: finished artefacts are kept; run the same command again to resume",
                  file=sys.stderr, flush=True)
    if status == "failed":
        raise RuntimeError(f"stage {stage} failed ({entry['error']}); the executed notebook is kept at {out}")
    print(f"[{stage}] done in {entry['seconds']} s ({entry['artefacts']} artefacts recorded)", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; errors are one line on stderr (exit 2), an interruption exits 130 (SIGTERM: 143)."""
    ap = argparse.ArgumentParser(prog="python -m lib.reproduce", description=__doc__.split("\n")[0])
    ap.add_argument("params", help="params/<file>.yaml")
    ap.add_argument("--only", type=lambda v: v.split(","), help="comma-separated notebook numbers, e.g. 00,01")
    ap.add_argument("--force", action="store_true", help="re-run stages that are up to date")
    ap.add_argument("--accept-hub-changes", action="store_true",
                    help="accept hub revisions or data files that differ from those the run's manifest records")
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        if args.launcher:  # training, sampling parts, then the notebooks through `run`, as jobs (lib.cluster)
            with _signals(), _env(ACCEPT_HUB_ENV, "1" if args.accept_hub_changes else None):
                root = launch(args, run, [nb.name[:2] for nb in notebooks(args.only)])
        else:
            root = run(args.params, args.only, args.force, accept_hub_changes=args.accept_hub_changes)
    except Stopped as e:
        print(f"stopped by {e}", file=sys.stderr)
        return 128 + e.signum
    except (ConfigError, RuntimeError, OSError) as e:  # lib.cluster.ClusterError is a RuntimeError
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"results in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
