"""Run configuration: frozen dataclasses filled from params/*.yaml, with errors that name key, value and rule.

A params file holds literal values; `extends: <file>` (relative to the params file) starts from another file and
overrides it key by key, so the paper's presets (params/presets/) are written once. Sections: the run's own keys
(run, domain, device), the domain's section (its name from `lib.domains.registry`, e.g. `toy:` or `sd:`),
`train:` (lib.train.TrainConfig), `sweep:` (lib.methods.SweepConfig), `metrics:` (lib.evaluate.MetricsConfig).

Every refusal is one line naming the key, the value and the rule (or the file): a file that is empty, has no `run`,
repeats a key, or is not a readable YAML mapping; an unknown key; a value out of range or not finite; a run or
prompt-set name that is not a plain folder name; settings that cannot work together (metrics.k against the number of
coverage samples); and, with `machine=True`, a device this machine does not have or a setting whose memory need
(`lib.limits`) exceeds what it has.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lib.adapters import check_references
from lib.domains.registry import DOMAINS, entry
from lib.errors import ConfigError, check, plain_name
from lib.evaluate import MetricsConfig
from lib.limits import check_device, check_memory, coverage_size
from lib.methods import SweepConfig, sweep_methods
from lib.metrics import METRICS
from lib.search.space import SearchConfig
from lib.tables import check_settings
from lib.train import TrainConfig

SECTIONS = {"train": TrainConfig, "sweep": SweepConfig, "metrics": MetricsConfig, "search": SearchConfig}


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
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self):
        plain_name("run", self.run)  # results/<run>: never '..', '.', a path or a NUL byte
        entry(self.domain)
        check("device", self.device, isinstance(self.device, str), "a device name")

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
        check(key, value, math.isfinite(value), "a finite number")
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
    if dataclasses.is_dataclass(hint):  # a nested section such as sweep.lora_mix
        return value if isinstance(value, hint) else build(hint, value, prefix=key + ".")
    if hint is dict or origin is dict:
        check(key, value, isinstance(value, dict) and all(isinstance(k, str) for k in value), "a mapping")
        return {k: _coerce(f"{key}.{k}", v, dict) if isinstance(v, dict) else v for k, v in value.items()}
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


def named_training(cfg: RunConfig, name: str) -> tuple[TrainConfig, Any]:
    """The training config and the domain settings of the extra training `name` of sweep.adapters: DRaFT's train:
    (lambda = 0) with the keys it changes (checked as train: keys are), and the domain's settings with `reward` replaced where it sets one
    (only for a domain with a reward setting)."""
    key = f"sweep.adapters.{name}"
    over = dict(cfg.sweep.adapters[name] or {})
    dom = cfg.domain_config
    reward = over.pop("reward", None)
    hints = typing.get_type_hints(TrainConfig)
    allowed = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(over) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]} = {over[unknown[0]]!r}; allowed keys: reward (the "
                          f"domain's reward setting), {', '.join(allowed)}")
    changed = {"kl_lambda": 0.0, **{k: _coerce(f"{key}.{k}", v, hints[k]) for k, v in over.items()}}
    try:  # from DRaFT's config (lambda = 0) unless it sets kl_lambda
        train = dataclasses.replace(cfg.train, **changed)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if reward is not None:
        if "reward" not in {f.name for f in dataclasses.fields(dom)}:
            raise ConfigError(f"{key}.reward = {reward!r} is not allowed: domain {cfg.domain!r} has one fixed reward "
                              f"(no `{cfg.section}.reward` setting); train the adapter with other train: keys instead")
        try:
            dom = dataclasses.replace(dom, reward=_coerce(f"{key}.reward", reward, str))
        except ConfigError as e:
            raise ConfigError(f"{key}.reward: {e}") from None
    return train, dom


def _check_metrics(cfg: RunConfig) -> None:
    """Refuse metrics the domain cannot compute, naming the metric and the domain."""
    can = entry(cfg.domain).domain.capabilities(cfg.domain_config)
    asked = [("metrics", name) for name in cfg.metrics.names] + [("search.diversity", cfg.search.diversity)]
    for key, name in asked:
        need = METRICS[name].needs
        if need not in can:
            ok = [m for m in (*cfg.metrics.names, *METRICS) if METRICS[m].needs in can and m not in ("reward", "kl")]
            raise ConfigError(f"{key}: {name!r} cannot be computed on domain {cfg.domain!r} (it needs {need!r}, "
                              f"which the domain does not provide); allowed there: {', '.join(dict.fromkeys(ok))}")


SEED_LIMIT = 2**53  # seeds stay exact in JSON and float64, and far below torch's 2**64


def _check_run(cfg: RunConfig) -> None:
    """Rules between sections, and values the sections' own checks let through that cannot work later."""
    dom, sw = cfg.domain_config, cfg.sweep
    for ps in sw.prompt_sets:
        plain_name("sweep.prompt_sets", ps, extra=":=+")  # samples/<prompt set>/ is a folder of the run
        dom.check_prompt_set("sweep.prompt_sets", ps)
    check("sweep.eval_samples_per_prompt", sw.eval_samples_per_prompt, sw.eval_samples_per_prompt >= 1,
          "an integer >= 1")
    check("sweep.seed_offset", sw.seed_offset, 0 <= sw.seed_offset < SEED_LIMIT, "an integer in [0, 2**53)")
    check("train.seed", cfg.train.seed, 0 <= cfg.train.seed < SEED_LIMIT, "an integer in [0, 2**53)")
    check("metrics.kl_samples", cfg.metrics.kl_samples, cfg.metrics.kl_samples >= 1, "an integer >= 1")
    check("metrics.diversity", list(cfg.metrics.diversity), len(cfg.metrics.diversity) >= 1,
          "at least one diversity metric (the x axis of every Pareto front)")
    families = {"sweep.lora_scales": sw.lora_scales, "sweep.aig": sw.aig, "sweep.combined": sw.combined,
                "sweep.kl_lambdas": sw.kl_lambdas}
    check(", ".join(families), "[]", any(families.values()),
          "at least one setting between base and DRaFT (a sweep of base and DRaFT alone has no trade-off to show)")
    check_references(sw.adapters, sw.lora_mix, sw.tuned)
    check("metrics.goodhart", cfg.metrics.goodhart, cfg.metrics.goodhart in ("draft", *sw.adapters),
          "'draft' or a name of sweep.adapters (" + (", ".join(sw.adapters) or "none here") + ")")
    for name in sw.adapters:
        named_training(cfg, name)
    check_settings(cfg.metrics.table, sweep_methods(sw))
    n = coverage_size(cfg)
    if n is not None and {"precision", "recall"} & set(cfg.metrics.diversity):
        check("metrics.k", cfg.metrics.k, cfg.metrics.k < n,
              f"an integer below the number of coverage samples, {n} (precision and recall take the k-th nearest "
              f"neighbour among them; sweep.samples_per_prompt = {sw.samples_per_prompt})")


def from_dict(data: dict, machine: bool = False) -> RunConfig:
    """RunConfig from a parsed params mapping (after `extends` is resolved); `machine` also checks the device and
    the memory the settings need on this machine (lib.limits)."""
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
    _check_run(cfg)
    if machine:
        check_device(cfg.device)
        check_memory(cfg)
    return cfg


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: mappings merge key by key, everything else in `over` replaces `base`."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (YAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line}): keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _text(path: Path) -> str:
    """The text of a params file, or a one-line ConfigError naming the file."""
    if not str(path).isprintable():
        raise ConfigError(f"params file {str(path)!r} is not a usable path (it holds a NUL byte or a control character)")
    try:
        if not path.exists():
            raise ConfigError(f"params file {path} does not exist")
        if path.is_dir():
            raise ConfigError(f"params file {path} is a directory: expected a YAML file such as params/toy.yaml")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"params file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # an embedded NUL byte in the path
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"params file {str(path)!r} is not a usable path ({e})") from None
    except OSError as e:
        raise ConfigError(f"params file {path} cannot be read ({e.strerror or e})") from None


def read_params(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The params mapping of a YAML file with its `extends` chain resolved."""
    path = Path(path)
    text = _text(path)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself ({' -> '.join(map(str, seen))})")
    try:
        data = yaml.load(text, Loader=_Loader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None or data == {}:
        raise ConfigError(f"{path} is empty: a params file holds at least `run: <name>` (the folder results/<name>/)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: params = {data!r} is not allowed: expected a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    check("extends", parent, isinstance(parent, str), "a params file path relative to this file")
    return _merge(read_params(path.parent / parent, (*seen, path.resolve())), data)


def load(path: Path | str, machine: bool = True) -> RunConfig:
    """Read and validate params/<file>.yaml (with `machine`, also against this machine: device and memory)."""
    path = Path(path)
    data = read_params(path)
    if "run" not in data:
        raise ConfigError(f"{path}: no `run:` key: every params file names its run, the folder results/<run>/ it "
                          f"writes to (e.g. `run: {path.stem if path.stem.isidentifier() else 'my_run'}`)")
    try:
        return from_dict(data, machine=machine)
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
