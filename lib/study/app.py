"""The user-study web app of the AIG paper (A.4, Fig. 10): Flask, served by waitress.

    GET  /                        a new page: a random configuration, a random prompt of it, nine random sample
                                  indices (without replacement, the same for both sides: paired seeds), the two
                                  methods shuffled left / right, the paper's three questions
    POST /vote                    token + three answers (left / equal / right); stored, then 303 to / (a new page)
    GET  /img/<token>/<side>/<k>  the k-th image of a side of one of the participant's own pages (PNG)
    GET  /healthz                 {"ok": true, "simulated": ..., "configurations": n}

A participant is a random id in a cookie. Everything a vote records comes from the page stored under its token
(`lib.study.db`); the form contributes only the three answers. A form with an unknown, malformed, foreign or
already answered token, a missing or invalid answer, or any other field (a side mapping, a method, indices) is
refused with 400 and nothing is stored; the same answers sent twice for one page store one vote.
"""
from __future__ import annotations

import contextlib
import random
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from flask import Flask, Response, abort, g, jsonify, make_response, redirect, render_template, request, url_for
from jinja2 import DictLoader
from waitress import create_server, wasyncore
from werkzeug.exceptions import HTTPException

from lib.study import db
from lib.study.catalog import Catalog
from lib.study.db import QUESTIONS, TOKEN_RE, USER_RE, Page, Refused

COOKIE = "study_uid"
QUESTION_TEXT = {
    "diversity": "Which images have better diversity "
                 "(camera and object pose variation, background, different details)?",
    "aesthetics": "Which images are aesthetically better?",
    "alignment": "Which images are more aligned with the prompt (correct attributes, prompt understanding)?",
}
ANSWER_TEXT = {"left": "Left", "equal": "Equally good", "right": "Right"}
CSP = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Image comparison study</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 1.2em auto; max-width: 1200px; color: #222; }
 h1 { font-size: 1.25em; } .prompt { background: #f3f3f3; padding: .6em 1em; border-radius: 6px; }
 .prompt p { font-size: 1.15em; margin: .3em 0; }
 .sides { display: flex; gap: 2.5em; justify-content: center; margin: 1em 0; }
 .side h2 { text-align: center; font-size: 1.1em; margin: .2em; }
 .grid { display: grid; grid-template-columns: repeat(3, {{ cell[0] }}px); gap: 4px; }
 .grid img { width: {{ cell[0] }}px; height: {{ cell[1] }}px; display: block; background: #ddd; }
 .pixelated img { image-rendering: pixelated; }
 fieldset { border: 1px solid #ccc; border-radius: 6px; margin: .7em 0; }
 legend { font-weight: 600; } label { margin-right: 2.2em; cursor: pointer; }
 button { font-size: 1.05em; padding: .45em 2.2em; }
 .banner { background: #b00020; color: #fff; padding: .5em 1em; font-weight: 700; border-radius: 6px; }
 footer { color: #777; font-size: .85em; margin-top: 1.5em; }
</style></head><body>
{% if simulated %}<div class="banner" id="simulated-banner">TEST SERVER: votes are recorded as SIMULATED,
 never as a human result</div>{% endif %}
<h1>Answer the following questions and click the Submit button</h1>
<div class="prompt"><strong>Prompt</strong><p id="prompt">{{ page.prompt }}</p></div>
<div class="sides">
{% for side in ("left", "right") %}
 <div class="side" id="{{ side }}"><h2>{{ side|capitalize }}</h2>
  <div class="grid{{ ' pixelated' if pixelated }}">
  {% for k in range(page.indices|length) %}<img src="{{ url_for('image', token=page.token, side=side, k=k) }}"
   alt="{{ side }} image {{ k + 1 }}" width="{{ cell[0] }}" height="{{ cell[1] }}">{% endfor %}
  </div></div>
{% endfor %}
</div>
<form method="post" action="{{ url_for('vote') }}">
 <input type="hidden" name="token" value="{{ page.token }}">
 {% for q, text in questions %}<fieldset id="q-{{ q }}"><legend>{{ text }}</legend>
  {% for value, label in answers %}<label><input type="radio" name="{{ q }}" value="{{ value }}" required>
   {{ label }}</label>{% endfor %}
 </fieldset>{% endfor %}
 <button type="submit" id="submit">Submit</button>
</form>
<footer>Your answers are stored under a random participant id kept in a browser cookie; nothing else about you
 is recorded.</footer>
</body></html>"""

ERROR = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ code }}</title></head><body>
<h1>{{ code }}: not recorded</h1><p id="reason">{{ reason }}</p><p><a href="{{ url_for('index') }}">Next page</a></p>
</body></html>"""


def draw_page(catalog: Catalog, rng: random.Random, user_id: str, per_page: int = 9) -> Page:
    """A random page: configuration, prompt, `per_page` sample indices without replacement, and sides."""
    conf = rng.choice(catalog.configurations)
    j = rng.randrange(len(conf.prompts))
    indices = tuple(rng.sample(range(len(conf.seeds[j])), per_page))
    return Page(token=secrets.token_urlsafe(24), user_id=user_id, created=db.now_utc(), run=conf.run,
                prompt_set=conf.prompt_set, prompt_idx=j, prompt=conf.prompts[j], configuration=conf.name,
                key_a=conf.a.key, label_a=conf.a.label, key_b=conf.b.key, label_b=conf.b.label,
                left_side=rng.choice("ab"), indices=indices, seeds=tuple(conf.seeds[j][i] for i in indices))


class _LockedRandom:
    """A seeded random.Random shared by the server's threads."""

    def __init__(self, seed: int):
        self._rng, self._lock = random.Random(seed), threading.Lock()

    def __getattr__(self, name):
        method = getattr(self._rng, name)

        def locked(*args, **kwargs):  # noqa: ANN202
            with self._lock:
                return method(*args, **kwargs)
        return locked


def create_app(catalog: Catalog, db_path: Path | str, simulated: bool = False, per_page: int = 9,
               seed: int | None = None) -> Flask:
    """The Flask app of the study on `catalog`, voting into the SQLite file db_path (created if missing)."""
    if not catalog.configurations:
        raise db.StudyError("no configuration to show: pass at least one pair of methods")
    db_path = db.open_study(db_path, simulated)
    rng = random.SystemRandom() if seed is None else _LockedRandom(seed)
    h, w = catalog.image_size
    scale = -(-128 // h) if h < 128 else min(1.0, 180 / h)  # small images: a whole multiple, drawn pixelated
    cell, pixelated = (round(w * scale), round(h * scale)), h < 128
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024, MAX_FORM_PARTS=16)
    app.jinja_loader = DictLoader({"page.html": PAGE, "error.html": ERROR})  # compiled once, autoescaped (.html)

    def conn() -> sqlite3.Connection:
        """This request's database connection (opened on first use, closed at teardown)."""
        if "study_db" not in g:
            g.study_db = db.connect(db_path)
        return g.study_db

    @app.teardown_appcontext
    def close(_exc: BaseException | None) -> None:
        """Close the request's connection."""
        c = g.pop("study_db", None)
        if c is not None:
            c.close()

    @app.after_request
    def headers(resp: Response) -> Response:
        """Security headers on every response."""
        resp.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})
        return resp

    @app.errorhandler(HTTPException)
    def error(e: HTTPException) -> tuple[str, int]:
        """An error page that says nothing was recorded, and why."""
        return render_template("error.html", code=e.code, reason=e.description), e.code

    def participant() -> str | None:
        """The participant id of the request's cookie, if well-formed."""
        uid = request.cookies.get(COOKIE, "")
        return uid if USER_RE.fullmatch(uid) else None

    @app.get("/")
    def index() -> Response:
        """A new page (and a participant cookie on the first visit)."""
        uid = participant()
        page = draw_page(catalog, rng, uid or secrets.token_hex(16), per_page)
        db.add_page(conn(), page)
        resp = make_response(render_template(
            "page.html", page=page, simulated=simulated, cell=cell, pixelated=pixelated,
            questions=[(q, QUESTION_TEXT[q]) for q in QUESTIONS], answers=list(ANSWER_TEXT.items())))
        resp.headers["Cache-Control"] = "no-store"
        if uid is None:
            resp.set_cookie(COOKIE, page.user_id, max_age=365 * 24 * 3600, httponly=True, samesite="Lax",
                            secure=request.is_secure)
        return resp

    @app.post("/vote")
    def vote() -> Response:
        """Check and store a vote, then 303 to a new page; 400 and nothing stored otherwise."""
        uid = participant()
        if uid is None:
            abort(400, "no participant cookie: open the study page first")
        form, expected = request.form, {"token", *QUESTIONS}
        extra, missing = set(form) - expected, expected - set(form)
        if extra:
            abort(400, f"unexpected field(s) {', '.join(sorted(extra))}: a page's content is never taken from the form")
        if missing:
            abort(400, f"missing answer(s): {', '.join(sorted(missing))}; please answer all three questions")
        if any(len(form.getlist(k)) != 1 for k in expected):
            abort(400, "each field must be sent once")
        if not TOKEN_RE.fullmatch(form["token"]):
            abort(400, "malformed page token")
        try:
            vote_id, new = db.record_vote(conn(), form["token"], uid, {q: form[q] for q in QUESTIONS}, simulated)
        except Refused as e:
            abort(400, str(e))
        resp = redirect(url_for("index"), 303)
        resp.headers.update({"X-Vote-Id": str(vote_id), "X-Vote-Status": "stored" if new else "already-stored"})
        return resp

    @app.get("/img/<token>/<side>/<int:k>")
    def image(token: str, side: str, k: int) -> Response:
        """The k-th image of a side of one of the participant's own pages."""
        uid = participant()
        page = db.get_page(conn(), token) if side in ("left", "right") and TOKEN_RE.fullmatch(token) else None
        if page is None or uid != page.user_id or not 0 <= k < len(page.indices):
            abort(404)
        path = catalog.image(page.run, page.side_key(side), page.prompt_idx, page.indices[k])
        if path is None:
            abort(404)
        return Response(path.read_bytes(), mimetype="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/healthz")
    def health() -> Response:
        """Liveness and the kind of votes this server records."""
        return jsonify(ok=True, simulated=simulated, configurations=len(catalog.configurations))

    return app


def serve(app: Flask, host: str = "127.0.0.1", port: int = 8050, threads: int = 8, debug: bool = False) -> None:
    """Serve until interrupted: waitress (production WSGI server), or Flask's debug server with debug=True."""
    if debug:
        app.run(host=host, port=port, debug=True, use_reloader=False)
        return
    server = create_server(app, host=host, port=port, threads=threads)
    print(f"serving the user study on http://{host}:{server.effective_port}/ (Ctrl-C stops)", flush=True)
    try:
        server.run()
    finally:
        server.close()


@contextlib.contextmanager
def serve_in_thread(app: Flask, host: str = "127.0.0.1", port: int = 0, threads: int = 8) -> Iterator[str]:
    """Serve app with waitress in a background thread (port 0: a free one); yields the base URL, then stops."""
    server = create_server(app, host=host, port=port, threads=threads)
    thread = threading.Thread(target=server.run, name="study-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.effective_port}"
    finally:  # close every socket from inside the server's own loop, then stop its worker threads
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map, ignore_all=True))
        thread.join(timeout=10)
        server.task_dispatcher.shutdown()
