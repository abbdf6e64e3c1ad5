"""LoRA adapters through peft: switching the adapter off (the base branch) and LoRA scaling alpha'.

These walk peft's tuner layers, so they work the same on the toy MLP and on a diffusers UNet.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer


def _layers(model: torch.nn.Module, kind=BaseTunerLayer) -> list:
    layers = [m for m in model.modules() if isinstance(m, kind)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no peft adapter layers: add a LoRA adapter first")
    return layers


@contextlib.contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the model as the base model (every adapter layer switched off), then switch them back on."""
    layers = _layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@contextlib.contextmanager
def lora_scale(model: torch.nn.Module, alpha: float) -> Iterator[torch.nn.Module]:
    """Scale every active LoRA update by alpha' (0 = base, 1 = the fine-tuned model; AIG paper Lemma 2)."""
    layers = _layers(model, LoraLayer)
    for layer in layers:
        for name in layer.active_adapters:
            layer.set_scale(name, alpha)
    try:
        yield model
    finally:
        for layer in layers:
            for name in layer.active_adapters:
                layer.set_scale(name, 1.0)


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable LoRA parameters (names containing 'lora_')."""
    return [p for n, p in model.named_parameters() if "lora_" in n]
