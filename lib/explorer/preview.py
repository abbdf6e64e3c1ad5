"""The explorer's live preview, one backend for every domain: samples of base, DRaFT and the current gamma from the
same per-sample noise (paired seeds), with the reward and the run's metrics of each row.

`Previewer(domain, tuned, pairs, ...)` samples the (prompt index, seed) pairs of a prompt set (default 'coverage')
through the one dispatcher `lib.methods.method_denoiser` (AIG paper Eq. 11 is `lib.guidance.aig`; base is gamma = 1,
DRaFT gamma = 0, so all three share one code path) and `lib.generate.generate`, with the requested number of sampler
steps. Rows come from `lib.evaluate.method_rows` exactly as notebook 03 computes them: the reward, and every metric
of the run that applies (feature metrics against the base panel when there are at least two samples; within-prompt
diversity when a prompt has at least two). Base and DRaFT are computed once per number of steps; AIG previews are
kept in a small LRU cache by (spec, steps). Samples stay in the domain's storage form; `draw_samples` hands them to
the domain, which knows how to draw them (points over a reward map, an image mosaic, ...).

`preview_pairs` builds the pairs: every prompt with the run's own first seeds (so a preview with the run's samples
per prompt reproduces its metrics.csv), or one prompt with explicit seeds.
"""
from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from lib.domains.base import Domain
from lib.evaluate import features_of, method_rows
from lib.generate import generate
from lib.methods import Method, method_denoiser
from lib.metrics import FEATURE_METRICS
from lib.schedules import Schedule, parse

PANELS = ("base", "draft", "aig")  # the rows of a preview: base model, DRaFT, the current gamma
PANEL_LABEL = {"base": "base", "draft": "DRaFT", "aig": "AIG γ"}


@contextlib.contextmanager
def torch_threads(n: Optional[int] = 1) -> Iterator[None]:
    """Limit torch's intra-op threads inside the block, then restore them (None: leave them). Preview models on the
    CPU are small: one thread is fastest, and on a busy machine several threads are many times slower (measured: 16x
    on 2 loaded cores)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def prompt_index(prompts: Sequence[str], prompt: str | int) -> int:
    """Index of a prompt of the set, given as its text or its index (an int or a string of digits)."""
    if isinstance(prompt, str) and prompt in prompts:
        return list(prompts).index(prompt)
    if isinstance(prompt, (int, np.integer)) or str(prompt).strip().isdigit():
        j = int(prompt)
        if not 0 <= j < len(prompts):
            raise ValueError(f"prompt = {prompt!r}: the prompt set has {len(prompts)} prompts (indices 0-{len(prompts) - 1})")
        return j
    shown = ", ".join(repr(p) for p in list(prompts)[:5]) + (", ..." if len(prompts) > 5 else "")
    raise ValueError(f"prompt = {prompt!r} is not one of the {len(prompts)} prompts ({shown}); give its text or its index")


def preview_pairs(prompts: Sequence[str], per_prompt: int = 64, seed_offset: int = 0, seed_stride: Optional[int] = None,
                  prompt: str | int = "", seeds: Sequence[int] = (0, 1, 2, 3)) -> list[tuple[int, int]]:
    """(prompt index, seed) pairs of a preview.

    prompt '' (default): every prompt, `per_prompt` samples each; sample i of prompt j has seed
    seed_offset + j * stride + i with stride = max(seed_stride, per_prompt): with the run's seed_offset and samples
    per prompt as stride these are the first samples of the run's coverage set (notebook 02's layout).
    Otherwise the one prompt (its text or index), one sample per seed in `seeds`.
    """
    if prompt != "" and prompt is not None:
        j = prompt_index(prompts, prompt)
        if not len(seeds):
            raise ValueError("seeds: give at least one seed for the previewed prompt")
        return [(j, int(s)) for s in seeds]
    if per_prompt < 1:
        raise ValueError(f"preview_samples = {per_prompt} must be >= 1")
    stride = max(int(seed_stride or per_prompt), int(per_prompt))
    return [(j, seed_offset + j * stride + i) for j in range(len(prompts)) for i in range(int(per_prompt))]


@dataclass
class Preview:
    """What a backend returns for one schedule.

    panels[name] (name in PANELS) are stored samples (N, ...) in the domain's storage form, row k drawn for prompt
    groups[k] (an index into `prompts`) from the same seed in every panel. `metrics` has one row per panel (reward and
    the run's metrics, as in metrics.csv, diversity against the base panel) and a column n.
    """

    spec: str
    panels: dict[str, np.ndarray]
    groups: np.ndarray
    prompts: list[str]
    metrics: pd.DataFrame
    seconds: float = 0.0
    num_steps: int = 0

    @property
    def columns(self) -> list[int]:
        """The prompt indices shown, in order (one preview column each)."""
        return sorted({int(j) for j in self.groups})


class PreviewBackend(Protocol):
    """What the view needs: its default `num_steps`, `preview(schedule, num_steps)` and a way to draw samples."""

    num_steps: int

    def preview(self, schedule: Schedule | str, num_steps: Optional[int] = None) -> Preview:
        ...

    def draw_samples(self, ax, stored: np.ndarray, prompt_index: np.ndarray, color: Any = None) -> None:
        ...


class LRU(OrderedDict):
    """A small least-recently-used cache."""

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


class Previewer:
    """The preview backend of every domain (see the module docstring).

    domain, tuned: the run's domain and its DRaFT model (`domain.load_adapter`); pairs: (prompt index into
    domain.prompts(prompt_set), seed); names: the run's metrics beyond reward (`MetricsConfig.names`); k: the
    precision / recall neighbourhood (at most N - 1); threads: torch's CPU threads while sampling (None: unchanged).
    """

    def __init__(self, domain: Domain, tuned: torch.nn.Module, pairs: Sequence[tuple[int, int]],
                 names: Sequence[str] = ("fid", "precision", "recall", "scd", "lscd"), k: int = 10,
                 batch_size: int = 512, num_steps: Optional[int] = None, prompt_set: str = "coverage",
                 threads: Optional[int] = 1, cache_size: int = 32):
        self.domain, self.tuned, self.prompt_set = domain, tuned, prompt_set
        self.prompts = list(domain.prompts(prompt_set))
        self.names, self.k, self.batch_size = tuple(names), int(k), int(batch_size)
        self.num_steps = int(num_steps or domain.num_steps)
        self.threads = threads
        self._fixed: dict[int, dict] = {}
        self._cache = LRU(cache_size)
        self.select(pairs)

    def select(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Preview other (prompt index, seed) pairs (clears the caches)."""
        pairs = [(int(j), int(s)) for j, s in pairs]
        if not pairs:
            raise ValueError("a preview needs at least one (prompt, seed) pair")
        bad = [j for j, _ in pairs if not 0 <= j < len(self.prompts)]
        if bad:
            raise ValueError(f"prompt index {bad[0]} is outside the {len(self.prompts)} {self.prompt_set} prompts")
        self.pairs, self.groups = pairs, np.array([j for j, _ in pairs])
        self._fixed.clear()
        self._cache.clear()

    def draw_samples(self, ax, stored: np.ndarray, prompt_index: np.ndarray, color: Any = None) -> None:
        """Draw stored samples of one prompt into one axis: the domain's own drawing."""
        self.domain.draw_samples(ax, stored, prompt_index, color=color)

    def samples(self, m: Method, num_steps: Optional[int] = None) -> np.ndarray:
        """Stored samples (N, ...) of method m (base, draft, aig) on the pairs, with num_steps sampler steps."""
        n = int(num_steps or self.num_steps)
        with method_denoiser(self.domain, m, self.tuned, num_steps=n) as den:
            return generate(self.domain, den, self.prompts, self.pairs, self.batch_size, num_steps=n)

    def row(self, panel: str, m: Method, x: np.ndarray, ref: Optional[np.ndarray],
            features: Optional[np.ndarray] = None) -> dict:
        """One metrics row of a panel: reward and the run's metrics that apply (lib.evaluate.method_rows)."""
        k = max(1, min(self.k, len(x) - 1))
        rows = method_rows(self.domain, m, self.prompt_set, x, self.groups, ref, self.names, k, self.batch_size,
                           features=features)
        return {"method": panel, **{r["metric"]: r["value"] for r in rows}, "n": len(x)}

    def _base_and_draft(self, n: int) -> dict:
        if n not in self._fixed:
            base, draft = self.samples(Method("base"), n), self.samples(Method("draft"), n)
            wanted = len(base) >= 2 and any(name in FEATURE_METRICS for name in self.names)
            ref = features_of(self.domain, base, self.batch_size) if wanted else None
            self._fixed[n] = dict(base=base, draft=draft, ref=ref, rows=[
                self.row("base", Method("base"), base, ref, features=ref), self.row("draft", Method("draft"), draft, ref)])
        return self._fixed[n]

    def preview(self, schedule: Schedule | str, num_steps: Optional[int] = None) -> Preview:
        """Base, DRaFT and AIG with this gamma (cached by spec and number of steps)."""
        spec, n = parse(schedule).spec, int(num_steps or self.num_steps)

        def make() -> Preview:
            t0 = time.perf_counter()
            with torch_threads(self.threads):
                fixed = self._base_and_draft(n)
                m = Method("aig", spec)
                x = self.samples(m, n)
                rows = fixed["rows"] + [self.row("aig", m, x, fixed["ref"])]
            return Preview(spec, dict(base=fixed["base"], draft=fixed["draft"], aig=x), self.groups, self.prompts,
                           pd.DataFrame(rows).set_index("method"), time.perf_counter() - t0, n)

        return self._cache.get_or((spec, n), make)
