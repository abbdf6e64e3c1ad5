"""Settings of the Stable Diffusion domain: the params section `sd:` (the paper presets are params/presets/)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from lib.domains.sd import prompts
from lib.domains.sd.features import CLIP_MODEL, DINO_MODEL
from lib.domains.sd.hub import REVISION_KEYS, is_local
from lib.domains.sd.pipelines import DEFAULT_MODELS, DTYPES, KINDS, PAPER_SAMPLING, check_kind
from lib.domains.sd.multi import parse_reward_spec
from lib.domains.sd.rewards import CLIP_SCORE_MODEL, HPS_REPO, PICKSCORE_MODEL, PICKSCORE_PROCESSOR
from lib.domains.world.config import world_config
from lib.errors import check

FEATURE_DIMS = {"inception": 2048, "tiny": 16}  # feature size of the coverage-metric extractors (memory estimate)


@dataclass(frozen=True)
class SDConfig:
    """Stable Diffusion domain settings (literal values; defaults follow the AIG paper for SD1.4 + PickScore)."""

    model: str = DEFAULT_MODELS["sd"]  # hub id, local diffusers directory, or "tiny" (offline tiny pipeline)
    kind: str = "sd"  # "sd" (SD v1.x) or "sdxl"
    dtype: str = "float32"  # weights; training adds bf16 autocast on CUDA (AIG paper A.7.1)
    num_steps: int = 25
    guidance_scale: float = 7.5
    resolution: int = 512
    reward: str = "pickscore"  # a name of lib.domains.sd.multi.ALL_REWARDS, or weighted terms "pickscore:10,hpsv2:2"
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
    # Hub revisions (branch, tag or commit) by key: model (sd.model), reward, processor (PickScore's tokenizer),
    # dino, clip, hpdv2, pickapic (data files); default: the branch `main`. The commit each load resolved to is
    # recorded in the run's manifest.json; a later change is refused unless accepted (lib.domains.sd.hub).
    revisions: Mapping[str, str] = field(default_factory=dict)
    gradient_checkpointing: bool = False
    autocast: bool = True  # bf16 autocast, only ever on CUDA
    seed: int = 0  # initialisation seed of the tiny pipeline
    # The miniature SD world (lib.domains.world): with model "world", prepare() builds it (its settings `world:`,
    # lib.domains.world.config.WorldConfig) into world_dir (default <run>/models/world), and the pipeline, the
    # rewards (pickscore, hpsv2, clip), the features (world-cnn, dino, clip) and the prompt set "world" default to
    # its files.
    world: Optional[Mapping[str, Any]] = None
    world_dir: Optional[str] = None
    reward_arch: str = "ViT-H-14"  # open_clip architecture of an HPS checkpoint, or the path of its config JSON
    # ImageReFL's real images on Stable Diffusion (train.variant: imagerefl): a folder of images with metadata.jsonl or
    # metadata.csv naming each file's caption (lib.domains.sd.real.folder_images); a world run draws them itself
    real_images: Optional[str] = None

    def __post_init__(self):
        if self.model == "world":
            world_config(self.world)  # validates sd.world.<key>
        else:
            check("sd.world", self.world, self.world is None and self.world_dir is None,
                  "no world settings (sd.world, sd.world_dir) unless sd.model is 'world'")
        check("sd.kind", self.kind, self.kind in KINDS, " or ".join(KINDS))
        check("sd.dtype", self.dtype, self.dtype in DTYPES, ", ".join(DTYPES))
        check("sd.num_steps", self.num_steps, self.num_steps >= 1, "an integer >= 1")
        check("sd.guidance_scale", self.guidance_scale, self.guidance_scale >= 1, "a number >= 1 (1 = no guidance)")
        check("sd.resolution", self.resolution, self.resolution >= 8 and self.resolution % 8 == 0, "a multiple of 8")
        spec = parse_reward_spec(self.reward)  # a reward name or weighted terms 'pickscore:10,hpsv2:2'
        check("sd.reward_path", self.reward_path, self.reward_path is None or len(spec) == 1,
              "empty for a weighted sd.reward (one override path cannot serve several rewards)")
        check("sd.eval_prompts", self.eval_prompts, len(self.eval_prompts) >= 1, "at least one prompt set")
        check("sd.features", self.features, len(self.features) >= 1, "at least one feature extractor")
        for key in ("train_prompts", "coverage_prompts"):
            prompts.check_name(f"sd.{key}", getattr(self, key))
        for name in self.eval_prompts:
            prompts.check_name("sd.eval_prompts", name)
        for key, rev in dict(self.revisions).items():
            check(f"sd.revisions.{key}", rev, key in REVISION_KEYS, "a key among " + ", ".join(REVISION_KEYS))
            check(f"sd.revisions.{key}", rev, isinstance(rev, str) and re.fullmatch(r"[\w./-]{1,200}", rev) is not None,
                  "a branch, tag or commit of the hub repository")
        check("sd.seed", self.seed, isinstance(self.seed, int) and 0 <= self.seed < 2**53, "an integer in [0, 2**53)")

    def hub_repos(self) -> dict[str, str]:
        """Which revision key governs each hub repository this config may load."""
        repos = {PICKSCORE_MODEL: "reward", HPS_REPO: "reward", PICKSCORE_PROCESSOR: "processor",
                 DINO_MODEL: "dino", CLIP_MODEL: "clip", CLIP_SCORE_MODEL: "clip"}
        if not self.model.startswith("tiny") and self.model != "world" and not is_local(self.model):
            repos[self.model] = "model"
        if self.reward_path and not is_local(self.reward_path):
            repos[self.reward_path] = "reward"
        return repos

    # ---- sizes for the load-time checks of lib.config / lib.limits (lower bounds, in bytes) ----------------------
    def _set_name(self, name: str) -> str:
        return {"train": self.train_prompts, "eval": self.eval_prompts[0], "coverage": self.coverage_prompts}.get(name, name)

    def check_prompt_set(self, key: str, name: str) -> None:
        """A prompt set of sweep.prompt_sets: a split (train, eval, coverage) or a named set (prompts.check_name)."""
        if name not in ("train", "eval", "coverage"):
            prompts.check_name(key, name)

    def prompt_count(self, name: str) -> Optional[int]:
        return prompts.prompt_count(self._set_name(name))

    def sample_bytes(self) -> int:
        return 3 * self.resolution ** 2  # a uint8 RGB image

    def feature_bytes(self) -> int:
        return FEATURE_DIMS.get(self.features[0], 0) * 8  # float64 features in lib.metrics

    def step_bytes(self, training: bool) -> int:
        """The VAE decoder's last activation of one image (128 channels at full resolution; 8 for the tiny VAE),
        twice when kept for backward: a lower bound of what sampling or training one image holds at once."""
        channels = 8 if self.model.startswith("tiny") or self.model == "world" else 128
        width = 4 if self.dtype == "float32" else 2
        return channels * self.resolution ** 2 * width * (2 if training else 1)

    def model_need(self) -> None:
        return None  # the pipeline's size is not set by the params

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
