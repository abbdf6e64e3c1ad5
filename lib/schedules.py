"""The guidance schedules gamma(s): the weight of the *base* model at normalised time s = t / T.

AIG (paper Eq. 10-11) mixes the two predictions as
    eps_aig = gamma(s) * eps_base + (1 - gamma(s)) * eps_tuned,
with gamma(1) = 1 (pure noise: base) and gamma(0) = 0 (clean end: tuned model).
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
    """gamma = 1 if s > c else 0: combined generation (ImageReFL Eq. 3), base above the switch point."""

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
        return PchipInterpolator(xs, ys, extrapolate=False)(np.clip(s, xs[0], xs[-1]))

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


def step_weights(gamma: Schedule | str, timesteps, num_train_timesteps: int = 1000) -> np.ndarray:
    """gamma at each sampler timestep t (s = t / num_train_timesteps): (num_steps,) base weights."""
    s = np.asarray([float(t) for t in timesteps], dtype=np.float64) / num_train_timesteps
    return parse(gamma)(s)
