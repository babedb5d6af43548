"""`aisle bench NAME [options]`: every benchmark behind one command (each is also
`python -m bench.NAME`). Results are JSON files that record machine, commit, command and bundle;
bench/README.md carries the current tables and the command behind each.

    aisle bench pipeline --bundle ROOT --json bench/results/pipeline-1m.json
    aisle bench http --bundles ROOT --workers 1 --pin --wrk --json ...
    aisle bench peers --bundles ROOT --json ...
    aisle bench baseline --bundle ROOT --json ...
    aisle bench profile --bundles ROOT --out bench/results/profiles
    aisle bench rss|freshness|ranker ...
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, what it measures)
BENCHES: dict[str, tuple[str, str]] = {
    "pipeline": ("bench.pipeline", "in process: each surface, each stage, p50/p90/p99/max"),
    "http": ("bench.http", "over HTTP, open loop: latency at fixed rates, capacity, server CPU per request, wrk cross-check"),
    "peers": ("bench.peers", "Metarank's and Gorse's published workloads, filtered ANN at 1/10/50% in stock"),
    "baseline": ("bench.baseline.compare", "Aisle vs a plain Python pipeline (LightGBM predict, NumPy, FastAPI), same run"),
    "profile": ("bench.profile", "py-spy flamegraphs of a loaded server, per surface"),
    "rss": ("bench.rss", "memory of 1 and 2 workers (RSS, PSS)"),
    "freshness": ("bench.freshness", "out-of-stock to slate latency; durable event ingest rate"),
    "ranker": ("bench.ranker_micro", "compiled ranker vs LightGBM predict"),
    "ab-study": ("bench.ab_study", "a simulated A/B study: experiments served, simulated shoppers, `aisle analyze` report"),
    "feedback-study": ("bench.feedback_study", "feedback loops over rebuild rounds: impression Gini and coverage, with and without exploration"),
    "overload": ("bench.overload", "more requests than the workers can serve: shedding on vs off, 200 latency, 503s, timeouts, RSS"),
    "candidates": ("bench.candidates", "how many candidates the ranker needs: final top-k recall vs candidates ranked"),
}


def usage() -> str:
    width = max(map(len, BENCHES))
    lines = ["usage: aisle bench NAME [options]   (aisle bench NAME --help for its options)", "", "benchmarks:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in BENCHES.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHES:
        print(f"aisle bench: unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHES[name][0])
    status = module.main(rest)
    return int(status or 0)
