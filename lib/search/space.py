"""The search space over gamma schedules and the search's parameters (params section `search:`).

A schedule of the space is a monotone cubic (PCHIP, `lib.schedules.Spline`) through the control points
    (0, g_0), (s_1, g_1), ..., (s_k, g_k), (1, g_{k+1}),   0 < s_1 < ... < s_k < 1,   g_0 <= g_1 <= ... <= g_{k+1},
with g_0 = 0 and g_{k+1} = 1 (AIG paper Eq. 10-11: base model at s = 1, tuned model at s = 0) unless `free_ends`.
It is monotone by construction: a point of the unit cube u in [0, 1]^m (what the optimiser samples) is mapped to an
ordered m-tuple by the order-statistics map (`ordered`, Devroye's method)
    v_m = u_m^(1/m),   v_j = v_{j+1} * u_j^(1/j),
which is a bijection from the open cube onto {0 < v_1 < ... < v_m < 1} and turns a uniform u into a uniform ordered
tuple, so no part of the space is favoured. The gamma values g_1..g_k come from k coordinates; the interior positions
s_1..s_k from k more when `free_positions` (else s_j = j / (k + 1)). PCHIP through monotone points is monotone.
Values are rounded to `decimals` places (rounding is monotone, so the order stays) and positions are kept at least
10^-decimals apart; the rounded spec string is what a trial scores, exports and `lib.schedules.parse` reads back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from lib.errors import ConfigError, check
from lib.metrics import DIVERSITY_METRICS
from lib.schedules import Spline, parse

PAPER_POWER = ("power:1", "power:1.25", "power:1.5", "power:2", "power:3", "power:4", "power:5")  # AIG A.7.3
STEP = ("step:0.1", "step:0.2", "step:0.3", "step:0.4", "step:0.5", "step:0.6", "step:0.8")  # combined generation
SIGMOID = tuple(f"sigmoid:10,{c}" for c in ("0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"))  # a smoothed step:c


@dataclass(frozen=True)
class SearchConfig:
    """The gamma search of notebook 07: space, objectives, budget, seed ranges, and the families it is compared to."""

    trials: int = 40  # completed trials the study should hold (a resumed study runs only the missing ones)
    population: int = 10  # NSGA-II population size (the first generation is random)
    control_points: int = 3  # k interior control points
    free_positions: bool = True  # search the interior positions s_j too (else s_j = j / (k + 1))
    free_ends: bool = False  # search gamma(0) and gamma(1) too (else 0 and 1)
    decimals: int = 3  # rounding of the exported spec
    diversity: str = "recall"  # the second objective (lib.metrics.METRICS), against the base model's samples
    per_prompt: int = 0  # samples per coverage prompt in every seed range; 0: the run's sweep.samples_per_prompt
    selection_offset: int = 10_000_000  # seeds of the selection range: paired_seeds(P, per_prompt, selection_offset)
    heldout_offset: int = 20_000_000  # held-out range r: offset heldout_offset + r * P * per_prompt
    heldout_repeats: int = 4  # disjoint held-out seed ranges (the hypervolume interval is over these)
    front_size: int = 7  # searched schedules re-measured: a subset of the selection front by hypervolume contribution
    seed: int = 0  # the sampler's seed (reruns give the same trials)
    power: tuple[str, ...] = PAPER_POWER
    step: tuple[str, ...] = STEP
    sigmoid: tuple[str, ...] = SIGMOID

    def __post_init__(self):
        check("search.trials", self.trials, self.trials >= 1, "an integer >= 1")
        check("search.population", self.population, self.population >= 2, "an integer >= 2")
        check("search.decimals", self.decimals, 2 <= self.decimals <= 6, "an integer in [2, 6]")
        check("search.control_points", self.control_points,
              self.control_points >= (0 if self.free_ends else 1) and self.control_points < 10**self.decimals // 2,
              f"an integer >= {0 if self.free_ends else 1} (>= 0 with free_ends) and < 10^decimals / 2")
        check("search.diversity", self.diversity, self.diversity in DIVERSITY_METRICS,
              "one of " + ", ".join(DIVERSITY_METRICS))
        check("search.per_prompt", self.per_prompt, self.per_prompt == 0 or self.per_prompt >= 2,
              "0 (the run's sweep.samples_per_prompt) or an integer >= 2")
        check("search.selection_offset", self.selection_offset, self.selection_offset >= 0, "an integer >= 0")
        check("search.heldout_offset", self.heldout_offset, self.heldout_offset >= 0, "an integer >= 0")
        check("search.heldout_repeats", self.heldout_repeats, self.heldout_repeats >= 2,
              "an integer >= 2 (the interval needs two held-out ranges)")
        check("search.front_size", self.front_size, self.front_size >= 1, "an integer >= 1")
        for key in ("power", "step", "sigmoid"):
            for spec in getattr(self, key):
                try:
                    parse(spec)
                except ValueError as e:
                    raise ConfigError(f"search.{key}: {e}") from None

    @property
    def dimension(self) -> int:
        """Number of unit coordinates a trial samples."""
        return self.values + (self.control_points if self.free_positions else 0)

    @property
    def values(self) -> int:
        """Number of searched gamma values: k, or k + 2 with free ends."""
        return self.control_points + (2 if self.free_ends else 0)


def param_names(cfg: SearchConfig) -> list[str]:
    """The unit coordinates of a trial: g1..gm (values), then s1..sk (positions, when searched)."""
    return [f"g{j}" for j in range(1, cfg.values + 1)] + \
        ([f"s{j}" for j in range(1, cfg.control_points + 1)] if cfg.free_positions else [])


def ordered(u: Sequence[float]) -> np.ndarray:
    """Order-statistics map: u in [0, 1]^m -> v_1 <= ... <= v_m in [0, 1], uniform over ordered tuples: (m,)."""
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)  # (m,)
    v, top = np.empty(len(u)), 1.0
    for j in range(len(u), 0, -1):
        top = top * u[j - 1] ** (1.0 / j)
        v[j - 1] = top
    return v


def unit_of(v: Sequence[float]) -> np.ndarray:
    """Inverse of `ordered` for 0 < v_1 <= ... <= v_m <= 1: u_j = (v_j / v_{j+1})^j with v_{m+1} = 1: (m,)."""
    v = np.asarray(v, dtype=np.float64)
    if len(v) and (np.any(np.diff(v) < 0) or v[0] <= 0 or v[-1] > 1):
        raise ValueError(f"unit_of needs 0 < v_1 <= ... <= v_m <= 1, got {v.tolist()}")
    nxt = np.append(v[1:], 1.0)
    return (v / nxt) ** np.arange(1, len(v) + 1)


def _positions(cfg: SearchConfig, u: Sequence[float] | None) -> np.ndarray:
    """Interior positions in units of 10^-decimals: strictly increasing integers in [1, 10^d - 1]: (k,)."""
    scale, k = 10**cfg.decimals, cfg.control_points
    s = ordered(u) if u is not None else np.arange(1, k + 1) / (k + 1)
    q = np.rint(s * scale).astype(np.int64)
    for j in range(k):  # at least one unit above the previous point (s = 0 is the first)
        q[j] = max(q[j], (q[j - 1] if j else 0) + 1)
    for j in range(k - 1, -1, -1):  # and one unit below the next (s = 1 is the last)
        q[j] = min(q[j], (q[j + 1] if j + 1 < k else scale) - 1)
    return q


def spline_of(params: Mapping[str, float], cfg: SearchConfig) -> Spline:
    """The (rounded) monotone spline of a trial's unit coordinates (names from `param_names`)."""
    scale, k = 10**cfg.decimals, cfg.control_points
    g = ordered([params[f"g{j}"] for j in range(1, cfg.values + 1)])  # (m,) non-decreasing
    g = np.rint(g * scale).astype(np.int64)  # rounding keeps the order
    if not cfg.free_ends:
        g = np.concatenate([[0], g, [scale]])
    pos = _positions(cfg, [params[f"s{j}"] for j in range(1, k + 1)] if cfg.free_positions else None)
    s = np.concatenate([[0], pos, [scale]])  # (k + 2,) strictly increasing
    spec = "spline:" + ",".join(f"{_text(a, cfg.decimals)}={_text(b, cfg.decimals)}" for a, b in zip(s, g))
    out = parse(spec)
    assert isinstance(out, Spline) and out.spec == spec, f"{spec} does not round-trip: {out.spec}"
    return out


def _text(units: int, decimals: int) -> str:
    """A number given in units of 10^-decimals as the schedules' shortest text: 500, 3 -> '0.5'; 1000, 3 -> '1'."""
    x = int(units) / 10**decimals
    return str(int(x)) if x.is_integer() else repr(x)

