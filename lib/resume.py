"""A training's resumable state (checkpoint.pt): written as tensors and plain values, read back with
torch.load(weights_only=True), so that a checkpoint can never run code.

A checkpoint is keyed by the training's *trajectory*: every setting that shapes the weights at a given step, which
excludes the run's length (`steps`) and its checkpoint period. The learning rate is constant and every step draws
its data from the generator state the checkpoint carries, so a run continued from step s of another run of the
same trajectory computes exactly what it would have computed alone. Two uses:

- a run interrupted after a checkpoint resumes from it (`resume`), and a run lengthened in place (more `steps`)
  continues from its own last checkpoint;
- a longer run continues from a shorter *sibling* run of the same trajectory (`adopt`): e.g. the Goodhart curve's
  160 steps of DRaFT (sweep.adapters.draft_long) start from the run's own 40-step DRaFT, so the study computes
  those 40 steps once. The sibling's per-step adapters (checkpoints/adapter-stepNNNNNN.safetensors) are copied
  with its state, so the longer run's folder holds every step of its curve.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from lib.files import atomic_path

CHECKPOINT = "checkpoint.pt"
STEP_ADAPTERS = "checkpoints"  # folder of adapter-stepNNNNNN.safetensors


def save_checkpoint(path: Path, key: str, model: torch.nn.Module, opt: torch.optim.Optimizer, rngs: list,
                    log: list[dict], step: int) -> None:
    """Everything resuming needs, as tensors (LoRA weights, generator states) and plain values (optimiser state,
    log), atomically."""
    state = {"key": key, "step": step, "lora": {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n},
             "opt": opt.state_dict(), "rngs": [torch.as_tensor(r).cpu() for r in rngs],
             "log": [{k: float(v) for k, v in row.items()} for row in log]}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read(path: Path) -> Any:
    """The checkpoint's contents (weights_only), or None, saying why on stderr, if it cannot be read."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: do not use it, saying so
        print(f"warning: {path}: cannot resume from this checkpoint ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); training from step 0", file=sys.stderr)
        return None


def usable(path: Path, key: str, max_step: int, rank: int = 0) -> Optional[dict]:
    """The contents of a readable checkpoint of this trajectory at a step in [1, max_step] with a generator state for
    process `rank`, read once; None if there is none (an unreadable one is reported, naming the file)."""
    state = _read(Path(path)) if Path(path).exists() else None
    if not isinstance(state, dict) or state.get("key") != key or rank >= len(state.get("rngs", [])):
        return None
    return state if 0 < int(state.get("step", 0)) <= max_step else None


def resume(path: Path, key: str, max_step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
           rng: torch.Generator, log: list[dict], rank: int = 0) -> int:
    """Load a checkpoint of the same trajectory (and process count) at a step <= max_step into model, optimiser,
    generator and log; returns the step to continue from (0 if none: a missing, foreign, too long or unreadable
    checkpoint, the last reported naming the file)."""
    state = usable(path, key, max_step, rank)
    if state is None:
        return 0
    try:
        params = dict(model.named_parameters())
        missing = set(state["lora"]) - set(params)
        if missing:
            raise KeyError(f"unknown LoRA weights {sorted(missing)[:3]}")
        with torch.no_grad():
            for n, v in state["lora"].items():
                params[n].copy_(v)
        opt.load_state_dict(state["opt"])
        rng.set_state(state["rngs"][rank])
        log.extend({k: (int(v) if k == "step" else v) for k, v in row.items()} for row in state["log"])
        return int(state["step"])
    except Exception as e:  # noqa: BLE001 - a checkpoint that does not fit this model: start again, saying so
        print(f"warning: {path}: cannot resume from this checkpoint ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); training from step 0", file=sys.stderr)
        log.clear()
        return 0


def adopt(out_dir: Path, key: str, max_step: int, siblings: Sequence[Path], rank: int = 0) -> int:
    """Where out_dir has no usable checkpoint of its own, copy in the furthest usable one among the sibling run
    folders (same trajectory, step <= max_step) with its per-step adapters up to that step; returns the step
    adopted (0 if none). The copy is atomic per file; a partial copy leaves no checkpoint.pt, so nothing is lost."""
    out_dir = Path(out_dir)
    if usable(out_dir / CHECKPOINT, key, max_step, rank) is not None:
        return 0
    found = [(int(state["step"]), Path(s)) for s in siblings if Path(s).resolve() != out_dir.resolve()
             for state in [usable(Path(s) / CHECKPOINT, key, max_step, rank)] if state is not None]
    if not found:
        return 0
    step, source = max(found, key=lambda f: f[0])
    (out_dir / STEP_ADAPTERS).mkdir(parents=True, exist_ok=True)
    for f in sorted((source / STEP_ADAPTERS).glob("adapter-step*.safetensors")):
        if int(f.stem.removeprefix("adapter-step")) <= step:
            with atomic_path(out_dir / STEP_ADAPTERS / f.name) as tmp:
                shutil.copyfile(f, tmp)
    with atomic_path(out_dir / CHECKPOINT) as tmp:  # last: its presence means the copy is whole
        shutil.copyfile(source / CHECKPOINT, tmp)
    print(f"{out_dir.name}: continuing from step {step} of {source.name} (the same training, shorter)", file=sys.stderr)
    return step
