"""Fig. 5 of the AIG paper: FID penalises reference mismatch, the spectral distances (Eq. 13-14) do not.

D1 is an anisotropic 2-D Gaussian; D2 has nearly the same mean but a tighter spread (covariance scaled by
`shrink`^2); D3 has D1's spread, rotated by `angle` and shifted by `shift`. FID (Eq. 12) prefers D2, SCD and
LSCD prefer D3, because a rotation and a translation leave the covariance spectrum unchanged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib import metrics


def rotation(angle: float) -> np.ndarray:
    """2-D rotation matrix by `angle` radians: (2, 2)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def make_sets(
    n: int,
    rng: np.random.Generator,
    *,
    stds: tuple[float, float] = (1.0, 0.4),
    shrink: float = 0.5,
    d2_offset: tuple[float, float] = (0.1, 0.05),
    shift: tuple[float, float] = (2.0, 1.0),
    angle: float = np.pi / 3,
) -> dict[str, np.ndarray]:
    """Samples of D1, D2, D3, each (n, 2); one standard-normal draw per set from rng."""
    scale = np.diag(stds)  # (2, 2): D1 = z @ scale
    d1 = rng.standard_normal((n, 2)) @ scale
    d2 = shrink * rng.standard_normal((n, 2)) @ scale + np.asarray(d2_offset)
    d3 = rng.standard_normal((n, 2)) @ scale @ rotation(angle).T + np.asarray(shift)
    return {"D1": d1, "D2": d2, "D3": d3}


def distance_table(sets: dict[str, np.ndarray], ref: str = "D1") -> pd.DataFrame:
    """FID, SCD, LSCD of every other set against `ref` (rows: set, columns: metric; lower is closer)."""
    rows = {k: {"fid": metrics.fid(sets[ref], v), "scd": metrics.scd(sets[ref], v),
                "lscd": metrics.lscd(sets[ref], v)} for k, v in sets.items() if k != ref}
    return pd.DataFrame.from_dict(rows, orient="index")


def preferred(table: pd.DataFrame) -> dict[str, str]:
    """For each metric, the set with the smallest distance (the one the metric 'prefers')."""
    return {m: str(table[m].idxmin()) for m in table.columns}


def plot_sets(sets: dict[str, np.ndarray], table: pd.DataFrame, max_points: int = 600):
    """Scatter of the sets (first max_points of each) with their FID / SCD / LSCD against D1 in the legend."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    for (name, x), colour in zip(sets.items(), ("k", "tab:orange", "tab:green")):
        label = name if name not in table.index else (
            name + ": " + ", ".join(f"{m.upper()} {table.loc[name, m]:.3g}" for m in table.columns))
        ax.scatter(x[:max_points, 0], x[:max_points, 1], s=3, alpha=0.5, color=colour, label=label)
    ax.set_aspect("equal"), ax.legend(fontsize=7, markerscale=3, loc="upper left")
    ax.set_title("Fig. 5: reference mismatch vs spread", fontsize=9)
    fig.tight_layout()
    return fig
