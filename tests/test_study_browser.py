"""The study app in a real browser: the app served by waitress on 127.0.0.1 (a free port, SIMULATED votes), Debian's
Chromium driven by Playwright (the recipe of tests/test_browser.py). The browser opens a page, sees 18 loaded
images, answers the three questions, submits and gets a new page. The screenshot of the answered page is written
to the test's tmp_path and to .pytest_output/study/user_study_page.png.

With STUDY_SD_RUN=<run folder> (e.g. a run of params/smoke_sd.yaml through notebook 02) the same test runs on that
run's stored tiny Stable Diffusion samples instead of the procedurally drawn ones.
"""
import os
import shutil
from pathlib import Path

import pytest

from lib.study import db
from lib.study.app import COOKIE, create_app, serve_in_thread
from lib.study.catalog import build_catalog, parse_pairs
from study_fixtures import image_run
from helpers import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / ".pytest_output" / "study"
ALL_LOADED = ("() => document.images.length === 18 && "
              "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


@pytest.mark.timeout(240)
def test_vote_in_a_real_browser(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: `make browser-deps` installs it "
                    "(apt-get update && apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    sd_run = os.environ.get("STUDY_SD_RUN")
    run = Path(sd_run) if sd_run else image_run(tmp_path, size=64)
    catalog = build_catalog([run], parse_pairs(["aig:power:2,draft"]))
    path = tmp_path / "votes_SIMULATED.sqlite"
    app = create_app(catalog, path, simulated=True, seed=2)
    with serve_in_thread(app, threads=4) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url + "/")
            page.wait_for_function(ALL_LOADED, timeout=30_000)
            assert page.locator(".side img").count() == 18
            first = page.locator("input[name=token]").input_value()
            prompt = page.locator("#prompt").inner_text()
            page.locator("#q-diversity label", has_text="Left").click()
            page.locator("#q-aesthetics label", has_text="Equally good").click()
            page.locator("#q-alignment label", has_text="Right").click()
            assert page.locator("input[type=radio]:checked").count() == 3
            shot = tmp_path / "user_study_page.png"
            page.screenshot(path=str(shot), full_page=True)
            uid = next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)
            with page.expect_navigation():
                page.locator("#submit").click()
            page.wait_for_function(ALL_LOADED, timeout=30_000)
            second = page.locator("input[name=token]").input_value()
            assert second != first and page.locator("input[type=radio]:checked").count() == 0
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, OUTPUT / "user_study_page.png")
    conn = db.connect(path)
    _, rows = db.vote_rows(conn, ["token", "user_id", "prompt", "diversity", "aesthetics", "alignment", "simulated"])
    conn.close()
    assert rows == [(first, uid, prompt, "left", "equal", "right", 1)]
