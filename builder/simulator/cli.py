"""`aisle simulate`: simulated shoppers against a running engine, or the feedback-loop study.

    aisle simulate --data STORE --url http://127.0.0.1:8000 --sessions 2000 [--seed S]
                   [--concurrency 2] [--count N] [--taste-shift X] [--shoppers N] [--duration S]
                   [--inventory tcp://127.0.0.1:5556,tcp://127.0.0.1:5557] [--churn 1.0]
                   [--flush page|session] [--out summary.json] [--strict]
    aisle simulate --data STORE --rounds 5 --sessions 2000 --work DIR [--settings engine.toml]
                   [--build-config build.toml] [--out loop.json]

With --inventory the simulator binds the inventory publisher on those endpoints (PUB, then the
snapshot/control ROUTER; given only PUB, the snapshot endpoint is the next port), and the engine's
[inventory] settings must name the same two. With --rounds it starts its own `aisle serve` and
rebuilds between rounds (builder.simulator.loop).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the parser is built for every `aisle` command: import the simulator only to run it
    from builder.simulator.summary import SimulationSummary

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "simulate",
        help="simulated shoppers of a synthetic store drive a running engine over HTTP (or, with --rounds, a feedback-loop study)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--data", required=True, help="synthetic store directory (from `aisle synth`, with truth/)")
    s.add_argument("--url", help="the engine, e.g. http://127.0.0.1:8000 (not with --rounds)")
    s.add_argument("--sessions", type=int, help="sessions to run (per round with --rounds)")
    s.add_argument("--duration", type=float, help="stop starting sessions after this many seconds")
    s.add_argument("--shoppers", type=int, help="draw sessions from only this many shoppers (default: all, by activity)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--concurrency", type=int, default=2, help="threads, each with its own keep-alive connection (default 2)")
    s.add_argument("--count", type=int, help="slate size (default: the store's)")
    s.add_argument("--taste-shift", type=float, default=0.0, help="X in [0, 1]: move shoppers' tastes towards another shopper's (default 0)")
    s.add_argument("--trend-leaf", help="with --taste-shift: the leaf category path tastes move towards (default: one drawn from the seed)")
    s.add_argument("--inventory", metavar="PUB[,SNAPSHOT]", help="bind the inventory publisher here and change stock, prices and SKUs while running")
    s.add_argument("--churn", type=float, default=1.0, help="multiplier of the inventory change rates (default 1)")
    s.add_argument("--grace-ms", type=float, default=500.0, help="a sold-out item served within this long of the change is no violation (default 500)")
    s.add_argument("--flush", choices=["page", "session"], default="page",
                   help="post events before each next page, as a storefront does (default), or once per session (fewer, larger posts)")
    s.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for the engine to be ready (default 120)")
    s.add_argument("--item-counts", action="store_true", help="include impressions per SKU in the JSON summary")
    s.add_argument("--out", help="write the summary (JSON) here")
    s.add_argument("--strict", action="store_true", help="exit 1 when any hard-rule violation or HTTP error was seen")
    s.add_argument("--rounds", type=int, help="feedback-loop study: this many serve → simulate → rebuild rounds")
    s.add_argument("--work", help="with --rounds: a new directory for bundles, state and merged stores")
    s.add_argument("--settings", help="with --rounds: engine settings TOML for the server it starts")
    s.add_argument("--build-config", help="with --rounds: build config TOML (default: the defaults)")
    s.set_defaults(func=run)
    return s


def inventory_endpoints(value: str) -> tuple[str, str]:
    """'PUB,SNAPSHOT' or 'PUB' (snapshot on the next port) → (PUB, SNAPSHOT)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 1:
        url = urlsplit(parts[0])
        if url.scheme == "tcp" and url.port is not None:
            return parts[0], f"tcp://{url.hostname}:{url.port + 1}"
    raise ValueError(f"--inventory wants PUB,SNAPSHOT endpoints (or a tcp://host:port PUB), got {value!r}")


def _json(value: object) -> bytes:
    import msgspec

    return msgspec.json.format(msgspec.json.encode(value)) + b"\n"


def _write(path: str, data: bytes) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)


def run(args: argparse.Namespace) -> int:
    if args.rounds is not None:
        return _run_loop(args)
    from builder.simulator.inventory import Churn
    from builder.simulator.run import SimulationError, simulate
    from builder.simulator.world import World, WorldError

    if not args.url:
        print("aisle simulate: give --url of a running engine (or --rounds for the feedback-loop study)", file=sys.stderr)
        return EXIT_USAGE
    if args.sessions is None and args.duration is None:
        print("aisle simulate: give --sessions, --duration or both", file=sys.stderr)
        return EXIT_USAGE
    try:
        inventory = inventory_endpoints(args.inventory) if args.inventory else None
        world = World.load(args.data)
        progress = _progress if sys.stderr.isatty() else None
        summary = simulate(
            world, args.url, sessions=args.sessions, seed=args.seed, concurrency=args.concurrency, taste_shift=args.taste_shift,
            trend_leaf=args.trend_leaf, inventory=inventory, count=args.count, shoppers=args.shoppers, duration_s=args.duration,
            churn=Churn().scaled(args.churn), grace_s=args.grace_ms / 1000.0, flush_each_page=args.flush == "page", ready_timeout_s=args.ready_timeout,
            keep_item_counts=args.item_counts, progress=progress,
        )  # fmt: skip
    except (ValueError, SimulationError, WorldError) as exc:
        print(f"aisle simulate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.out:
        _write(args.out, _json(summary))
    print(_describe(summary))
    bad = sum(summary.violations.values()) + summary.http_errors
    return EXIT_FAILED if args.strict and bad else 0


def _progress(stage: str, done: int, total: int) -> None:
    print(f"\r{stage}: {done:,}" + (f"/{total:,}" if total else ""), end="", file=sys.stderr, flush=True)


def _describe(s: SimulationSummary) -> str:
    surfaces = ", ".join(f"{k} {v:,}" for k, v in s.requests_by_surface.items())
    events = ", ".join(f"{k} {v:,}" for k, v in s.events_by_type.items())
    violations = ", ".join(f"{k} {v}" for k, v in s.violations.items()) or "none"
    arms = "; ".join(
        f"{k}: {v.requests:,} requests, ctr {v.clicks / v.impressions if v.impressions else 0:.4f}, {v.purchases} purchases, revenue {v.revenue:,.2f}"
        for k, v in s.variants.items()
    )
    lines = [
        f"{s.sessions:,} sessions of {s.shoppers:,} shoppers, {s.requests:,} slates ({surfaces}) in {s.wall_s:.1f}s: {s.requests_per_s:,.1f} requests/s",
        f"events: {events}; accepted {s.events_accepted:,}, duplicates {s.events_duplicates}, rejected {s.events_rejected}, unsent {s.events_unsent}",
        f"ctr {s.ctr:.4f}, add to cart {s.add_to_cart:,}, purchases {s.purchases:,} (sold out at checkout {s.purchases_sold_out}), revenue {s.revenue:,.2f}",
        f"impressions gini {s.impression_gini:.3f}, catalog coverage {s.catalog_coverage:.3f}; latency ms: slates {s.latency_ms}, events {s.event_latency_ms}",
        f"variants: {arms}",
        f"HTTP: {s.http_status}, errors {s.http_errors}, retries {s.retries}; violations: {violations}",
    ]
    if s.inventory is not None:
        inv = s.inventory
        lines.append(f"inventory: stock-outs {inv.stock_out}, restocks {inv.restock}, prices {inv.price}, discounts {inv.discount}, "
                     f"new SKUs {inv.new_sku} (shown {s.new_sku_impressions:,} times), retired {inv.retire}")  # fmt: skip
    return "\n".join(lines)


def _run_loop(args: argparse.Namespace) -> int:
    from builder.simulator.loop import LoopError, feedback_loop
    from builder.simulator.world import WorldError

    if not args.work or args.sessions is None:
        print("aisle simulate --rounds: give --work DIR and --sessions N (per round)", file=sys.stderr)
        return EXIT_USAGE
    if args.url or args.inventory:
        print("aisle simulate --rounds starts its own engine: leave out --url and --inventory", file=sys.stderr)
        return EXIT_USAGE
    config = None
    if args.build_config:
        from builder.config import load_build_config

        config = load_build_config(Path(args.build_config))
    settings = Path(args.settings).read_text(encoding="utf-8") if args.settings else ""
    try:
        results = feedback_loop(args.data, args.work, args.rounds, args.sessions, settings, args.seed, build_config=config,
                                concurrency=args.concurrency, count=args.count)  # fmt: skip
    except (LoopError, WorldError) as exc:
        print(f"aisle simulate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.out:
        _write(args.out, _json(results))
    for r in results:
        print(f"round {r.round}: gini {r.impression_gini:.3f}, coverage {r.catalog_coverage:.3f}, top-1% share {r.top1_share:.3f}, "
              f"ctr {r.ctr:.4f}, purchases {r.purchases}, revenue {r.revenue:,.2f} ({r.bundle})")  # fmt: skip
    return 0
