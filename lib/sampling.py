"""Notebook 02's engine: sample every method on a prompt set with paired per-sample seeds, resumably.

Samples of one (method, setting) are stored as shards `samples/<key>/shard_XXXXX.npz` (arrays `x`, `prompt`,
`seed`), each written atomically and skipped when it exists with the same config hash.
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
             progress: bool = False) -> np.ndarray:
    """Stored samples (N, ...) (domain.to_storage) for (prompt index, seed) pairs, in batches."""
    out = []
    with torch.no_grad():
        for lo in tqdm(range(0, len(pairs), batch_size), disable=not progress, desc="batches", leave=False):
            chunk = pairs[lo: lo + batch_size]
            cond = domain.encode([prompts[j] for j, _ in chunk])
            x = sample(denoiser, domain.scheduler, domain.noise([s for _, s in chunk]), cond, domain.num_steps)
            out.append(domain.to_storage(domain.decode(x)))
    return np.concatenate(out)


def write_samples(out_dir: Path, key: str, samples: np.ndarray, pairs: Sequence[tuple[int, int]], stamp: str,
                  shard_size: int = 100_000) -> None:
    """Store samples (N, ...) with their prompt indices and seeds as npz shards."""
    folder = Path(out_dir) / key
    for k, lo in enumerate(range(0, len(pairs), shard_size)):
        p = np.array(pairs[lo: lo + shard_size])
        with atomic_path(folder / f"shard_{k:05d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=samples[lo: lo + shard_size], prompt=p[:, 0], seed=p[:, 1], stamp=stamp)
    with atomic_path(folder / "done.json") as tmp:
        tmp.write_text(json.dumps({"stamp": stamp, "n": len(pairs)}))


def is_done(out_dir: Path, key: str, stamp: str) -> bool:
    """True if samples of this key were written with this stamp."""
    done = Path(out_dir) / key / "done.json"
    return done.exists() and json.loads(done.read_text()).get("stamp") == stamp


def read_samples(out_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated shards: samples (N, ...), prompt indices (N,), seeds (N,)."""
    shards = sorted((Path(out_dir) / key).glob("shard_*.npz"))
    if not shards:
        raise FileNotFoundError(f"no samples for {key} in {out_dir}: run notebook 02 first")
    parts = [np.load(s) for s in shards]
    return tuple(np.concatenate([p[name] for p in parts]) for name in ("x", "prompt", "seed"))


def stamp_of(*parts) -> str:
    """Config hash used to decide whether stored samples are current."""
    return config_hash(parts)
