"""1-D Gaussian mixture under the variance-preserving forward process (AIG paper A.6.1, Fig. 9).

Time is 1-indexed as in the paper: x_0 is data, x_t for t = 1..T, with abar_0 = 1 and abar_t =
DDPMScheduler(num_train_timesteps=T).alphas_cumprod[t - 1] (linear betas 1e-4..0.02), so s = t / T and
x_T is (almost) pure noise. Everything is closed form except the ancestral sampler, which runs DDPM steps
with the exact score. Randomness comes only from a numpy Generator passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd


@lru_cache(maxsize=4)
def vp_schedule(num_train_timesteps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(abar, beta), each (T + 1,) float64, index t; abar[0] = 1, beta[0] = 0 (diffusers' linear schedule)."""
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(num_train_timesteps=num_train_timesteps).alphas_cumprod.double().numpy()
    abar = np.concatenate([[1.0], ac])  # (T + 1,)
    beta = np.concatenate([[0.0], 1.0 - abar[1:] / abar[:-1]])  # beta_t = 1 - abar_t / abar_{t-1}
    abar.setflags(write=False)
    beta.setflags(write=False)
    return abar, beta


@dataclass(frozen=True)
class GMM1D:
    """p_data = sum_i w_i N(mu_i, v_i); default is the paper's 0.5 (N(-1, 0.05) + N(1, 0.05)), 0.05 a variance."""

    means: tuple[float, ...] = (-1.0, 1.0)
    variances: tuple[float, ...] = (0.05, 0.05)
    weights: tuple[float, ...] = (0.5, 0.5)
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        """Check shapes and ranges."""
        k = len(self.means)
        if not (len(self.variances) == len(self.weights) == k >= 1):
            raise ValueError(f"means, variances, weights need equal lengths, got {k}, "
                             f"{len(self.variances)}, {len(self.weights)}")
        if min(self.variances) <= 0 or min(self.weights) < 0 or not np.isclose(sum(self.weights), 1.0):
            raise ValueError("variances must be > 0 and weights >= 0 summing to 1")

    @property
    def mu(self) -> np.ndarray:
        """Component means (K,)."""
        return np.asarray(self.means, dtype=np.float64)

    def abar(self, t: int) -> float:
        """abar_t of the forward process (t = 0 is data)."""
        self._check_t(t)
        return float(vp_schedule(self.num_train_timesteps)[0][t])

    def marginal(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q_t = sum_i w_i N(sqrt(abar_t) mu_i, abar_t v_i + 1 - abar_t) (paper Eq. 29): (w, m, v), each (K,)."""
        a = self.abar(t)
        w = np.asarray(self.weights, dtype=np.float64)
        v = a * np.asarray(self.variances, dtype=np.float64) + 1.0 - a
        return w, np.sqrt(a) * self.mu, v

    def _component_logpdf(self, x: np.ndarray, t: int) -> np.ndarray:
        """log(w_i N(x; m_i, v_i)) under q_t: (N, K)."""
        w, m, v = self.marginal(t)
        x = np.asarray(x, dtype=np.float64)[..., None]  # (N, 1)
        with np.errstate(divide="ignore"):
            logw = np.log(w)
        return logw - 0.5 * np.log(2 * np.pi * v) - 0.5 * (x - m) ** 2 / v

    def log_prob(self, x: np.ndarray, t: int) -> np.ndarray:
        """log q_t(x): (N,)."""
        lp = self._component_logpdf(x, t)
        mx = lp.max(-1, keepdims=True)
        return (mx + np.log(np.exp(lp - mx).sum(-1, keepdims=True)))[..., 0]

    def responsibilities(self, x: np.ndarray, t: int) -> np.ndarray:
        """P(source mode i | x_t = x) = w_i N_i(x) / q_t(x): (N, K)."""
        lp = self._component_logpdf(x, t)
        lp = lp - lp.max(-1, keepdims=True)
        p = np.exp(lp)
        return p / p.sum(-1, keepdims=True)

    def score(self, x: np.ndarray, t: int) -> np.ndarray:
        """Exact score d/dx log q_t(x) = sum_i r_i(x) (m_i - x) / v_i: (N,)."""
        _, m, v = self.marginal(t)
        x = np.asarray(x, dtype=np.float64)
        return (self.responsibilities(x, t) * (m - x[..., None]) / v).sum(-1)

    def sample_data(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """x_0 ~ p_data with its component labels: (n,), (n,) int."""
        labels = rng.choice(len(self.means), size=n, p=np.asarray(self.weights))
        sd = np.sqrt(np.asarray(self.variances))
        return self.mu[labels] + sd[labels] * rng.standard_normal(n), labels

    def sample_forward(
        self, t: int, n: int, rng: np.random.Generator, source: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, labelled by the source mode of x_0: (n,), (n,) int.

        source = i draws x_0 from component i only (the x_t 'originated from mode i').
        """
        if source is None:
            x0, labels = self.sample_data(n, rng)
        else:
            labels = np.full(n, int(source))
            x0 = self.mu[labels] + np.sqrt(self.variances[int(source)]) * rng.standard_normal(n)
        a = self.abar(t)
        return np.sqrt(a) * x0 + np.sqrt(1.0 - a) * rng.standard_normal(n), labels

    def posterior(self, x_t: float, t: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact q(x_s | x_t), 0 <= s < t: a GMM (w, m, v), each (K,).

        Per component the pair (x_s, x_t) is Gaussian: var_s = abar_s v_i + 1 - abar_s, cov = sqrt(abar_t /
        abar_s) var_s, var_t = abar_t v_i + 1 - abar_t; condition on x_t and reweight by the responsibilities.
        """
        if not 0 <= s < t:
            raise ValueError(f"need 0 <= s < t, got s = {s}, t = {t}")
        a_s, a_t = self.abar(s), self.abar(t)
        vi = np.asarray(self.variances, dtype=np.float64)
        var_s = a_s * vi + 1.0 - a_s
        var_t = a_t * vi + 1.0 - a_t
        cov = np.sqrt(a_t / a_s) * var_s
        m = np.sqrt(a_s) * self.mu + cov / var_t * (x_t - np.sqrt(a_t) * self.mu)
        v = var_s - cov**2 / var_t
        return self.responsibilities(np.array([x_t]), t)[0], m, v

    def posterior_pdf(self, grid: np.ndarray, x_t: float, t: int, s: int) -> np.ndarray:
        """Density of q(x_s | x_t) on a grid: (G,)."""
        w, m, v = self.posterior(x_t, t, s)
        g = np.asarray(grid, dtype=np.float64)[:, None]
        return (w * np.exp(-0.5 * (g - m) ** 2 / v) / np.sqrt(2 * np.pi * v)).sum(-1)

    def sample_posterior(self, x_t: float, t: int, s: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """n exact samples of q(x_s | x_t): (n,)."""
        w, m, v = self.posterior(x_t, t, s)
        k = rng.choice(len(w), size=n, p=w / w.sum())
        return m[k] + np.sqrt(v[k]) * rng.standard_normal(n)

    def reverse_ddpm(self, x_t: np.ndarray | float, t: int, s: int, rng: np.random.Generator,
                     n: int | None = None) -> np.ndarray:
        """Ancestral DDPM from step t down to s with the exact score: particles of p(x_s | x_t), (n,).

        Each step (DDPM Eq. 11 with eps = -sqrt(1 - abar) * score, posterior variance beta~):
        x_{u-1} = (x_u + beta_u score_u(x_u)) / sqrt(1 - beta_u) + sqrt(beta~_u) z,
        beta~_u = (1 - abar_{u-1}) / (1 - abar_u) beta_u. A scalar x_t is repeated n times.
        """
        if not 0 <= s <= t:
            raise ValueError(f"need 0 <= s <= t, got s = {s}, t = {t}")
        self._check_t(t)
        abar, beta = vp_schedule(self.num_train_timesteps)
        x = np.asarray(x_t, dtype=np.float64)
        if x.ndim == 0:
            if n is None:
                raise ValueError("a scalar x_t needs the particle count n")
            x = np.full(n, float(x))
        x = x.copy()
        for u in range(t, s, -1):
            mean = (x + beta[u] * self.score(x, u)) / np.sqrt(1.0 - beta[u])
            var = (1.0 - abar[u - 1]) / (1.0 - abar[u]) * beta[u]
            x = mean + np.sqrt(var) * rng.standard_normal(x.shape) if var > 0 else mean
        return x

    def nearest_mode(self, x: np.ndarray) -> np.ndarray:
        """Index of the nearest component mean for each x: (N,) int."""
        return np.abs(np.asarray(x)[:, None] - self.mu).argmin(-1)

    def _check_t(self, t: int) -> None:
        """t must be an integer step in [0, T]."""
        if not (0 <= int(t) <= self.num_train_timesteps and int(t) == t):
            raise ValueError(f"t = {t} must be an integer in [0, {self.num_train_timesteps}]")


@dataclass(frozen=True)
class Recovery:
    """From one x_t: particles of p(x_{t-lag} | x_t) and of p(x_0 | x_t) by ancestral sampling."""

    t: int
    lag: int
    x_t: float
    x_lag: np.ndarray  # (n,)
    x_0: np.ndarray  # (n,)


def mode_recovery(gmm: GMM1D, ts: list[int], n: int, rng: np.random.Generator, *, lag: int = 10,
                  source: int | None = 1) -> list[Recovery]:
    """For each t: draw one x_t (from `source`'s component, or q_t if None), then run n particles to t-lag and 0."""
    out = []
    for t in ts:
        if t < lag:
            raise ValueError(f"t = {t} is smaller than lag = {lag}")
        x_t = float(gmm.sample_forward(t, 1, rng, source=source)[0][0])
        x_lag = gmm.reverse_ddpm(x_t, t, t - lag, rng, n=n)
        x_0 = gmm.reverse_ddpm(x_lag, t - lag, 0, rng)  # Markov: continuing the same particles samples p(x_0|x_t)
        out.append(Recovery(t, lag, x_t, x_lag, x_0))
    return out


def recovery_table(gmm: GMM1D, runs: list[Recovery]) -> pd.DataFrame:
    """One row per t: x_t, std of x_{t-lag} (sampled, exact), fraction of x_0 per mode (sampled, exact)."""
    rows = []
    for r in runs:
        w0, m0, v0 = gmm.posterior(r.x_t, r.t, 0)
        wl, ml, vl = gmm.posterior(r.x_t, r.t, r.t - r.lag)
        exact_std = np.sqrt((wl * (vl + ml**2)).sum() - (wl * ml).sum() ** 2)
        frac = np.bincount(gmm.nearest_mode(r.x_0), minlength=len(gmm.means)) / len(r.x_0)
        row = {"t": r.t, "s": r.t / gmm.num_train_timesteps, "abar": gmm.abar(r.t), "x_t": r.x_t,
               "std_lag": r.x_lag.std(ddof=1), "std_lag_exact": exact_std}
        for i, mu in enumerate(gmm.means):
            row[f"frac_x0_mode{mu:+g}"] = frac[i]
            row[f"exact_mode{mu:+g}"] = w0[i]
        rows.append(row)
    return pd.DataFrame(rows)


def switch_probability(gmm: GMM1D, ts: np.ndarray, n: int, rng: np.random.Generator, source: int = 1) -> np.ndarray:
    """Exact E_{x_t ~ q_t(. | mode source)}[P(x_0 in another mode | x_t)] for each t: (len(ts),).

    The probability that the reverse process from a noised sample of one mode recovers a different mode:
    ~0 at small t (local refinement), -> 1 - w_source at t = T (full mode mixing).
    """
    out = np.empty(len(ts))
    for j, t in enumerate(ts):
        x_t, _ = gmm.sample_forward(int(t), n, rng, source=source)
        out[j] = 1.0 - gmm.responsibilities(x_t, int(t))[:, source].mean()
    return out
