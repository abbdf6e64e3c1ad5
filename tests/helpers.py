"""Small helpers shared by several test modules: a two-cell parameterised notebook, the headless Chromium recipe."""
from __future__ import annotations

from pathlib import Path

import nbformat

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (`make browser-deps`); Playwright's own browsers are not used
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def write_notebook(path: Path, code: str) -> None:
    """A notebook with a `parameters` cell (params_file, run_dir) and one code cell, as the runner executes them."""
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('params_file = ""\nrun_dir = ""')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
