"""The reference inventory publisher: the authoritative side of the Clone pattern.

`InventoryPublisher` keeps, per SKU, the latest delta of each kind it has published, numbers its
batches (`seq`, +1 per batch, from 1, per `epoch`), sends them on a PUB socket, and answers on a
ROUTER socket:

- `SnapshotRequest` → its whole state as `SnapshotChunk`s, stamped with the seq it reflects;
- `PublishRequest` → publishes the deltas and replies `PublishAck` (how a short-lived client such
  as `aisle inventory …` hands deltas over: a process that binds its own PUB socket, sends and
  exits would lose its messages to the slow-joiner effect and restart the epoch every time).

Threads: `publish` may be called from any thread; `serve_forever` (or `poll`) runs the ROUTER
socket in one thread. One lock orders state, seq and the PUB socket, so a snapshot is always
exactly the state after batch `seq_at_snapshot`.

A restart is a new epoch, and subscribers rebase their whole state on its snapshot: a restarted
publisher must first `load()` the full current inventory (from its own database), or everything it
does not mention goes back to the bundle's values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec
import zmq

from engine.inventory import wire
from engine.inventory.wire import (
    Delta,
    DeltaBatch,
    Discount,
    NewSku,
    Price,
    Promotion,
    PublishAck,
    PublishRequest,
    Retire,
    SnapshotChunk,
    SnapshotRequest,
    Stock,
    WireError,
)

log = logging.getLogger("aisle.inventory")

# Slot of each delta kind in a SKU's entry; also the order a snapshot lists them in.
_SLOT: dict[type, int] = {NewSku: 0, Stock: 1, Price: 2, Discount: 3, Promotion: 4, Retire: 5}
_EMPTY: tuple[Delta | None, ...] = (None,) * 6


class PublishReport(msgspec.Struct):
    seq: int = 0  # seq of the last batch sent (0: nothing sent)
    accepted: int = 0
    rejected: int = 0
    errors: list[str] = []  # the first few, with line or position


class PublishError(Exception):
    """The publisher could not be reached or did not answer in time."""


def _remember(state: dict[str, tuple[Delta | None, ...]], d: Delta) -> None:
    """Fold one delta into the per-SKU entry so that replaying the entry in slot order gives the
    same row as applying the whole history (engine.inventory.state.StateWriter semantics)."""
    entry = state.get(d.sku, _EMPTY)
    slot = _SLOT[type(d)]
    if slot == 0:
        # A NewSku is a whole listing: it replaces everything before it. That also drops deltas
        # that came before the SKU existed, which subscribers could not apply either.
        entry = (d, None, None, None, None, None)
    else:
        entry = entry[:slot] + (d,) + entry[slot + 1 :]
    state[d.sku] = entry


def compact(history: Iterable[Delta]) -> list[Delta]:
    """The snapshot of a history: per SKU (in order of first appearance) its latest delta of each
    kind, in slot order. Applying it to the bundle gives the same rows as applying the history."""
    state: dict[str, tuple[Delta | None, ...]] = {}
    for d in history:
        _remember(state, d)
    return [d for entry in state.values() for d in entry if d is not None]


class InventoryPublisher:
    """Binds `pub_endpoint` (PUB) and `snapshot_endpoint` (ROUTER); `tcp://127.0.0.1:*` picks a free
    port, and the bound addresses are in `.pub_endpoint` / `.snapshot_endpoint`."""

    def __init__(
        self,
        pub_endpoint: str,
        snapshot_endpoint: str,
        publisher_id: str,
        *,
        epoch: int | None = None,
        context: zmq.Context | None = None,
        sndhwm: int = 100_000,
        max_batch: int = 10_000,
        chunk_size: int = 5_000,
        heartbeat_s: float = 1.0,
        snapshot_send_timeout_s: float = 5.0,
    ) -> None:
        self.publisher_id = publisher_id
        # Nanoseconds since the epoch: distinct across restarts (subscribers only compare for equality).
        self.epoch = time.time_ns() if epoch is None else epoch
        self.seq = 0
        self.max_batch, self.chunk_size, self.heartbeat_s = max_batch, chunk_size, heartbeat_s
        self._own_context = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._lock = threading.Lock()
        self._state: dict[str, tuple[Delta | None, ...]] = {}
        self._last_sent = 0.0
        self._pub = self._ctx.socket(zmq.PUB)
        self._router = self._ctx.socket(zmq.ROUTER)
        try:
            # PUB drops silently past its HWM (STACK-NOTES pitfall 16): size it for bursts; a drop
            # still costs only a resync, never a wrong state.
            self._pub.setsockopt(zmq.SNDHWM, sndhwm)
            self._pub.setsockopt(zmq.LINGER, 1000)
            self._pub.bind(pub_endpoint)
            self.pub_endpoint: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished peer raises instead of dropping
            self._router.setsockopt(zmq.SNDHWM, 1000)
            self._router.setsockopt(zmq.SNDTIMEO, int(snapshot_send_timeout_s * 1000))
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.bind(snapshot_endpoint)
            self.snapshot_endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            self.close()
            raise

    # --- publishing ----------------------------------------------------------------------------

    def load(self, deltas: Iterable[Delta]) -> PublishReport:
        """Set the authoritative state without publishing (start-up, before subscribers ask)."""
        checked = wire.check(list(deltas))
        with self._lock:
            for d in checked.deltas:
                _remember(self._state, d)
            seq = self.seq
        return PublishReport(seq, len(checked.deltas), checked.rejected, checked.errors)

    def publish(self, deltas: Sequence[Delta]) -> PublishReport:
        """Validate, remember and send `deltas` in batches of at most `max_batch`. Invalid deltas
        are left out and reported; the rest go out."""
        checked = wire.check(list(deltas))
        return self._publish_checked(checked)

    def publish_one(self, delta: Delta) -> PublishReport:
        return self.publish([delta])

    def _publish_checked(self, checked: wire.Checked) -> PublishReport:
        good = checked.deltas
        with self._lock:
            for start in range(0, len(good), self.max_batch):
                part = good[start : start + self.max_batch]
                for d in part:
                    _remember(self._state, d)
                self.seq += 1
                self._send(part)
            seq = self.seq
        return PublishReport(seq if good else 0, len(good), checked.rejected, checked.errors)

    def _send(self, deltas: list[Delta]) -> None:
        batch = DeltaBatch(self.publisher_id, self.epoch, self.seq, time.time(), deltas)
        self._pub.send_multipart([wire.TOPIC, wire.encode(batch)])
        self._last_sent = time.monotonic()

    def heartbeat(self) -> None:
        """An empty batch repeating the latest seq: lets subscribers notice a lost last batch, or a
        restart, while nothing else is published."""
        with self._lock:
            if not self._pub.closed:
                self._send([])

    def snapshot(self) -> tuple[int, list[Delta]]:
        """(seq, the latest deltas per SKU in snapshot order) — what a subscriber rebases on."""
        with self._lock:
            seq, entries = self.seq, list(self._state.values())  # entries are immutable tuples
        return seq, [d for entry in entries for d in entry if d is not None]

    # --- the ROUTER socket -------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> int:
        """Answer the requests waiting on the ROUTER socket (waiting up to `timeout_ms` for the
        first). Returns how many were handled."""
        handled = 0
        if not self._router.poll(timeout_ms, zmq.POLLIN):
            return 0
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return handled
            self._answer(frames)
            handled += 1

    def serve_forever(self, stop: threading.Event, poll_ms: int = 100) -> None:
        """Answer requests and send heartbeats until `stop` is set (or the publisher is closed)."""
        while not stop.is_set() and not self._router.closed:
            try:
                self.poll(poll_ms)
            except zmq.ZMQError:
                if self._router.closed:
                    return  # closed under us: the owner is shutting down
                raise
            if self.heartbeat_s > 0 and time.monotonic() - self._last_sent >= self.heartbeat_s:
                self.heartbeat()

    def _answer(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        route, payload = frames[:-1], frames[-1]  # identity (+ a REQ-style empty delimiter)
        try:
            request, checked = wire.decode_request(payload)
        except WireError as exc:
            log.warning("inventory publisher %s: bad request: %s", self.publisher_id, exc)
            self._reply(route, wire.encode(PublishAck(self.publisher_id, self.epoch, 0, 0, 0, [str(exc)])))
            return
        if isinstance(request, SnapshotRequest):
            self._send_snapshot(route, request.subscriber)
        else:
            report = self._publish_checked(checked)
            ack = PublishAck(self.publisher_id, self.epoch, report.seq, report.accepted, report.rejected, report.errors)
            self._reply(route, wire.encode(ack))

    def _reply(self, route: list[bytes], payload: bytes) -> bool:
        try:
            self._router.send_multipart([*route, payload])
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: gone; EAGAIN: not reading for SNDTIMEO
            log.warning("inventory publisher %s: reply not delivered: %s", self.publisher_id, exc)
            return False

    def _send_snapshot(self, route: list[bytes], subscriber: str) -> None:
        seq, deltas = self.snapshot()
        n = max(1, -(-len(deltas) // self.chunk_size))
        for part in range(n):
            chunk = SnapshotChunk(
                self.publisher_id, self.epoch, seq, part, part == n - 1, deltas[part * self.chunk_size : (part + 1) * self.chunk_size]
            )
            if not self._reply(route, wire.encode(chunk)):
                return
        log.info("inventory publisher %s: snapshot at seq %d (%d deltas) sent to %s", self.publisher_id, seq, len(deltas), subscriber)

    def close(self) -> None:
        """Close both sockets (stop `serve_forever` first; if it still runs it returns)."""
        with self._lock:
            self._pub.close()
        self._router.close()
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> InventoryPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- clients: hand deltas to a publisher, in process or running elsewhere -------------------------


def _send_remote(endpoint: str, deltas: list[Delta], timeout_s: float, context: zmq.Context) -> PublishAck:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(wire.encode(PublishRequest("aisle-cli", deltas)))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise PublishError(f"no answer from the inventory publisher at {endpoint} within {timeout_s:g} s")
        return wire.decode_ack(sock.recv())
    finally:
        sock.close()


def _hand_over(batch: list[Delta], publisher: InventoryPublisher | str, timeout_s: float, context: zmq.Context | None) -> PublishReport:
    if isinstance(publisher, InventoryPublisher):
        return publisher.publish(batch)
    ack = _send_remote(publisher, batch, timeout_s, context or zmq.Context.instance())
    return PublishReport(ack.seq, ack.accepted, ack.rejected, ack.errors)


def publish_one(delta: Delta, publisher: InventoryPublisher | str, *, timeout_s: float = 5.0) -> PublishReport:
    """Publish one delta through `publisher`: an InventoryPublisher in this process, or the
    snapshot/control endpoint (e.g. "tcp://127.0.0.1:5557") of one running elsewhere."""
    return publish_from_deltas([delta], publisher, timeout_s=timeout_s)


def publish_from_deltas(
    deltas: Iterable[Delta], publisher: InventoryPublisher | str, *, batch_size: int = 1000, timeout_s: float = 5.0
) -> PublishReport:
    ctx = None if isinstance(publisher, InventoryPublisher) else zmq.Context()
    total = PublishReport()
    try:
        batch: list[Delta] = []
        for d in deltas:
            batch.append(d)
            if len(batch) >= batch_size:
                _merge(total, _hand_over(batch, publisher, timeout_s, ctx))
                batch = []
        if batch:
            _merge(total, _hand_over(batch, publisher, timeout_s, ctx))
    finally:
        if ctx is not None:
            ctx.term()
    return total


def _merge(total: PublishReport, part: PublishReport) -> None:
    total.seq = max(total.seq, part.seq)
    total.accepted += part.accepted
    total.rejected += part.rejected
    total.errors.extend(part.errors[: max(0, 10 - len(total.errors))])


def publish_from_file(
    path: Path, publisher: InventoryPublisher | str, *, batch_size: int = 1000, timeout_s: float = 5.0
) -> PublishReport:
    """Publish a JSON-lines file of deltas, one object per line, e.g.
    `{"type": "stock", "sku": "A1", "in_stock": false, "qty": 0}` (blank lines and lines starting
    with `#` are skipped). Lines that are not valid deltas are reported, the rest published."""
    bad = PublishReport()

    def lines() -> Iterable[Delta]:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                text = line.strip()
                if not text or text.startswith(b"#"):
                    continue
                try:
                    yield wire.decode_json_delta(text)
                except msgspec.DecodeError as exc:
                    bad.rejected += 1
                    if len(bad.errors) < 10:
                        bad.errors.append(f"{path}:{number}: {exc}")

    report = publish_from_deltas(lines(), publisher, batch_size=batch_size, timeout_s=timeout_s)
    report.rejected += bad.rejected
    report.errors = (bad.errors + report.errors)[:10]
    return report
