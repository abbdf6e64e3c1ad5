"""Build (or verify) the world of a params file, the same build notebook 01 starts through SDDomain.prepare():

    python -m lib.domains.world params/shapes.yaml [--run-dir DIR] [--force]

Useful before `torchrun --nproc_per_node 2 -m lib.launch params/shapes.yaml --stages train,sample`, whose processes
would otherwise wait at a barrier while the main one builds the world (longer than the process group's timeout).
"""
from __future__ import annotations

import argparse
import json
import sys

from lib.config import load
from lib.domains.world.build import summary
from lib.errors import ConfigError
from lib.runs import make_domain, repo_path, run_paths


def main(argv: list[str] | None = None) -> int:
    """Build the world of a world run's params file; prints the build's summary (times, accuracies)."""
    ap = argparse.ArgumentParser(prog="python -m lib.domains.world", description=__doc__.split("\n")[0])
    ap.add_argument("params")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--force", action="store_true", help="rebuild every stage")
    args = ap.parse_args(argv)
    try:
        cfg = load(repo_path(args.params))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    domain = make_domain(cfg, run_paths(cfg, args.run_dir))
    if getattr(domain, "world", None) is None:
        print(f"error: {args.params} is not a world run (sd.model: world)", file=sys.stderr)
        return 2
    world = domain.prepare(force=args.force, progress=True)
    print(json.dumps({"built": world["built"], **summary(world)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
