"""Data-parallel training: two CPU processes (gloo) under torchrun, as `accelerate launch` runs them on GPUs."""
import json
import os
import subprocess
import sys
from pathlib import Path

from lib.runs import ROOT


def test_two_processes_average_gradients_and_stay_identical(tmp_path):
    params = tmp_path / "ddp.yaml"
    params.write_text("run: ddp\ntoy:\n  pretrain_steps: 200\n  num_steps: 6\n"
                      "train:\n  steps: 8\n  batch_size: 16\n  lr: 0.002\n  grad_clip: 1.0\n  checkpoint_every: 4\n"
                      "sweep:\n  kl_lambdas: [1]\n")
    run_dir = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    out = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "lib.launch", str(params), "--run-dir", str(run_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trained ddp on 2 process(es)" in out.stdout
    for name in ("draft", "kl_lambda-1"):
        meta = json.loads((run_dir / "train" / name / "train.json").read_text())
        assert meta["processes"] == 2
        a, b = meta["replica_digests"]
        assert a == b  # the averaged gradients kept both replicas identical
        assert (run_dir / "train" / name / "adapter.safetensors").exists()
