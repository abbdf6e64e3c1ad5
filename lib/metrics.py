"""Coverage and diversity metrics on (N, D) feature arrays; the reference set is the base model's samples.

All computations run in float64. Inputs may be numpy arrays or torch tensors.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.spatial.distance import cdist


def _f64(a) -> np.ndarray:
    """(N, D) float64 numpy copy of an array or tensor."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {a.shape}")
    return a


def _cov(a: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.cov(a, rowvar=False, ddof=1))  # (D, D), N - 1 normalisation


def fid(ref, gen) -> float:
    """Frechet distance (AIG paper Eq. 12): |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), a symmetric PSD eigenproblem: real and stable for N < D.
    """
    a, b = _f64(ref), _f64(gen)
    s1, s2 = _cov(a), _cov(b)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
    m = root1 @ s2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * cross)


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row: (N,)."""
    if len(x) <= k:
        raise ValueError(f"k = {k} needs more than {k} samples, got {len(x)}")
    d = cdist(x, x)
    return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself


def _coverage(points: np.ndarray, manifold: np.ndarray, k: int) -> float:
    """Fraction of points inside the union of k-NN balls of the manifold set (Kynkaanniemi et al. 2019)."""
    radius = _kth_radius(manifold, k)  # (M,)
    return float((cdist(points, manifold) <= radius[None, :]).any(axis=1).mean())


def precision(ref, gen, k: int = 10) -> float:
    """Fraction of generated samples inside the reference manifold (k-NN balls of ref)."""
    return _coverage(_f64(gen), _f64(ref), k)


def recall(ref, gen, k: int = 10) -> float:
    """Fraction of reference samples inside the generated manifold (k-NN balls of gen)."""
    return _coverage(_f64(ref), _f64(gen), k)


def _spectrum(a: np.ndarray) -> np.ndarray:
    """Eigenvalues of the sample covariance, sorted in descending order: (D,)."""
    return np.sort(np.linalg.eigvalsh(_cov(a)))[::-1]


def scd(a, b) -> float:
    """Spectral covariance distance (AIG paper Eq. 13): sum_i (lambda1_i - lambda2_i)^2, sorted spectra."""
    l1, l2 = _spectrum(_f64(a)), _spectrum(_f64(b))
    return float(((l1 - l2) ** 2).sum())


def lscd(a, b, eps: float = 1e-10) -> float:
    """Log spectral covariance distance (AIG paper Eq. 14) on eigenvalues clamped at eps."""
    l1, l2 = (np.log(np.clip(_spectrum(_f64(x)), eps, None)) for x in (a, b))
    return float(((l1 - l2) ** 2).sum())


def pairwise_diversity(emb, groups: Sequence) -> float:
    """1 - mean pairwise cosine similarity within each group, averaged over groups (DinoDiversity)."""
    e = _f64(emb)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    groups = np.asarray(groups)
    out = []
    for g in np.unique(groups):
        x = e[groups == g]
        n = len(x)
        if n < 2:
            continue
        sim = x @ x.T
        out.append(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))
    if not out:
        raise ValueError("pairwise_diversity needs at least one group with 2 or more samples")
    return float(np.mean(out))


def clip_score(image_emb, text_emb) -> np.ndarray:
    """CLIP score per pair = 100 * max(cos, 0) (the torchmetrics convention): (N,)."""
    a, b = _f64(image_emb), _f64(text_emb)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100.0 * np.clip(cos, 0.0, None)


def mean_ci(values, level: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of the t-interval at `level`, and the sample count."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(v.mean()), half, n
