"""The one registry of domains: a domain name -> its params section, config class and domain class."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lib.domains.base import Domain
from lib.domains.sd.config import SDConfig
from lib.domains.sd.domain import SDDomain
from lib.domains.toy import ToyConfig, ToyDomain
from lib.errors import ConfigError


@dataclass(frozen=True)
class DomainEntry:
    """A domain: `section` is its params key (e.g. `toy:`), `config` its frozen dataclass, `domain` its class."""

    section: str
    config: type
    domain: type


DOMAINS: dict[str, DomainEntry] = {
    "toy": DomainEntry("toy", ToyConfig, ToyDomain),
    "diffusers": DomainEntry("sd", SDConfig, SDDomain),
}


def entry(name: str) -> DomainEntry:
    """The registry entry of a domain name, or a ConfigError listing the names."""
    if name not in DOMAINS:
        raise ConfigError(f"domain = {name!r} is not allowed: expected one of {', '.join(map(repr, DOMAINS))}")
    return DOMAINS[name]


def make_domain(name: str, config: Any, root: Optional[Path] = None, device: str = "auto") -> Domain:
    """The domain `name` built from its config section, wired to the run folder `root`."""
    return entry(name).domain(config, root=root, device=device)
