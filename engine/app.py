"""The ASGI application Granian runs in every worker process.

Plain ASGI (no framework): seven routes, msgspec bodies, one place that maps errors to responses.
API keys (engine/auth.py) guard the events, status and (optionally) metrics and recommendation
routes; /healthz, /readyz and /openapi.json stay open for load balancers and tooling.
Startup (the lifespan event) opens `<bundles>/current`, loads what it can (the degradation ladder
starts at load), compiles and warms every kernel, and only then reports ready. Requests are CPU
work of a few milliseconds and run inline on the worker's event loop: one request at a time per
worker, one worker per core.

Experiment arms may pin other bundles (`VariantSettings.bundle`): each worker maps every pinned
bundle once, next to `current`, assigns each request once (engine.experiments.Assigner) and hands
the assignment to the recommender of the arm's bundle (`Engine.serving`). A pinned bundle stays
when `current` moves; a worker that cannot open one does not serve at all (better than serving
its shoppers another arm's bundle).

After a recommendation's answer is sent, its slate is queued for the event log (impressions for
experiment analysis); the answer never waits for it. Besides the bundle watcher, each worker runs
a small bookkeeping loop (`Engine.keep_figures`): it copies the event log's per-process slate
counts and its drift window's PSI into the shared metrics, and keeps a minute of merged totals
for the rates on `/status`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

import lmdb
import msgspec
import numpy as np

from artifacts.bundle import Bundle, open_bundle
from artifacts.errors import BundleError
from artifacts.featurespec import SOURCE_NAMES
from engine.auth import Guard
from engine.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Overloaded,
    StorageFull,
    TooLarge,
    TooManyRequests,
    UnsupportedMediaType,
)
from engine.eventlog import EventLog, EventLogError, EventLogFull
from engine.inventory.state import ItemState, StateError, Status, state_path
from engine.context import RequestContext
from engine.experiments import Assigner, Assignment, open_variant_bundle, variant_bundles
from engine.metrics import CONTENT_TYPE, DRIFT_FEATURES, STATUSES, UNASSIGNED, Metrics, Totals, families_for, inventory_families
from engine.openapi import openapi_document
from engine.overload import Shedder
from engine.ratelimit import RateLimiter
from engine.schemas import EVENT_BATCH, JSON, ErrorBody, Health, RecommendQuery, RecommendResponse
from engine.service import Recommender, decode_body, decode_query
from engine.settings import Settings, from_environment, uses_heads
from engine.slates import served_slate
from engine.status import BundleFacts, EventLogFacts, StatusInputs, render_status

log = logging.getLogger("aisle.engine")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
TEXT_HEADERS = [(b"content-type", CONTENT_TYPE.encode())]
# The status page loads nothing from anywhere (inline CSS only), and says so to the browser.
HTML_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
]
STAGES = ("resolve", "retrieve", "filter", "features", "rank", "rerank")

# Bookkeeping cadence (Engine.keep_figures): slate counts are copied every tick; merged totals are
# sampled for the status page's one-minute rates; the drift window's PSI is recomputed now and then
# (it is cheap, but not free, and it runs on the event loop between requests).
TICK_S = 1.0
SAMPLE_EVERY_S = 5.0
RATE_WINDOW_S = 60.0
DRIFT_EVERY_S = 10.0
# The inventory subscriber beats every state file it writes about ten times a second; a pinned
# bundle's state not beaten for this long is no longer written (a subscriber that died, or one
# started without the pin).
PINNED_STATE_STALE_S = 10.0


@dataclass(slots=True)
class Served:
    """A recommendation answered with 200: what logging its slate needs once the answer is out."""

    query: RecommendQuery
    response: RecommendResponse
    ctx: RequestContext
    recommender: Recommender


class Engine:
    """State of one worker: settings, the loaded recommender (or why not), event log, metrics."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self.recommender: Recommender | None = None  # serves `current`
        # Bundles pinned by experiment arms: build id → the arms' labels (from the settings), and
        # the loaded recommender of each that is not the one `current` points at.
        self.pins: dict[str, list[str]] = {}
        self.pinned: dict[str, Recommender] = {}
        self.assigner: Assigner | None = None
        self.guard: Guard | None = None  # API keys per endpoint (engine/auth.py), from the settings at start
        self.limiter: RateLimiter | None = None  # per-key rate limits (None: no key is limited)
        self.shedder: Shedder | None = None  # overload: refuse fast when behind (started on the loop)
        self.events: EventLog | None = None
        self.metrics: Metrics | None = None
        self.problem = "starting"
        self.loaded_at = 0.0
        self.root: str | None = None  # resolved directory of the bundle being served
        self.refused: str | None = None  # a `current` target that failed to open: not retried
        # The event log counts this process's slates itself; what was already copied to metrics:
        self._slates_copied = (0, 0)  # (logged, dropped)
        self.slate_failures = 0  # slates that could not be built or queued (logged now and then)
        self.storage_failures = 0  # event batches the log could not store (logged now and then)
        self.live_problem: str | None = None  # why the live event log is not open, when it is not
        # Merged totals every SAMPLE_EVERY_S over the last RATE_WINDOW_S (oldest first): any
        # worker can then answer /status with rates over the last minute.
        self.samples: collections.deque[Totals] = collections.deque()
        self._drift_at = 0.0

    def start(self) -> None:
        if self.settings is None:
            self.settings = from_environment()
        s = self.settings
        self.guard = Guard(s.security)
        state = Path(s.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        # The catalogue takes the experiment arms from the settings; every worker has the same.
        self.metrics = Metrics.open(state / "metrics.bin", families_for(s))
        self.shedder = Shedder(s.limits.max_queue_delay_ms, s.limits.max_in_flight)
        limits = [s.security.rate_limits.get(key, s.security.rate_limit_per_s) for key in self.guard.keys]
        if any(limit > 0 for limit in limits):
            # The worker's row in the shared counters is its metrics slot (one per live process).
            self.limiter = RateLimiter(state, self.guard.digests(), limits, s.security.rate_window_s, self.metrics.slot)
        try:
            self.events = EventLog(
                state,
                map_size=s.events.map_size_mib << 20,
                half_life_s=s.events.half_life_s,
                recent_limit=s.events.recent_limit,
                slate_queue_limit=s.events.slate_queue_limit,
            )
        except (EventLogError, lmdb.Error, OSError) as exc:
            # Recommendations do not need the live store: serve without it (no live history or
            # counters; event posts get 503) rather than crash-loop every worker, which makes
            # Granian stop the whole server.
            self.events = None
            self.live_problem = f"the live event log cannot be opened: {exc}"
            log.error("worker %d: %s; serving without live history, event posts answered 503", os.getpid(), self.live_problem)
        self.assigner = Assigner(s)
        self.pins = variant_bundles(s)
        target = self.current_target()
        try:
            recommender, pinned = self.prepare(target, s.verify_on_open)
        except BundleError as exc:
            self.problem = f"no servable bundle: {exc}"
            self.refused = target
            log.error("worker %d: %s", os.getpid(), self.problem)
            return
        self.install(recommender, target, pinned)

    def current_target(self) -> str:
        return os.path.realpath(Path(self.settings.bundles) / "current")  # type: ignore[union-attr]

    def prepare(self, target: str, verify: str) -> tuple[Recommender, dict[str, Recommender]]:
        """The recommender of `target` (the new `current`) and of every pinned bundle the worker
        will lack once it serves `target` (all of them at start; none on a swap while serving: the
        pinned ones stay, and the outgoing `current` is kept if an arm pins it). Raises
        BundleError, naming the arm when a pinned bundle fails; touches no serving state."""
        recommender = self.load(target, verify)
        have = {recommender.build_id, *self.pinned}
        if self.recommender is not None:
            have.add(self.recommender.build_id)
        pinned: dict[str, Recommender] = {}
        try:
            for build_id, labels in self.pins.items():
                if build_id not in have:
                    bundle = open_variant_bundle(Path(self.settings.bundles), build_id, labels, verify)  # type: ignore[union-attr, arg-type]
                    pinned[build_id] = self.load_bundle(bundle)
                    log.info("worker %d: serving bundle %s for %s", os.getpid(), build_id, ", ".join(labels))
        except BaseException:
            for loaded in (recommender, *pinned.values()):
                loaded.close()
            raise
        return recommender, pinned

    def load(self, target: str, verify: str) -> Recommender:
        """Open, verify, load and warm a bundle. Raises BundleError; touches no serving state, so
        it can run in a thread while the current bundle keeps serving."""
        return self.load_bundle(open_bundle(Path(target), verify=verify))  # type: ignore[arg-type]

    def load_bundle(self, bundle: Bundle) -> Recommender:
        """A warmed recommender over an opened bundle, with its live item state when the feed is on
        (waited for, bounded: the host's subscriber keeps the state of `current` and of every
        pinned bundle)."""
        recommender = Recommender(bundle, self.settings, self.events)  # type: ignore[arg-type]
        if self.settings.inventory.enabled:  # type: ignore[union-attr]
            state = self.wait_for_inventory(bundle)
            if state is not None:
                recommender.attach_inventory(state)
        recommender.warm()
        return recommender

    def wait_for_inventory(self, bundle: Bundle) -> ItemState | None:
        """The live item state for this bundle, once the host's subscriber has synced it (bounded
        wait). None: serve the bundle's own stock flags, and say so in /readyz."""
        inv = self.settings.inventory  # type: ignore[union-attr]
        path = state_path(Path(self.settings.state_dir), bundle.build_id)  # type: ignore[union-attr]
        deadline = time.monotonic() + inv.sync_timeout_s
        while True:
            try:
                state = ItemState.open(path, readonly=True, items=bundle.items)
                if state.status in (Status.SYNCED, Status.SILENT):
                    return state
                state.close()
            except (OSError, StateError):
                pass
            if time.monotonic() > deadline:
                log.error("worker %d: no synced inventory state at %s after %.0fs; serving the bundle's stock flags",
                          os.getpid(), path, inv.sync_timeout_s)
                return None
            time.sleep(0.1)

    def install(self, recommender: Recommender, target: str, pinned: dict[str, Recommender] | None = None) -> None:
        """Switch to `recommender` between two requests (this runs on the event loop, and requests
        run to completion on it, so no request straddles the switch), then release the old one,
        unless an arm pins it: then it keeps serving that arm. A pinned copy of the new `current`
        is released too (the arm is served by `current` while they are the same build)."""
        old, self.recommender = self.recommender, recommender
        self.pinned.update(pinned or {})
        self.root, self.loaded_at, self.problem, self.refused = target, time.time(), "", None
        retired = [self.pinned.pop(recommender.build_id)] if recommender.build_id in self.pinned else []
        if old is not None:
            if old.build_id in self.pins and old.build_id != recommender.build_id and old.build_id not in self.pinned:
                self.pinned[old.build_id] = old
                log.info("worker %d: %s stays for %s", os.getpid(), old.build_id, ", ".join(self.pins[old.build_id]))
            else:
                retired.append(old)
            log.info("worker %d: now serving %s (was %s)", os.getpid(), recommender.build_id, old.build_id)
        for done in retired:
            done.close()
        report = recommender.load_report
        for part, why in (("ranker", report.ranker), ("index", report.index), ("tower", report.tower), ("snapshot", report.snapshot)):
            if why:
                log.warning("worker %d: %s unavailable, serving degraded: %s", os.getpid(), part, why)


    async def watch(self) -> None:
        """Follow `current`: when it points somewhere new, load that bundle in a thread and switch.
        A bundle that fails to open or verify is refused (and counted); the old one keeps serving."""
        while True:
            await asyncio.sleep(self.settings.swap_check_seconds)  # type: ignore[union-attr]
            try:
                target = self.current_target()
            except OSError:
                continue
            if target in (self.root, self.refused):
                continue
            try:
                recommender, pinned = await asyncio.to_thread(self.prepare, target, self.settings.verify_on_swap)  # type: ignore[union-attr]
            except BundleError as exc:
                self.refused = target
                if self.recommender is None:
                    self.problem = f"no servable bundle: {exc}"
                log.error("worker %d: not switching to %s: %s", os.getpid(), target, exc)
                if self.metrics is not None:
                    self.metrics.inc("aisle_bundle_swaps_total", outcome="refused")
                continue
            except Exception:  # a bug while loading must not kill the watcher or the worker
                self.refused = target
                log.exception("worker %d: loading %s failed", os.getpid(), target)
                continue
            self.install(recommender, target, pinned)
            if self.metrics is not None:
                self.metrics.inc("aisle_bundle_swaps_total", outcome="swapped")

    def serving(self, user_id: str | None, session_id: str | None) -> tuple[Recommender, Assignment]:
        """The request's arm (assigned here, once) and the recommender that answers it: the one of
        the arm's pinned bundle, else `current`'s."""
        rec, assigner = self.recommender, self.assigner
        if rec is None or assigner is None:
            raise NotReady(self.problem or "no bundle loaded", retry_after=5)
        arm = assigner.assign(user_id, session_id)
        wanted = arm.variant.bundle if arm.variant is not None else None
        if wanted is None or wanted == rec.build_id:
            return rec, arm
        pinned = self.pinned.get(wanted)
        if pinned is None:  # unreachable while install keeps every pin loaded; never another arm's bundle
            raise NotReady(f"variant {arm.label}: bundle {wanted} is not loaded", retry_after=5)
        return pinned, arm

    # -- figures -----------------------------------------------------------------------------
    async def keep_figures(self) -> None:
        """Every TICK_S: this worker's slate counts into the shared metrics; every SAMPLE_EVERY_S a
        sample of the merged totals; every DRIFT_EVERY_S the drift gauges. Never raises."""
        next_sample = 0.0
        while True:
            try:
                now = time.monotonic()
                self.copy_slate_counts()
                if self.shedder is not None and self.metrics is not None:
                    self.metrics.set("aisle_queue_delay_seconds", self.shedder.take_peak())
                if now >= next_sample:
                    next_sample = now + SAMPLE_EVERY_S
                    self.sample_totals()
                if now - self._drift_at >= DRIFT_EVERY_S:
                    self.publish_drift()
            except Exception:  # bookkeeping must never take the worker down
                log.exception("worker %d: updating metrics failed", os.getpid())
            await asyncio.sleep(TICK_S)

    def copy_slate_counts(self) -> None:
        """Add what this process's event log logged and dropped since the last copy (the counters
        stay monotonic when a restarted worker takes over a dead one's slot)."""
        m, events = self.metrics, self.events
        if m is None or events is None:
            return
        logged, dropped = events.slates_logged, events.slates_dropped
        seen_logged, seen_dropped = self._slates_copied
        if logged > seen_logged:
            m.inc("aisle_slates_logged_total", float(logged - seen_logged))
        if dropped > seen_dropped:
            m.inc("aisle_slates_dropped_total", float(dropped - seen_dropped))
        self._slates_copied = (logged, dropped)
        m.set("aisle_slates_queued", float(events.slates_queued))

    def sample_totals(self) -> Totals | None:
        if self.metrics is None:
            return None
        totals = self.metrics.totals()
        self.samples.append(totals)
        while len(self.samples) > 1 and totals.taken_at - self.samples[1].taken_at >= RATE_WINDOW_S:
            self.samples.popleft()  # keep exactly one sample at least RATE_WINDOW_S old
        return totals

    def publish_drift(self) -> None:
        """This worker's drift window as gauges (NaN where there is no figure: no reference, too
        few rows, a feature not monitored)."""
        m = self.metrics
        if m is None:
            return
        self._drift_at = time.monotonic()
        rec = self.recommender
        report = rec.drift.report() if rec is not None and rec.drift is not None else None
        nan = math.nan
        for feature in DRIFT_FEATURES:
            m.set("aisle_feature_psi", report.psi.get(feature, nan) if report else nan, feature=feature)
        m.set("aisle_ranker_score_psi", _number(report.score_psi) if report else nan)
        m.set("aisle_ranker_score_mean", _number(report.mean_score) if report else nan)
        m.set("aisle_ranker_score_reference_mean", _number(report.reference_mean_score) if report else nan)
        m.set("aisle_drift_sampled_rows", float(report.rows) if report else nan)
        m.set("aisle_drifted_features", float(len(report.drifted)) if report and report.rows else nan)

    def degraded(self) -> list[tuple[str, str]]:
        """(part, why) for every part the served bundle runs without."""
        rec = self.recommender
        if rec is None:
            return []
        r = rec.load_report
        parts = [(part, why) for part, why in (("ranker", r.ranker), ("index", r.index), ("tower", r.tower), ("snapshot", r.snapshot)) if why]
        if r.heads and self.settings is not None and uses_heads(self.settings):
            parts.append(("ranking heads", r.heads))
        if self.live_problem:
            parts.append(("live store", self.live_problem))
        live = self.settings is not None and self.settings.inventory.enabled
        if live and rec.view.inventory is None:
            parts.append(("live inventory", "no synced item state: serving the bundle's stock flags"))
        now = time.time()
        for build_id, pinned in self.pinned.items():
            where = f"of variant bundle {build_id}"
            r = pinned.load_report
            parts += [(f"{part} {where}", why) for part, why in (("ranker", r.ranker), ("index", r.index), ("tower", r.tower), ("snapshot", r.snapshot)) if why]
            state = pinned.view.inventory
            if live and state is None:
                parts.append((f"live inventory {where}", "no synced item state for it: serving its own stock flags"))
            elif live and state is not None and now - state.heartbeat_at > PINNED_STATE_STALE_S:
                parts.append((f"live inventory {where}", f"its item state has not been written for {now - state.heartbeat_at:.0f}s "
                              "(is the inventory subscriber following it?): serving stock as of then"))
        return parts

    def publish_bundle(self) -> None:
        m, rec = self.metrics, self.recommender
        if m is not None and rec is not None:
            m.set("aisle_bundle_loaded_timestamp_seconds", self.loaded_at)
            m.set("aisle_bundle_age_seconds", max(0.0, time.time() - rec.end_ts))


class App:
    def __init__(self, settings: Settings | None = None) -> None:
        self.engine = Engine(settings)
        self._started = False
        self._watcher: asyncio.Task[None] | None = None
        self._figures: asyncio.Task[None] | None = None

    def _ensure_started(self) -> None:
        # Granian runs the lifespan protocol; a server that does not gets the same start lazily.
        if not self._started:
            self._started = True
            self.engine.start()
            loop = asyncio.get_running_loop()
            if self.engine.shedder is not None:
                self.engine.shedder.start(loop)
            self._watcher = loop.create_task(self.engine.watch())
            self._figures = loop.create_task(self.engine.keep_figures())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self._ensure_started()
        await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._ensure_started()
                except Exception as exc:  # a worker that cannot start must say why, not hang
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in (self._watcher, self._figures):
                    if task is not None:
                        task.cancel()
                if self.engine.shedder is not None:
                    self.engine.shedder.stop()
                if self.engine.events is not None:
                    await self.engine.events.aclose()
                    self.engine.copy_slate_counts()  # the last commit's slates
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        started = time.perf_counter()
        query: RecommendQuery | None = None
        served: Served | None = None
        kind = ""
        shedder = self.engine.shedder
        counted = False  # whether this request is one of the shedder's in flight
        try:
            if path == "/v1/recommendations":
                _allow(method, "GET", "POST")
                counted = self._shed_or_enter(shedder, "recommendations")
                self._admit(scope, "reads")
                query = await self._query(scope, receive, method)
                served = self._recommend(query, request_id)
                status, body, headers = 200, JSON.encode(served.response), JSON_HEADERS
            elif path == "/v1/events":
                _allow(method, "POST")
                counted = self._shed_or_enter(shedder, "events")
                self._admit(scope, "writes")
                status, body, headers = await self._events(scope, receive)
            elif path == "/healthz":
                _allow(method, "GET")
                status, body, headers = 200, JSON.encode(Health("ok", pid=os.getpid())), JSON_HEADERS
            elif path == "/readyz":
                _allow(method, "GET")
                status, body, headers = self._ready()
            elif path == "/metrics":
                _allow(method, "GET")
                self._admit(scope, "metrics")
                status, body, headers = self._metrics_text()
            elif path == "/status":
                _allow(method, "GET")
                self._admit(scope, "writes")
                status, body, headers = self._status_page()
            elif path == "/openapi.json":
                _allow(method, "GET")
                status, body, headers = 200, openapi_document(self.engine.settings), JSON_HEADERS
            else:
                raise NotFound(f"no route {path}; see /openapi.json")
        except ApiError as exc:
            kind = exc.kind
            status, body, headers = exc.status, JSON.encode(ErrorBody(exc.kind, exc.detail)), [*JSON_HEADERS, *exc.headers]
            if exc.retry_after is not None:
                headers.append((b"retry-after", str(exc.retry_after).encode()))
        except Exception:  # never a traceback on the wire; the log has it
            log.exception("worker %d: unhandled error on %s %s", os.getpid(), method, path)
            served = None  # whatever was served did not go out
            status, body, headers = 500, JSON.encode(ErrorBody("internal", "internal error; the request id is in the server log")), JSON_HEADERS
        headers = [*headers, (b"x-request-id", request_id.encode())]
        # Counted before the answer goes out, so a client that has its answer sees it counted.
        self._count(path, status, kind, query, served, started)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            if counted and shedder is not None:
                shedder.leave()
        if served is not None:
            self._log_slate(served)

    def _shed_or_enter(self, shedder: Shedder | None, endpoint: Literal["recommendations", "events"]) -> bool:
        """Refuse the request (503 Overloaded + Retry-After) if the worker is behind; else count
        it in flight (True: the caller must `leave` once the answer is out)."""
        if shedder is None:
            return False
        reason = shedder.check()
        if reason is not None:
            settings, m = self.engine.settings, self.engine.metrics
            if m is not None:
                m.inc("aisle_shed_total", endpoint=endpoint, reason=reason)
            retry = settings.limits.overload_retry_after_s if settings is not None else 1
            why = "requests waited too long in its queue" if reason == "queue_delay" else "too many requests are in progress"
            raise Overloaded(f"this worker is overloaded ({why}); retry after {retry} s", retry_after=retry)
        shedder.enter()
        return True

    def _count(self, path: str, status: int, kind: str, query: RecommendQuery | None, served: Served | None, started: float) -> None:
        m = self.engine.metrics
        if m is None:
            return
        if path == "/v1/recommendations":
            elapsed = time.perf_counter() - started
            if served is not None:
                surface, fallback, variant = served.query.surface, served.response.fallback or "none", served.response.variant
            else:  # refused: before decoding no surface is known; no arm either way
                surface, fallback, variant = query.surface if query is not None else "other", "none", UNASSIGNED
            m.inc("aisle_requests_total", surface=surface, status=str(status) if str(status) in STATUSES else "500", fallback=fallback, variant=variant)
            m.observe("aisle_request_seconds", elapsed, surface=surface)
            m.observe("aisle_variant_request_seconds", elapsed, variant=variant)
        elif path == "/v1/events":
            outcome = (
                "stored" if status == 202
                else "limited" if status == 429
                else "shed" if kind == Overloaded.kind
                else "unavailable" if status >= 500
                else "refused"
            )
            m.inc("aisle_event_batches_total", outcome=outcome)

    def _log_slate(self, served: Served) -> None:
        """Queue the served slate for the event log. Never raises into the request: a failure is
        counted (aisle_slates_failed_total) and logged now and then."""
        settings, events = self.engine.settings, self.engine.events
        if settings is None or not settings.events.log_slates or events is None:
            return
        try:
            events.log_slate(served_slate(served.query, served.response, served.ctx, served.recommender))
        except Exception:
            engine = self.engine
            if engine.metrics is not None:
                engine.metrics.inc("aisle_slates_failed_total")
            if engine.slate_failures % 1000 == 0:  # the first, then one in a thousand
                log.exception("worker %d: could not log a served slate (%d so far)", os.getpid(), engine.slate_failures + 1)
            engine.slate_failures += 1

    # -- routes ----------------------------------------------------------------------------------
    def _admit(self, scope: Scope, endpoint: Literal["reads", "writes", "metrics"]) -> None:
        """401 unless the request carries a key this endpoint's ring admits (open rings admit all);
        429 + Retry-After when that key is over its rate limit."""
        engine = self.engine
        guard = engine.guard
        if guard is None:  # the worker did not start: its keys are unknown, so nothing is admitted
            raise NotReady(engine.problem or "starting", retry_after=5)
        key_id = guard.require(getattr(guard, endpoint), scope.get("headers", ()))
        if key_id is None or engine.limiter is None:
            return
        wait = engine.limiter.admit(key_id)
        if wait > 0:
            if engine.metrics is not None:
                engine.metrics.inc("aisle_rate_limited_total", endpoint=endpoint)
            limit = engine.limiter.limits[key_id]
            retry = max(1, math.ceil(wait))
            raise TooManyRequests(f"this API key is over its rate limit of {limit:g} requests per second; retry after {retry} s", retry_after=retry)

    def _recommender(self) -> Recommender:
        rec = self.engine.recommender
        if rec is None:
            raise NotReady(self.engine.problem or "no bundle loaded", retry_after=5)
        return rec

    async def _query(self, scope: Scope, receive: Receive, method: str) -> RecommendQuery:
        """GET: the query string. POST: a JSON RecommendQuery (long candidate lists to re-rank)."""
        rec = self._recommender()
        if method == "GET":
            return decode_query(scope.get("query_string", b"").decode("latin-1"), rec.settings)
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise UnsupportedMediaType(f"POST the query as application/json, not {content_type or 'no content type'}")
        return decode_body(await _read_body(scope, receive, rec.settings.limits.max_body_bytes), rec.settings)

    def _recommend(self, query: RecommendQuery, request_id: str) -> Served:
        rec, arm = self.engine.serving(query.user_id, query.session_id)
        response, ctx = rec.run(query, request_id=request_id, assignment=arm)
        m = self.engine.metrics
        if m is not None:
            for stage in STAGES:
                if stage in ctx.timings:
                    m.observe("aisle_stage_seconds", ctx.timings[stage], stage=stage)
            if len(response.items) < ctx.count:
                m.inc("aisle_short_responses_total", surface=query.surface)
                if not response.items:
                    m.inc("aisle_empty_responses_total", surface=query.surface)
            for item in response.items:
                m.inc("aisle_candidates_served_total", source=item.source)
            if ctx.candidates is not None:
                per_source = (ctx.candidates.source_scores > 0).sum(axis=0)
                for source_id in np.flatnonzero(per_source):
                    m.inc("aisle_candidates_total", float(per_source[source_id]), source=SOURCE_NAMES[source_id])
            if ctx.filtered:
                m.inc("aisle_filtered_total", float(ctx.filtered), filter="out_of_stock_or_blocked_or_excluded")
        return Served(query, response, ctx, rec)

    async def _events(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list]:
        """202 only once the batch is fsynced (group commit across concurrent requests); a batch
        the log cannot store gets 503 + Retry-After, never a 202."""
        settings, log_ = self.engine.settings, self.engine.events
        if settings is None:
            raise NotReady("the event log is not open yet", retry_after=1)
        if log_ is None:
            raise StorageFull("events not stored: the live event log could not be opened (see the server log)", retry_after=settings.events.retry_after_s)
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise UnsupportedMediaType(f"send events as application/json, not {content_type or 'no content type'}")
        body = await _read_body(scope, receive, settings.limits.max_body_bytes)
        try:
            batch = EVENT_BATCH.decode(body)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"event batch: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise BadRequest(f"event batch is not valid JSON: {exc}") from exc
        limit = settings.limits.max_events_per_batch
        if len(batch.events) > limit:
            raise TooLarge(f"a batch holds at most {limit} events; got {len(batch.events)}")
        try:
            result = (await log_.append_async(batch.events)).response()
        except EventLogError as exc:
            # The whole story (paths, LMDB's words) is for the operator's log; the client learns
            # what it needs: nothing was stored, and when to retry.
            engine = self.engine
            if engine.storage_failures % 100 == 0:  # the first, then one in a hundred
                log.error("worker %d: an event batch was not stored (%d so far): %s", os.getpid(), engine.storage_failures + 1, exc)
            engine.storage_failures += 1
            why = "the event log is full" if isinstance(exc, EventLogFull) else "the event log could not make them durable (is its disk full?)"
            raise StorageFull(f"events not stored: {why}; nothing of this batch was kept, retry later", retry_after=settings.events.retry_after_s) from exc
        m = self.engine.metrics
        if m is not None:
            m.inc("aisle_events_total", float(result.accepted), outcome="accepted")
            m.inc("aisle_events_total", float(result.duplicates), outcome="duplicate")
            m.inc("aisle_events_total", float(result.rejected), outcome="rejected")
        return 202, JSON.encode(result), JSON_HEADERS

    def _ready(self) -> tuple[int, bytes, list]:
        rec = self.engine.recommender
        if rec is None:
            return 503, JSON.encode(Health("not_ready", None, os.getpid(), self.engine.problem)), [*JSON_HEADERS, (b"retry-after", b"5")]
        engine = self.engine
        degraded = [part for part, _ in engine.degraded()]
        notes = ["variant bundles: " + ", ".join(f"{b} ({', '.join(engine.pins[b])})" for b in engine.pinned)] if engine.pinned else []
        if degraded:
            notes.append("degraded: " + ", ".join(degraded) + " unavailable")
        return 200, JSON.encode(Health("ready", rec.build_id, os.getpid(), "; ".join(notes))), JSON_HEADERS

    def _metrics_text(self) -> tuple[int, bytes, list]:
        m = self.engine.metrics
        if m is None:
            raise NotReady("metrics are not initialised yet", retry_after=1)
        engine, rec = self.engine, self.engine.recommender
        engine.publish_bundle()
        engine.copy_slate_counts()
        engine.publish_drift()  # this worker's figures are current; the others' at most DRIFT_EVERY_S old
        inventory = rec.view.inventory if rec is not None else None
        computed = inventory_families(inventory.stats(), time.time()) if inventory is not None else []
        return 200, m.render(bundle_id=rec.build_id if rec else None, computed=computed).encode(), TEXT_HEADERS

    def _status_page(self) -> tuple[int, bytes, list]:
        engine = self.engine
        m, settings = engine.metrics, engine.settings
        if m is None or settings is None:
            raise NotReady("metrics are not initialised yet", retry_after=1)
        engine.publish_bundle()
        engine.copy_slate_counts()
        engine.publish_drift()
        totals = m.totals()
        # The oldest sample kept, up to RATE_WINDOW_S old; none at all for the first second.
        earlier = engine.samples[0] if engine.samples and totals.taken_at - engine.samples[0].taken_at >= 1.0 else None
        rec = engine.recommender
        bundle = None
        drift = None
        inventory = None
        if rec is not None:
            manifest = rec.bundle.manifest
            bundle = BundleFacts(
                build_id=rec.build_id,
                created_at=manifest.created_at if manifest else "",
                data_end_ts=float(rec.end_ts),
                loaded_at=engine.loaded_at,
                degraded=engine.degraded(),
                drift_off=rec.load_report.drift,
            )
            drift = rec.drift.report() if rec.drift is not None else None
            inventory = rec.view.inventory.stats() if rec.view.inventory is not None else None
        events = engine.events
        log_facts = None
        if events is not None:
            log_facts = EventLogFacts(last_seq=events.last_seq(), last_slate_seq=events.last_slate_seq(), queued=events.slates_queued)
        page = render_status(
            StatusInputs(
                now=totals.taken_at,
                pid=os.getpid(),
                settings=settings,
                totals=totals,
                window=totals.since(earlier) if earlier is not None else None,
                window_s=totals.taken_at - earlier.taken_at if earlier is not None else 0.0,
                bundle=bundle,
                problem=engine.problem,
                inventory=inventory,
                events=log_facts,
                drift=drift,
            )
        )
        return 200, page, HTML_HEADERS


def _number(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        refusal = MethodNotAllowed(f"use {' or '.join(allowed)} here, not {method}")
        refusal.headers = ((b"allow", ", ".join(allowed).encode()),)  # RFC 9110: a 405 lists what is allowed
        raise refusal


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    too_large = declared is not None and declared.isdigit() and int(declared) > limit
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        # An oversized body is still drained (up to DRAIN_LIMIT) before the 413 goes out: a client
        # that is mid-upload when the connection closes sees a reset, not our answer.
        if size > limit:
            too_large = True
        if too_large:
            if size > DRAIN_LIMIT or not message.get("more_body", False):
                raise TooLarge(f"body is {declared or f'over {size}'} bytes; the limit is {limit}")
            continue
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


DRAIN_LIMIT = 16 << 20

app = App()
