"""lib.tables: ImageReFL's Table 1 built from a small synthetic metrics.csv frame: its rows, its columns, its cells
('value ± ci95'), and the rule that picks one setting per row (the reward closest to base + 0.9 (DRaFT - base)),
checked against the pick worked out by hand for these numbers."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from lib.errors import ConfigError
from lib.tables import _cell, TableConfig, build_table, markdown, table1

# (method, setting, reward, dino_diversity, fid); base reward 0, DRaFT 10, so the rule's target is 9
POINTS = [("base", "-", 0.0, 0.50, 0.0), ("draft", "-", 10.0, 0.10, 9.0),
          ("aig", "power:1", 5.0, 0.40, 2.0), ("aig", "power:2", 8.8, 0.30, 3.0), ("aig", "power:3", 9.5, 0.20, 5.0),
          ("combined", "step:0.5", 7.0, 0.35, 2.5), ("combined", "step:0.7", 9.3, 0.25, 4.0),
          ("combined", "step:0.3 tuned=imagerefl cfg=7.5/1", 3.0, 0.45, 1.0),
          ("combined", "step:0.6 tuned=imagerefl cfg=7.5/1", 9.05, 0.33, 2.2),
          ("kl", "lambda=1", 6.0, 0.30, 3.5), ("lora_scale", "alpha=0.5", 9.0, 0.20, 4.5),
          ("lora_mix", "draft=1,hps=0", 10.0, 0.1, 9.0), ("lora_mix", "draft=0.5,hps=0.5", 8.0, 0.2, 4.0)]


def frame() -> pd.DataFrame:
    rows = []
    for method, setting, reward, dino, fid in POINTS:
        for metric, value, ci in (("reward", reward, 0.1), ("dino_diversity", dino, 0.01), ("fid", fid, math.nan)):
            rows.append(dict(method=method, setting=setting, prompt_set="coverage", metric=metric, value=value, n=40,
                             ci95=ci))
        rows.append(dict(method=method, setting=setting, prompt_set="eval", metric="reward", value=-1.0, n=8, ci95=0.1))
    return pd.DataFrame(rows)


def test_one_row_per_variant_with_the_rule_s_pick(tmp_path):
    t = table1(frame(), TableConfig(), tmp_path / "table1.csv")
    assert list(t.columns) == ["row", "method", "setting", "reward", "dino_diversity", "fid"]
    assert list(t.row) == ["base", "draft", "aig", "combined", "combined tuned=imagerefl cfg=7.5/1", "kl",
                           "lora_scale", "lora_mix"]
    picked = dict(zip(t.row, t.setting))
    # by hand, target 9: aig |8.8-9| = 0.2 < |9.5-9| = 0.5; combined |9.3-9| = 0.3 < 2; imagerefl 0.05; lora_mix
    # |8-9| = 1 = |10-9|: the tie goes to the first setting of the sweep
    assert picked == {"base": "-", "draft": "-", "aig": "power:2", "combined": "step:0.7",
                      "combined tuned=imagerefl cfg=7.5/1": "step:0.6 tuned=imagerefl cfg=7.5/1", "kl": "lambda=1",
                      "lora_scale": "alpha=0.5", "lora_mix": "draft=1,hps=0"}
    aig = t.set_index("row").loc["aig"]
    assert (aig.reward, aig.dino_diversity, aig.fid) == ("8.8 ± 0.1", "0.3 ± 0.01", "3")  # the eval set is not used
    assert pd.read_csv(tmp_path / "table1.csv", dtype=str, keep_default_na=False).equals(t)
    md = markdown(t)
    assert md.splitlines()[0].startswith("| row | method | setting | reward") and len(md.splitlines()) == 2 + len(t)


def test_named_settings_and_another_gain():
    t = build_table(frame(), TableConfig(reward_gain=0.5, settings={"aig": "power:3"}))
    picked = dict(zip(t.row, t.setting))
    assert picked["aig"] == "power:3"  # named outright
    assert picked["combined"] == "step:0.5" and picked["kl"] == "lambda=1"  # target 5: |7-5| < |9.3-5|; kl alone
    with pytest.raises(ConfigError, match="metrics.table.settings"):
        build_table(frame(), TableConfig(settings={"aig": "power:7"}))
    with pytest.raises(ConfigError, match="metrics.table.reward_gain"):
        TableConfig(reward_gain=-1)


def test_round_off_shows_as_zero():
    """Base's FID against itself comes out of sqrtm as round-off (e.g. -3.9e-11 ± 1.1e-10): shown as 0 ± 0."""
    assert _cell(-3.87e-11, 1.1e-10) == "0 ± 0" and _cell(2.5e-9, float("nan")) == "0"
    assert _cell(0.0123, 0.004) == "0.0123 ± 0.004" and _cell(float("nan"), 0.1) == ""
