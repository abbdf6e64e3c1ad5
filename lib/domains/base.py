"""The one seam between the domain-agnostic code (trainer, sampling, metrics, figures, explorer) and a domain.

A domain (the 2-D toy in `lib.domains.toy`, Stable Diffusion in `lib.domains.sd`) supplies everything the stages
call; `lib.domains.registry` maps a domain name to its config and domain classes. Nothing outside `lib/domains`
branches on which domain it is.

Conventions: the network predicts epsilon (or v, which is affine in epsilon at fixed x_t, so mixing stays exact);
x is the latent the network sees (B, ...); `cond` is whatever `encode` returns, batched along dim 0; t is the
scheduler's training timestep. Guidance schedules use the step-indexed time s_i = 1 - i / N
(`lib.schedules.StepClock`). Samples are stored in the domain's storage form (`to_storage`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch

from lib.guidance import Denoiser

# What a domain can compute, named like the `needs` of lib.metrics.METRICS.
CAPABILITIES = ("reward", "features", "dino", "clip", "chain", "truth")


class Domain(Protocol):
    name: str
    num_steps: int  # sampling steps used for training and evaluation
    scheduler: Any  # a diffusers scheduler; samplers copy it before stepping
    guidance_scale: float  # the default classifier-free guidance scale of both branches
    null_cond: Any  # the unconditional row (1, ...) of `cond` that classifier-free guidance uses
    paired_calls: bool  # AIG's mixed steps as one network call on the stacked batch by default (lib.methods)
    preview_samples: int  # the explorer's default samples per coverage prompt (points are cheap, images are not)

    @classmethod
    def capabilities(cls, config: Any) -> frozenset[str]:
        """Which of CAPABILITIES a domain built from `config` provides (checked when params load)."""

    def prepare(self, force: bool = False, progress: bool = True) -> Optional[dict]:
        """Build what the base model needs before fine-tuning (the toy pre-trains; SD loads from the hub).
        Returns a summary for the notebook, or None when nothing had to be done."""

    def stamp(self) -> dict:
        """A JSON-able description of the base model; trained adapters and samples are stale when it changes."""

    def reward_stamp(self) -> dict:
        """The training reward where stamp() leaves it out ({} where it holds it): trained adapters are stale when it
        changes, samples of the base model are not."""

    def prompts(self, split: str) -> list[str]:
        """Condition set by split: 'train', 'eval', 'coverage' or a named prompt set of the domain."""

    def encode(self, prompts: Sequence[str]) -> Any:
        """Conditioning batch for the denoiser (B, ...)."""

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """x_T (B, ...), row i from its own generator seeded with seeds[i]."""

    def denoiser(self, model: torch.nn.Module, scale: Optional[float] = None) -> Denoiser:
        """(x, t, cond) -> eps of `model`, with classifier-free guidance at `scale` (None: guidance_scale)."""

    def base_model(self) -> torch.nn.Module:
        """The pre-trained network (no adapter)."""

    def add_adapter(self, model: torch.nn.Module, rank: int, seed: int) -> torch.nn.Module:
        """Attach a fresh trainable LoRA adapter (peft) to `model`; returns the adapted model."""

    def save_adapter(self, model: torch.nn.Module, path: Path) -> None:
        """Write the LoRA weights (safetensors)."""

    def load_adapter(self, path: Path) -> torch.nn.Module:
        """Base network with the adapter stored at `path`."""

    def real_samples(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """Real data x_0 (B, ...) in the model's space, row i drawn for prompts[i] from its own generator seeded with
        seeds[i] (ImageReFL's real images, seed 004 Sec. 4.3): the toy's GMMs, the world's generator through the
        VAE; a ConfigError naming what is missing where the domain has none."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Samples from final latents, differentiably (identity for the toy, VAE decode for SD)."""

    def reward(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Differentiable reward r(x0, c): (B,)."""

    def features(self, samples: torch.Tensor) -> np.ndarray:
        """Feature vectors for FID / precision / recall / SCD / LSCD (N, D)."""

    def embeddings(self, samples: torch.Tensor) -> np.ndarray:
        """Image embeddings for DinoDiversity (N, D) (capability 'dino')."""

    def clip_scores(self, samples: torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
        """CLIP score per sample, 100 * cos(image, text) (N,) (capability 'clip')."""

    def truth(self, samples: torch.Tensor, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """Ground truth per sample (capability 'truth', the miniature SD world): name -> (N,) arrays with at least
        true_preference, true_preference_alt, reward_alt, prompt_ok and the mode labels mode, position, size,
        background."""

    def to_storage(self, samples: torch.Tensor) -> np.ndarray:
        """Samples as stored in notebook 02's shards (uint8 images for SD, float arrays for the toy)."""

    def from_storage(self, stored: np.ndarray) -> torch.Tensor:
        """Inverse of to_storage: what reward() and features() take."""

    def sample_grid(self, samples: dict[str, tuple[np.ndarray, np.ndarray]]):
        """Fig. 2 style figure of stored samples: {row label: (samples (N, ...), prompt indices (N,))}."""

    def trajectory_figure(self, paths: dict[str, np.ndarray], prompt: int):
        """Fig. 1 style figure of sampling chains from the same noise: {label: x_t (steps + 1, B, ...)}."""

    def draw_samples(self, ax, stored: np.ndarray, prompt_index: np.ndarray, color: Any = None) -> None:
        """Draw stored samples of one prompt into one matplotlib axis (the explorer's preview panels)."""
