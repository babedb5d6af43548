"""How many candidates does the ranker need? The ranker's cost grows with the rows it scores
(ranking.max_candidates, the best by retrieval order first). For each cap, the final slate is
compared with the slate of an uncapped run on the same requests: recall@count of the reference
slate, with the latency of the whole request beside it.

Exploration slots are switched off for both, so the comparison sees ranking only.

    python -m bench.candidates --bundle ROOT [--requests 1000] [--caps 50,100,200,400] [--json out.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import msgspec
import numpy as np

from artifacts.bundle import open_bundle
from bench.environment import environment, publish
from bench.workload import SURFACES, draw
from engine.service import Recommender
from engine.settings import Settings

REFERENCE_CAP = 5000  # "uncapped": every retrieved candidate is ranked


def _settings(cap: int) -> Settings:
    base = Settings()
    return msgspec.structs.replace(
        base,
        ranking=msgspec.structs.replace(base.ranking, max_candidates=cap),
        rerank=msgspec.structs.replace(base.rerank, explore_slots=[]),
    )


def run(bundle_path: Path, requests: int, caps: list[int], seed: int = 1) -> dict:
    bundle = open_bundle(bundle_path, verify="sizes")
    now = int(bundle.manifest.dims["end_ts"])
    result = {
        "benchmark": "candidates-ranked",
        "environment": environment(),
        "bundle": {"id": bundle.build_id, "items": bundle.n_items, "path": str(bundle.root)},
        "requests_per_surface": requests,
        "surfaces": {},
    }
    systems = {cap: Recommender(bundle, _settings(cap), live=None) for cap in [*caps, REFERENCE_CAP]}
    for rec in systems.values():
        rec.warm()
    for i, surface in enumerate(SURFACES):
        queries = draw(bundle, surface, requests, seed + i)
        reference = []
        retrieved = np.zeros(len(queries))
        for j, q in enumerate(queries):
            response, ctx = systems[REFERENCE_CAP].run(q, now=now)
            reference.append({it.sku for it in response.items})
            retrieved[j] = len(ctx.candidates)
        rows = []
        for cap in caps:
            rec = systems[cap]
            for q in queries[:50]:
                rec.run(q, now=now)
            ms = np.zeros(len(queries))
            rank_ms = np.zeros(len(queries))
            recall = np.zeros(len(queries))
            for j, q in enumerate(queries):
                t0 = time.perf_counter()
                response, ctx = rec.run(q, now=now)
                ms[j] = (time.perf_counter() - t0) * 1e3
                rank_ms[j] = (ctx.timings.get("features", 0.0) + ctx.timings.get("rank", 0.0)) * 1e3
                got = {it.sku for it in response.items}
                recall[j] = len(got & reference[j]) / max(len(reference[j]), 1)
            rows.append({
                "cap": cap,
                "recall_of_uncapped_slate": round(float(recall.mean()), 4),
                "total_ms": {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)},
                "features_plus_rank_ms": {"p50": round(float(np.percentile(rank_ms, 50)), 3), "p99": round(float(np.percentile(rank_ms, 99)), 3)},
            })
        result["surfaces"][surface] = {"candidates_retrieved_mean": round(float(retrieved.mean()), 1), "caps": rows}
    for rec in systems.values():
        rec.close()
    return result


def table(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"bundle {result['bundle']['id']} ({result['bundle']['items']:,} items), {result['requests_per_surface']} requests per surface, "
        f"commit {env['commit']}, {env['cpu']} × {env['cores']}",
        "",
        "| surface | candidates retrieved (mean) | ranked (cap) | recall of the uncapped slate | features+rank p50 ms | p99 ms | total p50 ms | total p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for surface, data in result["surfaces"].items():
        for row in data["caps"]:
            fr, tot = row["features_plus_rank_ms"], row["total_ms"]
            lines.append(f"| {surface} | {data['candidates_retrieved_mean']} | {row['cap']} | {row['recall_of_uncapped_slate']:.3f} | "
                         f"{fr['p50']} | {fr['p99']} | {tot['p50']} | {tot['p99']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.candidates", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="bundle dir, ROOT/current or ROOT")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--caps", default="50,100,200,400", help="comma-separated ranking.max_candidates values")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    try:
        caps = sorted({int(c) for c in args.caps.split(",") if c.strip()})
    except ValueError:
        p.error(f"--caps must be comma-separated integers, got {args.caps!r}")
    if not caps or min(caps) < 1:
        p.error("--caps needs at least one value ≥ 1")
    result = run(Path(args.bundle), args.requests, caps)
    return publish(result, args.json, table(result))


if __name__ == "__main__":
    raise SystemExit(main())
