"""Pareto fronts for mixed maximised / minimised axes, hypervolume, and front dominance."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _oriented(points, maximize: Sequence[bool]) -> np.ndarray:
    """(N, M) points flipped so that every axis is maximised."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(maximize):
        raise ValueError(f"points must be (N, {len(maximize)}) to match maximize={list(maximize)}, got {p.shape}")
    return p * np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)


def dominates(a, b, maximize: Sequence[bool]) -> bool:
    """True if point a is at least as good as b on every axis and strictly better on one."""
    x, y = _oriented([a, b], maximize)
    return bool((x >= y).all() and (x > y).any())


def front_mask(points, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask (N,) of the non-dominated points."""
    p = _oriented(points, maximize)
    ge = (p[:, None, :] >= p[None, :, :]).all(-1)  # ge[i, j]: i weakly better than j everywhere
    gt = (p[:, None, :] > p[None, :, :]).any(-1)
    dominated = (ge & gt).any(axis=0)
    return ~dominated


def front(points, maximize: Sequence[bool]) -> np.ndarray:
    """The non-dominated points (K, M), sorted by the first axis."""
    p = np.asarray(points, dtype=np.float64)
    f = p[front_mask(p, maximize)]
    return f[np.argsort(f[:, 0], kind="stable")]


def hypervolume(points, ref, maximize: Sequence[bool]) -> float:
    """Volume dominated by the points and bounded by the reference point (2-D exact sweep; M-D by slicing)."""
    p = _oriented(points, maximize)
    r = _oriented([ref], maximize)[0]
    p = p[(p > r).all(axis=1)]
    if len(p) == 0:
        return 0.0
    return float(_hv(p - r))


def _hv(p: np.ndarray) -> float:
    """Hypervolume of maximisation points against the origin (all coordinates > 0)."""
    if p.shape[1] == 1:
        return float(p[:, 0].max())
    vol = 0.0
    # slice along axis 0: between consecutive distinct x, the dominated set is the HV of the points to the right
    xs = np.unique(p[:, 0])[::-1]
    for i, x in enumerate(xs):
        nxt = xs[i + 1] if i + 1 < len(xs) else 0.0
        vol += (x - nxt) * _hv(p[p[:, 0] >= x][:, 1:])
    return vol


def front_dominates(a, b, maximize: Sequence[bool]) -> bool:
    """True if every point of front b is weakly dominated by some point of front a, and a != b as sets."""
    pa, pb = _oriented(a, maximize), _oriented(b, maximize)
    covered = all(((pa >= q).all(axis=1)).any() for q in pb)
    strictly = any(not ((pb >= q).all(axis=1)).any() for q in pa)
    return bool(covered and strictly)


def coverage(a, b, maximize: Sequence[bool]) -> float:
    """C(a, b): fraction of b's points weakly dominated by some point of a (Zitzler's set coverage)."""
    pa, pb = _oriented(a, maximize), _oriented(b, maximize)
    return float(np.mean([((pa >= q).all(axis=1)).any() for q in pb]))


FAMILIES = ("aig", "lora_scale", "kl", "combined")


def dominance_table(df, diversity: str, prompt_set: str = "coverage", maximize_div: bool = False):
    """Per method family: normalised hypervolume of (reward, diversity) with base and DRaFT included in every
    family (both are free endpoints), and whether AIG's front dominates each other family's.

    Axes are scaled so that the ideal point (DRaFT's reward, base's diversity) is 1 and the reference point
    (the worst reward and worst diversity of all points) is 0; a hypervolume of 1 would reach the ideal.
    """
    import pandas as pd

    d = df[df.prompt_set == prompt_set].pivot_table(index=["method", "setting"], columns="metric", values="value")
    pts = d[["reward", diversity]].dropna()
    base, draft = pts.loc[("base", "-")].to_numpy(), pts.loc[("draft", "-")].to_numpy()
    sign = 1.0 if maximize_div else -1.0
    ideal = np.array([draft[0], base[1]])
    ref = np.array([pts["reward"].min(), (pts[diversity] * sign).min() * sign])
    scale = np.abs(ideal - ref)
    scale[scale == 0] = 1.0

    def unit(x):  # (N, 2) -> both axes maximised, ideal at (1, 1), reference at (0, 0)
        x = np.asarray(x, dtype=np.float64)
        return np.stack([(x[:, 0] - ref[0]) / scale[0], sign * (x[:, 1] - ref[1]) / scale[1]], 1)

    fronts, rows = {}, []
    for fam in FAMILIES:
        own = pts.loc[[i for i in pts.index if i[0] == fam]].to_numpy()
        if not len(own):
            continue
        allp = unit(np.vstack([own, base, draft]))
        fronts[fam] = allp
        rows.append(dict(diversity=diversity, method=fam, points=len(own),
                         hypervolume=hypervolume(allp, [0.0, 0.0], [True, True])))
    out = pd.DataFrame(rows)
    if "aig" in fronts:
        out["aig_dominates"] = [front_dominates(front(fronts["aig"], [True, True]), front(fronts[f], [True, True]), [True, True])
                                if f != "aig" else np.nan for f in out.method]
        out["aig_covers"] = [coverage(fronts["aig"], front(fronts[f], [True, True]), [True, True]) if f != "aig" else np.nan
                             for f in out.method]
    return out
