"""Every method of the sweep as a denoiser: base, DRaFT, LoRA scaling alpha', AIG gamma(s), combined generation
(a step schedule) and KL-regularised models. A method is named by (method, setting) as in metrics.csv."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from lib.config import SweepConfig
from lib.domain import Domain
from lib.guidance import Denoiser, aig
from lib.lora import lora_scale
from lib.train import base_branch


@dataclass(frozen=True)
class Method:
    """One point of the sweep: method in {base, draft, lora_scale, aig, combined, kl} and its setting string."""

    method: str
    setting: str = "-"

    @property
    def label(self) -> str:
        """Row label for figures: 'aig power:2', 'draft'."""
        return self.method if self.setting == "-" else f"{self.method} {self.setting}"

    @property
    def key(self) -> str:
        """File-name-safe identifier."""
        return f"{self.method}__{self.setting}".replace(":", "-").replace("=", "-").replace(",", "_")


def sweep_methods(sweep: SweepConfig) -> list[Method]:
    """base, draft, LoRA scales, AIG schedules, combined switch points and KL lambdas, in plotting order."""
    out = [Method("base"), Method("draft")]
    out += [Method("lora_scale", f"alpha={a:g}") for a in sweep.lora_scales]
    out += [Method("aig", spec) for spec in sweep.aig]
    out += [Method("combined", f"step:{c:g}") for c in sweep.combined]
    out += [Method("kl", f"lambda={lam:g}") for lam in sweep.kl_lambdas]
    return out


@contextlib.contextmanager
def method_denoiser(domain: Domain, m: Method, tuned: torch.nn.Module,
                    kl_models: dict[str, torch.nn.Module] | None = None) -> Iterator[Denoiser]:
    """The denoiser of method m, built from the DRaFT model `tuned` (base = its adapter switched off)."""
    num_t = domain.num_train_timesteps
    if m.method in ("base", "draft", "aig", "combined"):
        spec = {"base": "base", "draft": "tuned"}.get(m.method, m.setting)
        yield aig(base_branch(domain, tuned), domain.denoiser(tuned), spec, num_t)
    elif m.method == "lora_scale":
        with lora_scale(tuned, float(m.setting.split("=")[1])):
            yield domain.denoiser(tuned)
    elif m.method == "kl":
        if not kl_models or m.setting not in kl_models:
            raise KeyError(f"no KL model for {m.setting}; trained: {sorted(kl_models or {})}")
        yield domain.denoiser(kl_models[m.setting])
    else:
        raise ValueError(f"method = {m.method!r}; allowed: base, draft, lora_scale, aig, combined, kl")
