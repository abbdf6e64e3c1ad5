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
  Cost (`lib.lora.LoRAModes`; the UNet's layers are back as peft runs them when each call returns): the base branch
  runs as the plain UNet, a tuned-only step on the merged UNet (W + s B A, kept between calls), and with `paired` a
  step that needs both branches is one UNet call on the stacked batch [base rows; tuned rows] (4x the prompts with
  classifier-free guidance), each adapted layer running W on the base rows and W + s B A on the tuned rows
  (`LoRAModes.split`; with merged=False, peft's LoRA on the tuned rows, `LoRAModes.routed`). The default
  (`paired_default`) is the measured one, decided call by call: one call where it is overhead-bound
  (`lib.guidance.pairing_pays`: the tiny pipeline and the miniature world up to a few dozen images per call on CPU,
  at any batch on a GPU; SD1.x on a GPU at one image), two calls where it is compute-bound (the world's sweep batch
  of 256 on CPU, SD1.x / SDXL at sweep batches on a GPU).
Attributes the pipelines read (config, dtype, device, add_embedding, peft_config, ...) are forwarded to the UNet.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Iterator, Optional

import torch

from lib.guidance import AIG, pairing_pays
from lib.lora import LoRAModes, active_adapter, adapter_disabled
from lib.schedules import Schedule, StepClock

ADAPTER = "draft"  # the name of the fine-tuned LoRA adapter inside the UNet


def paired_default(unet: torch.nn.Module, x: Optional[torch.Tensor] = None) -> bool:
    """Whether AIG's mixed steps should be one call on the stacked batch: where a UNet call on x (the pipeline's
    batch, classifier-free guidance's doubling included) is overhead-bound (`lib.guidance.pairing_pays`); without
    x, whether that holds at one image with guidance at the UNet's own sample size on its device (a domain's
    `paired_calls`: pairing can pay at small batches)."""
    unet = plain_unet(unet)
    p = next(unet.parameters())
    if x is None:
        size = int(unet.config.sample_size)
        return pairing_pays(sum(q.numel() for q in unet.parameters()), 2 * int(unet.config.in_channels) * size ** 2,
                            p.device)
    return pairing_pays(sum(q.numel() for q in unet.parameters()), x.numel(), x.device)


def unet_of(obj: Any) -> torch.nn.Module:
    """The UNet (or UNet view) of a pipeline, or the object itself."""
    return obj.unet if hasattr(obj, "unet") and not isinstance(obj, UNetView) else obj


def plain_unet(obj: Any) -> torch.nn.Module:
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

    def forward(self, *args, **kwargs) -> Any:
        """The UNet's forward with its adapters switched off."""
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

    def named_modules(self, *args, **kwargs) -> Iterator:
        """nn.Module.named_modules, after activating this view's adapter."""
        self.activate()
        return super().named_modules(*args, **kwargs)

    def forward(self, *args, **kwargs) -> Any:
        """The UNet's forward with this view's adapter active."""
        self.activate()
        return self.unet(*args, **kwargs)


class AIGUNet(UNetView):
    """A drop-in `pipe.unet` for AIG (module docstring). Tuned branch: `unet` with its active LoRA adapter (or an
    AdapterUNet view); base branch: `base_unet` if given, else the same `unet` with its adapters switched off.
    A branch whose weight is zero is skipped (`lib.guidance.AIG`); `calls` counts UNet calls by what they evaluate.
    paired (True: always one call where both branches count, False: never, None: where `paired_default` says it
    pays, call by call) and merged choose the cost paths of the module docstring.
    """

    def __init__(self, unet: torch.nn.Module, gamma: Schedule | str, scheduler: Any,
                 base_unet: Optional[torch.nn.Module] = None,
                 scales: Optional[tuple[float, float]] = None, paired: Optional[bool] = None, merged: bool = True):
        super().__init__(unet)
        self.base_unet = base_unet
        self.scheduler = scheduler  # the pipeline's: its timesteps (set by the pipeline's call) give s_i
        self.scales = None if scales is None else (float(scales[0]), float(scales[1]))
        self.adapter = active_adapter(unet) if base_unet is None else None
        self.paired = self.adapter is not None and paired is not False  # may pair (always, or where it pays)
        self.merged = self.adapter is not None and merged
        self._modes: Optional[LoRAModes] = None  # holds the merged layers between calls
        self._clock: tuple = (None, None)  # (the scheduler's timesteps tensor, its StepClock)
        n = sum(q.numel() for q in plain_unet(unet).parameters())
        pays = (lambda x: pairing_pays(n, x.numel(), x.device)) if paired is None else None  # paired_default's rule
        self.guide = AIG(self._eps_base, self._eps_tuned, gamma, lambda t: self.clock(t),
                         self._eps_pair if self.paired else None, fixed_clock=True, pair_when=pays)

    @property
    def clock(self) -> StepClock:
        """The step clock of the pipeline's current chain, made again when set_timesteps replaced the list (a new
        chain: the weights cached per timestep are dropped and the merged layers checked against the weights)."""
        ts = self.scheduler.timesteps
        if self._clock[0] is not ts:
            self._clock = (ts, StepClock(ts))
            self.guide._weights.clear()
            if self._modes is not None:
                self._modes.invalidate()
        return self._clock[1]

    @property
    def gamma(self) -> Schedule:
        """The base model's weight schedule."""
        return self.guide.gamma

    @property
    def calls(self) -> Counter:
        """Counter of UNet calls by what they evaluate: {'base': n, 'tuned': m, 'base+tuned': k}."""
        return self.guide.calls

    @staticmethod
    def _rows(x, t, cond: dict, scale: Optional[float]) -> tuple:
        """The rows of the pipeline's batch a branch runs on: all of them, or the conditional half (scale 1)."""
        if scale != 1.0:
            return x, t, cond
        half = x.shape[0] // 2
        return x[half:], _second_half(t), {k: _second_half(v) for k, v in cond.items()}

    @staticmethod
    def _finish(out: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
        """A branch's prediction for the pipeline's batch: the raw output (no branch scale), else its guided
        prediction eps_u + w (eps_c - eps_u) repeated for both halves (scale 1: the conditional output repeated)."""
        if scale is None:
            return out
        if scale == 1.0:
            return torch.cat([out, out])
        eps_u, eps_c = out.chunk(2)
        g = eps_u + scale * (eps_c - eps_u)
        return torch.cat([g, g])

    def _guided(self, unet, x, t, cond: dict, scale: Optional[float]) -> torch.Tensor:
        x, t, cond = self._rows(x, t, cond, scale)
        return self._finish(unet(x, t, **cond, return_dict=False)[0], scale)

    def _branch_scales(self) -> tuple[Optional[float], Optional[float]]:
        return (None, None) if self.scales is None else self.scales

    def _eps_base(self, x, t, cond: dict) -> torch.Tensor:
        scale = self._branch_scales()[0]
        if self.base_unet is not None:
            return self._guided(self.base_unet, x, t, cond, scale)
        if self._modes is not None:
            self._modes.base()
            return self._guided(self.unet, x, t, cond, scale)
        with adapter_disabled(self.unet):
            return self._guided(self.unet, x, t, cond, scale)

    def _eps_tuned(self, x, t, cond: dict) -> torch.Tensor:
        if self._modes is not None:
            self._modes.merged() if self.merged and not torch.is_grad_enabled() else self._modes.lora()
        return self._guided(self.unet, x, t, cond, self._branch_scales()[1])

    def _eps_pair(self, x, t, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches from one UNet call on the stacked rows [base rows; tuned rows]."""
        scales = self._branch_scales()
        parts = [self._rows(x, t, cond, w) for w in scales]
        n = parts[0][0].shape[0]
        rows = n + parts[1][0].shape[0]
        with self._modes.both(self.merged)(n, rows):
            out = self.unet(torch.cat([parts[0][0], parts[1][0]]), _stack_rows([p[1] for p in parts], parts),
                            **_stack_rows([p[2] for p in parts], parts), return_dict=False)[0]
        return self._finish(out[:n], scales[0]), self._finish(out[n:], scales[1])

    def release(self) -> None:
        """Drop the merged layers kept between calls (the memory of one copy of the adapted layers' weights)."""
        if self._modes is not None:
            self._modes.close()
            self._modes = None

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs) -> Any:
        """Same signature and output as UNet2DConditionModel.forward; sample (B, C, h, w) -> eps (B, C, h, w)."""
        if self._modes is None and (self.paired or self.merged):
            self._modes = LoRAModes(self.unet, self.adapter)
        self.clock  # noqa: B018 - a new chain resets the per-step caches first
        try:
            eps = self.guide(sample, timestep, dict(encoder_hidden_states=encoder_hidden_states, **kwargs))
        finally:
            if self._modes is not None:
                self._modes.lora()  # the UNet as peft runs it between calls
        if not return_dict:
            return (eps,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=eps)


def _stack_rows(values: list, parts: list) -> Any:
    """Stack per-branch values along the batch: tensors with one row per sample are concatenated, dicts stacked key
    by key, anything shared by the batch (a scalar timestep, None) is passed through."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _stack_rows([v[k] for v in values], parts) for k in first}
    if torch.is_tensor(first) and first.ndim >= 1 and all(v.shape[0] == p[0].shape[0] for v, p in zip(values, parts)):
        return torch.cat(values)
    return first


def _second_half(v: Any) -> Any:
    """The conditional half of a doubled batch (tensors with a batch dim, dicts of them); scalars pass through."""
    if isinstance(v, dict):
        return {k: _second_half(u) for k, u in v.items()}
    if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] % 2 == 0 and v.shape[0] > 1:
        return v[v.shape[0] // 2:]
    return v


def aig_unet(pipe: Any, gamma: Schedule | str, adapter_name: str = ADAPTER, base_unet: Optional[torch.nn.Module] = None,
             scales: Optional[tuple[float, float]] = None, unet: Optional[torch.nn.Module] = None,
             paired: Optional[bool] = None, merged: bool = True) -> AIGUNet:
    """Wrap `pipe.unet` (or `unet`) into the AIG UNet; gamma is the base weight (`step:c` = combined generation).

    With `scales=(w_base, w_tuned)` call the pipeline with guidance_scale > 1 (so that it doubles the batch);
    its own scale is then neutral and each branch uses its own. paired / merged: the cost paths (AIGUNet).
    """
    unet = unet_of(pipe) if unet is None else unet
    if isinstance(unet, AdapterUNet):
        adapter_name = unet.adapter_name
    if base_unet is None:
        if not has_adapter(unet, adapter_name):
            raise ValueError(f"the UNet has no LoRA adapter {adapter_name!r} (attached: "
                             f"{list(getattr(unet, 'peft_config', {}) or {})}); load one or pass base_unet=")
        unet.set_adapter(adapter_name)
    return AIGUNet(unet, gamma, pipe.scheduler, base_unet, scales, paired, merged)


@contextlib.contextmanager
def using_unet(pipe: Any, unet: torch.nn.Module) -> Iterator[Any]:
    """Temporarily replace `pipe.unet` (e.g. by an AIGUNet) and put the original back afterwards."""
    original = pipe.unet
    pipe.unet = unet
    try:
        yield pipe
    finally:
        pipe.unet = original
