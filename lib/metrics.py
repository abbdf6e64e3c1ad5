"""Coverage and diversity metrics on (N, D) feature arrays; the reference set is the base model's samples.

All computations run in float64. Inputs may be numpy arrays or torch tensors. `METRICS` is the one table of
metrics (label, direction, what a domain must provide to compute it) that config, evaluation, figures and the
explorer share.
"""
from __future__ import annotations

from dataclasses import dataclass
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


def _equal_sizes(name: str, a: np.ndarray, b: np.ndarray) -> None:
    """SCD / LSCD compare spectra of sample covariances: with N < D samples only N - 1 eigenvalues are non-zero,
    so sets of different sizes differ in the number of (clamped) zero eigenvalues alone. Refuse them."""
    if len(a) != len(b):
        raise ValueError(f"{name}: the two sets have {len(a)} and {len(b)} samples; the spectral distances are "
                         "only defined here for equal sample counts (paired seeds give them)")


def scd(a, b) -> float:
    """Spectral covariance distance (AIG paper Eq. 13): sum_i (lambda1_i - lambda2_i)^2, sorted spectra;
    a (N, D) and b (N, D) must have the same N."""
    a, b = _f64(a), _f64(b)
    _equal_sizes("scd", a, b)
    l1, l2 = _spectrum(a), _spectrum(b)
    return float(((l1 - l2) ** 2).sum())


def lscd(a, b, eps: float = 1e-10) -> float:
    """Log spectral covariance distance (AIG paper Eq. 14) on eigenvalues clamped at eps; equal N as for scd."""
    a, b = _f64(a), _f64(b)
    _equal_sizes("lscd", a, b)
    l1, l2 = (np.log(np.clip(_spectrum(x), eps, None)) for x in (a, b))
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
    """CLIP score per pair = 100 * cos(image, text): (N,).

    ImageReFL's code scores raw cosine with OpenAI's ViT-B/32 and its tables print it x 100 (~30 for SD1.5); we
    use the same cosine x 100. torchmetrics' CLIPScore also clamps at 0 (100 * max(cos, 0)); we do not, because
    clamping biases the mean upward wherever cosines can be negative (small CLIP models trained here).
    """
    a, b = _f64(image_emb), _f64(text_emb)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100.0 * cos


def mean_ci(values, level: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of the t-interval at `level`, and the sample count."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(v.mean()), half, n


@dataclass(frozen=True)
class MetricSpec:
    """One metric of metrics.csv: its figure label, direction, and what computing it needs from a domain:
    'reward' (the reward model), 'features' (feature vectors, against the base samples), 'dino' (an image
    embedding, within prompts), 'clip' (an image-text model), 'chain' (the fine-tuned network itself)."""

    name: str
    label: str
    maximize: bool
    needs: str


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("reward", "reward ↑", True, "reward"),
    MetricSpec("fid", "FID ↓", False, "features"),
    MetricSpec("precision", "Precision ↑", True, "features"),
    MetricSpec("recall", "Recall ↑", True, "features"),
    MetricSpec("scd", "SCD ↓", False, "features"),
    MetricSpec("lscd", "LSCD ↓", False, "features"),
    MetricSpec("dino_diversity", "DinoDiversity ↑", True, "dino"),
    MetricSpec("clip", "CLIP score ↑", True, "clip"),
    MetricSpec("kl", "KL (Σ_t ‖ε_θ−ε_base‖²) ↓", False, "chain"),
    # ground truth of the miniature SD world (lib.domains.world): what the hidden annotators prefer, which modes
    # the images are in, whether the prompt is still recognised
    MetricSpec("true_preference", "true preference ↑", True, "truth"),
    MetricSpec("true_preference_alt", "true preference, other annotator ↑", True, "truth"),
    MetricSpec("reward_alt", "other reward ↑", True, "truth"),
    MetricSpec("prompt_accuracy", "prompt recognised ↑", True, "truth"),
    MetricSpec("true_coverage", "true mode coverage ↑", True, "truth"),
    MetricSpec("mode_entropy", "mode entropy (bits) ↑", True, "truth"),
    MetricSpec("position_entropy", "position entropy (bits) ↑", True, "truth"),
    MetricSpec("size_entropy", "size entropy (bits) ↑", True, "truth"),
    MetricSpec("background_entropy", "background entropy (bits) ↑", True, "truth"),
)}
FEATURE_METRICS = tuple(m for m, spec in METRICS.items() if spec.needs == "features")
DIVERSITY_METRICS = (*FEATURE_METRICS, "dino_diversity")


TRUTH_METRICS = tuple(m for m, spec in METRICS.items() if spec.needs == "truth")


def entropy_bits(labels: np.ndarray | Sequence[int]) -> float:
    """Entropy in bits of the empirical distribution of integer labels (N,)."""
    p = np.bincount(np.asarray(labels, dtype=np.int64)) / max(len(labels), 1)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def produced(labels: np.ndarray | Sequence[int], num: int, min_share: float) -> set:
    """The labels that make up at least `min_share` of the N labels (at least one sample): the modes a set of
    samples produces."""
    labels = np.asarray(labels, dtype=np.int64)
    need = max(1, int(np.ceil(min_share * len(labels) - 1e-9)))
    counts = np.bincount(labels, minlength=num)
    return set(np.flatnonzero(counts >= need).tolist())


def mode_coverage(ref_modes: np.ndarray | Sequence[int], gen_modes: np.ndarray | Sequence[int], num: int,
                  min_share: float = 0.02) -> float:
    """Share of the modes the reference samples produce (lib.metrics.produced) that the generated ones still
    produce; ref_modes and gen_modes (N,) are integer mode labels of one prompt."""
    ref = produced(ref_modes, num, min_share)
    if not ref:
        return float("nan")
    return len(ref & produced(gen_modes, num, min_share)) / len(ref)


def against_base(name: str, ref, gen, k: int = 10) -> float:
    """A feature metric (fid, precision, recall, scd, lscd) of generated features against the base model's."""
    fn = {"fid": fid, "precision": precision, "recall": recall, "scd": scd, "lscd": lscd}[name]
    return fn(ref, gen, k=k) if name in ("precision", "recall") else fn(ref, gen)


def half_sample_ci(name: str, ref, gen, k: int = 10, draws: int = 20, seed: int = 0, level: float = 0.95) -> float:
    """Half-width of the `level` interval of a feature metric against base (fid, precision, recall, scd, lscd) from
    seed half-sampling: the metric on `draws` random halves of the paired seeds (ref[i], gen[i] (N, D) from seed i),
    whose spread estimates the full sample's (balanced half-samples, McCarthy 1969: a half of n drawn without
    replacement varies as Var_{n/2} (1 - 1/2) = Var_n). Halves, not a bootstrap: repeated points would shrink the
    k-NN radii of precision and recall. NaN when draws is 0 or a half is too small for k."""
    a, b = _f64(ref), _f64(gen)
    n = min(len(a), len(b))
    if draws < 2 or n // 2 <= max(k, 2):
        return float("nan")
    from scipy import stats

    rng = np.random.default_rng(seed)  # the same halves for every method of a run: paired across methods
    vals = []
    for _ in range(draws):
        idx = rng.choice(n, n // 2, replace=False)  # (n/2,) seeds kept in both sets
        vals.append(against_base(name, a[idx], b[idx], k=k))
    return float(stats.norm.ppf(0.5 + level / 2) * np.std(vals, ddof=1))


def label(name: str) -> str:
    """Axis label of a metric ('FID ↓'); unknown names pass through."""
    return METRICS[name].label if name in METRICS else name
