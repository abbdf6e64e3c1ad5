"""Guidance as denoiser wrappers: AIG (AIG paper Eq. 11) and classifier-free guidance.

A denoiser is any callable `(x, t, cond) -> eps` with x of shape (B, ...) and t a scalar or a (B,) tensor of
training timesteps. Wrappers return a denoiser with the same signature, so every sampler works unchanged.
Both wrappers are linear in the network outputs, so they compose exactly: with per-branch classifier-free
guidance each branch's guided prediction is formed first and the two are then mixed,
    eps = gamma(s) [u_b + w_b (c_b - u_b)] + (1 - gamma(s)) [u_t + w_t (c_t - u_t)].
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch

from lib.schedules import Const, Schedule, StepClock, parse

Denoiser = Callable[[torch.Tensor, Any, Any], torch.Tensor]


def _per_sample(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) weight against x (B, ...)."""
    return w.reshape(-1, *([1] * (x.ndim - 1))) if w.ndim else w


class AIG:
    """eps = gamma(s) eps_base + (1 - gamma(s)) eps_tuned (AIG paper Eq. 11), s = clock(t) = 1 - i / N at step i.

    A branch whose weight is zero for the whole batch is not evaluated (a step schedule costs one call per step).
    `calls` counts the network evaluations of each branch.
    """

    def __init__(self, base: Denoiser, tuned: Denoiser, gamma: Schedule | str, clock: Callable[[Any], Any]):
        self.base, self.tuned = base, tuned
        self.gamma = parse(gamma)
        self.clock = clock
        self.calls: Counter = Counter()

    def weight(self, t: Any, x: torch.Tensor) -> torch.Tensor:
        """gamma(s(t)) as a float tensor on x's device: () or (B,); a constant schedule needs no clock."""
        if isinstance(self.gamma, Const):
            return torch.tensor(self.gamma.g, device=x.device, dtype=x.dtype)
        s = torch.as_tensor(self.clock(t), dtype=torch.float64)
        return self.gamma(s).to(device=x.device, dtype=x.dtype)

    def __call__(self, x: torch.Tensor, t: Any, cond: Any) -> torch.Tensor:
        g = self.weight(t, x)  # () or (B,)
        eps = 0.0
        if bool((g > 0).any()):
            self.calls["base"] += 1
            eps = eps + _per_sample(g, x) * self.base(x, t, cond)
        if bool((g < 1).any()):
            self.calls["tuned"] += 1
            eps = eps + _per_sample(1 - g, x) * self.tuned(x, t, cond)
        return eps


def aig(base: Denoiser, tuned: Denoiser, gamma: Schedule | str, timesteps: Any) -> AIG:
    """The AIG denoiser of an N-step chain with these sampling `timesteps` (gamma = the base model's weight)."""
    return AIG(base, tuned, gamma, StepClock(timesteps))


def classifier_free(denoiser: Denoiser, null_cond: Any, scale: float) -> Denoiser:
    """Classifier-free guidance: eps_u + w (eps_c - eps_u) on one doubled batch; w = 1 is the plain call.

    `null_cond` has the batch layout of `cond` (B, ...) or a single row that is expanded to it.
    """
    if scale == 1.0:
        return denoiser

    def guided(x: torch.Tensor, t: Any, cond: torch.Tensor) -> torch.Tensor:
        null = null_cond.expand_as(cond) if null_cond.shape[0] == 1 else null_cond
        tt = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim else t
        eps_u, eps_c = denoiser(torch.cat([x, x]), tt, torch.cat([null, cond])).chunk(2)
        return eps_u + scale * (eps_c - eps_u)

    return guided
