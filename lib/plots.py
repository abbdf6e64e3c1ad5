"""Figures of a run's metrics: reward-diversity Pareto fronts (AIG paper Fig. 4, 17-20), CLIP-diversity
(Fig. 21-24), reward-KL (Fig. 3a) and training curves. Sample grids are drawn by the domains."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import pandas as pd

from lib.drawing import STYLE, save  # noqa: F401  (save is re-exported for the notebooks)
from lib.methods import Method
from lib.metrics import METRICS, label



def _table(df: pd.DataFrame, prompt_set: str) -> pd.DataFrame:
    return df[df.prompt_set == prompt_set].pivot_table(index=["method", "setting"], columns="metric", values="value", sort=False)


def _curves(t: pd.DataFrame, fam: str) -> dict[str, list]:
    """Index rows of one family grouped into curves: one per tuned adapter and per-branch guidance variant ('' = DRaFT
    with the domain's guidance)."""
    out: dict[str, list] = {}
    for i in t.index:
        if i[0] == fam:
            m = Method.parse(*i)
            variant = (f" tuned={m.adapter}" if m.adapter else "") + \
                ("" if m.scales is None else f" cfg={m.scales[0]:g}/{m.scales[1]:g}")
            out.setdefault(variant, []).append(i)
    return out


MIX_STYLE = dict(color="tab:brown", marker="P", label="LoRA mix (α, β)")  # DRaFT Sec. 5.3


def pareto_figure(df: pd.DataFrame, diversity: Sequence[str], prompt_set: str = "coverage", y: str = "reward",
                  title: str = "") -> plt.Figure:
    """One panel per diversity metric: y (reward) against diversity, a curve per method family (dotted: a named tuned
    adapter, dashed: per-branch guidance), the LoRA-mixing grid as points, base, DRaFT, ideal."""
    t = _table(df, prompt_set)
    fig, axes = plt.subplots(1, len(diversity), figsize=(4.2 * len(diversity), 3.8), squeeze=False)
    for ax, div in zip(axes[0], diversity):
        for fam in ("kl", "lora_scale", "combined", "aig"):
            for variant, idx in _curves(t, fam).items():
                pts = t.loc[idx, [div, y]].dropna()
                st = STYLE[fam]
                ax.plot(pts[div], pts[y], marker=st["marker"], color=st["color"], label=st["label"] + variant, ms=4,
                        lw=1.2, alpha=0.9, ls="--" if "cfg=" in variant else ":" if variant else "-")
        mix = t.loc[[i for i in t.index if i[0] == "lora_mix"], [div, y]].dropna() if {div, y} <= set(t.columns) else []
        if len(mix):  # a grid, not a curve: points
            ax.scatter(mix[div], mix[y], s=18, alpha=0.8, **MIX_STYLE)
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


# ------------------------------------------------------------------------------- ground truth (the SD world)
def _family(method: str) -> dict:
    return STYLE.get(method, dict(color="tab:gray", marker="o", label=method))


def _scatter_families(ax, t: pd.DataFrame, x: str, y: str) -> None:
    """One marker per method x setting of metrics table t (index (method, setting)), coloured by family."""
    seen = set()
    for (method, setting), row in t[[x, y]].dropna().iterrows():
        st = _family(method)
        ax.scatter(row[x], row[y], color=st["color"], marker=st["marker"], s=60 if method in ("base", "draft") else 25,
                   edgecolor="k" if method in ("base", "draft") else "none", zorder=5 if method in ("base", "draft") else 3,
                   label=None if method in seen else st["label"])
        seen.add(method)


def truth_correlations(df: pd.DataFrame, diversity: Sequence[str], truths: Sequence[str] = ("true_coverage",
                       "mode_entropy"), prompt_set: str = "coverage") -> pd.DataFrame:
    """How well each diversity proxy tracks the truth across the sweep's methods: Spearman and Pearson correlation
    of the proxy, signed so that +1 means "more diverse by the proxy <=> more diverse in truth"."""
    t = _table(df, prompt_set)
    rows = []
    for d in diversity:
        sign = 1.0 if (d not in METRICS or METRICS[d].maximize) else -1.0
        for truth in truths:
            pts = t[[d, truth]].dropna()
            if len(pts) < 3:
                continue
            rows.append(dict(proxy=d, truth=truth, n=len(pts),
                             spearman=sign * pts[d].rank().corr(pts[truth].rank()),
                             pearson=sign * pts[d].corr(pts[truth])))
    return pd.DataFrame(rows)


def diversity_truth_figure(df: pd.DataFrame, diversity: Sequence[str], truth: str = "true_coverage",
                           prompt_set: str = "coverage") -> plt.Figure:
    """Each diversity proxy (FID, Recall, SCD, LSCD, DinoDiversity, ...) against the true mode coverage, one point per
    method x setting; the panel title gives the signed Spearman correlation across methods."""
    t = _table(df, prompt_set)
    corr = truth_correlations(df, diversity, (truth,), prompt_set).set_index("proxy")
    fig, axes = plt.subplots(1, len(diversity), figsize=(3.8 * len(diversity), 3.6), squeeze=False)
    for ax, d in zip(axes[0], diversity):
        _scatter_families(ax, t, truth, d)
        rho = corr.loc[d, "spearman"] if d in corr.index else float("nan")
        ax.set(xlabel=label(truth), ylabel=label(d), title=f"signed Spearman ρ = {rho:.2f}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"diversity proxies against the ground truth ({prompt_set} set)")
    fig.tight_layout()
    return fig


def proxy_truth_figure(df: pd.DataFrame, pairs: Sequence[tuple[str, str]] = (("reward", "true_preference"),
                       ("reward_alt", "true_preference_alt")), prompt_set: str = "coverage") -> plt.Figure:
    """Proxy reward against the annotator's true preference across the sweep's methods, one panel per reward."""
    t = _table(df, prompt_set)
    pairs = [(x, y) for x, y in pairs if x in t and y in t]
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(4.6 * max(len(pairs), 1), 3.8), squeeze=False)
    for ax, (x, y) in zip(axes[0], pairs):
        _scatter_families(ax, t, x, y)
        ax.set(xlabel=label(x), ylabel=label(y))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"proxy reward against true preference ({prompt_set} set)")
    fig.tight_layout()
    return fig


def goodhart_figure(ck: pd.DataFrame, mark: Optional[int] = None) -> plt.Figure:
    """Along DRaFT's training checkpoints (lib.evaluate.checkpoint_metrics): proxy reward and true preference (left),
    true coverage and prompt recognition (middle), proxy reward against true preference (right, the Goodhart curve);
    `mark` draws the run's own training length (train.steps) on the first two."""
    t = ck.pivot_table(index="step", columns="metric", values="value").sort_index()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    if mark is not None and t.index.min() < mark < t.index.max():
        for ax in axes[:2]:
            ax.axvline(mark, color="0.4", lw=1, ls=":", label=f"the run's DRaFT ({mark} steps)")
    ax = axes[0]
    ax.plot(t.index, t["reward"], "o-", color="tab:red", label=label("reward"))
    ax.set(xlabel="DRaFT training step", ylabel=label("reward"))
    if "true_preference" in t:
        twin = ax.twinx()
        twin.plot(t.index, t["true_preference"], "s--", color="tab:green", label=label("true_preference"))
        twin.set_ylabel(label("true_preference"))
        twin.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="upper left")
    for col, st in (("true_coverage", "o-"), ("prompt_accuracy", "s--"), ("recall", "^:")):
        if col in t:
            axes[1].plot(t.index, t[col], st, label=label(col))
    axes[1].set(xlabel="DRaFT training step", ylim=(-0.02, 1.05))
    axes[1].legend(fontsize=7)
    if "true_preference" in t:
        axes[2].plot(t["reward"], t["true_preference"], "o-", color="tab:purple")
        for step, row in t.iterrows():
            axes[2].annotate(str(step), (row["reward"], row["true_preference"]), fontsize=7, xytext=(3, 3),
                             textcoords="offset points")
        axes[2].set(xlabel=label("reward"), ylabel=label("true_preference"), title="Goodhart curve (labels: step)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
