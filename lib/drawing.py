"""Figure helpers below the domains: atomic PNG saving, the methods' colours, image mosaics."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lib.files import atomic_path

STYLE = {  # the paper's colours: base green, DRaFT red, ideal gold, KL blue, LoRA pink, AIG orange
    "base": dict(color="tab:green", marker="o", label="base"),
    "draft": dict(color="tab:red", marker="o", label="DRaFT"),
    "kl": dict(color="tab:blue", marker="s", label="KL (λ)"),
    "lora_scale": dict(color="tab:pink", marker="^", label="LoRA scale (α')"),
    "aig": dict(color="tab:orange", marker="D", label="AIG (γ)"),
    "combined": dict(color="tab:purple", marker="v", label="combined (step:c)"),
}


def family_color(label: str) -> str:
    """The colour of a figure row label such as 'aig power:2' (grey for unknown families)."""
    return STYLE.get(label.split(" ")[0], {}).get("color", "tab:gray")


def save(fig, path: Path, dpi: int = 90) -> Path:
    """Write a figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return Path(path)


def mosaic(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """uint8 images (n, 3, H, W) tiled into one (rows * H, cols * W, 3) picture with 1-pixel white gaps."""
    n, _, h, w = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, 3), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = np.transpose(images[k], (1, 2, 0))
    return out


def image_grid(rows: dict[str, np.ndarray], size: float = 1.8) -> plt.Figure:
    """uint8 images (n, 3, H, W) per row label, drawn side by side."""
    ncol = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), ncol, figsize=(size * ncol, (size + 0.1) * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(np.transpose(imgs[c], (1, 2, 0)), interpolation="nearest")
        axes[r][0].text(-0.05, 0.5, name, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig
