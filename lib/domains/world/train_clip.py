"""The world's CLIP models, trained as the real ones were: contrastively on captioned images, then (for the
preference rewards) fine-tuned by Bradley-Terry on annotator-labelled pairs (PickScore: a transformers CLIPModel,
score logit_scale * cos; HPSv2: an open_clip CLIP, score cos; see lib.domains.world.train_hps for the latter).

The contrastive CLIP's text tower is also the pipeline's text encoder (as SD1.x uses CLIP's), and the contrastive
CLIP is the model of the CLIP score. The loops here take the model's encoders as functions, so the same code trains
both the transformers and the open_clip models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from lib.domains.sd.rewards import clip_preprocess, clip_tokenizer_dir, pooled
from lib.domains.world.common import augment, batch_indices, checked_step, optimiser, progress, seeded
from lib.domains.world.config import WorldConfig
from lib.domains.world.pairs import Pairs

IDS = dict(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def world_tokenizer(cfg: WorldConfig) -> Any:
    """CLIPTokenizer over open_clip's bundled BPE vocabulary with model_max_length = cfg.max_tokens."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()), model_max_length=cfg.max_tokens)


def token_ids(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Padded token ids (P, L) exactly as StableDiffusionPipeline.encode_prompt makes them."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def new_clip(cfg: WorldConfig, seed_offset: int = 0) -> torch.nn.Module:
    """A fresh transformers CLIPModel for the world: ViT on cfg.resolution px, 2-layer text tower of max_tokens."""
    from transformers import CLIPConfig, CLIPModel

    w = cfg.clip_width
    text = dict(hidden_size=w, intermediate_size=2 * w, num_attention_heads=w // 16, num_hidden_layers=2,
                max_position_embeddings=cfg.max_tokens, **IDS)
    vision = dict(hidden_size=w, intermediate_size=2 * w, num_attention_heads=w // 16,
                  num_hidden_layers=cfg.clip_layers, image_size=cfg.resolution, patch_size=cfg.clip_patch)
    with seeded(cfg.seed + 21 + seed_offset):
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=w))


def text_encoder_of(clip: torch.nn.Module) -> torch.nn.Module:
    """The CLIP's text tower as a stand-alone transformers CLIPTextModel (the pipeline's text encoder)."""
    from transformers import CLIPTextModel

    enc = CLIPTextModel(clip.config.text_config)
    prefixed = any(k.startswith("text_model.") for k in enc.state_dict())  # the key layout differs by version
    state = {(k if prefixed else k.removeprefix("text_model.")): v for k, v in clip.state_dict().items()
             if k.startswith("text_model.")}
    enc.load_state_dict(state, strict=True)
    return enc.eval().requires_grad_(False)


def hf_encoders(clip: torch.nn.Module) -> tuple[Callable, Callable, torch.Tensor]:
    """(encode_image(x in [0, 1]) -> (B, D), encode_text(ids) -> (P, D), log logit scale) of a CLIPModel, with
    the differentiable preprocessing the PickScore reward uses."""
    size = int(clip.config.vision_config.image_size)
    image = lambda x: pooled(clip.get_image_features(pixel_values=clip_preprocess(x, size)))  # noqa: E731
    text = lambda ids: pooled(clip.get_text_features(input_ids=ids))  # noqa: E731
    return image, text, clip.logit_scale


def contrastive(name: str, cfg: WorldConfig, encode_image: Callable, encode_text: Callable, scale: torch.Tensor,
                params: Iterable[torch.nn.Parameter], images: np.ndarray, prompt: np.ndarray, ids: torch.Tensor,
                steps: int, show: bool = True) -> list[float]:
    """CLIP's symmetric contrastive loss over batches of captioned images (N, 3, H, W) with caption indices (N,);
    every caption (ids (P, L)) is a candidate, images sharing a caption are all positives of its text."""
    params = list(params)
    opt, sched = optimiser(params, cfg.clip_lr, steps)
    rng = np.random.default_rng(cfg.seed + 31)
    gen = torch.Generator().manual_seed(cfg.seed + 32)
    losses = []
    bar = progress(steps, f"world {name} (contrastive)", show)
    for step in range(steps):
        idx = batch_indices(rng, len(images), cfg.clip_batch)
        x = augment(torch.from_numpy(images[idx]), gen, noise=0.05)
        cap = torch.from_numpy(prompt[idx]).long()
        img = F.normalize(encode_image(x).float(), dim=-1)  # (B, D)
        txt = F.normalize(encode_text(ids).float(), dim=-1)  # (P, D)
        logits = scale.exp().clamp(max=100) * img @ txt.T  # (B, P)
        loss_i = F.cross_entropy(logits, cap)
        present = torch.unique(cap)
        logp = logits.T[present].log_softmax(dim=1)  # (P', B) over images
        pos = (cap[None, :] == present[:, None]).float()
        loss_t = -((logp * pos).sum(1) / pos.sum(1)).mean()
        losses.append(checked_step(name, step, (loss_i + loss_t) / 2, opt, sched, params))
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def bradley_terry(name: str, cfg: WorldConfig, score: Callable, params: Iterable[torch.nn.Parameter],
                  pairs: Pairs, ids: torch.Tensor,
                  logit: Callable[[torch.Tensor], torch.Tensor], show: bool = True) -> list[float]:
    """Fine-tune on preference pairs: -log sigmoid(logit(r_a - r_b)) for the annotator's choice (PickScore's
    softmax over the pair); `score(x, ids) -> (B,)` is the reward, `logit` maps its difference to the BT logit."""
    params = list(params)
    opt, sched = optimiser(params, cfg.bt_lr, cfg.bt_steps, weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed + 41)
    gen = torch.Generator().manual_seed(cfg.seed + 42)
    losses = []
    bar = progress(cfg.bt_steps, f"world {name} (Bradley-Terry)", show)
    for step in range(cfg.bt_steps):
        idx = batch_indices(rng, len(pairs), cfg.bt_batch)
        x = torch.from_numpy(np.concatenate([pairs.a[idx], pairs.b[idx]]))
        x = augment(x, gen, noise=cfg.bt_noise)
        cap = ids[np.concatenate([pairs.prompt[idx]] * 2)]
        r = score(x, cap)  # (2B,)
        diff = logit(r[: len(idx)] - r[len(idx):])
        target = torch.from_numpy(pairs.first[idx]).float()
        loss = F.binary_cross_entropy_with_logits(diff, target)
        losses.append(checked_step(name, step, loss, opt, sched, params))
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def scores(score: Callable, images: np.ndarray, prompt: np.ndarray, ids: torch.Tensor,
           batch: int = 256) -> np.ndarray:
    """Reward values (N,) of images with caption indices, without gradients."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch):
            out.append(score(torch.from_numpy(images[lo: lo + batch]), ids[prompt[lo: lo + batch]]).float().numpy())
    return np.concatenate(out)


def pickscore_fn(clip: torch.nn.Module) -> Callable:
    """score(x, ids) = logit_scale.exp() * cos(image, text): PickScore's formula (lib.domains.sd.rewards)."""
    image, text, scale = hf_encoders(clip)
    return lambda x, ids: scale.exp() * F.cosine_similarity(image(x).float(), text(ids).float(), dim=-1)


def save_clip(clip: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    """A transformers CLIPModel directory with its tokenizer: what load_pickscore / load_clip_score read."""
    out.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def prompt_accuracy_clip(clip: torch.nn.Module, images: np.ndarray, prompt: np.ndarray, ids: torch.Tensor) -> float:
    """Zero-shot caption accuracy of a CLIP on captioned images (argmax cosine over every caption)."""
    image, text, _ = hf_encoders(clip)
    with torch.no_grad():
        txt = F.normalize(text(ids).float(), dim=-1)
        hits = []
        for lo in range(0, len(images), 256):
            img = F.normalize(image(torch.from_numpy(images[lo: lo + 256])).float(), dim=-1)
            hits.append((img @ txt.T).argmax(1).numpy() == prompt[lo: lo + 256])
    return float(np.concatenate(hits).mean())
