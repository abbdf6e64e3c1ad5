"""The sample store: every method's samples on a prompt set, as written by notebook 02 and read by everything else.

Samples of one (method, setting) on a prompt set are stored as shards `samples/<prompt set>/<method key>/
shard_rRRR_XXXXX.npz` (arrays `x` in the domain's storage form, `prompt` index, `seed`, `position` in the full list
of (prompt, seed) pairs), each written atomically; `done.json` marks a complete, current set and records the
method, its setting and the prompt texts. Under several processes process r writes pairs r, r + N, ... into its
own shards; `read_samples` puts the rows back in pair order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lib.files import atomic_path, config_hash


def write_samples(out_dir: Path, key: str, samples: np.ndarray, pairs: Sequence[tuple[int, int]], stamp: str,
                  positions: Sequence[int] | None = None, rank: int = 0, shard_size: int = 100_000) -> None:
    """Store samples (N, ...) with their prompt indices, seeds and positions in the pair list as npz shards."""
    folder = Path(out_dir) / key
    pos = np.arange(len(pairs)) if positions is None else np.asarray(positions)
    for k, lo in enumerate(range(0, len(pairs), shard_size)):
        p = np.array(pairs[lo: lo + shard_size])
        with atomic_path(folder / f"shard_r{rank:03d}_{k:05d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=samples[lo: lo + shard_size], prompt=p[:, 0], seed=p[:, 1], position=pos[lo: lo + shard_size])


def clear_samples(out_dir: Path, key: str) -> None:
    """Remove the shards and the done marker of a key (before it is sampled again)."""
    folder = Path(out_dir) / key
    for f in [*folder.glob("shard_*.npz"), folder / "done.json"]:
        f.unlink(missing_ok=True)


def mark_done(out_dir: Path, key: str, stamp: str, n: int, meta: Optional[dict] = None) -> None:
    """Record that the shards of key hold all n samples of this stamp (plus meta: method, setting, prompts)."""
    with atomic_path(Path(out_dir) / key / "done.json") as tmp:
        tmp.write_text(json.dumps({"stamp": stamp, "n": n, **(meta or {})}))


def read_meta(out_dir: Path, key: str) -> dict:
    """The done.json record of a complete sample set: stamp, n, method, setting, prompts."""
    done = Path(out_dir) / key / "done.json"
    if not done.exists():
        raise FileNotFoundError(f"{done}: no complete sample set (run notebook 02)")
    return json.loads(done.read_text())


def is_done(out_dir: Path, key: str, stamp: str) -> bool:
    """True if samples of this key were written with this stamp."""
    done = Path(out_dir) / key / "done.json"
    return done.exists() and json.loads(done.read_text()).get("stamp") == stamp


def read_samples(out_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All shards in pair order: samples (N, ...), prompt indices (N,), seeds (N,)."""
    shards = sorted((Path(out_dir) / key).glob("shard_*.npz"))
    if not shards:
        raise FileNotFoundError(f"no samples for {key} in {out_dir}: run notebook 02 first")
    parts = [np.load(s) for s in shards]
    order = np.argsort(np.concatenate([p["position"] for p in parts]), kind="stable")
    return tuple(np.concatenate([p[name] for p in parts])[order] for name in ("x", "prompt", "seed"))


SHARD_LAYOUT = 2  # bump when the shard format changes, so older shards count as stale


def stamp_of(*parts) -> str:
    """Config hash used to decide whether stored samples are current."""
    return config_hash([SHARD_LAYOUT, *parts])
