"""The world's metric features, learned here and loaded by the SD domain's own feature loaders:
- `world-cnn` (the Inception stand-in): a small CNN trained to classify shape and colour (the world's "classes",
  as Inception was trained on ImageNet classes, not on modes); its pooled features feed FID / Precision / Recall /
  SCD / LSCD, and its heads tell whether an image still shows the prompt's shape and colour.
- the DINO stand-in: a transformers ViTModel trained self-supervised (SimCLR views: shifts, noise, brightness), read
  by the `dino` loader (CLS token) for DinoDiversity.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lib.domains.sd.features import DinoCLS, WorldCNN
from lib.domains.world.common import augment, batch_indices, checked_step, optimiser, progress, seeded
from lib.domains.world.config import COLOURS, SHAPES, WorldConfig


def train_cnn(cfg: WorldConfig, images: np.ndarray, shape: np.ndarray, colour: np.ndarray,
              show: bool = True) -> tuple[WorldCNN, list[float]]:
    """Train the CNN on images (N, 3, H, W) with SHAPES / COLOURS indices (N,) under noise and shift augmentation."""
    with seeded(cfg.seed + 61):
        net = WorldCNN(cfg.cnn_width, len(SHAPES), len(COLOURS), cfg.resolution)
    opt, sched = optimiser(net.parameters(), 2e-3, cfg.cnn_steps, weight_decay=1e-4)
    rng = np.random.default_rng(cfg.seed + 62)
    gen = torch.Generator().manual_seed(cfg.seed + 63)
    losses = []
    bar = progress(cfg.cnn_steps, "world CNN", show)
    for step in range(cfg.cnn_steps):
        idx = batch_indices(rng, len(images), 64)
        x = augment(torch.from_numpy(images[idx]), gen, noise=0.1, shift=2)
        ls, lc = net.classify(x)
        loss = F.cross_entropy(ls, torch.from_numpy(shape[idx]).long()) + \
            F.cross_entropy(lc, torch.from_numpy(colour[idx]).long())
        losses.append(checked_step("CNN", step, loss, opt, sched, list(net.parameters())))
        bar.update()
    bar.close()
    return net.eval().requires_grad_(False), losses


def classify(net: WorldCNN, images: np.ndarray | torch.Tensor, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Predicted SHAPES and COLOURS indices (N,) of images (N, 3, H, W) in [0, 1] (or uint8)."""
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    s, c = [], []
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            ls, lc = net.classify(x[lo: lo + batch])
            s.append(ls.argmax(1).numpy())
            c.append(lc.argmax(1).numpy())
    return np.concatenate(s), np.concatenate(c)


def new_dino(cfg: WorldConfig) -> torch.nn.Module:
    """A fresh transformers ViTModel (no pooler) on cfg.resolution px with patches of cfg.clip_patch."""
    from transformers import ViTConfig, ViTModel

    w = cfg.dino_width
    with seeded(cfg.seed + 71):
        return ViTModel(ViTConfig(hidden_size=w, num_hidden_layers=4, num_attention_heads=w // 16,
                                  intermediate_size=2 * w, image_size=cfg.resolution, patch_size=cfg.clip_patch),
                        add_pooling_layer=False)


def _views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A SimCLR view: shift up to 3 px, noise up to 0.08, brightness x [0.85, 1.15]."""
    v = augment(x, gen, noise=0.08, shift=3)
    return (v * (0.85 + 0.3 * torch.rand(len(v), 1, 1, 1, generator=gen))).clamp(0, 1)


def train_dino(cfg: WorldConfig, images: np.ndarray, show: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """SimCLR (NT-Xent, temperature 0.2) on the ViT's CLS token through a projection head that is then dropped."""
    vit = new_dino(cfg)
    enc = DinoCLS(vit).train()
    w = cfg.dino_width
    with seeded(cfg.seed + 72):
        head = torch.nn.Sequential(torch.nn.Linear(w, w), torch.nn.SiLU(), torch.nn.Linear(w, w))
    params = list(vit.parameters()) + list(head.parameters())
    opt, sched = optimiser(params, 1e-3, cfg.dino_steps, weight_decay=1e-4)
    rng = np.random.default_rng(cfg.seed + 73)
    gen = torch.Generator().manual_seed(cfg.seed + 74)
    losses = []
    bar = progress(cfg.dino_steps, "world DINO", show)
    for step in range(cfg.dino_steps):
        x = torch.from_numpy(images[batch_indices(rng, len(images), 64)])
        z = F.normalize(head(enc(torch.cat([_views(x, gen), _views(x, gen)]))), dim=-1)  # (2B, w)
        sim = z @ z.T / 0.2
        sim.fill_diagonal_(-1e9)
        n = len(x)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        losses.append(checked_step("DINO", step, F.cross_entropy(sim, target), opt, sched, params))
        bar.update()
    bar.close()
    return vit.eval().requires_grad_(False), losses
