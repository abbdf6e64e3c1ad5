"""The gamma explorer of notebook 05: pick a gamma(s) family or draw a spline, see the curve, the per-step weights,
a live preview of samples under that curve next to base and DRaFT, its point on the run's Pareto plot, and export
its spec string into a params file's `sweep: aig:` list.

Layers, each usable without a browser:
- `ExplorerState`: the pure state (family, parameters, spline control points, number of sampler steps) and its
  validated schedule. Every edit is either accepted (the schedule changes) or refused (the schedule stays the last
  valid one and `message` says why).
- Preview backends with `preview(schedule, num_steps=None) -> Preview`: `ToyPreview` (the 2-D toy on CPU: samples of
  every prompt, reward and diversity metrics against the base samples) and `SDPreview` (a diffusers pipeline on a
  GPU server through `lib.sd`: an image grid for one prompt and a few seeds). Base and DRaFT are cached; only the
  AIG samples are recomputed. All three start from the same per-sample noise (paired seeds).
- `append_to_params(path, spec)`: append a spec to a params file's `sweep: aig:` list (only if absent), keeping every
  other key (and, where the list is a one-line or block YAML list, every comment), written atomically.
- `GammaExplorer`: the ipywidgets view; its callbacks (`on_press`, `on_motion`, `on_release`, and the widgets'
  observers) only translate events into state edits and redraw.
- `open_explorer(params_file, run_dir, backend, ...)`: notebook 05's entry point for a finished run.

What is refused (a visible message; the last valid curve stays): exactly what the params loader refuses, so any
exported spec loads (`lib.schedules.parse`): p <= 0 (power), k <= 0 (sigmoid), c or g outside [0, 1], a spline with
fewer than 2 control points, two control points at the same s, a typed s or g outside [0, 1] or not a number; and a
number of steps outside [1, num_train_timesteps]. Not refused, only noted under the curve: a gamma that is not
monotone in s, or whose ends differ from the convention gamma(1) = 1, gamma(0) = 0 (`const:g` and `tuned` are
legitimate sweep members).

Mouse on the curve plot (spline family; needs the ipympl canvas, `%matplotlib widget`):
- left click on empty space adds a control point at (s, gamma), snapped to a 0.01 grid and clamped into [0, 1];
- left press on a control point (within 10 pixels) and drag moves it (the preview is recomputed on release);
- right click, or shift + left click, on a control point removes it.
The control points are also an editable table (one `s=g` per line). Choosing the spline family starts from the
current curve sampled at s = 0, 0.25, 0.5, 0.75, 1.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import pandas as pd

from lib.schedules import Const, Power, Schedule, Sigmoid, Spline, Step, parse

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
PICK_PX = 10.0  # a press within this many pixels of a control point grabs (or removes) it


def _num(x: float) -> str:
    """Shortest text of a float for specs (2.0 -> '2')."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _snap(x: float) -> float:
    return float(min(1.0, max(0.0, round(round(float(x) / GRID) * GRID, 10))))


def step_s(scheduler, num_steps: int) -> np.ndarray:
    """Normalised time s = t / num_train_timesteps of each sampler step, in sampling order: (num_steps,)."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(int(num_steps))
    return np.asarray([float(t) for t in sched.timesteps], dtype=np.float64) / sched.config.num_train_timesteps


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Limit torch's intra-op threads inside the block, then restore them. The toy's matrices are tiny: one thread
    is fastest, and on a busy machine several threads are many times slower (measured: 16x on 2 loaded cores)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------------- state
@dataclass
class ExplorerState:
    """The explorer's pure state. `schedule` is always valid: edits that would make it invalid are refused.

    Edit methods return True when accepted; when refused they return False, set `message` (starting with
    'refused:') and leave every field unchanged.
    """

    family: str = "power"
    params: dict[str, dict[str, float]] = field(default_factory=lambda: {
        f: {p.name: p.default for p in ps} for f, ps in PARAMS.items()})
    points: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 0.0), (0.5, 0.75), (1.0, 1.0)])
    num_steps: int = 20
    scheduler: Any = None  # a diffusers scheduler: markers and weights at its timesteps (toy DDIM by default)
    message: str = ""
    schedule: Schedule = field(init=False)

    def __post_init__(self):
        if self.scheduler is None:
            from lib.toy import toy_scheduler

            self.scheduler = toy_scheduler()
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self._steps: dict[int, np.ndarray] = {}
        self.schedule = parse(self.candidate_spec())
        if not 1 <= self.num_steps <= self.num_train_timesteps:
            raise ValueError(f"num_steps = {self.num_steps} must lie in [1, {self.num_train_timesteps}]")

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
            return "spline:" + ",".join(f"{_num(s)}={_num(g)}" for s, g in pts)
        vals = (params or self.params)[family]
        return f"{family}:" + ",".join(_num(vals[p.name]) for p in PARAMS[family])

    def curve(self, n: int = 201) -> tuple[np.ndarray, np.ndarray]:
        """s on [0, 1] and gamma(s): (n,), (n,)."""
        s = np.linspace(0.0, 1.0, n)
        return s, self.schedule(s)

    def step_s(self) -> np.ndarray:
        """s of each sampler step for num_steps (sampling order): (num_steps,)."""
        if self.num_steps not in self._steps:
            self._steps[self.num_steps] = step_s(self.scheduler, self.num_steps)
        return self._steps[self.num_steps]

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
        return self._commit(self.family, params, self.points, f"{name} = {_num(value)}")

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
        pts = [(float(s), _snap(self.schedule(float(s)))) for s in at]
        return self._commit("spline", self.params, pts)

    def add_point(self, s: float, g: float) -> bool:
        """Add a control point from a click: snapped to the grid, clamped into [0, 1] (spline family only)."""
        if self.family != "spline":
            return self._refuse("clicks edit spline control points: choose the spline family first")
        s, g = _snap(s), _snap(g)
        if any(abs(s - ps) < 1e-12 for ps, _ in self.points):
            return self._refuse(f"there is already a control point at s = {_num(s)} (drag it instead)")
        return self._commit("spline", self.params, self.points + [(s, g)], f"add {_num(s)}={_num(g)}")

    def move_point(self, i: int, s: float, g: float) -> Optional[int]:
        """Move control point i (a drag; snapped and clamped); returns its new index, or None if refused."""
        s, g = _snap(s), _snap(g)
        if any(abs(s - ps) < 1e-12 for k, (ps, _) in enumerate(self.points) if k != i):
            self._refuse(f"another control point sits at s = {_num(s)}")
            return None
        pts = [p for k, p in enumerate(self.points) if k != i] + [(s, g)]
        if not self._commit("spline", self.params, pts, f"move to {_num(s)}={_num(g)}"):
            return None
        return self.points.index((s, g))

    def remove_point(self, i: int) -> bool:
        """Remove control point i (refused if fewer than 2 would remain)."""
        if not 0 <= i < len(self.points):
            return self._refuse(f"there is no control point {i}")
        pts = [p for k, p in enumerate(self.points) if k != i]
        s, g = self.points[i]
        return self._commit("spline", self.params, pts, f"remove {_num(s)}={_num(g)}")

    def nearest_point(self, s: float, g: float) -> tuple[Optional[int], float]:
        """Index of the control point nearest to (s, g) and its distance in data units (None, inf if none)."""
        if not self.points:
            return None, float("inf")
        d = [float(np.hypot(ps - s, pg - g)) for ps, pg in self.points]
        i = int(np.argmin(d))
        return i, d[i]

    def points_text(self) -> str:
        """The control points as a table: one `s=g` per line."""
        return "\n".join(f"{_num(s)}={_num(g)}" for s, g in self.points)

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
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= self.num_train_timesteps:
            return self._refuse(f"num_steps = {n!r} must be an integer in [1, {self.num_train_timesteps}]")
        self.num_steps = int(n)
        self.message = self.notes()
        return True


# ----------------------------------------------------------------------------------------------------- preview
@dataclass
class Preview:
    """What a backend returns for one schedule.

    kind "points": panels[m] are 2-D samples (N, 2) with `groups` (N,) their prompt index and `fields` a reward
    map (x, y, r) per prompt; kind "images": panels[m] are uint8 images (N, H, W, 3), one per seed. Panels are
    "base", "draft" and "aig" (the schedule). `metrics` has one row per panel (reward and, for points, the diversity
    metrics against the base panel, as in metrics.csv) and a column n.
    """

    spec: str
    kind: str
    panels: dict[str, np.ndarray]
    titles: list[str]
    metrics: pd.DataFrame
    groups: Optional[np.ndarray] = None
    fields: Optional[list] = None
    seconds: float = 0.0
    num_steps: int = 0


class PreviewBackend(Protocol):
    """A preview backend: `scheduler` and `num_steps` (its defaults) and `preview(schedule, num_steps)`."""

    kind: str
    scheduler: Any
    num_steps: int

    def preview(self, schedule: Schedule | str, num_steps: Optional[int] = None) -> Preview:
        ...


class _Cache(OrderedDict):
    """A small LRU cache of previews by (spec, num_steps)."""

    def __init__(self, size: int = 32):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class ToyPreview:
    """Live preview on the 2-D toy: `samples_per_prompt` samples of every coverage prompt under base, DRaFT and the
    current gamma, with reward and diversity metrics against the base samples (lib.evaluate.method_rows).

    Sample i of prompt j has seed seed_offset + j * seed_stride + i: with the run's seed_offset and
    samples_per_prompt as stride these are the first samples of the run's coverage set (notebook 02).
    """

    kind = "points"

    def __init__(self, domain, tuned, samples_per_prompt: int = 64, seed_offset: int = 0,
                 seed_stride: Optional[int] = None, diversity: Sequence[str] = ("fid", "precision", "recall", "scd", "lscd"),
                 k: int = 10, num_steps: Optional[int] = None):
        if samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt = {samples_per_prompt} must be >= 2")
        self.domain, self.tuned = domain, tuned
        self.scheduler, self.num_steps = domain.scheduler, int(num_steps or domain.num_steps)
        self.prompts = domain.prompts("coverage")
        stride = max(int(seed_stride or samples_per_prompt), samples_per_prompt)
        self.pairs = [(j, seed_offset + j * stride + i) for j in range(len(self.prompts)) for i in range(samples_per_prompt)]
        self.groups = np.array([j for j, _ in self.pairs])
        self.diversity, self.k = tuple(diversity), min(k, len(self.pairs) - 1)
        self._fixed: dict[int, dict] = {}
        self._cache = _Cache()
        self._fields = None

    def samples(self, spec: str, num_steps: Optional[int] = None) -> np.ndarray:
        """Samples (N, 2) of the AIG denoiser with this gamma spec ('base' and 'tuned' give base and DRaFT)."""
        from lib.methods import Method, method_denoiser
        from lib.sampling import generate

        with method_denoiser(self.domain, Method("aig", spec), self.tuned) as den:
            x = generate(self.domain, den, self.prompts, self.pairs, batch_size=len(self.pairs),
                         num_steps=int(num_steps or self.num_steps))
        return np.asarray(x, dtype=np.float32)  # stored form: points (N, 2)

    def _rows(self, label: str, x: np.ndarray, ref_f: np.ndarray) -> dict:
        from lib.evaluate import method_rows
        from lib.methods import Method

        rows = method_rows(self.domain, Method(label), "coverage", x, self.groups, ref_f, self.diversity, self.k, len(x))
        return {"method": label, **{r["metric"]: r["value"] for r in rows}, "n": len(x)}

    def features(self, x: np.ndarray) -> np.ndarray:
        """Coverage-metric features of stored samples (as notebook 03 computes them)."""
        return np.asarray(self.domain.features(self.domain.from_storage(x)), dtype=np.float64)

    def _base_and_draft(self, n: int) -> dict:
        if n not in self._fixed:
            base, draft = self.samples("base", n), self.samples("tuned", n)
            ref_f = self.features(base)
            self._fixed[n] = dict(base=base, draft=draft, ref_f=ref_f,
                                  rows=[self._rows("base", base, ref_f), self._rows("draft", draft, ref_f)])
        return self._fixed[n]

    def fields(self) -> list:
        """Reward maps (x, y, r) of every prompt, for the background of the preview."""
        if self._fields is None:
            self._fields = [self.domain.reward_field(j) for j in range(len(self.prompts))] \
                if hasattr(self.domain, "reward_field") else None
        return self._fields

    def preview(self, schedule: Schedule | str, num_steps: Optional[int] = None) -> Preview:
        spec, n = parse(schedule).spec, int(num_steps or self.num_steps)

        def make() -> Preview:
            t0 = time.perf_counter()
            with torch_threads(1):
                fixed = self._base_and_draft(n)
                x = self.samples(spec, n)
                rows = fixed["rows"] + [self._rows("aig", x, fixed["ref_f"])]
            return Preview(spec, "points", dict(base=fixed["base"], draft=fixed["draft"], aig=x), list(self.prompts),
                           pd.DataFrame(rows).set_index("method"), self.groups, self.fields(),
                           time.perf_counter() - t0, n)

        return self._cache.get_or((spec, n), make)


class SDPreview:
    """Image grid on a diffusers pipeline (GPU server): one prompt, a few seeds, base / DRaFT / AIG rows.

    The pipeline's UNet must carry the DRaFT LoRA adapter `adapter_name` (SDDomain.load_adapter). Base and DRaFT run
    through `lib.sd.method_context`, AIG through `lib.sd.aig_unet` as a drop-in `pipe.unet`; every row starts from
    the same latents (`lib.sd.latents_for` with the seeds). `reward(images (B, 3, H, W) in [0, 1], prompts)`, if
    given, adds the mean reward of each row.
    """

    kind = "images"

    def __init__(self, pipe, prompt: str, seeds: Sequence[int] = (0, 1, 2, 3), num_steps: int = 25,
                 guidance_scale: float = 7.5, height: Optional[int] = None, width: Optional[int] = None,
                 adapter_name: str = "draft", reward: Optional[Callable] = None, prompts: Sequence[str] = ()):
        self.pipe, self.seeds, self.num_steps = pipe, [int(s) for s in seeds], int(num_steps)
        self.guidance_scale, self.adapter_name, self.reward = float(guidance_scale), adapter_name, reward
        size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
        self.height, self.width = int(height or size), int(width or size)
        self.prompts = list(prompts) or [prompt]
        self.prompt = prompt
        self._fixed: dict[tuple, dict] = {}
        self._cache = _Cache(8)

    @classmethod
    def from_domain(cls, domain, prompt: str = "", seeds: Sequence[int] = (0, 1, 2, 3)) -> "SDPreview":
        """From an SDDomain whose adapter is loaded; prompt defaults to the first coverage prompt."""
        prompts = domain.prompts("coverage")
        return cls(domain.pipe, prompt or prompts[0], seeds, reward=domain.reward, prompts=prompts,
                   **domain.pipeline_kwargs())

    @property
    def scheduler(self):
        return self.pipe.scheduler

    def set_prompt(self, prompt: str) -> None:
        """Preview another prompt (clears the caches)."""
        self.prompt = prompt
        self._fixed.clear()
        self._cache.clear()

    def latents(self):
        """The shared x_T of the grid (B, C, h, w)."""
        from lib.sd import latents_for

        return latents_for(self.pipe, self.seeds, self.height, self.width)

    def images(self, method: str, spec: Optional[str] = None, num_steps: Optional[int] = None) -> np.ndarray:
        """uint8 images (B, H, W, 3): method 'base' or 'draft', or 'aig' with a gamma spec."""
        import torch

        from lib import sd

        if method == "aig":
            ctx = sd.using_unet(self.pipe, sd.aig_unet(self.pipe, spec, adapter_name=self.adapter_name))
        else:
            ctx = sd.method_context(self.pipe, method, "-", self.adapter_name)
        with ctx, torch.no_grad():
            out = self._call(num_steps)
        return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)

    def _call(self, num_steps: Optional[int]) -> np.ndarray:
        return self.pipe(prompt=[self.prompt] * len(self.seeds), latents=self.latents(),
                         num_inference_steps=int(num_steps or self.num_steps), guidance_scale=self.guidance_scale,
                         height=self.height, width=self.width, output_type="np").images

    def _row(self, label: str, images: np.ndarray) -> dict:
        row = {"method": label, "n": len(images)}
        if self.reward is not None:
            import torch

            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                row["reward"] = float(self.reward(x.to(self.pipe.device), [self.prompt] * len(images)).float().mean())
        return row

    def preview(self, schedule: Schedule | str, num_steps: Optional[int] = None) -> Preview:
        spec, n = parse(schedule).spec, int(num_steps or self.num_steps)

        def make() -> Preview:
            t0 = time.perf_counter()
            key = (self.prompt, n)
            if key not in self._fixed:
                base, draft = self.images("base", num_steps=n), self.images("draft", num_steps=n)
                self._fixed[key] = dict(base=base, draft=draft, rows=[self._row("base", base), self._row("draft", draft)])
            fixed = self._fixed[key]
            x = self.images("aig", spec, n)
            rows = fixed["rows"] + [self._row("aig", x)]
            return Preview(spec, "images", dict(base=fixed["base"], draft=fixed["draft"], aig=x),
                           [f"seed {s}" for s in self.seeds], pd.DataFrame(rows).set_index("method"),
                           seconds=time.perf_counter() - t0, num_steps=n)

        return self._cache.get_or((self.prompt, spec, n), make)


# ------------------------------------------------------------------------------------------------------ export
def _flow(specs: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in specs) + "]"


def _edit_text(text: str, specs: list[str], spec: str) -> Optional[str]:
    """Append `spec` to the sweep.aig list by editing lines (keeps comments and layout); None if no simple edit."""
    lines = text.splitlines(keepends=True)
    top = [i for i, ln in enumerate(lines) if re.match(r"sweep:\s*(#.*)?$", ln.rstrip("\n"))]
    if not top:
        nl = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{nl}sweep:\n  aig: {_flow(specs + [spec])}\n"
    start = top[0] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].strip() and not lines[i][0].isspace()
                and not lines[i].lstrip().startswith("#")), len(lines))
    keys = [i for i in range(start, end) if re.match(r"\s+[A-Za-z_]\w*:", lines[i])]
    if not keys:
        return None
    indent = re.match(r"\s+", lines[keys[0]]).group(0)
    aig = [i for i in keys if re.match(rf"{indent}aig:", lines[i])]
    if not aig:
        lines.insert(start, f"{indent}aig: {_flow(specs + [spec])}\n")
        return "".join(lines)
    i = aig[0]
    m = re.match(rf"({indent}aig:)\s*(\[.*\])?\s*(#.*)?$", lines[i].rstrip("\n"))
    if not m:
        return None
    if m.group(2) is not None:  # a one-line flow list
        comment = f"  {m.group(3)}" if m.group(3) else ""
        lines[i] = f"{m.group(1)} {_flow(specs + [spec])}{comment}\n"
        return "".join(lines)
    items = [k for k in range(i + 1, end) if re.match(r"\s+-\s", lines[k])]  # a block list
    if not items:
        return None
    last = items[-1]
    dash = re.match(r"(\s+-\s+)", lines[last]).group(1)
    if not lines[last].endswith("\n"):
        lines[last] += "\n"
    lines.insert(last + 1, f"{dash}{json.dumps(spec)}\n")
    return "".join(lines)


def append_to_params(path: str | Path, spec: str) -> tuple[bool, str]:
    """Append a gamma spec to the params file's `sweep: aig:` list if it is not there yet; returns (appended, message).

    The file is loaded and the result validated as the runner will load it (lib.config); other keys are kept. Where
    the list is a one-line `[...]` or a block `- ...` list, only that list changes (comments stay); otherwise the
    file is rewritten from the loaded mapping (comments are lost, the message says so). When the file has no
    `sweep.aig`, the new list is the default sweep plus the spec, so nothing the runner sampled before is dropped.
    Written atomically (lib.io).
    """
    import yaml

    from lib.config import ConfigError, SweepConfig, from_dict
    from lib.io import write_text

    path = Path(path)
    spec = parse(spec).spec
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("sweep") or {}, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'sweep' mapping")
    sweep = data.get("sweep") or {}
    specs = [str(s) for s in sweep.get("aig", SweepConfig().aig)]
    if spec in {parse(s).spec for s in specs}:
        return False, f"{spec} is already in {path.name}: sweep.aig"
    new = copy.deepcopy(data)
    new["sweep"] = {**sweep, "aig": specs + [spec]}
    from_dict(new)  # the result must load as a run config
    edited = _edit_text(text, specs, spec)
    note = ""
    if edited is None or yaml.safe_load(edited) != new:
        edited = yaml.safe_dump(new, sort_keys=False, default_flow_style=None)
        note = " (rewritten from the loaded YAML: comments were dropped)"
    write_text(path, edited)
    return True, f"appended {spec} to {path.name}: sweep.aig{note}"


# -------------------------------------------------------------------------------------------------- drawing
def _style(name: str) -> dict:
    from lib.plots import STYLE

    return STYLE.get(name, dict(color="tab:gray", marker="o", label=name))


PANEL_LABEL = {"base": "base", "draft": "DRaFT", "aig": "AIG γ"}


def draw_curve(ax, state: ExplorerState) -> None:
    """gamma(s) with markers at the sampler's steps and the spline's control points."""
    ax.clear()
    s, g = state.curve()
    ax.plot(s, g, color=_style("aig")["color"], lw=2)
    ss = state.step_s()
    ax.plot(ss, state.schedule(ss), "o", ms=4, color="k", label=f"sampler steps ({state.num_steps})", zorder=4)
    if state.family == "spline":
        ps, pg = zip(*state.points)
        ax.plot(ps, pg, "s", ms=9, mfc="white", mec=_style("aig")["color"], mew=2, label="control points", zorder=5)
    ax.set(xlim=(-0.03, 1.03), ylim=(-0.05, 1.05), xlabel="s = t / T   (1 = noise, 0 = clean)",
           ylabel="γ(s): weight of the base model")
    ax.set_title(f"γ: {state.spec}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def draw_weights(ax, state: ExplorerState) -> None:
    """Per-step weights of base (gamma) and tuned (1 - gamma) as stacked bars, in sampling order."""
    ax.clear()
    gb, gt = state.step_weights()
    i = np.arange(1, len(gb) + 1)
    ax.bar(i, gb, color=_style("base")["color"], label="base γ")
    ax.bar(i, gt, bottom=gb, color=_style("draft")["color"], label="tuned 1 − γ")
    ax.set(xlim=(0.4, len(gb) + 0.6), ylim=(0, 1.05), xlabel="sampler step (1 = first, s ≈ 1)", ylabel="weight")
    ax.set_title(f"per-step weights, {len(gb)} steps", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")


class PreviewPlot:
    """Rows base / DRaFT / AIG; columns the prompts (points) or the seeds (images). The axes and artists are made
    once; later previews with the same layout only replace the data (fast redraws)."""

    def __init__(self, fig, lim: float = 2.6):
        self.fig, self.lim = fig, lim
        self.layout = None
        self.artists: dict[tuple[int, int], Any] = {}
        self.axes = None

    def update(self, preview: Optional[Preview]) -> None:
        if preview is None:
            self.fig.clear()
            self.layout = None
            self.fig.text(0.5, 0.5, "no preview backend", ha="center")
            return
        names = list(preview.panels)
        layout = (preview.kind, tuple(names), tuple(preview.titles))
        if layout != self.layout:
            self._build(preview, names)
            self.layout = layout
        for r, name in enumerate(names):
            x = preview.panels[name]
            for c in range(len(preview.titles)):
                art = self.artists[(r, c)]
                if preview.kind == "points":
                    art.set_offsets(x[preview.groups == c])
                else:
                    art.set_data(x[c])
            self.axes[r][0].set_ylabel(PANEL_LABEL.get(name, "AIG γ"), fontsize=8)
        spec = preview.spec if len(preview.spec) <= 60 else preview.spec[:57] + "..."
        self.fig.suptitle(f"AIG γ = {spec}\n{preview.num_steps} steps, the same x_T in every row "
                          f"({preview.seconds:.2f} s)", fontsize=8)

    def _build(self, preview: Preview, names: list[str]) -> None:
        self.fig.clear()
        cols = len(preview.titles)
        self.axes = self.fig.subplots(len(names), cols, squeeze=False)
        if getattr(self.fig, "get_layout_engine", lambda: None)() is None:  # not inside a constrained snapshot
            self.fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=0.87, wspace=0.04, hspace=0.04)
        lim = self.lim
        for r, name in enumerate(names):
            for c in range(cols):
                ax = self.axes[r][c]
                if preview.kind == "points":
                    if preview.fields:
                        gx, gy, z = preview.fields[c]
                        ax.imshow(z, extent=(gx.min(), gx.max(), gy.min(), gy.max()), origin="lower", cmap="Greys",
                                  alpha=0.5)
                    self.artists[(r, c)] = ax.scatter(np.zeros(0), np.zeros(0), s=3, alpha=0.6, lw=0,
                                                      color=_style(name)["color"])
                    ax.set(xlim=(-lim, lim), ylim=(-lim, lim))
                else:
                    self.artists[(r, c)] = ax.imshow(preview.panels[name][c])
                ax.set(xticks=[], yticks=[])
                if r == 0:
                    ax.set_title(preview.titles[c], fontsize=8)


def draw_preview(fig, preview: Optional[Preview]) -> None:
    """Draw a preview on a fresh figure (see PreviewPlot)."""
    PreviewPlot(fig).update(preview)


def draw_pareto(ax, metrics: Optional[pd.DataFrame], diversity: str, preview: Optional[Preview] = None,
                prompt_set: str = "coverage") -> None:
    """The run's reward-diversity points (metrics.csv) and the current curve's preview point."""
    from lib.plots import LABEL

    ax.clear()
    if metrics is not None and len(metrics):
        t = metrics[metrics.prompt_set == prompt_set].pivot_table(index=["method", "setting"], columns="metric",
                                                                  values="value", sort=False)
        if diversity in t.columns and "reward" in t.columns:
            for fam in ("kl", "lora_scale", "combined", "aig"):
                pts = t.loc[[i for i in t.index if i[0] == fam], [diversity, "reward"]].dropna()
                if len(pts):
                    st = _style(fam)
                    ax.plot(pts[diversity], pts["reward"], marker=st["marker"], color=st["color"], label=st["label"],
                            ms=4, lw=1, alpha=0.8)
            for fam in ("base", "draft"):
                if (fam, "-") in t.index:
                    ax.scatter(t.loc[(fam, "-"), diversity], t.loc[(fam, "-"), "reward"], s=60, zorder=5, edgecolor="k",
                               color=_style(fam)["color"], label=f"{_style(fam)['label']} (run)")
    if preview is not None and diversity in preview.metrics.columns:
        m = preview.metrics
        for name in ("base", "draft"):
            ax.scatter(m.loc[name, diversity], m.loc[name, "reward"], s=60, facecolor="none", lw=1.5, zorder=6,
                       edgecolor=_style(name)["color"], label=f"{PANEL_LABEL[name]} (preview)")
        ax.scatter(m.loc["aig", diversity], m.loc["aig", "reward"], marker="*", s=260, color="gold", edgecolor="k",
                   zorder=7, label=f"current γ (preview, n={int(m.loc['aig', 'n'])})")
    ax.set(xlabel=LABEL.get(diversity, diversity), ylabel=LABEL["reward"])
    ax.set_title("reward vs diversity: run (metrics.csv) and preview", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="lower right")


def snapshot_figure(state: ExplorerState, preview: Optional[Preview], metrics: Optional[pd.DataFrame],
                    diversity: str):
    """One static figure of the explorer (curve, weights, Pareto; preview below) for saving and for notebooks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.5])
    a, b, c = top.subplots(1, 3)
    draw_curve(a, state)
    draw_weights(b, state)
    draw_pareto(c, metrics, diversity, preview)
    draw_preview(bottom, preview)
    return fig


def figure_png(fig, dpi: int = 80) -> bytes:
    """PNG bytes of a figure (any backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def widget_backend() -> bool:
    """True when matplotlib draws on ipympl canvases (`%matplotlib widget`): clicks reach the kernel."""
    import matplotlib

    b = matplotlib.get_backend().lower()
    return "ipympl" in b or b == "widget"


def new_figure(figsize: tuple[float, float]):
    """A figure on an ipympl canvas under `%matplotlib widget` (not displayed by itself), else on an Agg canvas
    that pyplot does not track (nothing is shown twice under the inline backend)."""
    if widget_backend():
        import matplotlib.pyplot as plt

        with plt.ioff():
            return plt.figure(figsize=figsize)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


# ------------------------------------------------------------------------------------------------------- view
class _Slot:
    """A figure shown in the widget tree: the ipympl canvas itself (`%matplotlib widget`), else a PNG Image."""

    def __init__(self, fig, css: str, dpi: int = 80):
        import ipywidgets as W

        self.fig, self.dpi = fig, dpi
        self.interactive = isinstance(fig.canvas, W.DOMWidget)
        if self.interactive:
            c = fig.canvas
            c.header_visible = c.footer_visible = c.toolbar_visible = c.resizable = False
            self.widget = c
        else:
            self.widget = W.Image(format="png")
        self.widget.add_class(css)

    def draw(self) -> None:
        if self.interactive:
            self.fig.canvas.draw_idle()
        else:
            self.widget.value = figure_png(self.fig, self.dpi)


class GammaExplorer:
    """The ipywidgets view over an ExplorerState and a preview backend (see the module docstring).

    `widget` is the root widget (displaying the explorer displays it). Tests drive the state through the widgets'
    values (their observers call the state's edits) and through `on_press` / `on_motion` / `on_release` with
    matplotlib mouse events on `curve_fig.canvas`.
    """

    def __init__(self, state: ExplorerState, backend: Optional[PreviewBackend] = None,
                 metrics: Optional[pd.DataFrame] = None, params_file: Optional[str | Path] = None,
                 diversity: str = "fid"):
        import ipywidgets as W

        self.state, self.backend, self.metrics = state, backend, metrics
        self.preview: Optional[Preview] = None
        self._drag: Optional[int] = None
        self._syncing = False
        self.events: list[str] = []  # a log of what the callbacks did (for tests and debugging)

        self.family = W.ToggleButtons(options=FAMILIES, value=state.family, description="family")
        self.family.style.button_width = "80px"
        self.preset = W.Dropdown(options=[("custom", "")] + [(p, p) for p in PRESETS], value="", description="preset")
        self.sliders: dict[tuple[str, str], Any] = {}
        for fam, ps in PARAMS.items():
            for p in ps:
                sl = W.FloatSlider(value=state.params[fam][p.name], min=p.min, max=p.max, step=p.step,
                                   description=p.label, continuous_update=False, readout_format=".2f")
                sl.add_class(f"gamma-param-{fam}-{p.name}")
                sl.observe(self._param_changed(p.name), names="value")
                self.sliders[(fam, p.name)] = sl
        top = min(max(100, state.num_steps), state.num_train_timesteps)
        self.steps = W.IntSlider(value=state.num_steps, min=1, max=top, description="steps", continuous_update=False)
        self.steps.add_class("gamma-steps")
        self.table = W.Textarea(value=state.points_text(), description="s=g", continuous_update=False,
                                layout=W.Layout(width="180px", height="140px"))
        self.table.add_class("gamma-table")
        self.spec = W.Text(value=state.spec, description="γ spec", continuous_update=False,
                           layout=W.Layout(width="460px"))
        self.spec.add_class("gamma-spec")
        self.message = W.HTML(layout=W.Layout(min_height="28px", flex="1"))  # beside the spec: the plot never jumps
        self.message.add_class("gamma-message")
        self.diversity = W.Dropdown(options=self._diversity_options(diversity), description="diversity")
        self.metrics_html = W.HTML()
        self.metrics_html.add_class("gamma-metrics")
        self.export_path = W.Text(value=str(params_file or ""), description="params", layout=W.Layout(width="420px"))
        self.export_button = W.Button(description="append to sweep.aig", icon="plus", layout=W.Layout(width="auto"))
        self.export_status = W.HTML()
        self.export_status.add_class("gamma-export-status")

        self.curve_fig = new_figure((9.6, 3.1))
        self.preview_fig = new_figure((5.4, 4.0))
        self.pareto_fig = new_figure((4.0, 3.4))
        self.ax_curve, self.ax_weights = self.curve_fig.subplots(1, 2, width_ratios=[1.3, 1])
        self.curve_fig.subplots_adjust(left=0.07, right=0.99, bottom=0.16, top=0.9, wspace=0.18)
        self.pareto_ax = self.pareto_fig.subplots()
        self.pareto_fig.subplots_adjust(left=0.18, right=0.97, bottom=0.15, top=0.91)
        self.preview_plot = PreviewPlot(self.preview_fig)
        self.curve_slot = _Slot(self.curve_fig, "gamma-curve")
        self.preview_slot = _Slot(self.preview_fig, "gamma-preview")
        self.pareto_slot = _Slot(self.pareto_fig, "gamma-pareto")
        canvas = self.curve_fig.canvas
        self._cids = [canvas.mpl_connect("button_press_event", self.on_press),
                      canvas.mpl_connect("motion_notify_event", self.on_motion),
                      canvas.mpl_connect("button_release_event", self.on_release)]

        self.family.observe(self._family_changed, names="value")
        self.preset.observe(self._preset_changed, names="value")
        self.steps.observe(self._steps_changed, names="value")
        self.table.observe(self._table_changed, names="value")
        self.spec.observe(self._spec_changed, names="value")
        self.diversity.observe(lambda ch: self._draw_pareto(), names="value")
        self.export_button.on_click(self.on_export)

        self.param_box = W.VBox(list(self.sliders.values()))
        self.spline_box = W.VBox([self.table, W.HTML("<small>click: add · drag: move<br>right/shift-click: remove</small>")])
        controls = W.HBox([W.VBox([self.family, W.HBox([self.preset, self.steps]), self.param_box]), self.spline_box])
        wrap = W.Layout(flex_flow="row wrap", align_items="flex-start")
        self.widget = W.VBox([
            controls, W.HBox([self.spec, self.message]), self.curve_slot.widget,
            W.HBox([self.preview_slot.widget, W.VBox([self.diversity, self.pareto_slot.widget])], layout=wrap),
            self.metrics_html, W.HBox([self.export_path, self.export_button], layout=wrap), self.export_status])
        self.widget.add_class("gamma-explorer")
        self.refresh(preview=True)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _diversity_options(self, default: str) -> list[str]:
        opts = ["fid", "precision", "recall", "scd", "lscd"]
        if self.metrics is not None and "metric" in self.metrics:
            have = [m for m in opts if m in set(self.metrics.metric)]
            opts = have or opts
        return [default] + [o for o in opts if o != default] if default in opts else opts

    # -- callbacks ------------------------------------------------------------------------------------------
    def _after(self, what: str, accepted: bool, preview: bool = True) -> None:
        self.events.append(f"{what}: {'ok' if accepted else 'refused'} -> {self.state.spec}")
        self.refresh(preview=preview and accepted)

    def _param_changed(self, name: str):
        def cb(change):
            if self._syncing:
                return
            fam = next(f for (f, n), sl in self.sliders.items() if sl is change["owner"])
            if fam != self.state.family:
                return
            value = round(float(change["new"]), 6)  # slider arithmetic: 2.9499999999999997 -> 2.95
            self._after(f"slider {name}={value}", self.state.set_param(name, value))
        return cb

    def _family_changed(self, change):
        if not self._syncing:
            self._after(f"family {change['new']}", self.state.select_family(change["new"]))

    def _preset_changed(self, change):
        if not self._syncing and change["new"]:
            self._after(f"preset {change['new']}", self.state.load_spec(change["new"]))

    def _steps_changed(self, change):
        if not self._syncing:
            self._after(f"steps {change['new']}", self.state.set_num_steps(int(change["new"])))

    def _table_changed(self, change):
        if not self._syncing:
            ok = self.state.set_points_text(change["new"])
            self.events.append(f"table: {'ok' if ok else 'refused'} -> {self.state.spec}")
            self.refresh(preview=ok, table=ok)  # a refused table keeps the typed text so it can be fixed

    def _spec_changed(self, change):
        if not self._syncing and change["new"] != self.state.spec:
            ok = self.state.load_spec(change["new"])
            self.events.append(f"spec {change['new']}: {'ok' if ok else 'refused'} -> {self.state.spec}")
            self.refresh(preview=ok, spec=ok)

    def _nearest_px(self, event) -> tuple[Optional[int], float]:
        if not self.state.points:
            return None, float("inf")
        xy = self.ax_curve.transData.transform(np.asarray(self.state.points))
        d = np.hypot(xy[:, 0] - event.x, xy[:, 1] - event.y)
        i = int(np.argmin(d))
        return i, float(d[i])

    def on_press(self, event) -> None:
        """Mouse press on the curve: add / grab / remove a spline control point (see the module docstring)."""
        if event.inaxes is not self.ax_curve or event.xdata is None:
            return
        if self.state.family != "spline":
            self._after("click", self.state.add_point(event.xdata, event.ydata))  # refused with a hint
            return
        i, d = self._nearest_px(event)
        near = i is not None and d <= PICK_PX
        # ipympl reports shift as a modifier of the mouse event; other canvases as the key held
        shift = "shift" in str(event.key or "") or "shift" in (getattr(event, "modifiers", None) or ())
        remove = int(event.button or 0) == 3 or shift
        self.events.append(f"press button {int(event.button or 0)}{' +shift' if shift else ''} at "
                           f"({event.xdata:.3f}, {event.ydata:.3f}), nearest point {d:.0f} px")
        if remove:
            if near:
                self._after(f"remove point {i}", self.state.remove_point(i))
            return
        if near:
            self._drag = i
            self.events.append(f"grab point {i}")
            return
        self._after(f"click at ({event.xdata:.3f}, {event.ydata:.3f})", self.state.add_point(event.xdata, event.ydata))

    def on_motion(self, event) -> None:
        """Drag: move the grabbed control point; only the curve is redrawn until release."""
        if self._drag is None or event.inaxes is not self.ax_curve or event.xdata is None:
            return
        new = self.state.move_point(self._drag, event.xdata, event.ydata)
        if new is not None:
            self._drag = new
        self._after(f"drag to ({event.xdata:.3f}, {event.ydata:.3f})", new is not None, preview=False)

    def on_release(self, event) -> None:
        """End of a drag: recompute the preview for the new curve."""
        if self._drag is not None:
            self._drag = None
            self._after("release", True)

    def on_export(self, _button=None) -> None:
        """Append the current spec to the params file's sweep.aig list."""
        path = self.export_path.value.strip()
        try:
            if not path:
                raise ValueError("no params file given")
            ok, msg = append_to_params(path, self.state.spec)
            self.export_status.value = f"<span style='color:{'green' if ok else 'gray'}'>{msg}</span>"
        except Exception as e:  # shown, not raised: a callback has no caller to raise to
            self.export_status.value = f"<span style='color:#b00'>export failed: {e}</span>"
        self.events.append(f"export: {self.export_status.value}")

    # -- drawing --------------------------------------------------------------------------------------------
    def refresh(self, preview: bool = True, table: bool = True, spec: bool = True) -> None:
        """Sync the widgets with the state and redraw (the preview only when asked)."""
        st = self.state
        self._syncing = True
        try:
            self.family.value = st.family
            for (fam, name), sl in self.sliders.items():
                sl.value = st.params[fam][name]
                sl.layout.display = "" if fam == st.family else "none"
            self.spline_box.layout.display = "" if st.family == "spline" else "none"
            self.preset.value = st.spec if st.spec in PRESETS else ""
            self.steps.value = st.num_steps
            if table:
                self.table.value = st.points_text()
            if spec:
                self.spec.value = st.spec
        finally:
            self._syncing = False
        color = "#b00" if st.refused else "#666"
        self.message.value = f"<span style='color:{color}'>{st.message}</span>" if st.message else ""
        draw_curve(self.ax_curve, st)
        draw_weights(self.ax_weights, st)
        self.curve_slot.draw()
        if preview:
            self.update_preview()

    def update_preview(self) -> None:
        """Recompute the preview for the current curve (cached per spec and steps) and redraw it and the Pareto plot."""
        if self.backend is not None:
            try:
                self.preview = self.backend.preview(self.state.schedule, self.state.num_steps)
            except Exception as e:  # keep the last preview and say why
                self.message.value = f"<span style='color:#b00'>preview failed: {type(e).__name__}: {e}</span>"
                return
        self.preview_plot.update(self.preview)
        self.preview_slot.draw()
        self._draw_pareto()

    def _draw_pareto(self) -> None:
        draw_pareto(self.pareto_ax, self.metrics, self.diversity.value, self.preview)
        self.pareto_slot.draw()
        if self.preview is not None:
            table = self.preview.metrics.rename(index=PANEL_LABEL).round(3).to_html(border=0)
            self.metrics_html.value = f"<div style='font-size:12px'><b>preview metrics</b> (diversity against the " \
                                      f"base row; n samples){table}</div>"

    def snapshot(self, path: Optional[str | Path] = None, dpi: int = 80) -> bytes:
        """PNG of the whole explorer state (static); written to path (atomically) if given."""
        png = figure_png(snapshot_figure(self.state, self.preview, self.metrics, self.diversity.value), dpi)
        if path is not None:
            from lib.io import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
        return png

    def summary(self, metrics: Optional[Sequence[str]] = None, digits: int = 2) -> str:
        """The current spec and the preview's metrics (all, or the named ones), rounded, for printed outputs."""
        lines = [f"spec: {self.state.spec}", f"steps: {self.state.num_steps}"]
        if self.preview is not None:
            m = self.preview.metrics.rename(index=PANEL_LABEL)
            cols = [c for c in (metrics or m.columns) if c in m.columns]
            lines.append(m[cols + (["n"] if "n" not in cols else [])].round(digits).to_string())
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- entry point
MADE_BY = {"base": "notebooks/01_training.ipynb", "adapter": "notebooks/01_training.ipynb",
           "metrics": "notebooks/03_metrics.ipynb"}


def require_artefacts(cfg, paths) -> None:
    """Raise FileNotFoundError naming the first missing artefact of the run and the notebook that writes it."""
    need = ([("base", paths.base_model)] if cfg.domain == "toy" else []) + [
        ("adapter", paths.train(0.0) / "adapter.safetensors"), ("metrics", paths.metrics)]
    for what, f in need:
        if not Path(f).exists():
            raise FileNotFoundError(f"the gamma explorer needs {f}, which {MADE_BY[what]} writes: run notebooks 01-03 "
                                    f"for this run first (python -m lib.reproduce <params file> --only 01,02,03)")


def open_explorer(params_file: str | Path, run_dir: str | Path = "", backend: str = "toy",
                  preview_samples: int = 64, initial_spec: str = "power:2", diversity: str = "fid",
                  sd_prompt: str = "", sd_seeds: Sequence[int] = (0, 1, 2, 3), export_to: str | Path = "") -> GammaExplorer:
    """Notebook 05: the explorer on a finished run (results/<run> or run_dir) with the toy or the SD preview.

    The export button appends to `export_to` (default: params_file).
    """
    from lib.config import load
    from lib.runs import make_domain, repo_path, run_paths

    if backend not in ("toy", "sd"):
        raise ValueError(f"backend = {backend!r}; allowed: 'toy' (CPU) or 'sd' (a diffusers run on a GPU server)")
    cfg = load(repo_path(params_file))
    paths = run_paths(cfg, run_dir or None)
    want = "toy" if backend == "toy" else "diffusers"
    if cfg.domain != want:
        raise ValueError(f"backend = {backend!r} needs a run with domain {want!r}; {params_file} has domain {cfg.domain!r}")
    require_artefacts(cfg, paths)
    domain = make_domain(cfg, paths)
    tuned = domain.load_adapter(paths.train(0.0) / "adapter.safetensors")
    if backend == "toy":
        be = ToyPreview(domain, tuned, preview_samples, cfg.sweep.seed_offset, cfg.sweep.samples_per_prompt,
                        cfg.metrics.diversity, cfg.metrics.k)
    else:
        be = SDPreview.from_domain(domain, sd_prompt, sd_seeds)
    state = ExplorerState(num_steps=be.num_steps, scheduler=be.scheduler)
    if not state.load_spec(initial_spec):
        raise ValueError(f"initial_spec: {state.message}")
    explorer = GammaExplorer(state, be, pd.read_csv(paths.metrics, keep_default_na=False, na_values=[""]),
                             repo_path(export_to or params_file), diversity)
    explorer.cfg, explorer.paths = cfg, paths
    return explorer
