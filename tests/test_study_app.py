"""The user-study app with Flask's test client: page contents, shuffling, pairing, refusals, idempotent submit;
and the run index it reads (lib.study.catalog)."""
import io
import re
from urllib.parse import urlencode

import numpy as np
import pytest
from PIL import Image

from lib.methods import Method
from lib.study import catalog as catalog_module
from lib.study import db
from lib.study.__main__ import default_db
from lib.study.app import ANSWER_TEXT, COOKIE, QUESTION_TEXT, create_app
from lib.study.catalog import build_catalog, parse_pair, parse_pairs
from lib.study.db import QUESTIONS, StudyError
from study_fixtures import CODES, PROMPTS, image_run, tag, toy_points_run

PAIRS = "aig:power:2,draft;base,draft"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return image_run(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def catalog(run):
    return build_catalog([run], parse_pairs([PAIRS]))


@pytest.fixture
def app(catalog, tmp_path):
    return create_app(catalog, tmp_path / "votes.sqlite", simulated=True, seed=0)


def token_of(html: str) -> str:
    return re.search(r'name="token" value="([^"]+)"', html).group(1)


def open_page(client):
    r = client.get("/")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    return html, token_of(html)


def answer(token, **kw):
    return {"token": token, "diversity": "left", "aesthetics": "equal", "alignment": "right", **kw}


def n_votes(app_db):
    conn = db.connect(app_db)
    try:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    finally:
        conn.close()


def page_of(path, token):
    conn = db.connect(path)
    try:
        return db.get_page(conn, token)
    finally:
        conn.close()


def served(client, token, side, k):
    r = client.get(f"/img/{token}/{side}/{k}")
    assert r.status_code == 200 and r.mimetype == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"))


def test_parse_pairs():
    assert parse_pair("aig:power:2,draft") == (Method("aig", "power:2"), Method("draft"))
    assert parse_pair("aig:sigmoid:10,0.5,draft") == (Method("aig", "sigmoid:10,0.5"), Method("draft"))
    assert parse_pair("aig:power:2 vs lora_scale:0.5") == (Method("aig", "power:2"), Method("lora_scale", 0.5))
    assert parse_pair("combined:step:0.4,kl:lambda=1") == (Method("combined", 0.4), Method("kl", 1))
    assert len(parse_pairs(["aig:power:2,draft;base,draft", "aig:power:3,draft"])) == 3
    for bad, why in (("draft,draft", "itself"), ("foo:1,draft", "expected two methods"), ("aig,draft", "two methods"),
                     ("draft:1,base", "two methods")):
        with pytest.raises(StudyError, match=why):
            parse_pair(bad)
    with pytest.raises(StudyError, match="no --pairs"):
        parse_pairs([" ; "])


def test_page_shows_the_paper_layout_without_naming_the_methods(app):
    client = app.test_client()
    r = client.get("/")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", client.get_cookie(COOKIE).value)
    assert "Answer the following questions and click the Submit button" in html
    assert sum(p in html for p in PROMPTS) == 1
    assert len(re.findall(r'<img src="/img/[^"]+/left/\d"', html)) == 9
    assert len(re.findall(r'<img src="/img/[^"]+/right/\d"', html)) == 9
    for q in QUESTIONS:
        assert QUESTION_TEXT[q] in html
        assert [v for v in re.findall(rf'name="{q}" value="(\w+)"', html)] == list(ANSWER_TEXT)
    assert all(label in html for label in ANSWER_TEXT.values()) and 'type="submit"' in html
    assert "SIMULATED" in html  # a --simulated server says so on every page
    for secret in ("aig", "draft", "base", "power"):  # the study is blind: no method name reaches the page
        assert secret not in html.lower()
    assert r.headers["Cache-Control"] == "no-store" and "default-src 'none'" in r.headers["Content-Security-Policy"]


def test_images_are_paired_and_match_the_stored_side_mapping(app, tmp_path):
    client = app.test_client()
    for _ in range(6):
        _, token = open_page(client)
        page = page_of(tmp_path / "votes.sqlite", token)
        assert len(page.indices) == 9 == len(set(page.indices)) and max(page.indices) < 12
        for k in range(9):
            left, right = tag(served(client, token, "left", k)), tag(served(client, token, "right", k))
            assert left[0] == CODES[page.side_key("left")] and right[0] == CODES[page.side_key("right")]
            assert left[1] == right[1] == page.seeds[k] == page.prompt_idx * 12 + page.indices[k]  # paired seeds
        assert served(client, token, "left", 0).shape == (32, 32, 3)


def test_pages_are_drawn_at_random(app, tmp_path):
    client = app.test_client()
    pages = [page_of(tmp_path / "votes.sqlite", open_page(client)[1]) for _ in range(80)]
    lefts = [p.left_side for p in pages]
    assert 20 <= lefts.count("a") <= 60  # sides shuffled
    assert {p.configuration for p in pages} == {"study_run: aig power:2 vs draft", "study_run: base vs draft"}
    assert {p.prompt_idx for p in pages} == {0, 1, 2}
    assert len({p.indices for p in pages}) == 80 and len({p.token for p in pages}) == 80
    first = [p.indices[0] for p in pages]
    assert len(set(first)) >= 10  # any of the 12 samples can come first


def test_vote_is_stored_deshuffled(app, tmp_path):
    client = app.test_client()
    _, token = open_page(client)
    r = client.post("/vote", data=answer(token))
    assert r.status_code == 303 and r.headers["Location"] == "/" and r.headers["X-Vote-Status"] == "stored"
    page = page_of(tmp_path / "votes.sqlite", token)
    conn = db.connect(tmp_path / "votes.sqlite")
    names, rows = db.vote_rows(conn)
    conn.close()
    row = dict(zip(names, rows[0]))
    assert row["user_id"] == client.get_cookie(COOKIE).value and row["token"] == token
    assert row["prompt"] == PROMPTS[page.prompt_idx] and row["configuration"] == page.configuration
    assert row["left_method"] == page.side_label("left") and row["right_method"] == page.side_label("right")
    assert row["indices"] == str(list(page.indices)) and row["seeds"] == str(list(page.seeds))
    assert (row["diversity"], row["aesthetics"], row["alignment"]) == ("left", "equal", "right")
    left, right = page.left_side, "b" if page.left_side == "a" else "a"
    assert (row["diversity_winner"], row["aesthetics_winner"], row["alignment_winner"]) == (left, "equal", right)
    assert row["simulated"] == 1 and row["voted_at"].endswith("+00:00")
    assert open_page(client)[1] != token  # and the next page is a new one


def test_double_submit_stores_one_vote(app, tmp_path):
    client = app.test_client()
    _, token = open_page(client)
    first, second = client.post("/vote", data=answer(token)), client.post("/vote", data=answer(token))
    assert first.status_code == second.status_code == 303
    assert first.headers["X-Vote-Id"] == second.headers["X-Vote-Id"]
    assert second.headers["X-Vote-Status"] == "already-stored"
    assert n_votes(tmp_path / "votes.sqlite") == 1


def test_invalid_or_forged_submissions_are_refused(app, tmp_path):
    path = tmp_path / "votes.sqlite"
    client, other = app.test_client(), app.test_client()
    _, token = open_page(client)
    _, answered = open_page(client)
    assert client.post("/vote", data=answer(answered)).status_code == 303
    _, foreign = open_page(other)
    cases = {
        "unknown token": answer("A" * 32),
        "malformed token": answer("../../etc/passwd"),
        "injected token": answer("x' OR '1'='1"),
        "replayed token, other answers": answer(answered, diversity="right"),
        "another participant's page": answer(foreign),
        "missing answer": {k: v for k, v in answer(token).items() if k != "alignment"},
        "invalid answer": answer(token, aesthetics="left'); DROP TABLE votes; --"),
        "tampered side mapping": answer(token, left="draft__-", right="aig__power-2"),
        "forged winner": answer(token, diversity_winner="a"),
        "forged indices": answer(token, indices="[0, 1, 2, 3, 4, 5, 6, 7, 8]"),
        "no token": {k: v for k, v in answer(token).items() if k != "token"},
    }
    for name, data in cases.items():
        r = client.post("/vote", data=data)
        assert r.status_code == 400, name
        assert "not recorded" in r.get_data(as_text=True), name
    twice = urlencode([*answer(token).items(), ("diversity", "right")])  # a field sent twice
    r = client.post("/vote", data=twice, content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400
    r = client.post("/vote", json=answer(token))  # not a form
    assert r.status_code == 400
    fresh = app.test_client()  # no participant cookie
    assert fresh.post("/vote", data=answer(token)).status_code == 400
    assert client.get("/vote").status_code == 405
    assert n_votes(path) == 1  # only the one valid vote; the tables are intact
    assert client.post("/vote", data=answer(token)).status_code == 303 and n_votes(path) == 2


def test_images_only_through_the_participants_own_pages(app):
    client, other = app.test_client(), app.test_client()
    _, token = open_page(client)
    assert client.get(f"/img/{token}/left/8").status_code == 200
    assert other.get(f"/img/{token}/left/0").status_code == 404  # someone else's page
    for url in (f"/img/{token}/middle/0", f"/img/{token}/left/9", f"/img/{token}/left/-1", "/img/nope/left/0",
                f"/img/{'A' * 32}/left/0", "/img/../../config.yaml", f"/img/{token}/left/..%2F..%2Fconfig.yaml"):
        assert client.get(url).status_code == 404, url


def test_health_reports_the_kind_of_votes(app, catalog, tmp_path):
    assert app.test_client().get("/healthz").get_json() == {"ok": True, "simulated": True, "configurations": 2}
    human = create_app(catalog, tmp_path / "human.sqlite", simulated=False)
    client = human.test_client()
    assert client.get("/healthz").get_json()["simulated"] is False
    assert "SIMULATED" not in open_page(client)[0]
    with pytest.raises(StudyError, match="holds human votes"):
        create_app(catalog, tmp_path / "human.sqlite", simulated=True)


def test_catalog_refuses_what_it_cannot_show(run, tmp_path):
    with pytest.raises(StudyError, match="not uint8 images.*2-D toy"):
        build_catalog([toy_points_run(tmp_path)], parse_pairs(["aig:power:2,draft"]))
    missing = r"no complete samples of aig power:3 .*available: aig power:2 \(aig__power-2\)"
    with pytest.raises(StudyError, match=missing):
        build_catalog([run], parse_pairs(["aig:power:3,draft"]))
    unpaired = image_run(tmp_path, "unpaired", methods=[Method("aig", "power:2")], seed_offset=5)
    image_run(tmp_path, "unpaired", methods=[Method("draft")])
    with pytest.raises(StudyError, match="different seeds"):
        build_catalog([unpaired], parse_pairs(["aig:power:2,draft"]))
    few = image_run(tmp_path, "few", per_prompt=8)
    with pytest.raises(StudyError, match="8 paired samples, a page shows 9"):
        build_catalog([few], parse_pairs(["aig:power:2,draft"]))
    with pytest.raises(StudyError, match="no samples/coverage"):
        build_catalog([tmp_path / "nothing"], parse_pairs(["aig:power:2,draft"]))
    with pytest.raises(StudyError, match="plain name"):
        build_catalog([run], parse_pairs(["aig:power:2,draft"]), prompt_set="../coverage")


def test_catalog_reuses_its_png_cache(run, catalog, monkeypatch):
    def fail(*_):
        raise AssertionError("the shards were read again")

    monkeypatch.setattr(catalog_module, "read_samples", fail)
    again = build_catalog([run], parse_pairs([PAIRS]))
    assert again.files == catalog.files and all(p.is_relative_to(run / "cache" / "study") for p in again.files.values())
    monkeypatch.undo()
    pool = build_catalog([image_run(run.parent, "pool")], parse_pairs(["aig:power:2,draft"]), pool=10)
    assert {i for (_, _, _, i) in pool.files} == set(range(10))  # the first `pool` samples of each prompt


def test_several_runs_are_several_configurations(tmp_path):
    """Each run folder is a model x reward configuration: pages come from both, images from the right one."""
    runs = [image_run(tmp_path, "sd14_pickscore"), image_run(tmp_path, "sdxl_hpsv2", seed_offset=500)]
    cat = build_catalog(runs, parse_pairs(["aig:power:2,draft"]))
    assert [c.name for c in cat.configurations] == ["sd14_pickscore: aig power:2 vs draft",
                                                    "sdxl_hpsv2: aig power:2 vs draft"]
    app = create_app(cat, tmp_path / "votes.sqlite", simulated=True, seed=5)
    client, seen = app.test_client(), set()
    for _ in range(12):
        _, token = open_page(client)
        page = page_of(tmp_path / "votes.sqlite", token)
        seen.add(page.run)
        assert tag(served(client, token, "right", 3))[1] == page.seeds[3] \
            == (500 if page.run == "sdxl_hpsv2" else 0) + page.prompt_idx * 12 + page.indices[3]
    assert seen == {"sd14_pickscore", "sdxl_hpsv2"}
    with pytest.raises(StudyError, match="--db"):
        default_db([str(r) for r in runs], simulated=False)
    assert default_db([str(runs[0])], simulated=True) == runs[0] / "study" / "votes_SIMULATED.sqlite"
