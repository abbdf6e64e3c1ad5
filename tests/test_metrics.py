import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.stats import ortho_group

from lib import metrics as M


def gaussian(n, mean, cov, seed):
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


def closed_form_fid(m1, s1, m2, s2):
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))


def test_fid_matches_gaussian_closed_form_from_sample_moments():
    a = gaussian(4000, [0, 0, 0], np.diag([1.0, 2.0, 0.5]), 0)
    b = gaussian(4000, [1, -1, 0.5], [[1.5, 0.3, 0], [0.3, 1, 0.2], [0, 0.2, 0.7]], 1)
    expected = closed_form_fid(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert M.fid(a, b) == pytest.approx(expected, rel=1e-8)
    # and close to the population value
    pop = closed_form_fid(np.zeros(3), np.diag([1.0, 2.0, 0.5]), np.array([1, -1, 0.5]),
                          np.array([[1.5, 0.3, 0], [0.3, 1, 0.2], [0, 0.2, 0.7]]))
    assert M.fid(a, b) == pytest.approx(pop, rel=0.05)


def test_fid_real_and_stable_when_n_below_d():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 200)), rng.normal(size=(50, 200)) + 0.1
    v = M.fid(a, b)
    assert isinstance(v, float) and np.isfinite(v) and v > 0
    assert M.fid(a, a) == pytest.approx(0.0, abs=1e-4)  # rank-deficient covariances: round-off only


def test_scd_lscd_invariant_to_rotation_and_translation():
    a = gaussian(500, np.zeros(4), np.diag([3.0, 1.0, 0.5, 0.1]), 0)
    rot = ortho_group.rvs(4, random_state=1)
    moved = a @ rot.T + np.array([5.0, -2.0, 1.0, 3.0])
    assert M.scd(a, moved) == pytest.approx(0.0, abs=1e-9)
    assert M.lscd(a, moved) == pytest.approx(0.0, abs=1e-9)
    assert M.fid(a, moved) > 10  # FID does see the shift


def test_scd_lscd_closed_form_on_spectra():
    a = gaussian(20000, np.zeros(2), np.diag([4.0, 1.0]), 0)
    b = gaussian(20000, np.zeros(2), np.diag([1.0, 1.0]), 1)
    assert M.scd(a, b) == pytest.approx((4 - 1) ** 2, rel=0.05)
    assert M.lscd(a, b) == pytest.approx(np.log(4) ** 2, rel=0.05)


def test_precision_recall_self_one_far_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 3))
    assert M.precision(a, a) == 1.0 and M.recall(a, a) == 1.0
    far = a + 100
    assert M.precision(a, far) == 0.0 and M.recall(a, far) == 0.0


def test_recall_falls_when_generator_collapses():
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.normal(size=(200, 2)) * 0.1 + c for c in ([0, 0], [3, 0])])
    gen = rng.normal(size=(400, 2)) * 0.1  # one mode only
    assert M.precision(ref, gen) > 0.9
    assert M.recall(ref, gen) < 0.6


def test_pairwise_diversity():
    emb = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=float)
    assert M.pairwise_diversity(emb[:2], [0, 0]) == pytest.approx(0.0)
    assert M.pairwise_diversity(emb[[0, 3]], [0, 0]) == pytest.approx(1.0)
    assert M.pairwise_diversity(emb, [0, 0, 1, 1]) == pytest.approx(0.5)


def test_clip_score_convention_and_ci():
    # 100 * cos, not clamped at 0 (ImageReFL's cosine x 100; torchmetrics would clamp the second to 0)
    assert np.allclose(M.clip_score([[1, 0], [1, 0], [3, 4]], [[2, 0], [-1, 0], [1, 0]]), [100.0, -100.0, 60.0])
    mean, half, n = M.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and n == 3 and half == pytest.approx(4.303 * 1 / np.sqrt(3), rel=1e-3)


def test_torch_inputs_give_the_numpy_values():
    import torch
    a = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    b = torch.randn(100, 3, generator=torch.Generator().manual_seed(1)) * 2
    for fn in (M.fid, M.scd, M.lscd, M.recall):
        assert fn(a, b) == pytest.approx(fn(a.numpy(), b.numpy()), rel=1e-12)
    assert M.scd(a, b) > 1.0  # twice the spread: clearly non-zero


def test_spectral_distances_refuse_unequal_sample_counts():
    """With N < D, sets of different sizes differ in their number of zero eigenvalues alone (LSCD exploded to
    ~1e4 for 100 vs 120 samples of the same distribution): refused with a clear message."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(100, 256)), rng.normal(size=(120, 256))
    for fn in (M.scd, M.lscd):
        with pytest.raises(ValueError, match="100 and 120 samples"):
            fn(a, b)
    assert M.lscd(a, rng.normal(size=(100, 256))) < 1.0  # equal sizes of the same distribution: small


@pytest.mark.parametrize("name", ["fid", "recall", "lscd"])
def test_half_sample_interval_matches_the_spread_of_fresh_samples(name):
    """The seed half-sampling interval of one sample set estimates how much the metric varies between independent
    sample sets of the same size (here simulated: 40 fresh paired sets of 400 points)."""
    rng = np.random.default_rng(0)

    def draw():
        ref = rng.normal(size=(400, 2))
        gen = 0.7 * ref + rng.normal(size=(400, 2)) * 0.5 + [0.3, 0.0]  # paired: gen[i] depends on ref[i]
        return ref, gen

    fresh = np.std([M.against_base(name, *draw(), k=5) for _ in range(40)], ddof=1)
    estimated = np.mean([M.half_sample_ci(name, *draw(), k=5, draws=30) for _ in range(5)]) / 1.959964
    assert 0.6 < estimated / fresh < 1.6, (estimated, fresh)


def test_half_sample_interval_edge_cases():
    x = np.random.default_rng(1).normal(size=(100, 3))
    assert M.half_sample_ci("fid", x, x, draws=10) == pytest.approx(0, abs=1e-9)  # base against itself
    assert np.isnan(M.half_sample_ci("fid", x, x + 1, draws=0))
    assert np.isnan(M.half_sample_ci("recall", x[:20], x[:20] + 1, k=10, draws=10))  # halves of 10 < k + 1
    again = M.half_sample_ci("recall", x, x + 0.1, k=5, draws=10)
    assert again == M.half_sample_ci("recall", x, x + 0.1, k=5, draws=10)  # the same halves every call
