"""Tests of lib.domains.sd.prompts: PartiPrompts parsing and hash check, the coverage rule, local overrides, offline errors."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from lib.domains.sd import prompts as P

PARTI = Path(os.environ.get("AIG_PARTI_TSV") or
             Path(__file__).resolve().parents[2] / "shared" / "data" / "PartiPrompts.tsv")
needs_parti = pytest.mark.skipif(not PARTI.is_file(), reason=f"{PARTI} (the shared PartiPrompts copy) is absent")


def test_parti_hash_constant_matches_the_published_prefix_and_suffix():
    assert P.PARTI_SHA256.startswith("fab29e41") and P.PARTI_SHA256.endswith("c440eb") and len(P.PARTI_SHA256) == 64


@needs_parti
def test_partiprompts_parse_with_quote_none():
    rows = P.parti_records(path=PARTI)
    assert len(rows) == 1632 == len(P.partiprompts(path=PARTI))
    assert set(rows[0]) == {"Prompt", "Category", "Challenge", "Note"}
    quoted = [r["Prompt"] for r in rows if '"' in r["Prompt"]]
    assert quoted and any(p.count('"') >= 2 for p in quoted)  # literal quotes survive (QUOTE_NONE)
    assert sum(r["Challenge"] == "Complex" for r in rows) == 113


@needs_parti
def test_parti_hash_is_verified(tmp_path):
    bad = tmp_path / "PartiPrompts.tsv"
    bad.write_bytes(PARTI.read_bytes().replace(b"bond", b"bone", 1))
    with pytest.raises(ValueError, match="sha256"):
        P.partiprompts(path=bad)


@needs_parti
def test_cached_copy_is_used_and_verified(tmp_path):
    (tmp_path / "PartiPrompts.tsv").write_bytes(PARTI.read_bytes())
    assert len(P.partiprompts(cache_dir=tmp_path)) == 1632  # no download needed
    (tmp_path / "PartiPrompts.tsv").write_bytes(b"Prompt\tCategory\tChallenge\tNote\n")
    with pytest.raises(ValueError, match="sha256"):
        P.partiprompts(cache_dir=tmp_path)


@needs_parti
def test_coverage_prompts_are_deterministic_complex_and_order_independent(tmp_path):
    cov = P.coverage_prompts(40, path=PARTI)
    assert len(cov) == len(set(cov)) == 40
    complex_ = {r["Prompt"] for r in P.parti_records(path=PARTI) if r["Challenge"] == "Complex"}
    assert set(cov) <= complex_
    assert cov == P.coverage_prompts(40, path=PARTI)
    assert P.coverage_prompts(10, path=PARTI) == cov[:10]  # prefix property
    keys = [hashlib.sha256(p.encode()).hexdigest() for p in cov]
    assert keys == sorted(keys) and max(keys) < min(
        hashlib.sha256(p.encode()).hexdigest() for p in complex_ - set(cov))
    # the rule does not depend on the file's row order
    lines = PARTI.read_text(encoding="utf-8").splitlines(keepends=True)
    body = lines[1:]
    random.Random(0).shuffle(body)
    shuffled = tmp_path / "shuffled.tsv"
    shuffled.write_text(lines[0] + "".join(body), encoding="utf-8")
    rows = P.csv.DictReader(shuffled.open(newline="", encoding="utf-8"), delimiter="\t", quoting=P.csv.QUOTE_NONE)
    sel = sorted({r["Prompt"] for r in rows if r["Challenge"] == "Complex"}, key=P._stable_key)[:40]
    assert sel == cov
    with pytest.raises(ValueError, match="must lie in"):
        P.coverage_prompts(200, path=PARTI)
    assert P.prompt_set("coverage:5", path=PARTI) == cov[:5]


def test_offline_download_error_names_file_url_and_override(tmp_path):
    with pytest.raises(RuntimeError) as e:
        P.fetch("http://127.0.0.1:9/PartiPrompts.tsv", "PartiPrompts.tsv", cache_dir=tmp_path)
    msg = str(e.value)
    assert "PartiPrompts.tsv" in msg and "http://127.0.0.1:9/PartiPrompts.tsv" in msg and "path=" in msg
    assert not list(tmp_path.rglob("*.part"))  # no half-written file is left behind
    with pytest.raises(FileNotFoundError, match="raw.githubusercontent.com"):
        P.partiprompts(path=tmp_path / "nope.tsv")


def test_hpdv2_local_override_and_validation(tmp_path):
    good = tmp_path / "anime.json"
    good.write_text(json.dumps([f"anime prompt {i}" for i in range(800)]))
    assert P.hpdv2_prompts("anime", path=good)[3] == "anime prompt 3"
    assert len(P.prompt_set("hpdv2:anime", path=good)) == 800
    short = tmp_path / "short.json"
    short.write_text(json.dumps(["x"] * 10))
    with pytest.raises(ValueError, match="800"):
        P.hpdv2_prompts("photo", path=short)
    with pytest.raises(ValueError, match="style"):
        P.hpdv2_prompts("sketch", path=good)


def test_pickapic_captions_from_parquet_and_text(tmp_path):
    import pandas as pd

    caps = ["a cat", "a dog", "a cat", "", "  ", "a red bird", "a boat at sea"]
    pq = tmp_path / "pickapic.parquet"
    pd.DataFrame({"caption": caps, "other": range(len(caps))}).to_parquet(pq)
    got = P.pickapic_prompts(n=4, path=pq)
    assert sorted(got) == ["a boat at sea", "a cat", "a dog", "a red bird"]  # distinct, non-empty
    assert got == sorted(got, key=P._stable_key)
    txt = tmp_path / "pickapic.txt"
    txt.write_text("\n".join(caps))
    assert P.pickapic_prompts(n=4, path=txt) == got
    assert P.pickapic_prompts(n=2, path=pq) == got[:2]
    with pytest.raises(ValueError, match="distinct"):
        P.pickapic_prompts(n=5, path=pq)


def test_prompt_set_names():
    assert P.prompt_set("tiny") == list(P.TINY_PROMPTS)
    with pytest.raises(ValueError, match="allowed"):
        P.prompt_set("drawbench")
