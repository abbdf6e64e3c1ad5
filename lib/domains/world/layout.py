"""Where a world's components live, and the records that make its build verifiable (see lib.domains.world.build)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lib.domains.world.config import WorldConfig
from lib.files import config_hash, sha256_file, write_text

BUILD_VERSION = 1  # bump when a stage's code changes what it writes


@dataclass(frozen=True)
class WorldPaths:
    """Where each component of a world lives (module docstring)."""

    root: Path

    @property
    def pipeline(self) -> Path:
        """The StableDiffusionPipeline directory."""
        return self.root / "pipeline"

    @property
    def clip(self) -> Path:
        """The contrastive CLIPModel (CLIP score, text encoder)."""
        return self.root / "rewards" / "clip"

    @property
    def pickscore(self) -> Path:
        """The PickScore CLIPModel directory."""
        return self.root / "rewards" / "pickscore"

    @property
    def hpsv2(self) -> Path:
        """The HPS checkpoint file."""
        return self.root / "rewards" / "hpsv2" / "hpsv2.pt"

    @property
    def hps_arch(self) -> Path:
        """The open_clip model config of the HPS checkpoint."""
        return self.root / "rewards" / "hpsv2" / "world-hps.json"

    @property
    def cnn(self) -> Path:
        """The CNN feature extractor folder."""
        return self.root / "features" / "cnn"

    @property
    def dino(self) -> Path:
        """The DINO ViTModel directory."""
        return self.root / "features" / "dino"

    @property
    def work(self) -> Path:
        """Scratch files of the build (data, VAE, latents)."""
        return self.root / "work"

    @property
    def record(self) -> Path:
        """World.json."""
        return self.root / "world.json"

    def stage(self, name: str) -> Path:
        """The record of one stage."""
        return self.root / "stages" / f"{name}.json"


# Settings added after BUILD_VERSION 1, with the value that builds what version 1 built: left out of the key at that
# value, so a world built before they existed still verifies.
ADDED = {"bt_background_mix": 0.0, "position_pull": 0.0, "layout": "quadrants"}
# Settings only the preference rewards read: the other stages' keys leave them out, so a change of a reward setting
# rebuilds the rewards alone (not the data, CLIP, features, VAE, UNet or the check).
REWARD_SETTINGS = ("bt_pairs", "bt_steps", "bt_batch", "bt_lr", "bt_temperature", "bt_noise", "bt_background_mix",
                   "hps_width", "hps_steps")
REWARD_STAGES = ("pickscore", "hpsv2")
# The stages that read each such setting (annotator A's pull: only the reward trained on A's pairs).
READ_BY = {**{k: REWARD_STAGES for k in REWARD_SETTINGS}, "position_pull": ("pickscore",)}


def key_of(cfg: WorldConfig, stage: Optional[str] = None) -> str:
    """The build key of the whole world (stage None: the world config and the build version), or of one stage: the
    same with the settings that stage does not read (READ_BY) at their defaults."""
    data = cfg.to_dict()
    if stage is not None:
        defaults = WorldConfig().to_dict()
        data.update({k: defaults[k] for k, readers in READ_BY.items() if stage not in readers})
    for k, v in ADDED.items():
        if data[k] == v:
            del data[k]
    return config_hash({"world": data, "version": BUILD_VERSION})


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return out


def _hashes(root: Path, paths: list[Path]) -> dict[str, str]:
    return {str(f.relative_to(root)): sha256_file(f) for f in _files(paths)}


def verifies(root: Path, record: Path, key: str) -> Optional[dict]:
    """The record if its key matches and every file it lists has its recorded sha256, else None."""
    if not record.is_file():
        return None
    rec = json.loads(record.read_text())
    if rec.get("key") != key:
        return None
    for rel, digest in rec.get("files", {}).items():
        f = root / rel
        if not f.is_file() or sha256_file(f) != digest:
            return None
    return rec


def stage_done(paths: WorldPaths, name: str, key: str) -> Optional[dict]:
    """A stage's record when it verifies (same key, same files), else None."""
    return verifies(paths.root, paths.stage(name), key)


def finish_stage(paths: WorldPaths, name: str, key: str, outputs: list[Path], seconds: float, info: dict) -> dict:
    """Record a finished stage: its key, the sha256 of every file under `outputs`, its time and measurements."""
    rec = {"stage": name, "key": key, "files": _hashes(paths.root, outputs), "seconds": seconds, "info": info}
    write_text(paths.stage(name), json.dumps(rec, indent=1))
    return rec


def place(tmp: Path, final: Path) -> None:
    """Move a freshly written file or folder into place in one step (replacing an older one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


def scratch(paths: WorldPaths, name: str) -> Path:
    """A new empty temporary folder inside the world (same file system as the targets)."""
    paths.work.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=paths.work, prefix=f".{name}."))


