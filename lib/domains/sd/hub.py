"""Pinned and recorded downloads: Hugging Face hub models at a revision, data files by URL with their sha256, and
torch-fidelity's Inception weights verified against their published sha256 and loaded weights-only (torch-fidelity
itself would unpickle them after a download with no hash check: `torch_fidelity_weights` hands it our state dict).

Every hub load goes through `load` (a from_pretrained-style call) at the revision the params name
(`sd.revisions.<key>`, default: the branch `main`); the commit it resolved to (the hub cache's `refs/<revision>`)
is recorded in the run's manifest.json under "hub", as is the sha256 of every data file `fetch` hands out. A later
load that resolves to another commit, or a data file whose hash changed, is refused unless accepted
($AIG_ACCEPT_HUB_CHANGES=1, set by `python -m lib.reproduce --accept-hub-changes`): the run's artefacts were made
with the recorded one. `configure` (called by the SD domain) sets the revisions and the run folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lib.errors import ArtefactError
from lib.files import ACCEPT_HUB_ENV, cache_root, read_json, sha256_file, write_text

ACCEPT_ENV = ACCEPT_HUB_ENV  # set by the runner's --accept-hub-changes
REVISION_KEYS = ("model", "reward", "processor", "dino", "clip", "hpdv2", "pickapic")

# torch-fidelity's InceptionV3 (FID) weights. The 8 hex digits in the file name are the start of its sha256
# (torch.hub's convention); the full hash and size are as published by two independent projects that pin this file.
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_SIZE = 95_628_359


class HubChanged(RuntimeError):
    """A hub revision or a data file resolved to something other than what the run's manifest records."""


@dataclass
class _Policy:
    revisions: dict[str, str] = field(default_factory=dict)  # revision key -> branch, tag or commit
    repos: dict[str, str] = field(default_factory=dict)  # hub repo id -> revision key
    root: Optional[Path] = None  # the run folder whose manifest records what was resolved


POLICY = _Policy()
LEDGER: dict[str, dict] = {}  # what this process resolved: name -> entry


def configure(revisions: dict[str, str], repos: dict[str, str], root: Optional[Path]) -> None:
    """Set the revisions (by key), which key governs each hub repo, and the run folder to record into."""
    POLICY.revisions, POLICY.repos = dict(revisions), dict(repos)
    POLICY.root = Path(root) if root is not None else None


def revision(key: str) -> str:
    """The revision the params name for a key (default: the branch 'main')."""
    return POLICY.revisions.get(key, "main")


def is_local(src: str | os.PathLike) -> bool:
    """True for a local file or directory (loaded as is, hashed by the domain's stamp)."""
    return Path(src).expanduser().exists()


def resolved_commit(repo_id: str, rev: str, cache_dir=None, repo_type: str = "model") -> Optional[str]:
    """The commit a revision resolved to in the hub cache (a commit itself passes through); None if unknown."""
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev
    from huggingface_hub import constants

    folder = Path(cache_dir or constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = folder / "refs" / rev
    return ref.read_text().strip() if ref.is_file() else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def load(fn: Callable, src: str, what: str, override: str, repo_type: str = "model", **kwargs) -> Any:
    """fn(src, revision=<pinned>, **kwargs) for a hub id, recording the commit it resolved to; fn(src, **kwargs) for a
    local path. Offline failures name the source, the revision, the override and the revision key."""
    if is_local(src):
        return fn(src, **kwargs)
    key = POLICY.repos.get(src)
    rev = revision(key) if key else "main"
    try:
        obj = fn(src, revision=rev, **kwargs)
    except OSError as e:
        pin = f"; or set `sd.revisions.{key}` to a revision already in your cache" if key else ""
        raise OSError(f"could not load the {what} {src!r} at revision {rev!r} ({_first_line(e)}); on an offline "
                      f"machine download it first (`hf download {src} --revision {rev}`) and pass its local path as "
                      f"`{override}`{pin}") from e
    commit = resolved_commit(src, rev, kwargs.get("cache_dir"), repo_type)
    record(f"{what} {src}", {"repo": src, "revision": rev, "key": f"sd.revisions.{key}" if key else None,
                             "commit": commit}, compare="commit")
    return obj


def record(name: str, entry: dict, compare: str) -> None:
    """Note what a load resolved to; in the run's manifest.json, refuse a change of entry[compare] against the
    recorded value unless accepted (module docstring)."""
    LEDGER[name] = entry
    root = POLICY.root
    if root is None or entry.get(compare) is None:
        return
    path = root / "manifest.json"
    data = read_json(path, "run manifest", "delete it to start the run's record afresh") if path.exists() else {}
    hub = data.setdefault("hub", {})
    old = hub.get(name) or {}
    if old.get(compare) not in (None, entry[compare]):
        where = f"pin `{entry['key']}: {old[compare]}` to reproduce them, or " if entry.get("key") else ""
        if os.environ.get(ACCEPT_ENV) != "1":
            raise HubChanged(f"{name}: resolved to {compare} {entry[compare]}, but {path} records {old[compare]} "
                             f"(the run's artefacts were made with it); {where}re-run with --accept-hub-changes "
                             f"({ACCEPT_ENV}=1) to accept the new one")
        print(f"note: {name}: accepting {compare} {entry[compare]} in place of {old[compare]}", file=sys.stderr)
    if old != entry:
        hub[name] = entry
        write_text(path, json.dumps(data, indent=1))


def _verify(path: Path, sha256: Optional[str], url: str) -> Path:
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256:
            raise ValueError(f"{path}: sha256 {got} does not match the expected {sha256} of {url}")
    return path


def fetch(url: str, filename: str, *, sha256: Optional[str] = None, path: Optional[str | os.PathLike] = None,
          cache_dir: Optional[str | os.PathLike] = None, override: str = "path=",
          record_as: Optional[str] = None) -> Path:
    """A verified local copy of `url`: the override `path`, else the cache, else a download into the cache.
    `record_as` records the sha256 of a downloaded or cached copy in the run's manifest (`record`)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{filename}: the local override {p} does not exist (canonical URL: {url})")
        found = _verify(p, sha256, url)
    else:
        target = cache_root(cache_dir) / filename
        found = _verify(target, sha256, url) if target.is_file() else _download(url, target, sha256, filename, override)
    if record_as and path is None:  # a downloaded (or cached) copy; a local override is the user's own file
        record(record_as, {"url": url, "file": str(found), "sha256": sha256 or sha256_file(found)}, compare="sha256")
    return found


def _download(url: str, target: Path, sha256: Optional[str], filename: str, override: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
        _verify(Path(tmp), sha256, url)
        os.replace(tmp, target)
    except Exception as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, ValueError):
            raise
        raise RuntimeError(
            f"could not download {filename} from {url} ({type(e).__name__}: {e}); download it by hand and pass "
            f"its local path as {override}<file> (or place it at {target})"
        ) from e
    return target


def inception_state_dict(path: Optional[str | os.PathLike] = None, sha256: Optional[str] = None) -> dict[str, torch.Tensor]:
    """torch-fidelity's InceptionV3 weights, read with torch.load(weights_only=True).

    Without `path` they come from torch.hub's checkpoint folder, where torch-fidelity keeps them (downloaded there
    with torch.hub's own prefix check if absent), and must match the pinned sha256 (`sha256` overrides the pin). A
    local `path` (sd.feature_paths['inception']) is the user's choice: it is read weights-only as well, and a hash
    other than the pinned one is reported (FIDs are then not comparable with published ones), not refused."""
    want = sha256 or INCEPTION_SHA256
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{INCEPTION_FILE}: the local override {p} does not exist (canonical URL: "
                                    f"{INCEPTION_URL})")
        got = sha256_file(p)
        if got != want:
            warnings.warn(f"{p}: sha256 {got} is not the pinned {want} of {INCEPTION_URL}: FID, precision, recall, "
                          "SCD and LSCD from these weights are not comparable with published numbers", stacklevel=2)
    else:
        p = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if not p.is_file():
            from torch_fidelity import feature_extractor_inceptionv3 as tfi

            try:  # torch.hub's download (check_hash: the name's 8-digit prefix); weights-only, so nothing runs
                tfi.load_state_dict_from_url(INCEPTION_URL, progress=False, check_hash=True, weights_only=True,
                                             file_name=INCEPTION_FILE)
            except Exception as e:  # noqa: BLE001 - offline, or a failed download
                raise RuntimeError(f"could not download {INCEPTION_FILE} from {INCEPTION_URL} ({_first_line(e)}); "
                                   f"download it by hand and pass its local path as sd.feature_paths['inception'] "
                                   f"(or place it at {p})") from e
        _verify(p, want, INCEPTION_URL)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, or not a plain state dict
        raise ArtefactError(f"{p}: not readable as a weights-only state dict ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise ArtefactError(f"{p}: expected a state dict of tensors, found {type(state).__name__}")
    return state


@contextlib.contextmanager
def torch_fidelity_weights(state: dict) -> Any:
    """While active, torch-fidelity's InceptionV3 takes `state` instead of downloading (unverified) and unpickling
    its weights: its module-level `load_state_dict_from_url` is replaced for the duration."""
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        yield
    finally:
        tfi.load_state_dict_from_url = original
