"""Notebook 03's engine: rewards and coverage metrics of every sampled method into one tidy metrics.csv.

Rows: method, setting, prompt_set, metric, value, n, ci95 (half-width, rewards only). Diversity metrics compare
each method's coverage-set features with the base model's (the reference set), paired seed for seed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lib import metrics as M
from lib.domain import Domain
from lib.methods import Method
from lib.sampling import read_samples
from lib.train import KLProbe, base_branch
from lib.samplers import sample

DIVERSITY: dict[str, Callable] = {"fid": M.fid, "precision": M.precision, "recall": M.recall, "scd": M.scd, "lscd": M.lscd}
MAXIMIZE = {"reward": True, "recall": True, "precision": True, "clip": True, "dino_diversity": True,
            "fid": False, "scd": False, "lscd": False, "kl": False}


def batched(domain: Domain, fn: Callable[[torch.Tensor, list], torch.Tensor], x: np.ndarray, prompts: list,
            batch: int) -> np.ndarray:
    """Apply a function of samples (domain.from_storage of rows of x) in batches, without gradients: (N,) or (N, D)."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            v = fn(domain.from_storage(x[lo: lo + batch]), prompts[lo: lo + batch])
            out.append(np.asarray(v.cpu() if torch.is_tensor(v) else v, dtype=np.float64))
    return np.concatenate(out)


def method_rows(domain: Domain, m: Method, prompt_set: str, x: np.ndarray, prompt_idx: np.ndarray,
                ref_features: np.ndarray | None, diversity: Sequence[str], k: int, batch: int,
                features: np.ndarray | None = None) -> list[dict]:
    """Reward (mean, 95 % interval, n) and, on the coverage set, diversity metrics against the reference
    (`features` of x when already computed)."""
    names = domain.prompts(prompt_set)
    prompts = [names[j] for j in prompt_idx]
    r = batched(domain, domain.reward, x, prompts, batch)
    mean, half, n = M.mean_ci(r)
    rows = [dict(method=m.method, setting=m.setting, prompt_set=prompt_set, metric="reward", value=mean, n=n, ci95=half)]
    if ref_features is not None:
        f = features if features is not None else batched(domain, lambda xb, _: domain.features(xb), x, prompts, batch)
        for name in diversity:
            fn = DIVERSITY[name]
            value = fn(ref_features, f, k=k) if name in ("precision", "recall") else fn(ref_features, f)
            rows.append(dict(method=m.method, setting=m.setting, prompt_set=prompt_set, metric=name, value=value, n=len(f), ci95=np.nan))
    return rows


def evaluate(domain: Domain, methods: Sequence[Method], samples_dir, prompt_sets: Sequence[str], diversity: Sequence[str],
             k: int = 10, batch: int = 512, progress: bool = True) -> pd.DataFrame:
    """Tidy metrics of every method on every prompt set (diversity on 'coverage' against the base samples)."""
    rows = []
    for ps in prompt_sets:
        ref_x, ref_p, ref_s = read_samples(samples_dir, f"{ps}/{Method('base').key}")
        ref_f = batched(domain, lambda xb, _: domain.features(xb), ref_x, [None] * len(ref_x), batch) if ps == "coverage" else None
        for m in tqdm(methods, desc=f"metrics {ps}", disable=not progress):
            x, p, s = read_samples(samples_dir, f"{ps}/{m.key}")
            if not (np.array_equal(p, ref_p) and np.array_equal(s, ref_s)):
                raise ValueError(f"{m.key}: prompts/seeds differ from the base samples; re-run notebook 02")
            rows += method_rows(domain, m, ps, x, p, ref_f, diversity, k, batch,
                                features=ref_f if m == Method("base") else None)
    return pd.DataFrame(rows)


def chain_kl(domain: Domain, model: torch.nn.Module, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    """sum_t mean((eps_tuned - eps_base)^2) along the tuned model's own trajectory (AIG paper Eq. 4): (N,)."""
    probe = KLProbe(domain.denoiser(model), base_branch(domain, model), every_step=True)
    with torch.no_grad():
        sample(probe, domain.scheduler, domain.noise(seeds), domain.encode(list(prompts)), domain.num_steps)
    return torch.as_tensor(probe.total).cpu().double().numpy()


def kl_rows(domain: Domain, models: dict[Method, torch.nn.Module], per_prompt: int, offset: int = 10**6) -> list[dict]:
    """Fig. 3a data: the chain KL of each fine-tuned model on the coverage prompts (mean, 95 % interval, n)."""
    names = domain.prompts("coverage")
    rows = []
    for m, model in models.items():
        vals = np.concatenate([chain_kl(domain, model, [p] * per_prompt, range(offset + j * per_prompt, offset + (j + 1) * per_prompt))
                               for j, p in enumerate(names)])
        mean, half, n = M.mean_ci(vals)
        rows.append(dict(method=m.method, setting=m.setting, prompt_set="coverage", metric="kl", value=mean, n=n, ci95=half))
    return rows
