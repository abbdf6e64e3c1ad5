"""The world's VAE: a tiny diffusers AutoencoderKL (factor 4, cfg.latent_channels latent channels) trained here on the world's images
with a reconstruction loss and a small KL term (SD's VAE without its GAN), then given SD's `scaling_factor`
(1 / std of the latents) so the UNet sees unit-variance latents."""
from __future__ import annotations

import numpy as np
import torch

from lib.domains.world.common import batch_indices, checked_step, optimiser, progress, seeded
from lib.domains.world.config import WorldConfig


def new_vae(cfg: WorldConfig) -> torch.nn.Module:
    """A fresh AutoencoderKL for the world's resolution (3 levels: 32x32 images -> 8x8x4 latents)."""
    from diffusers import AutoencoderKL

    with seeded(cfg.seed + 11):
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels, sample_size=cfg.resolution,
                             down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                             block_out_channels=list(cfg.vae_channels), layers_per_block=1,
                             norm_num_groups=8, mid_block_add_attention=False)


def train_vae(cfg: WorldConfig, images: np.ndarray, show: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """Train the VAE on images (N, 3, H, W) in [0, 1]; returns it (scaling_factor set) and the loss per step."""
    vae = new_vae(cfg).train()
    opt, sched = optimiser(vae.parameters(), cfg.vae_lr, cfg.vae_steps)
    rng = np.random.default_rng(cfg.seed + 12)
    gen = torch.Generator().manual_seed(cfg.seed + 13)
    losses = []
    bar = progress(cfg.vae_steps, "world VAE", show)
    for step in range(cfg.vae_steps):
        x = torch.from_numpy(images[batch_indices(rng, len(images), cfg.vae_batch)]) * 2 - 1  # (B, 3, H, W)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = (rec - x).pow(2).mean() + 0.1 * (rec - x).abs().mean() + cfg.vae_kl * post.kl().mean()
        losses.append(checked_step("VAE", step, loss, opt, sched, list(vae.parameters())))
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    vae.eval().requires_grad_(False)
    mean, _ = encode(vae, images[: min(len(images), 2048)], scaled=False)
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    return vae, losses


def encode(vae: torch.nn.Module, images: np.ndarray, batch: int = 256,
           scaled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, 4, h, w) of images (N, 3, H, W) in [0, 1], times scaling_factor if `scaled`."""
    means, stds = [], []
    f = float(vae.config.scaling_factor) if scaled else 1.0
    with torch.no_grad():
        for lo in range(0, len(images), batch):
            post = vae.encode(torch.as_tensor(images[lo: lo + batch]) * 2 - 1).latent_dist
            means.append(post.mean * f)
            stds.append(post.std * f)
    return torch.cat(means), torch.cat(stds)


def decode(vae: torch.nn.Module, latents: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] of scaled latents (N, 4, h, w), as SDDomain.decode computes them."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(latents), batch):
            img = vae.decode(latents[lo: lo + batch] / vae.config.scaling_factor).sample
            out.append((img / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


def roundtrip(vae: torch.nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Images passed through the VAE (encode to the posterior mean, decode): what a generated image looks like at
    best; float32 (N, 3, H, W) in [0, 1]."""
    mean, _ = encode(vae, images, batch)
    return decode(vae, mean, batch).numpy()
