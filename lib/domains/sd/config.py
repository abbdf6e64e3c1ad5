"""Settings of the Stable Diffusion domain: the params section `sd:` (the paper presets are params/presets/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from lib.domains.sd.pipelines import DEFAULT_MODELS, DTYPES, KINDS, PAPER_SAMPLING, check_kind
from lib.domains.sd.rewards import REWARDS
from lib.errors import check


@dataclass(frozen=True)
class SDConfig:
    """Stable Diffusion domain settings (literal values; defaults follow the AIG paper for SD1.4 + PickScore)."""

    model: str = DEFAULT_MODELS["sd"]  # hub id, local diffusers directory, or "tiny" (offline tiny pipeline)
    kind: str = "sd"  # "sd" (SD v1.x) or "sdxl"
    dtype: str = "float32"  # weights; training adds bf16 autocast on CUDA (AIG paper A.7.1)
    num_steps: int = 25
    guidance_scale: float = 7.5
    resolution: int = 512
    reward: str = "pickscore"  # see lib.domains.sd.rewards.REWARDS
    reward_path: Optional[str] = None  # local override of the reward weights
    lora_alpha: Optional[float] = None  # None = the rank (LoRA scale 1); the rank is train.lora_rank
    train_prompts: str = "pickapic"
    eval_prompts: tuple[str, ...] = ("partiprompts", "hpdv2:anime", "hpdv2:concept-art", "hpdv2:paintings",
                                     "hpdv2:photo")
    coverage_prompts: str = "coverage:40"
    features: tuple[str, ...] = ("inception",)  # extractor of FID / precision / recall / SCD / LSCD features
    dino: str = "dino"  # extractor of DinoDiversity's embeddings
    clip: str = "clip"  # CLIP model of the CLIP score (transformers CLIPModel; "tiny-clip" offline)
    cache_dir: Optional[str] = None
    prompt_paths: Mapping[str, str] = field(default_factory=dict)  # prompt-set name -> local file override
    feature_paths: Mapping[str, str] = field(default_factory=dict)  # extractor name -> local weights override
    gradient_checkpointing: bool = False
    autocast: bool = True  # bf16 autocast, only ever on CUDA
    seed: int = 0  # initialisation seed of the tiny pipeline

    def __post_init__(self):
        check("sd.kind", self.kind, self.kind in KINDS, " or ".join(KINDS))
        check("sd.dtype", self.dtype, self.dtype in DTYPES, ", ".join(DTYPES))
        check("sd.num_steps", self.num_steps, self.num_steps >= 1, "an integer >= 1")
        check("sd.guidance_scale", self.guidance_scale, self.guidance_scale >= 1, "a number >= 1 (1 = no guidance)")
        check("sd.resolution", self.resolution, self.resolution >= 8 and self.resolution % 8 == 0, "a multiple of 8")
        check("sd.reward", self.reward, self.reward in REWARDS, ", ".join(REWARDS))
        check("sd.eval_prompts", self.eval_prompts, len(self.eval_prompts) >= 1, "at least one prompt set")
        check("sd.features", self.features, len(self.features) >= 1, "at least one feature extractor")

    @classmethod
    def paper(cls, kind: str = "sd", **overrides) -> "SDConfig":
        """The paper's settings for SD1.4 or SDXL (model, steps, CFG, resolution), with overrides."""
        return cls(**{"model": DEFAULT_MODELS[check_kind(kind)], "kind": kind, **PAPER_SAMPLING[kind],
                      **overrides})

    @classmethod
    def tiny(cls, kind: str = "sd", **overrides) -> "SDConfig":
        """Offline tiny pipeline settings for tests and smoke runs."""
        base = dict(model="tiny", kind=kind, num_steps=4,
                    guidance_scale=PAPER_SAMPLING[check_kind(kind)]["guidance_scale"], resolution=64,
                    reward="tiny-pickscore", train_prompts="tiny", eval_prompts=("tiny",),
                    coverage_prompts="tiny", features=("tiny",), dino="tiny-dino", clip="tiny-clip")
        return cls(**{**base, **overrides})
