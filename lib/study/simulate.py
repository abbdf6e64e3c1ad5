"""SIMULATED votes for testing the analysis: a seeded population of voters with known preferences.

Nothing here is a human result. Each simulated user has their own probabilities of answering 'a' (the first method
of a pair), 'equal' or 'b' for each question, drawn from a Dirichlet distribution centred on the population's
(`Population.preferences`, the known truth the analysis should recover), and casts a skewed number of votes
(a few users vote much more than the rest, as in the paper's Fig. 8b). Votes go through the same database code as
the app's (`lib.study.db.record_vote`), so the winners are de-shuffled from the side mapping exactly as for real
votes, and the database is flagged simulated: the analysis labels everything drawn from it
"SIMULATED votes — not a human result".
"""
from __future__ import annotations

import base64
import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lib.study import db
from lib.study.analysis import SIMULATED
from lib.study.db import OUTCOMES, QUESTIONS, Page, StudyError

PREFERENCES = {  # the simulated population's probabilities of (a, equal, b) per question: the known truth
    "diversity": (0.66, 0.18, 0.16),
    "aesthetics": (0.50, 0.28, 0.22),
    "alignment": (0.30, 0.46, 0.24),
}
START = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)  # simulated votes get synthetic, deterministic times


@dataclass(frozen=True)
class Population:
    """A simulated study: users, their preferences and vote counts, the configurations they are shown."""

    preferences: tuple[tuple[str, tuple[float, float, float]], ...] = tuple(PREFERENCES.items())
    concentration: float = 30.0  # each user's probabilities ~ Dirichlet(concentration * population's)
    users: int = 36
    mean_votes: float = 42.0  # votes per user: 1 + Gamma(shape, (mean_votes - 1) / shape), rounded
    shape: float = 1.3
    runs: tuple[str, ...] = ("sim_sd14_pickscore", "sim_sd14_hpsv2", "sim_sdxl_pickscore", "sim_sdxl_hpsv2")
    methods: tuple[tuple[str, str], ...] = (("aig__power-2", "aig power:2"), ("draft__-", "draft"))  # (key, label)
    prompts: int = 40
    images: int = 50
    per_page: int = 9

    def __post_init__(self):
        for q, p in self.preferences:
            if q not in QUESTIONS or len(p) != 3 or min(p) < 0 or abs(sum(p) - 1) > 1e-9:
                raise ValueError(f"preferences[{q!r}] = {p!r}: expected three probabilities (a, equal, b) summing to 1")


def expected(population: Population = Population()) -> pd.DataFrame:
    """The population's known preferences in percent (question, outcome, choice, percent, source)."""
    (_, la), (_, lb) = population.methods
    names = dict(zip(OUTCOMES, (la, "equal", lb)))
    return pd.DataFrame([{"question": q, "outcome": o, "choice": names[o], "percent": 100 * p[k], "source": SIMULATED}
                         for q, p in population.preferences for k, o in enumerate(OUTCOMES)])


def _remove_simulated(path: Path) -> None:
    if not path.exists():
        return
    conn = db.connect(path)
    try:
        flag = conn.execute("SELECT value FROM meta WHERE key = 'simulated'").fetchone()
    except sqlite3.DatabaseError:  # not a database, or not one of ours
        flag = None
    finally:
        conn.close()
    if flag is None or flag[0] != "1":
        raise StudyError(f"{path} exists and is not a database of simulated votes: not overwriting it")
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


def simulate_study(path: Path | str, population: Population = Population(), seed: int = 0) -> Path:
    """Write a fresh database of SIMULATED votes at path (replacing an older simulated one, never a human one)."""
    path = Path(path)
    _remove_simulated(path)
    db.open_study(path, simulated=True)
    rng = np.random.default_rng(seed)
    prefs = dict(population.preferences)
    users = [rng.bytes(16).hex() for _ in range(population.users)]
    user_p = {u: {q: rng.dirichlet(population.concentration * np.asarray(prefs[q])) for q in QUESTIONS}
              for u in users}
    counts = 1 + np.rint(rng.gamma(population.shape, (population.mean_votes - 1) / population.shape,
                                   size=len(users))).astype(int)
    order = rng.permutation(np.repeat(np.arange(len(users)), counts))  # who votes when
    (key_a, label_a), (key_b, label_b) = population.methods
    conn = db.connect(path)
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        for n, u in enumerate(order):
            user, run = users[u], population.runs[rng.integers(len(population.runs))]
            j = int(rng.integers(population.prompts))
            idx = tuple(int(i) for i in rng.choice(population.images, population.per_page, replace=False))
            left = "ab"[rng.integers(2)]
            when = (START + dt.timedelta(seconds=37 * n)).isoformat(timespec="milliseconds")
            page = Page(token=base64.urlsafe_b64encode(rng.bytes(24)).decode(), user_id=user, created=when, run=run,
                        prompt_set="coverage", prompt_idx=j, prompt=f"simulated prompt {j + 1:02d}",
                        configuration=f"{run}: {label_a} vs {label_b}", key_a=key_a, label_a=label_a, key_b=key_b,
                        label_b=label_b, left_side=left, indices=idx,
                        seeds=tuple(j * population.images + i for i in idx))
            db.add_page(conn, page)
            answers = {}
            for q in QUESTIONS:
                won = OUTCOMES[rng.choice(3, p=user_p[user][q])]
                answers[q] = "equal" if won == "equal" else ("left" if won == left else "right")
            db.record_vote(conn, page.token, user, answers, simulated=True, voted_at=when)
    finally:
        conn.close()
    return path


def recovery(pooled: pd.DataFrame, normalised: pd.DataFrame, population: Population = Population()) -> pd.DataFrame:
    """Known preferences next to the pooled and user-normalised estimates, and whether each interval holds them."""
    truth = expected(population).set_index(["question", "choice"]).percent.rename("truth")
    out = [truth]
    for name, t in (("pooled", pooled), ("user_normalised", normalised)):
        t = t.set_index(["question", "choice"])
        out += [t.percent.rename(name), ((t.lo <= truth) & (truth <= t.hi)).rename(f"{name}_ci_holds_truth")]
    return pd.concat(out, axis=1).assign(source=SIMULATED)


def choose_database(votes_db: str = "", run_dir: str = "", simulated_db: str = "",
                    seed: int = 0) -> tuple[Path, str, bool]:
    """Notebook 06's database, a sentence why, and whether it was simulated here: votes_db, the run's, or SIMULATED."""
    # votes_db if given, else <run_dir>/study/votes.sqlite if it exists, else simulated votes generated at
    # simulated_db (paths relative to the repository root); simulated here = their true preferences are known
    root = Path(__file__).resolve().parents[2]
    resolve = lambda p: Path(p) if Path(p).is_absolute() else root / p  # noqa: E731
    if votes_db:
        return resolve(votes_db), f"analysing {votes_db} (votes_db)", False
    if run_dir and (resolve(run_dir) / "study" / "votes.sqlite").is_file():
        return resolve(run_dir) / "study" / "votes.sqlite", f"analysing the study of run {Path(run_dir).name}", False
    path = simulate_study(resolve(simulated_db), seed=seed)
    return path, (f"no votes_db given{' and no study in run ' + Path(run_dir).name if run_dir else ''}: analysing "
                  f"{SIMULATED}, generated with seed {seed} by lib.study.simulate"), True
