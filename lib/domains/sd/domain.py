"""The Stable Diffusion domain: SD v1.x and SDXL through diffusers pipelines (`lib.domains.base.Domain`).

x is the UNet latent (B, 4, h, w) and cond the text embeddings; rewards (PickScore, HPSv2, ...), feature
extractors (Inception, DINO, CLIP) and prompt sets load by name, each with a local-path override. Its settings
are `lib.domains.sd.config.SDConfig` (the params section `sd:`).
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lib.distributed import device_for
from lib.domains.sd.config import SDConfig
from lib.domains.sd import hub
from lib.domains.sd.features import extract, load_extractor
from lib.domains.sd.pipelines import DTYPES, latents_for, load_pipeline, pipeline_class, tiny_pipeline
from lib.domains.sd.prompts import prompt_set
from lib.domains.sd.real import encode_images, real_images, vae_latent
from lib.domains.sd.multi import load_one, load_spec
from lib.domains.sd.rewards import load_clip_score
from lib.domains.sd.unet import ADAPTER, AdapterUNet, BaseUNet, has_adapter, paired_default, plain_unet
from lib.domains.world.link import world_of
from lib.drawing import image_grid, mosaic
from lib.files import sha256_file
from lib.guidance import Denoiser, classifier_free

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")  # attention and feed-forward layers


class SDDomain:
    """`lib.domains.base.Domain` for Stable Diffusion: x is the UNet latent (B, 4, h, w), cond the text embeddings.

    One UNet lives in memory and the models share it: `base_model()` is a view that runs it with every adapter
    switched off; `add_adapter` attaches a fresh trainable LoRA adapter "draft" in place (dropping all others) and
    returns the UNet; `load_adapter` adds a stored adapter under its own name and returns an `AdapterUNet` view,
    so the DRaFT model and the KL models can be held at once. For SDXL, cond packs (prompt embeddings (B, 77, D),
    pooled text embedding, time ids) into one tensor (B, 79, D) so `lib.guidance.classifier_free` and batching work
    on it unchanged.
    """

    name, preview_samples = "diffusers", 2  # the explorer's default: two images per coverage prompt (seconds on a CPU)

    def __init__(self, config: SDConfig = SDConfig(), root: Optional[Path] = None, device: str = "auto", pipe=None):
        self.config, self.root = config, Path(root) if root else None
        hub.configure(dict(config.revisions), config.hub_repos(), self.root)  # pinned revisions, recorded commits
        self.device = device_for(device)
        self.world = world_of(config, self.root)
        if pipe is None and config.model.startswith("tiny"):
            pipe = tiny_pipeline(config.kind, config.seed, config.cache_dir).to(self.device)
            if config.dtype != "float32":
                pipe = pipe.to(dtype=DTYPES[config.dtype])
        elif pipe is None and self.world is None:
            pipe = load_pipeline(config.model, config.kind, DTYPES[config.dtype], self.device, config.cache_dir)
        self.kind = config.kind
        self.guidance_scale = float(config.guidance_scale)
        self.num_steps = config.num_steps
        self._null: Optional[torch.Tensor] = None
        self._reward = None
        self._extractors: dict[str, torch.nn.Module] = {}
        self._clip = None
        self._vae32 = None
        self._loaded: dict[str, str] = {}  # resolved adapter file -> adapter name in the UNet
        self._pipe = None
        if pipe is not None:  # a world's pipeline is loaded on first use, after prepare() has built it
            self._attach(pipe)

    def _attach(self, pipe) -> None:
        self._pipe = pipe
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if m is not None:
                m.requires_grad_(False)
        self.scheduler = pipe.scheduler
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self._base = BaseUNet(pipe.unet)

    @property
    def pipe(self):
        """The diffusers pipeline (a world's is loaded here on first use)."""
        if self._pipe is None:
            self._attach(self.world.load_pipeline(DTYPES[self.config.dtype], self.device))
        return self._pipe

    def __getattr__(self, name: str):
        if name in ("scheduler", "num_train_timesteps", "_base") and self.__dict__.get("world") is not None \
                and self.__dict__.get("_pipe") is None:
            self._attach(self.world.load_pipeline(DTYPES[self.config.dtype], self.device))
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def capabilities(cls, config: SDConfig) -> frozenset[str]:
        """Every metric input: reward, features, DINO embeddings, a CLIP model and the chain KL; and the ground
        truth ('truth') on a world run with one of the world's preference rewards."""
        truth = {"truth"} if config.model == "world" and config.reward in ("pickscore", "hpsv2") else set()
        return frozenset({"reward", "features", "dino", "clip", "chain", *truth})

    def prepare(self, force: bool = False, progress: bool = True) -> Optional[dict]:
        """Build the world of a world run (unless a build of the same config verifies); otherwise nothing to build:
        the base model is the pipeline (hub or local directory)."""
        return None if self.world is None else self.world.prepare(force=force, progress=progress)

    def stamp(self) -> dict:
        """Model id (the sha256 of a local directory's weights, or the world's key and weights), kind, sampler."""
        c, model = self.config, Path(self.config.model)
        weights = {str(f.relative_to(model)): sha256_file(f) for f in sorted(model.rglob("*.safetensors"))} \
            if model.is_dir() else None
        world = {"world": self.world.stamp()} if self.world is not None else {}
        return {"domain": self.name, "model": c.model, "kind": c.kind, "weights": weights, "dtype": c.dtype,
                "resolution": c.resolution, "num_steps": c.num_steps, "guidance_scale": c.guidance_scale,
                "seed": c.seed if c.model.startswith("tiny") else None, **world}

    def reward_stamp(self) -> dict:
        """The training reward (sd.reward, sd.reward_path): not in stamp(), as the base samples do not use it."""
        return {"reward": self.config.reward, "reward_path": self.config.reward_path}

    def truth(self, samples: torch.Tensor, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """Ground truth of a world run per image (N,): true preferences, modes, prompt recognised (World.truth)."""
        if self.world is None:
            raise ValueError("ground truth exists only on a world run (sd.model: world)")
        return self.world.truth(samples, prompts, self.config.reward)

    # --- conditions -------------------------------------------------------------------------------------------
    def prompts(self, split: str) -> list[str]:
        """'train', 'eval' (the first eval set), 'coverage', or any lib.domains.sd.prompts set name."""
        name = {"train": self.config.train_prompts, "eval": self.config.eval_prompts[0],
                "coverage": self.config.coverage_prompts}.get(split, split)
        if self.world is not None and self.world.prompts(name) is not None:
            return self.world.prompts(name)
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

    @property
    def paired_calls(self) -> bool:
        """Whether one UNet call on the stacked batch can pay for this UNet (per batch lib.guidance.pairing_pays decides)."""
        return paired_default(self.pipe.unet)

    def denoiser(self, model: torch.nn.Module, scale: Optional[float] = None) -> Denoiser:
        """(x, t, cond) -> eps of `model` with classifier-free guidance at `scale` (None: sd.guidance_scale)."""
        scale = self.guidance_scale if scale is None else float(scale)
        return classifier_free(lambda x, t, c: self.eps(model, x, t, c), self.null_cond, scale)

    def base_model(self) -> torch.nn.Module:
        """The pre-trained network: a view of the pipeline's frozen UNet with every adapter switched off."""
        return self._base

    def add_adapter(self, model: torch.nn.Module, rank: int = 4, seed: int = 0) -> torch.nn.Module:
        """Attach a fresh seeded LoRA adapter "draft" (peft; B = 0, so tuned == base at the start) to the UNet
        under `model`, in place, after dropping every other adapter; returns the UNet (its LoRA weights trainable)."""
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        unet = plain_unet(model)
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
            return plain_unet(model), model.adapter_name
        unet = plain_unet(model)
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
            pipeline_class(self.config.kind).save_lora_weights(tmp, unet_lora_layers=state, weight_name=name,
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
        unet = plain_unet(self.pipe)
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
                self._vae32 = copy.deepcopy(vae).float()
            return self._vae32
        return vae

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """VAE decode of final latents (B, 4, h, w) -> images (B, 3, H, W) in [0, 1], differentiable."""
        vae = self._vae()
        with self._autocast():
            img = vae.decode(vae_latent(vae, x0).to(vae.dtype), return_dict=False)[0]
        return (img.float() / 2 + 0.5).clamp(0, 1)

    def real_samples(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """ImageReFL's real x_0 (B, 4, h, w): the world's or a folder's images through the VAE (lib.domains.sd.real)."""
        c = self.config
        images = real_images(self.world, prompts, seeds, c.resolution, c.real_images)  # (B, 3, R, R) in [0, 1]
        return encode_images(self._vae(), images.to(self.device))

    @property
    def reward_model(self):
        """The configured reward network (loaded on first use); a weighted spec sums its parts (lib.domains.sd.multi)."""
        if self._reward is None:
            c, w = self.config, self.world
            arch = w.reward_arch() if w is not None and c.reward_arch == "ViT-H-14" else c.reward_arch
            self._reward = load_spec(c.reward, lambda name: load_one(
                name, path=c.reward_path or (w.reward_path(name) if w is not None else None), device=self.device,
                cache_dir=c.cache_dir, arch=arch))
        return self._reward

    def reward(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Differentiable reward r(x0, c) of decoded images (B, 3, H, W) in [0, 1]: (B,)."""
        with self._autocast():
            return self.reward_model(samples, prompts).float()

    def extractor(self, name: Optional[str] = None) -> torch.nn.Module:
        """A feature extractor of lib.domains.sd.features by name (default: the first configured), loaded once."""
        name = name or self.config.features[0]
        if name not in self._extractors:
            self._extractors[name] = load_extractor(name, self._feature_path(name), self.device, self.config.cache_dir)
        return self._extractors[name]

    def _feature_path(self, name: str) -> Optional[str]:
        """feature_paths[name], else the world's file of that extractor (world runs), else None (the hub)."""
        path = self.config.feature_paths.get(name)
        return path if path or self.world is None else self.world.feature_path(name)

    def features(self, samples: torch.Tensor, name: Optional[str] = None) -> np.ndarray:
        """Feature vectors (N, D) of images (N, 3, H, W) in [0, 1] for the coverage metrics."""
        return extract(self.extractor(name), samples, device=self.device)

    def embeddings(self, samples: torch.Tensor) -> np.ndarray:
        """DINO CLS embeddings (N, D) of images (N, 3, H, W) for DinoDiversity (extractor sd.dino)."""
        return extract(self.extractor(self.config.dino), samples, device=self.device)

    def clip_scores(self, samples: torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
        """CLIP score 100 * cos(image, text) per image (N,) with the model sd.clip (lib.metrics.clip_score)."""
        if self._clip is None:
            self._clip = load_clip_score(self.config.clip, self._feature_path(self.config.clip),
                                         device=self.device, cache_dir=self.config.cache_dir)
        with torch.no_grad():
            return self._clip(samples.to(self.device), list(prompts)).double().cpu().numpy()

    def to_storage(self, samples: torch.Tensor) -> np.ndarray:
        """Images (N, 3, H, W) in [0, 1] -> uint8 (N, 3, H, W), as an image file would hold them."""
        return (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def from_storage(self, stored: np.ndarray) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float images in [0, 1] on this domain's device."""
        return torch.from_numpy(np.asarray(stored)).to(self.device).float() / 255.0

    def sample_grid(self, samples: dict, prompts_shown: int = 4, per_prompt: int = 2):
        """Image grid (Fig. 2 style): one row per method, `per_prompt` seeds of the first prompts."""
        rows = {}
        for name, (x, p) in samples.items():
            picks = [i for j in range(prompts_shown) for i in np.flatnonzero(p == j)[:per_prompt]]
            rows[name] = np.asarray(x)[picks]
        return image_grid(rows)

    def trajectory_figure(self, paths: dict[str, np.ndarray], prompt: int, columns: int = 6):
        """Fig. 1 style for images: the decoded x_t of the first seed along each method's chain (rows), from the
        same noise; paths[name] is (steps + 1, B, 4, h, w)."""
        rows = {}
        for name, xs in paths.items():
            picks = np.unique(np.linspace(0, len(xs) - 1, columns).round().astype(int))
            with torch.no_grad():
                img = self.decode(torch.as_tensor(xs[picks, 0]).to(self.device))
            rows[name] = self.to_storage(img)
        fig = image_grid(rows)
        fig.suptitle(f"x_t along the chain from the same noise ({self.prompts('coverage')[prompt]!r}; left: x_T)")
        return fig

    def draw_samples(self, ax, stored: np.ndarray, prompt_index: np.ndarray, color=None) -> None:
        """The images of one prompt as a mosaic in one axis (the explorer's preview panels)."""
        ax.imshow(mosaic(np.asarray(stored)), interpolation="nearest")
        ax.set(xticks=[], yticks=[])
        if color is not None:
            for spine in ax.spines.values():
                spine.set(color=color, linewidth=2)
