"""The feedback-loop study: what serving does to the data the next bundle learns from.

Round r: the engine serves the current bundle to `sessions_per_round` simulated sessions; their
events (in the engine's event log) are merged into the store (builder.adapters.eventlog
.merge_events: the store's events plus the log's, each event once); a new bundle is built from
the merged store and published; the running engine swaps to it (the loop waits until every
answer names the new build). Popular items get shown, clicked and bought, so they look better
still to the next build: impressions concentrate unless exploration keeps showing the tail.

Per round it records what that round's slates did (from the simulator's own counts of what it was
served, so no coupling to the engine's slate log): the Gini coefficient of impressions over the
catalog, catalog coverage, CTR, add-to-cart, purchases, revenue. Run it twice — with the default
`explore_slots` and with `explore_slots = []` under `[rerank]` in the settings — to compare.

One `aisle serve` (a subprocess, like tests/_server.py starts it) serves every round from
`work_dir/bundles`, with its live state in `work_dir/state`; each round's summary is written to
`work_dir/round-<r>.json`, the merged stores to `work_dir/stores/round-<r>` (only the newest kept).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from builder.simulator.run import simulate
from builder.simulator.storefront import Storefront, StorefrontError, wait_ready
from builder.simulator.summary import SimulationSummary
from builder.simulator.world import World

REPO = Path(__file__).resolve().parents[2]
Say = Callable[[str], None]


class RoundResult(msgspec.Struct):
    round: int  # 0-based
    bundle: str  # build that served the round (most of its requests)
    sessions: int
    requests: int
    impressions: int
    clicks: int  # slate clicks
    ctr: float
    add_to_cart: int
    purchases: int
    revenue: float
    impression_gini: float  # over every catalog item (never shown = 0)
    catalog_coverage: float  # share of catalog items shown at least once in the round
    distinct_items_served: int
    top1_share: float  # share of the round's impressions that went to the top 1% of catalog items
    violations: int
    simulate_s: float
    rebuild_s: float  # merge + build + swap after the round (0 when not rebuilt)
    next_bundle: str  # the build the next round is served from ("" when not rebuilt)


class LoopError(RuntimeError):
    """The study could not run (server did not start or swap, build failed)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProcess:
    """`aisle serve` in a subprocess on a free 127.0.0.1 port, stopped with its process group."""

    def __init__(self, bundles: Path, state: Path, settings_toml: str, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        state.mkdir(parents=True, exist_ok=True)
        self.log_path = state.parent / "server.log"
        cmd = [sys.executable, "-m", "builder.cli", "serve", "--bundles", str(bundles), "--workers", str(workers),
               "--port", str(self.port), "--state", str(state)]  # fmt: skip
        if settings_toml:
            path = state.parent / "settings.toml"
            path.write_text(settings_toml, encoding="utf-8")
            cmd += ["--settings", str(path)]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def wait_ready(self, timeout_s: float = 180.0) -> str:
        try:
            return wait_ready(self.url, timeout_s=timeout_s)
        except StorefrontError as exc:
            state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "running"
            raise LoopError(f"aisle serve ({state}) not ready: {exc}\n{self.tail()}") from exc

    def wait_swap(self, build_id: str, *, timeout_s: float = 180.0, agree: int = 12) -> None:
        """Until `agree` answers in a row, each on a fresh connection (so whichever worker takes
        it answers), name `build_id`."""
        front = Storefront(self.url, timeout_s=5.0)
        deadline = time.monotonic() + timeout_s
        streak = 0
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LoopError(f"aisle serve exited with {self.proc.returncode} while swapping:\n{self.tail()}")
            try:
                status, body = front.ready()
                last = str(body.get("bundle"))
                streak = streak + 1 if status == 200 and last == build_id else 0
            except OSError:
                streak = 0
            if streak >= agree:
                return
            time.sleep(0.1 if streak else 0.3)
        raise LoopError(f"the engine did not swap to {build_id} within {timeout_s:g}s (still serving {last})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def _top_share(summary: SimulationSummary, catalog_items: int) -> float:
    counts = sorted(summary.impressions_by_sku.values(), reverse=True)
    total = sum(counts)
    k = max(1, catalog_items // 100)
    return round(sum(counts[:k]) / total, 6) if total else 0.0


def feedback_loop(
    store_dir: Path | str,
    work_dir: Path | str,
    rounds: int,
    sessions_per_round: int,
    settings_toml: str = "",
    seed: int = 0,
    *,
    build_config: object | None = None,
    workers: int = 2,
    concurrency: int = 2,
    count: int | None = None,
    say: Say | None = None,
) -> list[RoundResult]:
    """Run the study (module docstring) and return one RoundResult per round.

    store_dir: a synthetic store (with truth/); it is never modified. work_dir: a new or empty
    directory for the bundles, live state, merged stores and per-round summaries (round 0's bundle
    is built from store_dir). settings_toml: the engine's settings (e.g.
    "[rerank]\\nexplore_slots = []\\n"). build_config: a builder.config.BuildConfig (default: the
    defaults). Rebuilds after every round but the last. Raises LoopError.
    """
    from builder.adapters.eventlog import merge_events
    from builder.build import build
    from builder.config import BuildConfig, load_build_config
    from builder.progress import silent

    if rounds < 1 or sessions_per_round < 1:
        raise LoopError(f"need rounds ≥ 1 and sessions_per_round ≥ 1, got {rounds} and {sessions_per_round}")
    config = build_config if build_config is not None else load_build_config(None)
    if not isinstance(config, BuildConfig):
        raise LoopError(f"build_config must be a builder.config.BuildConfig, got {type(config).__name__}")
    report = say or (lambda message: print(message, file=sys.stderr, flush=True))
    store_dir, work = Path(store_dir), Path(work_dir)
    if work.exists() and any(work.iterdir()):
        raise LoopError(f"{work} is not empty: each study needs a fresh work directory (its event log and bundles)")
    work.mkdir(parents=True, exist_ok=True)
    bundles, state, stores = work / "bundles", work / "state", work / "stores"
    world = World.load(store_dir)
    t0 = time.monotonic()
    first = build(store_dir, bundles, config, progress=silent, allow_worse=True)
    report(f"round 0 bundle {first.build_id} built in {time.monotonic() - t0:.1f}s")

    engine = EngineProcess(bundles, state, settings_toml, workers)
    results: list[RoundResult] = []
    try:
        engine.wait_ready()
        current_store = store_dir
        for r in range(rounds):
            t0 = time.monotonic()
            summary = simulate(world, engine.url, sessions=sessions_per_round, seed=seed * 1_000 + r, concurrency=concurrency,
                               count=count, keep_item_counts=True, run_tag=f"loop{seed}-r{r}-{os.getpid()}")  # fmt: skip
            simulate_s = time.monotonic() - t0
            (work / f"round-{r}.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")
            rebuild_s, next_bundle = 0.0, ""
            if r < rounds - 1:
                t1 = time.monotonic()
                merged = stores / f"round-{r + 1}"
                merge_events(current_store, state, merged)
                result = build(merged, bundles, config, progress=silent, allow_worse=True)
                engine.wait_swap(result.build_id)
                if current_store != store_dir:
                    shutil.rmtree(current_store, ignore_errors=True)
                current_store, next_bundle = merged, result.build_id
                rebuild_s = time.monotonic() - t1
            served_by = max(summary.bundles.items(), key=lambda kv: kv[1])[0] if summary.bundles else ""
            row = RoundResult(
                round=r,
                bundle=served_by,
                sessions=summary.sessions,
                requests=summary.requests,
                impressions=summary.events_by_type.get("impression", 0),
                clicks=summary.clicks,
                ctr=summary.ctr,
                add_to_cart=summary.add_to_cart,
                purchases=summary.purchases,
                revenue=summary.revenue,
                impression_gini=summary.impression_gini,
                catalog_coverage=summary.catalog_coverage,
                distinct_items_served=summary.distinct_items_served,
                top1_share=_top_share(summary, world.n_items),
                violations=sum(summary.violations.values()),
                simulate_s=round(simulate_s, 2),
                rebuild_s=round(rebuild_s, 2),
                next_bundle=next_bundle,
            )
            results.append(row)
            report(f"round {r}: gini {row.impression_gini:.3f}, coverage {row.catalog_coverage:.3f}, ctr {row.ctr:.4f}, "
                   f"purchases {row.purchases}, {row.requests} requests in {row.simulate_s:.1f}s"
                   + (f"; rebuilt in {row.rebuild_s:.1f}s → {next_bundle}" if next_bundle else ""))  # fmt: skip
    finally:
        engine.stop()
    (work / "loop.json").write_bytes(msgspec.json.format(msgspec.json.encode(results)) + b"\n")
    return results
