"""ImageReFL's Table 1, our way (Sidorov et al., Table 1: ReFL, ReFL + AIG, ReFL combined, ImageReFL combined on
quality rewards, CLIP score, DinoDiversity, FID, CovDist, LogCovDist): one row per method of the run's sweep, every
quality and diversity number the run has, each as "value ± ci95" (the half-width of the 95 % interval of
metrics.csv: a t-interval for the rewards and CLIP, over prompts for DinoDiversity, from seed half-samples for FID,
SCD, LSCD and recall, `lib.metrics.half_sample_ci`).

Rows (coverage set): base; DRaFT (the run's DRaFT-family fine-tuning: DRaFT-K, -LV or ReFL); one row per variant of
every other family (a variant: the family with one tuned adapter and one per-branch guidance pair, e.g. 'combined
tuned=imagerefl cfg=7.5/1', ImageReFL in combined generation). A sweep has several settings per variant; the table
shows one, picked by `metrics.table` (TableConfig):

- `settings: {<row>: <setting>}` names the setting of a row outright (e.g. the paper's chosen `aig: power:2`);
- otherwise the rule: the setting whose coverage reward is closest to base + reward_gain * (DRaFT - base), i.e. the
  setting that keeps that share of DRaFT's reward gain (0.9: methods compared at about the same quality, where
  their diversity tells them apart); a tie goes to the earlier setting of the sweep.

`table1` writes results/<run>/table1.csv; `markdown` renders it for notebook 04.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from lib.errors import check
from lib.files import atomic_path
from lib.methods import Method

COLUMNS = ("reward", "reward_alt", "clip", "dino_diversity", "fid", "scd", "lscd", "recall")  # those the run has
ORDER = ("base", "draft", "aig", "combined", "kl", "lora_scale", "lora_mix")


@dataclass(frozen=True)
class TableConfig:
    """`metrics.table`: how Table 1 picks one setting per row (module docstring)."""

    reward_gain: float = 0.9  # the rule: keep this share of DRaFT's reward gain over base
    settings: dict = field(default_factory=dict)  # row -> setting, e.g. {aig: "power:2", kl: "lambda=1"}

    def __post_init__(self):
        check("metrics.table.reward_gain", self.reward_gain, 0 <= self.reward_gain <= 1.5,
              "a number in [0, 1.5] (the share of DRaFT's reward gain over base the picked setting keeps)")
        check("metrics.table.settings", self.settings, isinstance(self.settings, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.settings.items()),
              "a mapping row -> setting string, e.g. {aig: 'power:2', 'combined tuned=imagerefl': 'step:0.5'}")


def rows_of(methods: list[Method]) -> dict[str, list[str]]:
    """The table's rows of a sweep's methods and the settings of each: row -> [setting, ...]."""
    out: dict[str, list[str]] = {}
    for m in methods:
        out.setdefault(row_of(m), []).append(m.setting)
    return out


def check_settings(config: TableConfig, methods: list[Method]) -> None:
    """Every row and setting named in metrics.table.settings is one of the sweep's (ConfigError otherwise)."""
    rows = rows_of(methods)
    for row, setting in config.settings.items():
        check("metrics.table.settings", row, row in rows, f"a row of this run's table: {', '.join(rows)}")
        check(f"metrics.table.settings.{row}", setting, setting in rows[row], f"one of {', '.join(rows[row])}")


def row_of(m: Method) -> str:
    """The table row of a method: its family, with its tuned adapter and guidance pair ('combined tuned=x cfg=7.5/1')."""
    extra = (f" tuned={m.adapter}" if m.adapter else "") + \
        (f" cfg={m.scales[0]:g}/{m.scales[1]:g}" if m.scales is not None else "")
    return m.method + extra


def _cell(value: float, ci: float) -> str:
    """'value ± ci95' (value alone where there is no interval); round-off below 1e-8 (FID of base against itself
    through sqrtm) shows as 0."""
    if value != value:
        return ""
    value = 0.0 if abs(value) < 1e-8 else value
    if ci is None or ci != ci:
        return f"{value:.4g}"
    return f"{value:.4g} ± {0.0 if abs(ci) < 1e-8 else ci:.2g}"


def pick(rows: pd.DataFrame, target: float, chosen: Optional[str] = None) -> pd.Series:
    """One setting of a row's settings (index: setting; a column 'reward'): `chosen`, else the reward closest to
    `target` (the first on ties)."""
    if chosen is not None:
        check("metrics.table.settings", chosen, chosen in rows.index, f"one of the row's settings {list(rows.index)}")
        return rows.loc[chosen]
    gap = (rows["reward"] - target).abs()
    return rows.loc[gap.idxmin()] if gap.notna().any() else rows.iloc[0]


def build_table(df: pd.DataFrame, config: TableConfig = TableConfig(), prompt_set: str = "coverage") -> pd.DataFrame:
    """Table 1 from metrics.csv rows: one row per method variant (module docstring) with columns row, method,
    setting, and each metric of COLUMNS present as 'value ± ci95'."""
    d = df[df.prompt_set == prompt_set]
    value = d.pivot_table(index=["method", "setting"], columns="metric", values="value", sort=False)
    ci = dict(zip(zip(d.method, d.setting, d.metric), d["ci95"] if "ci95" in d else [math.nan] * len(d)))
    cols = [c for c in COLUMNS if c in value.columns]
    base, draft = value.loc[("base", "-"), "reward"], value.loc[("draft", "-"), "reward"]
    target = base + config.reward_gain * (draft - base)
    groups: dict[str, list] = {}
    for method, setting in value.index:
        groups.setdefault(row_of(Method.parse(method, setting)), []).append((method, setting))
    unknown = sorted(set(config.settings) - set(groups))
    check("metrics.table.settings", unknown[:1], not unknown, f"rows of this run's table: {', '.join(groups)}")
    rank = {f: i for i, f in enumerate(ORDER)}
    out = []
    for row in sorted(groups, key=lambda r: (rank.get(r.split(" ")[0], len(ORDER)), list(groups).index(r))):
        idx = groups[row]
        own = value.loc[idx].reset_index(level=0, drop=True)
        setting = pick(own, target, config.settings.get(row)).name
        key = (idx[0][0], setting)
        out.append({"row": row, "method": key[0], "setting": setting,
                    **{c: _cell(value.loc[key, c], ci.get((*key, c), math.nan)) for c in cols}})
    return pd.DataFrame(out)


def table1(df: pd.DataFrame, config: TableConfig, path: Path) -> pd.DataFrame:
    """Build Table 1 (`build_table`) and write it to `path` (results/<run>/table1.csv)."""
    table = build_table(df, config)
    with atomic_path(Path(path)) as tmp:
        table.to_csv(tmp, index=False)
    return table


def markdown(table: pd.DataFrame) -> str:
    """A markdown table of a frame (every cell as text)."""
    head = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in table.itertuples(index=False)]
    return "\n".join(lines)
