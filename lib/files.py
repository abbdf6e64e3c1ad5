"""File helpers at the bottom of the layering: atomic writes, hashes and the download cache folder."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one step (nothing half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
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


def cache_root(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """The download cache: `cache_dir`, else $AIG_CACHE_DIR, else ~/.cache/aig_workbook."""
    root = cache_dir or os.environ.get("AIG_CACHE_DIR") or Path.home() / ".cache" / "aig_workbook"
    return Path(root).expanduser()
