"""The explorer's figures, drawn into given matplotlib axes or figures (no widgets): gamma(s) with the sampler's
steps, the per-step weights, the preview panels (each cell drawn by the domain's `draw_samples`), the run's
reward-diversity points with the current gamma as a star, and one static snapshot figure of it all.
"""
from __future__ import annotations

import io
import textwrap
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib.drawing import STYLE, family_color
from lib.explorer.preview import PANEL_LABEL, Preview
from lib.explorer.state import ExplorerState
from lib.methods import Method
from lib.metrics import label

DrawSamples = Callable[..., None]  # (ax, stored (n, ...), prompt_index (n,), color=None) -> None
FAMILY_CURVES = ("kl", "lora_scale", "combined", "aig")  # method families drawn as curves on the Pareto plot
SINGLE_POINTS = ("base", "draft")


def _color(name: str) -> str:
    return STYLE.get(name, {}).get("color", "tab:gray")


def draw_curve(ax, state: ExplorerState) -> None:
    """gamma(s) with markers at the sampler's steps s_i = 1 - i/N and the spline's control points."""
    ax.clear()
    s, g = state.curve()
    ax.plot(s, g, color=_color("aig"), lw=2)
    ss = state.step_s()
    ax.plot(ss, state.schedule(ss), "o", ms=4, color="k", label=f"sampler steps ({state.num_steps})", zorder=4)
    if state.family == "spline":
        ps, pg = zip(*state.points)
        ax.plot(ps, pg, "s", ms=9, mfc="white", mec=_color("aig"), mew=2, label="control points", zorder=5)
    ax.set(xlim=(-0.03, 1.03), ylim=(-0.05, 1.05), xlabel="s   (1 = noise, 0 = clean; step i at s = 1 − i/N)",
           ylabel="γ(s): weight of the base model")
    ax.set_title(f"γ: {state.spec}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def draw_weights(ax, state: ExplorerState) -> None:
    """Per-step weights of base (gamma_i) and tuned (1 - gamma_i) as stacked bars, in sampling order."""
    ax.clear()
    gb, gt = state.step_weights()
    i = np.arange(1, len(gb) + 1)
    ax.bar(i, gb, color=_color("base"), label="base γ")
    ax.bar(i, gt, bottom=gb, color=_color("draft"), label="tuned 1 − γ")
    ax.set(xlim=(0.4, len(gb) + 0.6), ylim=(0, 1.05), xlabel="sampler step (1 = first, s = 1)", ylabel="weight")
    ax.set_title(f"per-step weights, {len(gb)} steps", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class PreviewPlot:
    """Rows base / DRaFT / AIG and one column per previewed prompt (a single prompt: the panels side by side); each
    cell is drawn by `draw(ax, stored, prompt_index, color=...)`, the domain's `draw_samples`. The axes are made
    once per layout; later previews redraw only the panels whose samples changed (a new gamma: the AIG row)."""

    def __init__(self, fig, draw: Optional[DrawSamples] = None):
        self.fig, self.draw = fig, draw
        self.layout = None
        self.axes: dict[tuple[str, int], Any] = {}
        self.shown: dict[str, np.ndarray] = {}  # the samples each panel shows now

    def update(self, preview: Optional[Preview]) -> None:
        if preview is None or self.draw is None:
            self.fig.clear()
            self.layout, self.shown = None, {}
            self.fig.text(0.5, 0.5, "no preview backend", ha="center")
            return
        names, cols = list(preview.panels), preview.columns
        layout = (tuple(names), tuple(cols))
        if layout != self.layout:
            self._build(names, cols)
            self.layout = layout
        side_by_side = len(cols) == 1
        for name in names:
            x = preview.panels[name]
            if self.shown.get(name) is x:  # cached base / DRaFT samples: already drawn
                continue
            self.shown[name] = x
            for j in cols:
                ax = self.axes[(name, j)]
                ax.clear()
                rows = preview.groups == j
                self.draw(ax, x[rows], preview.groups[rows], color=family_color(name))
                if side_by_side:
                    ax.set_title(PANEL_LABEL.get(name, name), fontsize=8)
                else:
                    if name == names[0]:  # many captions side by side (the world's 16): wrapped, not overlapping
                        ax.set_title(textwrap.fill(_short(preview.prompts[j], 28), max(10, 160 // len(cols))),
                                     fontsize=8 if len(cols) <= 8 else 7)
                    if j == cols[0]:
                        ax.set_ylabel(PANEL_LABEL.get(name, name), fontsize=8)
        what = f"prompt {_short(preview.prompts[cols[0]], 40)!r}, " if side_by_side else ""
        self.fig.suptitle(f"AIG γ = {_short(preview.spec, 60)}\n{what}{preview.num_steps} steps, the same x_T in every "
                          f"{'panel' if side_by_side else 'row'} ({preview.seconds:.2f} s)", fontsize=8)

    def _build(self, names: list[str], cols: list[int]) -> None:
        self.fig.clear()
        self.shown = {}
        shape = (1, len(names)) if len(cols) == 1 else (len(names), len(cols))
        grid = self.fig.subplots(*shape, squeeze=False)
        if getattr(self.fig, "get_layout_engine", lambda: None)() is None:  # not inside a constrained snapshot
            self.fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=0.87, wspace=0.04, hspace=0.04)
        self.axes = {(name, j): grid[0][r] if len(cols) == 1 else grid[r][c]
                     for r, name in enumerate(names) for c, j in enumerate(cols)}


def draw_preview(fig, preview: Optional[Preview], draw: Optional[DrawSamples]) -> None:
    """Draw a preview on a fresh figure (see PreviewPlot)."""
    PreviewPlot(fig, draw).update(preview)


def pareto_table(metrics: Optional[pd.DataFrame], prompt_set: str = "coverage") -> pd.DataFrame:
    """metrics.csv rows of one prompt set as a (method, setting) x metric table (empty without metrics)."""
    if metrics is None or not len(metrics):
        return pd.DataFrame()
    return metrics[metrics.prompt_set == prompt_set].pivot_table(index=["method", "setting"], columns="metric",
                                                                 values="value", sort=False)


def draw_pareto(ax, metrics: Optional[pd.DataFrame], diversity: str, preview: Optional[Preview] = None,
                prompt_set: str = "coverage", y: str = "reward") -> None:
    """The run's reward-diversity points (metrics.csv: a curve per method family and per-branch guidance variant)
    and the current curve's preview point (a gold star; hollow circles: base and DRaFT on the preview's samples)."""
    ax.clear()
    t = pareto_table(metrics, prompt_set)
    if diversity in t.columns and y in t.columns:
        for fam in FAMILY_CURVES:
            curves: dict[Any, list] = {}
            for i in t.index:
                if i[0] == fam:
                    curves.setdefault(Method.parse(*i).scales, []).append(i)
            for scales, idx in curves.items():
                pts = t.loc[idx, [diversity, y]].dropna()
                st = STYLE[fam]
                variant = "" if scales is None else f" cfg={scales[0]:g}/{scales[1]:g}"
                ax.plot(pts[diversity], pts[y], marker=st["marker"], color=st["color"], label=st["label"] + variant,
                        ms=4, lw=1, alpha=0.8, ls="--" if variant else "-")
        for fam in SINGLE_POINTS:
            if (fam, "-") in t.index:
                ax.scatter(t.loc[(fam, "-"), diversity], t.loc[(fam, "-"), y], s=60, zorder=5, edgecolor="k",
                           color=_color(fam), label=f"{STYLE[fam]['label']} (run)")
    if preview is not None and {diversity, y} <= set(preview.metrics.columns):
        m = preview.metrics
        for name in SINGLE_POINTS:
            ax.scatter(m.loc[name, diversity], m.loc[name, y], s=60, facecolor="none", lw=1.5, zorder=6,
                       edgecolor=_color(name), label=f"{PANEL_LABEL[name]} (preview)")
        ax.scatter(m.loc["aig", diversity], m.loc["aig", y], marker="*", s=260, color="gold", edgecolor="k",
                   zorder=7, label=f"current γ (preview, n={int(m.loc['aig', 'n'])})")
    ax.set(xlabel=label(diversity), ylabel=label(y))
    ax.set_title("reward vs diversity: run (metrics.csv) and preview", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="lower right")


def snapshot_figure(state: ExplorerState, preview: Optional[Preview], metrics: Optional[pd.DataFrame],
                    diversity: str, draw: Optional[DrawSamples] = None) -> Figure:
    """One static figure of the explorer (curve, weights, Pareto; preview below) for saving and for notebooks."""
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.5])
    a, b, c = top.subplots(1, 3)
    draw_curve(a, state)
    draw_weights(b, state)
    draw_pareto(c, metrics, diversity, preview)
    draw_preview(bottom, preview, draw)
    return fig


def figure_png(fig, dpi: int = 80) -> bytes:
    """PNG bytes of a figure (any backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
