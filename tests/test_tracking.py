"""Experiment tracking (lib.tracking): training curves and sweep metrics to TensorBoard through accelerate's tracker
API, read back with TensorBoard's EventAccumulator; with the tracker off nothing else changes."""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lib.config import from_dict
from lib.errors import ConfigError
from lib.tracking import log_metrics
from lib.train import TrainConfig, is_trained, train

TINY = TrainConfig(steps=6, batch_size=16, lr=2e-3, grad_clip=1.0, checkpoint_every=3)
CURVES = {"train/reward": "reward", "train/KL term": "kl", "train/loss": "loss", "train/gradient norm": "grad_norm"}


def _scalars(folder) -> dict[str, list]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_training_curves_go_to_tensorboard_and_nothing_else_changes(toy, tmp_path):
    off, on = tmp_path / "off" / "train" / "draft", tmp_path / "on" / "train" / "draft"
    cfg = dataclasses.replace(TINY, kl_lambda=1.0)
    _, log_off = train(toy, cfg, off, progress=False)
    _, log_on = train(toy, dataclasses.replace(cfg, tracker="tensorboard"), on, progress=False)

    # the workbook's own files: the same adapter, log (but its timings) and record; no tracker folder when off
    assert (off / "adapter.safetensors").read_bytes() == (on / "adapter.safetensors").read_bytes()
    pd.testing.assert_frame_equal(log_off.drop(columns="seconds"), log_on.drop(columns="seconds"))
    meta_off, meta_on = (json.loads((d / "train.json").read_text()) for d in (off, on))
    assert meta_off["hash"] == meta_on["hash"] and meta_off["config"] == meta_on["config"]
    assert "tracker" not in meta_off["config"]  # train.json as before the switch existed
    assert sorted(p.relative_to(off.parent.parent) for p in off.parent.parent.rglob("*")) == \
        sorted(p.relative_to(on.parent.parent) for p in on.parent.parent.rglob("*") if "tracking" not in p.parts)
    assert not (tmp_path / "off" / "tracking").exists()
    assert is_trained(off, dataclasses.replace(cfg, tracker="tensorboard"), toy)  # switching it on retrains nothing

    # the curves, read back from TensorBoard's event files
    scalars = _scalars(tmp_path / "on" / "tracking" / "train-draft")
    assert set(CURVES) | {"train/learning rate"} <= set(scalars)
    for tag, column in CURVES.items():
        assert [s for s, _ in scalars[tag]] == list(range(1, cfg.steps + 1))
        assert [v for _, v in scalars[tag]] == pytest.approx(log_on[column].tolist(), rel=1e-6, abs=1e-7)
    assert [v for _, v in scalars["train/learning rate"]] == pytest.approx([cfg.lr] * cfg.steps)


def test_sweep_metrics_go_to_tensorboard(tmp_path):
    rows = [dict(method="base", setting="-", prompt_set="coverage", metric="reward", value=0.5, n=10),
            dict(method="aig", setting="power:2", prompt_set="coverage", metric="fid", value=1.25, n=10)]
    log_metrics("none", "run", tmp_path / "off", rows)
    assert not (tmp_path / "off").exists()
    log_metrics("tensorboard", "run", tmp_path / "tracking", rows)
    scalars = _scalars(tmp_path / "tracking" / "metrics")
    assert scalars["reward/coverage/base"] == [(0, 0.5)] and scalars["fid/coverage/aig power:2"] == [(0, 1.25)]


def test_the_tracker_switch_is_checked():
    with pytest.raises(ConfigError, match=r"train.tracker = 'neptune'.*none, tensorboard, wandb, mlflow"):
        TrainConfig(tracker="neptune")
    assert from_dict({"run": "t", "train": {"tracker": "tensorboard"}}).train.tracker == "tensorboard"
    assert TrainConfig().tracker == "none"
    for kind in ("wandb", "mlflow"):
        if importlib.util.find_spec(kind) is None:  # the switch names the package to install
            with pytest.raises(ConfigError, match=f"pip install {kind}"):
                log_metrics(kind, "run", "/nonexistent", [])
