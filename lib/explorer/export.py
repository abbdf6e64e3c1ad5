"""Export of a gamma spec into a params file: `append_to_params(path, spec)` appends it to the file's `sweep: aig:`
list (only if absent), keeping every other key and, where the list is a one-line or block YAML list, every comment;
the result is validated as the runner will load it and written atomically.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Optional, Sequence

import yaml

from lib.config import from_dict, read_params
from lib.errors import ConfigError
from lib.files import write_text
from lib.methods import SweepConfig
from lib.schedules import parse


def _flow(specs: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in specs) + "]"


def _edit_text(text: str, specs: list[str], spec: str) -> Optional[str]:
    """Append `spec` to the sweep.aig list by editing lines (keeps comments and layout); None if no simple edit."""
    lines = text.splitlines(keepends=True)
    top = [i for i, ln in enumerate(lines) if re.match(r"sweep:\s*(#.*)?$", ln.rstrip("\n"))]
    if not top:
        nl = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{nl}sweep:\n  aig: {_flow(specs + [spec])}\n"
    start = top[0] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].strip() and not lines[i][0].isspace()
                and not lines[i].lstrip().startswith("#")), len(lines))
    keys = [i for i in range(start, end) if re.match(r"\s+[A-Za-z_]\w*:", lines[i])]
    if not keys:
        return None
    indent = re.match(r"\s+", lines[keys[0]]).group(0)
    aig = [i for i in keys if re.match(rf"{indent}aig:", lines[i])]
    if not aig:
        lines.insert(start, f"{indent}aig: {_flow(specs + [spec])}\n")
        return "".join(lines)
    i = aig[0]
    m = re.match(rf"({indent}aig:)\s*(\[.*\])?\s*(#.*)?$", lines[i].rstrip("\n"))
    if not m:
        return None
    if m.group(2) is not None:  # a one-line flow list
        comment = f"  {m.group(3)}" if m.group(3) else ""
        lines[i] = f"{m.group(1)} {_flow(specs + [spec])}{comment}\n"
        return "".join(lines)
    items = [k for k in range(i + 1, end) if re.match(r"\s+-\s", lines[k])]  # a block list
    if not items:
        return None
    last = items[-1]
    dash = re.match(r"(\s+-\s+)", lines[last]).group(1)
    if not lines[last].endswith("\n"):
        lines[last] += "\n"
    lines.insert(last + 1, f"{dash}{json.dumps(spec)}\n")
    return "".join(lines)


def append_to_params(path: str | Path, spec: str) -> tuple[bool, str]:
    """Append a gamma spec to the params file's `sweep: aig:` list if it is not there yet; returns (appended, message).

    The result is validated as the runner will load it (lib.config, `extends` included); other keys are kept. Where
    the list is a one-line `[...]` or a block `- ...` list, only that list changes (comments stay); otherwise the
    file is rewritten from the loaded mapping (comments are lost, the message says so). When the file has no
    `sweep.aig`, the new list is the inherited one (its `extends` chain, else the default sweep) plus the spec, so
    nothing the runner sampled before is dropped. Written atomically (lib.files).
    """
    path = Path(path)
    spec = parse(spec).spec
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("sweep") or {}, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'sweep' mapping")
    resolved = read_params(path)  # with the `extends` chain
    sweep = data.get("sweep") or {}
    specs = [str(s) for s in (resolved.get("sweep") or {}).get("aig", SweepConfig().aig)]
    if spec in {parse(s).spec for s in specs}:
        return False, f"{spec} is already in {path.name}: sweep.aig"
    new = copy.deepcopy(data)
    new["sweep"] = {**sweep, "aig": specs + [spec]}
    check = copy.deepcopy(resolved)
    check["sweep"] = {**(resolved.get("sweep") or {}), "aig": specs + [spec]}
    from_dict(check)  # the result must load as a run config
    edited = _edit_text(text, specs, spec)
    note = ""
    if edited is None or yaml.safe_load(edited) != new:
        edited = yaml.safe_dump(new, sort_keys=False, default_flow_style=None)
        note = " (rewritten from the loaded YAML: comments were dropped)"
    write_text(path, edited)
    return True, f"appended {spec} to {path.name}: sweep.aig{note}"
