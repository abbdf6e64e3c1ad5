"""Named adapters beside DRaFT's: their names, the LoRA-mixing sweep over two of them, and one network that carries
several trained adapters so that `lib.mixing.lora_mix` can run W + alpha dW_A + beta dW_B (DRaFT, Clark et al.
2024, Sec. 5.3, Fig. 7 right).

A run trains DRaFT (adapter name "draft", results/<run>/train/draft/), one KL model per lambda, and the extra
trainings of `sweep.adapters` (name -> train: keys changed, and `reward:` where the domain has a reward setting),
each into results/<run>/train/<name>/. Methods address them by name: `Method("lora_mix", ((a, alpha), (b, beta)))`
and `Method("combined", c, scales, adapter=name)` (lib.methods).

`mix_model` works the same on models that share one network (a diffusers UNet with several loaded adapters, whose
views activate their own adapter before running) and on separate copies (the toy MLP): adapters of separate copies
are added to a copy of the first under their own names (`lib.mixing.add_named_adapter`). `mixed` holds the mix for
every call: it re-applies the active adapters and scales in a forward pre-hook of each LoRA layer, so a view that
activates its own adapter before running still runs the mix.
"""
from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict

from lib.errors import ConfigError, check
from lib.lora import active_adapter
from lib.mixing import add_named_adapter, lora_mix, mixing_grid

DRAFT = "draft"  # DRaFT's own adapter (results/<run>/train/draft/)
NAME_RULE = r"[a-z][a-z0-9_]{0,39}"
RESERVED = ("draft", "base", "kl")


def check_adapter_name(key: str, name: object) -> str:
    """`name` if it can name an extra training (a lower-case identifier, not draft / base / kl), else ConfigError."""
    ok = isinstance(name, str) and re.fullmatch(NAME_RULE, name) is not None and name not in RESERVED
    check(key, name, ok, "a lower-case name (letters, digits, '_', starting with a letter, at most 40 characters) "
                         f"other than {', '.join(RESERVED)}: it names the folder train/<name>/ and metrics.csv settings")
    return name


@dataclass(frozen=True)
class LoraMixConfig:
    """`sweep.lora_mix`: the (alpha, beta) grid of two adapters (DRaFT Fig. 7 right); empty `adapters` = off."""

    adapters: tuple[str, ...] = ()  # two names: 'draft' or names of sweep.adapters
    grid: float = 0.25  # alpha, beta in {0, grid, ..., 1}

    def __post_init__(self):
        check("sweep.lora_mix.adapters", list(self.adapters),
              len(self.adapters) in (0, 2) and len(set(self.adapters)) == len(self.adapters),
              "two distinct adapter names ('draft' or names of sweep.adapters), or none (no LoRA mixing)")
        mixing_grid(self.grid, key="sweep.lora_mix.grid")

    @property
    def points(self) -> tuple[tuple[tuple[str, float], ...], ...]:
        """Every grid point as ((A, alpha), (B, beta)), alpha-major; none when off."""
        if not self.adapters:
            return ()
        a, b = self.adapters
        return tuple(((a, x), (b, y)) for x, y in mixing_grid(self.grid, key="sweep.lora_mix.grid"))


def check_references(adapters: Mapping[str, object], lora_mix: LoraMixConfig, tuned: tuple[str, ...]) -> None:
    """Every adapter that `sweep.lora_mix` and `sweep.tuned` name exists: 'draft' or a key of `sweep.adapters`."""
    known = [DRAFT, *adapters]
    for key, names in (("sweep.lora_mix.adapters", lora_mix.adapters), ("sweep.tuned", tuned)):
        for name in names:
            if name not in known:
                raise ConfigError(f"{key}: adapter {name!r} is not trained by this run; allowed: {', '.join(known)} "
                                  "(add it under sweep.adapters: {<name>: {<train keys>}})")
    for name in tuned:
        check("sweep.tuned", name, name != DRAFT, "names of sweep.adapters (DRaFT is the tuned branch already)")


def _lora_layers(model: torch.nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def mix_model(models: Mapping[str, torch.nn.Module]) -> tuple[torch.nn.Module, dict[str, str]]:
    """One network carrying the adapter of every model in `models` (name -> a trained model, each with one active
    adapter), and the peft adapter name of each. Models that share the first one's LoRA layers (one UNet, several
    views) are used as they are; the adapters of separate copies are added to a copy of the first."""
    names = list(models)
    first = models[names[0]]
    peft_names = {names[0]: active_adapter(first)}  # walking a view's modules activates its adapter
    own = {id(m) for m in _lora_layers(first)}
    target = first
    for name in names[1:]:
        other = models[name]
        adapter = active_adapter(other)
        if adapter is None:
            raise ValueError(f"adapter {name!r}: its model has no single active LoRA adapter")
        if own & {id(m) for m in _lora_layers(other)}:  # the same network: the adapter is on it already
            peft_names[name] = adapter
            continue
        if target is first:
            target = copy.deepcopy(first)  # never add adapters to a model the other methods use
        config = getattr(other, "peft_config", {}).get(adapter)
        if config is None:
            raise ValueError(f"adapter {name!r}: its model records no peft config for {adapter!r}")
        new = f"mix_{name}"
        add_named_adapter(target, new, config, get_peft_model_state_dict(other, adapter_name=adapter))
        peft_names[name] = new
    if None in peft_names.values():
        raise ValueError(f"adapter {names[0]!r}: its model has no single active LoRA adapter")
    return target.requires_grad_(False), peft_names


@contextlib.contextmanager
def mixed(model: torch.nn.Module, weights: Mapping[str, float]) -> Iterator[torch.nn.Module]:
    """Inside: every call of `model` runs W + sum_k w_k dW_k over the peft adapters named in `weights` (DRaFT Sec.
    5.3), through `lib.mixing.lora_mix` (which checks the names and restores every layer afterwards) and a forward
    pre-hook per LoRA layer that re-applies the mix (a view that activates its own adapter runs the mix too)."""
    active = [n for n, w in weights.items() if w != 0]
    scales = {n: float(w) for n, w in weights.items() if w != 0}

    def hook(layer, args):
        if list(layer.active_adapters) != active:
            layer.set_adapter(active)
        for n, w in scales.items():
            if n in layer.lora_A:
                layer.set_scale(n, w)  # scaling[n] = w * lora_alpha[n] / r[n]

    with lora_mix(model, weights):
        handles = [layer.register_forward_pre_hook(hook) for layer in _lora_layers(model)]
        try:
            yield model
        finally:
            for h in handles:
                h.remove()


class RewardDomain:
    """The run's domain built with another reward setting, for an extra training of sweep.adapters that sets
    `reward:`: every attribute is the inner domain's; `stamp()` adds the reward, so the training's config hash
    (lib.train) changes with it."""

    def __init__(self, inner: object, reward: str):
        self._inner, self._reward = inner, reward

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_inner"], name)

    def stamp(self) -> dict:
        """The inner domain's stamp with the training's reward."""
        return {**self._inner.stamp(), "train_reward": self._reward}
