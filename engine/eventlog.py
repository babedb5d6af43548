"""The durable shopper-event log, with the live state derived from it (counters, recent items).

Every Granian worker process opens one `EventLog` on the same `state_dir`. Everything lives in one
LMDB environment, `state_dir/events.lmdb`, opened with `lock=True` (LMDB's own reader table and
writer mutex work across processes, and the mutex is robust: a writer killed mid-transaction
leaves no lock behind and no partial transaction) and `sync=True` (a commit returns only after
`fdatasync`). LMDB admits one writer at a time across all processes, so a write transaction is
the unit of both atomicity and ordering.

One `append` call (or one group of `append_async` calls) is ONE write transaction that

* skips every event whose `event_id` is already in `ids` (idempotency across workers and restarts),
* gives each new event the next global sequence number (contiguous: 1, 2, 3, … with no gaps, since
  an aborted transaction consumes none) and stores it in `events`,
* updates the decayed per-SKU counters in `item_counters` and the per-shopper ring in `recent`,
* commits, which fsyncs. Only then do callers learn the result, so a 202 sent after it can never
  be lost by a process crash, a SIGKILL or (with honest disks) a power cut.

Served slates (`log_slate`, impressions for experiment analysis) ride the same group commit: the
committer writes the slates queued since its last transaction together with the next group of
events, so they cost no fsync of their own while events flow. They are best effort: the answer
never waits for them, and a full queue or a failed write drops them (counted), never an event.

Databases (keys and values are a file format; docs/event-log.md holds the evolution rules):

| db              | key                                        | value                                          |
|-----------------|--------------------------------------------|------------------------------------------------|
| `meta`          | `format`, `next_seq`, `half_life_s`        | ASCII int / u64 big-endian / f64 little-endian |
| `events`        | seq, u64 big-endian (sorts numerically)    | msgpack array of `StoredEvent`                 |
| `ids`           | event_id UTF-8 (> 256 bytes: 0xFF + blake2b-256) | seq, u64 big-endian                      |
| `item_counters` | SKU UTF-8                                  | f64 little-endian × 6: last_ts, then COUNTERS   |
| `recent`        | user_id UTF-8                              | msgpack array of `RecentItem` arrays, oldest first |
| `slates`        | slate seq, u64 big-endian (own sequence)   | msgpack array of `ServedSlate`                 |

`meta` also holds `next_slate_seq` (u64 big-endian), written by the first slate commit: a log made
before slates existed has neither it nor the `slates` database, and gets both when first written.

Every opener must use the same `map_size` (STACK-NOTES pitfall 4); `MAP_SIZE` is that value.
Open the log in each worker process after it has started (an LMDB environment must not cross a
fork).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import lmdb
import msgspec
import numpy as np

from artifacts.publish import fsync_path
from artifacts.schema import EVENT_TYPE_BY_NAME, EVENT_TYPE_NAMES, SURFACE_BY_NAME, SURFACE_NAMES, EventType
from engine.schemas import EventRejection, EventsResponse

FILE_NAME = "events.lmdb"
FORMAT_VERSION = 1
# Address space, not disk: the file grows only as pages are written. Every opener must pass the
# same value, or readers fail with MDB_MAP_RESIZED once a writer grows the file.
MAP_SIZE = 1 << 36  # 64 GiB ≈ 250 M events at ≈ 250 B each with ids, counters, rings (measured)
RECENT_LIMIT = 50
DEFAULT_HALF_LIFE_S = 6 * 3600.0
# A group commit takes queued calls until it holds this many events (one call is never split).
GROUP_EVENTS = 20_000
# Rows of one read transaction in `iter_events`: a long-lived reader pins pages and makes the
# file grow under concurrent writers, so a long scan is cut into short transactions.
SCAN_CHUNK = 4096
# Named databases: meta, events, ids, item_counters, recent, slates. `slates` came after format 1
# and is additive (an older engine opens the environment with 5 and never looks at it).
MAX_DBS = 6
# Served slates waiting for a commit, by default (the app passes events.slate_queue_limit). Beyond
# it new slates are dropped and counted: the log's writer is behind, and answers must not wait.
SLATE_QUEUE_LIMIT = 20_000
# At most this many slates per transaction, so a backlog never makes one group of events wait
# behind a very large write (a 20-item slate is about 1.7 KB).
GROUP_SLATES = 4096
# With slates queued and no events, the committer waits this long for events (or more slates) to
# share the transaction: one fsync per linger instead of one per request. Events end the wait.
SLATE_LINGER_S = 0.01
# Slates are written only while the file uses less than this share of the map: the rest is kept
# for events, so slates (≈ 1.7 KB per 20-item page, several times an event's size) can never be
# what fills the map and turns event appends into 503s.
SLATE_MAP_SHARE = 0.9

# Validation bounds: the canonical schema's (artifacts.schema, builder.ingest.validate), so every
# logged event is one the builder accepts, plus bounds on free text to keep records small.
MAX_EVENT_ID_CHARS = 128
MAX_ID_BYTES = 64  # user_id, sku
MAX_TEXT_BYTES = 128  # session_id, request_id, device, region
FUTURE_SLACK_S = 300.0  # client clocks run ahead; further ahead is a unit error
MAX_POSITION = np.iinfo(np.int16).max
MAX_DWELL_MS = np.iinfo(np.int32).max

# Decayed counter columns, in the order of `counters()`'s output. Skips count nowhere.
COUNTERS: tuple[str, ...] = ("views", "clicks", "carts", "purchases", "impressions")
_COUNTER_OF_TYPE: dict[int, int] = {
    EventType.DWELL: 0,
    EventType.CLICK: 1,
    EventType.ADD_TO_CART: 2,
    EventType.PURCHASE: 3,
    EventType.IMPRESSION: 4,
}
# Event types that say something about interest and enter the shopper's recent ring (the same ones
# the builder learns from).
INTERACTIONS = frozenset({EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE})


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class EventLogError(Exception):
    """The event log cannot take or serve events; nothing of the failed call was written."""


class EventLogFull(EventLogError):
    """The LMDB map is full: no batch can be made durable until the log is exported and truncated
    or the map is enlarged. Answer 503 with Retry-After, never 202."""


class EventLogFormatError(EventLogError):
    """The file on disk is not an event log this code can read (newer format, or corrupt)."""


class EventLike(Protocol):
    """What `append` reads from each event: `engine.schemas.Event` satisfies it."""

    event_id: str
    user_id: str
    sku: str
    type: str
    ts: float | None
    session_id: str
    surface: str
    request_id: str
    position: int
    dwell_ms: int
    device: str
    region: str


class StoredEvent(msgspec.Struct, array_like=True, frozen=True):
    """One logged event, encoded as a msgpack array in field order (version 1).

    Evolution: a new field gets a default and goes last; a field is never removed, reordered or
    retyped; `type` and `surface` are the schema's codes, never renumbered. Readers ignore trailing
    fields they do not know, so an old reader reads a newer record.
    """

    event_id: str
    ts: float  # epoch seconds (sub-second kept); the server's receive time when the client sent none
    user_id: str
    sku: str
    type: int  # artifacts.schema.EventType
    session_id: str
    surface: int  # index into artifacts.schema.SURFACE_NAMES
    request_id: str
    position: int
    dwell_ms: int
    device: str
    region: str
    received_at: float  # epoch seconds when the append began

    @property
    def type_name(self) -> str:
        return EVENT_TYPE_NAMES[self.type]

    @property
    def surface_name(self) -> str:
        return SURFACE_NAMES[self.surface]


class ServedSlate(msgspec.Struct, array_like=True, frozen=True):
    """One served slate (an impression record), encoded as a msgpack array in field order
    (format 1 of the `slates` database; docs/event-log.md).

    Evolution as for `StoredEvent`: a new field gets a default and goes last; a field is never
    removed, reordered or retyped. The per-item lists are parallel: index i is slot i of the page,
    overall position `offset + i`.
    """

    request_id: str
    ts: float  # epoch seconds, server clock, when the request arrived
    unit: str  # the assignment unit: user_id, else session_id, else ""
    user_id: str  # "" for anonymous
    session_id: str  # "" when none
    surface: int  # index into artifacts.schema.SURFACE_NAMES
    variant: str  # "default", "holdout" or "experiment:variant"
    arm_share: float  # expected share of the experiment's units in this arm (weight/Σweights); 1.0 for default/holdout
    bundle: str  # build id
    skus: list[str]  # served items in slot order
    scores: list[float]
    sources: list[str]  # per item: the source shown in the answer ("ann", "covisit", "popular", "new", …)
    prices: list[float]  # per item: effective price at serve time (live if the inventory feed is on), 0.0 unknown
    categories: list[str]  # per item: leaf category path, "" unknown
    count: int  # items asked for
    offset: int  # cursor offset of this page
    anchors: list[str]  # pdp item / cart SKUs
    fallback: str  # "" = full pipeline, else the degradation step
    took_ms: float  # engine time

    @property
    def surface_name(self) -> str:
        return SURFACE_NAMES[self.surface]


class RecentItem(msgspec.Struct, array_like=True, frozen=True):
    """One interaction in a shopper's ring: (sku, EventType code, ts)."""

    sku: str
    type: int
    ts: float


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one call did. `first_seq` is the seq of `accepted_ids[0]` (the call's accepted events
    have consecutive seqs in that order), 0 when nothing was accepted."""

    accepted_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    rejections: list[EventRejection] = field(default_factory=list)
    first_seq: int = 0

    def response(self) -> EventsResponse:
        return EventsResponse(
            accepted=len(self.accepted_ids),
            duplicates=len(self.duplicate_ids),
            rejected=len(self.rejections),
            rejections=self.rejections,
        )


T = TypeVar("T")
_encode = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(StoredEvent).decode
_decode_ring = msgspec.msgpack.Decoder(list[RecentItem]).decode
_decode_slate = msgspec.msgpack.Decoder(ServedSlate).decode
_SEQ = struct.Struct(">Q")
_F64 = struct.Struct("<d")
_COUNTER = struct.Struct("<" + "d" * (1 + len(COUNTERS)))
_LN2 = math.log(2.0)


def event_problem(event: EventLike, now: float) -> str | None:
    """Why `event` cannot be logged (a sentence for the client), or None if it can."""
    if not 1 <= len(event.event_id) <= MAX_EVENT_ID_CHARS:
        return f"event_id must be 1-{MAX_EVENT_ID_CHARS} characters"
    if not 1 <= len(event.user_id.encode()) <= MAX_ID_BYTES:
        return f"user_id must be 1-{MAX_ID_BYTES} bytes"
    if not 1 <= len(event.sku.encode()) <= MAX_ID_BYTES:
        return f"sku must be 1-{MAX_ID_BYTES} bytes"
    if event.type not in EVENT_TYPE_BY_NAME:
        return "type must be one of " + ", ".join(EVENT_TYPE_NAMES)
    if event.ts is not None and not (math.isfinite(event.ts) and 0 <= event.ts <= now + FUTURE_SLACK_S):
        return "ts must be epoch seconds, not in the future"
    if event.surface not in SURFACE_BY_NAME:
        return "surface must be one of " + ", ".join(SURFACE_NAMES)
    if not -1 <= event.position <= MAX_POSITION:
        return f"position must be a 0-based slot up to {MAX_POSITION}, or -1 for not from a slate"
    if not 0 <= event.dwell_ms <= MAX_DWELL_MS:
        return "dwell_ms must be milliseconds ≥ 0"
    for name in ("session_id", "request_id", "device", "region"):
        if len(getattr(event, name).encode()) > MAX_TEXT_BYTES:
            return f"{name} must be at most {MAX_TEXT_BYTES} bytes"
    return None


def decay(values: np.ndarray, elapsed_s: np.ndarray | float, half_life_s: float) -> np.ndarray:
    """values · 2^(−elapsed/half_life), elapsed clamped at 0 (a counter never grows by waiting)."""
    return values * np.exp2(-np.maximum(elapsed_s, 0.0) / half_life_s)


class EventLog:
    """The log in `state_dir/events.lmdb`; see the module docstring for the format and guarantees.

    `half_life_s` is fixed when the log is created (None: the stored value, or
    `DEFAULT_HALF_LIFE_S` for a new log); passing a different value for an existing log raises,
    because counters decayed at one rate cannot be read at another. `readonly=True` opens an
    existing log for reading only (the builder's exporter). `slate_queue_limit` bounds the served
    slates waiting for a commit (`log_slate`).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        map_size: int = MAP_SIZE,
        half_life_s: float | None = None,
        recent_limit: int = RECENT_LIMIT,
        readonly: bool = False,
        slate_queue_limit: int = SLATE_QUEUE_LIMIT,
    ) -> None:
        if half_life_s is not None and not (math.isfinite(half_life_s) and half_life_s > 0):
            raise ValueError(f"half_life_s must be a positive number of seconds; got {half_life_s}")
        if recent_limit < 1:
            raise ValueError(f"recent_limit must be ≥ 1; got {recent_limit}")
        if slate_queue_limit < 1:
            raise ValueError(f"slate_queue_limit must be ≥ 1; got {slate_queue_limit}")
        state_dir = Path(state_dir)
        self.path = state_dir / FILE_NAME
        self.recent_limit = recent_limit
        self.readonly = readonly
        self.slate_queue_limit = slate_queue_limit
        if readonly:
            if not self.path.is_file():
                raise EventLogError(f"{self.path}: expected an event log here; got no such file (has any worker run?)")
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        try:
            self._env = lmdb.open(
                str(self.path),
                subdir=False,
                map_size=map_size,
                max_dbs=MAX_DBS,
                lock=True,
                sync=True,
                metasync=True,
                readonly=readonly,
                max_readers=256,
            )
        except lmdb.Error as exc:
            raise EventLogFormatError(f"{self.path}: not a readable LMDB event log: {exc}") from exc
        try:
            if not existed:
                fsync_path(state_dir)  # the new file's directory entry, so the log itself survives a crash
            self._env.reader_check()  # free reader slots of processes that died (SIGKILL leaves them)
            create = not readonly
            try:
                self._meta = self._env.open_db(b"meta", create=create)
                self._events = self._env.open_db(b"events", create=create)
                self._ids = self._env.open_db(b"ids", create=create)
                self._counters = self._env.open_db(b"item_counters", create=create)
                self._recent = self._env.open_db(b"recent", create=create)
            except lmdb.NotFoundError as exc:
                raise EventLogFormatError(f"{self.path}: expected the event log's databases; got an LMDB file without them") from exc
            # A log made before slates existed has no `slates` database: a writer adds it here, a
            # read-only opener reads no slates until some writer has (see `_slates_db`).
            self._slate_db: lmdb._Database | None = self._env.open_db(b"slates", create=True) if create else None
            self.half_life_s = self._check_format(half_life_s)
            self._page_size = int(self._env.stat()["psize"])
            self._file_id = _identity(self.path)
        except BaseException:
            self._env.close()
            raise
        self._commits = 0
        self._count_lock = threading.Lock()
        # Group commit state, bound to the event loop of the first `append_async`.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._committer: asyncio.Task[None] | None = None
        self._pending: collections.deque[tuple[list[EventLike], float | None, asyncio.Future[AppendResult]]] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._events_waiting: asyncio.Event | None = None  # ends a slates-only linger
        self._stopping = False
        # Served slates waiting for the next commit (appended and taken on the event loop only).
        self._slate_queue: collections.deque[ServedSlate] = collections.deque()
        self._slates_logged = 0
        self._slates_dropped = 0

    # ---- format -----------------------------------------------------------------------------

    def _check_format(self, half_life_s: float | None) -> float:
        with self._env.begin(db=self._meta) as txn:
            raw_format, raw_half = txn.get(b"format"), txn.get(b"half_life_s")
        if raw_format is None:
            if self.readonly:
                raise EventLogFormatError(f"{self.path}: expected an initialised event log; got one without a format record")
            with self._env.begin(write=True, db=self._meta) as txn:  # writers serialise: one opener initialises
                raw_format, raw_half = txn.get(b"format"), txn.get(b"half_life_s")
                if raw_format is None:
                    raw_format = str(FORMAT_VERSION).encode()
                    raw_half = _F64.pack(half_life_s or DEFAULT_HALF_LIFE_S)
                    txn.put(b"format", raw_format)
                    txn.put(b"half_life_s", raw_half)
                    txn.put(b"next_seq", _SEQ.pack(1))
        try:
            version = int(raw_format)
            stored_half = _F64.unpack(raw_half)[0]  # type: ignore[arg-type]
        except (ValueError, TypeError, struct.error) as exc:
            raise EventLogFormatError(f"{self.path}: corrupt meta record (format {raw_format!r}): {exc}") from exc
        if version > FORMAT_VERSION:
            raise EventLogFormatError(
                f"{self.path}: event log format {version} was made by a newer Aisle; this one reads up to "
                f"format {FORMAT_VERSION} (upgrade the engine, or export the log with the newer one)"
            )
        if version < 1:
            raise EventLogFormatError(f"{self.path}: corrupt meta record: format {version}")
        if half_life_s is not None and half_life_s != stored_half:
            raise EventLogError(
                f"{self.path}: counters were made with half-life {stored_half} s; got {half_life_s} s "
                "(pass the stored value, or start a new state_dir after exporting the log)"
            )
        return stored_half

    # ---- writing ----------------------------------------------------------------------------

    @property
    def commits(self) -> int:
        """Write transactions committed through this object (group commit makes it < calls)."""
        return self._commits

    @property
    def slates_logged(self) -> int:
        """Served slates this object has committed (`log_slate` and `append_slates`)."""
        return self._slates_logged

    @property
    def slates_dropped(self) -> int:
        """Served slates this process dropped: queue full, log closing or read-only, a slate that
        cannot be encoded, or a transaction that could not write them."""
        return self._slates_dropped

    @property
    def slates_queued(self) -> int:
        """Served slates waiting for the next commit."""
        return len(self._slate_queue)

    def append(self, events: Sequence[EventLike], now: float | None = None) -> AppendResult:
        """Log a batch in one fsynced transaction; returns only once it is durable.

        Invalid events are rejected one by one (`rejections`, with their index in `events`);
        an event_id already logged, or repeated within the batch, is a duplicate (only its first
        occurrence counts). Raises `EventLogFull` or `EventLogError` with nothing written.
        """
        if not events:
            return AppendResult()
        return self._commit([(list(events), now)])[0][0]

    async def append_async(self, events: Sequence[EventLike], now: float | None = None) -> AppendResult:
        """`append` for asyncio callers, with group commit: the calls made while a commit is in
        flight are written together in the next single transaction (in call order), and each call
        resolves once that transaction is durable. The blocking commit runs in a thread."""
        if not events:
            return AppendResult()
        if self.readonly:
            raise EventLogError(f"{self.path}: opened read-only; cannot append")
        loop = asyncio.get_running_loop()
        self._ensure_committer(loop)
        future: asyncio.Future[AppendResult] = loop.create_future()
        self._pending.append((list(events), now, future))
        self._wakeup.set()  # type: ignore[union-attr]
        self._events_waiting.set()  # type: ignore[union-attr]
        return await future

    def log_slate(self, slate: ServedSlate) -> bool:
        """Queue a served slate for the next group commit and return at once (call it on the event
        loop, after the answer is sent). The committer writes it in the transaction of the next
        group of events, or in one of its own after `SLATE_LINGER_S` when no events come.

        False: dropped and counted in `slates_dropped` (the queue holds `slate_queue_limit`
        slates, or the log is closing or read-only). A slate whose write fails later is dropped
        and counted too; nothing about a slate ever raises here or fails an event append.
        """
        if type(slate) is not ServedSlate or self._stopping or self.readonly or len(self._slate_queue) >= self.slate_queue_limit:
            self._drop_slates(1)
            return False
        self._ensure_committer(asyncio.get_running_loop())
        self._slate_queue.append(slate)
        self._wakeup.set()  # type: ignore[union-attr]
        return True

    def append_slates(self, slates: Sequence[ServedSlate]) -> int:
        """Log slates in one fsynced transaction (tools and tests; the server uses `log_slate`).
        Returns the first one's slate seq (the rest follow it), 0 for none. Raises ValueError for
        a record that is not a well-formed `ServedSlate`, `EventLogFull` or `EventLogError` with
        nothing written."""
        if self.readonly:
            raise EventLogError(f"{self.path}: opened read-only; cannot append")
        encoded = []
        for index, slate in enumerate(slates):
            value = _encode_slate(slate)
            if value is None:
                raise ValueError(f"slate {index} is not a well-formed ServedSlate (see engine.eventlog.ServedSlate): {slate!r:.200}")
            encoded.append(value)
        if not encoded:
            return 0
        return self._commit([], encoded)[1]

    def _drop_slates(self, n: int) -> None:
        with self._count_lock:
            self._slates_dropped += n

    def _ensure_committer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._stopping:
            raise EventLogError(f"{self.path}: the log is closing; cannot append")
        if self._loop is loop and self._committer is not None and not self._committer.done():
            return
        # A new loop (the old one closed): calls queued on the old one can no longer be answered.
        # Queued slates have no caller waiting and stay queued for the new committer.
        self._loop, self._wakeup, self._events_waiting, self._pending = loop, asyncio.Event(), asyncio.Event(), collections.deque()
        self._committer = loop.create_task(self._run_committer(loop, self._wakeup, self._events_waiting), name="eventlog-committer")

    async def _run_committer(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event, events_waiting: asyncio.Event) -> None:
        while True:
            if not self._pending and not self._slate_queue:
                if self._stopping:
                    return
                await wakeup.wait()
                wakeup.clear()
                continue
            if not self._pending and len(self._slate_queue) < GROUP_SLATES and not self._stopping:
                # Only slates wait: let events (which end the wait) or more slates share the fsync.
                events_waiting.clear()
                timer = loop.call_later(SLATE_LINGER_S, events_waiting.set)
                await events_waiting.wait()
                timer.cancel()
            group, size = [], 0
            while self._pending and (not group or size + len(self._pending[0][0]) <= GROUP_EVENTS):
                item = self._pending.popleft()
                group.append(item)
                size += len(item[0])
            slates = [self._slate_queue.popleft() for _ in range(min(len(self._slate_queue), GROUP_SLATES))]
            outcomes = await asyncio.to_thread(self._commit_group, [(events, now) for events, now, _ in group], slates)
            for (_, _, future), outcome in zip(group, outcomes, strict=True):
                if future.done():  # the caller went away (client disconnect); its events are logged
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _commit_group(self, calls: list[tuple[list[EventLike], float | None]], slates: list[ServedSlate]) -> list[AppendResult | Exception]:
        """Calls and slates in one transaction; each call's result or exception in call order.
        Slates never fail an event: if the group fails, the calls are retried without them
        (`_commit_each`), then the slates alone; slates that still cannot be written are dropped
        and counted."""
        encoded = []
        for slate in slates:
            value = _encode_slate(slate)
            if value is None:
                self._drop_slates(1)
            else:
                encoded.append(value)
        if not encoded:
            return self._commit_each(calls) if calls else []
        if calls:
            try:
                return list(self._commit(calls, encoded)[0])
            except Exception:
                outcomes = self._commit_each(calls)
        else:
            outcomes = []
        try:
            self._commit([], encoded)
        except Exception:
            self._drop_slates(len(encoded))
        return outcomes

    def _commit_each(self, calls: list[tuple[list[EventLike], float | None]]) -> list[AppendResult | Exception]:
        """One transaction for all calls, each call's result or exception in call order. If the
        group fails (a full map, a malformed record), each call is retried alone, so one call's
        failure is never another's."""
        try:
            return list(self._commit(calls)[0])
        except Exception as exc:
            if len(calls) == 1:
                return [exc]
        outcomes: list[AppendResult | Exception] = []
        for call in calls:
            try:
                outcomes.append(self._commit([call])[0][0])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _commit(self, calls: list[tuple[list[EventLike], float | None]], slates: Sequence[bytes] = ()) -> tuple[list[AppendResult], int]:
        """One write transaction: the calls' events, then the encoded slates. → (each call's
        result, the first slate's seq or 0)."""
        if self.readonly:
            raise EventLogError(f"{self.path}: opened read-only; cannot append")
        if _identity(self.path) != self._file_id:
            # Deleted or replaced under us: commits would go to an unlinked file (acknowledged,
            # then gone), or this process and a respawned one would write to different logs.
            raise EventLogError(f"{self.path}: the event log file was removed or replaced since this process opened it; "
                                "nothing is written until the server is restarted")
        if slates and self._map_share() > SLATE_MAP_SHARE:
            raise EventLogFull(f"{self.path}: over {SLATE_MAP_SHARE:.0%} of the map is used; the rest is kept for events, so no slate is written")
        first_slate = 0
        try:
            txn = self._env.begin(write=True)
            try:
                results = self._write(txn, calls) if calls else []
                if slates:
                    first_slate = self._write_slates(txn, slates)
            except BaseException:
                txn.abort()
                raise
            if not slates and not any(r.accepted_ids for r in results):
                # Nothing new: duplicates were found under the writer lock, so their originals'
                # commits had finished (and were fsynced) before this transaction began.
                txn.abort()
                return results, 0
            txn.commit()
        except lmdb.MapFullError as exc:
            raise EventLogFull(
                f"{self.path}: the event log's map ({self._env.info()['map_size']} bytes) is full; "
                "export and archive the log, or raise events.map_size_mib (up to the 64 GiB every reader opens it with)"
            ) from exc
        except lmdb.Error as exc:
            raise EventLogError(f"{self.path}: could not make the batch durable: {exc}") from exc
        with self._count_lock:
            self._commits += 1
            self._slates_logged += len(slates)
        return results, first_slate

    def _map_share(self) -> float:
        """The share of the map the file's pages reach (the high-water mark: LMDB reuses freed
        pages below it, and nothing here frees any)."""
        info = self._env.info()
        return (info["last_pgno"] + 1) * self._page_size / info["map_size"]

    def _write_slates(self, txn: lmdb.Transaction, encoded: Sequence[bytes]) -> int:
        """Put encoded slates under the next slate seqs; → the first. `next_slate_seq` is created
        here on first use, so a log made before slates existed needs no migration."""
        raw = txn.get(b"next_slate_seq", db=self._meta)
        first = _SEQ.unpack(raw)[0] if raw is not None else 1
        for i, value in enumerate(encoded):
            if not txn.put(_SEQ.pack(first + i), value, db=self._slate_db, append=True):
                raise EventLogFormatError(f"{self.path}: the slates database holds keys past next_slate_seq {first}; corrupt meta record")
        txn.put(b"next_slate_seq", _SEQ.pack(first + len(encoded)), db=self._meta)
        return first

    def _write(self, txn: lmdb.Transaction, calls: list[tuple[list[EventLike], float | None]]) -> list[AppendResult]:
        next_seq = _SEQ.unpack(txn.get(b"next_seq", db=self._meta))[0]
        counter_state: dict[bytes, list[float]] = {}
        new_recent: dict[bytes, list[RecentItem]] = {}
        results = []
        for events, now in calls:
            received_at = time.time() if now is None else now
            first_seq = next_seq
            accepted: list[str] = []
            duplicates: list[str] = []
            rejections: list[EventRejection] = []
            for index, event in enumerate(events):
                problem = event_problem(event, received_at)
                if problem is not None:
                    rejections.append(EventRejection(index, event.event_id, problem))
                    continue
                seq_key = _SEQ.pack(next_seq)
                if not txn.put(_id_key(event.event_id), seq_key, db=self._ids, overwrite=False):
                    duplicates.append(event.event_id)
                    continue
                ts = float(event.ts) if event.ts is not None else received_at
                code = EVENT_TYPE_BY_NAME[event.type]
                record = StoredEvent(
                    event.event_id, ts, event.user_id, event.sku, code, event.session_id, SURFACE_BY_NAME[event.surface],
                    event.request_id, event.position, event.dwell_ms, event.device, event.region, received_at,
                )  # fmt: skip
                txn.put(seq_key, _encode(record), db=self._events, append=True)
                next_seq += 1
                accepted.append(event.event_id)
                column = _COUNTER_OF_TYPE.get(code)
                if column is not None:
                    sku_key = event.sku.encode()
                    state = counter_state.get(sku_key)
                    if state is None:
                        raw = txn.get(sku_key, db=self._counters)
                        state = list(_COUNTER.unpack_from(raw)) if raw is not None else [ts] + [0.0] * len(COUNTERS)
                        counter_state[sku_key] = state
                    self._bump(state, column, ts)
                if code in INTERACTIONS:
                    new_recent.setdefault(event.user_id.encode(), []).append(RecentItem(event.sku, code, ts))
            results.append(AppendResult(accepted, duplicates, rejections, first_seq if accepted else 0))
        for sku_key, state in counter_state.items():
            txn.put(sku_key, _COUNTER.pack(*state), db=self._counters)
        for user_key, items in new_recent.items():
            raw = txn.get(user_key, db=self._recent)
            ring = (_decode_ring(raw) if raw is not None else []) + items
            ring.sort(key=lambda r: r.ts)  # stable: equal times keep arrival order
            txn.put(user_key, _encode(ring[-self.recent_limit :]), db=self._recent)
        txn.put(b"next_seq", _SEQ.pack(next_seq), db=self._meta)
        return results

    def _bump(self, state: list[float], column: int, ts: float) -> None:
        """Add one event at `ts` to a counter state [last_ts, c0, …]: the state always holds
        Σ 2^(−(last_ts − t_i)/h), so events may arrive in any order."""
        last = state[0]
        if ts >= last:
            factor = math.exp(-(ts - last) / self.half_life_s * _LN2)
            for i in range(1, len(state)):
                state[i] *= factor
            state[0] = ts
            state[1 + column] += 1.0
        else:
            state[1 + column] += math.exp(-(last - ts) / self.half_life_s * _LN2)

    # ---- reading ----------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The seq of the newest logged event (0 for an empty log). Seqs are 1, 2, …, last_seq."""
        with self._env.begin(db=self._meta) as txn:
            return _SEQ.unpack(txn.get(b"next_seq"))[0] - 1

    def iter_events(self, since_seq: int = 0) -> Iterator[tuple[int, StoredEvent]]:
        """(seq, event) for every event with seq > `since_seq`, in seq order (the commit order),
        up to the newest at the time each chunk is read."""
        return self._scan(self._events, _decode_event, since_seq)

    def last_slate_seq(self) -> int:
        """The seq of the newest logged slate (0 for none). Slate seqs are 1, 2, …, last_slate_seq,
        a sequence of their own (not the events')."""
        with self._env.begin(db=self._meta) as txn:
            raw = txn.get(b"next_slate_seq")
        return 0 if raw is None else _SEQ.unpack(raw)[0] - 1

    def iter_slates(self, since_seq: int = 0) -> Iterator[tuple[int, ServedSlate]]:
        """(slate seq, slate) for every slate with seq > `since_seq`, in seq order (commit order),
        up to the newest at the time each chunk is read; short read transactions as `iter_events`."""
        db = self._slates_db()
        if db is None:
            return
        yield from self._scan(db, _decode_slate, since_seq)

    def _scan(self, db: lmdb._Database, decode: Callable[[bytes], T], since_seq: int) -> Iterator[tuple[int, T]]:
        """(seq, record) of a seq-keyed database from `since_seq` + 1, SCAN_CHUNK rows per read
        transaction (a long-lived reader would pin pages and make the file grow under writers)."""
        start = max(since_seq, 0) + 1
        while True:
            chunk: list[tuple[int, T]] = []
            with self._env.begin(db=db, buffers=True) as txn:
                cursor = txn.cursor()
                if cursor.set_range(_SEQ.pack(start)):
                    for key, value in cursor:
                        chunk.append((_SEQ.unpack(key)[0], decode(value)))
                        if len(chunk) >= SCAN_CHUNK:
                            break
            yield from chunk
            if len(chunk) < SCAN_CHUNK:
                return
            start = chunk[-1][0] + 1

    def _slates_db(self) -> lmdb._Database | None:
        """The `slates` handle; a read-only opener of a log that had none yet looks again (a
        writer may have added it since)."""
        if self._slate_db is None:
            try:
                self._slate_db = self._env.open_db(b"slates", create=False)
            except lmdb.NotFoundError:
                return None
        return self._slate_db

    def seq_of(self, event_id: str) -> int | None:
        """The seq an event_id was logged under, or None."""
        with self._env.begin(db=self._ids) as txn:
            raw = txn.get(_id_key(event_id))
        return None if raw is None else _SEQ.unpack(raw)[0]

    def counters(self, skus: Sequence[str], now: float | None = None) -> np.ndarray:
        """float32 [len(skus), len(COUNTERS)]: each SKU's decayed counts at `now` (default: the
        clock), columns in `COUNTERS` order; zeros for a SKU never seen. One read transaction."""
        return self.decayed(self.raw_counters(skus), now)

    def raw_counters(self, skus: Sequence[str]) -> np.ndarray:
        """float64 [len(skus), 1 + len(COUNTERS)]: (as-of time, counts as of then) per SKU, all
        zeros for a SKU never seen; `decayed` brings them to a moment. One read transaction."""
        raw = np.zeros((len(skus), 1 + len(COUNTERS)), dtype=np.float64)
        with self._env.begin(db=self._counters, buffers=True) as txn:
            for i, sku in enumerate(skus):
                value = txn.get(sku.encode())
                if value is not None:
                    raw[i] = _COUNTER.unpack_from(value)
        return raw

    def decayed(self, raw: np.ndarray, now: float | None = None) -> np.ndarray:
        """raw_counters rows decayed to `now` (default: the clock): float32 [n, len(COUNTERS)]."""
        if len(raw) == 0:
            return np.zeros((0, len(COUNTERS)), dtype=np.float32)
        now = time.time() if now is None else now
        return decay(raw[:, 1:], now - raw[:, :1], self.half_life_s).astype(np.float32)

    def recent(self, user_id: str) -> list[RecentItem]:
        """The shopper's last `recent_limit` interactions (click, add_to_cart, purchase), oldest first."""
        with self._env.begin(db=self._recent, buffers=True) as txn:
            raw = txn.get(user_id.encode())
            return _decode_ring(raw) if raw is not None else []

    def recent_rows(self, user_id: str, row_of: Callable[[str], int], since_ts: float = 0.0) -> np.ndarray:
        """int32 rows, oldest first, of the shopper's recent interactions at or after `since_ts`
        (the bundle's end: earlier ones are already in its snapshot), mapped by `row_of` (a
        bundle's `items.row_of`: −1 for a SKU it does not know, which is dropped)."""
        return self.recent_interactions(user_id, row_of, since_ts)[0]

    def recent_interactions(self, user_id: str, row_of: Callable[[str], int], since_ts: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """`recent_rows` and, aligned with them, each interaction's EventType code (int8): what
        the request path needs to tell a purchase (never recommended again) from a click."""
        items = [r for r in self.recent(user_id) if r.ts >= since_ts]
        if not items:
            return np.zeros(0, np.int32), np.zeros(0, np.int8)
        rows = np.fromiter((row_of(r.sku) for r in items), dtype=np.int32, count=len(items))
        types = np.fromiter((r.type for r in items), dtype=np.int8, count=len(items))
        known = rows >= 0
        return rows[known], types[known]

    # ---- lifetime ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Let queued `append_async` calls and slates commit, stop the committer, close the
        environment."""
        self._stopping = True
        task = self._committer
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            self._wakeup.set()  # type: ignore[union-attr]
            self._events_waiting.set()  # type: ignore[union-attr]
            await task
        if self._slate_queue and not self.readonly:  # queued under an event loop that has ended
            slates = list(self._slate_queue)
            self._slate_queue.clear()
            await asyncio.to_thread(self._commit_group, [], slates)
        self.close()

    def close(self) -> None:
        """Close the environment now; slates still queued are dropped (counted). `aclose` writes them."""
        self._stopping = True
        if self._slate_queue:
            self._drop_slates(len(self._slate_queue))
            self._slate_queue.clear()
        self._env.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode_slate(slate: object) -> bytes | None:
    """The record of a well-formed `ServedSlate`, else None. The record is decoded back because a
    Struct does not check its field types when built: a value a reader would choke on (a numpy
    scalar, a lone surrogate, a number where a string goes) must never reach the file."""
    if type(slate) is not ServedSlate:
        return None
    try:
        value = _encode(slate)
        _decode_slate(value)
    except Exception:  # anything that cannot make a readable record: the caller drops it
        return None
    return value


def _id_key(event_id: str) -> bytes:
    # LMDB keys are at most 511 bytes; 128 characters can be 512. UTF-8 never contains 0xFF, so a
    # hashed key cannot collide with a raw one.
    raw = event_id.encode()
    return raw if len(raw) <= 256 else b"\xff" + hashlib.blake2b(raw, digest_size=32).digest()

