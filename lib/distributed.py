"""Process-group helpers (accelerate): one process in a notebook, DDP processes under `accelerate launch`/torchrun."""
from __future__ import annotations

import hashlib
from typing import Any

import torch


def process_state():
    """accelerate's PartialState: gloo on CPU, nccl on GPUs; a single process when nothing launched us."""
    from accelerate import PartialState  # heavy import, only when a stage runs

    return PartialState(cpu=not torch.cuda.is_available())


def device_for(name: str) -> torch.device:
    """'auto' = this process's GPU if there is one (cuda:<local rank> under accelerate/torchrun), else cpu; 'cuda'
    also means this process's GPU; anything else is passed to torch.device."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return process_state().device
    return torch.device("cpu" if name == "auto" else name)


def digest(params: list[torch.Tensor]) -> str:
    """sha256 of a list of tensors (replicas of a distributed run must agree)."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def gather(obj: Any, state) -> list:
    """[obj of every process] (a one-element list in a single process)."""
    if state.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def mean_across(t: torch.Tensor, state) -> torch.Tensor:
    """The mean of t over the processes (t itself in a single process)."""
    if state.num_processes == 1:
        return t
    from accelerate.utils import reduce

    return reduce(t, reduction="mean")
