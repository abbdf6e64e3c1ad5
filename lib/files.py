"""File helpers at the bottom of the layering: atomic writes, hashes, artefact records, the run lock and the download
cache folder.

Artefact records. While the runner executes a stage it names a log file in $AIG_ARTEFACT_LOG; every atomic write
(`atomic_path`) and every artefact a stage reuses after verifying it (`note_artefact`) appends the file's path
there, from the notebook kernel or any process it starts. The runner turns the log into the stage's record
(`record_files`: path relative to the run folder, size, sha256) and skips the stage later only if every recorded
file is still present and matches (`verify_records`).

The run lock (`run_lock`) is an exclusive `flock` on `<run>/.run.lock` holding the pid, host and command of its
owner; the kernel lives for as long as the process, so a lock left by a killed process is free again (and taken over
with a note). $AIG_RUN_LOCK names the folder whose lock a parent process (the runner) holds for its children.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from lib.errors import ArtefactError, RunLocked

ARTEFACT_LOG = "AIG_ARTEFACT_LOG"
LOCK_ENV = "AIG_RUN_LOCK"
LOCK_NAME = ".run.lock"


def _umask() -> int:
    """This process's umask, read without changing it (Linux /proc; 0o022 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's 0600 would hide results from a shared server's group


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one step (nothing half-written) and
    the file is noted in the running stage's artefact log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        note_artefact(path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: Path | str, write) -> None:
    """Call write(binary file) on a temporary file next to `path`, then move it into place in one step."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)


def write_text(path: Path | str, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def note_artefact(path: Path | str) -> None:
    """Add a file to the running stage's artefact log (no-op outside the runner): written, or reused after it
    verified."""
    log = os.environ.get(ARTEFACT_LOG)
    if not log:
        return
    line = (str(Path(path).resolve()) + "\n").encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of a short line: atomic under O_APPEND, so processes may share the log
    finally:
        os.close(fd)


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-able description of a configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path | str, root: Path | str | None = None) -> dict:
    """{path (relative to root when given), size, sha256} of a file."""
    path = Path(path)
    name = str(path.resolve().relative_to(Path(root).resolve())) if root is not None else str(path)
    return {"path": name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def mismatch(path: Path | str, size: Optional[int], sha256: Optional[str]) -> Optional[str]:
    """None if the file exists with this size and sha256 (None: not checked), else why not."""
    path = Path(path)
    if not path.is_file():
        return "is missing"
    got = path.stat().st_size
    if size is not None and got != size:
        return f"has {got} bytes where {size} were recorded (truncated or replaced)"
    if sha256 is not None and sha256_file(path) != sha256:
        return "does not match the sha256 recorded when it was written (replaced or corrupted)"
    return None


def verify_records(records: Iterable[dict], root: Path | str) -> Optional[str]:
    """None if every recorded file (`file_record` entries relative to root) is present and matches; else a
    one-line reason naming the first file that does not."""
    for rec in records:
        why = mismatch(Path(root) / rec["path"], rec.get("size"), rec.get("sha256"))
        if why:
            return f"{rec['path']} {why}"
    return None


def record_files(paths: Iterable[Path | str], root: Path | str) -> list[dict]:
    """Sorted `file_record`s of the existing files among paths that lie inside root."""
    root = Path(root).resolve()
    found = set()
    for p in paths:
        p = Path(p).resolve()
        if p.is_file() and p.is_relative_to(root):
            found.add(p)
    return [file_record(p, root) for p in sorted(found)]


def read_json(path: Path | str, what: str = "file", fix: str = "") -> Any:
    """JSON of a file, or an ArtefactError naming the file (missing, unreadable or not JSON) and `fix`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtefactError(f"{path}: the {what} is missing{'; ' + fix if fix else ''}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtefactError(f"{path}: the {what} is unreadable or truncated ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}){'; ' + fix if fix else ''}") from None


def inside(path: Path | str, folder: Path | str) -> bool:
    """True if path, with every symlink and '..' resolved, lies inside folder (or is folder)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"process {info['pid']} on {info['host']} ({info.get('command', '?')}, since "
                f"{info.get('since', '?')})")
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def run_lock(root: Path | str) -> Iterator[None]:
    """Hold the run folder's exclusive lock (see the module docstring); RunLocked if another process holds it.
    A no-op where $AIG_RUN_LOCK names this folder (a parent process holds it for us)."""
    root = Path(root)
    if os.environ.get(LOCK_ENV) == str(root.resolve()):
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            raise RunLocked(f"{root} is in use by {_holder(held)}: a second run into the same folder would redo "
                            f"and overwrite its work; wait for it to finish or stop it") from None
        try:  # the file may have been removed by its previous owner between our open and our flock: try again
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    left = os.pread(fd, 4096, 0).decode(errors="replace")
    if left.strip():
        print(f"note: taking over the lock of {root} left by {_holder(left)}, which is no longer running",
              file=sys.stderr)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200],
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    previous = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = str(root.resolve())  # children (notebook kernels) run under this lock
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = previous
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def cache_root(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """The download cache: `cache_dir`, else $AIG_CACHE_DIR, else ~/.cache/aig_workbook."""
    root = cache_dir or os.environ.get("AIG_CACHE_DIR") or Path.home() / ".cache" / "aig_workbook"
    return Path(root).expanduser()


# Set by `python -m lib.reproduce --accept-hub-changes`: hub loads accept a resolved revision or data-file hash that
# differs from the one the run's manifest recorded (the domains' hub loaders read it).
ACCEPT_HUB_ENV = "AIG_ACCEPT_HUB_CHANGES"
