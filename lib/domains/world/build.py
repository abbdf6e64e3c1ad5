"""The cached, resumable, verified build of the whole world into one folder:

    <world>/pipeline/            StableDiffusionPipeline directory (unet, vae, text_encoder, tokenizer, scheduler)
    <world>/rewards/clip/        contrastive CLIPModel + tokenizer (CLIP score; its text tower is the text encoder)
    <world>/rewards/pickscore/   CLIPModel + tokenizer fine-tuned on annotator A's pairs (load_reward("pickscore"))
    <world>/rewards/hpsv2/       hpsv2.pt ({"state_dict"}) + world-hps.json (open_clip config; load_reward("hpsv2"))
    <world>/features/cnn/        config.json + model.safetensors (load_extractor("world-cnn"))
    <world>/features/dino/       ViTModel directory (load_extractor("dino"))
    <world>/stages/<stage>.json  per stage: config key, sha256 of every file it wrote, seconds, measurements
    <world>/world.json           the verified record of the whole build (what `verify` checks)

Stages run in phases that use both cores: the data; then [clip, cnn, dino] beside [vae]; then the UNet on
`processes` data-parallel processes; then [pickscore] beside [hpsv2]; then the check (base samples read by the mode
reader and the CNN, a grid of them). A stage whose record's key and file hashes verify is skipped, so an interrupted
build resumes at the first unfinished stage. Every file is written to a temporary name and moved into place.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from lib.domains.world import stages
from lib.domains.world.common import Timer
from lib.domains.world.config import WorldConfig, world_config
from lib.domains.world.layout import WorldPaths, finish_stage, key_of, stage_done, verifies
from lib.files import write_text

PHASES = (("data",), (("clip", "cnn", "dino"), ("vae",)), ("unet",), (("pickscore",), ("hpsv2",)), ("check",))
STAGES = ("data", "clip", "cnn", "dino", "vae", "unet", "pickscore", "hpsv2", "check")


def _run_stage(name: str, cfg: WorldConfig, paths: WorldPaths, show: bool) -> dict:
    """Run one stage unless its record verifies; returns its record."""
    key = key_of(cfg, name)
    rec = stage_done(paths, name, key)
    if rec is not None:
        return rec
    timer = Timer()
    outputs, info = getattr(stages, f"stage_{name}")(cfg, paths, show)
    return finish_stage(paths, name, key, outputs, timer.seconds, info)


def _phase_worker(rank: int, lists: list, cfg_dict: dict, root: str, show: bool) -> None:
    """torch.multiprocessing.spawn target: run the rank-th list of stages in order."""
    torch.set_num_threads(1)
    cfg, paths = world_config(cfg_dict), WorldPaths(Path(root))
    for name in lists[rank]:
        _run_stage(name, cfg, paths, show)


def verify(root: Path | str, cfg: WorldConfig) -> Optional[dict]:
    """world.json of a complete build of this config whose every file verifies, else None."""
    return verifies(Path(root), WorldPaths(Path(root)).record, key_of(cfg))


def build_world(cfg: WorldConfig | dict, root: Path | str, force: bool = False, progress: bool = True) -> dict:
    """Build (or resume, or just verify) the world of `cfg` in `root`; returns world.json's content plus
    `built` (False when everything verified and nothing ran)."""
    cfg = world_config(cfg)
    paths = WorldPaths(Path(root))
    if force and paths.root.exists():
        for name in STAGES:
            paths.stage(name).unlink(missing_ok=True)
        paths.record.unlink(missing_ok=True)
    done = verify(paths.root, cfg)
    if done is not None:
        return {**done, "built": False}
    paths.root.mkdir(parents=True, exist_ok=True)
    key = key_of(cfg)

    def done(stage: str) -> bool:
        return stage_done(paths, stage, key_of(cfg, stage)) is not None

    bar = tqdm(total=len(STAGES), desc="world build", disable=not progress)
    bar.update(sum(done(s) for s in STAGES))
    for phase in PHASES:
        todo = [p for p in phase if not all(done(s) for s in ((p,) if isinstance(p, str) else p))]
        if not todo:
            continue
        bar.set_postfix_str(" | ".join(p if isinstance(p, str) else "+".join(p) for p in phase))
        parallel = [p for p in todo if not isinstance(p, str)]
        if len(parallel) > 1 and cfg.processes > 1:
            import torch.multiprocessing as mp

            mp.spawn(_phase_worker, args=([list(p) for p in parallel], cfg.to_dict(), str(paths.root), False),
                     nprocs=len(parallel), join=True)
        for p in todo:
            for name in ((p,) if isinstance(p, str) else p):
                _run_stage(name, cfg, paths, progress)
        bar.n = sum(done(s) for s in STAGES)
        bar.refresh()
    bar.close()
    records = {s: json.loads(paths.stage(s).read_text()) for s in STAGES}
    files: dict[str, str] = {}
    for rec in records.values():
        files.update(rec["files"])
    world = {"key": key, "config": cfg.to_dict(), "files": files,
             "seconds": {s: r["seconds"] for s, r in records.items()},
             "info": {s: r["info"] for s, r in records.items()}}
    write_text(paths.record, json.dumps(world, indent=1))
    return {**world, "built": True}


def summary(world: dict) -> dict[str, Any]:
    """The numbers worth printing from world.json: stage seconds, reward accuracies, classifier accuracy, the
    base model's prompt accuracy and mode coverage."""
    info = world["info"]
    return {"seconds": world["seconds"], "pickscore": info["pickscore"].get("heldout"),
            "hpsv2": info["hpsv2"].get("heldout"), "cnn": info["cnn"], "check": info["check"]}
