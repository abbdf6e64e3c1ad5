"""Notebook 05 end to end in a real browser: JupyterLab on 127.0.0.1 (empty token, a free port), headless Chromium
from Debian's `chromium` package, driven by Playwright's Python API (its own browser download is not used).

The test opens a copy of notebooks/05_gamma_explorer.ipynb whose parameters point at a tiny toy run built in the
session's temp folder, runs all cells, moves the power slider from 2 to 3 (the spec box and the preview canvas
change), switches to the spline family, adds a control point by clicking on the curve and removes it with a
shift-click. The screenshot is written to the test's tmp_path. With EXPLORER_SCREENSHOT=1 the notebook keeps its
own parameters (a run made by notebooks 00-04) and the screenshot is also copied to
<run_dir>/figures/explorer_screenshot.png.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from explorer_run import toy_run
from lib.schedules import parse
from lib.explorer import ExplorerState, GammaExplorer, torch_threads
from helpers import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_gamma_explorer.ipynb"
INSTALL_HINT = ("`make browser-deps` installs it (`make test` runs that target first): "
                "apt-get update && apt-get install -y chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(fn, timeout: float, what: str, every: float = 0.25):
    """Call fn until it returns a truthy value; fail with `what` after timeout seconds."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
        except Exception as e:  # the page may be mid-update
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def notebook_copy(folder: Path, params: dict | None) -> Path:
    """notebooks/05 in folder, its parameters cell replaced by `params` (None: keep the committed parameters)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "notebook 05 must have exactly one cell tagged 'parameters'"
    if params is not None:
        cells[0].source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / NOTEBOOK.name
    nbformat.write(nb, out)
    return out


def curve_fraction(s: float, g: float) -> tuple[float, float]:
    """Where data point (s, g) of the explorer's curve plot lies in its figure, as fractions from the bottom left."""
    view = GammaExplorer(ExplorerState(), None)  # the same figure layout, on an Agg canvas
    x, y = view.ax_curve.transData.transform((s, g))
    return x / view.curve_fig.bbox.width, y / view.curve_fig.bbox.height


def start_lab(root: Path, work: Path, port: int) -> subprocess.Popen:
    settings = work / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
           "OMP_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
           "--ServerApp.password=", f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={work / 'settings'}",
           f"--LabApp.workspaces_dir={work / 'workspaces'}", "--LabApp.news_url=None",
           "--LabApp.extension_manager=readonly"]
    log = open(work / "jupyterlab.log", "wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.timeout(300)
def test_explorer_in_a_real_browser(tmp_path, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: {INSTALL_HINT}")
    from playwright.sync_api import sync_playwright

    screenshot_run = os.environ.get("EXPLORER_SCREENSHOT") == "1"
    lab_root = tmp_path / "lab"
    if screenshot_run:
        defaults = {}
        exec(next(c.source for c in nbformat.read(NOTEBOOK, 4).cells if "parameters" in c.metadata.get("tags", [])), defaults)
        copy_to = Path(defaults["run_dir"])
        copy_to = (copy_to if copy_to.is_absolute() else ROOT / copy_to) / "figures" / "explorer_screenshot.png"
        notebook_copy(lab_root, None)
    else:
        with torch_threads(1):
            run = toy_run(tmp_path_factory.getbasetemp() / "explorer_run")
        export = tmp_path / "export.yaml"
        shutil.copy(run.params, export)
        notebook_copy(lab_root, dict(params_file=str(run.params), run_dir=str(run.run_dir), preview_samples=16,
                                     initial_spec="power:2", diversity="fid", prompt="", seeds=[0],
                                     export_to=str(export)))
    fx, fy = curve_fraction(0.62, 0.3)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_lab(lab_root, tmp_path, port)
    try:
        poll(lambda: server.poll() is not None and pytest.fail(
            f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-3000:]}") or get_json(url + "/api/status"),
            60, "JupyterLab to answer")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 2000})  # the whole explorer in view
                page.goto(f"{url}/lab/tree/{NOTEBOOK.name}")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
                poll(lambda: any(s["kernel"]["execution_state"] == "idle" for s in get_json(url + "/api/sessions")),
                     60, "the notebook's kernel to start")
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_text("Run All Cells", exact=True).click()
                page.wait_for_selector(".gamma-explorer .widget-slider", timeout=90_000)

                spec = page.locator(".gamma-spec input")
                assert poll(lambda: spec.input_value() == "power:2", 30, "the spec box to show power:2")
                preview = page.locator(".gamma-preview canvas").first
                preview.scroll_into_view_if_needed()
                before = poll(lambda: preview.screenshot(), 10, "a preview canvas")

                # the power slider: type 3 into its readout
                readout = page.locator(".gamma-param-power-p .widget-readout")
                readout.scroll_into_view_if_needed()
                readout.click()
                page.keyboard.press("Control+A")
                page.keyboard.type("3")
                page.keyboard.press("Enter")
                poll(lambda: spec.input_value() == "power:3", 30, "the spec box to show power:3")
                preview.scroll_into_view_if_needed()
                poll(lambda: preview.screenshot() != before, 30, "the preview canvas to change")
                page.locator(".gamma-explorer").screenshot(path=str(tmp_path / "explorer_power3.png"))

                # the spline editor: choose spline, click to add a point, shift-click to remove it
                page.locator(".gamma-explorer .widget-toggle-button", has_text="spline").click()
                poll(lambda: spec.input_value().startswith("spline:"), 30, "the spline family")
                n0 = len(parse(spec.input_value()).points)
                canvas = page.locator(".gamma-curve canvas").last

                def click(shift=False):  # at data point (0.62, 0.3) of the curve plot
                    canvas.scroll_into_view_if_needed()
                    box = canvas.bounding_box()
                    if shift:
                        page.keyboard.down("Shift")
                    page.mouse.click(box["x"] + fx * box["width"], box["y"] + (1 - fy) * box["height"])
                    if shift:
                        page.keyboard.up("Shift")

                click()

                def added():
                    pts = parse(spec.input_value()).points
                    return len(pts) == n0 + 1 and any(abs(s - 0.62) <= 0.02 and abs(g - 0.3) <= 0.02 for s, g in pts)

                poll(added, 30, f"a control point near (0.62, 0.3) in {spec.input_value()}")
                click(shift=True)
                poll(lambda: len(parse(spec.input_value()).points) == n0, 30, "the shift-click to remove the point")
                click()  # add it again for the picture
                poll(added, 30, "the point again")
                time.sleep(1.0)  # let the preview canvas repaint
                shot = tmp_path / "explorer_screenshot.png"
                page.locator(".gamma-explorer").screenshot(path=str(shot))
                assert shot.stat().st_size > 10_000
                if screenshot_run:
                    copy_to.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(shot, copy_to)
            finally:
                browser.close()
    finally:
        server.terminate()  # our server, by its process id; it shuts its kernels down
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
