"""Hypervolume on a fixed, method-independent scale, and the choice of a small subset of a front.

Every seed range is scored on its own unit square: reward x = (r - r_base) / (r_DRaFT - r_base) and diversity
y = (d - d_DRaFT) / (d_base - d_DRaFT) (a minimised metric is flipped first), both measured on that range's seeds. The
ideal point (DRaFT's reward at the base model's diversity) is (1, 1); the reference point (base's reward at DRaFT's
diversity) is (0, 0), so base (0, 1) and DRaFT (1, 0) add no volume and a family's hypervolume does not depend on
which other methods were measured. (`lib.pareto.dominance_table` instead takes the worst point of all methods as
reference; the numbers of the two tables are not comparable.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lib.pareto import front_mask, hypervolume


class NoSquare(ValueError):
    """Base and DRaFT do not span a reward-diversity square (e.g. a metric on which they are equal)."""


def unit_points(points, base: Sequence[float], draft: Sequence[float], maximize_div: bool) -> np.ndarray:
    """(reward, diversity) points (N, 2) on the unit square of base and DRaFT: (N, 2), both axes maximised."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    sign = 1.0 if maximize_div else -1.0
    span = np.array([draft[0] - base[0], sign * (base[1] - draft[1])])
    if np.any(span <= 0):
        raise NoSquare(f"base {tuple(base)} and DRaFT {tuple(draft)} do not span a reward-diversity square "
                         "(DRaFT must have the higher reward and the lower diversity)")
    return np.stack([(p[:, 0] - base[0]) / span[0], sign * (p[:, 1] - draft[1]) / span[1]], axis=1)


def unit_hypervolume(unit) -> float:
    """Area dominated by unit points (N, 2) above the reference (0, 0) (ideal = (1, 1))."""
    u = np.asarray(unit, dtype=np.float64).reshape(-1, 2)
    return hypervolume(u, [0.0, 0.0], [True, True]) if len(u) else 0.0


def greedy_subset(unit, size: int) -> list[int]:
    """Indices of at most `size` points chosen one by one for the largest gain in hypervolume (ties: lower index);
    points that add nothing are left out. The first index is the best single point."""
    u = np.asarray(unit, dtype=np.float64).reshape(-1, 2)
    chosen: list[int] = []
    current = 0.0
    while len(chosen) < size:
        gains = [unit_hypervolume(u[chosen + [i]]) - current if i not in chosen else -1.0 for i in range(len(u))]
        best = int(np.argmax(gains)) if gains else -1
        if best < 0 or gains[best] <= 1e-12:
            break
        chosen.append(best)
        current += gains[best]
    return chosen


def pareto_indices(points, maximize: Sequence[bool]) -> np.ndarray:
    """Indices of the non-dominated points of (N, M) points, in input order: (K,)."""
    p = np.asarray(points, dtype=np.float64)
    return np.flatnonzero(front_mask(p, maximize)) if len(p) else np.zeros(0, dtype=int)
