"""Real images as Stable Diffusion's x_0 (ImageReFL, seed 004 Sec. 4.3: x_t' noises a real image's latent), and the
latent scaling between the UNet's space and the VAE's, which decoding shares.

A UNet latent x0 is the VAE latent z times the VAE's scaling_factor (SD1.x, SDXL); a VAE with latents_mean and
latents_std in its config (e.g. SD3-style) is normalised by them as well, exactly as diffusers' pipelines do.
"""
from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from lib.errors import ConfigError

MISSING = ("train.variant = 'imagerefl' needs real images of the training captions: a world run (sd.model: world) "
           "draws them from the world's generator, and on Stable Diffusion sd.real_images names a folder of images "
           "with their captions (metadata.jsonl or metadata.csv: file_name, text), a setting this run does not have")
REAL_STREAM = 4  # the generator stream that picks a folder's image per seed (seed 004, ImageReFL)


def _stats(vae: torch.nn.Module, like: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], float]:
    """latents_mean, latents_std (1, C, 1, 1) or None, and scaling_factor of a VAE."""
    c = vae.config
    mean, std = getattr(c, "latents_mean", None), getattr(c, "latents_std", None)
    if mean is None or std is None:
        return None, None, float(c.scaling_factor)
    shape = (1, -1, 1, 1)
    as_t = lambda v: torch.tensor(v, device=like.device, dtype=like.dtype).view(shape)  # noqa: E731
    return as_t(mean), as_t(std), float(c.scaling_factor)


def vae_latent(vae: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """The VAE latent z (B, C, h, w) that decodes a UNet latent x0 (B, C, h, w): x0 / scaling_factor."""
    mean, std, f = _stats(vae, x0)
    return x0 / f if mean is None else x0 * std / f + mean


def unet_latent(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Inverse of vae_latent: the UNet latent x0 (B, C, h, w) of a VAE latent z: z * scaling_factor."""
    mean, std, f = _stats(vae, z)
    return z * f if mean is None else (z - mean) * f / std


def encode_images(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """UNet latents x0 (B, C, h, w), float32, of images (B, 3, H, W) in [0, 1]: the VAE posterior's mean, scaled
    as the pipeline expects (what the world's UNet was trained on)."""
    with torch.no_grad():
        z = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
    return unet_latent(vae, z.float())


@functools.lru_cache(maxsize=4)
def captioned(folder: str) -> dict[str, list[str]]:
    """caption -> its image files (sorted) of a folder in the Hugging Face imagefolder layout: metadata.jsonl (one
    {"file_name": ..., "text": ...} per line) or metadata.csv (columns file_name, text)."""
    root = Path(folder)
    if (root / "metadata.jsonl").is_file():
        rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    elif (root / "metadata.csv").is_file():
        with open(root / "metadata.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ConfigError(f"sd.real_images = {folder!r} is not allowed: expected a folder with metadata.jsonl or "
                          "metadata.csv (file_name, text per image)")
    out: dict[str, list[str]] = {}
    for row in rows:
        if not {"file_name", "text"} <= set(row):
            raise ConfigError(f"{root}: every metadata row needs file_name and text, got {sorted(row)}")
        out.setdefault(str(row["text"]), []).append(str(root / row["file_name"]))
    return {k: sorted(v) for k, v in out.items()}


def load_image(path: str, resolution: int) -> torch.Tensor:
    """An image file as (3, R, R) in [0, 1]: RGB, shorter side resized to R (bicubic), centre crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        k = resolution / min(im.size)
        w, h = max(resolution, round(im.width * k)), max(resolution, round(im.height * k))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def folder_images(folder: str, prompts: Sequence[str], seeds: Sequence[int], resolution: int) -> torch.Tensor:
    """Images (B, 3, R, R) in [0, 1]: image i is one of the folder's images captioned prompts[i], picked by its own
    generator seeded with seeds[i] (so the training prompts must be the folder's captions)."""
    index = captioned(str(folder))
    rows = []
    for p, s in zip(prompts, seeds):
        files = index.get(p)
        if not files:
            raise ConfigError(f"{folder}: no image captioned {p!r}; ImageReFL's training prompts (sd.train_prompts) "
                              "must be the folder's captions")
        rows.append(load_image(files[int(np.random.default_rng([int(s), REAL_STREAM]).integers(len(files)))],
                               resolution))
    return torch.stack(rows)


def real_images(world: Any, prompts: Sequence[str], seeds: Sequence[int], resolution: int,
                folder: Optional[str] = None) -> torch.Tensor:
    """Real images (B, 3, R, R) in [0, 1] of the captions, image i from seeds[i]: the world's generator on a world
    run, else the images of a captioned folder; a ConfigError naming what is missing otherwise."""
    if world is None:
        if folder is None:
            raise ConfigError(MISSING)
        return folder_images(folder, prompts, seeds, resolution)
    if world.cfg.resolution != resolution:
        raise ConfigError(f"sd.resolution = {resolution} is not allowed for ImageReFL on this world: expected the "
                          f"world's image size sd.world.resolution = {world.cfg.resolution}")
    return world.real_images(prompts, seeds)
