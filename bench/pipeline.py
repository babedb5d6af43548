"""In-process benchmark of the request path, per surface and per stage.

Requests come from bench.workload (the bundle's own shoppers with their snapshot history plus a
share of unknown ones; pdp anchors and carts from their recent items), the same mix the HTTP and
baseline benchmarks send.
Every request runs the engine's real stages (engine.service.Recommender.run); we record each
stage's wall time and the total. Percentiles are over all requests of a surface.

    python -m bench.pipeline --bundle ROOT [--requests 2000] [--json bench/results/x.json]
    python -m bench.pipeline --bundle ROOT --objectives [--requests 3000] [--json ...]
    python -m bench.pipeline --bundle ROOT --underexposed 20 [--requests 3000] [--json ...]

`--objectives` measures what the ranking heads cost (issue 9): the same home requests through two
Recommenders on one bundle, the `legacy` objective (the lambdarank ranker) and `heads` (three
compiled heads, calibration, the revenue blend), alternating which goes first, so both see the same
machine at the same moments; the report gives each one's rank-stage and total percentiles and the
per-request difference. `--underexposed N` does the same for the exploration slots' reach
(new items only, against also candidates shown fewer than N times), timing the rerank stage.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import msgspec
import numpy as np

from artifacts import layout
from artifacts.bundle import open_bundle
from bench.environment import environment, percentiles, publish
from bench.workload import draw
from engine.service import Recommender
from engine.settings import BlendWeights, Settings

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


def paired(bundle_path: Path, arms: dict[str, Settings], stage: str, requests: int, seed: int = 1) -> dict:
    """Two settings on one bundle, the same home requests through both, alternating which goes
    first so both see the same machine at the same moments: each one's `stage` and total
    percentiles, and the per-request difference (second minus first)."""
    bundle = open_bundle(bundle_path, verify="sizes")
    recs = {name: Recommender(bundle, settings, live=None) for name, settings in arms.items()}
    for rec in recs.values():
        rec.warm()
    now = int(bundle.manifest.dims["end_ts"])
    queries = draw(bundle, "home", requests, seed)
    for q in queries[:50]:
        for rec in recs.values():
            rec.run(q, now=now)
    part = {name: np.zeros(len(queries)) for name in recs}
    total = {name: np.zeros(len(queries)) for name in recs}
    fallbacks: dict[str, dict[str, int]] = {name: {} for name in recs}
    order = list(recs)
    for j, q in enumerate(queries):
        for name in order if j % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            response, ctx = recs[name].run(q, now=now)
            total[name][j] = (time.perf_counter() - started) * 1e3
            part[name][j] = ctx.timings.get(stage, 0.0) * 1e3
            key = response.fallback or "none"
            fallbacks[name][key] = fallbacks[name].get(key, 0) + 1
    for rec in recs.values():
        rec.close()
    first, second = order
    return {
        "environment": environment(),
        "bundle": {"id": bundle.build_id, "items": bundle.n_items, "users": len(bundle.users), "path": str(bundle.root)},
        "surface": "home",
        "requests": len(queries),
        "ms": {
            **{f"{name} {what}": percentiles(values[name]) for what, values in ((stage, part), ("total", total)) for name in recs},
            f"{second} − {first} {stage} (per request)": percentiles(part[second] - part[first]),
            f"{second} − {first} total (per request)": percentiles(total[second] - total[first]),
        },
        "fallbacks": fallbacks,
    }


def compare_objectives(bundle_path: Path, requests: int, seed: int = 1) -> dict:
    """legacy vs heads on the same home requests, interleaved (module docstring)."""
    if not open_bundle(bundle_path, verify="sizes").has(layout.HEADS_SPEC):
        raise SystemExit(f"{bundle_path}: the bundle has no ranking heads (built before them, or `[heads] enabled = false`)")
    base = Settings()
    blend = BlendWeights(click=1.0, revenue=1.0)
    arms = {name: msgspec.structs.replace(base, ranking=msgspec.structs.replace(base.ranking, objective=name, blend=blend)) for name in ("legacy", "heads")}
    return {"benchmark": "pipeline-objectives", **paired(bundle_path, arms, "rank", requests, seed), "blend": msgspec.to_builtins(blend)}


def compare_underexposed(bundle_path: Path, requests: int, threshold: int, seed: int = 1) -> dict:
    """Exploration slots for new items only vs also for candidates shown fewer than `threshold`
    times (rerank.explore_underexposed): what the wider exploration costs the rerank stage."""
    base = Settings()
    arms = {name: msgspec.structs.replace(base, rerank=msgspec.structs.replace(base.rerank, explore_underexposed=n))
            for name, n in (("new only", 0), (f"rarely shown < {threshold}", threshold))}  # fmt: skip
    return {"benchmark": "pipeline-explore-underexposed", **paired(bundle_path, arms, "rerank", requests, seed), "threshold": threshold}


def paired_table(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"bundle {result['bundle']['id']} ({result['bundle']['items']:,} items), {result['requests']} home requests, each through "
        f"both settings (alternating first), commit {env['commit']}, {env['cpu']} × {env['cores']}",
        "",
        "| measure | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {s['p50']} | {s['p90']} | {s['p99']} | {s['max']} |" for name, s in result["ms"].items()]
    return "\n".join(lines)


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
    p.add_argument("--objectives", action="store_true",
                   help="compare the legacy and heads objectives on the same home requests (the heads' cost)")
    p.add_argument("--underexposed", type=int, metavar="N",
                   help="compare exploration for new items only with exploration also for candidates shown fewer than N times")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    if args.objectives:
        result = compare_objectives(Path(args.bundle), args.requests)
        return publish(result, args.json, paired_table(result))
    if args.underexposed is not None:
        if args.underexposed < 1:
            p.error("--underexposed must be at least 1")
        result = compare_underexposed(Path(args.bundle), args.requests, args.underexposed)
        return publish(result, args.json, paired_table(result))
    result = run(Path(args.bundle), args.requests, pace_ms=args.pace_ms)
    return publish(result, args.json, table(result))


if __name__ == "__main__":
    raise SystemExit(main())
