"""Figures of the user study (AIG paper Fig. 6, 7, 8): bars of the percent of votes for each method and for
'equal' per question, with 95 % intervals, and the votes per user. A figure drawn from simulated votes carries
'SIMULATED votes — not a human result' in its title and a watermark on every panel."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lib.drawing import family_color, save
from lib.study.analysis import SIMULATED, source_of, user_normalised, votes_per_user, win_rates
from lib.study.db import OUTCOMES, QUESTIONS

FIG6 = "Win rates over all configurations (Fig. 6)"
FIG7 = "Win rates per configuration (Fig. 7)"
FIG8A = "User-normalised preference (Fig. 8a)\neach user's votes sum to 100, then users are averaged"


def mark_source(fig: plt.Figure, source: str, title: str) -> plt.Figure:
    """Title the figure; simulated results also get a red title line and a watermark on every panel."""
    if source == SIMULATED:
        fig.suptitle(f"{SIMULATED}\n{title}", color="#b00020", fontweight="bold")
        for ax in fig.axes:
            ax.text(0.5, 0.5, "SIMULATED", transform=ax.transAxes, ha="center", va="center", rotation=25,
                    fontsize=30, color="#b00020", alpha=0.13, fontweight="bold", zorder=0)
    else:
        fig.suptitle(title)
    return fig


def empty_figure(message: str) -> plt.Figure:
    """A small figure that says there is nothing to draw."""
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return fig


def _colors(choices: Sequence[str]) -> list[str]:
    a, b = family_color(choices[0]), family_color(choices[2])
    return [a, "tab:gray", b if b != a else "tab:blue"]


def _panel(ax: plt.Axes, t: pd.DataFrame, legend: bool) -> None:
    width = 0.26
    x = np.arange(len(QUESTIONS))
    choices = [t[t.outcome == o].choice.iloc[0] for o in OUTCOMES]
    for k, (o, color) in enumerate(zip(OUTCOMES, _colors(choices))):
        r = t[t.outcome == o].set_index("question").reindex(list(QUESTIONS))
        err = np.vstack([r.percent - r.lo, r.hi - r.percent])
        bars = ax.bar(x + (k - 1) * width, r.percent, width, color=color, label=choices[k], yerr=err, capsize=3,
                      zorder=2)
        ax.bar_label(bars, labels=[f"{p:.0f}" for p in r.percent], padding=2, fontsize=7)
    ax.set_xticks(x, [q.capitalize() for q in QUESTIONS])
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("mean over users of each user's %" if t.weighting.iloc[0] == "user-normalised" else "% of votes")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    if legend:
        ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)


def preference_figure(result: pd.DataFrame, title: str, panel: str | None = None, ncols: int = 2) -> plt.Figure:
    """Fig. 6 / 7 / 8a: bars for a, equal, b per question with intervals; a panel per value of `panel` (comparison)."""
    if result.empty:
        return empty_figure("no votes yet: nothing to draw")
    panel = panel or ("comparison" if "comparison" in result.columns else None)
    names = sorted(result[panel].unique()) if panel else [""]
    cols = min(ncols, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows + 0.6), squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.axis("off")
            continue
        t = result[result[panel] == names[i]] if panel else result
        _panel(ax, t, legend=True)
        n = t.n_votes.iloc[0]
        ax.set_title(f"{names[i]}  (n = {n} votes, {t.n_users.iloc[0]} users)" if panel else f"n = {n} votes",
                     fontsize=9)
    return mark_source(fig, result.source.iloc[0], title)


def votes_per_user_figure(counts: pd.DataFrame, title: str = "Votes per user (Fig. 8b)") -> plt.Figure:
    """Fig. 8b: the number of votes each user cast, most first."""
    if counts.empty:
        return empty_figure("no votes yet: nothing to draw")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.22 * len(counts) + 1.5), 3.4), layout="constrained")
    ax.bar(counts.user, counts.votes, color="tab:blue", zorder=2)
    ax.axhline(counts.votes.mean(), color="k", lw=1, ls="--", label=f"mean {counts.votes.mean():.1f}")
    ax.set_xlabel(f"user ({len(counts)} users, {counts.votes.sum()} votes)")
    ax.set_ylabel("votes")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8)
    return mark_source(fig, counts.source.iloc[0], title)


def figure_path(folder: Path | str, stem: str, votes: pd.DataFrame) -> Path:
    """folder/<stem>.png, prefixed 'SIMULATED_' when the votes are simulated."""
    return Path(folder) / f"{'SIMULATED_' if source_of(votes) == SIMULATED else ''}{stem}.png"


def write_figures(votes: pd.DataFrame, folder: Path | str, n_boot: int = 2000, seed: int = 0) -> list[Path]:
    """Fig. 6, 7, 8a and 8b of a votes table as PNG files in folder (none when there are no votes)."""
    if votes.empty:
        return []
    figs = {"user_study_fig6_win_rates": preference_figure(win_rates(votes, n_boot=n_boot, seed=seed), FIG6),
            "user_study_fig7_per_configuration": preference_figure(
                win_rates(votes, ("configuration",), n_boot, seed), FIG7, panel="configuration"),
            "user_study_fig8a_user_normalised": preference_figure(
                user_normalised(votes, n_boot=n_boot, seed=seed), FIG8A),
            "user_study_fig8b_votes_per_user": votes_per_user_figure(votes_per_user(votes))}
    out = []
    for stem, fig in figs.items():
        out.append(save(fig, figure_path(folder, stem, votes)))
        plt.close(fig)
    return out
