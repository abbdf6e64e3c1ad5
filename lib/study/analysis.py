"""Analysis of a user-study votes database (AIG paper Sec. 4.4, A.4): win rates per question overall (Fig. 6) and
per configuration (Fig. 7), the user-normalised preference (Fig. 8a) and the votes per user (Fig. 8b).

A vote answers three questions; each answer is a win for the first method of its pair ('a'), a tie ('equal') or a
win for the second ('b'). Win rates pool the votes of a group; the user-normalised preference first turns each
user's votes into percentages that sum to 100, then averages users (A.4), so a user who voted 100 times weighs as
much as one who voted 5 times. Intervals are 95 % percentile intervals of a bootstrap that resamples users (votes
of one user are not independent). Every table carries a `source` column: human votes, or SIMULATED votes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lib.study import db
from lib.study.db import OUTCOMES, QUESTIONS, StudyError

SIMULATED = "SIMULATED votes — not a human result"
HUMAN = "human votes"
COLUMNS = ["question", "outcome", "choice", "percent", "lo", "hi", "votes", "n_votes", "n_users", "weighting", "source"]


def load_votes(path: Path | str) -> pd.DataFrame:
    """One row per vote (user, configuration, comparison, labels, winners, source); attrs['simulated'] is the flag."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no votes database (python -m lib.study serve writes one)")
    conn = db.connect(path)
    try:
        simulated = db.is_simulated(conn)
        cols = ["id", "user_id", "voted_at", "run", "prompt_idx", "configuration", "label_a", "label_b",
                *QUESTIONS, *(f"{q}_winner" for q in QUESTIONS)]
        names, rows = db.vote_rows(conn, cols)
    finally:
        conn.close()
    votes = pd.DataFrame(rows, columns=names)
    votes["comparison"] = votes.label_a + " vs " + votes.label_b
    votes["source"] = SIMULATED if simulated else HUMAN
    votes.attrs["simulated"] = simulated
    return votes


def source_of(votes: pd.DataFrame) -> str:
    """'SIMULATED votes — not a human result' or 'human votes'."""
    return SIMULATED if votes.attrs.get("simulated") or (votes.source == SIMULATED).any() else HUMAN


def describe(votes: pd.DataFrame) -> str:
    """One line: how many votes from how many users in how many configurations, and their source."""
    if votes.empty:
        return f"no votes in this database yet ({source_of(votes)}): nothing to analyse"
    return (f"{len(votes)} {source_of(votes)}: {votes.user_id.nunique()} users, "
            f"{votes.configuration.nunique()} configurations, comparisons: {', '.join(votes.comparison.unique())}")


def _choice(g: pd.DataFrame, outcome: str) -> str:
    if outcome == "equal":
        return "equal"
    labels = g[f"label_{outcome}"].unique()
    return labels[0] if len(labels) == 1 else ("first method" if outcome == "a" else "second method")


def _groups(votes: pd.DataFrame, by: Sequence[str]):
    return votes.groupby(list(by), sort=False) if by else [((), votes)]


def preference(votes: pd.DataFrame, by: Sequence[str] = ("comparison",), normalise: bool = False,
               n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Percent for a / equal / b per group and question, pooled or user-normalised, with user-bootstrap [lo, hi]."""
    rng = np.random.default_rng(seed)
    q_lo, q_hi = 50 * (1 - level), 50 * (1 + level)
    rows = []
    for key, g in _groups(votes, by):
        key = key if isinstance(key, tuple) else (key,)
        users = g.user_id.unique()
        weights = rng.multinomial(len(users), np.full(len(users), 1 / len(users)), size=n_boot)  # (B, U)
        for q in QUESTIONS:
            c = pd.crosstab(g.user_id, g[f"{q}_winner"]).reindex(index=users, columns=list(OUTCOMES), fill_value=0)
            c = c.to_numpy(float)
            n = c.sum(1)
            if normalise:
                share = c / n[:, None]
                point, boot = share.mean(0), weights @ share / len(users)
            else:
                point, boot = c.sum(0) / n.sum(), (weights @ c) / (weights @ n)[:, None]
            lo, hi = np.percentile(100 * boot, [q_lo, q_hi], axis=0)
            for k, o in enumerate(OUTCOMES):
                rows.append({**dict(zip(by, key)), "question": q, "outcome": o, "choice": _choice(g, o),
                             "percent": 100 * point[k], "lo": lo[k], "hi": hi[k], "votes": int(c[:, k].sum()),
                             "n_votes": int(n.sum()), "n_users": len(users),
                             "weighting": "user-normalised" if normalise else "pooled", "source": source_of(votes)})
    return pd.DataFrame(rows, columns=[*by, *COLUMNS])


def win_rates(votes: pd.DataFrame, by: Sequence[str] = ("comparison",), n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> pd.DataFrame:
    """Fig. 6 (by comparison) and Fig. 7 (by configuration): percent of all votes won by a, tied, won by b."""
    return preference(votes, by, False, n_boot, seed, level)


def user_normalised(votes: pd.DataFrame, by: Sequence[str] = ("comparison",), n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> pd.DataFrame:
    """Fig. 8a: each user's votes normalised to sum to 100, then averaged over users (A.4)."""
    return preference(votes, by, True, n_boot, seed, level)


def votes_per_user(votes: pd.DataFrame) -> pd.DataFrame:
    """Fig. 8b: votes cast by each user, most first (user: P01, P02, ... in that order; user_id: the cookie id)."""
    counts = votes.user_id.value_counts()  # most votes first; ties in order of first appearance
    out = pd.DataFrame({"user": [f"P{i + 1:02d}" for i in range(len(counts))], "user_id": counts.index,
                        "votes": counts.to_numpy()})
    out["source"] = source_of(votes)
    return out


def table(result: pd.DataFrame, digits: int = 0) -> pd.DataFrame:
    """A preference table as text: per group and question, 'percent [lo, hi]' for a, equal, b, and the source."""
    if result.empty:
        return pd.DataFrame()
    by = [c for c in result.columns if c not in COLUMNS]
    rows = []
    for _, g in result.groupby([*by, "question"], sort=False):
        g = g.set_index("outcome")
        text = {o: f"{g.percent[o]:.{digits}f} [{g.lo[o]:.{digits}f}, {g.hi[o]:.{digits}f}]" for o in OUTCOMES}
        rows.append({**{c: g[c].iloc[0] for c in [*by, "question"]}, "a": g.choice["a"], "a %": text["a"],
                     "equal %": text["equal"], "b %": text["b"], "b": g.choice["b"], "votes": g.n_votes.iloc[0],
                     "users": g.n_users.iloc[0], "source": g.source.iloc[0]})
    return pd.DataFrame(rows).set_index([*by, "question"])
