"""Preference pairs labelled by a hidden annotator (as Pick-a-Pic and HPD were labelled by people): two images of the
same caption, the first preferred with probability sigmoid((u1 - u2) / T). Some images went through the VAE (they
look like generated ones), some were corrupted by noise or a stripe texture before the annotator saw them (so the
rewards learn that artifacts are disliked: the hardening of the rewards), and a share `bt_background_mix` had its
background moved part of the way toward the other one (so the rewards learn the annotators' continuous pull along the
path between the backgrounds instead of a barrier between two colours they never saw mixed)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from lib.domains.world.annotators import read, utility
from lib.domains.world.config import WorldConfig, shape_of
from lib.domains.world.render import LAYOUTS, Labels, render, sample_labels
from lib.domains.world.train_vae import roundtrip


@dataclass
class Pairs:
    """n pairs: images a, b (n, 3, H, W) float32 in [0, 1], caption index (n,), utilities ua, ub (n,) and the
    annotator's noisy choice first (n,) (1 = a preferred)."""

    a: np.ndarray
    b: np.ndarray
    prompt: np.ndarray
    ua: np.ndarray
    ub: np.ndarray
    first: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt)


def corrupt(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel noise (std up to 0.15) or a stripe texture (period 2-4 px, amplitude up to 0.3) on images (n, 3, H, W)."""
    n, _, h, w = x.shape
    if n == 0:
        return x.copy()
    out = x.copy()
    kind = rng.integers(2, size=n)
    amp = rng.uniform(0.03, 0.3, size=(n, 1, 1, 1))
    noise = rng.normal(size=x.shape) * amp / 2
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    period = rng.integers(2, 5, size=n)
    angle = rng.integers(3, size=n)
    phase = (np.stack([(xx, yy, xx + yy)[a] for a in angle]) + 0.5) * 2 * np.pi / period[:, None, None]
    stripes = np.sin(phase)[:, None] * amp
    out += np.where(kind[:, None, None, None] == 0, noise, stripes)
    return np.clip(out, 0, 1).astype(np.float32)


def mix_backgrounds(labels: Labels, rng: np.random.Generator, share: float) -> Labels:
    """Move the background of a `share` of the images a uniform fraction of the way toward the other end of the
    layout's backgrounds (light toward the darkest, dark toward the lightest; through the tint; in place): the
    hardening `bt_background_mix`. Draws nothing when share is 0."""
    if share <= 0:
        return labels
    n = len(labels)
    moved = (rng.random(n) < share) * rng.uniform(0, 1, size=n)
    bgs = LAYOUTS[labels.layout].bg_rgb  # (B, 3)
    other = np.where(labels.background < len(bgs) / 2, len(bgs) - 1, 0)
    delta = bgs[other] - bgs[labels.background]  # (n, 3)
    labels.tint = (labels.tint + moved[:, None] * delta).astype(np.float32)
    return labels


def make_pairs(cfg: WorldConfig, annotator: str, n: int, seed: int, vae: Optional[torch.nn.Module] = None,
               vae_share: float = 0.35, corrupt_share: float = 0.25) -> Pairs:
    """n labelled pairs for `annotator` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(len(cfg.prompts), size=n)
    imgs = []
    for _ in range(2):
        labels = mix_backgrounds(sample_labels(rng, n, cfg.shapes, cfg.colours, prompt, cfg.layout), rng,
                                 cfg.bt_background_mix)
        x = render(labels, cfg.resolution)
        if vae is not None and vae_share > 0:
            sel = np.flatnonzero(rng.random(n) < vae_share)
            if len(sel):
                with torch.no_grad():
                    x[sel] = roundtrip(vae, x[sel])
        sel = np.flatnonzero(rng.random(n) < corrupt_share / 2)
        x[sel] = corrupt(x[sel], rng)
        imgs.append(x)
    shape_ids = np.array([shape_of(cfg.prompts[j]) for j in prompt])
    ua, ub = (utility(read(x, shape_ids, cfg.layout), annotator, cfg.resolution, cfg.position_pull) for x in imgs)
    p = 1 / (1 + np.exp(-(ua - ub) / cfg.bt_temperature))
    return Pairs(imgs[0], imgs[1], prompt, ua, ub, (rng.random(n) < p).astype(np.int64))


def accuracy(score_a: np.ndarray, score_b: np.ndarray, pairs: Pairs) -> dict[str, float]:
    """Held-out pair accuracy of a reward's scores: against the annotator's true order (sign of u_a - u_b, ties
    dropped) and against its noisy choices; and the best possible accuracy on the noisy choices."""
    diff = score_a - score_b
    true = pairs.ua - pairs.ub
    keep = np.abs(true) > 1e-9
    return {"vs_truth": float(((diff > 0) == (true > 0))[keep].mean()),
            "vs_choices": float(((diff > 0) == (pairs.first == 1)).mean()),
            "annotator_vs_choices": float(((true > 0) == (pairs.first == 1)).mean()),
            "n": int(len(pairs))}


def subset(pairs: Pairs, idx: Optional[np.ndarray]) -> Pairs:
    """The pairs at the given indices."""
    return Pairs(*(getattr(pairs, k)[idx] for k in ("a", "b", "prompt", "ua", "ub", "first")))
