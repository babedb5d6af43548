"""`aisle`: the one command-line entry point.

Subcommands import what they need lazily, so `aisle inspect` does not load torch and a serving
host does not need the build extras.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1


def _cmd_synth(args: argparse.Namespace) -> int:
    from builder.progress import ConsoleProgress
    from builder.synth import SCALES, generate

    if args.scale not in SCALES:
        print(f"aisle synth: unknown scale {args.scale!r}; choose from {', '.join(SCALES)}", file=sys.stderr)
        return EXIT_USAGE
    end = None
    if args.end is not None:
        import time
        from datetime import datetime, timezone

        try:
            end = int(time.time()) if args.end == "now" else int(datetime.fromisoformat(args.end).replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            print(f"aisle synth: --end must be 'now' or a date such as 2026-06-01; got {args.end!r}", file=sys.stderr)
            return EXIT_USAGE
    s = generate(scale=args.scale, seed=args.seed, out=Path(args.out), progress=ConsoleProgress(), overwrite=args.overwrite, end=end,
                 purchase_delay_days=args.purchase_delay_days, slate_order=args.slate_order)
    by_type = ", ".join(f"{name} {count:,}" for name, count in s.events_by_type.items())
    print(f"{s.out}: '{s.scale}' store, seed {s.seed}: {s.items:,} items, {s.users:,} shoppers, {s.sessions:,} sessions, "
          f"{s.events:,} events ({by_type}) in {s.elapsed_s:.1f}s; hidden tastes in {s.truth_dir}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from builder.adapters.amazon import convert_amazon

    summary = convert_amazon(src=Path(args.src), out=Path(args.out), overwrite=args.overwrite)
    print(f"{args.out}: " + ", ".join(f"{k} {v:,}" for k, v in summary.items()))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from builder.build import build, screening_summary
    from builder.config import load_build_config

    config = load_build_config(Path(args.config) if args.config else None)
    data = Path(args.data)
    if args.events_log:
        import tempfile

        from builder.adapters.eventlog import merge_events

        with tempfile.TemporaryDirectory(prefix="aisle-build-") as tmp:
            merged = Path(tmp) / "store"
            counts = merge_events(data, Path(args.events_log), merged)
            print(f"with the live event log: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), file=sys.stderr)
            result = build(merged, Path(args.out), config, publish=not args.no_publish, allow_worse=args.allow_worse)
    else:
        result = build(data, Path(args.out), config, publish=not args.no_publish, allow_worse=args.allow_worse)
    # stderr: stdout is the bundle's path alone, for scripts.
    print(f"aisle build: {screening_summary(result.manifest.counts)}", file=sys.stderr)
    print(result.path)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from builder.config import load_build_config
    from builder.evaluate.evaluate import evaluate
    from engine.settings import load

    config = load_build_config(Path(args.config) if args.config else None)
    settings = load(Path(args.settings) if args.settings else None)
    result = evaluate(
        Path(args.data), config, settings, protocol=args.protocol, which=args.split, days=args.days, k=args.k,
        max_users=args.max_users, work_dir=Path(args.workdir) if args.workdir else None, ablation=args.ablation,
        bootstrap=args.bootstrap, seed=args.seed, dataset=args.dataset, keep_bundle=args.keep_bundle,
        bundle_path=Path(args.bundle) if args.bundle else None,
    )
    result["run"]["command"] = "aisle " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("aisle") else "aisle eval …"
    if args.json:
        _write_text(Path(args.json), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if args.report:
        from builder.evaluate.report import write_report

        write_report(result, Path(args.report))
    m = result["metrics"]
    rows = [("full", m)] + [(name, b["metrics"]) for name, b in result["baselines"].items()]
    print(f"{result['dataset']} {result['protocol']} ({result['split']}), {result['users']:,} shoppers, k={result['k']}")
    for name, row in rows:
        cells = "  ".join(f"{key} {row[key]:.4f}" for key in ("HR@10", "NDCG@10", "HR@20", "NDCG@20") if key in row)
        print(f"  {name:<46} {cells}")
    return 0


def _write_text(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a result file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from builder.inspect import describe

    print(describe(Path(args.bundle), verify=args.verify, as_json=args.json))
    return 0


def _cmd_bundles(args: argparse.Namespace) -> int:
    import msgspec

    from builder import bundles as b

    protect = frozenset(getattr(args, "protect", None) or [])
    if getattr(args, "settings", None):
        protect |= b.pinned_by_settings(Path(args.settings))
    root = Path(args.root)
    if args.action == "list":
        listing = b.list_bundles(root, protect)
        if args.json:
            print(msgspec.json.format(msgspec.json.encode(listing), indent=2).decode())
            return 0
        print(f"{'':2}{'build id':<36} {'created (UTC)':<20} {'items':>10} {'shoppers':>10} {'size MiB':>9}")
        for x in listing.bundles:
            mark = "*" if x.current else ("p" if x.pinned else "")
            print(f"{mark:<2}{x.build_id:<36} {x.created_at[:19]:<20} {x.items:>10,} {x.users:>10,} {x.size_bytes / 2**20:>9.1f}")
        print(f"{len(listing.bundles)} bundle(s) in {listing.root}; * current, p pinned")
        for u in listing.unreadable:
            print(f"not a bundle (left alone): {u.name}: {u.why}")
        for name in listing.staging:
            print(f"staging: {name} (a build running, or one that died: `aisle bundles prune` removes it once no build holds it)")
        return 0
    if args.action == "use":
        before = b.use_bundle(root, args.build_id)
        print(f"{root / 'current'} → {args.build_id} (was {before or 'nothing'}); serving workers swap to it within `swap_check_seconds` (after verifying it per `verify_on_swap`)")
        return 0
    report = b.prune_bundles(root, args.keep, protect, dry_run=args.dry_run)
    verb = "would remove" if report.dry_run else "removed"
    for build_id in report.removed:
        print(f"{verb} {build_id}")
    for name in report.staging_removed:
        print(f"removed {name} (a dead build's staging directory)")
    print(f"{verb} {len(report.removed)} bundle(s), {report.freed_bytes / 2**20:.1f} MiB; kept {len(report.kept)}: "
          + (", ".join(report.kept) or "none"))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from engine.server import serve
    from engine.settings import load, with_server

    overrides = {k: v for k, v in (("bundles", args.bundles), ("state_dir", args.state)) if v is not None}
    settings = load(Path(args.settings) if args.settings else None, **overrides)
    server = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None}
    serve(with_server(settings, **server) if server else settings)
    return 0


def _cmd_inventory(args: argparse.Namespace) -> int:
    import signal
    import threading

    from engine.inventory import publisher as pub
    from engine.inventory import wire

    if args.action == "serve":
        publisher = pub.InventoryPublisher(args.pub, args.snapshot, args.id)
        if args.load:
            with open(args.load, "rb") as fh:
                deltas = [wire.decode_json_delta(line) for line in fh if line.strip() and not line.startswith(b"#")]
            publisher.load(deltas)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print(f"inventory publisher {args.id}: updates on {publisher.pub_endpoint}, snapshots and publish requests on {publisher.snapshot_endpoint}", file=sys.stderr)
        try:
            publisher.serve_forever(stop)
        finally:
            publisher.close()
        return 0
    if args.action == "publish":
        report = pub.publish_from_file(Path(args.file), args.to)
    else:
        if args.retire:
            delta: wire.Delta = wire.Retire(args.sku)
        elif args.price is not None:
            delta = wire.Price(args.sku, args.price)
        elif args.discount is not None:
            delta = wire.Discount(args.sku, args.discount)
        elif args.in_stock is not None:
            delta = wire.Stock(args.sku, args.in_stock == "true", args.qty if args.qty is not None else (1 if args.in_stock == "true" else 0))
        else:
            print("aisle inventory set: give one of --in-stock, --price, --discount, --retire", file=sys.stderr)
            return EXIT_USAGE
        report = pub.publish_one(delta, args.to)
    print(report)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from builder.demo import run_demo

    return run_demo(scale=args.scale, workdir=Path(args.workdir), seed=args.seed, rebuild=args.rebuild, port=args.port, once=args.once)


def _cmd_bench(args: argparse.Namespace) -> int:
    import os

    # Serving workers are single-threaded (engine/server.py); so is what the benchmarks measure
    # in process. Set before numpy is first imported.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    from bench.cli import main as bench_main

    return bench_main(list(args.args))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aisle", description="Aisle: recommendations for storefronts, from one host.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate a seeded synthetic store in the canonical schema")
    s.add_argument("--scale", default="tiny", help="micro | tiny | small | 1m | 5m (default tiny)")
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--out", required=True, help="directory to create (must not exist or be empty)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing store in --out")
    s.add_argument("--purchase-delay-days", type=float, default=0.0,
                   help="mean days from checkout to the purchase event (exponential); purchases due after the log's end "
                        "are not logged, as a real log's late conversions are not (default 0: at checkout)")
    s.add_argument("--slate-order", choices=("draw", "popularity", "price"), default="draw",
                   help="how the logging policy lists a slate's items: in draw order (default) or by a noisy score the "
                        "model can see (popularity, price), so the slot confounds the features as under a production ranker")
    s.add_argument("--end", help="the day the event log ends: 'now' (a store `aisle simulate` continues) or YYYY-MM-DD "
                                 "(default: 2026-06-01, so a (scale, seed) store is the same everywhere)")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("import", help="convert a public dataset to the canonical schema")
    s.add_argument("format", choices=["amazon"], help="amazon: the S3-Rec Amazon review sequences (../shared/data)")
    s.add_argument("src", help="dataset directory")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_import)

    s = sub.add_parser("build", help="build, verify and publish a bundle from a canonical store")
    s.add_argument("--data", required=True, help="directory with catalog/events/users (.parquet or .csv)")
    s.add_argument("--out", required=True, help="bundle root: writes ROOT/<build_id>/ and moves ROOT/current")
    s.add_argument("--config", help="build config TOML (see docs/build.example.toml)")
    s.add_argument("--no-publish", action="store_true", help="build and verify, but leave ROOT/current alone")
    s.add_argument("--allow-worse", action="store_true",
                   help="publish even if the evaluation gate finds the bundle worse than the current one by more than gate.margin")
    s.add_argument("--events-log", metavar="STATE_DIR", help="also learn from the engine's live event log in STATE_DIR (aisle serve --state)")
    s.set_defaults(func=_cmd_build)

    s = sub.add_parser("eval", help="hold out, build, and score the served pipeline and baselines (docs/evaluation.md)")
    s.add_argument("--data", required=True, help="canonical store directory (aisle synth / aisle import)")
    s.add_argument("--protocol", default="auto", choices=["auto", "loo-full", "temporal"],
                   help="loo-full: last item per shopper, ranked against all items (the published protocol); "
                        "temporal: the next new item after a cut-off; auto: loo-full when events carry a split column")
    s.add_argument("--split", default="test", choices=["test", "valid"], help="loo-full: the last (test) or second-to-last (valid) item")
    s.add_argument("--days", type=float, default=7.0, help="temporal: days held out after the cut-off (default 7)")
    s.add_argument("--k", type=int, default=20, help="slate size asked of the engine; metrics @5/@10/@20 up to k (default 20)")
    s.add_argument("--max-users", type=int, help="evaluate a seeded sample of at most this many held-out shoppers")
    s.add_argument("--config", help="build config TOML (default: the builder's defaults)")
    s.add_argument("--settings", help="engine settings TOML (default: the engine's defaults)")
    s.add_argument("--ablation", action="store_true", help="also score the full pipeline with each ingredient taken out")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dataset", help="name in the report (default: the data directory's name)")
    s.add_argument("--workdir", help="where the held-out bundle is built (default: beside --data)")
    s.add_argument("--keep-bundle", action="store_true", help="keep the held-out bundle after scoring")
    s.add_argument("--bundle", help="score this held-out bundle (from an earlier --keep-bundle run on the same data and split) instead of building one")
    s.add_argument("--json", help="write the result as JSON here")
    s.add_argument("--report", help="write a Markdown report (with PNG plots beside it) here")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("inspect", help="print a bundle's manifest, parts and sizes")
    s.add_argument("bundle", help="a bundle directory, ROOT/current, or ROOT")
    s.add_argument("--verify", action="store_true", help="check every file's sha256 (default: sizes only)")
    s.add_argument("--json", action="store_true", help="print the manifest as JSON")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("bundles", help="list the bundles under a root, roll `current` back or forward, prune old ones")
    bun = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("list", "every finished bundle, newest first, and what else the root holds"),
                       ("use", "verify a bundle (every sha256) and point `current` at it: a rollback"),
                       ("prune", "remove bundles beyond the newest --keep, never `current` or a pinned one; and dead builds' staging dirs")):
        a = bun.add_parser(name, help=text)
        a.add_argument("--root", default="bundles", help="the bundle root holding `current` (default: bundles)")
        if name == "use":
            a.add_argument("build_id", help="the bundle to serve (a directory name under the root)")
            continue
        a.add_argument("--settings", help="engine settings TOML: the bundles its experiment arms pin are protected")
        a.add_argument("--protect", action="append", metavar="BUILD_ID", help="never prune this bundle (repeatable)")
        if name == "list":
            a.add_argument("--json", action="store_true", help="print the listing as JSON")
        else:
            a.add_argument("--keep", type=int, default=5, help="how many of the newest bundles to keep besides current and pinned (default 5)")
            a.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    s.set_defaults(func=_cmd_bundles)

    s = sub.add_parser("serve", help="serve recommendations over HTTP (Granian, N worker processes)")
    s.add_argument("--bundles", help="bundle root holding `current` (default from settings: bundles)")
    s.add_argument("--workers", type=int, help="worker processes, one per core (default 2)")
    s.add_argument("--host", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000)")
    s.add_argument("--state", help="directory for the live store and metrics (default: state)")
    s.add_argument("--settings", help="engine settings TOML (see docs/settings.example.toml)")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("inventory", help="live stock/price/new-SKU deltas over ZeroMQ (docs/inventory-wire.md)")
    inv = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = inv.add_parser("serve", help="run the reference inventory publisher")
    a.add_argument("--pub", default="tcp://127.0.0.1:5556", help="PUB endpoint to bind for updates")
    a.add_argument("--snapshot", default="tcp://127.0.0.1:5557", help="ROUTER endpoint to bind for snapshots and publish requests")
    a.add_argument("--id", default="inventory", help="publisher id carried by every batch")
    a.add_argument("--load", help="JSON-lines file of deltas: the authoritative state at start")
    a = inv.add_parser("publish", help="publish a JSON-lines file of deltas through a running publisher")
    a.add_argument("file")
    a.add_argument("--to", default="tcp://127.0.0.1:5557", help="the publisher's snapshot/control endpoint")
    a = inv.add_parser("set", help="publish one delta through a running publisher")
    a.add_argument("--sku", required=True)
    a.add_argument("--in-stock", choices=["true", "false"])
    a.add_argument("--qty", type=int)
    a.add_argument("--price", type=float)
    a.add_argument("--discount", type=float)
    a.add_argument("--retire", action="store_true")
    a.add_argument("--to", default="tcp://127.0.0.1:5557")
    s.set_defaults(func=_cmd_inventory)

    s = sub.add_parser("bench", help="benchmarks: pipeline, http, peers, baseline, profile, rss, freshness, ranker, candidates",
                       add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER, help="NAME [options]; `aisle bench` lists them")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("demo", help="synthesise a store, build it, and show recommendations")
    s.add_argument("--scale", default="small")
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--workdir", default=".aisle", help="where the demo keeps its data and bundles")
    s.add_argument("--rebuild", action="store_true", help="build a new bundle even if one exists")
    s.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    s.add_argument("--once", action="store_true", help="show the slates, then stop the server and exit")
    s.set_defaults(func=_cmd_demo)

    from builder.experiments.cli import add_parser as add_analyze
    from builder.simulator.cli import add_parser as add_simulate

    add_analyze(sub)
    add_simulate(sub)
    return p


# Errors that mean "the input or the environment is wrong", reported in one line. Looked up in
# sys.modules after the fact, so `aisle serve` never imports the training stack just to name them.
KNOWN_ERRORS = (
    ("artifacts.errors", "BundleError"),
    ("builder.config", "ConfigError"),
    ("engine.settings", "SettingsError"),
    ("builder.ingest.errors", "InputError"),
    ("builder.build", "BuildError"),
    ("builder.evaluate.evaluate", "EvalError"),
    ("builder.gate", "GateRefused"),
    ("builder.bundles", "BundlesError"),
    ("builder.index", "IndexBuildError"),
    ("builder.ranker", "RankerBuildError"),
    ("engine.eventlog", "EventLogError"),
    ("engine.inventory.wire", "WireError"),
    ("engine.inventory.publisher", "PublishError"),
)


def _known(exc: BaseException) -> bool:
    if isinstance(exc, (FileExistsError, FileNotFoundError)):
        return True
    for module, name in KNOWN_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"aisle {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _known(exc):
            raise
        print(f"aisle {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
