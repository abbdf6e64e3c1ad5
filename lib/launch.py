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
import contextlib
import sys

from lib.config import load
from lib.distributed import gather, process_state
from lib.errors import ArtefactError, ConfigError, RunLocked, TrainingDiverged
from lib.files import run_lock
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
        paths = run_paths(cfg, args.run_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stages = args.stages.split(",")
    unknown = set(stages) - {"train", "sample"}
    if unknown:
        print(f"error: --stages {args.stages}: unknown {', '.join(sorted(unknown))}; allowed: train, sample", file=sys.stderr)
        return 2
    state = process_state()
    with contextlib.ExitStack() as stack:
        refused = ""
        if state.is_main_process:  # the main process holds the run folder's lock for the whole process group
            try:
                stack.enter_context(run_lock(paths.root))
            except RunLocked as e:
                refused = str(e)
        refused = next((r for r in gather(refused, state) if r), "")
        if refused:
            print(f"error: {refused}", file=sys.stderr)
            return 2
        try:
            if "train" in stages:
                stage_train(cfg, paths, force=args.force, progress=state.is_main_process)
            if "sample" in stages:
                stage_sample(cfg, paths, force=args.force, progress=state.is_main_process)
        except (ArtefactError, TrainingDiverged) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if state.is_main_process:
        print(f"{' and '.join(stages)} of {cfg.run} done on {state.num_processes} process(es)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
