"""Multi-process training of a run (notebook 01's stage) under accelerate.

    accelerate launch --multi_gpu --num_processes 8 -m lib.launch params/sd14_pickscore.yaml [--stages train,sample]
    torchrun --nproc_per_node 2 -m lib.launch params/smoke.yaml        # the same on CPU processes (gloo)

train: every process trains with its own prompts and noise; LoRA gradients are averaged across processes
(DDP-style, lib.train); the main process writes adapters, logs and checkpoints. sample: process r samples every
N-th (prompt, seed) pair of every method and writes its own shards. Notebooks 01 and 02 then find the finished
artefacts (same config hash) and only show them; `python -m lib.reproduce` continues with metrics and figures.
"""
from __future__ import annotations

import argparse
import sys

from lib.config import load
from lib.distributed import process_state
from lib.errors import ConfigError
from lib.runs import repo_path, run_paths
from lib.stages import stage_sample, stage_train


def main(argv: list[str] | None = None) -> int:
    """Run the training and/or sampling stage of a params file in this process group."""
    ap = argparse.ArgumentParser(prog="accelerate launch -m lib.launch", description=__doc__.split("\n")[0])
    ap.add_argument("params")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--stages", default="train", help="comma-separated: train, sample")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = load(repo_path(args.params))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stages = args.stages.split(",")
    unknown = set(stages) - {"train", "sample"}
    if unknown:
        print(f"error: --stages {args.stages}: unknown {', '.join(sorted(unknown))}; allowed: train, sample", file=sys.stderr)
        return 2
    state = process_state()
    paths = run_paths(cfg, args.run_dir)
    if "train" in stages:
        stage_train(cfg, paths, force=args.force, progress=state.is_main_process)
    if "sample" in stages:
        stage_sample(cfg, paths, force=args.force, progress=state.is_main_process)
    if state.is_main_process:
        print(f"{' and '.join(stages)} of {cfg.run} done on {state.num_processes} process(es)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
