"""Weight-free JPEG rewards on any image domain (DRaFT, Clark et al. 2024, Appendix B.3): compressibility and
incompressibility through a differentiable JPEG round trip.

    compressibility(x)   = -||x - d(c(x))||^2        incompressibility(x) = +||x - d(c(x))||^2

with c / d the JPEG encoder / decoder, the squared error averaged over the C*H*W pixel values of each image (pixel
values in [0, 1]). d(c(.)) is kornia's maintained differentiable JPEG (`kornia.enhance.jpeg_codec_differentiable`,
Reich et al. 2024, "Differentiable JPEG: the devil is in the details"): RGB -> YCbCr, 4:2:0 chroma subsampling,
8x8 DCT, quantisation with the standard (IJG / Annex K) tables scaled by the quality, a smooth polynomial rounding
round(z) + (z - round(z))^3 so gradients reach the pixels, and the inverse of each step. Its forward pass is real
JPEG up to float rounding: `tests/test_compress.py` ranks images by this error the way Pillow's JPEG does.

Quality: DRaFT B.3 defines the rewards by the round-trip error but, as far as we could check, states no JPEG
quality; the default 50 is the IJG baseline at which the standard tables apply unscaled, and the quality at which
the differentiable JPEGs of Shin & Song (2017) and Reich et al. (2024) are evaluated. DDPO's (non-differentiable)
file-size compressibility reward uses Pillow at quality 95; pass `quality=95` to match that setting.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from kornia.enhance import jpeg_codec_differentiable

from lib.domains.sd.rewards import Reward

DEFAULT_QUALITY = 50.0
JPEG_REWARDS = ("compressibility", "incompressibility")


def jpeg_roundtrip(images: torch.Tensor, quality: float = DEFAULT_QUALITY) -> torch.Tensor:
    """d(c(x)): the differentiable JPEG encode-decode of images (B, 3, H, W) in [0, 1] -> (B, 3, H, W), float32."""
    x = images.float()  # (B, 3, H, W); kornia pads to multiples of 16 internally and crops back
    q = torch.tensor([float(quality)], device=x.device, dtype=x.dtype)  # (1,): one quality for the batch
    return jpeg_codec_differentiable(x, q)


def jpeg_error(images: torch.Tensor, quality: float = DEFAULT_QUALITY) -> torch.Tensor:
    """||x - d(c(x))||^2 averaged over C*H*W per image (DRaFT B.3): (B, 3, H, W) in [0, 1] -> (B,)."""
    x = images.float()
    return ((x - jpeg_roundtrip(x, quality)) ** 2).flatten(1).mean(1)  # (B,)


class JPEGReward(Reward):
    """DRaFT B.3: compressibility r = -||x - d(c(x))||^2 or incompressibility r = +||x - d(c(x))||^2 (mean over
    pixel values, x in [0, 1]); weight-free, prompts ignored, differentiable in the pixels."""

    def __init__(self, name: str = "compressibility", quality: float = DEFAULT_QUALITY):
        super().__init__()
        if name not in JPEG_REWARDS:
            raise ValueError(f"JPEG reward {name!r} is not one of {JPEG_REWARDS}")
        if not (isinstance(quality, (int, float)) and math.isfinite(quality) and 1 <= quality <= 100):
            raise ValueError(f"JPEG quality = {quality!r} is not allowed: expected a number in [1, 100]")
        self.name, self.quality = name, float(quality)
        self.sign = -1.0 if name == "compressibility" else 1.0

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], prompts (ignored) -> (B,) rewards."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images (B, 3, H, W), got {tuple(images.shape)}")
        return self.sign * jpeg_error(images, self.quality)


def load_jpeg_reward(name: str, quality: float = DEFAULT_QUALITY) -> JPEGReward:
    """The JPEG reward `name` ('compressibility' or 'incompressibility') at `quality` (DRaFT B.3)."""
    return JPEGReward(name, quality)
