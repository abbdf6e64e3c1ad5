"""Prompt sets: PartiPrompts, the HPDv2 benchmark styles, Pick-a-Pic training captions, the coverage set.

Every loader takes a local-path override (`path=`) and a cache directory; downloads go to the cache through a
temporary file and `os.replace`, are verified by sha256 where the hash is known, and fail offline with an error
that names the file, the URL and the override. The hub's data files are read at the revision `sd.revisions.hpdv2` /
`sd.revisions.pickapic` (default: the branch `main`), and the sha256 of every file used is recorded in the run's
manifest (`lib.domains.sd.hub`). Nothing here reads the repository's sibling folders at run time.

Prompt-set names become folder names (samples/<prompt set>/): `check_name` allows plain names only; a set of
one's own is `file:<name>` with its path in `sd.prompt_paths` (`{"file:mine": /data/prompts.txt}`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from lib.domains.sd.hub import _verify, fetch, revision
from lib.errors import check, plain_name

__all__ = ["fetch", "_verify"]  # re-exported: the download helper lives in lib.domains.sd.hub

PARTI_URL = "https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv"
PARTI_SHA256 = "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb"
PARTI_COUNT = 1632

HPD_STYLES = ("anime", "concept-art", "paintings", "photo")
HPD_URL = "https://huggingface.co/datasets/zhwang/HPDv2/resolve/{revision}/benchmark/{style}.json"
HPD_COUNT = 800  # prompts per style

PICKAPIC_URL = (
    "https://huggingface.co/datasets/yuvalkirstain/pickapic_v1_no_images/resolve/{revision}/"
    "data/train-00000-of-00001-b138676ed2d1f52a.parquet"
)
PICKAPIC_N = 50_000  # AIG paper Sec. 4.1: a subset of 50k Pick-a-Pic prompts for fine-tuning

# A handful of captions for smoke runs of the tiny pipelines (no download).
TINY_PROMPTS = (
    "a red circle on a white background",
    "a blue square in the sky",
    "an astronaut riding a horse",
    "a bowl of fruit on a wooden table",
    "a watercolor painting of a lighthouse",
    "a cat wearing a wizard hat",
    "a city street at night in the rain",
    "a green tree on a hill",
)


def parti_records(path: Optional[str | os.PathLike] = None, cache_dir=None) -> list[dict[str, str]]:
    """PartiPrompts rows {Prompt, Category, Challenge, Note}: tab separated, no quoting (QUOTE_NONE)."""
    p = fetch(PARTI_URL, "PartiPrompts.tsv", sha256=PARTI_SHA256, path=path, cache_dir=cache_dir,
              record_as="data PartiPrompts.tsv")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if len(rows) != PARTI_COUNT:
        raise ValueError(f"{p}: expected {PARTI_COUNT} PartiPrompts, read {len(rows)}")
    return rows


def partiprompts(path: Optional[str | os.PathLike] = None, cache_dir=None) -> list[str]:
    """The 1632 PartiPrompts in file order."""
    return [r["Prompt"] for r in parti_records(path, cache_dir)]


def _stable_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def coverage_prompts(n: int = 40, path: Optional[str | os.PathLike] = None, cache_dir=None) -> list[str]:
    """n PartiPrompts with Challenge == "Complex", ordered by the sha256 of their UTF-8 text, first n taken.

    The AIG paper (Sec. 4.1) picked 40 complex PartiPrompts by hand without listing them; this rule is
    deterministic, independent of file order, and the list for n is a prefix of the list for any larger n.
    """
    complex_ = sorted({r["Prompt"] for r in parti_records(path, cache_dir) if r["Challenge"] == "Complex"},
                      key=_stable_key)
    if not 1 <= n <= len(complex_):
        raise ValueError(f"coverage_prompts: n = {n} must lie in [1, {len(complex_)}] (complex PartiPrompts)")
    return complex_[:n]


def hpdv2_prompts(style: str, path: Optional[str | os.PathLike] = None, cache_dir=None) -> list[str]:
    """The 800 HPDv2 benchmark prompts of one style (anime, concept-art, paintings, photo)."""
    if style not in HPD_STYLES:
        raise ValueError(f"HPDv2 style {style!r} is not one of {HPD_STYLES}")
    rev = revision("hpdv2")
    url = HPD_URL.format(style=style, revision=rev)
    p = fetch(url, f"hpdv2/{_safe(rev)}/{style}.json", path=path, cache_dir=cache_dir,
              record_as=f"data hpdv2/{style}.json")
    prompts = json.loads(Path(p).read_text(encoding="utf-8"))
    if not isinstance(prompts, list) or len(prompts) != HPD_COUNT or not all(isinstance(s, str) for s in prompts):
        raise ValueError(f"{p}: expected a JSON list of {HPD_COUNT} strings (HPDv2 benchmark, {url})")
    return prompts


def _safe(rev: str) -> str:
    """A revision as one folder name of the cache."""
    return rev.replace("/", "--")


def _read_captions(p: Path) -> list[str]:
    if p.suffix == ".parquet":
        import pandas as pd

        return [str(c) for c in pd.read_parquet(p, columns=["caption"])["caption"].tolist()]
    if p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            return [r["caption"] for r in csv.DictReader(f)]
    return [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()]


def pickapic_prompts(n: int = PICKAPIC_N, path: Optional[str | os.PathLike] = None, cache_dir=None) -> list[str]:
    """n distinct non-empty Pick-a-Pic v1 training captions, ordered by the sha256 of their text (deterministic).

    `path` may be the parquet file, a csv with a `caption` column, or a text file with one caption per line.
    """
    rev = revision("pickapic")
    p = fetch(PICKAPIC_URL.format(revision=rev), f"pickapic/{_safe(rev)}/pickapic_v1_train.parquet", path=path,
              cache_dir=cache_dir, record_as="data pickapic_v1_train.parquet")
    caps = sorted({c.strip() for c in _read_captions(Path(p)) if c and c.strip()}, key=_stable_key)
    if n > len(caps):
        raise ValueError(f"{p}: asked for {n} Pick-a-Pic captions, only {len(caps)} distinct ones")
    return caps[:n]


def prompt_set(name: str, path: Optional[str | os.PathLike] = None, cache_dir=None) -> list[str]:
    """A prompt set by name: partiprompts, hpdv2:<style>, pickapic[:n], coverage[:n], tiny, file:<path>."""
    family, _, arg = name.partition(":")
    if family == "partiprompts":
        return partiprompts(path, cache_dir)
    if family == "hpdv2":
        return hpdv2_prompts(arg, path, cache_dir)
    if family == "pickapic":
        return pickapic_prompts(int(arg) if arg else PICKAPIC_N, path, cache_dir)
    if family == "coverage":
        return coverage_prompts(int(arg) if arg else 40, path, cache_dir)
    if family == "tiny":
        return list(TINY_PROMPTS)
    if family == "file":
        return _read_captions(Path(path) if path is not None else Path(arg))
    raise ValueError(
        f"unknown prompt set {name!r}; allowed: partiprompts, hpdv2:<{'|'.join(HPD_STYLES)}>, pickapic[:n], "
        "coverage[:n], tiny, file:<path>"
    )


PROMPT_SETS: Sequence[str] = ("partiprompts", *(f"hpdv2:{s}" for s in HPD_STYLES), "pickapic", "coverage", "tiny")


COUNTS = {"partiprompts": PARTI_COUNT, "hpdv2": HPD_COUNT, "pickapic": PICKAPIC_N, "coverage": 40,
          "tiny": len(TINY_PROMPTS)}


def prompt_count(name: str) -> Optional[int]:
    """The number of prompts of a set, known from its name alone (None for file: sets)."""
    family, _, arg = name.partition(":")
    if family in ("pickapic", "coverage") and arg.isdigit():
        return int(arg)
    return COUNTS.get(family)


def check_name(key: str, name: str) -> None:
    """Refuse a prompt-set name that is not a plain folder name or names no known family (ConfigError)."""
    plain_name(key, name, extra=":=+")
    family, _, arg = name.partition(":")
    rules = {"partiprompts": (not arg, "no argument"), "tiny": (not arg, "no argument"),
             "hpdv2": (arg in HPD_STYLES, f"hpdv2:<{'|'.join(HPD_STYLES)}>"),
             "pickapic": (not arg or arg.isdigit() and int(arg) >= 1, "pickapic or pickapic:<n >= 1>"),
             "coverage": (not arg or arg.isdigit() and int(arg) >= 1, "coverage or coverage:<n >= 1>"),
             "file": (bool(arg), "file:<name> with its path in sd.prompt_paths")}
    if family in rules:  # other families (a domain's own sets) are checked where they load
        check(key, name, rules[family][0], rules[family][1])
