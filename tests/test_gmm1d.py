"""Notebook 00's science: the 1-D GMM under the VP forward process, Lemma 1, and the Fig. 5 ordering."""
from __future__ import annotations

import numpy as np
import pytest

from lib import fig5, lemma1
from lib.gmm1d import GMM1D, mode_recovery, recovery_table, switch_probability, vp_schedule


@pytest.fixture(scope="module")
def gmm() -> GMM1D:
    return GMM1D()


def test_schedule_matches_diffusers_linear():
    abar, beta = vp_schedule(1000)
    assert abar.shape == beta.shape == (1001,)
    assert abar[0] == 1.0 and beta[0] == 0.0
    # abar comes from diffusers' float32 cumprod: betas re-derived from it agree to ~1e-3 relative
    np.testing.assert_allclose(beta[1:], np.linspace(1e-4, 0.02, 1000), rtol=2e-3)
    np.testing.assert_allclose(np.cumprod(1 - beta[1:]), abar[1:], rtol=1e-10)
    assert np.all(np.diff(abar) < 0)


@pytest.mark.parametrize("t", [0, 1, 50, 300, 1000])
def test_score_is_gradient_of_log_prob(gmm, t):
    x = np.linspace(-3, 3, 61)
    h = 1e-5
    fd = (gmm.log_prob(x + h, t) - gmm.log_prob(x - h, t)) / (2 * h)
    np.testing.assert_allclose(gmm.score(x, t), fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [1, 200, 600, 1000])
def test_log_prob_normalised(gmm, t):
    x = np.linspace(-8, 8, 8001)
    assert np.trapezoid(np.exp(gmm.log_prob(x, t)), x) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("t", [0, 100, 400, 1000])
def test_forward_samples_match_analytic_moments(gmm, t):
    x, labels = gmm.sample_forward(t, 200_000, np.random.default_rng(1))
    w, m, v = gmm.marginal(t)
    mean = (w * m).sum()
    var = (w * (v + m**2)).sum() - mean**2
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / len(x))
    assert x.var() == pytest.approx(var, rel=0.02)
    for i in range(2):  # per-source moments: N(sqrt(abar) mu_i, abar v_i + 1 - abar)
        xi = x[labels == i]
        assert abs(xi.mean() - m[i]) < 5 * np.sqrt(v[i] / len(xi))
        assert xi.var() == pytest.approx(v[i], rel=0.03)
    assert abs((labels == 1).mean() - 0.5) < 0.01


def test_marginal_at_T_is_almost_standard_normal(gmm):
    w, m, v = gmm.marginal(1000)
    assert np.all(np.abs(m) < 0.01) and np.allclose(v, 1.0, atol=1e-4)


def test_exact_posterior_matches_ancestral_sampler(gmm):
    rng = np.random.default_rng(2)
    x_t, t = 0.3, 400
    exact = gmm.sample_posterior(x_t, t, 0, 4000, rng)
    ddpm = gmm.reverse_ddpm(x_t, t, 0, rng, n=4000)
    w, _, _ = gmm.posterior(x_t, t, 0)
    frac = np.bincount(gmm.nearest_mode(ddpm), minlength=2) / len(ddpm)
    np.testing.assert_allclose(frac, w, atol=0.03)
    np.testing.assert_allclose(np.bincount(gmm.nearest_mode(exact), minlength=2) / 4000, w, atol=0.03)
    lag = gmm.reverse_ddpm(x_t, t, t - 10, rng, n=4000)
    wl, ml, vl = gmm.posterior(x_t, t, t - 10)
    assert lag.mean() == pytest.approx((wl * ml).sum(), abs=0.02)
    assert lag.std() == pytest.approx(np.sqrt((wl * (vl + ml**2)).sum() - (wl * ml).sum() ** 2), rel=0.05)


def test_posterior_at_s_equal_t_minus_one_from_t_one_is_tweedie(gmm):
    # one step from t = 1 to 0 has zero posterior variance and returns E[x_0 | x_1] (Tweedie)
    x1 = np.array([-0.9, 0.2, 1.1])
    out = gmm.reverse_ddpm(x1, 1, 0, np.random.default_rng(0))
    abar1 = gmm.abar(1)
    tweedie = (x1 + (1 - abar1) * gmm.score(x1, 1)) / np.sqrt(abar1)
    np.testing.assert_allclose(out, tweedie, rtol=1e-12)


def test_mode_recovery_large_t_hits_both_modes_small_t_one(gmm):
    runs = mode_recovery(gmm, [20, 100, 1000], 2000, np.random.default_rng(0), source=1)
    table = recovery_table(gmm, runs)
    small = table[table.t <= 100]
    assert np.all(small["frac_x0_mode+1"] >= 0.99)  # local refinement: the particles stay in the source mode
    assert np.all(small["exact_mode+1"] >= 0.99)
    big = table[table.t == 1000].iloc[0]
    assert 0.35 < big["frac_x0_mode-1"] < 0.65 and 0.35 < big["frac_x0_mode+1"] < 0.65
    assert list(table.std_lag) == sorted(table.std_lag)  # one 10-step chunk spreads more at larger t


def test_switch_probability_grows_from_zero_to_half(gmm):
    p = switch_probability(gmm, np.array([20, 100, 300, 600, 1000]), 2000, np.random.default_rng(0))
    assert p[0] < 1e-3 and abs(p[-1] - 0.5) < 0.01
    assert np.all(np.diff(p) > 0)


def test_invalid_arguments(gmm):
    with pytest.raises(ValueError, match="t = 1001"):
        gmm.abar(1001)
    with pytest.raises(ValueError, match="s < t"):
        gmm.posterior(0.0, 10, 10)
    with pytest.raises(ValueError, match="equal lengths"):
        GMM1D(means=(0.0, 1.0), variances=(1.0,), weights=(1.0,))


@pytest.mark.parametrize("kw", [dict(), dict(dropout=0.5), dict(dropout=0.95)])
def test_lemma1_collapses_to_argmax_with_and_without_dropout(gmm, kw):
    grid = np.linspace(-3, 3, 241)
    r = lemma1.bump_reward(grid)
    run = lemma1.maximise_expected_reward(grid, r, steps=4000, lr=0.05, init_logits=gmm.log_prob(grid, 0),
                                          rng=np.random.default_rng(0), **kw)
    assert run.mass_at_argmax[0] < 0.01  # starts diverse (the two data modes) ...
    assert run.mass_at_argmax[-1] > 0.99  # ... ends as a delta at argmax r
    assert run.entropy[-1] < 0.05 < 4.0 < run.entropy[0]
    assert run.p_final.argmax() == r.argmax()


def test_lemma1_pointwise_dropout_still_collapses():
    grid = np.linspace(-3, 3, 241)
    run = lemma1.maximise_expected_reward(grid, lemma1.bump_reward(grid), steps=4000, dropout=0.5,
                                          dropout_mode="pointwise", rng=np.random.default_rng(0))
    assert run.p_final.max() > 0.99


def test_lemma1_validates():
    grid = np.linspace(-1, 1, 5)
    with pytest.raises(ValueError, match="rng"):
        lemma1.maximise_expected_reward(grid, grid, dropout=0.5)
    with pytest.raises(ValueError, match="dropout_mode"):
        lemma1.maximise_expected_reward(grid, grid, dropout=0.5, dropout_mode="x", rng=np.random.default_rng(0))


def test_fig5_fid_prefers_tighter_spectral_prefer_rotated():
    sets = fig5.make_sets(2000, np.random.default_rng(0))
    table = fig5.distance_table(sets)
    assert fig5.preferred(table) == {"fid": "D2", "scd": "D3", "lscd": "D3"}
    assert table.loc["D3", "scd"] < 0.05 * table.loc["D2", "scd"]
