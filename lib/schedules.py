"""The guidance schedules gamma(s): the weight of the *base* model at normalised time s in [0, 1].

AIG (paper Eq. 10-11) mixes the two predictions as
    eps_aig = gamma(s) * eps_base + (1 - gamma(s)) * eps_tuned,
with gamma(1) = 1 (pure noise: base) and gamma(0) = 0 (clean end: tuned model).

Time is the **sampling step**, as in the AIG authors' code (NeMo-Aligner's `annealed_guidance`, weight of the
tuned model (i / N)^p) and ImageReFL's AIG baseline: at step i = 0..N-1 of an N-step chain s_i = 1 - i / N, so
power:p gives gamma_i = 1 - (i / N)^p, exactly 1 at the first step and 1/N-ish (never 0) at the last. `StepClock`
maps a scheduler timestep t to s_i through the scheduler's own timestep list, so it is right for any spacing
("leading", "trailing", Euler sigmas) and any step count.

Each family is a frozen dataclass, callable on a float, a numpy array or a torch tensor (the same type
comes back), with a `spec` string that `parse` turns back into an equal object.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = Any  # a float, an np.ndarray or a torch.Tensor: gamma returns the same type

FORMS = (
    "power:p (p > 0)",
    "step:c (0 <= c <= 1)",
    "sigmoid:k,c (k > 0, 0 <= c <= 1)",
    "spline:s0=g0,s1=g1,... (>= 2 points, s and g in [0, 1], s distinct)",
    "const:g (0 <= g <= 1)",
    "base",
    "tuned",
)


def _apply(fn, s: Any) -> Any:
    """Evaluate a numpy function of s and return the input's type (float, ndarray or tensor)."""
    if isinstance(s, (float, int)):
        return float(fn(np.asarray(float(s), dtype=np.float64)))
    if isinstance(s, np.ndarray):
        return fn(s.astype(np.float64))
    import torch

    if isinstance(s, torch.Tensor):
        out = fn(s.detach().to("cpu", torch.float64).numpy())
        return torch.as_tensor(out, device=s.device, dtype=s.dtype if s.is_floating_point() else torch.float32)
    raise TypeError(f"gamma(s) takes a float, a numpy array or a torch tensor, got {type(s).__name__}")


def _fmt(x: float) -> str:
    """Shortest round-tripping text of a float (2.0 -> '2', 0.25 -> '0.25')."""
    return repr(float(x)).removesuffix(".0") if float(x).is_integer() else repr(float(x))


class Schedule:
    """Base class: gamma(s) with s in [0, 1]; subclasses define `_np` and `spec`."""

    spec: str

    def __call__(self, s: Array) -> Array:
        return _apply(lambda a: np.clip(self._np(np.clip(a, 0.0, 1.0)), 0.0, 1.0), s)

    def _np(self, s: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class Power(Schedule):
    """gamma = 1 - (1 - s)^p (AIG paper A.7.3; p = 1 is linear)."""

    p: float

    def _np(self, s):
        return 1.0 - (1.0 - s) ** self.p

    @property
    def spec(self) -> str:
        return f"power:{_fmt(self.p)}"


@dataclass(frozen=True)
class Step(Schedule):
    """gamma = 1 if s > c else 0: combined generation (ImageReFL Eq. 3), base above the switch point.

    With s_i = 1 - i / N the first ceil((1 - c) N) steps use the base model and the remaining ones the tuned model
    (NeMo-Aligner's `step_<f>` with f = 1 - c; ImageReFL's `start_timestep_index` = ceil((1 - c) N))."""

    c: float

    def _np(self, s):
        return (s > self.c).astype(np.float64)

    @property
    def spec(self) -> str:
        return f"step:{_fmt(self.c)}"


@dataclass(frozen=True)
class Sigmoid(Schedule):
    """gamma = 1 / (1 + exp(-k (s - c))) (AIG paper A.7.3, the sigmoid variant)."""

    k: float
    c: float

    def _np(self, s):
        return 1.0 / (1.0 + np.exp(-self.k * (s - self.c)))

    @property
    def spec(self) -> str:
        return f"sigmoid:{_fmt(self.k)},{_fmt(self.c)}"


@dataclass(frozen=True)
class Spline(Schedule):
    """Monotone cubic (PCHIP) through control points (s_i, g_i), constant outside them, clipped to [0, 1]."""

    points: tuple[tuple[float, float], ...]

    def _np(self, s):
        from scipy.interpolate import PchipInterpolator

        xs, ys = zip(*self.points)
        out = PchipInterpolator(xs, ys, extrapolate=False)(np.clip(s, xs[0], xs[-1]))
        for x, y in self.points:  # exactly the control value at a knot (PCHIP may be off by one ulp there)
            out = np.where(s == x, y, out)
        return out

    @property
    def spec(self) -> str:
        return "spline:" + ",".join(f"{_fmt(s)}={_fmt(g)}" for s, g in self.points)


@dataclass(frozen=True)
class Const(Schedule):
    """A fixed mix gamma = g at every step; `base` is const:1 and `tuned` is const:0."""

    g: float

    def _np(self, s):
        return np.full_like(s, self.g, dtype=np.float64)

    @property
    def spec(self) -> str:
        return {1.0: "base", 0.0: "tuned"}.get(float(self.g), f"const:{_fmt(self.g)}")


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"bad gamma spec {spec!r}: {why}; allowed forms: " + ", ".join(FORMS))


def _num(spec: str, text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise _bad(spec, f"{text!r} is not a number") from None
    if not math.isfinite(x):
        raise _bad(spec, f"{text!r} is not finite")
    return x


def _unit(spec: str, name: str, x: float) -> float:
    if not 0.0 <= x <= 1.0:
        raise _bad(spec, f"{name} = {x} is outside [0, 1]")
    return x


def parse(spec: str | Schedule) -> Schedule:
    """Turn a spec string (see FORMS) into a schedule; a Schedule passes through unchanged."""
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, str):
        raise _bad(str(spec), f"expected a string, got {type(spec).__name__}")
    text = spec.strip().replace(" ", "")
    if text == "base":
        return Const(1.0)
    if text == "tuned":
        return Const(0.0)
    family, sep, args = text.partition(":")
    if not sep or not args:
        raise _bad(spec, "expected 'family:arguments'")
    if family == "power":
        p = _num(spec, args)
        if p <= 0:
            raise _bad(spec, f"p = {p} must be > 0")
        return Power(p)
    if family == "step":
        return Step(_unit(spec, "c", _num(spec, args)))
    if family == "const":
        return Const(_unit(spec, "g", _num(spec, args)))
    if family == "sigmoid":
        parts = args.split(",")
        if len(parts) != 2:
            raise _bad(spec, "sigmoid takes two numbers k,c")
        k, c = (_num(spec, a) for a in parts)
        if k <= 0:
            raise _bad(spec, f"k = {k} must be > 0")
        return Sigmoid(k, _unit(spec, "c", c))
    if family == "spline":
        pts = []
        for item in args.split(","):
            s, eq, g = item.partition("=")
            if not eq:
                raise _bad(spec, f"control point {item!r} is not s=g")
            pts.append((_unit(spec, "s", _num(spec, s)), _unit(spec, "g", _num(spec, g))))
        pts.sort()
        if len(pts) < 2:
            raise _bad(spec, "a spline needs at least 2 control points")
        if len({s for s, _ in pts}) != len(pts):
            raise _bad(spec, "control points must have distinct s")
        return Spline(tuple(pts))
    raise _bad(spec, f"unknown family {family!r}")


def step_s(num_steps: int) -> np.ndarray:
    """s_i = 1 - i / N of the sampling steps i = 0..N-1: (N,), from 1 down to 1/N."""
    n = int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps = {n} must be >= 1")
    return 1.0 - np.arange(n, dtype=np.float64) / n


def step_weights(gamma: Schedule | str, num_steps: int) -> np.ndarray:
    """gamma(s_i) at each sampling step i = 0..N-1 (the base model's weight per step, AIG paper Eq. 11): (N,)."""
    return parse(gamma)(step_s(num_steps))


class StepClock:
    """t -> s_i = 1 - i / N where t is the i-th of the chain's N timesteps (sampling order, first = noisiest).

    `timesteps` is the scheduler's list after `set_timesteps(N)`; t may be a number, a 0-d or a (B,) tensor.
    A t that is not one of the chain's timesteps is an error (a different step count or scheduler).
    """

    def __init__(self, timesteps: Any):
        self.timesteps = np.asarray([float(t) for t in timesteps], dtype=np.float64)  # (N,)
        if self.timesteps.ndim != 1 or len(self.timesteps) < 1:
            raise ValueError("StepClock needs a non-empty list of timesteps")

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def index(self, t: Any) -> np.ndarray:
        """Step index i of each t: () or (B,) int array."""
        tv = np.asarray(t.detach().cpu().double().numpy() if hasattr(t, "detach") else t, dtype=np.float64)
        d = np.abs(tv[..., None] - self.timesteps)  # (..., N)
        i = d.argmin(-1)
        if np.any(np.take_along_axis(d, i[..., None], -1)[..., 0] > 1e-4 * np.maximum(1.0, np.abs(tv))):
            raise ValueError(f"timestep {tv.tolist()} is not one of this chain's {self.num_steps} timesteps "
                             f"{self.timesteps.tolist()}: the guidance was built for another step count or scheduler")
        return i

    def __call__(self, t: Any) -> np.ndarray:
        """s_i of each t: () or (B,) float64 array."""
        return 1.0 - self.index(t) / self.num_steps
