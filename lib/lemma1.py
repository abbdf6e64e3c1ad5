"""Lemma 1 (AIG paper, proof in A.1) numerically: free-form expected-reward maximisation collapses to a delta.

A distribution p over a 1-D grid is parametrised by softmax logits (non-parametric: one free logit per grid
point) and trained by gradient ascent (Adam) on J(p) = E_p[r(x)] = sum_g p_g r_g (paper Eq. 15). The optimum
is delta(x - argmax r) (Eq. 21). Reward dropout (A.1.1, Eq. 23-25): each step's reward is zeroed with
probability q (mode "step": the whole reward signal of the step; mode "pointwise": every grid value
independently), so in expectation the step ascends J under r~ = (1 - q) r (Eq. 25); the argmax is unchanged
and so is the delta it collapses to.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (height, centre, width) of the bumps of the default reward: one global maximum, several local ones
BUMPS: tuple[tuple[float, float, float], ...] = ((1.0, 0.6, 0.35), (0.85, -1.3, 0.3), (0.6, 2.0, 0.25),
                                                  (0.5, -2.4, 0.2))


def bump_reward(x: np.ndarray, bumps: tuple[tuple[float, float, float], ...] = BUMPS) -> np.ndarray:
    """Smooth reward r(x) = sum_j h_j exp(-(x - c_j)^2 / (2 w_j^2)), several local maxima: (G,)."""
    x = np.asarray(x, dtype=np.float64)[:, None]
    h, c, w = (np.asarray(col, dtype=np.float64) for col in zip(*bumps))
    return (h * np.exp(-0.5 * (x - c) ** 2 / w**2)).sum(-1)


def entropy(p: np.ndarray) -> float:
    """Shannon entropy of a probability vector in nats (0 for a delta)."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@dataclass(frozen=True)
class Lemma1Run:
    """Trajectory of one run: per recorded step the expected reward, entropy and mass at argmax r."""

    grid: np.ndarray  # (G,)
    reward: np.ndarray  # (G,)
    dropout: float
    steps: np.ndarray  # (S,) iteration numbers recorded
    expected_reward: np.ndarray  # (S,) E_p[r] under the true reward
    entropy: np.ndarray  # (S,) nats
    mass_at_argmax: np.ndarray  # (S,) p at the grid point argmax r
    snapshots: dict[int, np.ndarray]  # iteration -> p (G,)

    @property
    def p_final(self) -> np.ndarray:
        """The final distribution (G,)."""
        return self.snapshots[int(self.steps[-1])]


def maximise_expected_reward(
    grid: np.ndarray,
    reward: np.ndarray,
    *,
    steps: int = 2000,
    lr: float = 0.05,
    dropout: float = 0.0,
    dropout_mode: str = "step",
    init_logits: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    record_every: int = 10,
    snapshot_at: tuple[int, ...] = (),
) -> Lemma1Run:
    """Adam ascent on the logits of p for J = sum_g p_g (m_g r_g), m ~ Bernoulli(1 - dropout) drawn per step.

    grad_logits J = p * (r_m - E_p[r_m]) (softmax Jacobian). Dropout > 0 needs rng.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout = {dropout} must lie in [0, 1)")
    if dropout_mode not in ("step", "pointwise"):
        raise ValueError(f"dropout_mode = {dropout_mode!r}; allowed: 'step', 'pointwise'")
    if dropout > 0 and rng is None:
        raise ValueError("reward dropout needs a numpy Generator rng")
    r = np.asarray(reward, dtype=np.float64)  # (G,)
    logits = np.zeros_like(r) if init_logits is None else np.asarray(init_logits, dtype=np.float64).copy()
    m1, m2 = np.zeros_like(r), np.zeros_like(r)
    b1, b2, eps = 0.9, 0.999, 1e-8
    star = int(r.argmax())
    rec, er, ent, mass, snaps = [], [], [], [], {}

    def record(k: int, p: np.ndarray) -> None:
        rec.append(k), er.append(float(p @ r)), ent.append(entropy(p)), mass.append(float(p[star]))

    for k in range(steps + 1):
        p = softmax(logits)
        if k % record_every == 0 or k == steps:
            record(k, p)
        if k in snapshot_at or k == steps:
            snaps[k] = p
        if k == steps:
            break
        if dropout == 0:
            rm = r
        else:
            rm = r * (rng.random(r.shape if dropout_mode == "pointwise" else ()) >= dropout)
        g = p * (rm - p @ rm)  # ascent direction (G,)
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g**2
        logits += lr * (m1 / (1 - b1 ** (k + 1))) / (np.sqrt(m2 / (1 - b2 ** (k + 1))) + eps)
    return Lemma1Run(np.asarray(grid), r, dropout, np.array(rec), np.array(er), np.array(ent), np.array(mass),
                     snaps)
