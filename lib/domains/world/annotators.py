"""Closed-form readers of the world's images: the mode reader and the two hidden annotators.

`read(images, shapes, layout)` measures, from pixels alone, what the generator decided: the background (median of the
border ring, against the layout's luminance cuts), the object mask (pixels far from the background colour), its
position (the layout's position centre nearest the mask's centroid), its size
(the mask's area against the shape's small/large threshold), and the style quantities: saturation and brightness of
the object's interior, rim whiteness (edge band against interior), top-left shading (slope of the interior's
luminance), and an artifact level (mean |Laplacian| away from the object's edge: zero for the generator's clean
flat regions, large for textures and noise).

The annotators are closed-form utilities over these measurements with the structure of the AIG paper's regime:
a stylistic improvement reachable close to every mode (the assumption of A.5) plus a pull toward one mode, decided
early in the sampling chain, so that maximising the expected utility collapses the modes (Lemma 1):
- "pickscore" (annotator A): vivid objects (saturated, bright); pulled toward a dark background (linearly in its
  luminance) and a large object, and (`position_pull` > 0, sd.world.position_pull) toward the layout's last position.
- "hpsv2" (annotator B): soft objects (pastel, lit from the top left); pulled toward the layout's first position
  (top-left; left).
The rim is a style variable neither annotator cares about.
Both saturate at the top of the data's style ranges and penalise artifacts, so a reward model that extrapolates
beyond the data, or hacks with textures, is rewarded by the proxy and not by the annotator (Goodhart).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lib.domains.world.config import SHAPES
from lib.domains.world.render import LAYOUTS, SAT_RANGE, VAL_RANGE, Labels, mode_index, render

ANNOTATORS = ("pickscore", "hpsv2")  # annotator A trains the PickScore-style reward, B the HPSv2-style one
MASK_LO, MASK_HI = 0.10, 0.25  # colour distance to the background: soft object mask ramps between these


@dataclass
class Reading:
    """Per-image measurements (each (N,) float64 numpy unless noted)."""

    background: np.ndarray  # the layout's background index, light to dark (int)
    position: np.ndarray  # the layout's position index: the nearest position centre (int)
    size: np.ndarray  # 0 small, 1 large (int)
    area_ratio: np.ndarray  # mask area / the shape's large area
    bg_luminance: np.ndarray
    cx: np.ndarray  # centroid (pixels)
    cy: np.ndarray
    saturation: np.ndarray
    value: np.ndarray
    rim: np.ndarray
    shading: np.ndarray
    artifact: np.ndarray
    empty: np.ndarray  # True where no object was found (bool)
    layout: str = "quadrants"

    @property
    def mode(self) -> np.ndarray:
        """Mode labels (N,) of the layout (quadrants: 4 * position + 2 * size + background)."""
        return mode_index(self.position, self.size, self.background, self.layout)


def _lum(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # (N, H, W)


def _masked_mean(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (v * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-6)


@lru_cache(maxsize=8)
def _areas(res: int) -> dict[int, tuple[float, float]]:
    """Soft mask areas of each shape drawn small and large without jitter on both backgrounds (means)."""
    n = 2 * 2 * len(SHAPES)
    shape = np.repeat(np.arange(len(SHAPES)), 4)
    size, bg = np.tile([0, 0, 1, 1], len(SHAPES)), np.tile([0, 1, 0, 1], len(SHAPES))
    z = np.zeros(n, np.float32)
    lab = Labels(shape=shape, colour=np.zeros(n, int), position=np.zeros(n, int), size=size, background=bg, dx=z,
                 dy=z, dr=z, hue=z, sat=z + 0.6, val=z + 0.85, rim=z + 0.4, shading=z + 0.25,
                 tint=np.zeros((n, 3), np.float32))
    area = _mask(torch.from_numpy(render(lab, res)))[0].flatten(1).sum(1).numpy()
    return {k: (float(area[4 * k: 4 * k + 2].mean()), float(area[4 * k + 2: 4 * k + 4].mean())) for k in range(len(SHAPES))}


def _mask(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft object mask (N, H, W) and background colour (N, 3) of images (N, 3, H, W)."""
    ring = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)  # (N, 3, 4H - 4)
    bg = ring.median(dim=2).values
    d = (x - bg[:, :, None, None]).norm(dim=1)  # (N, H, W)
    return ((d - MASK_LO) / (MASK_HI - MASK_LO)).clamp(0, 1), bg


def read(images: torch.Tensor | np.ndarray, shapes: Sequence[int], layout: str = "quadrants") -> Reading:
    """Measurements of images (N, 3, H, W) in [0, 1] (or uint8) whose prompts name the shapes (N,) (SHAPES index),
    with positions and backgrounds read in the world's layout (lib.domains.world.render.LAYOUTS)."""
    lay = LAYOUTS[layout]
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x.detach().cpu()
    n, _, h, w = x.shape
    soft, bg = _mask(x)
    hard = (soft > 0.5).float()[:, None]
    levels = [hard]  # erosions by 0, 1, 2, 3 pixels
    for _ in range(3):
        levels.append(-F.max_pool2d(-levels[-1], 3, stride=1, padding=1))
    levels = [v[:, 0] for v in levels]
    inner = levels[1]  # the object without its antialiased edge
    ring = (levels[1] - levels[2]).clamp_min(0)  # one pixel inside the edge: where the rim is drawn
    deep = [(v.flatten(1).sum(1) > 0)[:, None, None] for v in levels]
    core = torch.where(deep[3], levels[3], torch.where(deep[2], levels[2], inner))  # deepest non-empty erosion
    smooth = (_mask(F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1))[0] > 0.5).float()[:, None]
    inside = -F.max_pool2d(-smooth, 5, stride=1, padding=2)  # the edge band of the noise-robust (3x3 smoothed) mask
    near_edge = F.max_pool2d((smooth - inside).clamp_min(0), 5, stride=1, padding=2)[:, 0]
    area = soft.flatten(1).sum(1)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                            indexing="ij")
    cx, cy = _masked_mean(xs[None], soft), _masked_mean(ys[None], soft)
    mx, mn = x.max(dim=1).values, x.min(dim=1).values
    sat = _masked_mean((mx - mn) / mx.clamp_min(1e-3), core)
    value = _masked_mean(mx, core)
    whiteness = _masked_mean(mn, ring) - _masked_mean(mn, core)
    lum = _lum(x)
    size = area.clamp_min(1.0).sqrt()[:, None, None]  # the slope is per object size, not per pixel
    diag = -((xs[None] - cx[:, None, None]) + (ys[None] - cy[:, None, None])) / size  # + toward top-left
    dl, dd = lum - _masked_mean(lum, inner)[:, None, None], diag - _masked_mean(diag, inner)[:, None, None]
    slope = _masked_mean(dl * dd, inner) / _masked_mean(dd * dd, inner).clamp_min(1e-6)
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    lap = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), lap, groups=3).abs().mean(1)  # (N, H, W)
    away = 1 - near_edge
    artifact = torch.where(away.flatten(1).sum(1) > 0.1 * h * w, _masked_mean(lap, away), lap.flatten(1).mean(1))
    areas = _areas(h)
    small = torch.tensor([areas[int(s)][0] for s in shapes])
    large = torch.tensor([areas[int(s)][1] for s in shapes])
    empty = area < 0.25 * small
    bg_lum = _lum(bg[:, :, None, None])[:, 0, 0]
    centres = torch.tensor(lay.centres, dtype=torch.float32)  # (P, 2) fractions of the side
    dist = torch.hypot(cx[:, None] / w - centres[None, :, 0], cy[:, None] / h - centres[None, :, 1])  # (N, P)
    out = dict(background=sum((bg_lum < c).long() for c in lay.bg_cuts), position=dist.argmin(1),
               size=(area >= (small * large).sqrt()).long(),
               area_ratio=area / large, bg_luminance=bg_lum, cx=cx, cy=cy,
               saturation=torch.where(empty, 0.0, sat), value=torch.where(empty, 0.0, value),
               rim=torch.where(empty, 0.0, whiteness), shading=torch.where(empty, 0.0, slope), artifact=artifact,
               empty=empty)
    return Reading(**{k: v.numpy().astype(np.float64) if v.dtype.is_floating_point else v.numpy()
                      for k, v in out.items()}, layout=layout)


def _near(r: Reading, centre: tuple[float, float], res: int) -> np.ndarray:
    """1 at a position's centre (x, y) (fractions of the side), falling linearly to 0 half a side away."""
    dist = np.hypot(r.cx - centre[0] * res, r.cy - centre[1] * res) / res
    return np.clip(1 - 2 * dist, 0, 1)


def utility(r: Reading, annotator: str, res: int, position_pull: float = 0.0) -> np.ndarray:
    """The annotator's true preference (N,) of measured images (higher is better; see the module docstring);
    `position_pull` is annotator A's weight on the layout's last position (the bottom-right quadrant; right of
    centre in "halves") (WorldConfig.position_pull); annotator B is pulled toward the first (top-left; left)."""
    centres = LAYOUTS[r.layout].centres
    sat = np.clip(r.saturation, SAT_RANGE[0], SAT_RANGE[1])  # the style terms saturate at the data's range
    value = np.clip(r.value, 0, VAL_RANGE[1])
    shade = np.clip(r.shading, 0, 0.3)
    penalty = 12.0 * np.clip(r.artifact - 0.04, 0, None) + 2.0 * r.empty
    if annotator == "pickscore":
        pull = 0.9 * (1 - r.bg_luminance) + 0.5 * np.clip(r.area_ratio, 0, 1) + position_pull * _near(r, centres[-1], res)
        return 4.0 * sat + 3.0 * value + pull - penalty
    if annotator == "hpsv2":
        return 5.0 * shade + 2.5 * (SAT_RANGE[1] - sat) + 0.8 * _near(r, centres[0], res) - penalty
    raise ValueError(f"unknown annotator {annotator!r}; allowed: {', '.join(ANNOTATORS)}")
