"""Notebook 04's LoRA-mixing figures (DRaFT, Clark et al. 2024, Sec. 5.3, Fig. 7 right): two adapters trained on two
rewards mixed as W + alpha dW_A + beta dW_B at inference (`sweep.lora_mix`).

- `mixing_image_grid`: the samples of one prompt and one seed (paired seeds: the same noise in every cell) with
  alpha (adapter A's weight) down the rows and beta (adapter B's) across the columns, drawn by the domain
  (`Domain.draw_samples`: an image on SD, the points of a few seeds on the toy);
- `two_reward_figure`: the grid points in the plane of the two rewards (metrics.csv `reward`, the run's reward, and
  `reward_alt`, the world's other reward), coloured by a diversity metric, each labelled (alpha, beta), with base and
  DRaFT for reference.
`lora_mix_figures` writes both (lora_mix_grid.png, lora_mix_rewards.png) for a run with a lora_mix sweep.
"""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lib.adapters import LoraMixConfig
from lib.config import RunConfig
from lib.drawing import STYLE, save
from lib.methods import Method
from lib.metrics import label
from lib.runs import RunPaths, make_domain
from lib.store import read_samples


def mix_methods(mix: LoraMixConfig) -> dict[tuple[float, float], Method]:
    """The sweep's lora_mix methods by (alpha, beta)."""
    return {(a, b): Method("lora_mix", ((na, a), (nb, b))) for (na, a), (nb, b) in mix.points}


def mixing_image_grid(cfg: RunConfig, paths: RunPaths, prompt: int = 0, seed_rank: int = 0,
                      per_cell: int = 1) -> plt.Figure:
    """DRaFT Fig. 7 right: samples of coverage prompt `prompt` from the same seeds (the `seed_rank`-th and the next
    per_cell - 1) in every cell; rows alpha (adapter A), columns beta (adapter B)."""
    mix = cfg.sweep.lora_mix
    methods = mix_methods(mix)
    alphas = sorted({a for a, _ in methods})
    betas = sorted({b for _, b in methods})
    domain = make_domain(cfg, paths)
    fig, axes = plt.subplots(len(alphas), len(betas), figsize=(1.6 * len(betas) + 0.6, 1.6 * len(alphas) + 0.4),
                             squeeze=False)
    for (a, b), m in methods.items():
        x, p, _ = read_samples(paths.samples, f"coverage/{m.key}")  # x (N, ...), p (N,) in paired-seed order
        keep = np.flatnonzero(p == prompt)[seed_rank: seed_rank + per_cell]
        ax = axes[alphas.index(a)][betas.index(b)]
        domain.draw_samples(ax, x[keep], p[keep])
        if alphas.index(a) == 0:
            ax.set_title(f"β = {b:g}", fontsize=9)
        if betas.index(b) == 0:
            ax.set_ylabel(f"α = {a:g}", fontsize=9)
    a_name, b_name = mix.adapters
    fig.suptitle(f"LoRA mixing α·{a_name} + β·{b_name} (prompt {domain.prompts('coverage')[prompt]!r}, one seed)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def coverage_table(df: pd.DataFrame, prompt_set: str = "coverage") -> pd.DataFrame:
    """metrics.csv of one prompt set as a table: (method, setting) x metric."""
    return df[df.prompt_set == prompt_set].pivot_table(index=["method", "setting"], columns="metric", values="value")


def grid_points(t: pd.DataFrame, mix: LoraMixConfig, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per grid cell present in the table `t` (coverage_table): alpha, beta and the given metrics."""
    cols = [c for c in metrics if c in t.columns]
    return pd.DataFrame([dict(alpha=a, beta=b, **t.loc[(m.method, m.setting), cols].to_dict())
                         for (a, b), m in mix_methods(mix).items() if (m.method, m.setting) in t.index])


def two_reward_figure(t: pd.DataFrame, mix: LoraMixConfig, diversity: str, y: str = "reward_alt") -> plt.Figure:
    """The grid points of the table `t` (coverage_table) in the (reward, y) plane, coloured by `diversity`, labelled
    (alpha, beta); base and DRaFT."""
    pts = grid_points(t, mix, ("reward", y, diversity))
    fig, ax = plt.subplots(figsize=(5.4, 4.2))
    sc = ax.scatter(pts["reward"], pts[y], c=pts[diversity], cmap="viridis", s=60, edgecolor="k", zorder=3)
    for r in pts.itertuples():
        ax.annotate(f"{r.alpha:g},{r.beta:g}", (r.reward, getattr(r, y)), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    for fam in ("base", "draft"):
        if (fam, "-") in t.index:
            ax.scatter(t.loc[(fam, "-"), "reward"], t.loc[(fam, "-"), y], marker="*", s=160, zorder=4,
                       color=STYLE[fam]["color"], edgecolor="k", label=STYLE[fam]["label"])
    fig.colorbar(sc, ax=ax, label=label(diversity))
    a_name, b_name = mix.adapters
    ax.set(xlabel=label("reward"), ylabel=label(y), title=f"α·{a_name} + β·{b_name}: the two rewards (labels α,β)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def lora_mix_figures(cfg: RunConfig, paths: RunPaths, df: pd.DataFrame, y: str = "reward_alt",
                     diversity: Optional[str] = None, per_cell: int = 1) -> Optional[pd.DataFrame]:
    """Write lora_mix_grid.png (per_cell seeds of the first prompt per cell) and, where metrics.csv has `y`,
    lora_mix_rewards.png; returns the grid's numbers (alpha, beta, reward, y, diversity), or None for a run without
    a lora_mix sweep."""
    mix = cfg.sweep.lora_mix
    if not mix.adapters:
        return None
    save(mixing_image_grid(cfg, paths, per_cell=per_cell), paths.figures / "lora_mix_grid.png")
    div = diversity or next((d for d in ("dino_diversity", *cfg.metrics.diversity) if d in set(df.metric)), None)
    t = coverage_table(df)
    out = grid_points(t, mix, [c for c in ("reward", y, div) if c is not None])
    if y in out.columns and div in out.columns:
        save(two_reward_figure(t, mix, div, y=y), paths.figures / "lora_mix_rewards.png")
    return out
