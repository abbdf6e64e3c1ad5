"""The committed results of the world study (results/shapes/, params/shapes.yaml): the three properties the world
must have to be a testbed of the paper's regime, read from metrics.csv, and the committed figures and tables; and
those of the remaining methods over the same world (results/shapes_methods/, params/shapes_methods.yaml: ImageReFL's
Table 1 and LoRA mixing)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lib.plots_mix import coverage_table

ROOT = Path(__file__).resolve().parent.parent / "results" / "shapes"
METHODS = ROOT.parent / "shapes_methods"
FIGURES = ("samples.png", "samples_one_caption.png", "pareto_reward_diversity.png", "pareto_clip_diversity.png",
           "pareto_reward_alt_diversity.png", "pareto_reward_truth.png", "reward_kl.png", "proxy_vs_true.png",
           "diversity_vs_truth.png", "goodhart.png", "training_curves.png")
NOTEBOOKS = ("01_training", "02_sampling", "03_metrics", "04_pareto_figures", "05_gamma_explorer")

pytestmark = pytest.mark.skipif(not (ROOT / "metrics.csv").exists(), reason="results/shapes/ is not committed here")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return coverage_table(pd.read_csv(ROOT / "metrics.csv"))


def test_metrics_csv_has_every_column_of_the_study(table):
    for metric in ("reward", "reward_alt", "true_preference", "true_preference_alt", "clip", "dino_diversity", "fid",
                   "precision", "recall", "scd", "lscd", "true_coverage", "mode_entropy", "prompt_accuracy", "kl"):
        assert metric in table.columns, metric
    assert set(table.index.get_level_values(0)) >= {"base", "draft", "lora_scale", "aig", "combined", "kl"}


def test_draft_wins_the_proxy_and_keeps_at_most_a_third_of_the_modes(table):
    """Property 1: unregularised DRaFT raises the proxy reward above every method the paper compares it with (base,
    LoRA scaling, AIG and combined generation of DRaFT's adapter, the KL runs) while its true mode coverage falls to
    at most a third of the base model's."""
    draft, base = table.loc[("draft", "-")], table.loc[("base", "-")]
    others = table[table.index.get_level_values(0).isin(["base", "lora_scale", "aig", "combined", "kl"])]
    assert len(others) >= 10 and draft["reward"] > others["reward"].max()
    assert base["true_coverage"] == 1.0 and draft["true_coverage"] <= base["true_coverage"] / 3


def test_the_collapse_involves_structure_decided_early(table):
    """Property 2: the background or the position (decided early in the chain, as pose and background in the paper's
    Fig. 2) collapses, not only the size."""
    base, draft = table.loc[("base", "-")], table.loc[("draft", "-")]
    early = min(draft["background_entropy"] / base["background_entropy"],
                draft["position_entropy"] / base["position_entropy"])
    assert early <= 1 / 3


def test_draft_stays_on_the_manifold(table):
    """Property 3: the CNN still recognises the prompt's shape and colour in at least half of DRaFT's images."""
    assert table.loc[("draft", "-"), "prompt_accuracy"] >= 0.5


def test_committed_files():
    for name in FIGURES:
        assert (ROOT / "figures" / name).stat().st_size > 5000, name
    for name in ("dominance.csv", "truth_correlations.csv", "checkpoints.csv", "table1.csv", "manifest.json",
                 "config.yaml"):
        assert (ROOT / name).exists(), name
    for nb in NOTEBOOKS:
        assert (ROOT / "notebooks" / f"{nb}.ipynb").exists(), nb


def test_the_remaining_methods_run_over_the_same_world(table):
    """results/shapes_methods/: Table 1 with DRaFT's and ImageReFL's combined generation, the LoRA-mix grid and its
    figures; and, sampled from the same world with the same captions, seeds and DRaFT training, base's and DRaFT's
    rows equal those of the study."""
    other = coverage_table(pd.read_csv(METHODS / "metrics.csv"))
    rows = set(pd.read_csv(METHODS / "table1.csv")["row"])
    assert {"base", "draft", "aig", "combined", "combined tuned=imagerefl", "aig tuned=imagerefl", "lora_mix"} <= rows
    assert len(other.loc["lora_mix"]) == 9
    for name in ("lora_mix_grid.png", "lora_mix_rewards.png", "samples.png", "training_curves.png"):
        assert (METHODS / "figures" / name).stat().st_size > 5000, name
    for nb in NOTEBOOKS[:4]:
        assert (METHODS / "notebooks" / f"{nb}.ipynb").exists(), nb
    for row in (("base", "-"), ("draft", "-")):
        for metric in ("reward", "reward_alt", "true_coverage", "prompt_accuracy", "dino_diversity", "fid"):
            assert other.loc[row, metric] == pytest.approx(table.loc[row, metric], rel=1e-6, abs=1e-9), (row, metric)
