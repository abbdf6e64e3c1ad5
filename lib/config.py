"""Run configuration: frozen dataclasses filled from params/*.yaml, with errors that name key, value and rule.

A params file holds literal values; `extends: <file>` (relative to the params file) starts from another file and
overrides it key by key, so the paper's presets (params/presets/) are written once. Sections: the run's own keys
(run, domain, device), the domain's section (its name from `lib.domains.registry`, e.g. `toy:` or `sd:`),
`train:` (lib.train.TrainConfig), `sweep:` (lib.methods.SweepConfig), `metrics:` (lib.evaluate.MetricsConfig).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lib.domains.registry import DOMAINS, entry
from lib.errors import ConfigError, check
from lib.evaluate import MetricsConfig
from lib.methods import SweepConfig
from lib.metrics import METRICS
from lib.train import TrainConfig

SECTIONS = {"train": TrainConfig, "sweep": SweepConfig, "metrics": MetricsConfig}


@dataclass(frozen=True)
class RunConfig:
    """One run: a domain with its settings (`domain_config`, the params section named by the registry), its
    training, its sweep and its metrics."""

    run: str = "toy"
    domain: str = "toy"
    device: str = "auto"  # auto (this process's GPU if any, else cpu), cpu, cuda, cuda:<i>
    domain_config: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self):
        check("run", self.run, bool(self.run) and "/" not in self.run, "a non-empty name without '/'")
        entry(self.domain)

    @property
    def section(self) -> str:
        """The params key of the domain's settings (e.g. 'toy')."""
        return entry(self.domain).section


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


def _check_metrics(cfg: RunConfig) -> None:
    """Refuse metrics the domain cannot compute, naming the metric and the domain."""
    can = entry(cfg.domain).domain.capabilities(cfg.domain_config)
    for name in cfg.metrics.names:
        need = METRICS[name].needs
        if need not in can:
            ok = [m for m in (*cfg.metrics.names, *METRICS) if METRICS[m].needs in can and m not in ("reward", "kl")]
            raise ConfigError(f"metrics: {name!r} cannot be computed on domain {cfg.domain!r} (it needs {need!r}, "
                              f"which the domain does not provide); allowed there: {', '.join(dict.fromkeys(ok))}")


def from_dict(data: dict) -> RunConfig:
    """RunConfig from a parsed params mapping (after `extends` is resolved)."""
    if not isinstance(data, dict):
        raise ConfigError(f"params = {data!r} is not allowed: expected a mapping")
    domain = data.get("domain", "toy")
    dom = entry(domain) if isinstance(domain, str) else entry(repr(domain))
    others = sorted({e.section for e in DOMAINS.values()} - {dom.section} & set(data))
    if others:
        raise ConfigError(f"section {others[0]}: is not allowed for domain {domain!r}: expected {dom.section}:")
    top = {k: v for k, v in data.items() if k not in SECTIONS and k != dom.section}
    nested = {k: build(SECTIONS[k], v or {}, prefix=f"{k}.") for k, v in data.items() if k in SECTIONS}
    nested["domain_config"] = build(dom.config, data.get(dom.section) or {}, prefix=f"{dom.section}.")
    cfg = build(RunConfig, {**top, **nested})
    _check_metrics(cfg)
    return cfg


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: mappings merge key by key, everything else in `over` replaces `base`."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_params(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The params mapping of a YAML file with its `extends` chain resolved."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself ({' -> '.join(map(str, seen))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: params = {data!r} is not allowed: expected a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    check("extends", parent, isinstance(parent, str), "a params file path relative to this file")
    return _merge(read_params(path.parent / parent, (*seen, path.resolve())), data)


def load(path: Path | str) -> RunConfig:
    """Read and validate params/<file>.yaml."""
    path = Path(path)
    data = read_params(path)
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(cfg: Any) -> dict:
    """A plain mapping of a config (tuples as lists; the domain's settings under their section key), for writing
    the resolved config."""
    def plain(x):
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    out = plain(dataclasses.asdict(cfg))
    if isinstance(cfg, RunConfig):
        out = {cfg.section if k == "domain_config" else k: v for k, v in out.items()}
    return out
