"""The methods of the sweep, typed: base, DRaFT, LoRA scaling alpha', AIG gamma(s), combined generation (a step
schedule), KL-regularised models; the sweep's settings; and the one dispatcher from a method to its denoiser.

A method is `Method(family, value, scales)`; metrics.csv names it by the columns `method` (the family) and
`setting` (`Method.setting`: '-', 'alpha=0.5', 'power:2', 'step:0.5', 'lambda=1', with ' cfg=7.5/1' appended when
the two branches have their own classifier-free guidance scales); `Method.parse` reads them back.

Cost (`python -m lib.bench`): where a model's LoRA adapter allows it (`lib.lora.LoRAModes`), the dispatcher runs
the base branch as the plain network, every tuned-only evaluation (DRaFT, KL models, LoRA scaling, the tuned steps
of a step schedule) on the merged network W + s B A, and, where the domain's `paired_calls` allows it and the batch
is small enough for it to pay (`lib.guidance.pairing_pays`), the steps with 0 < gamma < 1 as one network call on the
stacked batch (`lib.guidance.paired_branches`, `lib.lora.LoRAModes.split`). All three give the numbers of the plain
two-call evaluation up to float rounding (tests/test_fused.py).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from lib.domains.base import Domain
from lib.errors import ConfigError, check
from lib.guidance import Denoiser, aig, paired_branches, pairing_pays
from lib.lora import LoRAModes, lora_modes, lora_scale
from lib.samplers import sampling_timesteps
from lib.schedules import Const, Schedule, parse
from lib.train import base_branch

FAMILIES = ("base", "draft", "lora_scale", "aig", "combined", "kl")


def _num(x: float) -> str:
    return f"{float(x):g}"


@dataclass(frozen=True)
class Method:
    """One point of the sweep. value: alpha' (lora_scale), a gamma spec (aig), the switch point c (combined), lambda
    (kl), None otherwise; scales: per-branch guidance (base, tuned) of aig / combined, None = the domain's scale."""

    method: str
    value: float | str | None = None
    scales: Optional[tuple[float, float]] = None

    def __post_init__(self):
        if self.method not in FAMILIES:
            raise ValueError(f"method = {self.method!r}; allowed: {', '.join(FAMILIES)}")
        if self.method == "aig":
            object.__setattr__(self, "value", parse(self.value).spec)
        elif self.method in ("lora_scale", "combined", "kl"):
            object.__setattr__(self, "value", float(self.value))
        elif self.value is not None:
            raise ValueError(f"method {self.method!r} takes no value, got {self.value!r}")
        if self.scales is not None:
            if self.method not in ("aig", "combined"):
                raise ValueError(f"per-branch guidance scales apply to aig and combined, not {self.method!r}")
            object.__setattr__(self, "scales", (float(self.scales[0]), float(self.scales[1])))

    @property
    def setting(self) -> str:
        """The metrics.csv setting string."""
        text = {"base": "-", "draft": "-", "aig": str(self.value)}.get(self.method)
        if text is None:
            prefix = {"lora_scale": "alpha=", "combined": "step:", "kl": "lambda="}[self.method]
            text = prefix + _num(self.value)
        if self.scales is not None:
            text += f" cfg={_num(self.scales[0])}/{_num(self.scales[1])}"
        return text

    @property
    def label(self) -> str:
        """Row label for figures: 'aig power:2', 'draft'."""
        return self.method if self.setting == "-" else f"{self.method} {self.setting}"

    @property
    def key(self) -> str:
        """File-name-safe identifier."""
        return (f"{self.method}__{self.setting}".replace(":", "-").replace("=", "-").replace(",", "_")
                .replace(" ", "_").replace("/", "_"))

    @property
    def gamma(self) -> Optional[Schedule]:
        """The base model's weight schedule of base, draft, aig and combined (None for the others)."""
        spec = {"base": "base", "draft": "tuned", "aig": self.value,
                "combined": f"step:{_num(self.value)}" if self.method == "combined" else None}.get(self.method)
        return parse(spec) if spec is not None else None

    @classmethod
    def parse(cls, method: str, setting: str) -> "Method":
        """The Method of a metrics.csv row (inverse of `setting`)."""
        m = re.fullmatch(r"(?P<body>.*?)(?: cfg=(?P<b>[^/ ]+)/(?P<t>[^/ ]+))?", setting.strip())
        body, scales = m["body"], (float(m["b"]), float(m["t"])) if m["b"] else None
        if method in ("base", "draft"):
            return cls(method)
        prefix = {"lora_scale": "alpha=", "combined": "step:", "kl": "lambda="}.get(method, "")
        return cls(method, body.removeprefix(prefix) if prefix else body, scales)


@dataclass(frozen=True)
class SweepConfig:
    """Every method x hyperparameter sampled in notebook 02, and the evaluation sets."""

    kl_lambdas: tuple[float, ...] = (0.1, 0.5, 1, 2, 5, 10, 20, 50)
    lora_scales: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    aig: tuple[str, ...] = ("power:1", "power:1.25", "power:1.5", "power:2", "power:3", "power:4", "power:5")
    combined: tuple[float, ...] = (0.2, 0.4, 0.5, 0.6, 0.8)  # switch points c of step:c
    # Extra per-branch guidance scales (base, tuned): each pair adds every aig and combined setting again with those
    # scales (ImageReFL: base guided at 7.5, the fine-tuned model unguided: [[7.5, 1]]).
    guidance: tuple[tuple[float, float], ...] = ()
    samples_per_prompt: int = 500
    prompt_sets: tuple[str, ...] = ("coverage",)  # domain prompt sets; diversity is measured on 'coverage' only
    eval_samples_per_prompt: int = 4  # samples per prompt on the other (reward-only) sets
    batch_size: int = 512
    seed_offset: int = 0  # seed of sample i of prompt j = seed_offset + j * samples_per_prompt + i

    def __post_init__(self):
        for spec in self.aig:
            try:
                parse(spec)
            except ValueError as e:
                raise ConfigError(f"sweep.aig: {e}") from None
        check("sweep.kl_lambdas", self.kl_lambdas, all(x > 0 for x in self.kl_lambdas), "a list of numbers > 0")
        check("sweep.lora_scales", self.lora_scales, all(0 <= x <= 1 for x in self.lora_scales), "numbers in [0, 1]")
        check("sweep.combined", self.combined, all(0 <= x <= 1 for x in self.combined), "switch points in [0, 1]")
        check("sweep.guidance", self.guidance, all(len(p) == 2 and min(p) >= 1 for p in self.guidance),
              "a list of [base, tuned] pairs of scales >= 1 (1 = unguided)")
        check("sweep.samples_per_prompt", self.samples_per_prompt, self.samples_per_prompt >= 2, "an integer >= 2")
        check("sweep.prompt_sets", self.prompt_sets, "coverage" in self.prompt_sets and len(set(self.prompt_sets)) == len(self.prompt_sets),
              "a list of distinct prompt-set names holding 'coverage' (others: 'eval' or a named prompt set)")
        check("sweep.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")


def sweep_methods(sweep: SweepConfig) -> list[Method]:
    """base, draft, LoRA scales, AIG schedules, combined switch points (each also with every extra per-branch
    guidance pair) and KL lambdas, in plotting order."""
    out = [Method("base"), Method("draft")]
    out += [Method("lora_scale", a) for a in sweep.lora_scales]
    for scales in (None, *sweep.guidance):
        out += [Method("aig", spec, scales) for spec in sweep.aig]
        out += [Method("combined", c, scales) for c in sweep.combined]
    out += [Method("kl", lam) for lam in sweep.kl_lambdas]
    return out


def _in_mode(modes: LoRAModes, mode: str, denoiser: Denoiser) -> Denoiser:
    """`denoiser` run with the model in `mode` ('base', 'lora' or 'merged'); 'merged', through which no gradient
    reaches the adapter, gives way to 'lora' while gradients are recorded."""
    def run(x, t, cond):
        getattr(modes, "lora" if mode == "merged" and torch.is_grad_enabled() else mode)()
        return denoiser(x, t, cond)

    return run


def _tuned_only(modes: Optional[LoRAModes], domain: Domain, model: torch.nn.Module, merged: bool) -> Denoiser:
    """The denoiser of one adapted model alone: on its merged network where allowed."""
    den = domain.denoiser(model)
    return _in_mode(modes, "merged", den) if modes is not None and merged else den


@contextlib.contextmanager
def method_denoiser(domain: Domain, m: Method, tuned: torch.nn.Module,
                    kl_models: dict[float, torch.nn.Module] | None = None,
                    num_steps: Optional[int] = None, paired: Optional[bool] = None,
                    merged: bool = True) -> Iterator[Denoiser]:
    """The denoiser of method m for an N-step chain (N = num_steps or the domain's), built from the DRaFT model
    `tuned` (base = its adapter switched off); kl_models maps lambda to a KL-trained model.

    paired: take both branches of a step with 0 < gamma < 1 from one network call (None: where the domain's
    `paired_calls` allows it and the batch is small enough for it to pay, `lib.guidance.pairing_pays`); merged: run
    tuned-only evaluations (and the tuned rows of a paired call) on the merged network (module docstring). Both need
    a model whose adapter `lib.lora.LoRAModes` serves; otherwise every branch runs as peft runs it.
    """
    if m.gamma is not None:  # base, draft, aig, combined: AIG paper Eq. 11 with per-branch guidance
        wb, wt = m.scales or (None, None)
        n = num_steps or domain.num_steps
        timesteps = [0] if isinstance(m.gamma, Const) else sampling_timesteps(domain.scheduler, n)  # Const: no clock
        auto, paired = paired is None, bool(domain.paired_calls) if paired is None else paired
        with lora_modes(tuned) as modes:
            if modes is None:
                yield aig(base_branch(domain, tuned, wb), domain.denoiser(tuned, wt), m.gamma, timesteps)
                return
            base = _in_mode(modes, "base", domain.denoiser(tuned, wb))
            tuned_den = _in_mode(modes, "merged" if merged else "lora", domain.denoiser(tuned, wt))
            both, pays = None, None
            if paired:
                scales = tuple(domain.guidance_scale if w is None else float(w) for w in (wb, wt))
                both = paired_branches(domain.denoiser(tuned, 1.0), domain.null_cond, scales, modes.both(merged))
            if paired and auto:  # a branch call's input: x, doubled by classifier-free guidance
                size, rows = sum(p.numel() for p in tuned.parameters()), 1 if scales[0] == 1.0 else 2
                pays = lambda x: pairing_pays(size, rows * x.numel(), x.device)  # noqa: E731
            yield aig(base, tuned_den, m.gamma, timesteps, both, pays)
    elif m.method == "lora_scale":
        with lora_scale(tuned, float(m.value)), lora_modes(tuned) as modes:
            yield _tuned_only(modes, domain, tuned, merged)
    else:
        if not kl_models or m.value not in kl_models:
            raise KeyError(f"no KL model for lambda={m.value:g}; trained: {sorted(kl_models or {})}")
        with lora_modes(kl_models[m.value]) as modes:
            yield _tuned_only(modes, domain, kl_models[m.value], merged)
