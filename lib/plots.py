"""Figures: reward-diversity Pareto plots (AIG paper Fig. 4), reward-KL (Fig. 3a), training curves, toy sample grids."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lib.io import atomic_path

STYLE = {  # the paper's colours: base green, DRaFT red, ideal gold, KL blue, LoRA pink, AIG orange
    "base": dict(color="tab:green", marker="o", label="base"),
    "draft": dict(color="tab:red", marker="o", label="DRaFT"),
    "kl": dict(color="tab:blue", marker="s", label="KL (λ)"),
    "lora_scale": dict(color="tab:pink", marker="^", label="LoRA scale (α')"),
    "aig": dict(color="tab:orange", marker="D", label="AIG (γ)"),
    "combined": dict(color="tab:purple", marker="v", label="combined (step:c)"),
}
LABEL = {"fid": "FID ↓", "precision": "Precision ↑", "recall": "Recall ↑", "scd": "SCD ↓", "lscd": "LSCD ↓",
         "reward": "reward ↑", "kl": "KL (Σ_t ‖ε_θ−ε_base‖²) ↓", "dino_diversity": "DinoDiversity ↑", "clip": "CLIP score ↑"}


def save(fig, path: Path, dpi: int = 90) -> Path:
    """Write a figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return Path(path)


def _table(df: pd.DataFrame, prompt_set: str) -> pd.DataFrame:
    return df[df.prompt_set == prompt_set].pivot_table(index=["method", "setting"], columns="metric", values="value", sort=False)


def pareto_figure(df: pd.DataFrame, diversity: Sequence[str], prompt_set: str = "coverage", y: str = "reward",
                  title: str = "") -> plt.Figure:
    """One panel per diversity metric: y (reward) against diversity, a curve per method family, base, DRaFT, ideal."""
    t = _table(df, prompt_set)
    fig, axes = plt.subplots(1, len(diversity), figsize=(4.2 * len(diversity), 3.8), squeeze=False)
    for ax, div in zip(axes[0], diversity):
        for fam in ("kl", "lora_scale", "combined", "aig"):
            pts = t.loc[[i for i in t.index if i[0] == fam], [div, y]].dropna()
            if len(pts):
                st = STYLE[fam]
                ax.plot(pts[div], pts[y], marker=st["marker"], color=st["color"], label=st["label"], ms=4, lw=1.2, alpha=0.9)
        for fam in ("base", "draft"):
            if (fam, "-") in t.index:
                ax.scatter(t.loc[(fam, "-"), div], t.loc[(fam, "-"), y], s=70, zorder=5, edgecolor="k", **{k: v for k, v in STYLE[fam].items()})
        if ("base", "-") in t.index and ("draft", "-") in t.index:
            ax.scatter(t.loc[("base", "-"), div], t.loc[("draft", "-"), y], marker="*", s=220, color="gold",
                       edgecolor="k", zorder=6, label="ideal")
        ax.set_xlabel(LABEL.get(div, div))
        ax.set_ylabel(LABEL.get(y, y))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title or f"{y} against diversity ({prompt_set} set); the gold star is ideal")
    fig.tight_layout()
    return fig


def reward_kl_figure(df: pd.DataFrame, prompt_set: str = "coverage") -> plt.Figure:
    """AIG paper Fig. 3a: reward against the chain KL of each fine-tuned model, labelled by lambda."""
    t = _table(df, prompt_set)
    pts = t.loc[[i for i in t.index if i[0] in ("kl", "draft")], ["kl", "reward"]].dropna()
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    ax.plot(pts["kl"], pts["reward"], "o-", color="tab:blue")
    for (method, setting), row in pts.iterrows():
        ax.annotate("DRaFT (λ=0)" if method == "draft" else setting.replace("lambda=", "λ="), (row["kl"], row["reward"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    if ("base", "-") in t.index:
        ax.axhline(t.loc[("base", "-"), "reward"], color="tab:green", ls="--", label="base reward")
        ax.legend(fontsize=7)
    if (pts["kl"] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(LABEL["kl"])
    ax.set_ylabel(LABEL["reward"])
    ax.set_title("reward-KL tradeoff (Fig. 3a)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def training_curves(logs: dict[str, pd.DataFrame], window: int = 10) -> plt.Figure:
    """Reward, KL term and gradient norm per step of each fine-tuning run (rolling mean over `window` steps)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    cmap = plt.get_cmap("viridis", max(len(logs), 2))
    for i, (name, log) in enumerate(logs.items()):
        for ax, col in zip(axes, ("reward", "kl", "grad_norm")):
            ax.plot(log["step"], log[col].rolling(window, min_periods=1).mean(), color=cmap(i), label=name, lw=1.2)
    for ax, col in zip(axes, ("reward", "KL term (last K steps)", "gradient norm (before clipping)")):
        ax.set_title(col)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("symlog", linthresh=1e-4)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def sample_grid(samples: dict[str, tuple[np.ndarray, np.ndarray]], num_prompts: int, lim: float = 2.6,
                reward_field=None) -> plt.Figure:
    """Toy samples (Fig. 2 style): one row per method, one column per prompt; optional reward contours."""
    fig, axes = plt.subplots(len(samples), num_prompts, figsize=(2.3 * num_prompts, 2.3 * len(samples)), squeeze=False)
    for r, (name, (x, p)) in enumerate(samples.items()):
        for j in range(num_prompts):
            ax = axes[r][j]
            if reward_field is not None:
                gx, gy, z = reward_field(j)
                ax.contourf(gx, gy, z, levels=12, cmap="Greys", alpha=0.5)
            xs = x[p == j]
            ax.scatter(xs[:, 0], xs[:, 1], s=2, alpha=0.5, color=STYLE.get(name.split(" ")[0], {}).get("color", "tab:gray"))
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[])
            if r == 0:
                ax.set_title(f"prompt gmm-{j}", fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def trajectory_figure(paths: dict[str, np.ndarray], reward_field=None, lim: float = 2.6) -> plt.Figure:
    """Fig. 1 style: sampling trajectories (steps+1, B, 2) of each method over the reward landscape."""
    fig, axes = plt.subplots(1, len(paths), figsize=(4 * len(paths), 4), squeeze=False)
    for ax, (name, xs) in zip(axes[0], paths.items()):
        if reward_field is not None:
            gx, gy, z = reward_field
            ax.contourf(gx, gy, z, levels=12, cmap="Greys", alpha=0.5)
        color = STYLE.get(name.split(" ")[0], {}).get("color", "tab:gray")
        for b in range(xs.shape[1]):
            ax.plot(xs[:, b, 0], xs[:, b, 1], color=color, lw=0.8, alpha=0.7)
        ax.scatter(xs[-1, :, 0], xs[-1, :, 1], color=color, s=18, edgecolor="k", zorder=3)
        ax.scatter(xs[0, :, 0], xs[0, :, 1], color="white", s=10, edgecolor="k", zorder=3)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[], title=name)
    fig.suptitle("sampling trajectories from the same noise (white: x_T, filled: x_0; grey: reward)")
    fig.tight_layout()
    return fig


def image_grid(rows: dict[str, np.ndarray]) -> plt.Figure:
    """uint8 images (n, 3, H, W) per row label, drawn side by side."""
    ncol = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.8 * ncol, 1.9 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(np.transpose(imgs[c], (1, 2, 0)))
        axes[r][0].text(-0.05, 0.5, name, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig
