"""The gamma explorer's pure state: family, parameters, spline control points and number of sampler steps, and the
validated schedule they describe. No widgets, no models: every edit is either accepted (the schedule changes) or
refused (the schedule stays the last valid one and `message` says why).

What is refused: exactly what the params loader refuses, so any exported spec loads (`lib.schedules.parse`):
p <= 0 (power), k <= 0 (sigmoid), c or g outside [0, 1], a spline with fewer than 2 control points, two control
points at the same s, a typed s or g outside [0, 1] or not a number; and a number of steps outside [1, max_steps].
Not refused, only noted: a gamma that is not monotone in s, or whose ends differ from the convention gamma(1) = 1,
gamma(0) = 0 (`const:g` and `tuned` are legitimate sweep members).

Time is the step-indexed s_i = 1 - i / N of the sampler's step i = 0..N-1 (`lib.schedules.step_s`), the time at
which `lib.guidance.aig` evaluates gamma.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from lib.schedules import Const, Power, Schedule, Sigmoid, Spline, Step, parse, step_s

FAMILIES = ("power", "step", "sigmoid", "const", "spline")


@dataclass(frozen=True)
class Param:
    """A slider of a family: the spec's argument `name`, its range and default."""

    name: str
    label: str
    min: float
    max: float
    step: float
    default: float


PARAMS: dict[str, tuple[Param, ...]] = {
    "power": (Param("p", "p", 0.1, 8.0, 0.05, 2.0),),
    "step": (Param("c", "switch c", 0.0, 1.0, 0.01, 0.5),),
    "sigmoid": (Param("k", "steepness k", 0.5, 50.0, 0.5, 10.0), Param("c", "centre c", 0.0, 1.0, 0.01, 0.5)),
    "const": (Param("g", "g", 0.0, 1.0, 0.01, 0.5),),
}
# The paper's presets (AIG A.7.3: power p; ImageReFL's combined generation: step c) and a few of the other families.
PRESETS: tuple[str, ...] = (
    *(f"power:{p}" for p in ("1", "1.25", "1.5", "2", "3", "4", "5")),
    *(f"step:{c}" for c in ("0.2", "0.4", "0.5", "0.6", "0.8")),
    "sigmoid:10,0.5", "sigmoid:20,0.3", "sigmoid:20,0.7",
    "const:0.5", "base", "tuned",
    "spline:0=0,0.25=0.44,0.5=0.75,0.75=0.94,1=1",
)
SPLINE_FROM_CURVE_AT = (0.0, 0.25, 0.5, 0.75, 1.0)
GRID = 0.01  # clicks and drags snap to this grid in s and gamma


def num_text(x: float) -> str:
    """Shortest text of a float for specs (2.0 -> '2')."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def snap(x: float) -> float:
    """x on the GRID, clamped into [0, 1]."""
    return float(min(1.0, max(0.0, round(round(float(x) / GRID) * GRID, 10))))


@dataclass
class ExplorerState:
    """The explorer's pure state. `schedule` is always valid: edits that would make it invalid are refused.

    Edit methods return True when accepted; when refused they return False, set `message` (starting with
    'refused:') and leave every field unchanged. `max_steps` bounds the number of sampler steps (the scheduler's
    number of training timesteps).
    """

    family: str = "power"
    params: dict[str, dict[str, float]] = field(default_factory=lambda: {
        f: {p.name: p.default for p in ps} for f, ps in PARAMS.items()})
    points: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 0.0), (0.5, 0.75), (1.0, 1.0)])
    num_steps: int = 20
    max_steps: int = 1000
    message: str = ""
    schedule: Schedule = field(init=False)

    def __post_init__(self):
        self.schedule = parse(self.candidate_spec())
        if not 1 <= self.num_steps <= self.max_steps:
            raise ValueError(f"num_steps = {self.num_steps} must lie in [1, {self.max_steps}]")

    # -- the curve ------------------------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """The spec string of the current (valid) schedule; `lib.schedules.parse(spec)` gives it back."""
        return self.schedule.spec

    @property
    def refused(self) -> bool:
        return self.message.startswith("refused")

    def candidate_spec(self, family: Optional[str] = None, params: Optional[dict] = None,
                       points: Optional[Sequence[tuple[float, float]]] = None) -> str:
        """The spec the given (or current) fields describe; it may be invalid."""
        family = family or self.family
        if family == "spline":
            pts = sorted(self.points if points is None else points)
            return "spline:" + ",".join(f"{num_text(s)}={num_text(g)}" for s, g in pts)
        vals = (params or self.params)[family]
        return f"{family}:" + ",".join(num_text(vals[p.name]) for p in PARAMS[family])

    def curve(self, n: int = 201) -> tuple[np.ndarray, np.ndarray]:
        """s on [0, 1] and gamma(s): (n,), (n,)."""
        s = np.linspace(0.0, 1.0, n)
        return s, self.schedule(s)

    def step_s(self) -> np.ndarray:
        """s_i = 1 - i / N of each sampler step i (sampling order; lib.schedules.step_s): (num_steps,)."""
        return step_s(self.num_steps)

    def step_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-step weights (base gamma_i, tuned 1 - gamma_i): (num_steps,), (num_steps,)."""
        g = self.schedule(self.step_s())
        return g, 1.0 - g

    def notes(self) -> str:
        """Informational notes on the current curve (not refusals)."""
        s, g = self.curve(101)
        out = []
        if np.any(np.diff(g) < -1e-9):
            out.append("gamma is not monotone in s")
        if abs(g[-1] - 1) > 1e-6 or abs(g[0]) > 1e-6:
            out.append(f"gamma(1) = {g[-1]:.2f}, gamma(0) = {g[0]:.2f} (convention: 1 and 0)")
        return "note: " + "; ".join(out) if out else ""

    # -- edits ----------------------------------------------------------------------------------------------
    def _commit(self, family: str, params: dict, points: list, what: str = "") -> bool:
        """Accept the new fields if they make a valid schedule, else refuse and keep everything."""
        spec = self.candidate_spec(family, params, points)
        try:
            schedule = parse(spec)
        except ValueError as e:
            reason = str(e).split(": ", 1)[-1].split("; allowed forms")[0]
            self.message = f"refused: {what or spec}: {reason}; the curve stays {self.spec}"
            return False
        self.family, self.params, self.points, self.schedule = family, params, sorted(points), schedule
        self.message = self.notes()
        return True

    def _refuse(self, why: str) -> bool:
        self.message = f"refused: {why}; the curve stays {self.spec}"
        return False

    def select_family(self, family: str) -> bool:
        """Switch family; the spline family starts from the current curve sampled at SPLINE_FROM_CURVE_AT."""
        if family not in FAMILIES:
            return self._refuse(f"family {family!r} is not one of {', '.join(FAMILIES)}")
        if family == self.family:
            return True
        if family == "spline":
            return self.to_spline()
        return self._commit(family, self.params, self.points)

    def set_param(self, name: str, value: float) -> bool:
        """Set a parameter of the current (non-spline) family, e.g. set_param('p', 3) under power."""
        names = [p.name for p in PARAMS.get(self.family, ())]
        if name not in names:
            return self._refuse(f"{self.family} has no parameter {name!r} (it has {', '.join(names) or 'none'})")
        try:
            value = float(value)
        except (TypeError, ValueError):
            return self._refuse(f"{name} = {value!r} is not a number")
        params = {**self.params, self.family: {**self.params[self.family], name: value}}
        return self._commit(self.family, params, self.points, f"{name} = {num_text(value)}")

    def load_spec(self, spec: str) -> bool:
        """Set family, parameters or points from any spec string (a preset, or a typed spec)."""
        try:
            sch = parse(spec)
        except ValueError as e:
            return self._refuse(str(e).split("; allowed forms")[0])
        params, points = dict(self.params), list(self.points)
        if isinstance(sch, Power):
            family, params["power"] = "power", {"p": sch.p}
        elif isinstance(sch, Step):
            family, params["step"] = "step", {"c": sch.c}
        elif isinstance(sch, Sigmoid):
            family, params["sigmoid"] = "sigmoid", {"k": sch.k, "c": sch.c}
        elif isinstance(sch, Const):
            family, params["const"] = "const", {"g": sch.g}
        elif isinstance(sch, Spline):
            family, points = "spline", [tuple(p) for p in sch.points]
        else:  # pragma: no cover - every family of lib.schedules is handled above
            return self._refuse(f"{spec!r}: the explorer has no editor for {type(sch).__name__}")
        return self._commit(family, params, points)

    def to_spline(self, at: Sequence[float] = SPLINE_FROM_CURVE_AT) -> bool:
        """Replace the curve by a spline through the current curve at the given s (gamma rounded to 0.01)."""
        pts = [(float(s), snap(self.schedule(float(s)))) for s in at]
        return self._commit("spline", self.params, pts)

    def add_point(self, s: float, g: float) -> bool:
        """Add a control point from a click: snapped to the grid, clamped into [0, 1] (spline family only)."""
        if self.family != "spline":
            return self._refuse("clicks edit spline control points: choose the spline family first")
        s, g = snap(s), snap(g)
        if any(abs(s - ps) < 1e-12 for ps, _ in self.points):
            return self._refuse(f"there is already a control point at s = {num_text(s)} (drag it instead)")
        return self._commit("spline", self.params, self.points + [(s, g)], f"add {num_text(s)}={num_text(g)}")

    def move_point(self, i: int, s: float, g: float) -> Optional[int]:
        """Move control point i (a drag; snapped and clamped); returns its new index, or None if refused."""
        s, g = snap(s), snap(g)
        if any(abs(s - ps) < 1e-12 for k, (ps, _) in enumerate(self.points) if k != i):
            self._refuse(f"another control point sits at s = {num_text(s)}")
            return None
        pts = [p for k, p in enumerate(self.points) if k != i] + [(s, g)]
        if not self._commit("spline", self.params, pts, f"move to {num_text(s)}={num_text(g)}"):
            return None
        return self.points.index((s, g))

    def remove_point(self, i: int) -> bool:
        """Remove control point i (refused if fewer than 2 would remain)."""
        if not 0 <= i < len(self.points):
            return self._refuse(f"there is no control point {i}")
        pts = [p for k, p in enumerate(self.points) if k != i]
        s, g = self.points[i]
        return self._commit("spline", self.params, pts, f"remove {num_text(s)}={num_text(g)}")

    def nearest_point(self, s: float, g: float) -> tuple[Optional[int], float]:
        """Index of the control point nearest to (s, g) and its distance in data units (None, inf if none)."""
        if not self.points:
            return None, float("inf")
        d = [float(np.hypot(ps - s, pg - g)) for ps, pg in self.points]
        i = int(np.argmin(d))
        return i, d[i]

    def points_text(self) -> str:
        """The control points as a table: one `s=g` per line."""
        return "\n".join(f"{num_text(s)}={num_text(g)}" for s, g in self.points)

    def set_points_text(self, text: str) -> bool:
        """Replace the control points by a typed table: `s=g` per line or comma-separated; '#' starts a comment.

        Typed values are not clamped: a value outside [0, 1] is refused.
        """
        pts = []
        items = [it.strip() for line in text.splitlines() for it in line.split("#")[0].split(",")]
        for item in filter(None, items):
            s, eq, g = item.partition("=")
            try:
                if not eq:
                    raise ValueError
                pts.append((float(s), float(g)))
            except ValueError:
                return self._refuse(f"table row {item!r} is not s=g with two numbers")
        return self._commit("spline", self.params, pts, "table")

    def set_num_steps(self, n: int) -> bool:
        """Number of sampler steps for the markers, the weights and the preview."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= self.max_steps:
            return self._refuse(f"num_steps = {n!r} must be an integer in [1, {self.max_steps}]")
        self.num_steps = int(n)
        self.message = self.notes()
        return True
