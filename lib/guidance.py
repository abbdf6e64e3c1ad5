"""Guidance as denoiser wrappers: AIG (AIG paper Eq. 11) and classifier-free guidance.

A denoiser is any callable `(x, t, cond) -> eps` with x of shape (B, ...) and t a scalar or a (B,) tensor of
training timesteps. Wrappers return a denoiser with the same signature, so every sampler works unchanged.
Both wrappers are linear in the network outputs, so they compose exactly: with per-branch classifier-free
guidance each branch's guided prediction is formed first and the two are then mixed,
    eps = gamma(s) [u_b + w_b (c_b - u_b)] + (1 - gamma(s)) [u_t + w_t (c_t - u_t)].
At a step where both branches count (0 < gamma < 1) AIG can take both from one network call on a stacked batch
(`paired_branches`: rows [null, cond] of the base, then of the tuned model, with a model that routes rows to the
adapter, `lib.lora.LoRAModes.both`): the same numbers as two calls up to float rounding, at about one call's cost
where the network is small enough that its per-call overhead dominates (`pairing_pays`, measured by lib.bench).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, ContextManager, Optional

import torch

from lib.schedules import Const, Schedule, StepClock, parse

Denoiser = Callable[[torch.Tensor, Any, Any], torch.Tensor]
Paired = Callable[[torch.Tensor, Any, Any], tuple[torch.Tensor, torch.Tensor]]  # (x, t, cond) -> (eps_base, eps_tuned)


# Where one call on the stacked batch beats two calls: parameters x elements of one branch call's input (rows with
# classifier-free guidance's doubling, times the latent's C x h x w) below which a call costs mostly its overhead.
# Measured with `python -m lib.bench` (one CPU thread, CPU time): one call saves 24 / 13 / -1 / -5 % on the
# miniature world's 1 M-parameter UNet (8 x 8 x 8 latents) at 4 / 16 / 64 / 256 rows, 15 / 5 / 4 % on the tiny
# pipeline's UNet at 4 / 16 / 64 rows, 13 % on the toy MLP at 16 rows, -6 to +3 % at 256 (so the toy domain does not
# pair: `paired_calls`). On an H100 (fp16, UNet calls, LoRA routed by a row mask, the variant before
# `LoRAModes.split`, so a lower bound) it saved 12 / -3 / 21 / 24 % on the world's UNet at 4 / 16 / 64 / 512 rows
# and 20 % on an SD1.4-size UNet (860 M, 4 x 64 x 64) at 2 rows, and lost 9 / 31 % on the latter at 8 / 16 rows.
PAIRED_WORK = {"cpu": 3e10, "cuda": 5e13}


def pairing_pays(params: int, numel: int, device: torch.device | str) -> bool:
    """Whether one call on the stacked batch is cheaper than two calls for a network of `params` parameters whose
    branch call takes `numel` input elements, on this device (PAIRED_WORK; other accelerators count as cuda)."""
    kind = torch.device(device).type
    return params * numel <= PAIRED_WORK.get(kind, PAIRED_WORK["cuda"])


def _per_sample(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) weight against x (B, ...)."""
    return w.reshape(-1, *([1] * (x.ndim - 1))) if w.ndim else w


class AIG:
    """eps = gamma(s) eps_base + (1 - gamma(s)) eps_tuned (AIG paper Eq. 11), s = clock(t) = 1 - i / N at step i.

    A branch whose weight is zero for the whole batch is not evaluated (a step schedule costs one call per step).
    With `paired` (x, t, cond) -> (eps_base, eps_tuned), a step that needs both branches takes them from that one
    call instead of two (where `pair_when(x)` holds, if given: the batch is small enough for it to pay). `calls` counts network calls by what they evaluate: 'base', 'tuned', 'base+tuned' (paired).
    With `fixed_clock` (the clock maps a timestep to the same s on every call) the weight of a scalar timestep is
    computed once and reused.
    """

    def __init__(self, base: Denoiser, tuned: Denoiser, gamma: Schedule | str, clock: Callable[[Any], Any],
                 paired: Optional[Paired] = None, fixed_clock: bool = False,
                 pair_when: Optional[Callable[[torch.Tensor], bool]] = None):
        self.base, self.tuned, self.paired, self.pair_when = base, tuned, paired, pair_when
        self.gamma = parse(gamma)
        self.clock = clock
        self.calls: Counter = Counter()
        self._weights: Optional[dict] = {} if fixed_clock else None

    def weight(self, t: Any, x: torch.Tensor) -> torch.Tensor:
        """gamma(s(t)) as a float tensor on x's device: () or (B,); a constant schedule needs no clock."""
        if isinstance(self.gamma, Const):
            return torch.tensor(self.gamma.g, device=x.device, dtype=x.dtype)
        s = torch.as_tensor(self.clock(t), dtype=torch.float64)
        return self.gamma(s).to(device=x.device, dtype=x.dtype)

    def _step(self, t: Any, x: torch.Tensor) -> tuple:
        """(base weight, tuned weight) broadcastable against x, whether each branch counts, and whether one branch
        alone carries weight exactly 1 (its output is then returned as it is), at t."""
        scalar = not torch.is_tensor(t) or t.ndim == 0
        key = (float(t), x.device, x.dtype, x.ndim) if self._weights is not None and scalar else None
        if key is not None and key in self._weights:
            return self._weights[key]
        g = self.weight(t, x)  # () or (B,)
        use_base, use_tuned = bool((g > 0).any()), bool((g < 1).any())
        alone = not g.ndim and float(g) in (0.0, 1.0)
        out = (_per_sample(g, x), _per_sample(1 - g, x), use_base, use_tuned, alone)
        if key is not None:
            self._weights[key] = out
        return out

    def __call__(self, x: torch.Tensor, t: Any, cond: Any) -> torch.Tensor:
        """The mixed prediction at t (module docstring), each needed branch evaluated once."""
        w_base, w_tuned, use_base, use_tuned, alone = self._step(t, x)
        eps = 0.0
        if self.paired is not None and use_base and use_tuned and (self.pair_when is None or self.pair_when(x)):
            self.calls["base+tuned"] += 1
            eps_base, eps_tuned = self.paired(x, t, cond)
            return eps + w_base * eps_base + w_tuned * eps_tuned
        if use_base:
            self.calls["base"] += 1
            eps_base = self.base(x, t, cond)
            if alone:
                return eps_base  # gamma = 1: the base model's output as it is
            eps = eps + w_base * eps_base
        if use_tuned:
            self.calls["tuned"] += 1
            eps_tuned = self.tuned(x, t, cond)
            if alone:
                return eps_tuned  # gamma = 0: the tuned model's output as it is
            eps = eps + w_tuned * eps_tuned
        return eps


def aig(base: Denoiser, tuned: Denoiser, gamma: Schedule | str, timesteps: Any, paired: Optional[Paired] = None,
        pair_when: Optional[Callable[[torch.Tensor], bool]] = None) -> AIG:
    """The AIG denoiser of an N-step chain with these sampling `timesteps` (gamma = the base model's weight)."""
    return AIG(base, tuned, gamma, StepClock(timesteps), paired, fixed_clock=True, pair_when=pair_when)


def _stack(parts: list) -> Any:
    """Concatenate batch parts along dim 0 (a timestep shared by the batch passes through)."""
    if torch.is_tensor(parts[0]) and parts[0].ndim:
        return torch.cat(parts)
    return parts[0]


def paired_branches(network: Denoiser, null_cond: Any, scales: tuple[float, float],
                    routed: Callable[[int, int], ContextManager]) -> Paired:
    """Both branches' guided predictions from one call of `network` (unguided, (x, t, cond) -> eps).

    Each branch with scale w contributes the rows [null; cond] (w != 1) or [cond] (w = 1, unguided); the base
    branch's rows come first. Inside `routed(start, rows)` the network runs rows [start, rows) as the tuned model
    and the rows before as the base (`lib.lora.LoRAModes.both`). Each branch is then guided exactly as
    `classifier_free` guides it: eps_u + w (eps_c - eps_u).
    """
    def paired(x: torch.Tensor, t: Any, cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        null = null_cond.expand_as(cond) if null_cond.shape[0] == 1 else null_cond
        xs, ts, cs, sizes = [], [], [], []
        for w in scales:
            k = 1 if w == 1.0 else 2
            xs += [x] * k
            ts += [t] * k
            cs += [cond] if k == 1 else [null, cond]
            sizes.append(k * x.shape[0])
        with routed(sizes[0], sum(sizes)):
            out = network(torch.cat(xs), _stack(ts), torch.cat(cs))
        eps = []
        for w, part in zip(scales, out.split(sizes)):
            if w == 1.0:
                eps.append(part)
            else:
                eps_u, eps_c = part.chunk(2)
                eps.append(eps_u + w * (eps_c - eps_u))
        return eps[0], eps[1]

    return paired


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
