"""Small run folders for the user-study tests, written through lib.store as notebook 02 writes them.

Images are drawn procedurally (a coloured shape on a background per prompt). The first pixel of every image is a
tag that the tests read back from the served PNG: red = the method's code, green/blue = the seed (low, high
byte). The 'aig'-like methods vary the shape with the seed (diverse); 'draft' draws nearly the same picture for
every seed (collapsed), so the screenshot shows the difference the study asks about.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lib.methods import Method
from lib.store import mark_done, write_samples

PROMPTS = ("a red circle on a white background", "a blue square in the sky", "a green tree on a hill")
METHODS = (Method("aig", "power:2"), Method("draft"), Method("base"))
CODES = {"aig__power-2": 10, "draft__-": 20, "base__-": 30}  # red value of the tag pixel


def draw(method: Method, prompt: int, seed: int, size: int = 32) -> np.ndarray:
    """One uint8 (3, size, size) image: background by prompt, a shape whose colour and place vary with the seed
    (little for draft), and the tag pixel (method code, seed low byte, seed high byte)."""
    rng = np.random.default_rng(seed if method.method != "draft" else 1000 + seed % 2)
    bg = np.array([[245, 245, 245], [150, 200, 250], [200, 230, 170]][prompt % 3], dtype=np.uint8)
    img = np.broadcast_to(bg[:, None, None], (3, size, size)).copy()
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
    r = int(rng.integers(size // 8, size // 4 + 1))
    color = rng.integers(0, 200, size=3) if method.method != "draft" else np.array([220, 40, 40])
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r if prompt != 1 else (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    img[:, mask] = color[:, None]
    img[:, 0, 0] = (CODES.get(method.key, 99), seed % 256, seed // 256)
    return img


def tag(png_rgb: np.ndarray) -> tuple[int, int]:
    """(method code, seed) from a served image as an (H, W, 3) array."""
    r, g, b = (int(v) for v in png_rgb[0, 0, :3])
    return r, g + 256 * b


def image_run(root: Path, name: str = "study_run", methods: Sequence[Method] = METHODS,
              prompts: Sequence[str] = PROMPTS, per_prompt: int = 12, size: int = 32, seed_offset: int = 0,
              ranks: int = 2) -> Path:
    """results-like folder root/name with coverage samples of each method (paired seeds), in `ranks` shard sets."""
    run = Path(root) / name
    (run).mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(f"run: {name}\ndomain: synthetic-test-images\n")
    pairs = [(j, seed_offset + j * per_prompt + i) for j in range(len(prompts)) for i in range(per_prompt)]
    for m in methods:
        key = f"coverage/{m.key}"
        x = np.stack([draw(m, j, s, size) for j, s in pairs])
        for r in range(ranks):  # as several processes write them: rank r holds pairs r, r + ranks, ...
            mine = list(range(r, len(pairs), ranks))
            write_samples(run / "samples", key, x[mine], [pairs[i] for i in mine], "test", positions=mine, rank=r)
        mark_done(run / "samples", key, "test", len(pairs),
                  dict(method=m.method, setting=m.setting, prompt_set="coverage", prompts=list(prompts)))
    return run


def toy_points_run(root: Path, name: str = "toy_points") -> Path:
    """A run whose samples are 2-D points (the toy domain's storage form)."""
    run = Path(root) / name
    pairs = [(j, j * 12 + i) for j in range(2) for i in range(12)]
    for m in METHODS[:2]:
        x = np.random.default_rng(0).normal(size=(len(pairs), 2)).astype(np.float32)
        write_samples(run / "samples", f"coverage/{m.key}", x, pairs, "test")
        mark_done(run / "samples", f"coverage/{m.key}", "test", len(pairs),
                  dict(method=m.method, setting=m.setting, prompt_set="coverage", prompts=["p0", "p1"]))
    return run
