"""A built world as the Stable Diffusion domain sees it (`sd.model: world`): where its pipeline, rewards, features
and prompts are, and its ground truth (what no real-image study has): each image's true preference under both
hidden annotators, its mode, and whether the world's CNN still recognises the prompt's shape and colour."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from lib.domains.sd.features import WorldCNN
from lib.domains.sd.pipelines import load_pipeline
from lib.domains.sd.rewards import load_reward
from lib.domains.world import annotators as A
from lib.domains.world.build import build_world, verify
from lib.domains.world.config import WorldConfig, colour_of, shape_of, world_config
from lib.domains.world.layout import WorldPaths, key_of
from lib.domains.world.render import render, sample_labels
from lib.files import sha256_file

PROMPT_SETS = ("world",)  # every split of a world run uses the world's captions
REWARD_OF = {"pickscore": "pickscore", "hpsv2": "hpsv2"}  # a world reward -> the annotator that labelled its pairs
OTHER = {"pickscore": "hpsv2", "hpsv2": "pickscore"}
REAL_STREAM = 4  # the generator stream of real_images (seed 004, ImageReFL), apart from the sampler's noise


class World:
    """The world of `cfg` built in `root` (lib.domains.world.build), and what the SD domain asks of it."""

    def __init__(self, cfg: WorldConfig, root: Path | str):
        self.cfg, self.paths = cfg, WorldPaths(Path(root))
        self._cnn: Optional[WorldCNN] = None
        self._alt = {}

    def prepare(self, force: bool = False, progress: bool = True) -> dict:
        """Build the world unless a build of the same config verifies; returns world.json plus `built`."""
        return build_world(self.cfg, self.paths.root, force=force, progress=progress)

    def record(self) -> Optional[dict]:
        """world.json when the build verifies, else None."""
        return verify(self.paths.root, self.cfg)

    def load_pipeline(self, dtype: torch.dtype, device: str | torch.device) -> Any:
        """The world's StableDiffusionPipeline through the SD loader (from_pretrained + the paper's DDIM)."""
        if not (self.paths.pipeline / "model_index.json").is_file():
            raise FileNotFoundError(f"the world's pipeline {self.paths.pipeline} is not built yet: notebook 01 "
                                    "(stage_train -> domain.prepare()) builds it")
        return load_pipeline(str(self.paths.pipeline), "sd", dtype, device)

    def stamp(self) -> dict:
        """The world's build key and the sha256 of its pipeline weights (when built)."""
        pipe = self.paths.pipeline
        weights = {str(f.relative_to(pipe)): sha256_file(f) for f in sorted(pipe.rglob("*.safetensors"))} \
            if pipe.is_dir() else None
        return {"world": key_of(self.cfg), "weights": weights}

    # --- where the standard components are ---------------------------------------------------------------------
    def reward_path(self, reward: str) -> Optional[str]:
        """The world's file of a reward by name (pickscore, hpsv2, clip), or None for other rewards."""
        path = {"pickscore": self.paths.pickscore, "hpsv2": self.paths.hpsv2, "clip": self.paths.clip}.get(reward)
        return None if path is None else str(path)

    def reward_arch(self) -> str:
        """The open_clip model-config JSON of the world's HPS reward."""
        return str(self.paths.hps_arch)

    def feature_path(self, name: str) -> Optional[str]:
        """The world's weights of a feature extractor or CLIP-score model by name (world-cnn, dino, clip)."""
        return {"world-cnn": str(self.paths.cnn), "dino": str(self.paths.dino), "clip": str(self.paths.clip)}.get(name)

    def prompts(self, name: str) -> Optional[list[str]]:
        """The captions for a prompt-set name of the world ('world'), else None."""
        return list(self.cfg.prompts) if name in PROMPT_SETS else None

    def real_images(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """Images (B, 3, R, R) in [0, 1] from the world's generator (uniform modes and styles, as its training set),
        image i of caption prompts[i] from its own generator seeded with seeds[i] (ImageReFL's real x_0)."""
        captions = list(self.cfg.prompts)
        unknown = [p for p in prompts if p not in captions]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a caption of this world (e.g. {captions[0]!r})")
        images = [render(sample_labels(np.random.default_rng([int(s), REAL_STREAM]), 1, self.cfg.shapes,
                                       self.cfg.colours, np.array([captions.index(p)]), self.cfg.layout),
                         self.cfg.resolution)
                  for p, s in zip(prompts, seeds)]
        return torch.from_numpy(np.concatenate(images))  # (B, 3, R, R)

    # --- ground truth ------------------------------------------------------------------------------------------
    def cnn(self) -> WorldCNN:
        """The world's CNN (features and shape/colour heads), loaded once."""
        if self._cnn is None:
            self._cnn = WorldCNN.load(self.paths.cnn).eval().requires_grad_(False)
        return self._cnn

    def alt_reward(self, reward: str, device: str | torch.device) -> torch.nn.Module:
        """The world's other preference reward (hpsv2 for a pickscore run and vice versa), loaded once."""
        other = OTHER[reward]
        if other not in self._alt:
            self._alt[other] = load_reward(other, self.reward_path(other), device=device, arch=self.reward_arch())
        return self._alt[other]

    def truth(self, images: torch.Tensor, prompts: Sequence[str], reward: str) -> dict[str, np.ndarray]:
        """Per image (N,): true preference of the run's reward's annotator (`true_preference`) and of the other one
        (`true_preference_alt`), the other learned reward (`reward_alt`), the mode and its parts, whether the CNN
        recognises the prompt's shape and colour (`prompt_ok`); images (N, 3, H, W) in [0, 1]."""
        if reward not in REWARD_OF:
            raise ValueError(f"ground truth needs sd.reward pickscore or hpsv2 (a reward the world trained), got "
                             f"{reward!r}")
        x = images.detach().float()
        shapes = [shape_of(p) for p in prompts]
        r = A.read(x.cpu(), shapes, self.cfg.layout)
        res = int(x.shape[-1])
        with torch.no_grad():
            ls, lc = self.cnn().to(x.device).classify(x)
            alt = self.alt_reward(reward, x.device)(x, list(prompts)).float().cpu().numpy()
        ok = (ls.argmax(1).cpu().numpy() == np.array(shapes)) & \
             (lc.argmax(1).cpu().numpy() == np.array([colour_of(p) for p in prompts]))
        pull = self.cfg.position_pull
        return {"true_preference": A.utility(r, REWARD_OF[reward], res, pull),
                "true_preference_alt": A.utility(r, OTHER[reward], res, pull), "reward_alt": alt.astype(np.float64),
                "mode": r.mode, "position": r.position, "size": r.size, "background": r.background,
                "prompt_ok": ok.astype(np.float64)}


def world_of(config: Any, root: Optional[Path]) -> Optional[World]:
    """The World of an SDConfig with model "world" (None otherwise), in sd.world_dir (relative to the repository
    root) or <run>/models/world."""
    if config.model != "world":
        return None
    if config.world_dir:
        folder = Path(config.world_dir)
        folder = folder if folder.is_absolute() else Path(__file__).resolve().parents[3] / folder
    elif root is not None:
        folder = Path(root) / "models" / "world"
    else:
        raise ValueError("a world run needs its run folder (root) or sd.world_dir")
    return World(world_config(config.world), folder)
