"""Shared pieces of the world's training loops: seeded generators, the optimiser and its schedule, a checked step,
and the pixel augmentations that harden the rewards and features."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside the block only (network initialisation), restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def optimiser(params: Iterable[torch.nn.Parameter], lr: float, steps: int, warmup: int = 50,
              weight_decay: float = 0.0) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with a linear warm-up and a cosine decay to 10 % of lr over `steps`: (optimizer, scheduler)."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    warmup = min(warmup, max(1, steps // 10))

    def factor(i: int) -> float:
        """The learning-rate factor of step i."""
        if i < warmup:
            return (i + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warmup) / max(1, steps - warmup))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def checked_step(name: str, step: int, loss: torch.Tensor, opt: torch.optim.Optimizer, sched: Any,
                 params: list[torch.nn.Parameter], clip: float = 1.0,
                 reduce: Optional[Callable[[list], None]] = None) -> float:
    """Backward, optional gradient all-reduce, clip, step; stops at a non-finite loss or gradient norm, naming the
    component, the step and the quantity. Returns the loss."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"world {name}: non-finite loss {value} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in params if p.grad is not None]
    if reduce is not None:
        reduce(params)
    norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    if not math.isfinite(norm):
        raise FloatingPointError(f"world {name}: non-finite gradient norm {norm} at step {step}")
    opt.step()
    sched.step()
    return value


def progress(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar (or a silent one)."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, mininterval=2.0)


def batch_indices(rng: np.random.Generator, n: int, batch: int) -> np.ndarray:
    """A random batch of row indices (batch,) of a set of n rows."""
    return rng.integers(n, size=batch)


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float tensor in [0, 1] (N, 3, H, W) from float arrays or uint8."""
    x = torch.as_tensor(images)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def augment(x: torch.Tensor, gen: torch.Generator, noise: float, shift: int = 0) -> torch.Tensor:
    """Gaussian pixel noise of a random strength in [0, noise] and an optional random shift of up to `shift`
    pixels (replicate padding): (N, 3, H, W) in [0, 1] -> the same shape, clipped."""
    n = x.shape[0]
    if shift:
        pad = torch.nn.functional.pad(x, (shift,) * 4, mode="replicate")
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        h, w = x.shape[-2:]
        x = torch.stack([pad[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(n)])
    if noise > 0:
        std = torch.rand(n, 1, 1, 1, generator=gen) * noise
        x = x + std * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds since construction, rounded to 0.1."""
        return round(time.perf_counter() - self.start, 1)
