"""The study's index of a run's stored samples: which configurations (pairs of methods) can be compared, their
prompts and paired seeds, and the PNG file of every image a page may show.

Images come only from the run's sample store (`lib.store`, written by notebook 02); nothing is regenerated. Each
method's first `pool` samples per prompt (the paper: 50) are encoded once as PNG under
`<run>/cache/study/<prompt set>/<method key>/<stamp>/`, with an `index.json` that lets a restart skip the shards.
The app finds a file only through `Catalog.image(run, key, prompt, index)`: no path ever comes from a request.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from lib.files import atomic_path, write_text
from lib.methods import Method
from lib.store import read_meta, read_samples
from lib.study.db import StudyError

PLAIN = re.compile(r"[A-Za-z0-9_.-]+")
CACHE_LAYOUT = 1


def parse_method(spec: str) -> Method:
    """A method from 'family[:setting]': 'draft', 'aig:power:2', 'lora_scale:0.5', 'combined:0.4', 'kl:1'."""
    family, _, setting = spec.strip().partition(":")
    if family in ("base", "draft") and setting:
        raise StudyError(f"method {spec!r}: {family} takes no setting")
    if family not in ("base", "draft") and not setting:
        raise StudyError(f"method {spec!r}: {family} needs a setting, e.g. aig:power:2, lora_scale:0.5, kl:1")
    try:
        return Method.parse(family, setting)
    except (ValueError, TypeError) as e:
        raise StudyError(f"method {spec!r}: {e}") from None


def _try(spec: str) -> Method | None:
    try:
        return parse_method(spec)
    except StudyError:
        return None


def parse_pair(text: str) -> tuple[Method, Method]:
    """'aig:power:2,draft' (or 'aig:power:2 vs draft') -> (first, second); the first is 'a' in the analysis."""
    if " vs " in text:
        parts = [text.split(" vs ")]
    else:
        bits = text.split(",")  # settings may hold commas (sigmoid:k,c): keep the splits where both halves parse
        parts = [[",".join(bits[:i]), ",".join(bits[i:])] for i in range(1, len(bits))]
    found = [(a, b) for a, b in ((_try(p[0]), _try(p[1])) for p in parts if len(p) == 2) if a and b]
    if len(found) != 1:
        why = "it is ambiguous; write 'A vs B'" if found else "expected two methods such as aig:power:2,draft"
        raise StudyError(f"--pairs {text!r}: {why}")
    a, b = found[0]
    if a.key == b.key:
        raise StudyError(f"--pairs {text!r}: a method cannot be compared with itself")
    return a, b


def parse_pairs(texts: Sequence[str]) -> list[tuple[Method, Method]]:
    """Every pair of the --pairs options (each may hold several pairs separated by ';')."""
    pairs = [parse_pair(t.strip()) for text in texts for t in text.split(";") if t.strip()]
    if not pairs:
        raise StudyError("no --pairs given: name at least one pair, e.g. --pairs aig:power:2,draft")
    return pairs


@dataclass(frozen=True)
class Configuration:
    """One comparison shown by the app: two methods of one run on one prompt set, with paired seeds."""

    run: str
    a: Method
    b: Method
    prompt_set: str
    prompts: tuple[str, ...]
    seeds: tuple[tuple[int, ...], ...]  # per prompt: the seed of sample index 0, 1, ... (the same in a and b)

    @property
    def name(self) -> str:
        """'<run>: <label a> vs <label b>'."""
        return f"{self.run}: {self.a.label} vs {self.b.label}"


@dataclass
class Catalog:
    """The configurations of a study and the PNG of every image they may show."""

    configurations: list[Configuration]
    files: dict[tuple[str, str, int, int], Path] = field(repr=False)
    image_size: tuple[int, int]

    def image(self, run: str, key: str, prompt: int, index: int) -> Path | None:
        """The PNG of sample `index` of prompt `prompt` of method `key` in `run`, or None if it is not in the study."""
        return self.files.get((run, key, prompt, index))


def to_png(x: np.ndarray, path: Path) -> None:
    """Write one stored image (uint8 (C, H, W), C = 1 or 3) as PNG, atomically."""
    img = Image.fromarray(x[0] if x.shape[0] == 1 else np.ascontiguousarray(np.transpose(x, (1, 2, 0))))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _available(folder: Path) -> str:
    labels = []
    for done in sorted(folder.glob("*/done.json")):
        meta = json.loads(done.read_text())
        try:
            labels.append(f"{Method.parse(meta['method'], meta['setting']).label} ({done.parent.name})")
        except (KeyError, ValueError):
            labels.append(done.parent.name)
    return ", ".join(labels) or "none"


def method_images(run_dir: Path, prompt_set: str, m: Method, pool: int) -> dict:
    """PNGs of m's first `pool` samples per prompt (written once per stamp) and their index: prompts, seeds, files."""
    samples = run_dir / "samples"
    key = f"{prompt_set}/{m.key}"
    try:
        meta = read_meta(samples, key)
    except FileNotFoundError:
        raise StudyError(f"run {run_dir.name} has no complete samples of {m.label} on {prompt_set} "
                         f"({samples / key}); available: {_available(samples / prompt_set)}") from None
    folder = run_dir / "cache" / "study" / prompt_set / m.key / str(meta["stamp"])
    index_file = folder / "index.json"
    if index_file.exists():
        index = json.loads(index_file.read_text())
        if (index.get("layout"), index.get("pool")) == (CACHE_LAYOUT, pool) and all(
                (folder / f).exists() for fs in index["files"] for f in fs):
            return {**index, "folder": folder}
    x, prompt_idx, seeds = read_samples(samples, key)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise StudyError(f"run {run_dir.name}: the samples of {m.label} are {x.dtype} arrays of shape {x.shape[1:]}, "
                         f"not uint8 images (N, 3, H, W); the user study shows images, so it needs a run of an image "
                         f"domain (diffusers), not the 2-D toy")
    prompts = list(meta.get("prompts") or [])
    index = {"layout": CACHE_LAYOUT, "stamp": meta["stamp"], "pool": pool, "prompts": prompts, "seeds": [],
             "files": [], "shape": list(x.shape[2:])}
    for j in range(len(prompts)):
        rows = np.flatnonzero(prompt_idx == j)[:pool]
        index["seeds"].append([int(s) for s in seeds[rows]])
        index["files"].append([f"p{j:04d}_{i:04d}.png" for i in range(len(rows))])
        for i, r in enumerate(rows):
            to_png(x[r], folder / index["files"][j][i])
    write_text(index_file, json.dumps(index))
    return {**index, "folder": folder}


def configuration(run_dir: Path, prompt_set: str, a: Method, b: Method, ia: dict, ib: dict,
                  per_page: int) -> Configuration:
    """The configuration of a pair after checking that its samples are paired (same prompts, same seeds)."""
    name = f"run {run_dir.name}: {a.label} vs {b.label}"
    if ia["prompts"] != ib["prompts"] or not ia["prompts"]:
        raise StudyError(f"{name}: the two methods were sampled on different prompts; re-run notebook 02")
    if ia["shape"] != ib["shape"]:
        raise StudyError(f"{name}: image sizes differ ({ia['shape']} and {ib['shape']})")
    seeds = []
    for j, (sa, sb) in enumerate(zip(ia["seeds"], ib["seeds"])):
        n = min(len(sa), len(sb))
        if sa[:n] != sb[:n]:
            raise StudyError(f"{name}: prompt {j} has different seeds in the two methods (not paired samples)")
        if n < per_page:
            raise StudyError(f"{name}: prompt {j} has {n} paired samples, a page shows {per_page} per side")
        seeds.append(tuple(sa[:n]))
    return Configuration(run_dir.name, a, b, prompt_set, tuple(ia["prompts"]), tuple(seeds))


def build_catalog(runs: Sequence[Path | str], pairs: Sequence[tuple[Method, Method]], prompt_set: str = "coverage",
                  pool: int = 50, per_page: int = 9) -> Catalog:
    """Index every pair of methods in every run (each run a model x reward configuration of the paper)."""
    if not PLAIN.fullmatch(prompt_set):
        raise StudyError(f"--prompt-set {prompt_set!r}: expected a plain name such as coverage")
    if pool < per_page:
        raise StudyError(f"--pool {pool}: must be at least the {per_page} images a page shows per side")
    dirs = [Path(r).resolve() for r in runs]
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        raise StudyError(f"runs must have distinct folder names: {', '.join(names)}")
    for d in dirs:
        if not (d / "samples" / prompt_set).is_dir():
            raise StudyError(f"{d}: no samples/{prompt_set}/ folder (is it a run folder? run notebook 02 first)")
    confs, files, shapes = [], {}, set()
    for d in dirs:
        index = {}
        for m in dict.fromkeys(m for pair in pairs for m in pair):
            index[m] = method_images(d, prompt_set, m, pool)
            shapes.add(tuple(index[m]["shape"]))
            for j, fs in enumerate(index[m]["files"]):
                files.update({(d.name, m.key, j, i): index[m]["folder"] / f for i, f in enumerate(fs)})
        confs += [configuration(d, prompt_set, a, b, index[a], index[b], per_page) for a, b in pairs]
    h, w = max(shapes)
    return Catalog(confs, files, (h, w))
