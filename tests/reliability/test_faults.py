"""Injected faults against a real server under continuous load (issue 8, faults).

Client threads ask for home, pdp and cart slates back to back for the whole test and tally every
answer; the test injects one fault after another and checks the documented outcome of each
(README "The bundle" / "Live data", DESIGN.md §4 and §7), then that the load saw no 5xx and no
connection error at any point.

Bundle faults are published the way the builder publishes (artifacts.publish: a finished
directory under the root, then `current` swapped by a rename), as a copy of the session's tiny
bundle with its manifest re-sealed under a build id of its own, so an answer from a bundle that
should have been refused would say so in its `bundle` field:

| fault | documented outcome |
|---|---|
| flipped bytes in the embeddings / the index, a truncated table, a missing table, a missing LMDB snapshot, a garbage ranker library (all after the manifest was sealed), a directory without a manifest (a partial copy), a manifest from a newer builder | refused at the swap (verify_on_swap = "full"): the old bundle keeps serving, `aisle_bundle_swaps_total{outcome="refused"}` counts one per worker |
| a sealed bundle without the shopper snapshot | taken; served degraded: `fallback = "features_unavailable"` for known shoppers, /readyz lists the snapshot |
| a sealed bundle whose ranker library does not load | taken; served in retrieval order: `fallback = "ranker_unavailable"`, /readyz lists the ranker |
| the good bundle again | taken, nothing degraded |
| the live event log deleted while serving | the workers keep serving (they hold the open file; events they acknowledge then go to the deleted file, which a restarted worker does not see: not checked here) |
| the live event log unopenable at start | serves without it: recommendations 200, /readyz lists the live store, events 503 |
| the live event log deleted while serving | event posts 503 (never a 202 for a file no longer on disk); recommendations 200 |

The inventory publisher gone (its own test below, with the same load): the workers keep the last
state (an item published out of stock stays out), `aisle_inventory_status{status="silent"}` and a
growing `aisle_inventory_last_update_age_seconds` say so on /metrics; a bundle published and a
server restarted meanwhile keep that last state too (engine.inventory carries it over); the
publisher back with its full state is resynchronised from, and an item it now has out of stock
leaves every slate.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import msgspec
import numpy as np
import pytest

from artifacts import layout
from artifacts.bundle import Bundle, open_bundle
from artifacts.manifest import FORMAT_VERSION, FileEntry, parse as parse_manifest, seal
from artifacts.publish import STAGING_PREFIX, fsync_path, set_current, sha256_file
from engine.inventory import wire
from engine.inventory.publisher import publish_one
from engine.inventory.embed import make_embedder
from engine.inventory.state import Baseline, ItemState, StateWriter, Status, state_path
from engine.inventory.subscriber import Subscriber
from tests._server import REPO, Server, free_port, until as wait_for
from tests.reliability._soak import SOAK, report
from tests.test_metrics import parse, value

pytestmark = pytest.mark.slow

CLIENT_THREADS = 2
RECYCLE = 20  # requests per keep-alive connection: new connections spread the load over both workers
COUNT = 12
WAIT_S = 60.0  # the most any single condition is polled for
ROUNDS = SOAK.scale(1, 4)  # times every bundle fault is injected (each time as a new bundle)
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


# --- the load --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float  # monotonic, before the request went out
    received: float
    surface: str
    user: str | None
    status: int
    bundle: str | None
    fallback: str | None
    skus: tuple[str, ...]
    forbidden: frozenset[str]  # SKUs the host's item state had out of stock before it was sent


@dataclass
class Load:
    """Client threads asking for slates on every surface until stopped. `forbidden()` (optional)
    is read before each request: the SKUs no answer to it may contain."""

    srv: Server
    users: list[str | None]
    items: list[str]
    forbidden: Callable[[], frozenset[str]] = lambda: frozenset()
    threads: int = CLIENT_THREADS
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # connection-level failures
    _stop: threading.Event = field(default_factory=threading.Event)
    _running: list[threading.Thread] = field(default_factory=list)

    def params(self, rng: random.Random) -> dict[str, object]:
        surface = rng.choice(("home", "home", "pdp", "cart"))
        params: dict[str, object] = {"surface": surface, "count": COUNT, "user_id": rng.choice(self.users)}
        if surface == "pdp":
            params["item_id"] = rng.choice(self.items)
        elif surface == "cart":
            params["cart"] = ",".join(rng.sample(self.items, rng.randint(1, 3)))
        return params

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self._stop.is_set():
            if conn is None or n % RECYCLE == 0:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=30)
            n += 1
            params = self.params(rng)
            path = "/v1/recommendations?" + urlencode({k: v for k, v in params.items() if v is not None})
            forbidden = self.forbidden()
            sent = time.monotonic()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
            except CONNECTION_ERRORS as exc:
                self.errors.append(f"{params}: {exc!r}")
                conn.close()
                conn = None
                continue
            received = time.monotonic()
            doc = json.loads(body) if body else {}
            skus = tuple(i["sku"] for i in doc.get("items", ()))
            self.answers.append(Answer(sent, received, str(params["surface"]), params["user_id"], resp.status,  # type: ignore[arg-type]
                                       doc.get("bundle"), doc.get("fallback"), skus, forbidden))
        if conn is not None:
            conn.close()

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._running.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._running:
            t.join(timeout=60)

    def more(self, n: int = 50) -> None:
        """Until the load has had n more answers (so a phase is actually under load)."""
        target = len(self.answers) + n
        until(lambda: len(self.answers) >= target or self.errors, what=f"{n} more answers")

    def between(self, start: float, end: float = float("inf")) -> list[Answer]:
        return [a for a in list(self.answers) if a.sent >= start and a.received <= end]

    def statuses(self) -> collections.Counter:
        return collections.Counter(a.status for a in list(self.answers))


def until(predicate: Callable[[], object], timeout: float = WAIT_S, what: str = "condition") -> object:
    return wait_for(predicate, timeout, what, every=0.05)


def scrape(srv: Server) -> dict:
    reply = srv.get("/metrics")
    assert reply.status == 200, reply.body[:300]
    return parse(reply.body.decode())


def swaps(srv: Server, outcome: str) -> float:
    return value(scrape(srv), "aisle_bundle_swaps_total", outcome=outcome)


def every_worker(srv: Server, ok: Callable[[dict], bool], what: str, workers: int = 2) -> None:
    """Until /readyz from `workers` distinct worker pids satisfies ok (a pid that answers otherwise
    later is taken off the list again)."""
    good: set[int] = set()

    def look() -> bool:
        reply = srv.get("/readyz")
        body = reply.json()
        (good.add if reply.status == 200 and ok(body) else good.discard)(body["pid"])
        return len(good) >= workers

    until(look, what=what)


# --- bundle copies, damaged and published like the builder does -----------------------------------


def _reseal(bundle_dir: Path, build_id: str, *, drop: tuple[str, ...] = (), refresh: tuple[str, ...] = (),
            format_version: int = FORMAT_VERSION) -> None:
    """Rewrite the copy's manifest as a build of its own: another build id, without the `drop`
    files, with the current size and sha256 of the `refresh` files; sealed (valid checksum)."""
    path = bundle_dir / layout.MANIFEST
    manifest = parse_manifest(path.read_bytes(), str(path))
    files = {rel: entry for rel, entry in manifest.files.items() if rel not in drop}
    for rel in refresh:
        files[rel] = FileEntry(size=(bundle_dir / rel).stat().st_size, sha256=sha256_file(bundle_dir / rel))
    path.write_bytes(seal(msgspec.structs.replace(manifest, build_id=build_id, files=files, format_version=format_version)))


def _flip(path: Path, where: float = 0.5, n: int = 16) -> None:
    raw = bytearray(path.read_bytes())
    at = int(len(raw) * where)
    for i in range(at, min(at + n, len(raw))):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _garbage(path: Path) -> None:
    """Same size, not a shared library (passes a size check, fails dlopen and sha256)."""
    size = path.stat().st_size
    path.write_bytes((b"\x00garbage" * (size // 8 + 1))[:size])


@dataclass(frozen=True)
class Fault:
    name: str
    damage: Callable[[Path, str], None]  # (copy dir, its build id) → damaged in place
    refused: bool  # else taken, served degraded
    degraded_part: str = ""  # the part /readyz lists as degraded
    fallback: str = ""  # what answers say (for known shoppers when the snapshot is the part)


def _sealed_then(damage: Callable[[Path], None], rel: str) -> Callable[[Path, str], None]:
    """Damage after the build: the manifest still holds the good file's size and sha256."""

    def run(copy: Path, build_id: str) -> None:
        _reseal(copy, build_id)
        damage(copy / rel)

    return run


def _missing(rel: str) -> Callable[[Path, str], None]:
    def run(copy: Path, build_id: str) -> None:
        _reseal(copy, build_id)
        (copy / rel).unlink()

    return run


def _no_manifest(copy: Path, build_id: str) -> None:
    (copy / layout.MANIFEST).unlink()  # a copy interrupted before its last file


def _newer_format(copy: Path, build_id: str) -> None:
    _reseal(copy, build_id, format_version=FORMAT_VERSION + 1)


def _sealed_without_snapshot(copy: Path, build_id: str) -> None:
    (copy / layout.SHOPPER_SNAPSHOT).unlink()
    _reseal(copy, build_id, drop=(layout.SHOPPER_SNAPSHOT,))


def _sealed_unloadable_ranker(copy: Path, build_id: str) -> None:
    _garbage(copy / layout.RANKER_LIB)  # e.g. compiled for another platform: it verifies, it does not load
    _reseal(copy, build_id, refresh=(layout.RANKER_LIB,))


FAULTS = (
    Fault("corrupt_embeddings", _sealed_then(_flip, layout.ITEM_VECTORS), refused=True),
    Fault("corrupt_index", _sealed_then(_flip, layout.ITEM_INDEX), refused=True),
    Fault("truncated_table", _sealed_then(_truncate, layout.csr(layout.COVISIT)[1]), refused=True),
    Fault("missing_table", _missing(layout.csr(layout.COPURCHASE)[2]), refused=True),
    Fault("missing_snapshot", _missing(layout.SHOPPER_SNAPSHOT), refused=True),
    Fault("garbage_ranker", _sealed_then(_garbage, layout.RANKER_LIB), refused=True),
    Fault("partial_no_manifest", _no_manifest, refused=True),
    Fault("newer_format", _newer_format, refused=True),
    Fault("snapshot_left_out", _sealed_without_snapshot, refused=False, degraded_part="snapshot", fallback="features_unavailable"),
    Fault("ranker_unloadable", _sealed_unloadable_ranker, refused=False, degraded_part="ranker", fallback="ranker_unavailable"),
)


def publish_copy(root: Path, good: Path, name: str, damage: Callable[[Path, str], None], build_id: str) -> Path:
    """Copy `good` into a staging directory, damage it, rename it into place, move `current` to it
    (set_current for a finished bundle; the same rename by hand for one without a manifest, which
    set_current refuses)."""
    staging = root / f"{STAGING_PREFIX}{name}"
    shutil.copytree(good, staging)
    damage(staging, build_id)
    fsync_path(staging)
    final = root / name
    os.rename(staging, final)
    fsync_path(root)
    if (final / layout.MANIFEST).is_file():
        set_current(root, name)
    else:
        tmp = root / f".current-{name}"
        os.symlink(name, tmp)
        os.replace(tmp, root / "current")
    return final


def shoppers(bundle: Bundle, n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [bundle.users.id_of(rng.randrange(len(bundle.users))) for _ in range(n)]


# --- the bundle and live-store faults ---------------------------------------------------------------


def _inject(srv: Server, load: Load, root: Path, good: Path, fault: Fault, name: str, build_id: str, serving: str) -> tuple[str, str]:
    """Publish `fault` as bundle `name` and check its documented outcome under the running load.
    Returns (the build id served afterwards, what happened)."""
    refused, swapped = swaps(srv, "refused"), swaps(srv, "swapped")
    injected = time.monotonic()
    publish_copy(root, good, name, fault.damage, build_id)
    if fault.refused:
        until(lambda: swaps(srv, "refused") >= refused + 2, what=f"{name}: both workers refuse it")
        every_worker(srv, lambda b: b["bundle"] == serving and "degraded" not in b["detail"], f"{name}: {serving} still served")
        load.more()
        assert swaps(srv, "swapped") == swapped, f"{name}: a worker switched to it"
        during = load.between(injected)
        assert during and {a.bundle for a in during} == {serving}, f"{name}: answered from {({a.bundle for a in during})}"
        return serving, f"refused by both workers; {serving} kept serving ({len(during)} answers meanwhile)"
    until(lambda: swaps(srv, "swapped") >= swapped + 2, what=f"{name}: both workers take it")
    assert swaps(srv, "refused") == refused
    every_worker(srv, lambda b: b["bundle"] == build_id and f"degraded: {fault.degraded_part} unavailable" in b["detail"],
                 f"{name}: served degraded by every worker")
    taken = time.monotonic()
    load.more(80)
    after = load.between(taken)
    assert {a.bundle for a in after} == {build_id}
    # Without the snapshot only shoppers with an id have features to miss; without the ranker
    # every answer is in retrieval order.
    marked = [a for a in after if a.user is not None] if fault.degraded_part == "snapshot" else after
    assert marked and {a.fallback for a in marked} == {fault.fallback}, collections.Counter(a.fallback for a in marked)
    assert all(len(a.skus) == COUNT for a in after), "a degraded answer still fills the page"
    seen = scrape(srv)
    counted = sum(value(seen, "aisle_requests_total", surface=s, status="200", fallback=fault.fallback, variant="default")
                  for s in ("home", "pdp", "cart"))
    assert counted >= len(marked)
    return build_id, f"taken; /readyz: {fault.degraded_part} unavailable; fallback={fault.fallback} on {len(marked)} answers"


def test_damaged_bundles_are_refused_or_served_degraded_under_load_without_a_5xx(tiny_bundle: Path, tmp_path: Path) -> None:
    good = open_bundle(tiny_bundle / "current")
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(good.root, root / good.root.name)
    set_current(root, good.root.name)
    first = good.build_id
    rng = random.Random(8)
    items = [good.items.id_of(rng.randrange(good.n_items)) for _ in range(60)]
    known = shoppers(good, 40)
    srv = Server(root, tmp_path / "state", workers=2, settings_toml="swap_check_seconds = 0.2\n")
    load = Load(srv, [*known, *known, None, "shopper-never-seen"], items)
    outcomes: dict[str, str] = {}
    injected = 0
    try:
        srv.wait_ready(workers=2)
        load.start()
        load.more()
        for round_ in range(ROUNDS):
            serving = first
            for fault in FAULTS:
                name = f"{fault.name}-{round_}"
                serving, outcomes[fault.name] = _inject(srv, load, root, good.root, fault, name, f"{first}-{name}", serving)
                injected += 1
            # The good bundle again: taken, nothing degraded.
            swapped = swaps(srv, "swapped")
            set_current(root, good.root.name)
            until(lambda: swaps(srv, "swapped") >= swapped + 2, what="the good bundle is taken again")
            every_worker(srv, lambda b: b["bundle"] == first and "degraded" not in b["detail"], "the good bundle served by every worker")
            back = time.monotonic()
            load.more(80)
            again = load.between(back)
            assert {a.bundle for a in again} == {first}
            assert {a.fallback for a in again} <= {None, "deadline"}
            outcomes["good_again"] = f"taken; nothing degraded ({len(again)} answers)"
            injected += 1

        # The live event log deleted under the workers' feet: they hold it open and keep serving.
        (srv.state / "events.lmdb").unlink()
        (srv.state / "events.lmdb-lock").unlink(missing_ok=True)
        gone = time.monotonic()
        event = {"event_id": "faults-1", "user_id": known[0], "sku": items[0], "type": "click"}
        posted = srv.post_json("/v1/events", {"events": [event]})
        load.more(80)
        assert posted.status in (202, 503), posted.body
        assert {a.status for a in load.between(gone)} == {200}
        outcomes["event_log_deleted"] = f"served on; POST /v1/events answered {posted.status}"
        injected += 1
    finally:
        load.stop()
        srv.stop()
    statuses = load.statuses()
    http_5xx = sum(n for status, n in statuses.items() if status >= 500)
    for name, outcome in outcomes.items():
        print(f"  {name}: {outcome}")
    report("faults", rounds=ROUNDS, injected=injected, survived=injected, requests=len(load.answers), http_5xx=http_5xx,
           connection_errors=len(load.errors), non_200=sum(n for s, n in statuses.items() if s != 200),
           refused=ROUNDS * sum(f.refused for f in FAULTS), degraded=ROUNDS * sum(not f.refused for f in FAULTS))
    assert load.errors == [], load.errors[:5]
    assert http_5xx == 0 and set(statuses) == {200}, statuses


def test_an_unopenable_live_event_store_degrades_instead_of_taking_the_server_down(tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "events.lmdb").write_bytes(b"\x00not an lmdb file" * 4096)
    srv = Server(tiny_bundle, state, workers=2)
    try:
        srv.wait_ready(workers=2, timeout=60)
        for surface, extra in (("home", {}), ("pdp", {"item_id": open_bundle(tiny_bundle / "current").items.id_of(0)})):
            reply = srv.recommend(surface=surface, user_id="someone", count=COUNT, **extra)
            assert reply.status == 200 and len(reply.json()["items"]) == COUNT
        assert "live store" in srv.get("/readyz").json()["detail"]
        posted = srv.post_json("/v1/events", {"events": [{"event_id": "x-1", "user_id": "u", "sku": "s", "type": "click"}]})
        assert posted.status == 503 and "retry-after" in posted.headers and posted.json()["error"] == "storage_unavailable"
    finally:
        srv.stop()


def test_a_live_event_log_deleted_while_serving_never_acknowledges_a_lost_event(tiny_bundle: Path, tmp_path: Path) -> None:
    """Deleted under a running server, the log's file would still take commits (to an unlinked
    inode: acknowledged, then gone). Every worker notices at its next commit and answers 503."""
    state = tmp_path / "state"
    srv = Server(tiny_bundle, state, workers=2)
    try:
        srv.wait_ready(workers=2)
        sku = open_bundle(tiny_bundle / "current").items.id_of(0)
        first = srv.post_json("/v1/events", {"events": [{"event_id": "before-1", "user_id": "u", "sku": sku, "type": "click"}]})
        assert first.status == 202
        (state / "events.lmdb").unlink()
        statuses = [srv.post_json("/v1/events", {"events": [{"event_id": f"after-{i}", "user_id": "u", "sku": sku, "type": "click"}]}).status
                    for i in range(8)]  # both workers, whichever answers
        assert set(statuses) == {503}, statuses
        assert srv.recommend(surface="home", user_id="u", count=COUNT).status == 200
    finally:
        srv.stop()


# --- the inventory publisher gone, then back ---------------------------------------------------------


def start_publisher(pub: str, snap: str, publisher_id: str, load_file: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "builder.cli", "inventory", "serve", "--pub", pub, "--snapshot", snap, "--id", publisher_id]
    if load_file is not None:
        cmd += ["--load", str(load_file)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_publisher(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)


def test_a_state_carried_over_to_the_next_bundle_keeps_every_change_the_feed_made(tiny_bundle: Path, tmp_path: Path) -> None:
    """What `follow` does when `current` moves while the publisher is silent (engine.inventory:
    Subscriber.carry): the new bundle's state starts as the old one's, every kind of delta and the
    new SKUs included, and stays `silent` while the publisher cannot be reached."""
    bundle = open_bundle(tiny_bundle / "current")
    baseline, embed = Baseline.of(bundle), make_embedder(bundle)
    rng = np.random.default_rng(5)
    skus = bundle.items.ids_of(rng.choice(bundle.n_items, 60, replace=False).astype(np.int64))
    listing = dict(title="Carried", category_path=bundle.vocab.category_path[1], brand="Acme", seller="S1",
                   price=12.5, discount=0.1, qty=3, created_at=time.time())
    deltas: list[wire.Delta] = [wire.Stock(s, False, 0) for s in skus[:12]]
    deltas += [wire.Stock(s, True, 40 + i) for i, s in enumerate(skus[12:16])]
    deltas += [wire.Price(s, 1000.0 + i) for i, s in enumerate(skus[16:24])]
    deltas += [wire.Discount(s, 0.5) for s in skus[24:28]]
    deltas += [wire.Promotion(s, 5) for s in skus[28:32]]
    deltas += [wire.Retire(s) for s in skus[32:36]]
    deltas += [wire.NewSku(f"CARRIED-{i}", in_stock=i != 1, **listing) for i in range(4)]
    deltas += [wire.Promotion("CARRIED-2", 3), wire.Retire("CARRIED-3"), wire.Stock(skus[0], True, 1), wire.Stock(skus[0], False, 0)]
    with ItemState.create(tmp_path / "old.state", bundle, capacity=8) as old, ItemState.create(tmp_path / "new.state", bundle, capacity=8) as new:
        StateWriter(old, bundle.items, baseline, embed).apply(deltas)
        old.set_progress("gone-publisher", 7, 42)
        old.set_status(Status.SILENT)
        sub = Subscriber(new, bundle.items, f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", bundle=bundle,
                         embed=embed, poll_ms=20, snapshot_timeout_s=0.2, retry_s=(0.05, 0.2))
        assert sub.carry(old, baseline) > 0
        base = slice(0, bundle.n_items)
        for column in ("in_stock", "stock_qty", "price", "discount", "promo", "retired"):
            assert (getattr(new, column)[base] == getattr(old, column)[base]).all(), column
        assert new.n_new == 3 and new.row_of("CARRIED-3") == -1  # a retired new SKU is not carried
        for name in ("CARRIED-0", "CARRIED-1", "CARRIED-2"):
            o, n = old.row_of(name), new.row_of(name)
            assert n >= bundle.n_items and new.new_item(n).title == "Carried" and new.has_vector[n - new.n_base]
            for column in ("in_stock", "stock_qty", "price", "discount", "promo", "retired"):
                assert getattr(new, column)[n] == getattr(old, column)[o], (name, column)
        assert new.status == Status.SILENT and new.progress()[:3] == ("gone-publisher", 7, 42)
        # Run against a publisher that is not there: the start resync fails, the state stays silent.
        stop = threading.Event()
        thread = threading.Thread(target=sub.run, args=(stop,), daemon=True)
        thread.start()
        try:
            until(lambda: new.stats().counters["resync_failures"] >= 2, what="snapshot requests time out")
            assert new.status == Status.SILENT
        finally:
            stop.set()
            thread.join(10)


def test_the_inventory_publisher_gone_keeps_the_last_state_then_a_restart_resyncs(tiny_bundle: Path, tmp_path: Path) -> None:
    """The publisher is killed: workers keep the last state and /metrics says the feed is silent.
    While it is gone a new bundle is published and then the whole server restarts: the last state
    is still what is served (not the bundles' own stock flags). The publisher comes back with its
    full state, which has one more item out of stock: the subscriber resyncs and it leaves every
    slate. Throughout, no answer holds an item the host's item state had out of stock when the
    request was sent, and no request fails."""
    good = open_bundle(tiny_bundle / "current")
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(good.root, root / good.root.name)
    set_current(root, good.root.name)
    pub, snap = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    settings = (f'swap_check_seconds = 0.2\n[inventory]\nupdates_endpoint = "{pub}"\nsnapshot_endpoint = "{snap}"\n'
                "sync_timeout_s = 60.0\n")
    state_dir = tmp_path / "state"
    shopper = "gone-shopper"
    rng = random.Random(11)
    items = [good.items.id_of(rng.randrange(good.n_items)) for _ in range(40)]
    users = [shopper, shopper, shopper, *shoppers(good, 10), None]
    forbidden: set[str] = set()
    lock = threading.Lock()

    def now_forbidden() -> frozenset[str]:
        with lock:
            return frozenset(forbidden)

    def forbid(sku: str) -> None:
        with lock:
            forbidden.add(sku)

    publishers = [start_publisher(pub, snap, "faults-inventory")]
    servers = [Server(root, state_dir, workers=2, settings_toml=settings)]
    loads: list[Load] = []
    states: list[ItemState] = []

    def live_state(bundle_id: str) -> ItemState:
        states.append(ItemState.open(state_path(state_dir, bundle_id), readonly=True, items=good.items))
        return states[-1]

    def slate() -> set[str]:
        reply = servers[-1].recommend(surface="home", user_id=shopper, count=COUNT)
        assert reply.status == 200, reply.body
        return {i["sku"] for i in reply.json()["items"]}

    def attached(srv: Server, bundle_id: str, what: str) -> None:
        every_worker(srv, lambda b: b["bundle"] == bundle_id and "degraded" not in b["detail"], what)

    figures: dict[str, object] = {}
    try:
        srv = servers[0]
        srv.wait_ready(workers=2)
        state = live_state(good.build_id)
        shown = set.intersection(*(slate() for _ in range(6)))  # by both workers, every time
        first = sorted(shown)[0]
        load = Load(srv, users, items, forbidden=now_forbidden).start()
        loads.append(load)
        load.more()
        # 1. Out of stock, applied by the host's subscriber: from then on in no answer.
        ack = publish_one(wire.Stock(first, False, 0), snap)
        until(lambda: state.progress().seq >= ack.seq, what="the out-of-stock delta applied")
        forbid(first)
        epoch = state.progress().epoch
        shown = set.intersection(*(slate() for _ in range(6)))  # the shopper's slate without it
        assert first not in shown
        second = sorted(shown)[0]
        load.more()

        # 2. The publisher dies: the last state stays, staleness shows on /metrics, no 5xx.
        stop_publisher(publishers[0], signal.SIGKILL)
        killed = time.monotonic()

        def silent_scrape() -> dict | None:
            seen = scrape(srv)
            return seen if value(seen, "aisle_inventory_status", status="silent") == 1 else None

        seen: dict = until(silent_scrape, what="the subscriber reports the publisher silent")  # type: ignore[assignment]
        age = value(seen, "aisle_inventory_last_update_age_seconds")
        assert age > 0
        until(lambda: value(scrape(srv), "aisle_inventory_last_update_age_seconds") > age, what="the update age keeps growing")
        attached(srv, good.build_id, "ready, live state attached")
        load.more(100)
        outage = load.between(killed)
        assert any(second in a.skus for a in outage if a.user == shopper), "items in stock are still served during the outage"

        # 3. A new bundle is published meanwhile: it starts from the last state, not from its own
        # stock flags, and says the feed is silent.
        upcoming = f"{good.build_id}-next"
        publish_copy(root, good.root, "next", lambda copy, build_id: _reseal(copy, build_id), upcoming)
        attached(srv, upcoming, "the new bundle served with the last live state")
        swapped = time.monotonic()
        seen = scrape(srv)
        assert value(seen, "aisle_inventory_status", status="silent") == 1
        assert value(seen, "aisle_inventory_last_update_age_seconds") > age
        load.more(100)
        assert {a.bundle for a in load.between(swapped)} == {upcoming}
        assert any(second in a.skus for a in load.between(swapped) if a.user == shopper)
        load.stop()

        # 4. The whole server restarts, the publisher still gone: the last state again.
        srv.stop()
        srv = Server(root, state_dir, workers=2, settings_toml=settings)
        servers.append(srv)
        srv.wait_ready(workers=2)
        attached(srv, upcoming, "restarted: the last live state attached")
        load = Load(srv, users, items, forbidden=now_forbidden).start()
        loads.append(load)
        load.more(100)
        state = live_state(upcoming)

        # 5. Back, as a restarted inventory service: its own full state, which now has a second
        # item out of stock. The subscriber sees a new epoch and resynchronises from its snapshot.
        resyncs = value(scrape(srv), "aisle_inventory_resyncs_total")
        full_state = tmp_path / "inventory.jsonl"
        full_state.write_text("".join(
            json.dumps({"type": "stock", "sku": sku, "in_stock": False, "qty": 0}) + "\n" for sku in (first, second)))
        restarted = time.monotonic()
        publishers.append(start_publisher(pub, snap, "faults-inventory", load_file=full_state))
        until(lambda: state.progress().epoch not in (0, epoch) and state.status.name == "SYNCED", what="resynced to the new epoch")
        forbid(second)
        resynced = scrape(srv)
        assert value(resynced, "aisle_inventory_status", status="synced") == 1
        assert value(resynced, "aisle_inventory_resyncs_total") >= resyncs + 1
        for _ in range(6):
            assert not slate() & {first, second}
        load.more(100)
        figures = {"during_outage": sum(len(x.between(killed, restarted)) for x in loads),
                   "resyncs": int(value(resynced, "aisle_inventory_resyncs_total"))}
    finally:
        for load in loads:
            load.stop()
        for state in states:
            state.close()
        for srv in servers:
            srv.stop()
        for proc in publishers:
            stop_publisher(proc)
    answers = [a for load in loads for a in load.answers]
    errors = [e for load in loads for e in load.errors]
    statuses = collections.Counter(a.status for a in answers)
    violations = [a for a in answers if set(a.skus) & a.forbidden]
    http_5xx = sum(n for status, n in statuses.items() if status >= 500)
    report("publisher_gone", requests=len(answers), **figures, bundle_swapped_during_outage=1, server_restarted_during_outage=1,
           http_5xx=http_5xx, connection_errors=len(errors), violations=len(violations))
    assert errors == [], errors[:5]
    assert http_5xx == 0 and set(statuses) == {200}, statuses
    assert violations == [], violations[:3]
