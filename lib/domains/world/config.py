"""The miniature Stable Diffusion world's settings: `WorldConfig`, the params mapping `sd.world:` (literal values).

The world is fixed by its design (lib.domains.world.render: shapes x colours as prompts; 16 labelled modes per caption
in one of two layouts; continuous style variables) and by two hidden annotators (lib.domains.world.annotators). This
config holds what may vary between worlds: which shapes and colours make the prompts, the layout of the modes, the
component sizes and the training budgets of every component.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from lib.errors import ConfigError, check

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "yellow", "green", "blue")
LAYOUT_NAMES = ("quadrants", "halves")  # lib.domains.world.render.LAYOUTS


@dataclass(frozen=True)
class WorldConfig:
    """What `lib.domains.world.build.build_world` trains; every field is a literal params value (`sd.world.<key>`)."""

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOURS
    resolution: int = 32  # image side in pixels; the VAE downsamples by 4 (8x8 latents)
    # how the 16 modes of a caption are arranged (lib.domains.world.render.LAYOUTS): "quadrants" (4 positions x
    # 2 sizes x 2 backgrounds) or "halves" (2 positions x 2 sizes x 4 backgrounds from light to dark)
    layout: str = "quadrants"
    max_tokens: int = 16  # the tokenizer's model_max_length (captions are 3-4 tokens)
    # --- data
    dataset_size: int = 24000  # rendered training images (labels drawn uniformly), shared by every component
    seed: int = 0
    # --- VAE (diffusers AutoencoderKL)
    vae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 8
    vae_steps: int = 1000
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl: float = 1e-6  # weight of the KL term (SD's VAE: a small KL, here no GAN)
    # --- contrastive CLIP (transformers CLIPModel: the text tower is also the pipeline's text encoder)
    clip_width: int = 64
    clip_layers: int = 4  # vision layers; the text tower has 2
    clip_patch: int = 4
    clip_steps: int = 600
    clip_batch: int = 64
    clip_lr: float = 1e-3
    # --- preference rewards (Bradley-Terry on annotator-labelled pairs)
    bt_pairs: int = 12000  # training pairs per reward (a held-out set of bt_pairs // 6 is drawn apart)
    bt_steps: int = 600
    bt_batch: int = 64
    bt_lr: float = 3e-4
    bt_temperature: float = 0.3  # annotators' label noise: P(first preferred) = sigmoid((u1 - u2) / T)
    bt_noise: float = 0.05  # std of Gaussian pixel noise added to reward training images (hardening)
    # share of the pair images whose background is moved a uniform fraction of the way toward the other one
    # (hardening: the rewards see the continuum between the two backgrounds, which the annotators score)
    bt_background_mix: float = 0.0
    # annotator A's pull toward the bottom-right quadrant (utility at the quadrant's centre, falling to 0 half a side
    # away): a pull on position, which the sampler decides in its first steps (the pose of the AIG paper's Fig. 2)
    position_pull: float = 0.0
    hps_width: int = 64  # open_clip CLIP of the second reward
    hps_steps: int = 400  # its contrastive pre-training steps (then bt_steps of Bradley-Terry)
    # --- metric features
    cnn_width: int = 32  # the Inception stand-in: pooled features of width 2 * cnn_width
    cnn_steps: int = 800
    dino_width: int = 64  # transformers ViTModel (DinoDiversity embedding)
    dino_steps: int = 600
    # --- UNet (diffusers UNet2DConditionModel on the 8x8 latents, v-prediction)
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers: int = 1
    unet_steps: int = 3000
    unet_batch: int = 64  # total over the data-parallel processes
    unet_lr: float = 1e-3
    cond_dropout: float = 0.1  # caption dropout for classifier-free guidance
    processes: int = 2  # data-parallel processes of the UNet pre-training (gloo, one thread each)

    def __post_init__(self):
        check("sd.world.shapes", self.shapes, len(self.shapes) >= 1 and set(self.shapes) <= set(SHAPES)
              and len(set(self.shapes)) == len(self.shapes), "distinct names from " + ", ".join(SHAPES))
        check("sd.world.colours", self.colours, len(self.colours) >= 1 and set(self.colours) <= set(COLOURS)
              and len(set(self.colours)) == len(self.colours), "distinct names from " + ", ".join(COLOURS))
        check("sd.world.layout", self.layout, self.layout in LAYOUT_NAMES, " or ".join(LAYOUT_NAMES))
        check("sd.world.resolution", self.resolution, self.resolution in (16, 32, 64), "16, 32 or 64")
        check("sd.world.max_tokens", self.max_tokens, 8 <= self.max_tokens <= 77, "an integer in [8, 77]")
        for key in ("dataset_size", "vae_steps", "vae_batch", "clip_steps", "clip_batch", "bt_pairs", "bt_steps",
                    "bt_batch", "hps_steps", "cnn_steps", "dino_steps", "unet_steps", "unet_batch", "unet_layers",
                    "clip_layers", "clip_patch", "cnn_width", "clip_width", "hps_width", "dino_width", "latent_channels"):
            check(f"sd.world.{key}", getattr(self, key), getattr(self, key) >= 1, "an integer >= 1")
        check("sd.world.dataset_size", self.dataset_size, self.dataset_size >= 64, "an integer >= 64")
        check("sd.world.bt_pairs", self.bt_pairs, self.bt_pairs >= 12, "an integer >= 12")
        check("sd.world.clip_patch", self.clip_patch, self.resolution % self.clip_patch == 0,
              f"a divisor of the resolution {self.resolution}")
        for key in ("vae_channels", "unet_channels"):
            v = getattr(self, key)
            check(f"sd.world.{key}", v, len(v) >= 1 and all(c >= 8 and c % 8 == 0 for c in v),
                  "a list of channel counts, multiples of 8")
        check("sd.world.vae_channels", self.vae_channels, len(self.vae_channels) == 3, "three levels (factor 4)")
        for key in ("clip_width", "hps_width", "dino_width"):
            check(f"sd.world.{key}", getattr(self, key), getattr(self, key) % 16 == 0, "a multiple of 16")
        for key in ("vae_lr", "clip_lr", "bt_lr", "unet_lr", "bt_temperature"):
            check(f"sd.world.{key}", getattr(self, key), 0 < getattr(self, key) < 10, "a number in (0, 10)")
        check("sd.world.vae_kl", self.vae_kl, 0 <= self.vae_kl < 1, "in [0, 1)")
        check("sd.world.bt_noise", self.bt_noise, 0 <= self.bt_noise < 0.5, "in [0, 0.5)")
        check("sd.world.bt_background_mix", self.bt_background_mix, 0 <= self.bt_background_mix <= 1,
              "a share in [0, 1]")
        check("sd.world.position_pull", self.position_pull, 0 <= self.position_pull <= 5, "a number in [0, 5]")
        check("sd.world.cond_dropout", self.cond_dropout, 0 <= self.cond_dropout < 1, "in [0, 1)")
        check("sd.world.processes", self.processes, self.processes in (1, 2, 3, 4), "1 to 4")
        check("sd.world.unet_batch", self.unet_batch, self.unet_batch % self.processes == 0,
              f"a multiple of sd.world.processes ({self.processes})")

    @property
    def prompts(self) -> list[str]:
        """The world's captions, 'a <colour> <shape>', colour-major: the train, eval and coverage prompts."""
        return [f"a {c} {s}" for c in self.colours for s in self.shapes]

    def to_dict(self) -> dict:
        """Plain JSON-able mapping (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def shape_of(prompt: str) -> int:
    """The SHAPES index named by a caption 'a <colour> <shape>'."""
    return SHAPES.index(prompt.split()[-1])


def colour_of(prompt: str) -> int:
    """The COLOURS index named by a caption 'a <colour> <shape>'."""
    return COLOURS.index(prompt.split()[-2])


def world_config(data: Mapping[str, Any] | "WorldConfig" | None) -> WorldConfig:
    """WorldConfig from the params mapping `sd.world:` (lists become tuples; unknown keys are refused)."""
    if isinstance(data, WorldConfig):
        return data
    data = dict(data or {})
    names = {f.name: f for f in fields(WorldConfig)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key sd.world.{unknown[0]} = {data[unknown[0]]!r}; allowed keys: {', '.join(names)}")
    out = {}
    for k, v in data.items():
        default = names[k].default
        if isinstance(default, tuple):
            check(f"sd.world.{k}", v, isinstance(v, (list, tuple)), "a list")
            v = tuple(v)
        elif isinstance(default, float):
            check(f"sd.world.{k}", v, isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
            v = float(v)
        elif isinstance(default, int):
            check(f"sd.world.{k}", v, isinstance(v, int) and not isinstance(v, bool), "an integer")
        out[k] = v
    return WorldConfig(**out)
