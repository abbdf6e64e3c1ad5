"""The miniature SD world end to end at smoke size (params/shapes_smoke.yaml): notebook 01 builds the world through
SDDomain.prepare(), notebooks 02-04 run the study on it through the unchanged SD code path, metrics.csv carries the
ground truth; and a user's check that it is the real code path: stock diffusers loads the saved world and the saved
DRaFT adapter and draws the same images for the same seeds as the workbook's own sampling."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib import bench, reproduce
from lib.config import load
from lib.domains.sd.pipelines import latents_for
from lib.domains.world import __main__ as world_cli
from lib.domains.world.build import build_world, verify
from lib.domains.world.config import world_config
from lib.methods import Method, sweep_methods
from lib.metrics import TRUTH_METRICS
from lib.store import read_samples

PARAMS = "params/shapes_smoke.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = reproduce.run(PARAMS, only=["01", "02", "03", "04"], run_dir=tmp_path_factory.mktemp("w") / "shapes_smoke")
    return load(PARAMS), root


def test_the_world_is_built_verified_and_cached(run):
    cfg, root = run
    world = root / "models" / "world"
    wcfg = world_config(cfg.domain_config.world)
    record = verify(world, wcfg)
    assert record is not None and set(record["info"]) >= {"pickscore", "hpsv2", "cnn", "check", "unet"}
    for key in ("heldout", "heldout_clean"):
        assert 0 <= record["info"]["pickscore"][key]["vs_truth"] <= 1
    assert build_world(wcfg, world, progress=False)["built"] is False  # a verified build is not redone
    # a damaged file is found: the build is no longer verified
    f = world / "features" / "cnn" / "config.json"
    text = f.read_text()
    f.write_text(text + " ")
    try:
        assert verify(world, wcfg) is None
    finally:
        f.write_text(text)
    assert verify(world, wcfg) is not None


def test_the_study_carries_the_ground_truth(run):
    cfg, root = run
    df = pd.read_csv(root / "metrics.csv")
    cov = df[df.prompt_set == "coverage"]
    assert {(m.method, m.setting) for m in sweep_methods(cfg.sweep)} <= set(zip(cov.method, cov.setting))
    assert set(TRUTH_METRICS) <= set(cov.metric)
    base = cov[cov.method == "base"].set_index("metric").value
    assert base["true_coverage"] == 1.0 and base["fid"] < 1e-6  # the reference set against itself
    assert 0 <= base["mode_entropy"] <= 4 and 0 <= base["prompt_accuracy"] <= 1
    for name in ("training_curves", "pareto_reward_diversity", "reward_kl", "samples", "proxy_vs_true",
                 "diversity_vs_truth", "pareto_reward_alt_diversity", "samples_one_caption", "goodhart"):
        assert (root / "figures" / f"{name}.png").stat().st_size > 1000, name
    steps = pd.read_csv(root / "checkpoints.csv").step
    assert steps.min() == 0 and steps.max() == cfg.train.steps  # the Goodhart curve: base, then every checkpoint


def test_the_second_reward_adapter_its_lora_mix_and_table_1(run):
    """sweep.adapters trains DRaFT on the world's second reward (hpsv2) into train/hps/; the LoRA-mixing grid over
    DRaFT and it is sampled, scored and drawn (DRaFT Fig. 7 right); Table 1 has a row per family."""
    cfg, root = run
    record = json.loads((root / "train" / "hps" / "train.json").read_text())
    assert record["config"]["steps"] == cfg.train.steps and (root / "train" / "hps" / "adapter.safetensors").exists()
    assert (root / "train" / "hps" / "adapter.safetensors").read_bytes() != \
        (root / "train" / "draft" / "adapter.safetensors").read_bytes()  # another reward, another adapter
    df = pd.read_csv(root / "metrics.csv")
    mix = df[(df.method == "lora_mix") & (df.prompt_set == "coverage")]
    assert mix.setting.nunique() == 9 and {"reward", "reward_alt", "dino_diversity"} <= set(mix.metric)
    for name in ("lora_mix_grid", "lora_mix_rewards"):
        assert (root / "figures" / f"{name}.png").stat().st_size > 1000, name
    table = pd.read_csv(root / "table1.csv", dtype=str, keep_default_na=False)
    assert list(table.row) == ["base", "draft", "aig", "combined", "kl", "lora_scale", "lora_mix"]
    assert {"reward", "reward_alt", "clip", "dino_diversity", "fid", "scd", "lscd", "recall"} <= set(table.columns)
    assert all("±" in v for v in table.reward)


def _stock(world, adapter=None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(world / "pipeline"), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if adapter is not None:
        pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    return pipe


@pytest.mark.parametrize("method", ["base", "draft"])
def test_stock_diffusers_draws_the_workbooks_images(run, method):
    cfg, root = run
    sd = cfg.domain_config
    x, p, s = read_samples(root / "samples", f"coverage/{Method(method).key}")
    prompts = world_config(sd.world).prompts
    pick = np.arange(0, len(p), 5)[:8]
    adapter = root / "train" / "draft" / "adapter.safetensors" if method == "draft" else None
    pipe = _stock(root / "models" / "world", adapter)
    with torch.no_grad():
        out = pipe([prompts[j] for j in p[pick]], latents=latents_for(pipe, s[pick].tolist(), sd.resolution,
                   sd.resolution, dtype=torch.float32), num_inference_steps=sd.num_steps,
                   guidance_scale=sd.guidance_scale, output_type="pt").images
    stock = (out.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    diff = np.abs(stock.astype(int) - x[pick].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_world_json_is_reported(run):
    _, root = run
    world = json.loads((root / "models" / "world" / "world.json").read_text())
    assert set(world["seconds"]) >= {"unet", "vae", "pickscore", "hpsv2"}


def test_the_command_lines_verify_the_world_and_time_it(run, capsys):
    """`python -m lib.domains.world <params> --run-dir <run>` verifies the built world without rebuilding it and
    refuses a params file that is not a world run; `python -m lib.bench --models world --world <pipeline>` times the
    world's pipeline (every setting, the default variant marked)."""
    _, root = run
    capsys.readouterr()
    assert world_cli.main([PARAMS, "--run-dir", str(root)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["built"] is False and set(report["seconds"]) >= {"unet", "pickscore", "hpsv2"}
    assert world_cli.main(["params/toy.yaml"]) == 2
    assert "is not a world run" in capsys.readouterr().err
    bench.main(["--models", "world", "--world", str(root / "models" / "world" / "pipeline"), "--world-batch", "2",
                "--repeats", "1", "--steps", "2"])
    out = capsys.readouterr().out
    assert "miniature world" in out and "one call*" in out and "merged*" in out
    assert "one call instead of two saves per image" in out
