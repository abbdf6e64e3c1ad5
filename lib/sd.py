"""The Stable Diffusion domain: SD v1.x and SDXL through diffusers pipelines, AIG as a drop-in `pipe.unet`.

- `tiny_pipeline` builds offline tiny SD / SDXL pipelines from config (DESIGN appendix); `load_pipeline` loads the
  real checkpoints with the AIG paper's samplers (Sec. 4.1: DDIM, 25 steps, CFG 7.5 for SD1.4; Euler/EDM, 25
  steps, CFG 5.0 for SDXL).
- `aig_unet` mixes eps = gamma(s) eps_base + (1 - gamma(s)) eps_tuned at the UNet output (AIG paper Eq. 11,
  s = t / num_train_timesteps, gamma = the base model's weight). It is exact under classifier-free guidance (both
  are linear), so every pipeline and scheduler runs it unchanged. `step:c` is combined generation (ImageReFL
  Eq. 3); LoRA scaling alpha' (AIG paper Lemma 2) goes through `lib.lora.lora_scale`.
- `generate` writes images of a (method, setting) as resumable .npz shards with a csv index, seeded per sample.
- `SDDomain` implements `lib.domain.Domain` so the domain-agnostic DRaFT trainer runs on SD.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from lib.guidance import AIG, Denoiser, cfg
from lib.lora import adapter_disabled, lora_scale
from lib.io import atomic_write
from lib.samplers import per_sample_noise
from lib.schedules import Schedule, parse

ADAPTER = "draft"  # the name of the fine-tuned LoRA adapter inside the UNet
KINDS = ("sd", "sdxl")
DEFAULT_MODELS = {"sd": "CompVis/stable-diffusion-v1-4", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
# AIG paper Sec. 4.1 / A.7.1: sampler steps, CFG weight and native resolution per model family.
PAPER_SAMPLING = {
    "sd": dict(num_steps=25, guidance_scale=7.5, resolution=512),
    "sdxl": dict(num_steps=25, guidance_scale=5.0, resolution=1024),
}
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")  # attention and feed-forward layers
METHODS = ("base", "draft", "kl", "lora_scale", "aig", "combined")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind = {kind!r}: allowed {KINDS}")
    return kind


def _pipeline_class(kind: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}[_check_kind(kind)]


# ------------------------------------------------------------------------------------------------ pipelines
def tiny_pipeline(kind: str = "sd", seed: int = 0, cache_dir=None):
    """An offline tiny randomly initialised SD / SDXL pipeline (64x64 images, CPU float32; DESIGN appendix).

    SD uses DDIM with timestep_spacing="trailing" and set_alpha_to_one=True so that the last sampling step is not
    an identity (otherwise the DRaFT-1 gradient is exactly zero); SDXL uses Euler ("leading", steps_offset 1).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lib.rewards import clip_tokenizer

    ids = dict(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vae_blocks = dict(in_channels=3, out_channels=3, latent_channels=4,
                      down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    unet_blocks = dict(sample_size=32, in_channels=4, out_channels=4, down_block_types=("DownBlock2D",
                       "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if _check_kind(kind) == "sd":
            unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, cross_attention_dim=8,
                                        norm_num_groups=2, **unet_blocks)
            vae = AutoencoderKL(block_out_channels=[4, 8], norm_num_groups=2, **vae_blocks)
            text = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                                num_hidden_layers=2, **ids))
            sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing",
                                  steps_offset=1)  # steps_offset is unused by "trailing"; 1 avoids a warning
            pipe = _pipeline_class("sd")(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(cache_dir), unet=unet,
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
                                           steps_offset=1, timestep_spacing="leading")
            pipe = _pipeline_class("sdxl")(vae=vae, text_encoder=text, text_encoder_2=text_2,
                                           tokenizer=clip_tokenizer(cache_dir),
                                           tokenizer_2=clip_tokenizer(cache_dir, pad_token="!"), unet=unet,
                                           scheduler=sched, force_zeros_for_empty_prompt=True,
                                           add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def paper_scheduler(kind: str, config: Mapping[str, Any]):
    """The AIG paper's sampler for a checkpoint's scheduler config: DDIM for SD1.x, Euler (EDM-style) for SDXL.

    From SD1.4's config DDIM gets timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False: the CompVis
    / NeMo DDIM discretisation; its last step (t = 1 -> alpha_bar_0) is not an identity, so DRaFT-1 has a gradient.
    """
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    return (DDIMScheduler if _check_kind(kind) == "sd" else EulerDiscreteScheduler).from_config(config)


def load_pipeline(model_id_or_path: str, kind: str = "sd", dtype: torch.dtype | str = torch.float16,
                  device: str | torch.device = "cuda", cache_dir=None):
    """A real SD1.x / SDXL pipeline (hub id or local directory) with the paper's sampler; "tiny" builds one offline.

    The SD safety checker is left out (it is not differentiable and blanks images; the paper's metrics use raw
    samples).
    """
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if model_id_or_path.startswith("tiny"):
        pipe = tiny_pipeline(kind, cache_dir=cache_dir).to(device)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    cls = _pipeline_class(kind)
    kwargs: dict[str, Any] = dict(dtype=dtype, cache_dir=cache_dir)
    if kind == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(model_id_or_path, **kwargs)
    except (OSError, ValueError) as e:  # diffusers raises ValueError for a path that is neither local nor a repo
        raise OSError(f"could not load the {kind} pipeline {model_id_or_path!r} ({e}); on an offline machine "
                      f"download it first (e.g. `hf download {DEFAULT_MODELS[kind]}`) and pass the local "
                      f"directory as the model path") from e
    pipe.scheduler = paper_scheduler(kind, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# --------------------------------------------------------------------------------------------------- AIG UNet
def _unet_of(obj) -> torch.nn.Module:
    """The UNet (or UNet view) of a pipeline, or the object itself."""
    return obj.unet if hasattr(obj, "unet") and not isinstance(obj, UNetView) else obj


def _plain_unet(obj) -> torch.nn.Module:
    """The underlying diffusers UNet of a pipeline, a UNet view or a UNet."""
    obj = _unet_of(obj)
    while isinstance(obj, UNetView):
        obj = obj._modules["unet"]
    return obj


def has_adapter(unet: torch.nn.Module, adapter_name: str = ADAPTER) -> bool:
    """Whether a peft adapter of this name is attached to the UNet."""
    return adapter_name in (getattr(unet, "peft_config", None) or {})


def _has_lora_layers(unet: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


class UNetView(torch.nn.Module):
    """A module sharing `unet` that forwards attribute lookups (config, dtype, device, add_embedding, peft_config,
    ...) to it, so pipelines and lib.lora accept it in place of the UNet."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)


class BaseUNet(UNetView):
    """The pre-trained network: the shared UNet with every attached LoRA adapter switched off."""

    def forward(self, *args, **kwargs):
        if _has_lora_layers(self.unet):
            with adapter_disabled(self.unet):
                return self.unet(*args, **kwargs)
        return self.unet(*args, **kwargs)


class AdapterUNet(UNetView):
    """The shared UNet with one named adapter active: several loaded adapters (DRaFT, KL models) coexist in one
    UNet and each view activates its own before running. Walking its modules (lib.lora.adapter_disabled,
    lora_scale) activates it too, so those act on this view's adapter."""

    def __init__(self, unet: torch.nn.Module, adapter_name: str):
        super().__init__(unet)
        self.adapter_name = adapter_name

    def activate(self) -> "AdapterUNet":
        """Make this view's adapter the UNet's active one."""
        self._modules["unet"].set_adapter(self.adapter_name)
        return self

    def named_modules(self, *args, **kwargs):
        self.activate()
        return super().named_modules(*args, **kwargs)

    def forward(self, *args, **kwargs):
        self.activate()
        return self.unet(*args, **kwargs)


class AIGUNet(UNetView):
    """A drop-in `pipe.unet`: eps = gamma(s) eps_base + (1 - gamma(s)) eps_tuned, s = t / T (AIG paper Eq. 11).

    Tuned branch: `unet` with its active LoRA adapter (or an AdapterUNet view). Base branch: `base_unet` if given,
    else the same `unet` with its adapters switched off. A branch whose weight is zero is skipped
    (`lib.guidance.AIG`); `calls` counts the UNet evaluations per branch. Attributes the pipelines read (config,
    dtype, device, add_embedding, ...) are forwarded to `unet`.
    """

    def __init__(self, unet: torch.nn.Module, gamma: Schedule | str, base_unet: Optional[torch.nn.Module] = None,
                 num_train_timesteps: int = 1000):
        super().__init__(unet)
        self.base_unet = base_unet
        self.guide = AIG(self._eps_base, self._eps_tuned, gamma, num_train_timesteps)

    @property
    def gamma(self) -> Schedule:
        return self.guide.gamma

    @property
    def calls(self):
        """Counter of UNet evaluations: {'base': n, 'tuned': m}."""
        return self.guide.calls

    @staticmethod
    def _run(unet, x, t, cond: dict) -> torch.Tensor:
        return unet(x, t, **cond, return_dict=False)[0]

    def _eps_base(self, x, t, cond: dict) -> torch.Tensor:
        if self.base_unet is not None:
            return self._run(self.base_unet, x, t, cond)
        with adapter_disabled(self.unet):
            return self._run(self.unet, x, t, cond)

    def _eps_tuned(self, x, t, cond: dict) -> torch.Tensor:
        return self._run(self.unet, x, t, cond)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """Same signature and output as UNet2DConditionModel.forward; sample (B, C, h, w) -> eps (B, C, h, w)."""
        eps = self.guide(sample, timestep, dict(encoder_hidden_states=encoder_hidden_states, **kwargs))
        if not return_dict:
            return (eps,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=eps)


def aig_unet(pipe, gamma: Schedule | str, adapter_name: str = ADAPTER, base_unet: Optional[torch.nn.Module] = None,
             num_train_timesteps: Optional[int] = None) -> AIGUNet:
    """Wrap `pipe.unet` (or a UNet) into the AIG UNet; gamma is the base weight (`step:c` = combined generation)."""
    unet = _unet_of(pipe)
    if isinstance(unet, AdapterUNet):
        adapter_name = unet.adapter_name
    if base_unet is None:
        if not has_adapter(unet, adapter_name):
            raise ValueError(f"the UNet has no LoRA adapter {adapter_name!r} (attached: "
                             f"{list(getattr(unet, 'peft_config', {}) or {})}); load one or pass base_unet=")
        unet.set_adapter(adapter_name)
    if num_train_timesteps is None:
        sched = getattr(pipe, "scheduler", None)
        num_train_timesteps = int(sched.config.num_train_timesteps) if sched is not None else 1000
    return AIGUNet(unet, gamma, base_unet, num_train_timesteps)


@contextlib.contextmanager
def using_unet(pipe, unet: torch.nn.Module) -> Iterator[Any]:
    """Temporarily replace `pipe.unet` (e.g. by an AIGUNet) and put the original back afterwards."""
    original = pipe.unet
    pipe.unet = unet
    try:
        yield pipe
    finally:
        pipe.unet = original


def combined_gamma(scheduler, num_steps: int, tuned_steps: int) -> str:
    """The `step:c` spec that runs the tuned model for the last `tuned_steps` of `num_steps` (ImageReFL's T')."""
    import copy

    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_steps)
    ts = [float(t) for t in sched.timesteps]
    if not 0 <= tuned_steps <= len(ts):
        raise ValueError(f"tuned_steps = {tuned_steps} must lie in [0, {len(ts)}]")
    if tuned_steps == 0:
        return "base"
    return f"step:{ts[len(ts) - tuned_steps] / sched.config.num_train_timesteps!r}"


def _alpha(setting: str) -> float:
    m = re.fullmatch(r"(?:alpha=)?([0-9.eE+-]+)", setting.strip())
    if not m:
        raise ValueError(f"lora_scale setting {setting!r}: expected 'alpha=<number>' or '<number>'")
    return float(m.group(1))


def method_gamma(method: str, setting: str) -> Optional[str]:
    """The gamma spec of an AIG-family method: aig -> setting; combined -> step:c (setting 'step:c' or 'c')."""
    if method == "aig":
        return parse(setting).spec
    if method == "combined":
        return parse(setting if setting.startswith("step:") else f"step:{setting}").spec
    return None


@contextlib.contextmanager
def method_context(pipe, method: str, setting: str = "-", adapter_name: str = ADAPTER) -> Iterator[Any]:
    """Configure `pipe` for one method of the sweep (see METHODS), restoring it afterwards.

    base: adapters off; draft / kl: the loaded adapter at scale 1; lora_scale: alpha' = setting;
    aig: gamma = setting; combined: step:c.
    """
    unet = pipe.unet
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: allowed {METHODS}")
    if method == "base":
        with adapter_disabled(unet) if getattr(unet, "peft_config", None) else contextlib.nullcontext():
            yield pipe
        return
    if not has_adapter(unet, adapter_name):
        raise ValueError(f"method {method!r} needs the fine-tuned LoRA adapter {adapter_name!r} loaded into pipe.unet")
    unet.set_adapter(adapter_name)
    if method in ("draft", "kl"):
        yield pipe
    elif method == "lora_scale":
        with lora_scale(unet, _alpha(setting)):
            yield pipe
    else:
        with using_unet(pipe, aig_unet(pipe, method_gamma(method, setting), adapter_name)):
            yield pipe


# ------------------------------------------------------------------------------------------------- generation
def latents_for(pipe, seeds: Sequence[int], height: int, width: int, dtype=None) -> torch.Tensor:
    """x_T (B, C, height / f, width / f), row i from its own generator seeded with seeds[i] (paired seeds)."""
    unet = _unet_of(pipe)
    f = pipe.vae_scale_factor
    shape = (int(unet.config.in_channels), height // f, width // f)
    return per_sample_noise(shape, seeds, device=pipe.device, dtype=dtype or unet.dtype)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text) or "_"


INDEX_COLUMNS = ("shard", "row", "prompt_set", "prompt_index", "prompt", "seed", "method", "setting")


def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], out_dir: str | os.PathLike, *,
             method: str = "base", setting: str = "-", prompt_set: str = "prompts", batch_size: int = 4,
             num_steps: int = 25, guidance_scale: float = 7.5, height: Optional[int] = None,
             width: Optional[int] = None, adapter_name: str = ADAPTER, rank: int = 0, world_size: int = 1,
             progress: bool = False) -> Path:
    """Generate every (prompt j, seed i) of a method into resumable .npz shards; returns the csv index path.

    Shards hold `batch_size` consecutive (prompt, seed) pairs (prompt-major) as uint8 images (n, H, W, 3) plus
    their prompt indices, prompts and seeds; a shard already on disk is skipped, a new one is written atomically.
    Process `rank` of `world_size` writes shards k with k % world_size == rank; the index
    <out_dir>/<method>/<setting>/index-<prompt_set>.csv is written once every shard exists. Shard names hash the
    method, setting, sampler settings and their (prompt, seed) pairs, not the weights: use one out_dir per model
    and adapter (e.g. results/<run>/samples), and distinct settings for distinct adapters (kl: "lambda=1").
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: allowed {METHODS}")
    unet = pipe.unet
    f = pipe.vae_scale_factor
    height = height or int(unet.config.sample_size) * f
    width = width or int(unet.config.sample_size) * f
    items = [(j, p, int(s)) for j, p in enumerate(prompts) for s in seeds]
    folder = Path(out_dir) / method / _slug(setting)
    settings = dict(method=method, setting=setting, num_steps=num_steps, guidance_scale=guidance_scale,
                    height=height, width=width)
    shards = []
    for k in range(0, len(items), batch_size):
        chunk = items[k : k + batch_size]
        digest = hashlib.sha256(json.dumps([settings, chunk]).encode()).hexdigest()[:12]
        shards.append((folder / f"{_slug(prompt_set)}-{k // batch_size:06d}-{digest}.npz", chunk))
    todo = [(p, c) for n, (p, c) in enumerate(shards) if n % world_size == rank and not p.is_file()]
    if todo:
        from tqdm.auto import tqdm

        with method_context(pipe, method, setting, adapter_name):
            for path, chunk in tqdm(todo, disable=not progress, desc=f"{method} {setting}", leave=False):
                lat = latents_for(pipe, [s for _, _, s in chunk], height, width)
                with torch.no_grad():
                    out = pipe(prompt=[p for _, p, _ in chunk], latents=lat, num_inference_steps=num_steps,
                               guidance_scale=guidance_scale, height=height, width=width, output_type="np")
                images = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)  # (n, H, W, 3)
                arrays = dict(images=images, prompt_index=np.array([j for j, _, _ in chunk]),
                              prompt=np.array([p for _, p, _ in chunk]), seed=np.array([s for _, _, s in chunk]))
                atomic_write(path, lambda fh: np.savez(fh, **arrays))
    index = folder / f"index-{_slug(prompt_set)}.csv"
    if all(p.is_file() for p, _ in shards):
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(INDEX_COLUMNS)
        for path, chunk in shards:
            for r, (j, p, s) in enumerate(chunk):
                w.writerow([path.relative_to(out_dir).as_posix(), r, prompt_set, j, p, s, method, setting])
        atomic_write(index, lambda fh: fh.write(buf.getvalue().encode("utf-8")))
    return index


def read_index(out_dir: str | os.PathLike):
    """All generation indices under out_dir as one DataFrame (columns INDEX_COLUMNS)."""
    import pandas as pd

    files = sorted(Path(out_dir).glob("*/*/index-*.csv"))
    if not files:
        return pd.DataFrame(columns=list(INDEX_COLUMNS))
    text = {c: str for c in ("shard", "prompt_set", "prompt", "method", "setting")}
    return pd.concat([pd.read_csv(f, keep_default_na=False, dtype=text) for f in files], ignore_index=True)


def load_images(out_dir: str | os.PathLike, index) -> np.ndarray:
    """uint8 images (N, H, W, 3) of the index rows, in row order."""
    cache: dict[str, np.ndarray] = {}
    out = []
    for shard, row in zip(index["shard"], index["row"]):
        if shard not in cache:
            with np.load(Path(out_dir) / shard) as z:
                cache[shard] = z["images"]
        out.append(cache[shard][int(row)])
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------- domain
@dataclass(frozen=True)
class SDConfig:
    """Stable Diffusion domain settings (literal values; defaults follow the AIG paper for SD1.4 + PickScore)."""

    model: str = DEFAULT_MODELS["sd"]  # hub id, local directory, or "tiny" (offline tiny pipeline)
    kind: str = "sd"  # "sd" (SD v1.x) or "sdxl"
    dtype: str = "float32"  # weights; training adds bf16 autocast on CUDA (AIG paper A.7.1)
    device: str = "auto"  # "auto" = cuda if available else cpu
    num_steps: int = 25
    guidance_scale: float = 7.5
    resolution: int = 512
    reward: str = "pickscore"  # see lib.rewards.REWARDS
    reward_path: Optional[str] = None  # local override of the reward weights
    lora_rank: int = 32  # DRaFT Table 1, large-scale setting
    lora_alpha: Optional[float] = None  # None = rank (scale 1)
    train_prompts: str = "pickapic"
    eval_prompts: tuple[str, ...] = ("partiprompts", "hpdv2:anime", "hpdv2:concept-art", "hpdv2:paintings",
                                     "hpdv2:photo")
    coverage_prompts: str = "coverage:40"
    features: tuple[str, ...] = ("inception",)
    cache_dir: Optional[str] = None
    prompt_paths: Mapping[str, str] = field(default_factory=dict)  # prompt-set name -> local file override
    feature_paths: Mapping[str, str] = field(default_factory=dict)  # extractor name -> local weights override
    gradient_checkpointing: bool = False
    autocast: bool = True  # bf16 autocast, only ever on CUDA
    seed: int = 0  # initialisation seed of the tiny pipeline

    def __post_init__(self):
        from lib.config import check  # ConfigError (a ValueError) naming the key, the value and what is allowed
        from lib.rewards import REWARDS

        check("sd.kind", self.kind, self.kind in KINDS, " or ".join(KINDS))
        check("sd.dtype", self.dtype, self.dtype in DTYPES, ", ".join(DTYPES))
        check("sd.num_steps", self.num_steps, self.num_steps >= 1, "an integer >= 1")
        check("sd.guidance_scale", self.guidance_scale, self.guidance_scale >= 1, "a number >= 1 (1 = no guidance)")
        check("sd.resolution", self.resolution, self.resolution >= 8 and self.resolution % 8 == 0, "a multiple of 8")
        check("sd.reward", self.reward, self.reward in REWARDS, ", ".join(REWARDS))
        check("sd.lora_rank", self.lora_rank, self.lora_rank >= 1, "an integer >= 1")
        check("sd.eval_prompts", self.eval_prompts, len(self.eval_prompts) >= 1, "at least one prompt set")
        check("sd.features", self.features, len(self.features) >= 1, "at least one feature extractor")

    @classmethod
    def paper(cls, kind: str = "sd", **overrides) -> "SDConfig":
        """The paper's settings for SD1.4 or SDXL (model, steps, CFG, resolution), with overrides."""
        return cls(**{"model": DEFAULT_MODELS[_check_kind(kind)], "kind": kind, **PAPER_SAMPLING[kind],
                      **overrides})

    @classmethod
    def tiny(cls, kind: str = "sd", **overrides) -> "SDConfig":
        """Offline tiny pipeline settings for tests and smoke runs."""
        base = dict(model="tiny", kind=kind, device="cpu", num_steps=4,
                    guidance_scale=PAPER_SAMPLING[_check_kind(kind)]["guidance_scale"], resolution=64,
                    reward="tiny-pickscore", lora_rank=4, train_prompts="tiny", eval_prompts=("tiny",),
                    coverage_prompts="tiny", features=("tiny",))
        return cls(**{**base, **overrides})


def _device(name: str) -> torch.device:
    """'auto' = this process's GPU if there is one (cuda:<local rank> under accelerate/torchrun), else cpu;
    'cuda' also means this process's GPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        from lib.train import process_state

        return process_state().device
    return torch.device("cpu" if name == "auto" else name)


class SDDomain:
    """`lib.domain.Domain` for Stable Diffusion: x is the UNet latent (B, 4, h, w), cond the text embeddings.

    One UNet lives in memory and the models share it: `base_model()` is a view that runs it with every adapter
    switched off; `add_adapter` attaches a fresh trainable LoRA adapter "draft" in place (dropping all others) and
    returns the UNet; `load_adapter` adds a stored adapter under its own name and returns an `AdapterUNet` view,
    so the DRaFT model and the KL models can be held at once. For SDXL, cond packs (prompt embeddings (B, 77, D),
    pooled text embedding, time ids) into one tensor (B, 79, D) so `lib.guidance.cfg` and batching work on it
    unchanged.
    """

    def __init__(self, config: SDConfig = SDConfig(), pipe=None):
        self.config = config
        self.device = _device(config.device)
        if pipe is None and config.model.startswith("tiny"):
            pipe = tiny_pipeline(config.kind, config.seed, config.cache_dir).to(self.device)
            if config.dtype != "float32":
                pipe = pipe.to(dtype=DTYPES[config.dtype])
        elif pipe is None:
            pipe = load_pipeline(config.model, config.kind, DTYPES[config.dtype], self.device, config.cache_dir)
        self.pipe = pipe
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if m is not None:
                m.requires_grad_(False)
        self.name = config.kind
        self.scheduler = pipe.scheduler
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.num_steps = config.num_steps
        self._null: Optional[torch.Tensor] = None
        self._reward = None
        self._extractors: dict[str, torch.nn.Module] = {}
        self._vae32 = None
        self._base = BaseUNet(pipe.unet)
        self._loaded: dict[str, str] = {}  # resolved adapter file -> adapter name in the UNet

    # --- conditions -------------------------------------------------------------------------------------------
    def prompts(self, split: str) -> list[str]:
        """'train', 'eval' (the first eval set), 'coverage', or any lib.prompts set name."""
        from lib.prompts import prompt_set

        name = {"train": self.config.train_prompts, "eval": self.config.eval_prompts[0],
                "coverage": self.config.coverage_prompts}.get(split, split)
        family = name.split(":")[0]
        paths = self.config.prompt_paths  # exact set name first; coverage is drawn from the PartiPrompts file
        path = paths.get(name) or paths.get("partiprompts" if family == "coverage" else family)
        return prompt_set(name, path, self.config.cache_dir)

    def _time_ids(self, n: int) -> torch.Tensor:
        r = self.config.resolution
        return torch.tensor([[r, r, 0, 0, r, r]] * n, dtype=torch.float32, device=self.device)  # (B, 6)

    def _encode(self, prompts: Sequence[str], null: bool = False) -> torch.Tensor:
        with torch.no_grad():
            if self.config.kind == "sd":
                emb, neg = self.pipe.encode_prompt(list(prompts), self.device, 1, null, negative_prompt=None)
                return (neg if null else emb).float()  # (B, 77, D)
            emb, neg, pooled, neg_pooled = self.pipe.encode_prompt(list(prompts), device=self.device,
                                                                   num_images_per_prompt=1,
                                                                   do_classifier_free_guidance=null)
            if null:
                emb, pooled = neg, neg_pooled
            return self._pack(emb.float(), pooled.float(), self._time_ids(len(prompts)))

    @staticmethod
    def _pack(emb: torch.Tensor, pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        """SDXL cond: (B, 77, D), (B, P), (B, 6) -> (B, 79, D) (rows 77 and 78 hold pooled and time ids, padded)."""
        d = emb.shape[-1]
        pad = lambda v: torch.nn.functional.pad(v, (0, d - v.shape[-1]))[:, None]  # noqa: E731
        return torch.cat([emb, pad(pooled), pad(time_ids)], dim=1)

    def _unpack(self, cond: torch.Tensor) -> dict:
        if self.config.kind == "sd":
            return dict(encoder_hidden_states=cond)
        p = int(self.pipe.text_encoder_2.config.projection_dim)
        return dict(encoder_hidden_states=cond[:, :-2],
                    added_cond_kwargs=dict(text_embeds=cond[:, -2, :p], time_ids=cond[:, -1, :6]))

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning (B, 77, D) for SD, packed (B, 79, D) for SDXL."""
        return self._encode(prompts)

    @property
    def null_cond(self) -> torch.Tensor:
        """The unconditional (empty prompt; zeros for SDXL) conditioning row (1, L, D) used by CFG."""
        if self._null is None:
            self._null = self._encode([""], null=True)
        return self._null

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """x_T (B, 4, r / f, r / f), row i from its own generator seeded with seeds[i]."""
        r = self.config.resolution
        return latents_for(self.pipe, seeds, r, r, dtype=torch.float32)

    # --- networks ---------------------------------------------------------------------------------------------
    def _autocast(self):
        on = self.device.type == "cuda" and self.config.autocast
        return torch.autocast("cuda", dtype=torch.bfloat16) if on else contextlib.nullcontext()

    def eps(self, model: torch.nn.Module, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's epsilon prediction (B, 4, h, w) in float32, without guidance."""
        kwargs = self._unpack(cond.to(model.dtype))
        with self._autocast():
            out = model(x.to(model.dtype), t, **kwargs, return_dict=False)[0]
        return out.float()

    def denoiser(self, model: torch.nn.Module) -> Denoiser:
        """(x, t, cond) -> eps of `model` with classifier-free guidance at the configured scale (lib.guidance.cfg)."""
        return cfg(lambda x, t, c: self.eps(model, x, t, c), self.null_cond, self.config.guidance_scale)

    def base_model(self) -> torch.nn.Module:
        """The pre-trained network: a view of the pipeline's frozen UNet with every adapter switched off."""
        return self._base

    def add_adapter(self, model: torch.nn.Module, rank: Optional[int] = None, seed: int = 0) -> torch.nn.Module:
        """Attach a fresh seeded LoRA adapter "draft" (peft; B = 0, so tuned == base at the start) to the UNet
        under `model`, in place, after dropping every other adapter; returns the UNet (its LoRA weights trainable)."""
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        unet = _plain_unet(model)
        rank = rank or self.config.lora_rank
        if getattr(unet, "peft_config", None):
            unet.unload_lora()  # views from load_adapter are invalid from here on
            self._loaded.clear()
        lcfg = LoraConfig(r=rank, lora_alpha=self.config.lora_alpha or rank, init_lora_weights=True,
                          target_modules=list(LORA_TARGETS))
        devices = [unet.device.index or 0] if unet.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded without touching the global generators
            torch.manual_seed(seed)
            unet.add_adapter(lcfg, adapter_name=ADAPTER)
        unet.set_adapter(ADAPTER)
        cast_training_params(unet, dtype=torch.float32)  # trainable LoRA weights in fp32 for AdamW
        if self.config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        return unet

    @staticmethod
    def _adapter_of(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
        """(plain UNet, adapter name) of a model returned by add_adapter or load_adapter."""
        if isinstance(model, AdapterUNet):
            return _plain_unet(model), model.adapter_name
        unet = _plain_unet(model)
        if has_adapter(unet, ADAPTER):
            return unet, ADAPTER
        active = unet.active_adapters() if getattr(unet, "peft_config", None) else []
        if len(active) != 1:
            raise ValueError(f"cannot tell which adapter to use: active adapters {active}")
        return unet, active[0]

    def save_adapter(self, model: torch.nn.Module, path: str | os.PathLike) -> None:
        """Write the adapter as diffusers LoRA safetensors (`pipe.load_lora_weights(path)` reads it).

        `path` is a directory (pytorch_lora_weights.safetensors inside) or a .safetensors file name.
        """
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet, adapter = self._adapter_of(model)
        path = Path(path)
        folder, name = (path.parent, path.name) if path.suffix == ".safetensors" else (path, None)
        name = name or "pytorch_lora_weights.safetensors"
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=adapter))
        state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
        meta = unet.peft_config[adapter].to_dict()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".lora."))
        try:
            _pipeline_class(self.config.kind).save_lora_weights(tmp, unet_lora_layers=state, weight_name=name,
                                                                unet_lora_adapter_metadata=meta)
            os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load_adapter(self, path: str | os.PathLike, adapter_name: Optional[str] = None) -> "AdapterUNet":
        """The base UNet with the adapter stored at `path` (via `pipe.load_lora_weights`), as an AdapterUNet view.

        Adapters loaded earlier stay usable. The name is `adapter_name`, else the one this file got before, else
        "draft" if free, else "draft_<k>". Reloading a file replaces its weights.
        """
        path = Path(path)
        folder, name = (path.parent, path.name) if path.suffix == ".safetensors" else (path, None)
        name = name or "pytorch_lora_weights.safetensors"
        key = str((folder / name).resolve())
        unet = _plain_unet(self.pipe)
        taken = set(getattr(unet, "peft_config", None) or {})
        adapter = adapter_name or self._loaded.get(key)
        if adapter is None:
            adapter = ADAPTER if ADAPTER not in taken else next(
                f"{ADAPTER}_{k}" for k in range(2, len(taken) + 3) if f"{ADAPTER}_{k}" not in taken)
        if adapter in taken:
            unet.delete_adapters(adapter)
        with warnings.catch_warnings():  # several adapters in one UNet is the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            self.pipe.load_lora_weights(str(folder), weight_name=name, adapter_name=adapter)
        self._loaded[key] = adapter
        unet.requires_grad_(False)
        return AdapterUNet(unet, adapter).activate()

    # --- samples ----------------------------------------------------------------------------------------------
    def _vae(self):
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            if self._vae32 is None:  # SDXL's VAE overflows in fp16: decode with a float32 copy
                import copy

                self._vae32 = copy.deepcopy(vae).float()
            return self._vae32
        return vae

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """VAE decode of final latents (B, 4, h, w) -> images (B, 3, H, W) in [0, 1], differentiable."""
        vae = self._vae()
        c = vae.config
        mean, std = getattr(c, "latents_mean", None), getattr(c, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            z = x0 * torch.tensor(std, device=x0.device).view(shape) / c.scaling_factor \
                + torch.tensor(mean, device=x0.device).view(shape)
        else:
            z = x0 / c.scaling_factor
        with self._autocast():
            img = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return (img.float() / 2 + 0.5).clamp(0, 1)

    @property
    def reward_model(self):
        """The configured reward network (loaded on first use)."""
        if self._reward is None:
            from lib.rewards import load_reward

            self._reward = load_reward(self.config.reward, self.config.reward_path, device=self.device,
                                       cache_dir=self.config.cache_dir)
        return self._reward

    def reward(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Differentiable reward r(x0, c) of decoded images (B, 3, H, W) in [0, 1]: (B,)."""
        with self._autocast():
            return self.reward_model(samples, prompts).float()

    def extractor(self, name: Optional[str] = None) -> torch.nn.Module:
        """A feature extractor of lib.features by name (default: the first configured), loaded once."""
        from lib.features import load_extractor

        name = name or self.config.features[0]
        if name not in self._extractors:
            self._extractors[name] = load_extractor(name, self.config.feature_paths.get(name), self.device,
                                                    self.config.cache_dir)
        return self._extractors[name]

    def features(self, samples: torch.Tensor, name: Optional[str] = None) -> np.ndarray:
        """Feature vectors (N, D) of images (N, 3, H, W) in [0, 1] for the coverage metrics."""
        from lib.features import extract

        return extract(self.extractor(name), samples, device=self.device)

    def to_storage(self, samples: torch.Tensor) -> np.ndarray:
        """Images (N, 3, H, W) in [0, 1] -> uint8 (N, 3, H, W), as an image file would hold them."""
        return (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def from_storage(self, stored: np.ndarray) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float images in [0, 1] on this domain's device."""
        return torch.from_numpy(np.asarray(stored)).to(self.device).float() / 255.0

    def sample_grid(self, samples: dict, prompts_shown: int = 4, per_prompt: int = 2):
        """Image grid (Fig. 2 style): one row per method, `per_prompt` seeds of the first prompts."""
        from lib.plots import image_grid

        rows = {}
        for name, (x, p) in samples.items():
            picks = [i for j in range(prompts_shown) for i in np.flatnonzero(p == j)[:per_prompt]]
            rows[name] = np.asarray(x)[picks]
        return image_grid(rows)

    def pipeline_kwargs(self) -> dict:
        """num_steps, guidance_scale, height and width for `generate` from this config."""
        r = self.config.resolution
        return dict(num_steps=self.config.num_steps, guidance_scale=self.config.guidance_scale, height=r, width=r)
