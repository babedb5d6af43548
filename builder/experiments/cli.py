"""`aisle analyze`: the experiment report of a state dir's logs.

builder/cli.py wires it in with `add_parser(subparsers)`; `run(args)` returns the exit code: 0,
or 2 with a one-line message on stderr when the input cannot be analysed (no log, no slates, an
empty window, unreadable settings). `python -m builder.experiments.cli ...` runs it alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "analyze",
        help="per-variant metrics, differences with CIs and p-values, SRM and guardrails from the engine's slate and event logs",
        description="Join the served-slate log with shopper events and report each experiment variant against its control.",
    )
    _arguments(s)
    s.set_defaults(func=run)
    return s


def _arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--state", required=True, help="the engine's state dir (aisle serve --state): holds events.lmdb")
    s.add_argument("--settings", help="the engine settings TOML that served the run: controls, arm weights, guardrails (default: none)")
    s.add_argument("--out", default="analysis", help="directory for analysis.json, report.md and the SVG plots (default: analysis)")
    s.add_argument("--since-ts", type=float, help="only slates served at or after this epoch second")
    s.add_argument("--until-ts", type=float, help="only slates served before this epoch second")
    s.add_argument("--attribution-hours", type=float, default=24.0,
                   help="a purchase without a slate's request id goes to the shopper's latest slate showing the SKU this many hours before (default 24)")  # fmt: skip
    s.add_argument("--alpha", type=float, default=0.05, help="significance level; intervals are 1 − alpha (default 0.05)")
    s.add_argument("--replicates", type=int, default=2000, help="Poisson bootstrap replicates for revenue per request (default 2000)")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from builder.experiments.analyze import analyze
    from builder.experiments.logs import AnalysisError
    from builder.experiments.report import write_outputs
    from engine.eventlog import EventLogError
    from engine.settings import SettingsError, load

    try:
        settings = load(Path(args.settings)) if args.settings else None
        result = analyze(
            Path(args.state), settings, since_ts=args.since_ts, until_ts=args.until_ts, attribution_hours=args.attribution_hours,
            alpha=args.alpha, replicates=args.replicates, seed=args.seed,
        )  # fmt: skip
        paths = write_outputs(result, Path(args.out))
    except (AnalysisError, EventLogError, SettingsError) as exc:
        print(f"aisle analyze: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"aisle analyze: error: {exc.filename or args.out}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for e in result.experiments:
        print(e.verdict)
    print(f"{len(paths)} files in {args.out}: report.md, analysis.json, " + ", ".join(p.name for p in paths if p.suffix == ".svg"))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aisle analyze", description=__doc__.splitlines()[0])
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
