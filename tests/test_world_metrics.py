"""Ground-truth metrics (lib.metrics: entropy, produced modes, mode coverage; lib.evaluate.truth_rows), the figures
that use them (lib.plots), the world's reward and feature loaders, and the refusal of truth metrics without a world."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lib import metrics as M  # noqa: E402
from lib.config import from_dict, read_params  # noqa: E402
from lib.errors import ConfigError  # noqa: E402
from lib.evaluate import MetricsConfig, truth_rows  # noqa: E402
from lib.methods import Method  # noqa: E402
from lib.plots import diversity_truth_figure, goodhart_figure, proxy_truth_figure, truth_correlations  # noqa: E402


def test_entropy_and_coverage_in_closed_form():
    assert M.entropy_bits(np.arange(16)) == pytest.approx(4.0)
    assert M.entropy_bits(np.zeros(10, int)) == 0.0
    assert M.entropy_bits([0, 1, 1, 1]) == pytest.approx(0.811278, abs=1e-6)
    ref = np.repeat(np.arange(16), 4)  # 64 samples, every mode 4 times
    assert M.mode_coverage(ref, ref, 16) == 1.0
    assert M.mode_coverage(ref, np.repeat([0, 1, 2, 3], 16), 16) == 0.25
    # a mode needs 2 % of the samples (here 2 of 64): one stray sample does not count
    assert M.produced(np.r_[np.zeros(63, int), 5], 16, 0.02) == {0}
    assert M.produced(np.r_[np.zeros(62, int), 5, 5], 16, 0.02) == {0, 5}
    assert M.produced([3], 16, 0.02) == {3}
    assert np.isnan(M.mode_coverage(np.array([], int), ref, 16))


def test_truth_rows():
    p = np.repeat(np.arange(2), 32)
    ref = {"mode": np.tile(np.arange(16), 4)}
    t = {"mode": np.where(p == 0, 3, np.tile(np.arange(8), 8)), "true_preference": np.linspace(0, 1, 64),
         "position": np.zeros(64, int), "size": np.tile([0, 1], 32), "background": np.ones(64, int),
         "prompt_ok": np.ones(64), "true_preference_alt": np.zeros(64), "reward_alt": np.ones(64)}
    rows = {r["metric"]: r for r in truth_rows(Method("draft"), "coverage", t, p, M.TRUTH_METRICS, (ref, p))}
    assert set(rows) == set(M.TRUTH_METRICS)
    assert rows["true_coverage"]["value"] == pytest.approx((1 / 16 + 8 / 16) / 2) and rows["true_coverage"]["n"] == 2
    assert rows["mode_entropy"]["value"] == pytest.approx((0 + 3) / 2)
    assert rows["size_entropy"]["value"] == pytest.approx(1.0) and rows["background_entropy"]["value"] == 0.0
    assert rows["true_preference"]["value"] == pytest.approx(0.5) and rows["true_preference"]["n"] == 64
    assert rows["prompt_accuracy"]["value"] == 1.0
    without_ref = truth_rows(Method("draft"), "coverage", t, p, ["true_coverage"])
    assert without_ref == []


def test_truth_metrics_are_refused_without_a_world():
    data = read_params("params/smoke_sd.yaml")
    data["metrics"]["truth"] = ["true_coverage"]
    with pytest.raises(ConfigError, match="'true_coverage' cannot be computed on domain 'diffusers'"):
        from_dict(data)
    with pytest.raises(ConfigError, match="metrics.truth"):
        MetricsConfig(truth=("fid",))
    data = read_params("params/shapes_smoke.yaml")
    data["sd"]["reward"] = "clip"  # not a reward the world's annotators labelled
    with pytest.raises(ConfigError, match="needs 'truth'"):
        from_dict(data)
    with pytest.raises(ConfigError, match="sd.world"):
        from_dict({**read_params("params/smoke_sd.yaml"), "sd": {"model": "tiny", "world": {}}})


def _fake_metrics() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    methods = [("base", "-"), ("draft", "-"), *[("aig", f"power:{p}") for p in (1, 2, 3)],
               *[("lora_scale", f"alpha={a}") for a in (0.25, 0.5)], ("kl", "lambda=1")]
    for i, (m, s) in enumerate(methods):
        cov = 1 - i / len(methods)
        vals = dict(reward=i + rng.random(), true_preference=i * 0.5, reward_alt=-i, true_preference_alt=-i * 0.3,
                    true_coverage=cov, mode_entropy=4 * cov, fid=10 * (1 - cov) + rng.random(),
                    recall=cov + 0.05 * rng.random(), dino_diversity=0.3 * cov, scd=1 - cov, lscd=rng.random())
        rows += [dict(method=m, setting=s, prompt_set="coverage", metric=k, value=v, n=64) for k, v in vals.items()]
    return pd.DataFrame(rows)


def test_truth_figures_and_correlations():
    df = _fake_metrics()
    corr = truth_correlations(df, ["fid", "recall", "dino_diversity", "lscd"]).set_index(["proxy", "truth"])
    assert corr.loc[("fid", "true_coverage"), "spearman"] > 0.9  # FID is minimised: signed so that +1 tracks truth
    assert corr.loc[("recall", "true_coverage"), "spearman"] > 0.9
    assert corr.loc[("dino_diversity", "mode_entropy"), "spearman"] == pytest.approx(1.0)
    for fig in (diversity_truth_figure(df, ["fid", "recall", "dino_diversity"]), proxy_truth_figure(df)):
        assert len(fig.axes) >= 2
    ck = pd.concat([df[(df.method == m)].assign(step=k) for k, m in enumerate(["base", "draft"])])
    assert len(goodhart_figure(ck).axes) >= 3


def test_goodhart_reads_a_named_longer_training_and_marks_the_runs_length():
    """metrics.goodhart: the Goodhart curve may read the checkpoints of a longer training of sweep.adapters (the run's
    DRaFT stops earlier, marked on the figure); a name that no training of the run has is refused, naming it."""
    data = read_params("params/shapes_smoke.yaml")
    assert from_dict(data).metrics.goodhart == "draft"
    data["sweep"]["adapters"] = {**data["sweep"]["adapters"], "draft_long": {"steps": 6}}
    data["metrics"]["goodhart"] = "draft_long"
    assert from_dict(data).metrics.goodhart == "draft_long"
    data["metrics"]["goodhart"] = "longer"
    with pytest.raises(ConfigError, match="metrics.goodhart = 'longer'.*draft_long"):
        from_dict(data)
    df = _fake_metrics()
    ck = pd.concat([df[df.method == m].assign(step=20 * k) for k, m in enumerate(["base", "draft", "kl"])])
    marked = goodhart_figure(ck, mark=20)
    assert [ln.get_xdata()[0] for ln in marked.axes[0].lines if ln.get_linestyle() == ":"] == [20]
    assert not [ln for ln in goodhart_figure(ck, mark=40).axes[0].lines if ln.get_linestyle() == ":"]


def test_world_cnn_extractor_round_trip(tmp_path):
    from lib.domains.sd.features import WorldCNN, load_extractor

    net = WorldCNN(width=8)
    net.save(tmp_path / "cnn")
    m = load_extractor("world-cnn", str(tmp_path / "cnn"))
    x = torch.rand(3, 3, 32, 32)
    assert m(x).shape == (3, 16) and torch.allclose(m(x), net(x))
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 16)  # other sizes are resized
    with pytest.raises(ValueError, match="feature_paths"):
        load_extractor("world-cnn")
