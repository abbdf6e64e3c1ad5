"""Notebook 02's engine: sample every method on a prompt set with paired per-sample seeds, resumably.

Samples of one (method, setting) are stored as shards `samples/<key>/shard_rRRR_XXXXX.npz` (arrays `x`, `prompt`,
`seed`, `position` in the full list of pairs), each written atomically; `done.json` marks a complete, current set.
Under several processes (`accelerate launch -m lib.launch ... --stages sample`) process r samples pairs r, r + N, ...
and writes its own shards; `read_samples` puts the rows back in pair order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lib.domain import Domain
from lib.io import atomic_path, config_hash
from lib.samplers import sample


def paired_seeds(num_prompts: int, per_prompt: int, offset: int = 0) -> list[tuple[int, int]]:
    """(prompt index j, seed) pairs; sample i of prompt j has seed offset + j * per_prompt + i in every method."""
    return [(j, offset + j * per_prompt + i) for j in range(num_prompts) for i in range(per_prompt)]


def generate(domain: Domain, denoiser, prompts: Sequence[str], pairs: Sequence[tuple[int, int]], batch_size: int,
             progress: bool = False, num_steps: int | None = None) -> np.ndarray:
    """Stored samples (N, ...) (domain.to_storage) for (prompt index, seed) pairs, in batches, with
    num_steps sampler steps (default: domain.num_steps)."""
    out = []
    with torch.no_grad():
        for lo in tqdm(range(0, len(pairs), batch_size), disable=not progress, desc="batches", leave=False):
            chunk = pairs[lo: lo + batch_size]
            cond = domain.encode([prompts[j] for j, _ in chunk])
            x = sample(denoiser, domain.scheduler, domain.noise([s for _, s in chunk]), cond, num_steps or domain.num_steps)
            out.append(domain.to_storage(domain.decode(x)))
    return np.concatenate(out)


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


def mark_done(out_dir: Path, key: str, stamp: str, n: int) -> None:
    """Record that the shards of key hold all n samples of this stamp."""
    with atomic_path(Path(out_dir) / key / "done.json") as tmp:
        tmp.write_text(json.dumps({"stamp": stamp, "n": n}))


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
