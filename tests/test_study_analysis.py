"""The user-study analysis (lib.study.analysis, figures, simulate) against vote tables with known answers."""
import sqlite3

import pandas as pd
import pytest

from lib.study import db
from lib.study.__main__ import main
from lib.study.analysis import (HUMAN, SIMULATED, describe, load_votes, table, user_normalised, votes_per_user,
                                win_rates)
from lib.study.db import Page, StudyError
from lib.study.figures import FIG6, preference_figure, votes_per_user_figure, write_figures
from lib.study.simulate import Population, expected, simulate_study


def write_votes(path, votes, simulated=True):
    """Store votes given as (user, configuration, left side, {question: answer}) through the app's database code."""
    db.open_study(path, simulated)
    conn = db.connect(path)
    for n, (user, conf, left, answers) in enumerate(votes):
        page = Page(token=f"token-{n:04d}-{'x' * 20}", user_id=user, created="2025-01-01T00:00:00+00:00", run="r",
                    prompt_set="coverage", prompt_idx=0, prompt="p", configuration=conf, key_a="aig__power-2",
                    label_a="aig power:2", key_b="draft__-", label_b="draft", left_side=left,
                    indices=tuple(range(9)), seeds=tuple(range(9)))
        db.add_page(conn, page)
        db.record_vote(conn, page.token, user, answers, simulated)
    conn.close()
    return path


def same(answer):
    return {q: answer for q in db.QUESTIONS}


def rate(t, question, outcome, col="percent"):
    return t[(t.question == question) & (t.outcome == outcome)][col].item()


def test_deshuffled_winner_follows_the_side_mapping():
    assert db.winners("a", {"diversity": "left", "aesthetics": "right", "alignment": "equal"}) == \
        {"diversity": "a", "aesthetics": "b", "alignment": "equal"}
    assert db.winners("b", {"diversity": "left", "aesthetics": "right", "alignment": "equal"}) == \
        {"diversity": "b", "aesthetics": "a", "alignment": "equal"}


def test_weighting_example_of_a4(tmp_path):
    """A.4: one user votes 9 times for AIG, another once for DRaFT. Pooled, AIG wins 90 %; user-normalised, each
    user's votes sum to 100 and the two users are averaged: AIG 50, DRaFT 50."""
    votes = [("u1", "c", "a", same("left"))] * 5 + [("u1", "c", "b", same("right"))] * 4 \
        + [("u2", "c", "b", same("left"))]  # u2 saw DRaFT on the left and chose it
    v = load_votes(write_votes(tmp_path / "v.sqlite", votes))
    pooled, normed = win_rates(v, n_boot=200), user_normalised(v, n_boot=200)
    for q in db.QUESTIONS:
        assert rate(pooled, q, "a") == pytest.approx(90) and rate(pooled, q, "b") == pytest.approx(10)
        assert rate(pooled, q, "equal") == 0 and rate(pooled, q, "a", "votes") == 9
        assert rate(normed, q, "a") == pytest.approx(50) and rate(normed, q, "b") == pytest.approx(50)
        assert rate(normed, q, "a", "n_users") == 2 and rate(normed, q, "a", "n_votes") == 10
    counts = votes_per_user(v)
    assert list(counts.votes) == [9, 1] and list(counts.user) == ["P01", "P02"]


def test_win_rates_and_user_normalised_known_table(tmp_path):
    # u1: diversity a, a, equal, b; u2: diversity b, b. Other questions: all equal.
    eq = {"aesthetics": "equal", "alignment": "equal"}
    votes = [("u1", "c1", "a", {"diversity": "left", **eq}), ("u1", "c2", "b", {"diversity": "right", **eq}),
             ("u1", "c1", "a", {"diversity": "equal", **eq}), ("u1", "c2", "a", {"diversity": "right", **eq}),
             ("u2", "c1", "b", {"diversity": "left", **eq}), ("u2", "c2", "a", {"diversity": "right", **eq})]
    v = load_votes(write_votes(tmp_path / "v.sqlite", votes))
    t = win_rates(v, n_boot=500)
    assert [round(rate(t, "diversity", o), 6) for o in ("a", "equal", "b")] == \
        [round(100 * 2 / 6, 6), round(100 / 6, 6), 50.0]
    assert rate(t, "aesthetics", "equal") == 100 and rate(t, "alignment", "equal", "lo") == 100
    n = user_normalised(v, n_boot=500)  # u1: 50 / 25 / 25, u2: 0 / 0 / 100
    assert [rate(n, "diversity", o) for o in ("a", "equal", "b")] == pytest.approx([25, 12.5, 62.5])
    for frame in (t, n):  # intervals hold the point estimate and stay inside [0, 100]
        assert (frame.lo <= frame.percent + 1e-9).all() and (frame.percent <= frame.hi + 1e-9).all()
        assert (frame.lo >= 0).all() and (frame.hi <= 100).all()
    per = win_rates(v, ("configuration",), n_boot=100)
    c1 = per[per.configuration == "c1"]
    assert [rate(c1, "diversity", o) for o in ("a", "equal", "b")] == pytest.approx([100 / 3, 100 / 3, 100 / 3])
    assert rate(c1, "diversity", "a", "n_votes") == 3 and rate(c1, "diversity", "a", "n_users") == 2
    assert set(t.choice) == {"aig power:2", "equal", "draft"}


def test_bootstrap_is_seeded_and_degenerate_when_users_agree(tmp_path):
    votes = [(f"u{i}", "c", "a", same("left")) for i in range(5) for _ in range(i + 1)]
    v = load_votes(write_votes(tmp_path / "v.sqlite", votes))
    t = user_normalised(v, n_boot=300, seed=3)
    assert (t[t.outcome == "a"][["percent", "lo", "hi"]] == 100).all().all()
    mixed = load_votes(write_votes(tmp_path / "m.sqlite", [("u1", "c", "a", same("left")),
                                                            ("u2", "c", "a", same("right")),
                                                            ("u3", "c", "a", same("equal"))]))
    a, b = win_rates(mixed, n_boot=300, seed=1), win_rates(mixed, n_boot=300, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert (a.hi - a.lo > 0).all()


def test_simulated_population_is_recovered(tmp_path):
    """A large simulated study: pooled and user-normalised preferences land near the population's known ones, and
    everything drawn from it is labelled simulated."""
    pop = Population(users=160, mean_votes=10)
    v = load_votes(simulate_study(tmp_path / "sim.sqlite", pop, seed=4))
    truth = expected(pop).set_index(["question", "outcome"]).percent
    assert v.user_id.nunique() == 160 and set(v.source) == {SIMULATED} and v.attrs["simulated"]
    for t in (win_rates(v, n_boot=400), user_normalised(v, n_boot=400)):
        got = t.set_index(["question", "outcome"])
        err = (got.percent - truth.reindex(got.index)).abs()
        assert err.max() < 5, err
        inside = (got.lo <= truth.reindex(got.index)) & (truth.reindex(got.index) <= got.hi)
        assert inside.mean() >= 7 / 9, got
        assert set(t.source) == {SIMULATED}
    again = load_votes(simulate_study(tmp_path / "sim.sqlite", pop, seed=4))  # deterministic, replaced in place
    pd.testing.assert_frame_equal(v.drop(columns="id"), again.drop(columns="id"))


def test_empty_database_says_so(tmp_path, capsys):
    path = db.open_study(tmp_path / "empty.sqlite", simulated=False)
    v = load_votes(path)
    assert v.empty and describe(v).startswith("no votes in this database yet")
    assert win_rates(v).empty and user_normalised(v).empty and votes_per_user(v).empty and table(win_rates(v)).empty
    assert preference_figure(win_rates(v), FIG6).axes[0].texts[0].get_text().startswith("no votes yet")
    assert votes_per_user_figure(votes_per_user(v)).axes
    assert write_figures(v, tmp_path / "figs") == []
    assert main(["analyse", str(path), "--figures", str(tmp_path / "figs"), "--n-boot", "50"]) == 0
    assert "no votes in this database yet" in capsys.readouterr().out
    with pytest.raises(StudyError, match="no votes database"):
        load_votes(tmp_path / "missing.sqlite")


def test_simulated_and_human_votes_never_mix(tmp_path):
    human = write_votes(tmp_path / "h.sqlite", [("u1", "c", "a", same("left"))], simulated=False)
    v = load_votes(human)
    assert describe(v).startswith(f"1 {HUMAN}") and set(win_rates(v, n_boot=10).source) == {HUMAN}
    with pytest.raises(StudyError, match="holds human votes"):
        db.open_study(human, simulated=True)
    with pytest.raises(StudyError, match="not a database of simulated votes"):
        simulate_study(human)
    conn = db.connect(human)
    page = db.get_page(conn, "token-0000-" + "x" * 20)
    db.add_page(conn, Page(**{**page.__dict__, "token": "another-page-" + "y" * 20}))
    with pytest.raises(StudyError, match="holds human votes"):  # record_vote checks the database's flag too
        db.record_vote(conn, "another-page-" + "y" * 20, "u1", same("left"), simulated=True)
    assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 1
    conn.close()
    sqlite3.connect(human).execute("UPDATE meta SET value = '1' WHERE key = 'simulated'").connection.commit()
    with pytest.raises(StudyError, match="mixes human and simulated"):
        load_votes(human)


def test_command_line_simulate_and_analyse_label_everything(tmp_path, capsys):
    path = tmp_path / "sim.sqlite"
    assert main(["simulate", str(path), "--seed", "1"]) == 0
    assert main(["analyse", str(path), "--figures", str(tmp_path / "figs"), "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert out.count(SIMULATED) >= 4  # the summary line and each table's source
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["SIMULATED_user_study_fig6_win_rates.png", "SIMULATED_user_study_fig7_per_configuration.png",
                     "SIMULATED_user_study_fig8a_user_normalised.png", "SIMULATED_user_study_fig8b_votes_per_user.png"]
    v = load_votes(path)
    fig = preference_figure(win_rates(v, n_boot=50), FIG6)
    assert fig._suptitle.get_text().startswith(SIMULATED)
    assert all(any(t.get_text() == "SIMULATED" for t in ax.texts) for ax in fig.axes)
    human = write_votes(tmp_path / "h.sqlite", [("u1", "c", "a", same("left"))], simulated=False)
    fig = preference_figure(win_rates(load_votes(human), n_boot=50), FIG6)
    assert "SIMULATED" not in fig._suptitle.get_text()
    assert not any(t.get_text() == "SIMULATED" for ax in fig.axes for t in ax.texts)
