"""A load test of a served study app: concurrent SIMULATED voters over HTTP (standard library only).

Each voter keeps its own cookie and connection and, until the time is up, loads a page, checks that it shows
2 x 9 images and fetches one of them, answers the three questions at random and submits. Some submissions are
sent twice at once on two connections (a double submit: both must be acknowledged with the same vote id), some
are forged (an unknown token: must be refused with 400). `check_database` then compares the acknowledged votes
with the database (one that held no votes before the test): none lost, none stored twice, none stored without an
acknowledgement. The load test refuses a server that records human votes (its /healthz must say simulated: true).
"""
from __future__ import annotations

import http.client
import json
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from lib.study import db
from lib.study.db import ANSWERS, QUESTIONS, StudyError

TOKEN = re.compile(r'name="token" value="([^"]+)"')
IMG = re.compile(r'<img src="([^"]+)"')
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class LoadReport:
    """What the simulated voters did and saw."""

    voters: int
    seconds: float = 0.0
    pages: int = 0
    images: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)  # page token -> vote id
    double_submits: int = 0
    forged_refused: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of figures."""
        n = len(self.acknowledged)
        return (f"{self.voters} simulated voters, {self.seconds:.1f} s: {self.pages} pages, {n} votes acknowledged "
                f"({n / max(self.seconds, 1e-9):.0f}/s), {self.double_submits} double submits, "
                f"{self.forged_refused} forged submissions refused, {self.images} images, {len(self.errors)} errors")


class _Client:
    def __init__(self, host: str, port: int):
        self.host, self.port, self.cookie, self.conn = host, port, "", None

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, dict, bytes]:
        """(status, lower-cased headers, body) of one request on this voter's connection, with its cookie."""
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (0, 1):  # one retry on a connection the server closed while idle
            self.conn = self.conn or http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        cookie = r.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";")[0]
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def _post(client: _Client, body: str, out: list) -> None:
    try:
        out.append(client.request("POST", "/vote", body))
    except Exception as e:  # reported by the caller
        out.append((0, {}, repr(e).encode()))


def _voter(host: str, port: int, deadline: float, rng: random.Random, double: float, forged: float, per_side: int,
           report: LoadReport, lock: threading.Lock) -> None:
    me = _Client(host, port)
    try:
        while time.monotonic() < deadline:
            _vote_once(me, host, port, rng, double, forged, per_side, report, lock)
    except Exception as e:  # a voter that fails stops; the report says why
        with lock:
            report.errors.append(f"voter stopped: {e!r}")
    finally:
        me.conn and me.conn.close()


def _vote_once(me: _Client, host: str, port: int, rng: random.Random, double: float, forged: float, per_side: int,
               report: LoadReport, lock: threading.Lock) -> None:
    """One page: load it, fetch an image, submit (sometimes twice at once), sometimes forge a submission."""
    status, _, page = me.request("GET", "/")
    html = page.decode()
    m, imgs = TOKEN.search(html), IMG.findall(html)
    if status != 200 or not m or len(imgs) != 2 * per_side:
        with lock:
            report.errors.append(f"GET / -> {status}, token {bool(m)}, {len(imgs)} images")
        return
    s, _, png = me.request("GET", rng.choice(imgs).replace("&amp;", "&"))
    body = urlencode({"token": m.group(1), **{q: rng.choice(ANSWERS) for q in QUESTIONS}})
    results: list = []
    if rng.random() < double:  # the same submission twice at once, on two connections
        twin = _Client(host, port)
        twin.cookie = me.cookie
        t = threading.Thread(target=_post, args=(twin, body, results))
        t.start()
        _post(me, body, results)
        t.join()
        twin.conn and twin.conn.close()
    else:
        _post(me, body, results)
    bad = None
    if forged and rng.random() < forged:
        fake = urlencode({"token": secrets.token_urlsafe(24), **{q: "left" for q in QUESTIONS}})
        fs, _, _ = me.request("POST", "/vote", fake)
        bad = fs != 400 and f"forged submission -> {fs}"
    ids = {h.get("x-vote-id") for st, h, _ in results if st == 303}
    with lock:
        report.pages += 1
        report.images += s == 200 and png.startswith(PNG)
        report.double_submits += len(results) == 2
        report.forged_refused += bad is False
        if bad:
            report.errors.append(bad)
        if any(st != 303 for st, _, _ in results) or len(ids) != 1:
            report.errors.append(f"vote -> {[(st, h.get('x-vote-status')) for st, h, _ in results]}")
        if ids and None not in ids:
            report.acknowledged[m.group(1)] = int(min(ids))


def run_load(base_url: str, voters: int = 24, seconds: float = 3.0, double: float = 0.2, forged: float = 0.1,
             seed: int = 0, per_side: int = 9) -> LoadReport:
    """Drive the app at base_url with `voters` concurrent simulated voters for `seconds`."""
    u = urlsplit(base_url)
    host, port = u.hostname, u.port or 80
    status, _, body = _Client(host, port).request("GET", "/healthz")
    if status != 200 or json.loads(body).get("simulated") is not True:
        raise StudyError(f"{base_url} does not record simulated votes (start it with --simulated): "
                         "a load test never votes into a human study")
    report, lock = LoadReport(voters), threading.Lock()
    start = time.monotonic()
    threads = [threading.Thread(target=_voter, args=(host, port, start + seconds, random.Random(seed * 1000 + i),
                                                     double, forged, per_side, report, lock), daemon=True)
               for i in range(voters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.seconds = time.monotonic() - start
    return report


def check_database(path: Path | str, report: LoadReport) -> dict[str, int]:
    """Acknowledged votes against the database: stored, lost, duplicated, unacknowledged, mismatched (counts)."""
    conn = db.connect(path)
    try:
        _, rows = db.vote_rows(conn, ["token", "id"])
    finally:
        conn.close()
    stored: dict[str, list[int]] = {}
    for token, vid in rows:
        stored.setdefault(token, []).append(vid)
    ack = report.acknowledged
    return {"voters": report.voters, "acknowledged": len(ack), "stored": len(rows),
            "lost": sum(t not in stored for t in ack), "duplicated": sum(len(v) > 1 for v in stored.values()),
            "unacknowledged": sum(t not in ack for t in stored),
            "mismatched": sum(t in stored and stored[t][0] != vid for t, vid in ack.items())}
