"""What a run's parameters ask of this machine, checked when the params load: the device exists, and the memory a
setting needs fits.

The memory estimate is a documented lower bound, so it only refuses what cannot fit (a setting it accepts may still
run out of memory, never the other way round). Terms, from the sizes the domain's config reports
(`sample_bytes`, `feature_bytes`, `step_bytes`, `model_need`, `prompt_count`):

- notebook 02 / 03 (host memory): the samples of one method and of the base model on the coverage set,
  2 x N x sample_bytes with N = sweep.samples_per_prompt x coverage prompts; their features, 2 x N x feature_bytes;
  and, with precision or recall, the k-NN distance matrices, 2 x N^2 x 8 bytes;
- the other prompt sets: N_eval x sample_bytes per method (sweep.eval_samples_per_prompt x prompts);
- a sampling batch: sweep.batch_size x step_bytes(sampling) on the run's device;
- a training batch: train.batch_size x step_bytes(training) on the run's device;
- the model, where the params set its size (the toy MLP: its weights, gradients and AdamW moments in float32).

Memory is physical RAM (`os.sysconf`), or the GPU's total memory for the device terms on CUDA.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lib.errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:<index>, mps"


def check_device(name: Any) -> None:
    """Refuse a device name torch does not know or this machine does not have, naming the key and the rule."""
    ok = isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", name) is not None
    if not ok:
        raise ConfigError(f"device = {name!r} is not allowed: expected one of {DEVICES}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device = {name!r} is not allowed here: this machine has no CUDA device "
                              f"(torch.cuda.is_available() is False); use device: auto (a GPU when there is one) or cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device = {name!r} is not allowed here: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device = 'mps' is not allowed here: torch.backends.mps.is_available() is False; use auto or cpu")


def host_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory(name: str) -> tuple[int, str]:
    """(bytes, description) of the memory the device terms live in: the GPU's for CUDA, else host memory."""
    if (name == "auto" or name.startswith("cuda")) and torch.cuda.is_available():
        index = int(name.split(":")[1]) if ":" in name else 0
        props = torch.cuda.get_device_properties(index)
        return props.total_memory, f"the GPU {props.name} has"
    return host_memory(), "this machine has"


def size(n: float) -> str:
    """Bytes in binary units: '1.5 GiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


@dataclass(frozen=True)
class Need:
    """One memory term: the key that sets it, its value, the bytes it needs, how they add up, and whether it lives
    on the run's device (else in host memory)."""

    key: str
    value: Any
    bytes: float
    how: str
    on_device: bool = False


def coverage_size(cfg) -> Optional[int]:
    """Samples in the coverage set (None when the number of coverage prompts is not known before loading them)."""
    n = cfg.domain_config.prompt_count("coverage")
    return None if n is None else n * cfg.sweep.samples_per_prompt


def needs(cfg) -> list[Need]:
    """The memory terms of a RunConfig (module docstring)."""
    d, sw, out = cfg.domain_config, cfg.sweep, []
    n = coverage_size(cfg)
    if n is not None:
        prompts = d.prompt_count("coverage")
        total = 2.0 * n * (d.sample_bytes() + d.feature_bytes())
        how = (f"2 x {n:,} samples ({sw.samples_per_prompt:,} per prompt x {prompts} coverage prompts) x "
               f"{d.sample_bytes() + d.feature_bytes():,} bytes of sample and features")
        if {"precision", "recall"} & set(cfg.metrics.diversity):
            total += 2.0 * n * n * 8
            how += f", and two {n:,} x {n:,} k-NN distance matrices of 8-byte floats"
        out.append(Need("sweep.samples_per_prompt", sw.samples_per_prompt, total, how))
    for ps in sw.prompt_sets:
        prompts = d.prompt_count(ps) if ps != "coverage" else None
        if prompts is not None:
            m = prompts * sw.eval_samples_per_prompt
            out.append(Need("sweep.eval_samples_per_prompt", sw.eval_samples_per_prompt, 2.0 * m * d.sample_bytes(),
                            f"2 x {m:,} samples of prompt set {ps!r} x {d.sample_bytes():,} bytes"))
    step = d.step_bytes(training=False)
    out.append(Need("sweep.batch_size", sw.batch_size, float(sw.batch_size) * step,
                    f"{sw.batch_size:,} samples x {step:,} bytes per network evaluation", on_device=True))
    step = d.step_bytes(training=True)
    out.append(Need("train.batch_size", cfg.train.batch_size, float(cfg.train.batch_size) * step,
                    f"{cfg.train.batch_size:,} samples x {step:,} bytes per differentiated step", on_device=True))
    model = d.model_need()  # (key, value, bytes, how) where the params set the model's size
    if model is not None:
        out.append(Need(model[0], model[1], float(model[2]), model[3], on_device=True))
    return out


def check_memory(cfg) -> None:
    """Refuse a setting whose memory need (a lower bound) exceeds what this machine has: the key, the value, how much
    it needs and how much there is."""
    host = host_memory()
    dev, dev_text = device_memory(cfg.device)
    for need in needs(cfg):
        have, text = (dev, dev_text) if need.on_device else (host, "this machine has")
        if need.bytes > have:
            raise ConfigError(f"{need.key} = {need.value!r} is not allowed here: it needs at least {size(need.bytes)} "
                              f"of memory ({need.how}), but {text} {size(have)}")
