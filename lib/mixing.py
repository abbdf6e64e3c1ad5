"""LoRA mixing of adapters trained on different rewards (DRaFT, Clark et al. 2024, Sec. 5.3 and Fig. 7 right):
at inference every adapted layer runs

    W x + alpha * s_A B_A A_A x + beta * s_B B_B A_B x,     i.e. the weights W + alpha dW_A + beta dW_B,

with dW_k = s_k B_k A_k (s_k = lora_alpha_k / r_k, peft's scaling). Done through peft / diffusers, not by hand:
both adapters are made active with per-adapter scales (diffusers' `set_adapters(names, weights)` on a model that
has it, e.g. a UNet; otherwise the same peft layer calls it makes: `set_adapter(names)` + `set_scale(name, w)` on
every tuner layer, e.g. the toy MLP of `peft.inject_adapter_in_model`). `lora_mix` restores every layer's active
adapters, scales, enabled flag and requires_grad flags afterwards. `mixing_grid` gives DRaFT's (alpha, beta) grid.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Iterator, Mapping, Optional

import torch
from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from lib.errors import check


def _layers(model: torch.nn.Module, kind: type = BaseTunerLayer) -> list:
    """The peft tuner layers of `kind` in `model` (ValueError when there are none)."""
    layers = [m for m in model.modules() if isinstance(m, kind)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no peft LoRA layers: add the adapters first")
    return layers


def adapter_names(model: torch.nn.Module) -> list[str]:
    """The LoRA adapter names present on any peft LoRA layer of `model`, sorted."""
    return sorted({name for layer in _layers(model, LoraLayer) for name in layer.lora_A})


def _diffusers_managed(model: torch.nn.Module) -> bool:
    """Whether `model` carries diffusers' PEFT mixin with adapters loaded (so `model.set_adapters` applies)."""
    return callable(getattr(model, "set_adapters", None)) and bool(getattr(model, "_hf_peft_config_loaded", False))


@contextlib.contextmanager
def lora_mix(model: torch.nn.Module, weights: Mapping[str, float]) -> Iterator[torch.nn.Module]:
    """Inside: `model` runs W + sum_k w_k dW_k over the adapters named in `weights` (DRaFT Sec. 5.3); adapters at
    weight 0 are left inactive (exactly their zero contribution), so {A: 0, B: 0} is the base model. Afterwards
    every tuner layer's active adapters, scales, enabled flag and requires_grad flags are as before."""
    present = adapter_names(model)
    for name, w in weights.items():
        if name not in present:
            raise ValueError(f"lora_mix: adapter {name!r} is not on {type(model).__name__}; it has {present}")
        if not (isinstance(w, numbers.Real) and math.isfinite(w)):
            raise ValueError(f"lora_mix: weight {w!r} of adapter {name!r} is not a finite number")
    layers = _layers(model, BaseTunerLayer)
    for layer in layers:
        if layer.merged:
            raise RuntimeError("lora_mix: a peft layer has merged adapters; unmerge them first")
        if "forward" in layer.__dict__:
            raise RuntimeError("lora_mix: a lib.lora.LoRAModes mode is set on the model; leave lora_modes first")
    saved = [(list(layer.active_adapters), bool(layer.disable_adapters),
              dict(getattr(layer, "scaling", {})), [p.requires_grad for p in layer.parameters()])
             for layer in layers]
    names = [n for n, w in weights.items() if w != 0]
    scales = [float(weights[n]) for n in names]
    try:
        for layer in layers:
            if layer.disable_adapters:
                layer.enable_adapters(True)
        if _diffusers_managed(model):
            model.set_adapters(names, weights=scales)  # diffusers: set_adapter(names) + set_scale(n, w) per layer
        else:
            for layer in layers:
                layer.set_adapter(names)
                for n, w in zip(names, scales):
                    layer.set_scale(n, w)  # scaling[n] = w * lora_alpha[n] / r[n] (a no-op where n is absent)
        yield model
    finally:
        for layer, (active, disabled, scaling, grads) in zip(layers, saved):
            layer.set_adapter(active)
            if disabled:
                layer.enable_adapters(False)
            if scaling:
                layer.scaling.update(scaling)
            for p, g in zip(layer.parameters(), grads):
                p.requires_grad_(g)


def mixing_grid(step: float = 0.25, key: str = "step") -> tuple[tuple[float, float], ...]:
    """DRaFT Fig. 7 right: all (alpha, beta) in {0, step, ..., 1}^2, alpha-major ((0, 0), (0, step), ...)."""
    n = round(1 / step) if isinstance(step, (int, float)) and step > 0 else 0
    check(key, step, n >= 1 and math.isclose(n * step, 1.0, rel_tol=0, abs_tol=1e-9),
          "a number in (0, 1] that divides 1 (0.25, 0.5, 1, ...)")
    values = [i / n for i in range(n + 1)]  # exact 0 and 1, no accumulated float error
    return tuple((a, b) for a in values for b in values)


def add_named_adapter(model: torch.nn.Module, name: str, config: PeftConfig,
                      state: Optional[Mapping[str, torch.Tensor]] = None) -> torch.nn.Module:
    """Add a LoRA adapter `name` (diffusers' `add_adapter` on a model that has it, else peft's
    `inject_adapter_in_model`) and load its weights from a peft state dict (`get_peft_model_state_dict` keys);
    the adapters active before stay the active ones (the new one alone when there were none), with peft's
    requires_grad flags for that active set (use `lora_mix` to run several)."""
    before = [layer for layer in model.modules() if isinstance(layer, BaseTunerLayer)]
    active = list(before[0].active_adapters) if before else None
    if name in (adapter_names(model) if before else []):
        raise ValueError(f"adapter {name!r} is already on {type(model).__name__}")
    if callable(getattr(model, "add_adapter", None)) and callable(getattr(model, "set_adapters", None)):
        model.add_adapter(config, adapter_name=name)
    else:
        inject_adapter_in_model(config, model, adapter_name=name)
    if state is not None:
        result = set_peft_model_state_dict(model, dict(state), adapter_name=name)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and f".{name}." in k]
        if unexpected or missing:
            bad = (unexpected or missing)[0]
            raise ValueError(f"adapter {name!r}: {len(unexpected)} state keys match no layer and {len(missing)} "
                             f"LoRA weights are not in the state (e.g. {bad})")
    for layer in model.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.set_adapter(active if active is not None else [name])
    return model
