"""The votes database of the user study (AIG paper A.4): one SQLite file, WAL mode, one connection per thread.

Tables
  meta(key, value)   schema version and whether the database holds SIMULATED votes (fixed when it is created; a
                     database never mixes human and simulated votes)
  pages(token, ...)  every page the app served: the participant's cookie id, the prompt, the configuration, which
                     method was on the left, the image indices and seeds. The token is the only thing a form sends back.
  votes(id, token UNIQUE, ...)  one row per answered page: the page's content copied, the three answers as shown
                     (left / equal / right) and, derived here from the page's side mapping, the winner of each
                     question ('a' = the first method of the pair, 'b' = the second, 'equal').

Every statement uses bound parameters; a vote is written inside `BEGIN IMMEDIATE` ... `COMMIT`.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

SCHEMA_VERSION = "1"
QUESTIONS = ("diversity", "aesthetics", "alignment")
ANSWERS = ("left", "equal", "right")
OUTCOMES = ("a", "equal", "b")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")
USER_RE = re.compile(r"[0-9a-f]{32}")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pages (
    token TEXT PRIMARY KEY, user_id TEXT NOT NULL, created TEXT NOT NULL,
    run TEXT NOT NULL, prompt_set TEXT NOT NULL, prompt_idx INTEGER NOT NULL, prompt TEXT NOT NULL,
    configuration TEXT NOT NULL, key_a TEXT NOT NULL, label_a TEXT NOT NULL, key_b TEXT NOT NULL,
    label_b TEXT NOT NULL, left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
    indices TEXT NOT NULL, seeds TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL UNIQUE REFERENCES pages(token),
    user_id TEXT NOT NULL, voted_at TEXT NOT NULL,
    run TEXT NOT NULL, prompt_set TEXT NOT NULL, prompt_idx INTEGER NOT NULL, prompt TEXT NOT NULL,
    configuration TEXT NOT NULL, label_a TEXT NOT NULL, label_b TEXT NOT NULL,
    left_method TEXT NOT NULL, right_method TEXT NOT NULL, indices TEXT NOT NULL, seeds TEXT NOT NULL,
    {", ".join(f"{q} TEXT NOT NULL CHECK ({q} IN ('left', 'equal', 'right'))" for q in QUESTIONS)},
    {", ".join(f"{q}_winner TEXT NOT NULL CHECK ({q}_winner IN ('a', 'equal', 'b'))" for q in QUESTIONS)},
    simulated INTEGER NOT NULL CHECK (simulated IN (0, 1)));
CREATE INDEX IF NOT EXISTS votes_user ON votes(user_id);
"""
PAGE_COLUMNS = ("token", "user_id", "created", "run", "prompt_set", "prompt_idx", "prompt", "configuration", "key_a",
                "label_a", "key_b", "label_b", "left_side", "indices", "seeds")


class StudyError(ValueError):
    """The study cannot start or read its data: the message says what is wrong and what to do."""


class Refused(ValueError):
    """A submission the app answers with 400 and stores nothing for."""


@dataclass(frozen=True)
class Page:
    """What one page shows; stored under its token before the page is sent."""

    token: str
    user_id: str
    created: str
    run: str
    prompt_set: str
    prompt_idx: int
    prompt: str
    configuration: str
    key_a: str
    label_a: str
    key_b: str
    label_b: str
    left_side: str  # 'a' or 'b': which method of the pair is on the left
    indices: tuple[int, ...]
    seeds: tuple[int, ...]

    def side_key(self, side: str) -> str:
        """The method key shown on 'left' or 'right'."""
        ab = self.left_side if side == "left" else ("b" if self.left_side == "a" else "a")
        return self.key_a if ab == "a" else self.key_b

    def side_label(self, side: str) -> str:
        """The method label shown on 'left' or 'right'."""
        return self.label_a if self.side_key(side) == self.key_a else self.label_b


def now_utc() -> str:
    """The current time as an ISO 8601 UTC string."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), waiting up to 30 s for the write lock."""
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_study(path: Path | str, simulated: bool) -> Path:
    """Create the database (WAL mode, schema) if missing; refuse one whose human/simulated flag differs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA.split(";"):  # executescript would commit first: run them inside the transaction
            if statement.strip():
                conn.execute(statement)
        got = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not got:
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                             [("schema_version", SCHEMA_VERSION), ("simulated", str(int(simulated))),
                              ("created", now_utc())])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    if got and got.get("schema_version") != SCHEMA_VERSION:
        raise StudyError(f"{path}: votes schema version {got.get('schema_version')}, this code writes {SCHEMA_VERSION}")
    if got and got.get("simulated") != str(int(simulated)):
        kind = "SIMULATED" if got.get("simulated") == "1" else "human"
        raise StudyError(f"{path} holds {kind} votes; human and simulated votes never share a database "
                         f"(use another --db{'' if simulated else ' or --simulated for a test server'})")
    return path


def is_simulated(conn: sqlite3.Connection) -> bool:
    """The database's simulated flag (meta), checked against its rows: a mixed database is an error."""
    flag = conn.execute("SELECT value FROM meta WHERE key = 'simulated'").fetchone()
    if flag is None:
        raise StudyError("not a votes database of lib.study (no meta table entry 'simulated')")
    kinds = {r[0] for r in conn.execute("SELECT DISTINCT simulated FROM votes")}
    if kinds - {int(flag[0])}:
        raise StudyError("the database mixes human and simulated votes; analyse them separately")
    return flag[0] == "1"


def add_page(conn: sqlite3.Connection, page: Page) -> None:
    """Store a page before it is served (one INSERT, atomic on its own)."""
    row = {**page.__dict__, "indices": json.dumps(list(page.indices)), "seeds": json.dumps(list(page.seeds))}
    conn.execute(f"INSERT INTO pages ({', '.join(PAGE_COLUMNS)}) VALUES ({', '.join('?' * len(PAGE_COLUMNS))})",
                 [row[c] for c in PAGE_COLUMNS])


def get_page(conn: sqlite3.Connection, token: str) -> Page | None:
    """The page stored under token, or None."""
    row = conn.execute(f"SELECT {', '.join(PAGE_COLUMNS)} FROM pages WHERE token = ?", (token,)).fetchone()
    if row is None:
        return None
    d = dict(zip(PAGE_COLUMNS, row))
    return Page(**{**d, "indices": tuple(json.loads(d["indices"])), "seeds": tuple(json.loads(d["seeds"]))})


def winners(left_side: str, answers: Mapping[str, str]) -> dict[str, str]:
    """The de-shuffled answers: per question 'a', 'b' or 'equal' from the side mapping and left/equal/right."""
    right_side = "b" if left_side == "a" else "a"
    return {q: {"left": left_side, "right": right_side, "equal": "equal"}[answers[q]] for q in QUESTIONS}


def record_vote(conn: sqlite3.Connection, token: str, user_id: str, answers: Mapping[str, str], simulated: bool,
                voted_at: str | None = None) -> tuple[int, bool]:
    """Store a page's vote in one transaction: (id, True); (id, False) for a double submit; else raise Refused."""
    if set(answers) != set(QUESTIONS) or any(answers[q] not in ANSWERS for q in QUESTIONS):
        raise Refused(f"answers must be one of {', '.join(ANSWERS)} for each of {', '.join(QUESTIONS)}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        flag = conn.execute("SELECT value FROM meta WHERE key = 'simulated'").fetchone()
        if flag is None or flag[0] != str(int(simulated)):
            kind = "SIMULATED" if flag and flag[0] == "1" else "human"
            raise StudyError(f"this database holds {kind} votes; a {'simulated' if simulated else 'human'} vote "
                             "cannot be stored in it")
        page = get_page(conn, token)
        if page is None:
            raise Refused("unknown page token")
        if page.user_id != user_id:
            raise Refused("this page was shown to another participant")
        cols = ", ".join(QUESTIONS)
        old = conn.execute(f"SELECT id, {cols} FROM votes WHERE token = ?", (token,)).fetchone()
        if old is not None:
            if tuple(old[1:]) != tuple(answers[q] for q in QUESTIONS):
                raise Refused("this page has already been answered")
            conn.execute("COMMIT")
            return int(old[0]), False
        row = {"token": token, "user_id": user_id, "voted_at": voted_at or now_utc(), "run": page.run,
               "prompt_set": page.prompt_set, "prompt_idx": page.prompt_idx, "prompt": page.prompt,
               "configuration": page.configuration, "label_a": page.label_a, "label_b": page.label_b,
               "left_method": page.side_label("left"), "right_method": page.side_label("right"),
               "indices": json.dumps(list(page.indices)), "seeds": json.dumps(list(page.seeds)),
               **{q: answers[q] for q in QUESTIONS},
               **{f"{q}_winner": w for q, w in winners(page.left_side, answers).items()},
               "simulated": int(simulated)}
        cur = conn.execute(f"INSERT INTO votes ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           list(row.values()))
        conn.execute("COMMIT")
        return int(cur.lastrowid), True
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def vote_rows(conn: sqlite3.Connection, columns: Sequence[str] | None = None) -> tuple[list[str], list[tuple]]:
    """All votes in id order: (column names, rows); columns are checked against the table's own."""
    known = [r[1] for r in conn.execute("PRAGMA table_info(votes)")]
    unknown = set(columns or ()) - set(known)
    if unknown:
        raise ValueError(f"no column {', '.join(sorted(unknown))} in votes; columns: {', '.join(known)}")
    cur = conn.execute(f"SELECT {', '.join(columns or known)} FROM votes ORDER BY id")
    return [d[0] for d in cur.description], cur.fetchall()
