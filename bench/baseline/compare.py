"""Aisle against the plain baseline (bench.baseline.pipeline), in process, in the same run.

The same requests (bench.workload.queries, the same seed per surface as bench.pipeline) go through
Aisle's engine (engine.service.Recommender, default settings, warmed) and through the baseline in
two variants: with the libraries' default thread pools (as shipped) and pinned to one thread.
The systems take turns in blocks of `--block` requests (the starting system rotates per block),
so machine noise over the run hits all of them; a short pause at each switch keeps one system's
idle thread pools (ONNX Runtime and OpenMP spin after work) from eating the next one's time, which
a request-by-request interleave measured as +2-4 ms on Aisle's p90 on a 2-vCPU host. Each call is
timed end to end: query object in, response object out; no HTTP, no JSON.

Per surface: p50/p90/p99/mean per system, the ratio baseline/Aisle per statistic, and how much the
top-`count` slates overlap (shared@count, Jaccard) as a check that they do comparable work.

    python -m bench.baseline.compare --bundle ROOT [--requests 2000] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from artifacts.bundle import open_bundle
from bench import workload
from bench.baseline.pipeline import BaselineRecommender
from bench.environment import environment, percentiles, publish
from engine.service import Recommender
from engine.settings import Settings

WARMUP = 50  # requests per surface run through both systems, untimed, before measuring
STATS = ("p50", "p90", "p99", "mean")
AISLE_STAGES = ("resolve", "retrieve", "filter", "features", "rank", "rerank")  # engine.stages names
BASELINE_STAGES = ("resolve", "retrieve", "features", "rank", "post")  # post = filter, blend, sort, caps, response


def _versions() -> dict[str, str]:
    import lightgbm
    import numba
    import onnxruntime
    import usearch

    return {
        "numpy": np.__version__, "numba": numba.__version__, "lightgbm": lightgbm.__version__,
        "onnxruntime": onnxruntime.__version__, "usearch": usearch.__version__, "python": platform.python_version(),
    }


SYSTEMS = {
    "aisle": "Aisle engine (engine.service.Recommender, default settings, warmed)",
    "baseline": "BaselineRecommender, library defaults (ONNX Runtime default session options, LightGBM default num_threads)",
    "baseline_1t": "BaselineRecommender(threads=1): ONNX Runtime and LightGBM pinned to one thread",
}
LABELS = {"aisle": "Aisle", "baseline": "baseline (library threads)", "baseline_1t": "baseline (1 thread)"}
BASELINES = ("baseline", "baseline_1t")


def run(bundle_path: Path | str, requests: int, seed: int = 1, count: int = 20, block: int = 20,
        variants: tuple[str, ...] = BASELINES) -> dict:
    """Measure Aisle and each baseline variant on the same requests (see the module docstring)."""
    bundle_path = Path(bundle_path)
    bundle = open_bundle(bundle_path, verify="sizes")
    started = {}
    t0 = time.perf_counter()
    aisle = Recommender(bundle, Settings(), live=None)
    aisle.warm()
    started["aisle"] = time.perf_counter() - t0
    baselines: dict[str, BaselineRecommender] = {}
    for name in variants:
        t0 = time.perf_counter()
        baselines[name] = BaselineRecommender(bundle.root, threads=None if name == "baseline" else 1)
        baselines[name].warm()
        started[name] = time.perf_counter() - t0
    now = int(bundle.manifest.dims["end_ts"])
    systems = ("aisle", *variants)
    result: dict = {
        "benchmark": "baseline-vs-aisle-in-process",
        "environment": environment(),
        "versions": _versions(),
        "bundle": {"id": bundle.build_id, "items": bundle.n_items, "users": len(bundle.users), "path": str(bundle.root)},
        "requests_per_surface": requests,
        "count": count,
        "seed": seed,
        "block": block,
        "systems": {name: SYSTEMS[name] for name in systems},
        "load_and_warm_seconds": {name: round(v, 3) for name, v in started.items()},
        "method": (
            "the same requests through every system, in blocks of `block` requests, the systems taking turns "
            "(the starting system rotates per block), a 20 ms pause at every switch so one system's idle "
            "thread pools do not spin on the next one's time; wall time of Recommender.run(q) / "
            "BaselineRecommender.recommend(q), query object in, response object out, no HTTP"
        ),
        "surfaces": {},
    }
    in_stock = next(iter(baselines.values())).in_stock if baselines else None

    def call(name: str, q, timings: dict) -> list[str]:
        if name == "aisle":
            response, ctx = aisle.run(q, now=now)
            timings.update(ctx.timings)
            return [item.sku for item in response.items]
        return [item["sku"] for item in baselines[name].recommend(q, now=now, timings=timings)]

    for i, surface in enumerate(workload.SURFACES):
        queries = workload.draw(bundle, surface, requests, seed + i, count)
        n = len(queries)
        for name in systems:  # page in what this surface touches, in every system
            for q in queries[:WARMUP]:
                call(name, q, {})
        ms = {name: np.zeros(n) for name in systems}
        stages = {name: {st: np.zeros(n) for st in (AISLE_STAGES if name == "aisle" else BASELINE_STAGES)} for name in systems}
        slates: dict[str, list[list[str]]] = {name: [[] for _ in range(n)] for name in systems}
        for b, lo in enumerate(range(0, n, block)):
            order = systems[b % len(systems):] + systems[: b % len(systems)]
            for name in order:
                time.sleep(0.02)
                for j in range(lo, min(lo + block, n)):
                    timings: dict[str, float] = {}
                    t = time.perf_counter()
                    slates[name][j] = call(name, queries[j], timings)
                    ms[name][j] = (time.perf_counter() - t) * 1e3
                    if name in stages:
                        for st in stages[name]:
                            stages[name][st][j] = timings.get(st, 0.0) * 1e3
        summary = {name: percentiles(values) for name, values in ms.items()}
        data: dict = {"ms": summary, "ratio_over_aisle": {}, "overlap_with_aisle": {}, "stage_p50_ms": {}, "short_slates": {},
                      "baseline_out_of_stock_returned": 0}
        for name in systems:
            data["short_slates"][name] = int(sum(len(sl) < count for sl in slates[name]))
            data["stage_p50_ms"][name] = {st: round(float(np.percentile(v, 50)), 3) for st, v in stages[name].items()}
        for name in variants:
            data["ratio_over_aisle"][name] = {
                stat: round(summary[name][stat] / summary["aisle"][stat], 2) if summary["aisle"][stat] > 0 else None for stat in STATS
            }
            shared = [len(set(a) & set(b)) / max(len(a), len(b), 1) for a, b in zip(slates["aisle"], slates[name])]
            jaccard = [len(set(a) & set(b)) / max(len(set(a) | set(b)), 1) for a, b in zip(slates["aisle"], slates[name])]
            data["overlap_with_aisle"][name] = {f"shared_at_{count}": round(float(np.mean(shared)), 3), "jaccard": round(float(np.mean(jaccard)), 3)}
            rec = baselines[name]
            data["baseline_out_of_stock_returned"] += int(sum(int(in_stock[rec.row_of[sku]] == 0) for sl in slates[name] for sku in sl))
        result["surfaces"][surface] = data
    for rec in baselines.values():
        rec.close()
    aisle.close()
    return result


def table(result: dict) -> str:
    env = result["environment"]
    load = env.get("loadavg_at_start") or []
    count = result["count"]
    lines = [
        f"bundle {result['bundle']['id']} ({result['bundle']['items']:,} items), {result['requests_per_surface']} requests per surface, "
        f"in process, systems interleaved in blocks of {result.get('block', 1)}; commit {env['commit']}, {env['cpu']} × {env['cores']}"
        + (f", load average at start {load[0]:.2f}" if load else ""),
        "",
        f"| surface | system | p50 ms | p90 ms | p99 ms | mean ms | shared@{count} with Aisle |",
        "|---|---|---|---|---|---|---|",
    ]
    for surface, data in result["surfaces"].items():
        for name, s in data["ms"].items():
            overlap = data["overlap_with_aisle"].get(name, {}).get(f"shared_at_{count}", "")
            lines.append(f"| {surface} | {LABELS.get(name, name)} | {s['p50']} | {s['p90']} | {s['p99']} | {s['mean']} | {overlap} |")
        for name, r in data["ratio_over_aisle"].items():
            cells = " | ".join(f"**{r[stat]}×**" if r[stat] is not None else "–" for stat in STATS)
            lines.append(f"| {surface} | ratio {LABELS.get(name, name)} / Aisle | {cells} | |")
    lines += [
        "",
        "Stage p50 ms (Aisle: engine stages; baseline: `post` = filter, blend, sort, caps and the response list)",
        "",
        "| surface | system | resolve | retrieve | filter | features | rank | rerank / post |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for surface, data in result["surfaces"].items():
        for name, st in data.get("stage_p50_ms", {}).items():
            last = st.get("rerank", st.get("post", ""))
            lines.append(
                f"| {surface} | {LABELS.get(name, name)} | {st.get('resolve', '')} | {st.get('retrieve', '')} | {st.get('filter', '–')} "
                f"| {st.get('features', '')} | {st.get('rank', '')} | {last} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m bench.baseline.compare") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="bundle dir, ROOT/current or ROOT")
    p.add_argument("--requests", type=int, default=2000, help="requests per surface (default 2000)")
    p.add_argument("--seed", type=int, default=1, help="workload seed (surface i uses seed + i, as bench.pipeline)")
    p.add_argument("--count", type=int, default=20, help="slots per request (default 20)")
    p.add_argument("--block", type=int, default=20, help="requests per system turn (default 20)")
    p.add_argument("--variants", default="baseline,baseline_1t",
                   help="baseline variants to measure, comma-separated: baseline (library thread defaults), baseline_1t (one thread)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    if args.requests < 1 or args.block < 1:
        p.error("--requests and --block must be at least 1")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in BASELINES]
    if unknown or not variants:
        p.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(BASELINES)}")
    result = run(Path(args.bundle), args.requests, args.seed, args.count, args.block, variants)
    return publish(result, args.json, table(result))


if __name__ == "__main__":
    raise SystemExit(main())
