"""Notebook 06 runs headlessly on any votes database: here an empty one, through papermill (it says so)."""
import os
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from lib.study import db

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "06_user_study.ipynb"


def outputs(nb) -> str:
    text = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            text.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(text)


@pytest.mark.timeout(300)
def test_notebook_06_on_an_empty_database(tmp_path):
    empty = db.open_study(tmp_path / "votes.sqlite", simulated=False)
    out = tmp_path / "06.ipynb"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pm.execute_notebook(str(NOTEBOOK), str(out), cwd=str(ROOT), kernel_name="python3", progress_bar=False,
                        parameters=dict(votes_db=str(empty), study_figures_dir=str(tmp_path / "figures"), n_boot=50))
    text = outputs(nbformat.read(out, 4))
    assert "no votes in this database yet (human votes): nothing to analyse" in text
    assert "not generated here: no known truth to compare with" in text
    assert "SIMULATED" not in text  # an empty human study is not dressed up with simulated numbers
