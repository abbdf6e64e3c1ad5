"""The methods of the sweep, typed: base, DRaFT, LoRA scaling alpha', AIG gamma(s), combined generation (a step
schedule), KL-regularised models, LoRA mixing of two adapters (DRaFT Sec. 5.3); the sweep's settings; and the one
dispatcher from a method to its denoiser.

A method is `Method(family, value, scales, adapter)`; metrics.csv names it by the columns `method` (the family) and
`setting` (`Method.setting`: '-', 'alpha=0.5', 'power:2', 'step:0.5', 'lambda=1', 'draft=0.5,hps=0.25' for a LoRA
mix; ' tuned=<name>' appended when a named adapter of `sweep.adapters` is the tuned branch instead of DRaFT, then
' cfg=7.5/1' when the two branches have their own classifier-free guidance scales); `Method.parse` reads them back.

Cost (`python -m lib.bench`): where a model's LoRA adapter allows it (`lib.lora.LoRAModes`), the dispatcher runs
the base branch as the plain network, every tuned-only evaluation (DRaFT, KL models, LoRA scaling, the tuned steps
of a step schedule) on the merged network W + s B A, and, where the domain's `paired_calls` allows it and the batch
is small enough for it to pay (`lib.guidance.pairing_pays`), the steps with 0 < gamma < 1 as one network call on the
stacked batch (`lib.guidance.paired_branches`, `lib.lora.LoRAModes.split`). All three give the numbers of the plain
two-call evaluation up to float rounding (tests/test_fused.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from lib.adapters import DRAFT, LoraMixConfig, check_adapter_name, mix_model, mixed
from lib.domains.base import Domain
from lib.errors import ConfigError, check
from lib.guidance import Denoiser, aig, paired_branches, pairing_pays
from lib.lora import LoRAModes, lora_modes, lora_scale
from lib.samplers import sampling_timesteps
from lib.schedules import Const, Schedule, parse
from lib.train import base_branch

FAMILIES = ("base", "draft", "lora_scale", "aig", "combined", "kl", "lora_mix")
WITH_ADAPTER = ("lora_scale", "aig", "combined")  # families whose tuned branch may be a named adapter
Mix = tuple[tuple[str, float], ...]  # ((adapter name, weight), ...) of a LoRA mix


def _num(x: float) -> str:
    return f"{float(x):g}"


@dataclass(frozen=True)
class Method:
    """One point of the sweep. value: alpha' (lora_scale), a gamma spec (aig), the switch point c (combined), lambda
    (kl), the mix ((A, alpha), (B, beta)) of lora_mix (weights of two adapters, DRaFT Sec. 5.3), None otherwise;
    scales: per-branch guidance (base, tuned) of aig / combined, None = the domain's scale; adapter: the named
    adapter (sweep.adapters) that is the tuned branch of lora_scale / aig / combined, None = DRaFT's."""

    method: str
    value: float | str | Mix | None = None
    scales: Optional[tuple[float, float]] = None
    adapter: Optional[str] = None

    def __post_init__(self):
        if self.method not in FAMILIES:
            raise ValueError(f"method = {self.method!r}; allowed: {', '.join(FAMILIES)}")
        if self.method == "aig":
            object.__setattr__(self, "value", parse(self.value).spec)
        elif self.method in ("lora_scale", "combined", "kl"):
            object.__setattr__(self, "value", float(self.value))
        elif self.method == "lora_mix":
            mix = tuple((str(n), float(w)) for n, w in self.value)
            if len(mix) != 2 or mix[0][0] == mix[1][0]:
                raise ValueError(f"lora_mix takes ((A, alpha), (B, beta)) over two adapters, got {self.value!r}")
            object.__setattr__(self, "value", mix)
        elif self.value is not None:
            raise ValueError(f"method {self.method!r} takes no value, got {self.value!r}")
        if self.scales is not None:
            if self.method not in ("aig", "combined"):
                raise ValueError(f"per-branch guidance scales apply to aig and combined, not {self.method!r}")
            object.__setattr__(self, "scales", (float(self.scales[0]), float(self.scales[1])))
        if self.adapter == DRAFT:
            object.__setattr__(self, "adapter", None)  # one spelling of DRaFT's adapter: none
        if self.adapter is not None:
            if self.method not in WITH_ADAPTER:
                raise ValueError(f"a named tuned adapter applies to {', '.join(WITH_ADAPTER)}, not {self.method!r}")
            check_adapter_name("adapter", self.adapter)

    @property
    def adapters(self) -> tuple[str, ...]:
        """The trained adapters this method's samples depend on ('draft' or names of sweep.adapters; KL models
        aside)."""
        if self.method == "lora_mix":
            return tuple(n for n, _ in self.value)
        return () if self.method in ("base", "kl") else (self.adapter or DRAFT,)

    @property
    def setting(self) -> str:
        """The metrics.csv setting string."""
        text = {"base": "-", "draft": "-", "aig": str(self.value)}.get(self.method)
        if self.method == "lora_mix":
            text = ",".join(f"{n}={_num(w)}" for n, w in self.value)
        elif text is None:
            prefix = {"lora_scale": "alpha=", "combined": "step:", "kl": "lambda="}[self.method]
            text = prefix + _num(self.value)
        if self.adapter is not None:
            text += f" tuned={self.adapter}"
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
        m = re.fullmatch(r"(?P<body>.*?)(?: tuned=(?P<a>\w+))?(?: cfg=(?P<b>[^/ ]+)/(?P<t>[^/ ]+))?", setting.strip())
        body, scales = m["body"], (float(m["b"]), float(m["t"])) if m["b"] else None
        if method in ("base", "draft"):
            return cls(method)
        if method == "lora_mix":  # 'draft=0.5,hps=0.25'
            return cls(method, tuple((n, float(w)) for n, w in (t.split("=") for t in body.split(","))))
        prefix = {"lora_scale": "alpha=", "combined": "step:", "kl": "lambda="}.get(method, "")
        return cls(method, body.removeprefix(prefix) if prefix else body, scales, m["a"])


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
    # Extra trainings beside DRaFT and the KL runs, each into results/<run>/train/<name>/: name -> the train: keys it
    # changes, and `reward:` (the domain's reward setting, e.g. sd.reward) for one trained on another reward; e.g.
    # {hps: {reward: hpsv2}, imagerefl: {variant: imagerefl}}. Checked against train: when params load.
    adapters: dict = field(default_factory=dict)
    tuned: tuple[str, ...] = ()  # named adapters that are also the tuned branch of every aig and combined setting
    lora_mix: LoraMixConfig = field(default_factory=LoraMixConfig)  # {adapters: [draft, hps], grid: 0.25}

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
        check("sweep.adapters", self.adapters, isinstance(self.adapters, dict) and all(
            isinstance(v, dict) or v is None for v in self.adapters.values()),
              "a mapping name -> {train keys to change, reward: <the domain's reward setting>}")
        for name in self.adapters:
            check_adapter_name("sweep.adapters", name)
        check("sweep.tuned", list(self.tuned), len(set(self.tuned)) == len(self.tuned), "distinct adapter names")


NEW_KEYS = ("adapters", "tuned", "lora_mix")  # sweep keys that reach a method's samples through its setting and stamp


def sweep_stamp(sweep: SweepConfig) -> dict:
    """The sweep settings every sample set depends on: all but the named adapters and the LoRA-mixing grid, which
    reach the samples of the methods that use them through their setting and their adapters' sha256."""
    return {k: v for k, v in dataclasses.asdict(sweep).items() if k not in NEW_KEYS}


def sweep_methods(sweep: SweepConfig) -> list[Method]:
    """base, draft, LoRA scales, AIG schedules, combined switch points (each also with every extra per-branch
    guidance pair, and again with each adapter of sweep.tuned), KL lambdas and the LoRA-mixing grid, in plotting
    order."""
    out = [Method("base"), Method("draft")]
    out += [Method("lora_scale", a) for a in sweep.lora_scales]
    for adapter in (None, *sweep.tuned):  # sweep.tuned: the same settings with a named adapter as the tuned branch
        for scales in (None, *sweep.guidance):
            out += [Method("aig", spec, scales, adapter) for spec in sweep.aig]
            out += [Method("combined", c, scales, adapter) for c in sweep.combined]
    out += [Method("kl", lam) for lam in sweep.kl_lambdas]
    out += [Method("lora_mix", mix) for mix in sweep.lora_mix.points]
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
                    merged: bool = True, adapters: Optional[dict[str, torch.nn.Module]] = None) -> Iterator[Denoiser]:
    """The denoiser of method m for an N-step chain (N = num_steps or the domain's), built from the DRaFT model
    `tuned` (base = its adapter switched off); kl_models maps lambda to a KL-trained model; adapters maps the names
    of sweep.adapters to their trained models (the tuned branch of a method with `m.adapter`, the parts of a LoRA
    mix, which runs W + alpha dW_A + beta dW_B through `lib.adapters.mixed`, DRaFT Sec. 5.3).

    paired: take both branches of a step with 0 < gamma < 1 from one network call (None: where the domain's
    `paired_calls` allows it and the batch is small enough for it to pay, `lib.guidance.pairing_pays`); merged: run
    tuned-only evaluations (and the tuned rows of a paired call) on the merged network (module docstring). Both need
    a model whose adapter `lib.lora.LoRAModes` serves; otherwise every branch runs as peft runs it.
    """
    models = {DRAFT: tuned, **(adapters or {})}
    missing = [n for n in m.adapters if n not in models]
    if missing:
        raise KeyError(f"{m.label}: no trained adapter {missing[0]!r}; loaded: {sorted(models)}")
    tuned = models[m.adapter or DRAFT]
    if m.method == "lora_mix":
        model, names = mix_model({n: models[n] for n in m.adapters})
        with mixed(model, {names[n]: w for n, w in m.value}):
            yield domain.denoiser(model)
    elif m.gamma is not None:  # base, draft, aig, combined: AIG paper Eq. 11 with per-branch guidance
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
