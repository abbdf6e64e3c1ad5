"""Validation errors shared by every layer: one line that names the key, the value and what is allowed."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A parameter is unknown or out of range; the message names the key, the value and what is allowed."""


def check(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ConfigError unless ok: `key = value is not allowed: expected <allowed>`."""
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")
