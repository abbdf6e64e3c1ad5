"""Data-parallel training: two CPU processes (gloo) under torchrun, as `accelerate launch` runs them on GPUs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import shutil

from lib.config import load
from lib.methods import sweep_methods
from lib.runs import ROOT, run_paths
from lib.store import read_samples
from lib.stages import stage_sample


def test_two_processes_train_in_sync_and_shard_the_sampling(tmp_path):
    params = tmp_path / "ddp.yaml"
    params.write_text("run: ddp\ntoy:\n  pretrain_steps: 200\n  num_steps: 6\n"
                      "train:\n  steps: 8\n  batch_size: 16\n  lr: 0.002\n  grad_clip: 1.0\n  checkpoint_every: 4\n"
                      "sweep:\n  kl_lambdas: [1]\n  lora_scales: [0.5]\n  aig: ['power:2']\n  combined: [0.5]\n"
                      "  samples_per_prompt: 10\n  batch_size: 16\n")
    run_dir = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    out = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "lib.launch", str(params), "--run-dir", str(run_dir),
                          "--stages", "train,sample"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train and sample of ddp done on 2 process(es)" in out.stdout
    for name in ("draft", "kl_lambda-1"):
        meta = json.loads((run_dir / "train" / name / "train.json").read_text())
        assert meta["processes"] == 2
        a, b = meta["replica_digests"]
        assert a == b  # the averaged gradients kept both replicas identical
        assert (run_dir / "train" / name / "adapter.safetensors").exists()

    # the two processes' shards, put back in pair order, equal one process sampling everything from the same seeds
    cfg = load(params)
    single = tmp_path / "single"
    shutil.copytree(run_dir, single, ignore=shutil.ignore_patterns("samples"))
    stage_sample(cfg, run_paths(cfg, single), progress=False)
    for m in sweep_methods(cfg.sweep):
        x2, p2, s2 = read_samples(run_dir / "samples", f"coverage/{m.key}")
        x1, p1, s1 = read_samples(single / "samples", f"coverage/{m.key}")
        assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
        assert np.allclose(x1, x2, atol=1e-5), m
