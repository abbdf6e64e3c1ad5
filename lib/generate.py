"""Notebook 02's engine: samples of one denoiser for (prompt, seed) pairs with per-sample noise (paired seeds)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lib.domains.base import Domain
from lib.guidance import Denoiser
from lib.samplers import sample


def paired_seeds(num_prompts: int, per_prompt: int, offset: int = 0) -> list[tuple[int, int]]:
    """(prompt index j, seed) pairs; sample i of prompt j has seed offset + j * per_prompt + i in every method."""
    return [(j, offset + j * per_prompt + i) for j in range(num_prompts) for i in range(per_prompt)]


def generate(domain: Domain, denoiser: Denoiser, prompts: Sequence[str], pairs: Sequence[tuple[int, int]],
             batch_size: int, progress: bool = False, num_steps: Optional[int] = None) -> np.ndarray:
    """Stored samples (N, ...) (domain.to_storage) for (prompt index, seed) pairs, in batches, with
    num_steps sampler steps (default: domain.num_steps; the denoiser must be built for the same N)."""
    out = []
    with torch.no_grad():
        for lo in tqdm(range(0, len(pairs), batch_size), disable=not progress, desc="batches", leave=False):
            chunk = pairs[lo: lo + batch_size]
            cond = domain.encode([prompts[j] for j, _ in chunk])
            x = sample(denoiser, domain.scheduler, domain.noise([s for _, s in chunk]), cond,
                       num_steps or domain.num_steps)
            out.append(domain.to_storage(domain.decode(x)))
    return np.concatenate(out)
