"""The inventory subscriber: the one writer of a host's item state (the Clone pattern, ZeroMQ
guide ch. 5, models 3–5).

It subscribes to the publisher's batches first, then asks for a snapshot; it applies the snapshot
and the batches that came after it (seq > seq_at_snapshot), and from then on each batch in seq
order. It asks for a new snapshot on (a) a seq gap, (b) start (it may have missed anything), (c) a
batch or heartbeat from another publisher epoch (a restart). While it waits for a snapshot it
still applies every batch as it arrives — an out-of-stock must not wait for a resync — and the
snapshot then rebases the state on bundle ⊕ snapshot ⊕ later batches, each row written once.

Every socket is polled with a timeout (STACK-NOTES pitfall 16), so `run` returns within
`poll_ms` of `stop` being set, and a publisher that never answers costs a retry, never a hang.

Run it once per host: as a thread of the `aisle serve` supervisor (`Subscriber.run(stop)`, or
`follow(...)` to track bundle swaps), or as a process: `python -m engine.inventory.subscriber`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import zmq

from artifacts.bundle import Bundle, open_bundle, resolve
from artifacts.errors import BundleError
from artifacts.idmap import IdMap
from engine.inventory import wire
from engine.inventory.embed import make_embedder
from engine.inventory.state import (
    DEFAULT_CAPACITY,
    Applied,
    Baseline,
    ItemState,
    StateError,
    StateWriter,
    Status,
    carried_deltas,
    state_path,
)
from engine.inventory.wire import DeltaBatch, NewSku, SnapshotChunk, SnapshotRequest, WireError

log = logging.getLogger("aisle.inventory")


class Subscriber:
    """Keeps `state` (opened for writing) in step with one publisher.

    bundle_items: the bundle's SKU → row map; bundle: the same bundle, for the values a resync
    returns untouched rows to (without it, rows the snapshot does not mention keep their values);
    embed: optional hook giving a new SKU's item vector (float32 [dim]) before it becomes visible;
    drop_every_n: test hook, discard every n-th update message as if the network lost it.
    """

    def __init__(
        self,
        state: ItemState,
        bundle_items: IdMap,
        updates_endpoint: str,
        snapshot_endpoint: str,
        *,
        bundle: Bundle | None = None,
        name: str | None = None,
        context: zmq.Context | None = None,
        embed: Callable[[NewSku], np.ndarray | None] | None = None,
        rcvhwm: int = 200_000,
        poll_ms: int = 100,
        snapshot_timeout_s: float = 3.0,
        retry_s: tuple[float, float] = (0.2, 5.0),
        silent_after_s: float = 5.0,
        max_buffer: int = 100_000,
        drop_every_n: int = 0,
    ) -> None:
        self.state = state
        self.writer = StateWriter(state, bundle_items, Baseline.of(bundle) if bundle is not None else None, embed)
        self.updates_endpoint, self.snapshot_endpoint = updates_endpoint, snapshot_endpoint
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._ctx = context
        self.rcvhwm, self.poll_ms = rcvhwm, poll_ms
        self.snapshot_timeout_s, self.retry_s, self.silent_after_s = snapshot_timeout_s, retry_s, silent_after_s
        self.drop_every_n = drop_every_n
        self.synced = threading.Event()  # set after each completed resync (tests, readiness)
        self._key: tuple[str, int] | None = None  # (publisher, epoch) synchronised with
        self._last_seq = 0
        self._superseded: set[tuple[str, int]] = set()  # epochs replaced by a newer one
        self._need: str | None = None  # why a snapshot is needed, or None
        self._retry_at = 0.0
        self._backoff = retry_s[0]
        self._buffer: deque[DeltaBatch] = deque(maxlen=max_buffer)
        self._received = 0
        self._last_heard = time.monotonic()
        # A state that already holds a synced picture (a file this host's previous subscriber left,
        # or one carried over from the previous bundle's state by `carry`) stays `silent` during the
        # start resync instead of `resyncing`, so workers keep its last state when the publisher
        # cannot be reached (rather than the bundle's own stock flags: items sold out would return).
        self._carried = state.status in (Status.SYNCED, Status.SILENT)

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Subscribe, synchronise, apply, until `stop` is set (returns within about poll_ms)."""
        ctx = self._ctx if self._ctx is not None else zmq.Context()
        sub = ctx.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC)
            sub.connect(self.updates_endpoint)
            self._want("start")
            while not stop.is_set():
                if self._need is not None and time.monotonic() >= self._retry_at:
                    self._resync(ctx, sub, stop)
                    continue
                wait = self.poll_ms
                if self._need is not None:
                    wait = max(1, min(wait, int((self._retry_at - time.monotonic()) * 1000)))
                if sub.poll(wait, zmq.POLLIN):
                    self._drain(sub)
                self._tick()
        finally:
            sub.close(0)
            if self._ctx is None:
                ctx.term()

    def _tick(self) -> None:
        now = time.monotonic()
        self.state.beat()
        if self._need is None:
            silent = now - self._last_heard > self.silent_after_s
            want = Status.SILENT if silent else Status.SYNCED
            if self.state.status != want:
                self.state.set_status(want)

    def _drain(self, sub: zmq.Socket, limit: int = 10_000) -> None:
        for _ in range(limit):
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_message(frames)

    def _on_message(self, frames: list[bytes]) -> None:
        st = self.state
        if len(frames) != 2 or frames[0] != wire.TOPIC:
            st.count("bad_messages")
            return
        self._received += 1
        if self.drop_every_n and self._received % self.drop_every_n == 0:
            st.count("dropped_on_purpose")
            return
        try:
            batch, checked = wire.decode_batch(frames[1])
        except WireError as exc:
            st.count("bad_messages")
            log.warning("inventory subscriber: %s", exc)
            return
        if checked.rejected:
            st.count("rejected_deltas", checked.rejected)
            log.warning("inventory subscriber: %d bad deltas in batch %d: %s", checked.rejected, batch.seq, "; ".join(checked.errors[:3]))
        self._last_heard = time.monotonic()
        self._on_batch(batch)

    def _on_batch(self, batch: DeltaBatch) -> None:
        st = self.state
        key = (batch.publisher, batch.epoch)
        if key in self._superseded:
            st.count("stale_batches")
            return
        if self._need is not None:
            # Resynchronising: fresh beats consistent (apply now); the snapshot settles it after.
            self._buffer.append(batch)
            self._apply(batch)
            return
        if key != self._key:
            self._want(f"publisher {batch.publisher} epoch {batch.epoch} (was {self._key})")
            self._buffer.append(batch)
            self._apply(batch)
            return
        if batch.seq <= self._last_seq:
            st.count("heartbeats" if batch.seq == self._last_seq and not batch.deltas else "duplicate_batches")
            return
        # Publishers never send an empty batch except as a heartbeat, which repeats the latest seq:
        # a heartbeat ahead of us means that batch was lost.
        if batch.seq > self._last_seq + 1 or not batch.deltas:
            st.count("gaps")
            self._want(f"gap: seq {batch.seq} after {self._last_seq}")
            self._buffer.append(batch)
            self._apply(batch)
            return
        self._apply(batch)
        self._last_seq = batch.seq
        st.set_progress(batch.publisher, batch.epoch, batch.seq)

    def _apply(self, batch: DeltaBatch) -> None:
        st = self.state
        if not batch.deltas:
            st.count("heartbeats")
            return
        self._record(self.writer.apply(batch.deltas))
        st.count("applied_batches")
        st.observe_lag(time.time() - batch.sent_at)

    def _record(self, done: Applied) -> None:
        st = self.state
        st.count("applied_deltas", done.applied)
        for name, n in (("rejected_deltas", done.rejected), ("unknown_skus", done.unknown), ("capacity_full", done.capacity_full), ("reverted_rows", done.reverted)):
            if n:
                st.count(name, n)

    def _want(self, reason: str) -> None:
        if self._need is None:
            log.info("inventory subscriber %s: resync (%s)", self.name, reason)
            self._need = reason
            self._retry_at = time.monotonic()
            carried = self._carried and self._key is None  # never synced by this subscriber yet
            self.state.set_status(Status.SILENT if carried else Status.RESYNCING)

    def carry(self, previous: ItemState, baseline: Baseline) -> int:
        """Start this (new, not yet running) subscriber's state from `previous`, the state of the
        bundle it replaces, while that one's publisher is silent: every row the live feed had
        changed there is set here too (the same SKUs), with its progress, and the state is marked
        `silent` (synced once, nothing heard since) until its own first resync, which rebases it
        on this bundle and the publisher's snapshot as usual. `baseline`: the values of
        `previous`'s bundle. Returns the deltas applied."""
        deltas = carried_deltas(previous, baseline)
        # SKUs that left the catalog with this bundle are not carried (they would count as unknown).
        listed = {d.sku for d in deltas if type(d) is NewSku}
        deltas = [d for d in deltas if d.sku in listed or self.writer.items.row_of(d.sku) >= 0]
        done = self.writer.rebase(deltas)
        self._record(done)
        p = previous.progress()
        self.state.set_progress(p.publisher, p.epoch, p.seq, updated_at=p.updated_at)
        self.state.set_status(Status.SILENT)
        self._carried = True
        return done.applied

    # --- snapshot --------------------------------------------------------------------------------

    def _fetch_snapshot(self, ctx: zmq.Context, sub: zmq.Socket, stop: threading.Event) -> list[SnapshotChunk] | None:
        """Ask for a snapshot; keep draining updates meanwhile. None on timeout, break or stop."""
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(self.snapshot_endpoint)
            try:
                dealer.send(wire.encode(SnapshotRequest(self.name)), zmq.NOBLOCK)
            except zmq.Again:
                log.warning("inventory subscriber %s: cannot reach %s for a snapshot", self.name, self.snapshot_endpoint)
                return None
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            poller.register(dealer, zmq.POLLIN)
            parts: list[SnapshotChunk] = []
            deadline = time.monotonic() + self.snapshot_timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                ready = dict(poller.poll(min(self.poll_ms, 50)))
                self.state.beat()
                if sub in ready:
                    self._drain(sub)
                if dealer not in ready:
                    continue
                chunk, checked = wire.decode_chunk(dealer.recv())
                if checked.rejected:
                    self.state.count("rejected_deltas", checked.rejected)
                first = parts[0] if parts else chunk
                if chunk.part != len(parts) or (chunk.publisher, chunk.epoch, chunk.seq_at_snapshot) != (first.publisher, first.epoch, first.seq_at_snapshot):
                    raise WireError(f"snapshot chunk {chunk.part} out of order (expected {len(parts)})")
                parts.append(chunk)
                if chunk.last:
                    return parts
                deadline = time.monotonic() + self.snapshot_timeout_s
            if not stop.is_set():
                log.warning("inventory subscriber %s: no (complete) snapshot from %s within %g s", self.name, self.snapshot_endpoint, self.snapshot_timeout_s)
            return None
        except WireError as exc:
            log.warning("inventory subscriber %s: bad snapshot: %s", self.name, exc)
            return None
        finally:
            dealer.close(0)  # a late reply goes to a closed identity: the ROUTER drops it

    def _resync(self, ctx: zmq.Context, sub: zmq.Socket, stop: threading.Event) -> None:
        st = self.state
        parts = self._fetch_snapshot(ctx, sub, stop)
        if parts is None:
            if not stop.is_set():
                st.count("resync_failures")
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, self.retry_s[1])
            return
        first = parts[0]
        key, seq_at = (first.publisher, first.epoch), first.seq_at_snapshot
        deltas = [d for chunk in parts for d in chunk.deltas]
        n_snapshot = len(deltas)
        # Updates after the snapshot, in seq order, while they are contiguous.
        expected, gap, newer = seq_at + 1, False, False
        mine = sorted((b for b in self._buffer if (b.publisher, b.epoch) == key), key=lambda b: b.seq)
        for b in mine:
            if b.seq < expected:
                continue
            if b.seq > expected or not b.deltas:  # a heartbeat at `expected` stands for a lost batch
                gap = True
                break
            deltas.extend(b.deltas)
            expected += 1
        # Another epoch heard after this one's batches: it restarted again while we fetched.
        seen_key = False
        for b in self._buffer:
            seen_key = seen_key or (b.publisher, b.epoch) == key
            newer = newer or (seen_key and (b.publisher, b.epoch) != key)
        done = self.writer.rebase(deltas)
        self._record(done)
        if self._key is not None and self._key != key:
            self._superseded.add(self._key)
        self._key, self._last_seq = key, expected - 1
        self._buffer.clear()
        st.count("resyncs")
        st.count("snapshot_deltas", n_snapshot)
        st.set_progress(key[0], key[1], self._last_seq)
        self._need = None
        self._backoff = self.retry_s[0]
        self._last_heard = time.monotonic()
        log.info(
            "inventory subscriber %s: synced to %s epoch %d at seq %d (snapshot %d deltas, %d rows back to the bundle)",
            self.name, key[0], key[1], self._last_seq, n_snapshot, done.reverted,
        )
        if gap or newer:
            self._want("gap after the snapshot" if gap else "publisher restarted during the snapshot")
        else:
            st.set_status(Status.SYNCED)
            self.synced.set()


# --- bundle swaps and the process entry point ----------------------------------------------------


class _Running:
    def __init__(self, root: Path, bundle: Bundle, state: ItemState, sub: Subscriber) -> None:
        self.root, self.bundle, self.state, self.sub = root, bundle, state, sub
        self.stop = threading.Event()
        self.thread = threading.Thread(target=sub.run, args=(self.stop,), name=f"inventory-{bundle.build_id}", daemon=True)

    def end(self) -> None:
        self.stop.set()
        self.thread.join()
        self.state.close()


def follow(
    bundles: Path,
    state_dir: Path,
    updates_endpoint: str,
    snapshot_endpoint: str,
    stop: threading.Event,
    *,
    capacity: int = DEFAULT_CAPACITY,
    text_dim: int = 0,
    check_s: float = 1.0,
    sync_timeout_s: float = 30.0,
    name: str | None = None,
    pinned: Sequence[str] = (),
) -> None:
    """Keep the state of whatever `<bundles>/current` points at in step with the publisher, and
    the state of every bundle an experiment arm pins (`pinned`: build ids under `bundles`), so an
    arm served from another bundle never shows what has sold out.

    When `current` moves, create the new build's state file (from the new bundle), start a second
    subscriber on it, wait until it is synced (or `sync_timeout_s`), then stop the old one unless an
    arm pins it. If the publisher is silent when `current` moves (gone: the new state cannot sync),
    the new state starts from the previous one's rows instead (`Subscriber.carry`) and says
    `silent`, so workers serve the last known stock, not the new bundle's own flags, until the
    publisher is back and a resync settles it. State files of builds other than the current, the
    previous and the pinned ones are deleted (unlinking is safe while workers still map them). A
    pinned bundle that cannot be opened is retried every `check_s` (the engine's start already
    refused one that is missing)."""
    pins = set(pinned)
    runs: dict[str, _Running] = {}  # build id → its subscriber: the pinned ones and the current one
    running: _Running | None = None

    def start(root: Path, previous: _Running | None = None) -> _Running:
        bundle = open_bundle(root, verify="sizes")
        state = ItemState.create(state_path(state_dir, bundle.build_id), bundle, capacity, text_dim=text_dim)
        sub = Subscriber(state, bundle.items, updates_endpoint, snapshot_endpoint, bundle=bundle, name=name, embed=make_embedder(bundle))
        if previous is not None and previous.state.status == Status.SILENT:
            # The publisher is gone: this state could not sync, and workers would serve the new
            # bundle's own stock flags. Start it from the last state instead.
            carried = sub.carry(previous.state, Baseline.of(previous.bundle))
            log.warning("inventory: the publisher is silent; %s starts from the last state of %s (%d deltas) until it can sync",
                        bundle.build_id, previous.bundle.build_id, carried)
        run = _Running(root, bundle, state, sub)
        run.thread.start()
        runs[bundle.build_id] = run
        return run

    try:
        while not stop.is_set():
            for build_id in sorted(pins - set(runs)):
                try:
                    start(Path(bundles) / build_id)
                    log.info("inventory: following pinned bundle %s", build_id)
                except (BundleError, StateError, OSError) as exc:
                    log.error("inventory: cannot follow pinned bundle %s: %s", build_id, exc)
            try:
                root = resolve(Path(bundles))
                if running is None or root != running.root:
                    fresh = runs.get(root.name) if root.name in pins else None  # already kept, by its pin
                    if fresh is None:
                        fresh = start(root, running)
                    if running is not None:
                        deadline = time.monotonic() + sync_timeout_s
                        while not stop.is_set() and time.monotonic() < deadline and not fresh.sub.synced.wait(0.1):
                            pass
                        previous = state_path(state_dir, running.bundle.build_id)
                        if running.bundle.build_id not in pins:
                            runs.pop(running.bundle.build_id, None)
                            running.end()
                        _prune(state_dir, keep={fresh.state.path.name, previous.name, *(state_path(state_dir, b).name for b in pins)})
                    running = fresh
                    log.info("inventory: following bundle %s (%s)", fresh.bundle.build_id, fresh.state.path)
            except (BundleError, StateError, OSError) as exc:
                log.error("inventory: cannot follow %s: %s", bundles, exc)
            stop.wait(check_s)
    finally:
        for run in runs.values():
            run.end()


def _prune(state_dir: Path, keep: set[str]) -> None:
    for path in Path(state_dir).glob("items-*.state"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".lock").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.inventory.subscriber", description="Apply live inventory deltas to this host's item state.")
    p.add_argument("--bundles", default="bundles", help="bundle root holding `current` (default: bundles)")
    p.add_argument("--state-dir", default="state", help="where items-<build>.state lives; tmpfs is best (default: state)")
    p.add_argument("--updates", required=True, help="publisher's PUB endpoint, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--snapshot", required=True, help="publisher's ROUTER endpoint, e.g. tcp://127.0.0.1:5557")
    p.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, help=f"new-SKU rows per state file (default: {DEFAULT_CAPACITY})")
    p.add_argument("--text-dim", type=int, default=0, help="width of new SKUs' text embeddings to keep (default: 0, none)")
    p.add_argument("--name", default=None, help="subscriber name in the publisher's log (default: host:pid)")
    p.add_argument("--pin", action="append", default=[], metavar="BUILD_ID",
                   help="also keep the state of this bundle (an experiment arm serves it); repeatable")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    follow(Path(args.bundles), Path(args.state_dir), args.updates, args.snapshot, stop, capacity=args.capacity, text_dim=args.text_dim,
           name=args.name, pinned=args.pin)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
