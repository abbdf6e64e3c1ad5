"""Multi-process training of a run (notebook 01's stage) under accelerate.

    accelerate launch [--num_processes 8] -m lib.launch params/sd14_pickscore.yaml [--run-dir DIR]
    accelerate launch --cpu --num_processes 2 -m lib.launch params/smoke.yaml   # the same on CPU (gloo)

Every process trains with its own prompts and noise; LoRA gradients are averaged across processes (DDP-style,
lib.train), the main process writes the adapters, logs and checkpoints. Notebook 01 then finds the finished runs
(same config hash) and only draws their curves; `python -m lib.reproduce` continues with sampling.
"""
from __future__ import annotations

import argparse
import sys

from lib.config import ConfigError, load
from lib.runs import repo_path, run_paths


def main(argv: list[str] | None = None) -> int:
    """Train the base (toy), DRaFT and every KL run of the params file in this process group."""
    ap = argparse.ArgumentParser(prog="accelerate launch -m lib.launch", description=__doc__.split("\n")[0])
    ap.add_argument("params")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = load(repo_path(args.params))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from lib.stages import stage_train

    from lib.train import process_state

    state = process_state()
    stage_train(cfg, run_paths(cfg, args.run_dir), force=args.force, progress=state.is_main_process)
    if state.is_main_process:
        print(f"trained {cfg.run} on {state.num_processes} process(es)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
