"""The one seam between the domain-agnostic code (trainer, sampling, metrics, Pareto) and a domain.

A domain (the 2-D toy in `lib.toy`, Stable Diffusion in `lib.sd`) supplies what the DRaFT trainer and the
sampling/metric stages need. Nothing outside a domain module branches on which domain it is.

Conventions: the network predicts epsilon; x is the variance-preserving latent the network sees (B, ...);
`cond` is whatever `encode` returns, batched along dim 0; time is the scheduler's training timestep t and
s = t / num_train_timesteps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from lib.guidance import Denoiser


class Domain(Protocol):
    name: str
    num_train_timesteps: int
    num_steps: int  # sampling steps used for training and evaluation
    scheduler: Any  # a diffusers scheduler; samplers copy it before stepping

    def prompts(self, split: str) -> list[str]:
        """Condition set by split: 'train', 'eval' or 'coverage'."""

    def encode(self, prompts: Sequence[str]) -> Any:
        """Conditioning batch for the denoiser (B, ...)."""

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """x_T (B, ...), row i from its own generator seeded with seeds[i]."""

    def denoiser(self, model: torch.nn.Module) -> Denoiser:
        """(x, t, cond) -> eps of `model`, classifier-free guidance included."""

    def base_model(self) -> torch.nn.Module:
        """The pre-trained network (no adapter)."""

    def add_adapter(self, model: torch.nn.Module, rank: int, seed: int) -> torch.nn.Module:
        """Attach a fresh trainable LoRA adapter (peft) to `model`; returns the adapted model."""

    def save_adapter(self, model: torch.nn.Module, path: Path) -> None:
        """Write the LoRA weights (safetensors)."""

    def load_adapter(self, path: Path) -> torch.nn.Module:
        """Base network with the adapter stored at `path`."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Samples from final latents, differentiably (identity for the toy, VAE decode for SD)."""

    def reward(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Differentiable reward r(x0, c): (B,)."""

    def features(self, samples: torch.Tensor) -> np.ndarray:
        """Feature vectors for the coverage metrics (N, D)."""

    def to_storage(self, samples: torch.Tensor) -> np.ndarray:
        """Samples as stored in notebook 02's shards (uint8 images for SD, float arrays for the toy)."""

    def from_storage(self, stored: np.ndarray) -> torch.Tensor:
        """Inverse of to_storage: what reward() and features() take."""

    def sample_grid(self, samples: dict[str, tuple[np.ndarray, np.ndarray]]):
        """Fig. 2 style figure of stored samples: {row label: (samples (N, ...), prompt indices (N,))}."""
