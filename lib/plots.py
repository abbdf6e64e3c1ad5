"""Figures of a run's metrics: reward-diversity Pareto fronts (AIG paper Fig. 4, 17-20), CLIP-diversity
(Fig. 21-24), reward-KL (Fig. 3a) and training curves. Sample grids are drawn by the domains."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from lib.drawing import STYLE, save  # noqa: F401  (save is re-exported for the notebooks)
from lib.methods import Method
from lib.metrics import label



def _table(df: pd.DataFrame, prompt_set: str) -> pd.DataFrame:
    return df[df.prompt_set == prompt_set].pivot_table(index=["method", "setting"], columns="metric", values="value", sort=False)


def _curves(t: pd.DataFrame, fam: str) -> dict[str, list]:
    """Index rows of one family grouped into curves: one per per-branch guidance variant ('' = the default)."""
    out: dict[str, list] = {}
    for i in t.index:
        if i[0] == fam:
            scales = Method.parse(*i).scales
            out.setdefault("" if scales is None else f" cfg={scales[0]:g}/{scales[1]:g}", []).append(i)
    return out


def pareto_figure(df: pd.DataFrame, diversity: Sequence[str], prompt_set: str = "coverage", y: str = "reward",
                  title: str = "") -> plt.Figure:
    """One panel per diversity metric: y (reward) against diversity, a curve per method family, base, DRaFT, ideal."""
    t = _table(df, prompt_set)
    fig, axes = plt.subplots(1, len(diversity), figsize=(4.2 * len(diversity), 3.8), squeeze=False)
    for ax, div in zip(axes[0], diversity):
        for fam in ("kl", "lora_scale", "combined", "aig"):
            for variant, idx in _curves(t, fam).items():
                pts = t.loc[idx, [div, y]].dropna()
                st = STYLE[fam]
                ax.plot(pts[div], pts[y], marker=st["marker"], color=st["color"], label=st["label"] + variant, ms=4,
                        lw=1.2, alpha=0.9, ls="--" if variant else "-")
        for fam in ("base", "draft"):
            if (fam, "-") in t.index:
                ax.scatter(t.loc[(fam, "-"), div], t.loc[(fam, "-"), y], s=70, zorder=5, edgecolor="k", **{k: v for k, v in STYLE[fam].items()})
        if ("base", "-") in t.index and ("draft", "-") in t.index:
            ax.scatter(t.loc[("base", "-"), div], t.loc[("draft", "-"), y], marker="*", s=220, color="gold",
                       edgecolor="k", zorder=6, label="ideal")
        ax.set_xlabel(label(div))
        ax.set_ylabel(label(y))
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
        text = "DRaFT (λ=0)" if method == "draft" else f"λ={Method.parse(method, setting).value:g}"
        ax.annotate(text, (row["kl"], row["reward"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if ("base", "-") in t.index:
        ax.axhline(t.loc[("base", "-"), "reward"], color="tab:green", ls="--", label="base reward")
        ax.legend(fontsize=7)
    if (pts["kl"] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(label("kl"))
    ax.set_ylabel(label("reward"))
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
