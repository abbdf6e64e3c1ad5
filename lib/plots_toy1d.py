"""Figures of notebook 00 for the 1-D problems: Fig. 9 (mode recovery of a GMM) and Lemma 1 curves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from lib.gmm1d import GMM1D, Recovery
from lib.lemma1 import Lemma1Run

MODE_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple")


def save_figure(fig: plt.Figure, figures_dir: str | Path, name: str, dpi: int = 80) -> Path:
    """Write fig as <figures_dir>/<name>.png (directory created) and return the path."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _hist_by_mode(ax: plt.Axes, x: np.ndarray, labels: np.ndarray, gmm: GMM1D, bins: np.ndarray) -> None:
    """Stacked density histogram of x coloured by mode label."""
    parts = [x[labels == i] for i in range(len(gmm.means))]
    ax.hist(parts, bins=bins, stacked=True, density=True, color=MODE_COLOURS[: len(parts)], alpha=0.75,
            label=[f"mode {m:+g}" for m in gmm.means])


def plot_fig9(gmm: GMM1D, forward: dict[int, tuple[np.ndarray, np.ndarray]], runs: Sequence[Recovery],
              xlim: tuple[float, float] = (-3.5, 3.5)) -> plt.Figure:
    """Three rows x len(runs) columns: q_t by source mode; p(x_{t-lag}|x_t); p(x_0|x_t) (exact pdf dashed)."""
    bins = np.linspace(*xlim, 71)
    grid = np.linspace(*xlim, 400)
    fig, axes = plt.subplots(3, len(runs), figsize=(1.9 * len(runs), 5.2), squeeze=False)
    for j, r in enumerate(runs):
        x_t, lab = forward[r.t]
        _hist_by_mode(axes[0, j], x_t, lab, gmm, bins)
        axes[0, j].plot(grid, np.exp(gmm.log_prob(grid, r.t)), "k--", lw=0.8)
        axes[0, j].set_title(f"t = {r.t}", fontsize=9)
        axes[1, j].hist(r.x_lag, bins=bins, density=True, color="0.55")
        axes[1, j].plot(grid, gmm.posterior_pdf(grid, r.x_t, r.t, r.t - r.lag), "k--", lw=0.8)
        _hist_by_mode(axes[2, j], r.x_0, gmm.nearest_mode(r.x_0), gmm, bins)
        axes[2, j].plot(grid, gmm.posterior_pdf(grid, r.x_t, r.t, 0), "k--", lw=0.8)
        for i in (1, 2):
            axes[i, j].axvline(r.x_t, color="k", lw=1.0)
        for ax in axes[:, j]:
            ax.set_xlim(*xlim), ax.set_yticks([]), ax.tick_params(labelsize=7)
    lag = runs[0].lag
    for i, name in enumerate(["$q_t(x_t)$", f"$p(x_{{t-{lag}}}\\mid x_t)$", "$p(x_0\\mid x_t)$"]):
        axes[i, 0].set_ylabel(name, fontsize=9)
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig


def plot_switch_curve(gmm: GMM1D, ts: np.ndarray, switch: np.ndarray, runs: Sequence[Recovery]) -> plt.Figure:
    """Left: P(x_0 lands in the other mode) vs t; right: std of p(x_{t-lag}|x_t) at the Fig. 9 points."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(7.5, 2.6))
    a.plot(ts, switch, color="k")
    a.set_xlabel("t"), a.set_ylabel("P(other mode)", fontsize=9)
    a.set_title("mode switching from a noised sample", fontsize=9)
    t = [r.t for r in runs]
    b.plot(t, [r.x_lag.std(ddof=1) for r in runs], "o-", color="0.4", label="sampled")
    b.plot(t, [_posterior_std(gmm, r) for r in runs], "k--", lw=0.8, label="exact")
    b.set_xlabel("t"), b.set_ylabel(f"std of $x_{{t-{runs[0].lag}}}$", fontsize=9), b.legend(fontsize=7)
    b.set_title("one reverse chunk spreads more at large t", fontsize=9)
    fig.tight_layout()
    return fig


def _posterior_std(gmm: GMM1D, r: Recovery) -> float:
    """Exact std of q(x_{t-lag} | x_t)."""
    w, m, v = gmm.posterior(r.x_t, r.t, r.t - r.lag)
    return float(np.sqrt((w * (v + m**2)).sum() - (w * m).sum() ** 2))


def plot_lemma1(runs: dict[str, Lemma1Run], reference: str) -> plt.Figure:
    """Reward and snapshots of p for the `reference` run; mass at argmax r and entropy vs iteration for all."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(10.5, 2.8))
    ref = runs[reference]
    a.plot(ref.grid, ref.reward, color="k", label="r(x)")
    a.set_xlabel("x"), a.set_ylabel("reward", fontsize=9)
    a2 = a.twinx()
    for k, (step, p) in enumerate(sorted(ref.snapshots.items())):
        a2.plot(ref.grid, p, color=plt.cm.viridis(k / max(1, len(ref.snapshots) - 1)), lw=1, label=f"p @ {step}")
    a2.set_yscale("log"), a2.set_ylim(1e-6, 1.5), a2.tick_params(labelsize=7)
    a2.set_ylabel("p(x), log scale", fontsize=8), a2.legend(fontsize=6, loc="lower right")
    a.set_title(f"{reference}: p collapses onto argmax r", fontsize=9)
    for name, run in runs.items():
        b.plot(np.maximum(run.steps, 1), run.mass_at_argmax, label=name, lw=1)
        c.plot(np.maximum(run.steps, 1), run.entropy, label=name, lw=1)
    b.set_xscale("log"), b.set_xlabel("iteration"), b.set_ylabel("p(argmax r)", fontsize=9), b.legend(fontsize=6)
    c.set_xscale("log"), c.set_xlabel("iteration"), c.set_ylabel("entropy (nats)", fontsize=9)
    fig.tight_layout()
    return fig
