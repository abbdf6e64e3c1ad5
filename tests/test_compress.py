"""lib.domains.sd.compress: DRaFT B.3's JPEG (in)compressibility rewards through kornia's differentiable JPEG,
checked against Pillow's real JPEG on a fixed set of 32 images of varied complexity.

Measured (96 x 96 images, kornia 0.9.0, Pillow's libjpeg): Spearman rho of our round-trip error against Pillow's
round-trip error 0.998 (quality 50) / 0.997 (95): the differentiable codec ranks images as real JPEG does. Against
Pillow's file size rho is 0.75 / 0.68, and Pillow's own round-trip error correlates with its file size just as
much (0.75 / 0.68): the gap is the reward's definition (squared error, not bytes), not the codec. It comes from
saturated block-aligned checkerboards (tiny files, large colour error from 4:2:0 chroma subsampling) and fine
stripes. Thresholds: >= 0.95 against Pillow's error; >= 0.6 against file size and within 0.05 of Pillow's own
error-size correlation.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from scipy.stats import spearmanr

from lib.domains.sd.compress import JPEGReward, jpeg_error, jpeg_roundtrip
from lib.domains.sd.rewards import Reward

S = 96


def _pil(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255


def image_set(size: int = S, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """32 named images (N, 3, size, size) on the uint8 grid: smooth gradients, random colour fields of rising
    frequency, noise of rising amplitude, checkerboards, oblique stripes, text on flat backgrounds, and shapes."""
    g, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    names, imgs = [], []

    def add(name, x):
        names.append(name)
        imgs.append(x.clamp(0, 1))

    for i, c in enumerate(([1, .5, .2], [.1, .6, .9], [.8, .8, .1])):
        add(f"gradient{i}", torch.stack([xx * c[0], yy * c[1], (1 - xx) * c[2]]))
    add("radial", torch.stack([((xx - .5) ** 2 + (yy - .5) ** 2).sqrt()] * 3))
    for k in (2, 4, 8, 16, 32):
        add(f"field{k}", F.interpolate(torch.rand(1, 3, k, k, generator=g), size=(size, size), mode="bicubic",
                                       align_corners=False)[0])
    smooth = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(size, size), mode="bilinear",
                           align_corners=False)[0]
    for a in (0.02, 0.05, 0.1, 0.2, 0.4):
        add(f"noise{a}", smooth + a * torch.randn(3, size, size, generator=g))
    add("uniform-noise", torch.rand(3, size, size, generator=g))
    for b in (2, 4, 8, 16, 32):
        cb = (((torch.arange(size) // b)[:, None] + (torch.arange(size) // b)[None, :]) % 2).float()
        add(f"checker{b}", torch.stack([cb * 0.8 + 0.1, cb * 0.5 + 0.2, 1 - cb * 0.7]))
    for f in (2, 6, 12, 24):
        s = 0.5 + 0.5 * torch.sin(2 * math.pi * f * (xx + 0.3 * yy))
        add(f"stripes{f}", torch.stack([s, s * 0.7, 1 - s]))
    font = ImageFont.load_default()
    for n in (1, 4, 12, 30):
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 255, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(n):
            d.text((int(rng.integers(0, size - 30)), int(rng.integers(0, size - 10))),
                   "".join(rng.choice(list("abcdefghijKLMNOP0123"), 5)),
                   fill=tuple(int(v) for v in rng.integers(0, 100, 3)), font=font)
        add(f"text{n}", _pil(im))
    for n in (1, 5, 20, 60):
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(im)
        for i in range(n):
            x0, y0 = rng.integers(0, size, 2)
            w, h = rng.integers(4, size // 2, 2)
            (d.ellipse if i % 2 else d.rectangle)([int(x0), int(y0), int(x0 + w), int(y0 + h)],
                                                  fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        add(f"shapes{n}", _pil(im))
    x = torch.stack(imgs)
    return names, (x * 255).round() / 255  # exactly representable in uint8, so Pillow codes the same image


def pillow_jpeg(images: torch.Tensor, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's real JPEG at `quality` (default 4:2:0 subsampling): (file sizes in bytes, round-trip MSE) per image."""
    sizes, errors = [], []
    for x in images:
        u8 = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell())
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64) / 255
        errors.append(((u8 / 255.0 - back) ** 2).mean())
    return np.array(sizes), np.array(errors)


@pytest.mark.parametrize("quality", [50, 95])
def test_error_ranks_images_like_pillows_jpeg(quality):
    names, x = image_set()
    assert len(names) == 32
    with torch.no_grad():
        ours = jpeg_error(x, quality).numpy()
    sizes, theirs = pillow_jpeg(x, quality)
    rho_err = spearmanr(ours, theirs)[0]
    rho_size = spearmanr(ours, sizes)[0]
    rho_pil = spearmanr(theirs, sizes)[0]
    print(f"\nquality {quality}: Spearman rho(ours, Pillow round-trip error) = {rho_err:.3f}; "
          f"rho(ours, Pillow file size) = {rho_size:.3f}; rho(Pillow error, Pillow file size) = {rho_pil:.3f}; "
          f"median |ours - Pillow| / Pillow error = {np.median(np.abs(ours - theirs) / theirs):.2f}")
    assert rho_err >= 0.95
    assert rho_size >= 0.6 and abs(rho_size - rho_pil) <= 0.05


def test_rewards_are_opposite_and_follow_the_reward_interface():
    _, x = image_set(size=40)  # 40 is not a multiple of 16: kornia pads and crops back
    comp, incomp = JPEGReward("compressibility"), JPEGReward("incompressibility", quality=50)
    assert isinstance(comp, Reward) and comp.name == "compressibility" and comp.quality == 50
    rc, ri = comp(x[:5], ["ignored"] * 5), incomp(x[:5], [])
    assert rc.shape == (5,) and rc.dtype == torch.float32
    assert torch.equal(rc, -ri) and (ri >= 0).all()
    assert torch.equal(ri, jpeg_error(x[:5]))
    assert jpeg_roundtrip(x[:2]).shape == (2, 3, 40, 40)
    assert (JPEGReward("incompressibility", 95)(x[:5]) < ri).all()  # less loss at a higher quality
    with pytest.raises(ValueError, match="quality"):
        JPEGReward("compressibility", quality=0)
    with pytest.raises(ValueError, match="not one of"):
        JPEGReward("jpeg")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        comp(x[0])


def test_gradient_reaches_pixels_and_ascent_lowers_pillows_jpeg_error():
    """Gradient ascent on compressibility lowers Pillow's real round-trip error: the gradient means something."""
    names, x = image_set(size=48)
    i = names.index("uniform-noise")  # among the least compressible images of the set
    x0 = x[i : i + 1].clone()
    r = JPEGReward("compressibility")
    img = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(r(img, [""]).sum(), img)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    opt = torch.optim.Adam([img], lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        (-r(img, [""]).sum()).backward()
        opt.step()
        with torch.no_grad():
            img.clamp_(0, 1)
    out = (img.detach() * 255).round() / 255
    (size0,), (err0,) = pillow_jpeg(x0, 50)
    (size1,), (err1,) = pillow_jpeg(out, 50)
    print(f"\nafter 30 Adam steps on compressibility: Pillow error {err0:.2e} -> {err1:.2e}, "
          f"file {size0} -> {size1} bytes")
    assert r(out, [""]).item() > r(x0, [""]).item()
    assert err1 < 0.5 * err0
