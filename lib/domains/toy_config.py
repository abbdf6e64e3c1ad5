"""Settings of the toy domain (the params section `toy:`), with the sizes the load-time checks use
(`lib.limits`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lib.errors import check


@dataclass(frozen=True)
class ToyConfig:
    """The toy problem and its base model."""

    num_prompts: int = 4
    modes: tuple[int, ...] = (3, 4, 5, 6)  # modes of each prompt's GMM (cycled over prompts)
    radius: float = 1.5  # ring radius of the modes
    mode_std: float = 0.12
    reward_shift: float = 0.3  # distance from a mode to its reward bump
    reward_width: float = 0.25
    reward_top: float = 1.0  # height of the global-maximum bump (others: reward_other)
    reward_other: float = 0.7
    reward_pull: float = 0.35  # height of the broad bump around the global maximum
    reward_pull_width: float = 2.0
    num_train_timesteps: int = 1000
    num_steps: int = 20  # DDIM steps for training and evaluation
    guidance_scale: float = 1.0  # classifier-free guidance weight (1 = conditional model only)
    hidden: int = 128
    depth: int = 3
    pretrain_steps: int = 3000
    pretrain_batch: int = 512
    pretrain_lr: float = 2e-3
    cond_dropout: float = 0.1  # null-condition rate during pre-training (for CFG)
    seed: int = 0

    def __post_init__(self):
        check("toy.num_prompts", self.num_prompts, self.num_prompts >= 1, ">= 1")
        check("toy.modes", self.modes, len(self.modes) >= 1 and min(self.modes) >= 1, "a non-empty list of ints >= 1")
        for key in ("radius", "mode_std", "reward_width", "reward_pull_width", "pretrain_lr"):
            check(f"toy.{key}", getattr(self, key), getattr(self, key) > 0, "> 0")
        check("toy.num_steps", self.num_steps, 1 <= self.num_steps <= self.num_train_timesteps, "in [1, num_train_timesteps]")
        check("toy.guidance_scale", self.guidance_scale, self.guidance_scale >= 0, ">= 0")
        check("toy.cond_dropout", self.cond_dropout, 0 <= self.cond_dropout < 1, "in [0, 1)")
        for key in ("hidden", "depth", "pretrain_steps", "pretrain_batch", "num_train_timesteps"):
            check(f"toy.{key}", getattr(self, key), getattr(self, key) >= 1, "an integer >= 1")
        check("toy.seed", self.seed, 0 <= self.seed < 2**53, "an integer in [0, 2**53)")

    # ---- sizes for the load-time checks of lib.config / lib.limits (lower bounds, in bytes) ----------------------
    def check_prompt_set(self, key: str, name: str) -> None:
        """The toy's prompt sets are its splits."""
        check(key, name, name in ("train", "eval", "coverage"), "toy prompt sets: 'coverage', 'eval' or 'train'")

    def prompt_count(self, name: str) -> Optional[int]:
        """Every split of the toy holds all num_prompts prompts."""
        return self.num_prompts if name in ("train", "eval", "coverage") else None

    def sample_bytes(self) -> int:
        return 2 * 4  # a float32 point in 2-D

    def feature_bytes(self) -> int:
        return 2 * 8  # the point itself, as float64 in lib.metrics

    def step_bytes(self, training: bool) -> int:
        """Activations of one sample through the MLP (hidden x depth float32), twice when kept for backward."""
        return self.hidden * self.depth * 4 * (2 if training else 1)

    def model_need(self) -> tuple[str, int, int, str]:
        """The MLP's parameters in float32, four times (weights, gradients, two AdamW moments) while pre-training."""
        params = (2 + 64 + 1) * self.hidden + (self.depth - 1) * (self.hidden + 1) * self.hidden + 2 * self.hidden
        return ("toy.hidden", self.hidden, 16 * params,
                f"{params:,} parameters (hidden {self.hidden:,}, depth {self.depth}) x 4 copies x 4 bytes: weights, "
                "gradients and AdamW moments")
