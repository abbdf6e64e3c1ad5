"""Sampling parts: one sample set (a method on a prompt set, `lib.store`) split into W parts that separate jobs
sample, in the store's own shard format, and that any later run resumes.

Part r of W holds the r-th of W contiguous runs of whole batches of the (prompt, seed) pair list, so each of its
batches is exactly a batch of the one-process run (the same numbers, not just the same seeds). A job writes its
shards (`shard_rRRR_XXXXX.npz`, `lib.store.write_samples` with rank r) and then a part record
`part_rRRR_of_WWW.json` holding the set's stamp and the size and sha256 of its shards; a part counts as done only
while its record has the current stamp and its shards match it. The job whose part completes the set removes the
shards no part lists (leftovers of another layout) and writes the set's `done.json` (`lib.store.mark_done`); until
then the set is incomplete, so a job that dies half-way leaves its part to be sampled again by the next submission,
and a one-process run (`lib.stages.stage_sample`) samples the whole set again as it does any incomplete set.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from lib.errors import ArtefactError
from lib.files import file_record, mismatch, read_json, write_text
from lib.store import mark_done, why_not_done, write_samples


def part_positions(n: int, batch: int, rank: int, world: int) -> range:
    """Positions in the pair list of part `rank` of `world`: whole batches, contiguous, balanced by batch count."""
    if not 0 <= rank < world:
        raise ValueError(f"part {rank} of {world}: the rank must lie in [0, {world})")
    batches = -(-n // batch)
    lo, hi = rank * batches // world, (rank + 1) * batches // world
    return range(min(lo * batch, n), min(hi * batch, n))


def _record(folder: Path, rank: int, world: int) -> Path:
    return folder / f"part_r{rank:03d}_of_{world:03d}.json"


def why_not_part(folder: Path, stamp: str, rank: int, world: int) -> Optional[str]:
    """None if part `rank` of `world` is done with this stamp and its shards match their records, else why not."""
    path = _record(folder, rank, world)
    if not path.exists():
        return f"{path.name} missing"
    try:
        rec = read_json(path, "sampling part record")
    except ArtefactError as e:
        return str(e)
    if rec.get("stamp") != stamp:
        return f"{path.name} is of another configuration"
    for f in rec.get("shards", []):
        why = mismatch(folder / f["path"], f["size"], f["sha256"])
        if why:
            return f"{folder / f['path']} {why}"
    return None


def sample_part(out_dir: Path, key: str, stamp: str, pairs: Sequence[tuple[int, int]], rank: int, world: int,
                batch: int, make: Callable[[list], np.ndarray], meta: dict, force: bool = False) -> str:
    """Sample part `rank` of `world` of the set `key` unless it is done; complete the set when every part is.
    `make(pairs)` returns the stored samples of those (prompt, seed) pairs, in batches of `batch`. Returns 'reused' (the set was complete),
    'skipped' (this part was done), 'sampled' or 'empty' (a part with no batches), plus ', completed the set' when
    this call wrote done.json."""
    folder = Path(out_dir) / key
    if not force and why_not_done(out_dir, key, stamp) is None:
        return "reused"
    positions = part_positions(len(pairs), batch, rank, world)
    if not force and why_not_part(folder, stamp, rank, world) is None:
        status = "skipped"
    else:
        for old in folder.glob(f"shard_r{rank:03d}_*.npz"):
            old.unlink()
        _record(folder, rank, world).unlink(missing_ok=True)
        (folder / "done.json").unlink(missing_ok=True)
        mine = [pairs[i] for i in positions]
        if mine:
            write_samples(out_dir, key, make(mine), mine, stamp, positions=list(positions), rank=rank)
        shards = [file_record(s, folder) for s in sorted(folder.glob(f"shard_r{rank:03d}_*.npz"))]
        write_text(_record(folder, rank, world), json.dumps({"stamp": stamp, "rank": rank, "world": world,
                                                             "positions": [positions.start, positions.stop],
                                                             "shards": shards}))
        status = "sampled" if mine else "empty"
    if complete(out_dir, key, stamp, world, len(pairs), meta):
        status += ", completed the set"
    return status


def complete(out_dir: Path, key: str, stamp: str, world: int, n: int, meta: dict) -> bool:
    """Write the set's done.json if all `world` parts are done with this stamp (removing shards no part lists)."""
    folder = Path(out_dir) / key
    if any(why_not_part(folder, stamp, r, world) is not None for r in range(world)):
        return False
    listed = {f["path"] for r in range(world) for f in read_json(_record(folder, r, world))["shards"]}
    for shard in folder.glob("shard_*.npz"):
        if shard.name not in listed:
            shard.unlink(missing_ok=True)
    mark_done(out_dir, key, stamp, n, meta)
    return True
