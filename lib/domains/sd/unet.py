"""Views of one diffusers UNet with LoRA adapters, and AIG as a drop-in `pipe.unet` for stock pipelines.

One UNet lives in memory; the models of a run are views of it:
- `BaseUNet`: every attached adapter switched off (the pre-trained network);
- `AdapterUNet`: one named adapter active (DRaFT and each KL model coexist in one UNet);
- `AIGUNet`: eps = gamma(s) eps_base + (1 - gamma(s)) eps_tuned (AIG paper Eq. 11) at the UNet output, with the
  step-indexed time s_i = 1 - i / N read from the pipeline's scheduler (`lib.schedules.StepClock`). Without
  per-branch scales it mixes the raw outputs and the pipeline's classifier-free guidance follows (exact, both are
  linear); with `scales=(w_base, w_tuned)` each branch is guided by its own scale first (ImageReFL's combined
  generation: base 7.5, tuned 1) and the mix is returned for both halves of the pipeline's doubled batch, so the
  pipeline's own guidance step leaves it unchanged.
Attributes the pipelines read (config, dtype, device, add_embedding, peft_config, ...) are forwarded to the UNet.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch

from lib.guidance import AIG
from lib.lora import adapter_disabled
from lib.schedules import Schedule, StepClock

ADAPTER = "draft"  # the name of the fine-tuned LoRA adapter inside the UNet


def unet_of(obj) -> torch.nn.Module:
    """The UNet (or UNet view) of a pipeline, or the object itself."""
    return obj.unet if hasattr(obj, "unet") and not isinstance(obj, UNetView) else obj


def plain_unet(obj) -> torch.nn.Module:
    """The underlying diffusers UNet of a pipeline, a UNet view or a UNet."""
    obj = unet_of(obj)
    while isinstance(obj, UNetView):
        obj = obj._modules["unet"]
    return obj


def has_adapter(unet: torch.nn.Module, adapter_name: str = ADAPTER) -> bool:
    """Whether a peft adapter of this name is attached to the UNet."""
    return adapter_name in (getattr(unet, "peft_config", None) or {})


def has_lora_layers(unet: torch.nn.Module) -> bool:
    """Whether any peft tuner layer sits inside the module."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


class UNetView(torch.nn.Module):
    """A module sharing `unet` that forwards attribute lookups (config, dtype, device, add_embedding, peft_config,
    ...) to it, so pipelines and lib.lora accept it in place of the UNet."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)


class BaseUNet(UNetView):
    """The pre-trained network: the shared UNet with every attached LoRA adapter switched off."""

    def forward(self, *args, **kwargs):
        if has_lora_layers(self.unet):
            with adapter_disabled(self.unet):
                return self.unet(*args, **kwargs)
        return self.unet(*args, **kwargs)


class AdapterUNet(UNetView):
    """The shared UNet with one named adapter active: several loaded adapters (DRaFT, KL models) coexist in one
    UNet and each view activates its own before running. Walking its modules (lib.lora.adapter_disabled,
    lora_scale) activates it too, so those act on this view's adapter."""

    def __init__(self, unet: torch.nn.Module, adapter_name: str):
        super().__init__(unet)
        self.adapter_name = adapter_name

    def activate(self) -> "AdapterUNet":
        """Make this view's adapter the UNet's active one."""
        self._modules["unet"].set_adapter(self.adapter_name)
        return self

    def named_modules(self, *args, **kwargs):
        self.activate()
        return super().named_modules(*args, **kwargs)

    def forward(self, *args, **kwargs):
        self.activate()
        return self.unet(*args, **kwargs)


class AIGUNet(UNetView):
    """A drop-in `pipe.unet` for AIG (module docstring). Tuned branch: `unet` with its active LoRA adapter (or an
    AdapterUNet view); base branch: `base_unet` if given, else the same `unet` with its adapters switched off.
    A branch whose weight is zero is skipped (`lib.guidance.AIG`); `calls` counts UNet evaluations per branch.
    """

    def __init__(self, unet: torch.nn.Module, gamma: Schedule | str, scheduler,
                 base_unet: Optional[torch.nn.Module] = None,
                 scales: Optional[tuple[float, float]] = None):
        super().__init__(unet)
        self.base_unet = base_unet
        self.scheduler = scheduler  # the pipeline's: its timesteps (set by the pipeline's call) give s_i
        self.scales = None if scales is None else (float(scales[0]), float(scales[1]))
        self.guide = AIG(self._eps_base, self._eps_tuned, gamma, lambda t: StepClock(self.scheduler.timesteps)(t))

    @property
    def gamma(self) -> Schedule:
        return self.guide.gamma

    @property
    def calls(self):
        """Counter of UNet evaluations: {'base': n, 'tuned': m}."""
        return self.guide.calls

    def _guided(self, unet, x, t, cond: dict, scale: Optional[float]) -> torch.Tensor:
        """The UNet output; with a branch scale, eps_u + w (eps_c - eps_u) from the doubled batch [uncond; cond],
        repeated for both halves (a scale of 1 runs the conditional half only)."""
        if scale is None:
            return unet(x, t, **cond, return_dict=False)[0]
        if scale == 1.0:
            half = x.shape[0] // 2
            c_cond = {k: _second_half(v) for k, v in cond.items()}
            eps_c = unet(x[half:], _second_half(t), **c_cond, return_dict=False)[0]
            return torch.cat([eps_c, eps_c])
        eps_u, eps_c = unet(x, t, **cond, return_dict=False)[0].chunk(2)
        g = eps_u + scale * (eps_c - eps_u)
        return torch.cat([g, g])

    def _eps_base(self, x, t, cond: dict) -> torch.Tensor:
        scale = None if self.scales is None else self.scales[0]
        if self.base_unet is not None:
            return self._guided(self.base_unet, x, t, cond, scale)
        with adapter_disabled(self.unet):
            return self._guided(self.unet, x, t, cond, scale)

    def _eps_tuned(self, x, t, cond: dict) -> torch.Tensor:
        return self._guided(self.unet, x, t, cond, None if self.scales is None else self.scales[1])

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """Same signature and output as UNet2DConditionModel.forward; sample (B, C, h, w) -> eps (B, C, h, w)."""
        eps = self.guide(sample, timestep, dict(encoder_hidden_states=encoder_hidden_states, **kwargs))
        if not return_dict:
            return (eps,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=eps)


def _second_half(v: Any) -> Any:
    """The conditional half of a doubled batch (tensors with a batch dim, dicts of them); scalars pass through."""
    if isinstance(v, dict):
        return {k: _second_half(u) for k, u in v.items()}
    if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] % 2 == 0 and v.shape[0] > 1:
        return v[v.shape[0] // 2:]
    return v


def aig_unet(pipe, gamma: Schedule | str, adapter_name: str = ADAPTER, base_unet: Optional[torch.nn.Module] = None,
             scales: Optional[tuple[float, float]] = None, unet: Optional[torch.nn.Module] = None) -> AIGUNet:
    """Wrap `pipe.unet` (or `unet`) into the AIG UNet; gamma is the base weight (`step:c` = combined generation).

    With `scales=(w_base, w_tuned)` call the pipeline with guidance_scale > 1 (so that it doubles the batch);
    its own scale is then neutral and each branch uses its own.
    """
    unet = unet_of(pipe) if unet is None else unet
    if isinstance(unet, AdapterUNet):
        adapter_name = unet.adapter_name
    if base_unet is None:
        if not has_adapter(unet, adapter_name):
            raise ValueError(f"the UNet has no LoRA adapter {adapter_name!r} (attached: "
                             f"{list(getattr(unet, 'peft_config', {}) or {})}); load one or pass base_unet=")
        unet.set_adapter(adapter_name)
    return AIGUNet(unet, gamma, pipe.scheduler, base_unet, scales)


@contextlib.contextmanager
def using_unet(pipe, unet: torch.nn.Module) -> Iterator[Any]:
    """Temporarily replace `pipe.unet` (e.g. by an AIGUNet) and put the original back afterwards."""
    original = pipe.unet
    pipe.unet = unet
    try:
        yield pipe
    finally:
        pipe.unet = original
