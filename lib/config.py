"""Run configuration: frozen dataclasses filled from params/*.yaml, with errors that name key, value and rule."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A parameter is unknown or out of range; the message names the key, the value and what is allowed."""


def check(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ConfigError unless ok."""
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")


@dataclass(frozen=True)
class TrainConfig:
    """DRaFT-family fine-tuning (DRaFT Algorithm 1) with optional KL regularisation (AIG paper Eq. 4)."""

    variant: str = "draft"  # draft (K steps of gradient; K >= num_steps is full DRaFT) | lv | refl
    K: int = 1
    lv_n: int = 2  # DRaFT-LV: re-noised copies of x_0
    refl_m: int = 5  # ReFL: stop at a random step in [1, m] from the end
    kl_lambda: float = 0.0
    steps: int = 200
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2.5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 0.1
    lora_rank: int = 4
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self):
        check("train.variant", self.variant, self.variant in ("draft", "lv", "refl"), "one of draft, lv, refl")
        for key in ("K", "lv_n", "refl_m", "steps", "batch_size", "grad_accum", "lora_rank", "checkpoint_every"):
            check(f"train.{key}", getattr(self, key), isinstance(getattr(self, key), int) and getattr(self, key) >= 1, "an integer >= 1")
        check("train.kl_lambda", self.kl_lambda, self.kl_lambda >= 0, ">= 0")
        check("train.lr", self.lr, 0 < self.lr < 1, "in (0, 1)")
        for key in ("beta1", "beta2"):
            check(f"train.{key}", getattr(self, key), 0 <= getattr(self, key) < 1, "in [0, 1)")
        check("train.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        check("train.grad_clip", self.grad_clip, self.grad_clip > 0, "> 0")


@dataclass(frozen=True)
class SweepConfig:
    """Every method x hyperparameter sampled in notebook 02, and the evaluation sets."""

    kl_lambdas: tuple[float, ...] = (0.1, 0.5, 1, 2, 5, 10, 20, 50)
    lora_scales: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    aig: tuple[str, ...] = ("power:1", "power:1.25", "power:1.5", "power:2", "power:3", "power:4", "power:5")
    combined: tuple[float, ...] = (0.2, 0.4, 0.5, 0.6, 0.8)  # switch points c of step:c
    samples_per_prompt: int = 500
    prompt_sets: tuple[str, ...] = ("coverage",)  # domain prompt sets; diversity is measured on 'coverage' only
    eval_samples_per_prompt: int = 4  # samples per prompt on the other (reward-only) sets
    batch_size: int = 512
    seed_offset: int = 0  # seed of sample i of prompt j = seed_offset + j * samples_per_prompt + i

    def __post_init__(self):
        from lib.schedules import parse

        for spec in self.aig:
            try:
                parse(spec)
            except ValueError as e:
                raise ConfigError(f"sweep.aig: {e}") from None
        check("sweep.kl_lambdas", self.kl_lambdas, all(x > 0 for x in self.kl_lambdas), "a list of numbers > 0")
        check("sweep.lora_scales", self.lora_scales, all(0 <= x <= 1 for x in self.lora_scales), "numbers in [0, 1]")
        check("sweep.combined", self.combined, all(0 <= x <= 1 for x in self.combined), "switch points in [0, 1]")
        check("sweep.samples_per_prompt", self.samples_per_prompt, self.samples_per_prompt >= 2, "an integer >= 2")
        check("sweep.prompt_sets", self.prompt_sets, "coverage" in self.prompt_sets and len(set(self.prompt_sets)) == len(self.prompt_sets),
              "a list of distinct prompt-set names holding 'coverage' (others: 'eval' or a lib.prompts set name)")
        check("sweep.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")


@dataclass(frozen=True)
class MetricsConfig:
    """Which metrics notebook 03 computes."""

    k: int = 10  # neighbourhood size of precision / recall
    diversity: tuple[str, ...] = ("fid", "precision", "recall", "scd", "lscd")
    kl_samples: int = 64  # trajectories per prompt for the reward-KL plot (Fig. 3a)

    def __post_init__(self):
        allowed = ("fid", "precision", "recall", "scd", "lscd", "dino_diversity", "clip")
        check("metrics.k", self.k, self.k >= 1, "an integer >= 1")
        for m in self.diversity:
            check("metrics.diversity", m, m in allowed, "any of " + ", ".join(allowed))


@dataclass(frozen=True)
class RunConfig:
    """One run: a domain, its training, its sweep and its metrics."""

    run: str = "toy"
    domain: str = "toy"
    device: str = "cpu"
    toy: Optional[Any] = None  # lib.toy.ToyConfig
    sd: Optional[Any] = None  # lib.sd.SDConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self):
        check("run", self.run, bool(self.run) and "/" not in self.run, "a non-empty name without '/'")
        check("domain", self.domain, self.domain in ("toy", "diffusers"), "'toy' or 'diffusers'")


def _section_types() -> dict[str, type]:
    from lib.toy import ToyConfig

    types_ = {"train": TrainConfig, "sweep": SweepConfig, "metrics": MetricsConfig, "toy": ToyConfig}
    try:
        from lib.sd import SDConfig

        types_["sd"] = SDConfig
    except ImportError:  # the diffusers domain is optional at import time
        pass
    return types_


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Turn a YAML value into the field's type (lists -> tuples, ints -> floats), or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return value if value is None else _coerce(key, value, args[0])
    if origin is tuple:
        check(key, value, isinstance(value, (list, tuple)), "a list")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(key, v, inner) for v in value)
    if hint is float:
        check(key, value, isinstance(value, (int, float)) and not isinstance(value, bool), "a number")
        return float(value)
    if hint is int:
        check(key, value, isinstance(value, int) and not isinstance(value, bool), "an integer")
        return value
    if hint is str:
        check(key, value, isinstance(value, str), "a string")
        return value
    if hint is bool:
        check(key, value, isinstance(value, bool), "true or false")
        return value
    return value


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Instantiate dataclass cls from a dict, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'params'} = {data!r} is not allowed: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} = {data[unknown[0]]!r}; allowed keys: {', '.join(fields)}")
    return cls(**{k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()})


def from_dict(data: dict) -> RunConfig:
    """RunConfig from a parsed params mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"params = {data!r} is not allowed: expected a mapping")
    sections = _section_types()
    top = {k: v for k, v in data.items() if k not in sections}
    nested = {k: build(sections[k], v or {}, prefix=f"{k}.") for k, v in data.items() if k in sections}
    cfg = build(RunConfig, top)
    if cfg.domain == "toy" and "toy" not in nested:
        nested["toy"] = sections["toy"]()
    if cfg.domain == "diffusers":
        check("sd", data.get("sd"), "sd" in nested, "an 'sd:' section for domain 'diffusers'")
    return dataclasses.replace(cfg, **nested)


def load(path: Path | str) -> RunConfig:
    """Read and validate params/<file>.yaml."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(cfg: Any) -> dict:
    """A plain mapping of a config (tuples as lists), for writing the resolved config."""
    def plain(x):
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(cfg))
