"""Where a run keeps its gamma search, and the exported front as presets: light enough for the explorer to import
(no optuna, no models).

results/<run>/gamma_search/
  study.db         optuna's SQLite storage of the study (lib.search.study)
  measured.csv     every (seed range, method) measurement of the held-out comparison (lib.search.heldout)
  front.json       the chosen searched schedules: {"specs": ["spline:0=0,...,1=1", ...], ...}
  hypervolume.csv  the held-out hypervolume table of notebook 07
"""
from __future__ import annotations

import json
from pathlib import Path

from lib.schedules import parse

SEARCH_DIR = "gamma_search"
FRONT_FILE = "front.json"


def search_dir(root: Path | str) -> Path:
    """results/<run>/gamma_search: the study, the measurements and the exported front."""
    return Path(root) / SEARCH_DIR


def searched_presets(root: Path | str) -> tuple[str, ...]:
    """The exported spline specs of a run folder (gamma_search/front.json), best first; () when none was exported.
    Each is checked with `lib.schedules.parse` (a ValueError names the file and the spec)."""
    path = search_dir(root) / FRONT_FILE
    if not path.exists():
        return ()
    specs = tuple(json.loads(path.read_text())["specs"])
    for spec in specs:
        try:
            parse(spec)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return specs
