"""Stable Diffusion pipelines: the real SD v1.x / SDXL checkpoints with the AIG paper's samplers, and offline tiny
pipelines built from config for tests (no download).

Samplers (AIG paper Sec. 4.1, matched to the authors' NeMo-Aligner code):
- SD v1.4: DDIM, 25 steps, CFG 7.5, 512 px. From SD1.4's scheduler config DDIM gets "leading" spacing,
  steps_offset 1, set_alpha_to_one False: t = 961 ... 1 for 25 steps, the CompVis / NeMo discretisation.
- SDXL: Euler, 25 steps, CFG 5.0, 1024 px, with timestep_spacing "trailing": t = 999 ... 39 for 25 steps, the
  legacy DDPM discretisation NeMo samples SDXL on (diffusers' SDXL config would give "leading", 961 ... 1).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from lib.domains.sd import hub
from lib.domains.sd.rewards import clip_tokenizer
from lib.samplers import per_sample_noise

KINDS = ("sd", "sdxl")
DEFAULT_MODELS = {"sd": "CompVis/stable-diffusion-v1-4", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
# AIG paper Sec. 4.1 / A.7.1: sampler steps, CFG weight and native resolution per model family.
PAPER_SAMPLING = {
    "sd": dict(num_steps=25, guidance_scale=7.5, resolution=512),
    "sdxl": dict(num_steps=25, guidance_scale=5.0, resolution=1024),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_kind(kind: str) -> str:
    """The kind itself, or a ValueError naming the allowed kinds."""
    if kind not in KINDS:
        raise ValueError(f"kind = {kind!r}: allowed {KINDS}")
    return kind


def pipeline_class(kind: str):
    """StableDiffusionPipeline for 'sd', StableDiffusionXLPipeline for 'sdxl'."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # heavy: only when a pipeline is built

    return {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}[check_kind(kind)]


def tiny_pipeline(kind: str = "sd", seed: int = 0, cache_dir=None):
    """An offline tiny randomly initialised SD / SDXL pipeline (64x64 images, CPU float32), in the shape of
    diffusers' own test components.

    SD uses DDIM with timestep_spacing="trailing" and set_alpha_to_one=True so that the last sampling step is not
    an identity (otherwise the DRaFT-1 gradient is exactly zero); SDXL uses the paper's Euler ("trailing").
    """
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = dict(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vae_blocks = dict(in_channels=3, out_channels=3, latent_channels=4,
                      down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    unet_blocks = dict(sample_size=32, in_channels=4, out_channels=4, down_block_types=("DownBlock2D",
                       "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if check_kind(kind) == "sd":
            unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, cross_attention_dim=8,
                                        norm_num_groups=2, **unet_blocks)
            vae = AutoencoderKL(block_out_channels=[4, 8], norm_num_groups=2, **vae_blocks)
            text = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                                num_hidden_layers=2, **ids))
            sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing",
                                  steps_offset=1)  # steps_offset is unused by "trailing"; 1 avoids a warning
            pipe = pipeline_class("sd")(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(cache_dir), unet=unet,
                                        scheduler=sched, safety_checker=None, feature_extractor=None,
                                        image_encoder=None, requires_safety_checker=False)
        else:
            unet = UNet2DConditionModel(block_out_channels=(2, 4), layers_per_block=2, attention_head_dim=(2, 4),
                                        use_linear_projection=True, addition_embed_type="text_time",
                                        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                        projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                                        norm_num_groups=1, **unet_blocks)
            vae = AutoencoderKL(block_out_channels=[32, 64], sample_size=128, **vae_blocks)
            tcfg = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
                        projection_dim=32, hidden_act="gelu", **ids)
            text, text_2 = CLIPTextModel(CLIPTextConfig(**tcfg)), CLIPTextModelWithProjection(CLIPTextConfig(**tcfg))
            sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           steps_offset=1, timestep_spacing="trailing")
            pipe = pipeline_class("sdxl")(vae=vae, text_encoder=text, text_encoder_2=text_2,
                                          tokenizer=clip_tokenizer(cache_dir),
                                          tokenizer_2=clip_tokenizer(cache_dir, pad_token="!"), unet=unet,
                                          scheduler=sched, force_zeros_for_empty_prompt=True,
                                          add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def paper_scheduler(kind: str, config: Mapping[str, Any]):
    """The AIG paper's sampler for a checkpoint's scheduler config: DDIM for SD1.x (the config's own spacing),
    Euler with "trailing" spacing for SDXL (as NeMo-Aligner samples SDXL; module docstring)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    if check_kind(kind) == "sd":
        return DDIMScheduler.from_config(config)
    return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")


def load_pipeline(model_id_or_path: str, kind: str = "sd", dtype: torch.dtype | str = torch.float16,
                  device: str | torch.device = "cuda", cache_dir=None, revision: Optional[str] = None):
    """A real SD1.x / SDXL pipeline (hub id or local directory) with the paper's sampler; "tiny" builds one offline.
    A hub id loads at `revision`, else at the revision the params pin (`sd.revisions.model`, default the branch
    main), and the commit it resolved to is recorded in the run's manifest (lib.domains.sd.hub).

    The SD safety checker is left out (it is not differentiable and blanks images; the paper's metrics use raw
    samples).
    """
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if model_id_or_path.startswith("tiny"):
        pipe = tiny_pipeline(kind, cache_dir=cache_dir).to(device)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    cls = pipeline_class(kind)
    kwargs: dict[str, Any] = dict(dtype=dtype, cache_dir=cache_dir)
    if kind == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if revision is not None:
        hub.POLICY.revisions["model"], hub.POLICY.repos[model_id_or_path] = revision, "model"
    try:
        pipe = hub.load(cls.from_pretrained, model_id_or_path, f"{kind} pipeline", "sd.model", **kwargs)
    except ValueError as e:  # diffusers raises ValueError for a path that is neither local nor a repo
        raise OSError(f"could not load the {kind} pipeline {model_id_or_path!r} ({e}); on an offline machine "
                      f"download it first (e.g. `hf download {DEFAULT_MODELS[kind]}`) and pass the local "
                      f"directory as sd.model") from e
    pipe.scheduler = paper_scheduler(kind, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def latents_for(pipe, seeds: Sequence[int], height: int, width: int, dtype=None) -> torch.Tensor:
    """x_T (B, C, height / f, width / f), row i from its own generator seeded with seeds[i] (paired seeds)."""
    unet = pipe.unet
    f = pipe.vae_scale_factor
    shape = (int(unet.config.in_channels), height // f, width // f)
    return per_sample_noise(shape, seeds, device=pipe.device, dtype=dtype or unet.dtype)
