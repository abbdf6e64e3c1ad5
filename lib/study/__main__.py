"""Command line of the user study.

    python -m lib.study serve results/<run> [results/<run2> ...] --pairs aig:power:2,draft [--pairs A,B ...]
                              [--db FILE] [--host 127.0.0.1] [--port 8050] [--simulated] [--debug]
    python -m lib.study analyse FILE [--figures DIR]       tables of Fig. 6-8 and their figures, headless
    python -m lib.study simulate FILE [--seed 0]           a database of SIMULATED votes (tests, demos)
    python -m lib.study loadtest URL [--voters 24] [--seconds 3] [--db FILE]   (only a --simulated server)

Each run folder is one model x reward configuration of the paper; each pair compares two of its methods (the
first is 'a' in the analysis). Votes go to results/<run>/study/votes.sqlite (one run) or --db; a --simulated
server (a test, a demo) writes results/<run>/study/votes_SIMULATED.sqlite instead, so that test votes never
enter a human study. Errors are one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib.study.analysis import describe, load_votes, table, user_normalised, win_rates
from lib.study.app import create_app, serve
from lib.study.catalog import build_catalog, parse_pairs
from lib.study.db import StudyError
from lib.study.figures import write_figures
from lib.study.load import check_database, run_load
from lib.study.simulate import simulate_study


def default_db(runs: list[str], simulated: bool) -> Path:
    """<run>/study/votes.sqlite, or votes_SIMULATED.sqlite for a --simulated server; several runs need --db."""
    if len(runs) != 1:
        raise StudyError("several runs share one votes database: name it with --db FILE")
    return Path(runs[0]) / "study" / ("votes_SIMULATED.sqlite" if simulated else "votes.sqlite")


def cmd_serve(a: argparse.Namespace) -> int:
    """Index the runs' samples and serve the app until Ctrl-C."""
    catalog = build_catalog(a.runs, parse_pairs(a.pairs), a.prompt_set, a.pool, a.per_page)
    db = Path(a.db) if a.db else default_db(a.runs, a.simulated)
    app = create_app(catalog, db, simulated=a.simulated, per_page=a.per_page, seed=a.seed)
    print(f"{len(catalog.configurations)} configurations: "
          f"{'; '.join(c.name for c in catalog.configurations)}\nvotes: {db}"
          f"{' (SIMULATED: a test server)' if a.simulated else ''}", flush=True)
    serve(app, a.host, a.port, a.threads, a.debug)
    return 0


def cmd_analyse(a: argparse.Namespace) -> int:
    """Print the tables of Fig. 6, 7 and 8 and write the figures."""
    votes = load_votes(a.db)
    print(describe(votes))
    if votes.empty:
        return 0
    for title, t in (("Fig. 6: win rates, %", win_rates(votes, n_boot=a.n_boot)),
                     ("Fig. 7: win rates per configuration, %", win_rates(votes, ("configuration",), a.n_boot)),
                     ("Fig. 8a: user-normalised preference, %", user_normalised(votes, n_boot=a.n_boot))):
        print(f"\n{title} [95 % user-bootstrap interval] ({t.source.iloc[0]})\n{table(t).to_string()}")
    for p in write_figures(votes, a.figures or Path(a.db).parent / "figures", a.n_boot):
        print(f"wrote {p}")
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    """Write a database of simulated votes."""
    print(f"wrote {simulate_study(a.db, seed=a.seed)} (SIMULATED votes — not a human result)")
    return 0


def cmd_loadtest(a: argparse.Namespace) -> int:
    """Drive a --simulated server with concurrent simulated voters; with --db, check the stored votes."""
    report = run_load(a.url, a.voters, a.seconds)
    print(report.summary())
    for e in report.errors[:10]:
        print(f"  error: {e}")
    if a.db:
        print(check_database(a.db, report))
    return 1 if report.errors else 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m lib.study`."""
    ap = argparse.ArgumentParser(prog="python -m lib.study", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the study app on a run's stored samples")
    s.add_argument("runs", nargs="+", help="run folders, e.g. results/sd14_pickscore")
    s.add_argument("--pairs", action="append", required=True,
                   help="two methods to compare, e.g. aig:power:2,draft (repeat, or separate pairs with ';')")
    s.add_argument("--prompt-set", default="coverage", help="the prompt set shown (default: coverage)")
    s.add_argument("--db", help="the votes database (default: <run>/study/votes.sqlite)")
    s.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    s.add_argument("--port", type=int, default=8050, help="0 picks a free port")
    s.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    s.add_argument("--pool", type=int, default=50, help="images per prompt to draw from (the paper: 50)")
    s.add_argument("--per-page", type=int, default=9, help="images per side (the paper: 9)")
    s.add_argument("--seed", type=int, help="seed the page draws (default: system randomness)")
    s.add_argument("--simulated", action="store_true", help="a test server: its votes are recorded as SIMULATED")
    s.add_argument("--debug", action="store_true", help="Flask's debug server instead of waitress")
    s.set_defaults(fn=cmd_serve)
    s = sub.add_parser("analyse", help="tables and figures of a votes database")
    s.add_argument("db")
    s.add_argument("--figures", help="figure folder (default: figures/ next to the database)")
    s.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of users")
    s.set_defaults(fn=cmd_analyse)
    s = sub.add_parser("simulate", help="write a database of SIMULATED votes")
    s.add_argument("db")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_simulate)
    s = sub.add_parser("loadtest", help="concurrent simulated voters against a --simulated server")
    s.add_argument("url")
    s.add_argument("--voters", type=int, default=24)
    s.add_argument("--seconds", type=float, default=3.0)
    s.add_argument("--db", help="the server's votes database, to check every acknowledged vote")
    s.set_defaults(fn=cmd_loadtest)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors are one line on stderr."""
    a = parser().parse_args(argv)
    try:
        return a.fn(a)
    except (StudyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
