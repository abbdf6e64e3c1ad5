"""Errors shared by every layer, each one line that names what is wrong: the key, the value and what is allowed for
parameters; the file for stored artefacts; the run, step and quantity for a diverging training."""
from __future__ import annotations

import re
from typing import Any


class ConfigError(ValueError):
    """A parameter is unknown or out of range; the message names the key, the value and what is allowed."""


class ArtefactError(RuntimeError):
    """A stored file is missing, unreadable, truncated or not the one that was recorded; the message names the file
    and what to run to make it again."""


class TrainingDiverged(RuntimeError):
    """Training met a non-finite loss or gradient norm; the message names the run, the step and the quantity."""


class RunLocked(RuntimeError):
    """Another process is writing to the run folder; the message names that process."""


def check(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ConfigError unless ok: `key = value is not allowed: expected <allowed>`."""
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")


PLAIN = r"[A-Za-z0-9][A-Za-z0-9._{extra}-]{{0,99}}"
PLAIN_RULE = "a plain folder name: letters, digits, '.', '_', '-', starting with a letter or digit, at most 100 characters"


def plain_name(key: str, value: Any, extra: str = "") -> str:
    """`value` itself if it is a plain name that can be a folder name (no '/', no '..', no NUL byte); `extra` adds
    allowed characters after the first (prompt sets also use ':', '=' and '+': 'hpdv2:anime', 'coverage:40')."""
    pattern = PLAIN.format(extra=re.escape(extra))
    ok = isinstance(value, str) and re.fullmatch(pattern, value) is not None and ".." not in value
    rule = PLAIN_RULE if not extra else PLAIN_RULE.replace("'-',", f"'-', {', '.join(map(repr, extra))},")
    check(key, value, ok, rule)
    return value
