"""Peers' published workloads, reproduced on Aisle and reported beside the peers' own figures.

- Metarank's latency benchmark (metarank/metarank src/test/.../benchmark/LatencyBenchmark.scala,
  doc/performance.md): re-rank N given items (N from 25 to 300) for a known shopper, 5,000
  sequential requests per N, after a warm-up; percentiles p50/p80/p90/p95/p99. Here: Aisle's
  re-ranking request (`candidates`, POSTed as JSON), items drawn without repeats from the 1,000
  most popular, one known shopper with history per request.
- Gorse's API benchmark (gorse-io/gorse server/bench_test.go, docs "benchmark"):
  RecommendFromItemBased/n, n = 10/100/1000: a shopper with 10 feedback items, neighbours of those
  items aggregated, n returned; sequential; the mean per request (Go's ns/op). Here: the shopper's
  10 most recent items as anchors of the co-visitation source (item-based; k = 2n), the hard
  filters, no ranker — and, for comparison, the full home pipeline at count n.
- Filtered ANN: 1M vectors with 1%, 10% and 50% of items in stock (random flags), pdp "similar
  items" and home "picked for you"; every response must still carry `count` items. Reported with
  the share of slate items that came from the vector sources (not from popular backfill), beside
  plain post-filtering (HNSW top-k, then drop what is out of stock) in the same run.

Both peers measured sequential requests over loopback HTTP against a server in the same process;
here the server is `aisle serve` (1 worker) in its own process and the client sends one request
at a time over a keep-alive connection. In-process figures (the engine without HTTP) beside them.

    python -m bench.peers --bundles ROOT [--requests 5000] [--only metarank,gorse,filtered] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from artifacts import layout
from artifacts.bundle import Bundle, open_bundle
from artifacts.snapshot import ShopperSnapshot
from bench.environment import environment, publish
from bench.http import ServerProcess, target
from engine.schemas import RecommendQuery
from engine.service import Recommender
from engine.settings import Settings, SourceSpec, load

PERCENTILES = (50, 80, 90, 95, 99)
METARANK_SIZES = (25, 50, 100, 200, 300)
GORSE_SIZES = (10, 100, 1000)
STOCK_SHARES = (0.01, 0.10, 0.50)
GORSE_HISTORY = 10

# Published figures (hardware not stated by either project).
PUBLISHED = {
    "metarank": "re-ranking latency 10-30 ms; 'expect Metarank to be within 20-30 ms' (doc/performance.md; "
    "per-size percentiles only in a chart, img/latency.png)",
    "gorse": {  # ms per request, MySQL data + Redis cache column of the docs' benchmark table
        10: 2.21,
        100: 4.35,
        1000: 23.65,
    },
}


def _summary(ms: np.ndarray) -> dict[str, float]:
    out = {f"p{p}": round(float(np.percentile(ms, p)), 3) for p in PERCENTILES}
    out["mean"] = round(float(ms.mean()), 3)
    out["max"] = round(float(ms.max()), 3)
    return out


# ---------------------------------------------------------------------------------------------
# Shoppers and requests


def _shoppers_with_history(bundle: Bundle, n: int, min_history: int, seed: int) -> list[tuple[str, list[int]]]:
    """Up to n known shoppers with at least min_history recent items: (user id, recent rows)."""
    snap = ShopperSnapshot(bundle.path(layout.SHOPPER_SNAPSHOT), int(bundle.manifest.dims.get("snapshot_map_size", 1 << 30)))
    rng = np.random.default_rng(seed)
    found: list[tuple[str, list[int]]] = []
    try:
        for row in rng.permutation(len(bundle.users))[: max(n * 50, 1000)]:
            user = bundle.users.id_of(int(row))
            record = snap.get(user)
            if record is not None and len(set(record.recent_items)) >= min_history:
                found.append((user, list(record.recent_items)))
                if len(found) >= n:
                    break
    finally:
        snap.close()
    if not found:
        raise RuntimeError(f"no shopper in bundle {bundle.build_id} has {min_history}+ recent items")
    return found


def metarank_queries(bundle: Bundle, size: int, n: int, seed: int) -> list[RecommendQuery]:
    rng = np.random.default_rng(seed)
    pool = np.asarray(bundle.array(layout.POPULAR_GLOBAL))[:1000]
    shoppers = _shoppers_with_history(bundle, 200, 1, seed)
    out = []
    for i in range(n):
        user, _ = shoppers[i % len(shoppers)]
        items = rng.choice(pool, min(size, len(pool)), replace=False)
        out.append(RecommendQuery("home", user_id=user, candidates=[bundle.items.id_of(int(r)) for r in items]))
    return out


def gorse_queries(bundle: Bundle, size: int, n: int, seed: int) -> list[RecommendQuery]:
    shoppers = _shoppers_with_history(bundle, 200, GORSE_HISTORY, seed)
    return [RecommendQuery("home", user_id=shoppers[i % len(shoppers)][0], count=size) for i in range(n)]


def item_based_settings(size: int) -> Settings:
    """Gorse's item-based recommender in Aisle's terms: the co-visitation source over the last 10
    items (2n neighbours), hard filters, no ranker, no diversity re-ranking."""
    base = Settings()
    retrieval = msgspec.structs.replace(base.retrieval, home=[SourceSpec("covisit", 2 * size)], recent_anchors=GORSE_HISTORY)
    return msgspec.structs.replace(
        base,
        retrieval=retrieval,
        ranking=msgspec.structs.replace(base.ranking, enabled=False),
        rerank=msgspec.structs.replace(base.rerank, mmr_lambda=1.0, max_per_brand=0, max_per_seller=0, max_per_category=0, explore_slots=[]),
        limits=msgspec.structs.replace(base.limits, max_count=max(GORSE_SIZES)),
    )


def wide_settings() -> Settings:
    """Default engine settings, except that count may go to 1,000 (Gorse's largest n)."""
    base = Settings()
    return msgspec.structs.replace(base, limits=msgspec.structs.replace(base.limits, max_count=max(GORSE_SIZES)))


# ---------------------------------------------------------------------------------------------
# Sequential measurement: in process and over HTTP


def in_process(rec: Recommender, queries: list[RecommendQuery], now: int, warmup: int = 100) -> dict:
    for q in queries[:warmup]:
        rec.run(q, now=now)
    ms = np.zeros(len(queries))
    counts = np.zeros(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        response, _ = rec.run(q, now=now)
        ms[i] = (time.perf_counter() - t0) * 1e3
        counts[i] = len(response.items)
    return {"ms": _summary(ms), "items_mean": round(float(counts.mean()), 1), "requests": len(queries)}


def over_http(port: int, queries: list[RecommendQuery], warmup: int = 100) -> dict:
    """One keep-alive connection, one request at a time (both peers' clients are sequential)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bodies = [msgspec.json.encode(q) for q in queries]
    headers = {"content-type": "application/json"}
    ms = np.zeros(len(queries))
    counts = np.zeros(len(queries))
    errors = 0
    try:
        for body in bodies[:warmup]:
            conn.request("POST", "/v1/recommendations", body, headers)
            conn.getresponse().read()
        for i, body in enumerate(bodies):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/recommendations", body, headers)
            reply = conn.getresponse()
            data = reply.read()
            ms[i] = (time.perf_counter() - t0) * 1e3
            if reply.status != 200:
                errors += 1
                continue
            counts[i] = len(json.loads(data)["items"])
    finally:
        conn.close()
    return {"ms": _summary(ms), "items_mean": round(float(counts.mean()), 1), "errors": errors, "requests": len(queries)}


def _settings_toml(settings: Settings, path: Path) -> Path:
    """The few keys these workloads change, as a TOML file for `aisle serve --settings`."""
    lines = ["[limits]", f"max_count = {settings.limits.max_count}", "", "[ranking]", f"enabled = {str(settings.ranking.enabled).lower()}", "", "[rerank]"]
    rr = settings.rerank
    lines += [f"mmr_lambda = {rr.mmr_lambda}", f"max_per_brand = {rr.max_per_brand}", f"max_per_seller = {rr.max_per_seller}",
              f"max_per_category = {rr.max_per_category}", f"explore_slots = {list(rr.explore_slots)}", "", "[retrieval]",
              f"recent_anchors = {settings.retrieval.recent_anchors}"]
    lines += ["home = [" + ", ".join(f'{{name = "{s.name}", k = {s.k}}}' for s in settings.retrieval.home) + "]"]
    path.write_text("\n".join(lines) + "\n")
    load(path)  # the server would refuse it otherwise: fail here, with the file named
    return path


def _server(bundles: Path, settings: Settings, workdir: Path) -> ServerProcess:
    toml = _settings_toml(settings, workdir / f"settings-{time.monotonic_ns()}.toml")
    server = ServerProcess(target("aisle"), bundles, workers=1, extra=["--settings", str(toml)])
    server.wait_ready()
    return server


# ---------------------------------------------------------------------------------------------
# The workloads


def run_metarank(bundles: Path, bundle: Bundle, n: int, seed: int, http_too: bool, workdir: Path) -> dict:
    rec = Recommender(bundle, Settings(), live=None)
    rec.warm()
    now = int(bundle.manifest.dims["end_ts"])
    rows = []
    server = _server(bundles, Settings(), workdir) if http_too else None
    try:
        for size in METARANK_SIZES:
            queries = metarank_queries(bundle, size, n, seed + size)
            row = {"items": size, "in_process": in_process(rec, queries, now)}
            if server is not None:
                row["http"] = over_http(server.port, queries)
            rows.append(row)
    finally:
        if server is not None:
            server.stop()
    return {"workload": "re-rank N given items for a known shopper, sequential", "requests_per_size": n, "sizes": rows,
            "published": PUBLISHED["metarank"]}


def run_gorse(bundles: Path, bundle: Bundle, n: int, seed: int, http_too: bool, workdir: Path) -> dict:
    now = int(bundle.manifest.dims["end_ts"])
    rows = []
    full = Recommender(bundle, wide_settings(), live=None)
    full.warm()
    for size in GORSE_SIZES:
        queries = gorse_queries(bundle, size, n, seed + size)
        item_based = Recommender(bundle, item_based_settings(size), live=None)
        item_based.warm()
        row = {"n": size, "item_based": {"in_process": in_process(item_based, queries, now)},
               "full_home": {"in_process": in_process(full, queries, now)}, "published_ms_mean": PUBLISHED["gorse"][size]}
        item_based.close()
        if http_too:
            server = _server(bundles, item_based_settings(size), workdir)
            try:
                row["item_based"]["http"] = over_http(server.port, queries)
            finally:
                server.stop()
        rows.append(row)
    if http_too:
        server = _server(bundles, wide_settings(), workdir)
        try:
            for row in rows:
                row["full_home"]["http"] = over_http(server.port, gorse_queries(bundle, row["n"], n, seed + row["n"]))
        finally:
            server.stop()
    return {"workload": f"item-based top-n for a shopper with {GORSE_HISTORY} history items, sequential", "requests_per_size": n, "sizes": rows}


def run_filtered(bundle: Bundle, n: int, seed: int) -> dict:
    """In process: the stock flags are replaced by random ones for each share (the live feed's
    shared memory would hold them in production; the engine reads either the same way)."""
    from bench.workload import draw

    rec = Recommender(bundle, Settings(), live=None)
    rec.warm()
    view = rec.view
    now = int(bundle.manifest.dims["end_ts"])
    original = view.in_stock
    rng = np.random.default_rng(seed)
    out = []
    try:
        for share in STOCK_SHARES:
            view.in_stock = (rng.random(view.n_items) < share).astype(np.uint8)
            for surface, source in (("pdp", "similar"), ("home", "ann")):
                queries = draw(bundle, surface, n, seed=seed + int(share * 1000))
                for q in queries[:50]:
                    rec.run(q, now=now)
                ms = np.zeros(len(queries))
                short = leaked = 0
                from_vectors = shown = 0
                for i, q in enumerate(queries):
                    t0 = time.perf_counter()
                    response, ctx = rec.run(q, now=now)
                    ms[i] = (time.perf_counter() - t0) * 1e3
                    served = bundle.items.rows_of([it.sku for it in response.items])
                    leaked += int((view.in_stock[served] == 0).sum())
                    short += len(response.items) < (q.count or 20)
                    shown += len(response.items)
                    from_vectors += sum(it.source in ("ann", "similar") for it in response.items)
                # What plain post-filtering would leave: HNSW top-k, then drop out-of-stock hits.
                k = next(s.k for s in rec.settings.retrieval.plan(surface) if s.name == source)
                survivors = []
                for q in queries[:200]:
                    query = _query_vector(rec, q, now)
                    if query is not None:
                        rows, _ = view.index.search(query, k)
                        survivors.append(int((view.in_stock[rows] != 0).sum()))
                out.append({
                    "in_stock_share": share, "surface": surface, "ms": _summary(ms), "requests": len(queries),
                    "short_responses": int(short), "out_of_stock_served": leaked,
                    "slate_share_from_vectors": round(from_vectors / max(shown, 1), 3),
                    "vector_k": k,
                    "post_filter_in_stock_of_k_mean": round(float(np.mean(survivors)), 1) if survivors else None,
                })
    finally:
        view.in_stock = original
    return {"workload": "similar items (pdp) and picked for you (home), count 20, random stock flags", "items": bundle.n_items, "rows": out}


def _query_vector(rec: Recommender, q: RecommendQuery, now: int) -> np.ndarray | None:
    ctx = rec.context(q, now)
    if q.surface == "pdp":
        return np.asarray(rec.view.vectors[int(ctx.anchors[0])], dtype=np.float32)
    rec.resolve(ctx, q.user_id, None)
    return ctx.user_vector


def run(bundles: Path, only: set[str], n: int, seed: int, http_too: bool) -> dict:
    bundle = open_bundle(bundles / "current" if (bundles / "current").exists() else bundles, verify="sizes")
    result = {
        "benchmark": "peers",
        "environment": environment(),
        "bundle": {"id": bundle.build_id, "items": bundle.n_items, "users": len(bundle.users), "path": str(bundle.root)},
        "http": "aisle serve, 1 worker, one keep-alive connection, sequential" if http_too else None,
    }
    with tempfile.TemporaryDirectory(prefix="aisle-peers-") as tmp:
        workdir = Path(tmp)
        if "metarank" in only:
            result["metarank"] = run_metarank(bundles, bundle, n, seed, http_too, workdir)
        if "gorse" in only:
            result["gorse"] = run_gorse(bundles, bundle, n, seed, http_too, workdir)
    if "filtered" in only:
        result["filtered_ann"] = run_filtered(bundle, min(n, 2000), seed)
    return result


def table(result: dict) -> str:
    env = result["environment"]
    lines = [f"bundle {result['bundle']['id']} ({result['bundle']['items']:,} items), commit {env['commit']}, {env['cpu']} × {env['cores']}", ""]
    if "metarank" in result:
        m = result["metarank"]
        lines += [f"Metarank's workload ({m['requests_per_size']} sequential requests per size); published: {m['published']}", "",
                  "| items | in-process p50 ms | in-process p99 ms | HTTP p50 ms | p80 | p90 | p95 | p99 |", "|---|---|---|---|---|---|---|---|"]
        for row in m["sizes"]:
            ip, h = row["in_process"]["ms"], row.get("http", {}).get("ms", {})
            lines.append(f"| {row['items']} | {ip['p50']} | {ip['p99']} | " + " | ".join(str(h.get(f"p{p}", "–")) for p in PERCENTILES) + " |")
        lines.append("")
    if "gorse" in result:
        g = result["gorse"]
        lines += [f"Gorse's RecommendFromItemBased/n ({g['requests_per_size']} sequential requests per n); mean ms per request", "",
                  "| n | Gorse published (MySQL/Redis) | item-based, HTTP | item-based, in process | full home pipeline, HTTP | full home, in process | items returned |",
                  "|---|---|---|---|---|---|---|"]
        for row in g["sizes"]:
            ib, fh = row["item_based"], row["full_home"]
            lines.append(f"| {row['n']} | {row['published_ms_mean']} | {ib.get('http', {}).get('ms', {}).get('mean', '–')} | {ib['in_process']['ms']['mean']} | "
                         f"{fh.get('http', {}).get('ms', {}).get('mean', '–')} | {fh['in_process']['ms']['mean']} | {ib['in_process']['items_mean']} |")
        lines.append("")
    if "filtered_ann" in result:
        f = result["filtered_ann"]
        lines += [f"Filtered ANN over {f['items']:,} items ({f['workload']})", "",
                  "| in stock | surface | p50 ms | p99 ms | short responses | out-of-stock served | slate from vector sources | plain post-filter: in stock of k |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in f["rows"]:
            lines.append(f"| {r['in_stock_share']:.0%} | {r['surface']} | {r['ms']['p50']} | {r['ms']['p99']} | {r['short_responses']} of {r['requests']} | "
                         f"{r['out_of_stock_served']} | {r['slate_share_from_vectors']:.0%} | {r['post_filter_in_stock_of_k_mean']} of {r['vector_k']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    p.add_argument("--bundles", required=True, help="bundle root holding `current` (or a bundle dir for in-process only)")
    p.add_argument("--requests", type=int, default=5000, help="sequential requests per size (Metarank's: 5,000)")
    p.add_argument("--only", default="metarank,gorse,filtered", help="comma-separated: metarank, gorse, filtered")
    p.add_argument("--no-http", action="store_true", help="in process only (no server started)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - {"metarank", "gorse", "filtered"}
    if unknown:
        p.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    result = run(Path(args.bundles), only, args.requests, args.seed, not args.no_http)
    return publish(result, args.json, table(result))


if __name__ == "__main__":
    raise SystemExit(main())
