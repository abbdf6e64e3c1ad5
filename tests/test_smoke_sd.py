"""Notebooks 01-04 end to end on the offline tiny SD pipeline through the runner (params/smoke_sd.yaml)."""
import pandas as pd

from lib import reproduce
from lib.config import load
from lib.methods import sweep_methods
from lib.domains.sd.prompts import TINY_PROMPTS


def test_smoke_sd_runs_notebooks_01_to_04(tmp_path):
    root = reproduce.run("params/smoke_sd.yaml", only=["01", "02", "03", "04"], run_dir=tmp_path / "smoke_sd")
    cfg = load("params/smoke_sd.yaml")
    df = pd.read_csv(root / "metrics.csv")
    got = set(zip(df.method, df.setting))
    assert {(m.method, m.setting) for m in sweep_methods(cfg.sweep)} <= got
    cov = df[df.prompt_set == "coverage"]
    base = cov[(cov.method == "base")].set_index("metric").value
    assert base["fid"] < 1e-6 and base["recall"] == 1.0  # the reference set against itself
    assert (cov[cov.metric == "reward"].n == cfg.sweep.samples_per_prompt * len(TINY_PROMPTS)).all()
    # CLIP score and DinoDiversity reach metrics.csv for every method, with n and a 95 % interval
    for metric, n in (("clip", cfg.sweep.samples_per_prompt * len(TINY_PROMPTS)), ("dino_diversity", len(TINY_PROMPTS))):
        rows = cov[cov.metric == metric]
        assert len(rows) == len(sweep_methods(cfg.sweep)) and (rows.n == n).all() and rows.ci95.notna().all()
    assert ("combined", "step:0.5 cfg=7.5/1") in got  # ImageReFL's per-branch guidance from sweep.guidance
    for name in ("training_curves", "pareto_reward_diversity", "reward_kl", "samples"):
        assert (root / "figures" / f"{name}.png").stat().st_size > 1000
    # the adapter is in the diffusers LoRA format: a pipeline loads it
    from lib.domains.sd.pipelines import tiny_pipeline

    pipe = tiny_pipeline("sd")
    pipe.load_lora_weights(str(root / "train" / "draft"), weight_name="adapter.safetensors", adapter_name="draft")
    assert "draft" in pipe.get_list_adapters()["unet"]
    # and so do the periodic checkpoints (checkpoint_every: 2)
    pipe.load_lora_weights(str(root / "train" / "draft" / "checkpoints"), weight_name="adapter-step000002.safetensors",
                           adapter_name="step2")
    assert "step2" in pipe.get_list_adapters()["unet"]
