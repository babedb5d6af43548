"""In-process benchmark of the request path, per surface and per stage.

Requests come from bench.workload (the bundle's own shoppers with their snapshot history plus a
share of unknown ones; pdp anchors and carts from their recent items), the same mix the HTTP and
baseline benchmarks send.
Every request runs the engine's real stages (engine.service.Recommender.run); we record each
stage's wall time and the total. Percentiles are over all requests of a surface.

    python -m bench.pipeline --bundle ROOT [--requests 2000] [--json bench/results/x.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from artifacts.bundle import open_bundle
from bench.environment import environment, percentiles, publish
from bench.workload import draw
from engine.service import Recommender
from engine.settings import Settings

STAGES = ("resolve", "retrieve", "filter", "features", "rank", "rerank", "total")


def run(bundle_path: Path, requests: int, seed: int = 1, pace_ms: float = 0.0) -> dict:
    bundle = open_bundle(bundle_path, verify="sizes")
    t0 = time.perf_counter()
    rec = Recommender(bundle, Settings(), live=None)
    rec.warm()
    start_s = time.perf_counter() - t0
    now = int(bundle.manifest.dims["end_ts"])
    result = {
        "benchmark": "pipeline-in-process",
        "environment": environment(),
        "bundle": {"id": bundle.build_id, "items": bundle.n_items, "users": len(bundle.users), "path": str(bundle.root)},
        "requests_per_surface": requests,
        "pace_ms": pace_ms,
        "load_and_warm_seconds": round(start_s, 3),
        "surfaces": {},
    }
    # "home·history": home for known shoppers with recent items only. The mix above includes
    # shoppers without history, whose context-only vector is served from a cache (engine.nearest).
    for i, (surface, name) in enumerate((("home", "home"), ("home", "home·history"), ("pdp", "pdp"), ("cart", "cart"))):
        queries = draw(bundle, surface, requests, seed + i, with_history=name.endswith("history"))
        for q in queries[:50]:  # page in the parts this surface touches
            rec.run(q, now=now)
        times = {stage: np.zeros(len(queries)) for stage in STAGES}
        fallbacks: dict[str, int] = {}
        candidates = np.zeros(len(queries))
        for j, q in enumerate(queries):
            if pace_ms:
                time.sleep(pace_ms / 1e3)
            started = time.perf_counter()
            response, ctx = rec.run(q, now=now)
            times["total"][j] = (time.perf_counter() - started) * 1e3
            for stage in STAGES[:-1]:
                times[stage][j] = ctx.timings.get(stage, 0.0) * 1e3
            candidates[j] = len(ctx.candidates) if ctx.candidates is not None else 0
            key = response.fallback or "none"
            fallbacks[key] = fallbacks.get(key, 0) + 1
        result["surfaces"][name] = {
            "ms": {stage: percentiles(times[stage]) for stage in STAGES},
            "candidates_ranked_mean": round(float(candidates.mean()), 1),
            "fallbacks": fallbacks,
        }
    return result


def table(result: dict) -> str:
    lines = [
        f"bundle {result['bundle']['id']} ({result['bundle']['items']:,} items), {result['requests_per_surface']} requests per surface"
        f"{', ' + str(result['pace_ms']) + ' ms idle before each' if result.get('pace_ms') else ', back to back'}, "
        f"commit {result['environment']['commit']}, {result['environment']['cpu']} × {result['environment']['cores']}",
        "",
        "| surface | stage | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for surface, data in result["surfaces"].items():
        for stage in STAGES:
            s = data["ms"][stage]
            name = f"**{stage}**" if stage == "total" else stage
            lines.append(f"| {surface} | {name} | {s['p50']} | {s['p90']} | {s['p99']} | {s['max']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="bundle dir, ROOT/current or ROOT")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--pace-ms", type=float, default=0.0,
                   help="idle gap before each request (default 0: back to back). On a shared VM an idle vCPU "
                        "comes back with cold caches: a paced run shows what a lightly loaded server sees")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    result = run(Path(args.bundle), args.requests, pace_ms=args.pace_ms)
    return publish(result, args.json, table(result))


if __name__ == "__main__":
    raise SystemExit(main())
