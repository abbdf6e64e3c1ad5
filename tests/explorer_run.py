"""A tiny finished toy run for the gamma-explorer tests (test_widgets.py, test_browser.py).

`toy_run(root)` writes, under root, a params file and the artefacts notebook 05 needs, in the layout of lib.runs:
run/models/base.safetensors (the domain's `prepare`, notebook 01), run/train/draft/adapter.safetensors (01) and
run/metrics.csv (03, a few real rows). It is built once per pytest session (the folder is reused when it is complete).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lib.config import from_dict
from lib.evaluate import method_rows
from lib.generate import generate, paired_seeds
from lib.methods import Method, method_denoiser
from lib.runs import RunPaths, make_domain
from lib.train import train

PARAMS = {
    "run": "explorer-test",
    "domain": "toy",
    "device": "cpu",
    "toy": {"pretrain_steps": 800, "pretrain_batch": 256, "num_steps": 8},
    "train": {"steps": 60, "batch_size": 64, "lr": 0.005, "grad_clip": 1.0, "checkpoint_every": 60},
    "sweep": {"kl_lambdas": [1], "lora_scales": [0.0, 0.5, 1.0], "aig": ["power:1", "power:2"], "combined": [0.5],
              "samples_per_prompt": 40, "batch_size": 160},
    "metrics": {"kl_samples": 8},
}


@dataclasses.dataclass(frozen=True)
class ToyRun:
    params: Path
    run_dir: Path

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)


def toy_run(root: Path) -> ToyRun:
    """Build (or reuse) the tiny run under root."""
    root = Path(root)
    run = ToyRun(root / "params.yaml", root / "run")
    paths = run.paths
    if paths.metrics.exists():
        return run
    root.mkdir(parents=True, exist_ok=True)
    run.params.write_text("# a tiny toy run for the explorer tests\n" + yaml.safe_dump(PARAMS, sort_keys=False))
    cfg = from_dict(PARAMS)
    domain = make_domain(cfg, paths)  # the toy domain wired to the run folder
    domain.prepare(progress=False)  # pre-trains run/models/base.safetensors
    train(domain, cfg.train, paths.train(0.0), progress=False)
    tuned = domain.load_adapter(paths.train(0.0) / "adapter.safetensors")
    prompts = domain.prompts("coverage")
    pairs = paired_seeds(len(prompts), cfg.sweep.samples_per_prompt, cfg.sweep.seed_offset)
    groups = np.array([j for j, _ in pairs])
    rows, ref = [], None
    for m in (Method("base"), Method("draft"), Method("aig", "power:1"), Method("aig", "power:2"),
              Method("lora_scale", 0.5)):
        with method_denoiser(domain, m, tuned) as den:
            x = generate(domain, den, prompts, pairs, cfg.sweep.batch_size)  # stored form (N, 2)
        if ref is None:
            ref = domain.features(domain.from_storage(x))
        rows += method_rows(domain, m, "coverage", x, groups, ref, cfg.metrics.diversity, cfg.metrics.k, len(x))
    pd.DataFrame(rows).to_csv(paths.metrics, index=False)
    return run
