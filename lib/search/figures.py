"""Figures of notebook 07: the searched front against the families, the searched schedules as gamma(s) curves, and
the sample grid of the best few (drawn by the run's domain)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lib.drawing import STYLE
from lib.methods import Method
from lib.metrics import label
from lib.schedules import parse, step_s
from lib.search.study import SearchRun

COLORS = {"searched": "black", "power": STYLE["aig"]["color"], "step": STYLE["combined"]["color"],
          "sigmoid": "tab:brown", "kl": STYLE["kl"]["color"], "lora_scale": STYLE["lora_scale"]["color"]}
MARKERS = {"searched": "*", "power": "D", "step": "v", "sigmoid": "o", "kl": "s", "lora_scale": "^"}


def _family_curves(ax, pts: pd.DataFrame, diversity: str, hollow: bool = False) -> None:
    """Each family's points joined in reward order, base and DRaFT as big dots, the ideal as a gold star."""
    for fam, g in pts[pts.family != "anchor"].groupby("family", sort=False):
        g = g.sort_values("reward")
        ms = 11 if fam == "searched" else 5
        ax.plot(g[diversity], g.reward, marker=MARKERS.get(fam, "o"), color=COLORS.get(fam, "tab:gray"), ms=ms, lw=1,
                label=fam, mfc="none" if hollow else None, alpha=0.9)
    anchor = pts[pts.family == "anchor"].set_index("method")
    for m, c in (("base", "tab:green"), ("draft", "tab:red")):
        ax.scatter(anchor.loc[m, diversity], anchor.loc[m, "reward"], s=70, color=c, edgecolor="k", zorder=5)
    ax.scatter(anchor.loc["base", diversity], anchor.loc["draft", "reward"], marker="*", s=220, color="gold",
               edgecolor="k", zorder=6, label="ideal")
    ax.set(xlabel=label(diversity), ylabel=label("reward"))
    ax.grid(alpha=0.3)


def front_figure(trials: pd.DataFrame, points: pd.DataFrame, diversity: str) -> plt.Figure:
    """Left: every trial on the selection seeds (grey) with the families there; right: the held-out means of the
    searched subset and of every family (`lib.search.heldout.heldout_points`)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    axes[0].scatter(trials[diversity], trials.reward, s=10, color="0.6", label="trials", zorder=1)
    _family_curves(axes[0], points[points.seeds == "selection"], diversity)
    axes[0].set_title("selection seeds: the search's trials and the front it chose")
    _family_curves(axes[1], points[points.seeds == "heldout"], diversity)
    axes[1].set_title("held-out seeds (mean over the held-out ranges)")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def curves_figure(specs: Sequence[str], num_steps: int, references: Sequence[str] = ("power:2", "step:0.5")) -> plt.Figure:
    """gamma(s) of each spec (solid, dots at the sampler's step times s_i = 1 - i / N) and reference schedules
    (dashed); s runs from 1 (noise, base model) to 0 (clean, tuned model) as sampling does."""
    s = np.linspace(0.0, 1.0, 401)  # (401,)
    si = step_s(num_steps)  # (N,)
    fig, ax = plt.subplots(figsize=(9.5, 4))
    cmap = plt.get_cmap("viridis", max(len(specs), 2))
    for i, spec in enumerate(specs):
        g = parse(spec)
        ax.plot(s, g(s), color=cmap(i), lw=1.6, label=f"{i + 1}: {spec}")
        ax.scatter(si, g(si), color=cmap(i), s=9, zorder=3)
    for ref in references:
        ax.plot(s, parse(ref)(s), color="0.4", ls="--", lw=1, label=ref)
    ax.invert_xaxis()
    ax.set(xlabel="s = 1 - i/N (1: noise → 0: clean)", ylabel="γ(s) (weight of the base model)", ylim=(-0.03, 1.03))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sample_grid(run: SearchRun, specs: Sequence[str], range_name: str = "heldout-0", per_prompt: int = 200,
                references: Sequence[str] = ("power:2",)):
    """The domain's sample grid (Fig. 2 style) of base, DRaFT, the reference schedules and the searched specs
    (rows 'searched 1', ...) on the first per_prompt seeds of each prompt in one held-out range."""
    rows = {"base": Method("base"), "draft": Method("draft"),
            **{f"aig {r}": Method("aig", r) for r in references},
            **{f"searched {i + 1}": Method("aig", s) for i, s in enumerate(specs)}}
    shown = {}
    for name, m in rows.items():
        x, p = run.sample(m, range_name)
        keep = np.concatenate([np.flatnonzero(p == j)[:per_prompt] for j in np.unique(p)])
        shown[name] = (x[keep], p[keep])
    return run.domain.sample_grid(shown)
