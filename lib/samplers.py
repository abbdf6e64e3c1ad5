"""Samplers as pure functions over a denoiser callable, stepping a diffusers scheduler.

The loop steps the scheduler's own timesteps (`sampling_timesteps`); guidance wrappers map a timestep to the
step-indexed time s_i = 1 - i / N themselves (`lib.schedules.StepClock`). The same loop serves
sampling, DRaFT training (gradient through the last K steps only, DRaFT Algorithm 1) and ReFL (stop early and
return the one-step prediction of x_0).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from lib.guidance import Denoiser


def sample(
    denoiser: Denoiser,
    scheduler,
    x_T: torch.Tensor,
    cond: Any,
    num_steps: int,
    *,
    grad_last: int = 0,
    stop_at: Optional[int] = None,
    start_at: Optional[int] = None,
    callback: Optional[Callable[[int, Any, torch.Tensor], None]] = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the reverse process from x_T (B, ...) and return x_0 (B, ...).

    grad_last = K keeps the graph only through the last K steps (x is detached before them: stop_grad in DRaFT
    Algorithm 1); stop_at = j (1 <= j <= num_steps) returns the one-step prediction x0_hat at the j-th step from
    the end (ReFL); start_at = j runs only the last j steps, from x_T = x_t at the j-th step from the end in the
    scheduler's own scaling (ImageReFL's noised real image, `noised`); callback(i, t, x) sees x after step i (i = -1
    is the starting x).
    """
    sched = copy.deepcopy(scheduler)  # schedulers carry a step index: never share one between calls
    sched.set_timesteps(num_steps, device=x_T.device)
    timesteps = sched.timesteps
    if stop_at is not None and not 1 <= stop_at <= len(timesteps):
        raise ValueError(f"stop_at = {stop_at} must lie in [1, {len(timesteps)}]")
    if start_at is not None and not (stop_at or 1) <= start_at <= len(timesteps):
        raise ValueError(f"start_at = {start_at} must lie in [{stop_at or 1}, {len(timesteps)}]")
    first = 0 if start_at is None else len(timesteps) - start_at
    x = x_T * sched.init_noise_sigma if start_at is None else x_T
    if callback:
        callback(-1, None, x)
    first_grad = len(timesteps) - grad_last
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="sampling", leave=False)):
        if i < first:
            continue
        if i == first_grad:
            x = x.detach()
        with torch.set_grad_enabled(torch.is_grad_enabled() and i >= first_grad):
            eps = denoiser(sched.scale_model_input(x, t), t, cond)
            out = sched.step(eps, t, x)
        if stop_at is not None and i == len(timesteps) - stop_at:
            return out.pred_original_sample
        x = out.prev_sample
        if callback:
            callback(i, t, x)
    return x


def sampling_timesteps(scheduler, num_steps: int) -> torch.Tensor:
    """The timesteps an N-step chain of this scheduler visits, in sampling order (noisiest first): (N,)."""
    sched = copy.deepcopy(scheduler)  # set_timesteps mutates the scheduler
    sched.set_timesteps(int(num_steps))
    return sched.timesteps.detach().cpu().clone()


def predict_x0(scheduler, x_t: torch.Tensor, eps: torch.Tensor, t: Any) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) for a variance-preserving x_t (DRaFT Alg. 1)."""
    abar = scheduler.alphas_cumprod.to(x_t.device, x_t.dtype)[int(t)]
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def renoise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (variance-preserving forward process)."""
    abar = scheduler.alphas_cumprod.to(x0.device, x0.dtype)[int(t)]
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def noised(scheduler, num_steps: int, x0: torch.Tensor, noise: torch.Tensor, start_at: int) -> tuple[torch.Tensor, Any]:
    """x_t' (B, ...) of x0 (B, ...) at t' = the start_at-th step from the end of an N-step chain, in the scheduler's
    own scaling (`sample(..., start_at=)` continues from it), and t' (ImageReFL Sec. 4.3: x_t' = sqrt(abar_t') x0 +
    sqrt(1 - abar_t') eps; Euler's x0 + sigma_t' eps is that divided by sqrt(abar_t'))."""
    sched = copy.deepcopy(scheduler)  # set_timesteps mutates the scheduler
    sched.set_timesteps(int(num_steps), device=x0.device)
    t = sched.timesteps[len(sched.timesteps) - start_at]
    return sched.add_noise(x0, noise, t.reshape(1).expand(x0.shape[0])), t


def eps_of(scheduler, x_t: torch.Tensor, out: torch.Tensor, t: Any) -> torch.Tensor:
    """eps (B, ...) from the network's output at a variance-preserving input x_t = sqrt(abar) x0 + sqrt(1 - abar) eps:
    the output itself for epsilon prediction, sqrt(abar) v + sqrt(1 - abar) x_t for v-prediction."""
    kind = scheduler.config.prediction_type
    abar = scheduler.alphas_cumprod.to(x_t.device, x_t.dtype)[int(t)]
    if kind == "epsilon":
        return out
    if kind == "v_prediction":
        return abar.sqrt() * out + (1 - abar).sqrt() * x_t
    if kind == "sample":
        return (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
    raise ValueError(f"prediction_type {kind!r}: expected epsilon, v_prediction or sample")


def per_sample_noise(shape: tuple[int, ...], seeds, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """x_T (B, *shape) where row i comes from its own generator seeded with seeds[i] (paired comparisons)."""
    rows = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)
