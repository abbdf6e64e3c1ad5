"""The world's second preference reward, trained as HPSv2 was: an open_clip CLIP pre-trained contrastively, then
fine-tuned on pairs of the second annotator; saved as an HPS checkpoint ({"state_dict": ...}, open_clip key names)
next to the open_clip model-config JSON that `lib.domains.sd.rewards.load_hps(arch=...)` registers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lib.domains.sd.rewards import clip_preprocess
from lib.domains.world.common import seeded
from lib.domains.world.config import WorldConfig
from lib.domains.world.pairs import Pairs
from lib.domains.world.train_clip import bradley_terry, contrastive

ARCH = "world-hps"  # the open_clip architecture name (the config file's stem)


def hps_model_config(cfg: WorldConfig) -> dict:
    """open_clip model config of the world's HPS CLIP (ViT on cfg.resolution px, text context cfg.max_tokens)."""
    w = cfg.hps_width
    return {"embed_dim": w,
            "vision_cfg": {"image_size": cfg.resolution, "layers": cfg.clip_layers, "width": w, "head_width": 16,
                           "patch_size": cfg.clip_patch},
            "text_cfg": {"context_length": cfg.max_tokens, "vocab_size": 49408, "width": w, "heads": w // 16,
                         "layers": 2}}


def new_open_clip(cfg: WorldConfig) -> torch.nn.Module:
    """A fresh open_clip.CLIP of hps_model_config."""
    import open_clip

    with seeded(cfg.seed + 51):
        return open_clip.CLIP(**hps_model_config(cfg))


def open_clip_ids(cfg: WorldConfig) -> torch.Tensor:
    """open_clip token ids (P, max_tokens) of the world's captions (its SimpleTokenizer, as get_tokenizer gives)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=cfg.max_tokens)(cfg.prompts)


def encoders(model: torch.nn.Module) -> tuple[Callable, Callable, torch.Tensor]:
    """(encode_image(x in [0, 1]) -> (B, D), encode_text(ids) -> (P, D), log logit scale) of an open_clip CLIP,
    with the preprocessing of the HPS reward."""
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return (lambda x: model.encode_image(clip_preprocess(x, size)), lambda ids: model.encode_text(ids),
            model.logit_scale)


def hps_fn(model: torch.nn.Module) -> Callable:
    """score(x, ids) = cos(image, text): HPSv2's formula (lib.domains.sd.rewards.HPS)."""
    image, text, _ = encoders(model)
    return lambda x, ids: F.cosine_similarity(image(x).float(), text(ids).float(), dim=-1)


def train_hps(cfg: WorldConfig, images: np.ndarray, prompt: np.ndarray, pairs: Pairs,
              show: bool = True) -> tuple[torch.nn.Module, dict]:
    """Contrastive pre-training (cfg.hps_steps) then Bradley-Terry (cfg.bt_steps); returns the model and losses."""
    model = new_open_clip(cfg).train()
    ids = open_clip_ids(cfg)
    image, text, scale = encoders(model)
    c = contrastive("HPS CLIP", cfg, image, text, scale, model.parameters(), images, prompt, ids, cfg.hps_steps,
                    show)
    b = bradley_terry("HPSv2", cfg, hps_fn(model), model.parameters(), pairs, ids,
                      lambda d: scale.exp().clamp(max=100) * d, show)
    return model.eval().requires_grad_(False), {"contrastive": c, "bradley_terry": b}


def save_hps(model: torch.nn.Module, cfg: WorldConfig, out_dir: Path) -> tuple[Path, Path]:
    """Write <out_dir>/hpsv2.pt ({"state_dict": ...}) and <out_dir>/world-hps.json; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt, arch = out_dir / "hpsv2.pt", out_dir / f"{ARCH}.json"
    torch.save({"state_dict": {k: v.contiguous() for k, v in model.state_dict().items()}}, ckpt)
    arch.write_text(json.dumps(hps_model_config(cfg), indent=1))
    return ckpt, arch
