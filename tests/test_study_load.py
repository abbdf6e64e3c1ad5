"""The served study app under load (waitress on 127.0.0.1): concurrent SIMULATED voters for a bounded time, then
every acknowledged vote must be in the database, none twice; and the `serve` command line end to end.

The figures of the load test are printed and written to .pytest_output/study/load_test.json."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lib.study.__main__ import main
from lib.study.app import create_app, serve_in_thread
from lib.study.catalog import build_catalog, parse_pairs
from lib.study.db import StudyError
from lib.study.load import check_database, run_load
from study_fixtures import image_run

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / ".pytest_output" / "study"
VOTERS, SECONDS = 24, 3.0


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return build_catalog([image_run(tmp_path_factory.mktemp("load"))], parse_pairs(["aig:power:2,draft;base,draft"]))


@pytest.mark.timeout(120)
def test_concurrent_voters_lose_nothing_and_store_nothing_twice(catalog, tmp_path):
    path = tmp_path / "votes.sqlite"
    app = create_app(catalog, path, simulated=True)
    with serve_in_thread(app, threads=8) as url:
        report = run_load(url, voters=VOTERS, seconds=SECONDS, double=0.25, forged=0.1, seed=1)
    check = check_database(path, report)
    figures = {**check, "seconds": round(report.seconds, 2), "pages": report.pages, "images": report.images,
               "double_submits": report.double_submits, "forged_refused": report.forged_refused,
               "errors": report.errors[:5]}
    print(report.summary(), check)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "load_test.json").write_text(json.dumps(figures, indent=1))
    assert report.errors == []
    assert check["lost"] == check["duplicated"] == check["unacknowledged"] == check["mismatched"] == 0
    assert check["stored"] == check["acknowledged"] >= VOTERS  # every voter got at least one vote through
    assert report.double_submits > 0 and report.forged_refused > 0 and report.images == report.pages
    assert SECONDS <= report.seconds < SECONDS + 30


def test_load_test_refuses_a_human_study(catalog, tmp_path):
    app = create_app(catalog, tmp_path / "human.sqlite", simulated=False)
    with serve_in_thread(app) as url:
        with pytest.raises(StudyError, match="never votes into a human study"):
            run_load(url, voters=2, seconds=0.5)


@pytest.mark.timeout(180)
def test_serve_command_line(catalog, tmp_path, capsys):
    """`python -m lib.study serve <run> --pairs ... --port 0 --simulated` serves pages from waitress."""
    run = next(iter(catalog.files.values())).parents[5]  # <run>/cache/study/coverage/<key>/<stamp>/<png>
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lib.study", "serve", str(run), "--pairs", "aig:power:2,draft", "--port", "0",
           "--simulated", "--threads", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines, end = [], time.monotonic() + 150
        while time.monotonic() < end and not any("serving the user study on" in s for s in lines):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
        url = next((s.split(" on ")[1].split("/ ")[0] for s in lines if "serving the user study on" in s), None)
        assert url, "".join(lines)
        assert "votes: " + str(run / "study" / "votes_SIMULATED.sqlite") in "".join(lines)
        with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
            assert json.loads(r.read()) == {"ok": True, "simulated": True, "configurations": 1}
        with urllib.request.urlopen(url + "/", timeout=10) as r:
            assert r.status == 200 and r.read().count(b"<img ") == 18
            assert r.headers["Server"] == "waitress"
    finally:
        proc.terminate()  # our server, by its process id
        proc.wait(timeout=20)
    assert main(["serve", str(run), "--pairs", "aig:power:3,draft"]) == 2  # refused before serving
    err = capsys.readouterr().err
    assert err.startswith("error: run ") and "no complete samples of aig power:3" in err
    assert main(["serve", str(run), str(run), "--pairs", "aig:power:2,draft"]) == 2
    assert "distinct folder names" in capsys.readouterr().err
