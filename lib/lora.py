"""LoRA adapters through peft: switching the adapter off (the base branch), LoRA scaling alpha', and `LoRAModes`:
one adapted model run as the base network, as the merged tuned network, or with both in one batch.

These walk peft's tuner layers, so they work the same on the toy MLP (`peft.inject_adapter_in_model`) and on a
diffusers UNet (`unet.add_adapter`, `pipe.load_lora_weights`).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, ContextManager, Iterator, Optional

import torch
from peft.tuners.lora import layer as peft_lora
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


# ------------------------------------------------------------------------------------------ modes of one adapted model
_PLAIN = (peft_lora.Linear, peft_lora.Conv1d, peft_lora.Conv2d, peft_lora.Conv3d)  # vanilla LoRA: y = W x + s B A x


def active_adapter(model: torch.nn.Module) -> Optional[str]:
    """The one adapter every active peft LoRA layer of `model` runs, when `LoRAModes` can serve it: plain LoRA on
    Linear / Conv layers (no DoRA or other variant, no LoRA bias), not merged by peft, adapters enabled. None
    otherwise (no LoRA layers, several adapters active, or a layer kind it does not cover)."""
    names = set()
    for layer in model.modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        if not isinstance(layer, _PLAIN) or layer.merged or layer.disable_adapters:
            return None
        act = [a for a in layer.active_adapters if a in layer.lora_A]
        if any(a in layer.lora_variant or layer.lora_bias.get(a, False) for a in act):
            return None
        names.update(act)
    return next(iter(names)) if len(names) == 1 else None


class LoRAModes:
    """One model with peft LoRA layers of one active adapter, run in these modes without changing its weights:

    - `lora()`: as peft runs it (W x + s B A x beside every adapted layer); with `routed(start)`, the rows of the
      batch from `start` on get the adapter and the rows before it do not: the base and the tuned model in one call
      (peft's mixed-adapter batches, `adapter_names=["__base__"] * start + [adapter] * rest`, done with a 0/1 row
      mask on the LoRA output instead of index lists, so it needs no host-device sync);
    - `base()`: every adapted layer runs its base layer only: exactly what `adapter_disabled` computes, at the cost
      of the plain network;
    - `merged()`: every adapted layer runs a copy of its base layer holding W + s B A (peft's merge formula, at the
      current scale, so `lora_scale` applies): the tuned model at the cost of the plain network. The copies are
      made on first use and kept; after `invalidate()` the next `merged()` makes again those whose LoRA weights,
      base weight or scale changed. Exact up to float rounding; no gradient reaches the LoRA weights through it, so
      use it for sampling only;
    - `split(start, rows)`: both at once, rows [0, start) through the base layers and the rest through the merged
      copies, every other layer running the whole batch: the base and the tuned model in one call with no LoRA
      computed (`both(merged)` picks it, or `routed` while gradients are recorded or when merging is not wanted).

    Modes switch by setting each adapted layer's `forward` (the layers stay in the model, so peft's and diffusers'
    walks over them keep working). Each switch checks the layers' actual state, so several LoRAModes of one model
    (say, two AIG UNets of one pipeline) never run a layer in a mode they did not set. `close()` (or leaving
    `lora_modes`) puts every layer back to `lora()` and drops the merged copies.
    """

    def __init__(self, model: torch.nn.Module, adapter: Optional[str] = None):
        self.adapter = adapter or active_adapter(model)
        if self.adapter is None:
            raise ValueError(f"{type(model).__name__}: LoRAModes needs plain peft LoRA layers with one active adapter")
        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer) and self.adapter in m.lora_A]
        self._base = [layer.get_base_layer().forward for layer in self.layers]
        self._merged: list = []
        self._checked = False  # whether the merged copies were checked against the weights since `invalidate()`
        self._twins: dict[int, tuple] = {}  # id(layer) -> (cache key, merged copy of the base layer)
        self._mask: Optional[torch.Tensor] = None
        self._masks: dict = {}

    # --- modes
    @property
    def mode(self) -> str:
        """'lora', 'base', 'merged' (as this object set it), or 'other' (switched by another LoRAModes)."""
        current = self.layers[0].__dict__.get("forward")
        if current is None:
            return "lora"
        return "base" if current is self._base[0] else "merged" if self._merged and current is self._merged[0] \
            else "other"

    def _set(self, forwards: list) -> None:
        for layer, fwd in zip(self.layers, forwards):
            layer.__dict__["forward"] = fwd  # an instance attribute, not a parameter, buffer or module

    def lora(self) -> None:
        """Every layer as peft runs it."""
        if "forward" in self.layers[0].__dict__:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)

    def base(self) -> None:
        """Every adapted layer runs its base layer alone (the pre-trained network)."""
        if self.layers[0].__dict__.get("forward") is not self._base[0]:
            self._set(self._base)

    def merged(self) -> None:
        """Every adapted layer runs its merged copy W + s B A (made again first where a weight or a scale changed,
        when the copies were not checked since `invalidate()`)."""
        if self._merged and self._checked:
            if self.layers[0].__dict__.get("forward") is not self._merged[0]:
                self._set(self._merged)
            return
        self._merged = []
        for layer in self.layers:
            key, entry = self._key(layer), self._twins.get(id(layer))
            if entry is None or entry[0] != key:
                entry = self._twins[id(layer)] = (key, self._merge(layer))
            self._merged.append(entry[1].forward)
        self._checked = True
        self._set(self._merged)

    def invalidate(self) -> None:
        """Check the merged copies against the weights and scales on the next `merged()`."""
        self._checked = False

    def close(self) -> None:
        """Back to `lora()`; merged copies dropped."""
        self.lora()
        self._twins, self._merged, self._checked = {}, [], False

    # --- merging
    def _key(self, layer) -> tuple:
        a = self.adapter
        weights = (layer.get_base_layer().weight, layer.lora_A[a].weight, layer.lora_B[a].weight)
        return (float(layer.scaling[a]), *((w._version, w.data_ptr(), w.dtype, w.device) for w in weights))

    def _merge(self, layer) -> torch.nn.Module:
        """A copy of the base layer with weight W + delta (peft's `merge`: `weight.data += get_delta_weight`)."""
        base = layer.get_base_layer()
        twin = copy.copy(base)
        twin._parameters = dict(base._parameters)
        with torch.no_grad():
            w = base.weight.detach().clone()
            w += layer.get_delta_weight(self.adapter)
        twin._parameters["weight"] = torch.nn.Parameter(w, requires_grad=False)
        return twin

    # --- both models in one call
    @contextlib.contextmanager
    def split(self, start: int, rows: int) -> Iterator[None]:
        """Inside: a call on a batch of `rows` rows runs rows [0, start) through the base layers and [start, rows)
        through the merged ones: the base and the tuned model in one call with no LoRA computed (each adapted layer
        runs two products, W on the base rows and W + s B A on the tuned rows; every other layer the whole batch).
        The same numbers as `base()` and `merged()` calls on the two parts; no gradient reaches the adapter."""
        self.merged()
        self._set([_split_rows(b, m, start, rows) for b, m in zip(self._base, self._merged)])
        try:
            yield
        finally:
            self.lora()

    def both(self, merged: bool = True) -> Callable[[int, int], ContextManager]:
        """The context for one call of both models: `split` (merged, while no gradient is recorded), else `routed`."""
        return lambda start, rows: (self.split(start, rows) if merged and not torch.is_grad_enabled()
                                    else self.routed(start, rows))

    @contextlib.contextmanager
    def routed(self, start: int, rows: int) -> Iterator[None]:
        """Inside: a call on a batch of `rows` rows runs rows [0, start) as the base and [start, rows) as the tuned
        model (mode `lora()`; a forward hook on each LoRA B multiplies its output by the rows' 0/1 mask)."""
        self.lora()
        mask = torch.zeros(rows)
        mask[start:] = 1.0
        self._mask, self._masks = mask, {}
        hooks = [layer.lora_B[self.adapter].register_forward_hook(self._route) for layer in self.layers]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
            self._mask, self._masks = None, {}

    def _route(self, module, args, out: torch.Tensor) -> Optional[torch.Tensor]:
        if self._mask is None:
            return None
        if out.shape[0] != self._mask.shape[0]:
            raise RuntimeError(f"routed LoRA call: a layer saw {out.shape[0]} rows where the batch has "
                               f"{self._mask.shape[0]}; routing needs the batch along dim 0 of every adapted layer")
        key = (out.device, out.dtype)
        if key not in self._masks:
            self._masks[key] = self._mask.to(device=out.device, dtype=out.dtype)
        return out * self._masks[key].view(-1, *([1] * (out.ndim - 1)))


def _split_rows(base: Callable, merged: Callable, start: int, rows: int) -> Callable:
    """A layer forward running rows [0, start) through `base` and the rest through `merged`."""
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.shape[0] != rows:
            raise RuntimeError(f"split LoRA call: a layer saw {x.shape[0]} rows where the batch has {rows}; "
                               f"splitting needs the batch along dim 0 of every adapted layer")
        return torch.cat([base(x[:start], *args, **kwargs), merged(x[start:], *args, **kwargs)])

    return forward


@contextlib.contextmanager
def lora_modes(model: torch.nn.Module) -> Iterator[Optional[LoRAModes]]:
    """`LoRAModes` of the model for the duration (None when `active_adapter` finds none it can serve); every layer is
    back to peft's own forward afterwards."""
    adapter = active_adapter(model)
    if adapter is None:
        yield None
        return
    modes = LoRAModes(model, adapter)
    try:
        yield modes
    finally:
        modes.close()
