"""The world's denoiser: a diffusers UNet2DConditionModel on the VAE's 8x8 latents, conditioned through
cross-attention on the (frozen) CLIP text encoder's hidden states, v-prediction on a squaredcos_cap_v2 schedule,
caption dropout for classifier-free guidance, an EMA of the weights; data-parallel over `processes` CPU processes
(torch.distributed gloo, one thread each, gradients averaged every step). The sampler saved with the pipeline is
DDIM as for SD1.4, with "trailing" spacing and alpha_1 = 1 so that the last step changes the latents (DRaFT-1 has
a gradient).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lib.domains.world.common import batch_indices, checked_step, optimiser, progress, seeded
from lib.domains.world.config import WorldConfig, world_config

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                clip_sample=False)


def new_unet(cfg: WorldConfig, cross_dim: int) -> torch.nn.Module:
    """A fresh UNet: plain ResNet blocks at 8x8, cross-attention from the second level down (and in the middle)."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    with seeded(cfg.seed + 81):
        return UNet2DConditionModel(
            sample_size=cfg.resolution // 4, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels, block_out_channels=cfg.unet_channels,
            layers_per_block=cfg.unet_layers, down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
            up_block_types=["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"], cross_attention_dim=cross_dim,
            norm_num_groups=8, attention_head_dim=8)


def sampler() -> Any:
    """The pipeline's scheduler: DDIM (eta 0), trailing spacing, alpha_1 = 1, v-prediction."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=True, timestep_spacing="trailing",
                         steps_offset=1)  # unused by "trailing"; 1 avoids diffusers' deprecation warning


def train_unet(cfg: WorldConfig, mean: torch.Tensor, std: torch.Tensor, prompt: np.ndarray, embeds: torch.Tensor,
               rank: int = 0, world: int = 1, show: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """Train on latents N(mean, std) (N, 4, h, w) with caption indices (N,); embeds (P + 1, L, D) holds every
    caption's text-encoder states and, last, the empty prompt's. Returns (EMA UNet, losses of this process)."""
    import torch.distributed as dist
    from diffusers import DDPMScheduler

    unet = new_unet(cfg, embeds.shape[-1]).train()
    ema = [p.detach().clone() for p in unet.parameters()]
    noise_sched = DDPMScheduler(**SCHEDULE)
    params = list(unet.parameters())
    opt, sched = optimiser(params, cfg.unet_lr, cfg.unet_steps, warmup=200)
    rng = np.random.default_rng(cfg.seed + 91 + 1000 * rank)
    gen = torch.Generator().manual_seed(cfg.seed + 92 + 1000 * rank)
    batch = cfg.unet_batch // world
    null = len(embeds) - 1

    def reduce(ps: list) -> None:
        """Average the gradients of ps over the processes (one all-reduce of their concatenation)."""
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        dist.all_reduce(flat)
        flat /= world
        i = 0
        for p in ps:
            p.grad.copy_(flat[i: i + p.numel()].view_as(p.grad))
            i += p.numel()

    losses = []
    bar = progress(cfg.unet_steps, "world UNet", show and rank == 0)
    for step in range(cfg.unet_steps):
        idx = batch_indices(rng, len(mean), batch)
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        cap = torch.from_numpy(prompt[idx]).long()
        cap = torch.where(torch.rand(batch, generator=gen) < cfg.cond_dropout, null, cap)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        zt = noise_sched.add_noise(z0, eps, t)
        target = noise_sched.get_velocity(z0, eps, t)
        pred = unet(zt, t, encoder_hidden_states=embeds[cap]).sample
        loss = F.mse_loss(pred, target)
        losses.append(checked_step("UNet", step, loss, opt, sched, params, reduce=reduce if world > 1 else None))
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        bar.update()
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    bar.close()
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    return unet.eval().requires_grad_(False), losses


def _worker(rank: int, world: int, cfg_dict: dict, data: str, out: str, init: str, show: bool) -> None:
    """One data-parallel process (torch.multiprocessing.spawn target): trains, rank 0 writes the UNet."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        z = torch.load(data, weights_only=True)
        unet, losses = train_unet(world_config(cfg_dict), z["mean"], z["std"], z["prompt"].numpy(), z["embeds"],
                                  rank, world, show)
        if rank == 0:
            unet.save_pretrained(out, safe_serialization=True)
            Path(out, "losses.json").write_text(json.dumps(losses))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_unet(cfg: WorldConfig, mean: torch.Tensor, std: torch.Tensor, prompt: np.ndarray, embeds: torch.Tensor,
             out: Path, work: Path, show: bool = True) -> list[float]:
    """Train the UNet on cfg.processes processes (spawned, gloo) or in this process, and save it to `out`
    (diffusers format); returns rank 0's losses."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.processes == 1:
        unet, losses = train_unet(cfg, mean, std, prompt, embeds, show=show)
        unet.save_pretrained(str(out), safe_serialization=True)
        return losses
    import torch.multiprocessing as mp

    work.mkdir(parents=True, exist_ok=True)
    data = work / "unet_data.pt"
    torch.save({"mean": mean, "std": std, "prompt": torch.from_numpy(prompt), "embeds": embeds}, data)
    fd, init = tempfile.mkstemp(dir=work, prefix=".gloo.")
    os.close(fd)
    os.remove(init)
    try:
        mp.spawn(_worker, args=(cfg.processes, cfg.to_dict(), str(data), str(out), init, show), nprocs=cfg.processes,
                 join=True)
    finally:
        data.unlink(missing_ok=True)
        Path(init).unlink(missing_ok=True)
    return json.loads((out / "losses.json").read_text())


def save_pipeline(unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer: Any,
                  out: Path) -> None:
    """Assemble and save the StableDiffusionPipeline directory (no safety checker, no feature extractor)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sampler(), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)


def caption_states(text_encoder: torch.nn.Module, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Text-encoder states (P + 1, L, D) of the captions and, last, of the empty prompt, as encode_prompt makes
    them (padding to the tokenizer's max length, last hidden state)."""
    ids = tokenizer(list(prompts) + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0].float()
