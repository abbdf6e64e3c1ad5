"""The sample store: every method's samples on a prompt set, as written by notebook 02 and read by everything else.

Samples of one (method, setting) on a prompt set are stored as shards `samples/<prompt set>/<method key>/
shard_rRRR_XXXXX.npz` (arrays `x` in the domain's storage form, `prompt` index, `seed`, `position` in the full list
of (prompt, seed) pairs), each written atomically; `done.json` marks a complete, current set: it records the stamp,
the method, its setting, the prompt texts, and the size and sha256 of every shard. Under several processes process r
writes pairs r, r + N, ... into its own shards; `read_samples` puts the rows back in pair order.

Nothing is trusted blindly: a set counts as done only if every recorded shard is present and matches its record
(`why_not_done`), `read_samples` reads exactly the recorded shards and checks them first, every load error names the
file, and non-finite samples are refused when written and when read.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lib.errors import ArtefactError
from lib.files import atomic_path, config_hash, file_record, inside, mismatch, note_artefact, read_json, write_text

RERUN = "re-run notebook 02 (python -m lib.reproduce <params> --only 02)"


def _folder(out_dir: Path, key: str) -> Path:
    """samples/<prompt set>/<method key>, refused if it would resolve outside the samples folder."""
    folder = Path(out_dir) / key
    if not inside(folder, out_dir) or Path(out_dir).resolve() == folder.resolve():
        raise ArtefactError(f"sample set {key!r} would be stored at {folder.resolve()}, outside {Path(out_dir).resolve()}: "
                            f"prompt-set names must be plain names")
    return folder


def _finite(samples: np.ndarray, what: str) -> None:
    if np.issubdtype(samples.dtype, np.floating) and not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).any(axis=tuple(range(1, samples.ndim))).sum()) if samples.ndim > 1 else \
            int((~np.isfinite(samples)).sum())
        raise ArtefactError(f"{what}: {bad} of {len(samples)} samples are not finite (NaN or inf): the model or the "
                            f"sampler diverged; retrain (notebook 01) before sampling again")


def write_samples(out_dir: Path, key: str, samples: np.ndarray, pairs: Sequence[tuple[int, int]], stamp: str,
                  positions: Sequence[int] | None = None, rank: int = 0, shard_size: int = 100_000) -> None:
    """Store samples (N, ...) with their prompt indices, seeds and positions in the pair list as npz shards."""
    folder = _folder(out_dir, key)
    _finite(np.asarray(samples), f"the samples of {key}")
    pos = np.arange(len(pairs)) if positions is None else np.asarray(positions)
    for k, lo in enumerate(range(0, len(pairs), shard_size)):
        p = np.array(pairs[lo: lo + shard_size])
        with atomic_path(folder / f"shard_r{rank:03d}_{k:05d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=samples[lo: lo + shard_size], prompt=p[:, 0], seed=p[:, 1], position=pos[lo: lo + shard_size])


def clear_samples(out_dir: Path, key: str) -> None:
    """Remove the shards and the done marker of a key (before it is sampled again)."""
    folder = _folder(out_dir, key)
    for f in [*folder.glob("shard_*.npz"), folder / "done.json"]:
        f.unlink(missing_ok=True)


def mark_done(out_dir: Path, key: str, stamp: str, n: int, meta: Optional[dict] = None) -> None:
    """Record that the shards of key hold all n samples of this stamp (plus meta: method, setting, prompts), with
    the size and sha256 of every shard."""
    folder = _folder(out_dir, key)
    shards = [file_record(s, folder) for s in sorted(folder.glob("shard_*.npz"))]
    write_text(folder / "done.json", json.dumps({"stamp": stamp, "n": n, **(meta or {}), "shards": shards}))


def read_meta(out_dir: Path, key: str) -> dict:
    """The done.json record of a complete sample set: stamp, n, method, setting, prompts, shards."""
    done = _folder(out_dir, key) / "done.json"
    if not done.exists():
        raise FileNotFoundError(f"{done}: no complete sample set (run notebook 02)")
    return read_json(done, "record of a complete sample set", RERUN)


def why_not_done(out_dir: Path, key: str, stamp: str) -> Optional[str]:
    """None if samples of this key were completed with this stamp and every shard still matches its record; else
    why not ('' when the set was never completed, a one-line reason naming the file when it no longer verifies)."""
    folder = _folder(out_dir, key)
    done = folder / "done.json"
    if not done.exists():
        return ""
    try:
        meta = read_json(done, "record of a complete sample set")
    except ArtefactError as e:
        return str(e)
    if meta.get("stamp") != stamp:
        return "" if "shards" in meta else f"{done} predates shard records"
    for rec in meta.get("shards", []):
        why = mismatch(folder / rec["path"], rec["size"], rec["sha256"])
        if why:
            return f"{folder / rec['path']} {why}"
    return None


def is_done(out_dir: Path, key: str, stamp: str) -> bool:
    """True if samples of this key were written with this stamp and every shard verifies; the verified files are
    noted as reused in the running stage's artefact log."""
    if why_not_done(out_dir, key, stamp) is not None:
        return False
    note_reused(out_dir, key)
    return True


def note_reused(out_dir: Path, key: str) -> None:
    """Note a verified, complete set's shards and done.json as reused in the running stage's artefact log."""
    folder = _folder(out_dir, key)
    for rec in read_meta(out_dir, key)["shards"]:
        note_artefact(folder / rec["path"])
    note_artefact(folder / "done.json")


def read_samples(out_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All recorded shards in pair order: samples (N, ...), prompt indices (N,), seeds (N,); every shard is checked
    against done.json first, and non-finite samples are refused."""
    folder = _folder(out_dir, key)
    if not (folder / "done.json").exists():
        if not list(folder.glob("shard_*.npz")):
            raise FileNotFoundError(f"no samples for {key} in {out_dir}: run notebook 02 first")
        raise ArtefactError(f"{folder / 'done.json'}: missing, so the shards of {key} are incomplete; {RERUN}")
    meta = read_meta(out_dir, key)
    parts = []
    for rec in meta.get("shards", []):
        shard = folder / rec["path"]
        why = mismatch(shard, rec["size"], rec["sha256"])
        if why:
            raise ArtefactError(f"{shard} {why}; {RERUN}")
        try:
            with np.load(shard) as z:
                parts.append({name: z[name] for name in ("x", "prompt", "seed", "position")})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ArtefactError(f"{shard}: unreadable ({type(e).__name__}: {e}); {RERUN}") from None
    if not parts:
        raise ArtefactError(f"{folder / 'done.json'} lists no shards; {RERUN}")
    order = np.argsort(np.concatenate([p["position"] for p in parts]), kind="stable")
    x, prompt, seed = (np.concatenate([p[name] for p in parts])[order] for name in ("x", "prompt", "seed"))
    label = f"{meta.get('method', key)} {meta.get('setting', '')}".strip()
    _finite(x, f"{folder}: the stored samples of {label} on {meta.get('prompt_set', key.split('/')[0])}")
    return x, prompt, seed


SHARD_LAYOUT = 3  # bump when the shard format changes, so older shards count as stale (3: done.json records shards)


def stamp_of(*parts) -> str:
    """Config hash used to decide whether stored samples are current."""
    return config_hash([SHARD_LAYOUT, *parts])
