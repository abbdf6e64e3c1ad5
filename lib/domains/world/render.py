"""The world's procedural generator: captioned RGB images whose every mode is known.

A caption is 'a <colour> <shape>'. Within a caption an image has one of 16 labelled modes, arranged by the
world's layout (`sd.world.layout`, LAYOUTS):
- "quadrants": mode = 4 * position + 2 * size + background, position in {top-left, top-right, bottom-left,
  bottom-right} (the object's quadrant), size in {small, large}, background in {light, dark};
- "halves": mode = 8 * position + 4 * size + background, position in {left, right}, size in {small, large},
  background in {light, mid-light, mid-dark, dark};
and continuous style variables that no caption names:
saturation and brightness of the object's colour, a white rim along its edge (`rim`), a top-left light
(`shading`), small jitters of position, radius, hue and background tint. Shapes are drawn from signed distance
functions with a one-pixel antialiased edge, so the images are clean and the mode reader
(lib.domains.world.annotators) can read every label back from the pixels.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from lib.domains.world.config import COLOURS, LAYOUT_NAMES, SHAPES, WorldConfig

HUES = {"red": 0.0, "yellow": 52.0, "green": 125.0, "blue": 220.0}  # degrees
LIGHT, DARK = (0.74, 0.72, 0.67), (0.13, 0.14, 0.20)  # the lightest and darkest backgrounds (RGB)
SIZES = ("small", "large")
RADII = (5.5, 8.0)  # small, large circumradius in pixels at 32 px
RIM_WIDTH = 1.6  # pixels at 32 px
SAT_RANGE, VAL_RANGE, RIM_RANGE, SHADE_RANGE = (0.45, 0.85), (0.72, 0.95), (0.0, 0.8), (0.0, 0.5)


def _luminance(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


@dataclass(frozen=True)
class Layout:
    """How a world arranges the 16 modes of a caption: object positions x 2 sizes x background colours, with
    mode = (position * 2 + size) * B + background for B backgrounds."""

    name: str
    centres: tuple[tuple[float, float], ...]  # (x, y) of each position as fractions of the side
    position_names: tuple[str, ...]
    backgrounds: tuple[tuple[float, float, float], ...]  # RGB, light to dark
    background_names: tuple[str, ...]
    bg_cuts: tuple[float, ...]  # luminance thresholds (descending): background = how many lie above the border's

    @property
    def num_modes(self) -> int:
        """Modes per caption."""
        return len(self.centres) * len(SIZES) * len(self.backgrounds)

    @property
    def bg_rgb(self) -> np.ndarray:
        """The background colours (B, 3) float32."""
        return np.array(self.backgrounds, dtype=np.float32)

    def mode_index(self, position: ArrayLike, size: ArrayLike, background: ArrayLike) -> np.ndarray:
        """The mode label (position * 2 + size) * B + background (arrays or ints)."""
        return (np.asarray(position) * len(SIZES) + np.asarray(size)) * len(self.backgrounds) + np.asarray(background)

    def mode_parts(self, mode: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position, size, background) of mode labels (N,)."""
        mode, nb = np.asarray(mode), len(self.backgrounds)
        return mode // (len(SIZES) * nb), (mode // nb) % len(SIZES), mode % nb

    def mode_name(self, mode: int) -> str:
        """'top-left large dark' for a mode label."""
        p, z, b = (int(v) for v in self.mode_parts(mode))
        return f"{self.position_names[p]} {SIZES[z]} {self.background_names[b]}"


def _levels(n: int) -> tuple[tuple[float, float, float], ...]:
    """n backgrounds evenly spaced from LIGHT to DARK."""
    return tuple(tuple(float(a + (b - a) * i / (n - 1)) for a, b in zip(LIGHT, DARK)) for i in range(n))


def _cuts(backgrounds) -> tuple[float, ...]:
    """Luminance thresholds halfway between successive backgrounds."""
    lum = [_luminance(c) for c in backgrounds]
    return tuple((a + b) / 2 for a, b in zip(lum, lum[1:]))


# "quadrants": the object in one of 4 quadrants, on a light or a dark background (the first world, BUILD_VERSION 1;
# its background threshold stays the 0.5 it was read with). "halves": the object left or right of the centre, on one
# of 4 backgrounds from light to dark: the background (decided in the first steps of the chain) carries 4 of the
# world's 16 modes, so a collapse of the background alone leaves at most a quarter of them.
LAYOUTS = {
    "quadrants": Layout("quadrants", ((0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)),
                        ("top-left", "top-right", "bottom-left", "bottom-right"), (LIGHT, DARK), ("light", "dark"),
                        (0.5,)),
    "halves": Layout("halves", ((0.28, 0.5), (0.72, 0.5)), ("left", "right"), _levels(4),
                     ("light", "mid-light", "mid-dark", "dark"), _cuts(_levels(4))),
}
assert tuple(LAYOUTS) == LAYOUT_NAMES and all(v.num_modes == 16 for v in LAYOUTS.values())
NUM_MODES = 16  # modes per caption in every layout


def mode_index(position: ArrayLike, size: ArrayLike, background: ArrayLike, layout: str = "quadrants") -> np.ndarray:
    """The mode label of a layout (Layout.mode_index; quadrants: 4 * position + 2 * size + background)."""
    return LAYOUTS[layout].mode_index(position, size, background)


def mode_parts(mode: ArrayLike, layout: str = "quadrants") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position, size, background) of mode labels (N,) of a layout."""
    return LAYOUTS[layout].mode_parts(mode)


def mode_name(mode: int, layout: str = "quadrants") -> str:
    """'top-left large dark' for a mode label of a layout."""
    return LAYOUTS[layout].mode_name(mode)


@dataclass
class Labels:
    """Everything that decides an image, one entry per image (N,): the prompt's shape and colour (indices into
    SHAPES / COLOURS), the mode parts, and the continuous nuisance and style variables."""

    shape: np.ndarray
    colour: np.ndarray
    position: np.ndarray
    size: np.ndarray
    background: np.ndarray
    dx: np.ndarray  # position jitter (pixels at 32 px)
    dy: np.ndarray
    dr: np.ndarray  # radius jitter (pixels at 32 px)
    hue: np.ndarray  # hue jitter (degrees)
    sat: np.ndarray
    val: np.ndarray
    rim: np.ndarray  # whiteness of the rim, 0 = none
    shading: np.ndarray  # strength of the top-left light, 0 = flat
    tint: np.ndarray  # background tint (N, 3)
    layout: str = "quadrants"  # the LAYOUTS entry that places positions and colours backgrounds

    def __len__(self) -> int:
        return len(self.shape)

    @property
    def mode(self) -> np.ndarray:
        """Mode labels (N,) in [0, 16)."""
        return mode_index(self.position, self.size, self.background, self.layout)

    def take(self, idx: ArrayLike | slice) -> "Labels":
        """The labels of a subset of images."""
        return Labels(**{f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "layout"},
                      layout=self.layout)


def sample_labels(rng: np.random.Generator, n: int, shapes: Sequence[str] = SHAPES,
                  colours: Sequence[str] = COLOURS,
                  prompt: Optional[np.ndarray] = None, layout: str = "quadrants") -> Labels:
    """n random label sets of a layout (modes uniform, styles uniform in their data ranges); `prompt` (N,) fixes the
    caption index (colour-major over the given shapes and colours, as WorldConfig.prompts)."""
    lay = LAYOUTS[layout]
    shape_ids = np.array([SHAPES.index(s) for s in shapes])
    colour_ids = np.array([COLOURS.index(c) for c in colours])
    if prompt is None:
        prompt = rng.integers(len(shapes) * len(colours), size=n)
    prompt = np.asarray(prompt)
    u = lambda lo_hi: rng.uniform(*lo_hi, size=n).astype(np.float32)  # noqa: E731
    return Labels(shape=shape_ids[prompt % len(shapes)], colour=colour_ids[prompt // len(shapes)],
                  position=rng.integers(len(lay.centres), size=n), size=rng.integers(len(SIZES), size=n),
                  background=rng.integers(len(lay.backgrounds), size=n),
                  dx=u((-1.5, 1.5)), dy=u((-1.5, 1.5)), dr=u((-0.4, 0.4)), hue=u((-8, 8)), sat=u(SAT_RANGE),
                  val=u(VAL_RANGE), rim=u(RIM_RANGE), shading=u(SHADE_RANGE),
                  tint=rng.uniform(-0.03, 0.03, size=(n, 3)).astype(np.float32), layout=layout)


def _box(px, py, bx, by):
    qx, qy = np.abs(px) - bx, np.abs(py) - by
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _triangle(px, py_up, r):
    """Signed distance to an equilateral triangle, apex up, half side r, centred on its centroid (I. Quilez)."""
    k = np.sqrt(3.0)
    x = np.abs(px) - r
    y = py_up + r / k
    flip = x + k * y > 0
    x, y = np.where(flip, (x - k * y) / 2, x), np.where(flip, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0)
    return -np.hypot(x, y) * np.sign(y)


def shape_sdf(shape: np.ndarray, px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels; < 0 inside) of each image's shape: shape (N,), px/py (N, H, W) from the centre,
    r (N, 1, 1) the circumradius."""
    out = np.empty_like(px)
    for k, name in enumerate(SHAPES):
        sel = shape == k
        if not sel.any():
            continue
        x, y, rr = px[sel], py[sel], r[sel]
        if name == "circle":
            d = np.hypot(x, y) - rr
        elif name == "square":
            d = _box(x, y, 0.8 * rr, 0.8 * rr)
        elif name == "triangle":
            d = _triangle(x, -(y - 0.12 * rr), 1.15 * rr * np.sqrt(3) / 2)
        else:  # cross
            d = np.minimum(_box(x, y, 0.95 * rr, 0.34 * rr), _box(x, y, 0.34 * rr, 0.95 * rr))
        out[sel] = d
    return out


def hsv_to_rgb(h_deg: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) hue in degrees, saturation, value -> (N, 3) RGB."""
    return np.array([colorsys.hsv_to_rgb((h % 360) / 360, si, vi) for h, si, vi in zip(h_deg, s, v)],
                    dtype=np.float32).reshape(-1, 3)


def object_colour(labels: Labels) -> np.ndarray:
    """The flat RGB colour (N, 3) of each image's object."""
    hue = np.array([HUES[COLOURS[c]] for c in labels.colour], dtype=np.float32) + labels.hue
    return hsv_to_rgb(hue, labels.sat, labels.val)


def geometry(labels: Labels, res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object centres cx, cy and circumradii r (N,) in pixels at resolution `res`."""
    k = res / 32.0
    centres = np.array(LAYOUTS[labels.layout].centres)  # (P, 2)
    cx = centres[labels.position, 0] * res + labels.dx * k
    cy = centres[labels.position, 1] * res + labels.dy * k
    r = (np.array(RADII)[labels.size] + labels.dr) * k
    return cx.astype(np.float32), cy.astype(np.float32), r.astype(np.float32)


def render(labels: Labels, res: int = 32, chunk: int = 2048) -> np.ndarray:
    """Images (N, 3, res, res) float32 in [0, 1] of the given labels."""
    out = np.empty((len(labels), 3, res, res), dtype=np.float32)
    grid = np.arange(res, dtype=np.float32) + 0.5
    for lo in range(0, len(labels), chunk):
        lab = labels.take(slice(lo, lo + chunk))
        cx, cy, r = geometry(lab, res)
        px = grid[None, None, :] - cx[:, None, None]  # (n, 1, W)
        py = grid[None, :, None] - cy[:, None, None]  # (n, H, 1)
        px, py = np.broadcast_arrays(px, py)
        rr = r[:, None, None]
        sdf = shape_sdf(lab.shape, px, py, rr)  # (n, H, W)
        alpha = np.clip(0.5 - sdf, 0, 1)
        rim_w = RIM_WIDTH * res / 32.0
        rim = np.clip(sdf + rim_w + 0.5, 0, 1)  # 1 within rim_w of the edge, 0 deeper inside
        light = 1 + lab.shading[:, None, None] * np.clip(-(px + py) / (rr * np.sqrt(2)), -1, 1)
        base = object_colour(lab)[:, :, None, None]  # (n, 3, 1, 1)
        shaded = np.clip(base * light[:, None], 0, 1)
        rim_col = shaded * (1 - lab.rim[:, None, None, None]) + lab.rim[:, None, None, None]
        fill = shaded * (1 - rim[:, None]) + rim_col * rim[:, None]
        bg = np.clip(LAYOUTS[lab.layout].bg_rgb[lab.background] + lab.tint, 0, 1)[:, :, None, None]
        out[lo: lo + len(lab)] = bg * (1 - alpha[:, None]) + fill * alpha[:, None]
    return out


@dataclass
class Dataset:
    """A rendered training set: images (N, 3, R, R) float32, prompt indices (N,), labels."""

    images: np.ndarray
    prompt: np.ndarray
    labels: Labels

    def __len__(self) -> int:
        return len(self.prompt)


def make_dataset(cfg: WorldConfig, n: Optional[int] = None, seed: Optional[int] = None) -> Dataset:
    """The world's training images: n (default cfg.dataset_size) uniform draws over prompts, modes and styles."""
    n = cfg.dataset_size if n is None else n
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    prompt = rng.integers(len(cfg.prompts), size=n)
    labels = sample_labels(rng, n, cfg.shapes, cfg.colours, prompt, cfg.layout)
    return Dataset(render(labels, cfg.resolution), prompt, labels)
