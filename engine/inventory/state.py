"""Live item state: one memory-mapped file per (host, bundle build) that every worker reads and one
subscriber writes (DESIGN.md §6). Stock, price, discount, promotion and retirement of every bundle
row, plus rows for SKUs that arrived after the build.

File format (`<state_dir>/items-<build_id>.state`, little-endian, version 1; docs/inventory-wire.md):

    offset 0       header, 4096 bytes (`HEADER`, a numpy structured dtype with fixed offsets):
                   static:   magic b"AISLEINV", format version, header bytes, build id (S128),
                             n_base, capacity, dim, text_dim, file bytes, created_at
                   mutable:  n_new (int64, at offset 256; published last), progress seqlock and
                             last applied (publisher, epoch, seq, updated_at), status,
                             heartbeat_at, writer pid, counters (`STAT_NAMES`), lag histogram
    then, each at the next multiple of 4096, for all R = n_base + capacity rows:
        version uint32 [R]   seqlock counter per row (odd while the row is being written)
        in_stock uint8 [R], stock_qty int32 [R], price float32 [R], discount float32 [R],
        promo uint32 [R], retired uint8 [R]
    and for the C = capacity new-SKU rows only (row n_base + i is slot i):
        sku S64 [C], title S128 [C], category_path S256 [C], brand S64 [C], seller S64 [C],
        created_at float64 [C], has_vector uint8 [C], vector float32 [C, dim],
        text_embedding float32 [C, text_dim]

Rows `0 .. n_base-1` are the bundle's rows (artifacts.idmap order); rows `n_base .. n_base+n_new-1`
are new SKUs in arrival order. Readers never look at rows past `n_base + n_new`. A row, once
published, keeps its SKU and static fields for the life of the file.

Writer protocol: the mutable fields of a row change only inside its seqlock (kernels.seqlock);
a new row's static fields (and vector, if the embed hook gives one) are written before `n_new` is
raised past it with a release store. Header counters are single int64 stores (no lock).
"""

from __future__ import annotations

import bisect
import enum
import fcntl
import mmap
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import msgspec
import numpy as np

from artifacts import layout as bundle_layout
from artifacts.bundle import Bundle
from artifacts.idmap import IdMap
from engine.inventory.wire import (
    BRAND_BYTES,
    CATEGORY_PATH_BYTES,
    MAX_SKU_BYTES,
    SELLER_BYTES,
    TITLE_BYTES,
    Delta,
    Discount,
    NewSku,
    Price,
    Promotion,
    Retire,
    Stock,
)
from kernels.seqlock import (
    DEFAULT_RETRIES,
    gather_offers,
    load_acquire,
    settle_odd_rows,
    store_release,
    write_rows,
)

MAGIC = b"AISLEINV"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
ALIGN = 4096
DEFAULT_CAPACITY = 65_536  # new SKUs a state file can take before the next bundle
_CHUNK = 1 << 20  # rows per pass when copying or comparing whole columns


class Status(enum.IntEnum):
    NEW = 0  # bundle values only: no subscriber has synchronised this file yet
    SYNCED = 1  # in step with the publisher
    RESYNCING = 2  # a gap, a new epoch or a start: fetching a snapshot (deltas still applied)
    SILENT = 3  # synced, but nothing (not even a heartbeat) heard for a while


# Counters in the header, in this order (int64 each). Never reorder; add at the end.
STAT_NAMES: tuple[str, ...] = (
    "applied_batches",  # update batches applied (heartbeats not included)
    "applied_deltas",
    "rejected_deltas",  # failed validation (wire) or could not be stored (bad embedding size)
    "unknown_skus",  # deltas for a SKU neither in the bundle nor announced by a NewSku
    "capacity_full",  # NewSku refused: no free new-SKU row
    "gaps",  # a seq jumped: messages were lost
    "resyncs",  # snapshots applied
    "resync_failures",  # snapshot requests that timed out or broke
    "snapshot_deltas",
    "duplicate_batches",  # seq already applied
    "stale_batches",  # from a publisher epoch already replaced
    "bad_messages",  # unusable envelope
    "heartbeats",
    "dropped_on_purpose",  # test hook (Subscriber drop_every_n)
    "reverted_rows",  # rows put back to the bundle's values by a resync
    "lag_last_ns",  # publish → apply of the latest batch
    "lag_max_ns",
    "lag_sum_ns",
    "lag_count",
)
STATS_SLOTS = 32
_STAT = {name: i for i, name in enumerate(STAT_NAMES)}
LAG_BOUNDS: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)  # seconds; + overflow
LAG_SLOTS = 16

HEADER = np.dtype(
    {
        "names": [
            "magic", "version", "header_bytes", "build_id", "n_base", "capacity", "dim", "text_dim", "file_bytes",
            "created_at", "n_new", "progress_version", "status", "epoch", "seq", "updated_at", "heartbeat_at",
            "writer_pid", "publisher", "stats", "lag_buckets",
        ],
        "formats": [
            "S8", "<u4", "<u4", "S128", "<i8", "<i8", "<i4", "<i4", "<i8",
            "<f8", "<i8", "<u4", "<u4", "<i8", "<i8", "<f8", "<f8",
            "<i8", "S64", ("<i8", (STATS_SLOTS,)), ("<i8", (LAG_SLOTS,)),
        ],
        "offsets": [0, 8, 12, 16, 144, 152, 160, 164, 168, 176, 256, 264, 268, 272, 280, 288, 296, 304, 312, 384, 640],
        "itemsize": HEADER_BYTES,
    }
)
_N_NEW_AT = 256
# The mutable header fields as plain words, for cheap single stores on the apply path.
_W_EPOCH, _W_SEQ, _W_UPDATED, _W_HEARTBEAT, _W_PID = 272 // 8, 280 // 8, 288 // 8, 296 // 8, 304 // 8
_H_PROGRESS, _H_STATUS = 264 // 4, 268 // 4
_PUBLISHER_AT = 312
_STATS_AT, _LAG_AT = 384 // 8, 640 // 8

ROW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("version", "<u4"),
    ("in_stock", "u1"),
    ("stock_qty", "<i4"),
    ("price", "<f4"),
    ("discount", "<f4"),
    ("promo", "<u4"),
    ("retired", "u1"),
)
NEW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sku", f"S{MAX_SKU_BYTES}"),
    ("title", f"S{TITLE_BYTES}"),
    ("category_path", f"S{CATEGORY_PATH_BYTES}"),
    ("brand", f"S{BRAND_BYTES}"),
    ("seller", f"S{SELLER_BYTES}"),
    ("created_at", "<f8"),
    ("has_vector", "u1"),
)


class StateError(Exception):
    """An item state file that cannot be used: not one, corrupt, or already held by a writer."""


class StateFormatError(StateError):
    """Made by a newer Aisle (unknown format version): upgrade, or delete the file to rebuild it."""


class Region(NamedTuple):
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def file_layout(n_base: int, capacity: int, dim: int, text_dim: int) -> tuple[dict[str, Region], int]:
    """Every array's place in the file, and the file size. A pure function of the four sizes."""
    regions: dict[str, Region] = {}
    at = HEADER_BYTES
    n_rows = n_base + capacity
    specs = [(name, np.dtype(dt), (n_rows,)) for name, dt in ROW_COLUMNS]
    specs += [(name, np.dtype(dt), (capacity,)) for name, dt in NEW_COLUMNS]
    specs += [("vector", np.dtype("<f4"), (capacity, dim)), ("text_embedding", np.dtype("<f4"), (capacity, text_dim))]
    for name, dtype, shape in specs:
        regions[name] = Region(dtype, shape, at)
        at = _align(at + dtype.itemsize * int(np.prod(shape)))
    return regions, at


def state_path(state_dir: Path, build_id: str) -> Path:
    """Where the state of bundle `build_id` lives under `state_dir` (put it on tmpfs, e.g. /dev/shm)."""
    return Path(state_dir) / f"items-{re.sub(r'[^A-Za-z0-9._-]', '_', build_id)}.state"


class Offers(NamedTuple):
    """One consistent read per row (kernels.seqlock.gather_offers); all arrays [n]."""

    price: np.ndarray  # float32
    discount: np.ndarray  # float32
    in_stock: np.ndarray  # uint8
    retired: np.ndarray  # uint8
    unsettled: np.ndarray  # uint8: 1 = the writer stalled mid-row; treat the row as unavailable


class Progress(NamedTuple):
    publisher: str
    epoch: int
    seq: int
    updated_at: float


class NewItem(msgspec.Struct, frozen=True):
    row: int
    sku: str
    title: str
    category_path: str
    brand: str
    seller: str
    created_at: float
    has_vector: bool


class InventoryStats(msgspec.Struct, frozen=True):
    """What the header says about the subscriber: for /metrics, /readyz and tests."""

    status: str
    publisher: str
    epoch: int
    seq: int
    updated_at: float
    heartbeat_at: float
    writer_pid: int
    n_new: int
    capacity: int
    counters: dict[str, int]
    lag_buckets: list[int]  # per LAG_BOUNDS bucket (not cumulative), then the overflow


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _cut(value: str, limit: int) -> bytes:
    """UTF-8 bytes of `value`, cut to `limit` on a character boundary."""
    return value.encode("utf-8")[:limit].decode("utf-8", errors="ignore").encode("utf-8")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


class ItemState:
    """A mapped item state file. Readers: `ItemState.open(path)` (read-only mapping; any store
    raises). The one writer: `ItemState.create(...)` or `open(path, readonly=False)`, which takes an
    exclusive lock on the file for as long as it is open.

    Column attributes (`version`, `in_stock`, `stock_qty`, `price`, `discount`, `promo`, `retired`:
    [n_base + capacity]; `sku`, `title`, `category_path`, `brand`, `seller`, `created_at`,
    `has_vector`, `vector`, `text_embedding`: [capacity, …]) are numpy views on the mapping.
    """

    version: np.ndarray
    in_stock: np.ndarray
    stock_qty: np.ndarray
    price: np.ndarray
    discount: np.ndarray
    promo: np.ndarray
    retired: np.ndarray
    sku: np.ndarray
    title: np.ndarray
    category_path: np.ndarray
    brand: np.ndarray
    seller: np.ndarray
    created_at: np.ndarray
    has_vector: np.ndarray
    vector: np.ndarray
    text_embedding: np.ndarray

    def __init__(self, path: Path, fd: int, mm: mmap.mmap, readonly: bool, items: IdMap | None) -> None:
        self.path, self.readonly, self.items = path, readonly, items
        self._fd, self._mm = fd, mm
        self._head = np.frombuffer(mm, HEADER, count=1)
        h = self._head[0]
        self.build_id = _text(bytes(h["build_id"]))
        self.n_base, self.capacity = int(h["n_base"]), int(h["capacity"])
        self.dim, self.text_dim = int(h["dim"]), int(h["text_dim"])
        self.n_rows_max = self.n_base + self.capacity
        regions, _ = file_layout(self.n_base, self.capacity, self.dim, self.text_dim)
        for name, (dtype, shape, offset) in regions.items():
            count = int(np.prod(shape))
            setattr(self, name, np.frombuffer(mm, dtype, count=count, offset=offset).reshape(shape))
        self._n_new = np.frombuffer(mm, np.int64, count=1, offset=_N_NEW_AT)
        self._i64 = np.frombuffer(mm, np.int64, count=HEADER_BYTES // 8)
        self._f64 = np.frombuffer(mm, np.float64, count=HEADER_BYTES // 8)
        self._u32 = np.frombuffer(mm, np.uint32, count=HEADER_BYTES // 4)
        self._publisher = np.frombuffer(mm, "S64", count=1, offset=_PUBLISHER_AT)
        self._stats = self._i64[_STATS_AT : _STATS_AT + STATS_SLOTS]
        self._lag = self._i64[_LAG_AT : _LAG_AT + LAG_SLOTS]
        self._new_rows: dict[str, int] = {}
        self._known_new = 0
        self._staged = 0  # writer: new rows written but not yet published
        self._publisher_id = ""

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        bundle: Bundle,
        capacity: int = DEFAULT_CAPACITY,
        dim: int | None = None,
        text_dim: int = 0,
        readonly: bool = False,
    ) -> ItemState:
        """The state file of `bundle` at `path`, made from its item columns (in_stock, stock_qty,
        price, discount) if absent; an existing valid file of the same build and sizes is reused
        (it keeps what was applied; a subscriber resynchronises it anyway). Creation is atomic
        (temp file + rename) and serialised by `<path>.lock`. `dim` defaults to the bundle's item
        vector width. Returns the writer's view unless `readonly`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if capacity < 0 or text_dim < 0:
            raise ValueError("capacity and text_dim must be ≥ 0")
        if dim is None:
            dim = int(bundle.array(bundle_layout.ITEM_VECTORS).shape[1]) if bundle.has(bundle_layout.ITEM_VECTORS) else 0
        n_base = bundle.n_items
        with _locked(path.with_name(path.name + ".lock")):
            if path.exists():
                try:
                    h = _read_header(path)
                    if (
                        _text(bytes(h["build_id"])) == bundle.build_id
                        and (int(h["n_base"]), int(h["capacity"]), int(h["dim"]), int(h["text_dim"])) == (n_base, capacity, dim, text_dim)
                    ):
                        return cls.open(path, readonly=readonly, items=bundle.items)
                except StateFormatError:
                    raise
                except StateError:
                    pass  # corrupt or foreign sizes: replaced below
            _write_new(path, bundle, n_base, capacity, dim, text_dim)
            return cls.open(path, readonly=readonly, items=bundle.items)

    @classmethod
    def open(cls, path: Path, readonly: bool = True, items: IdMap | None = None) -> ItemState:
        """Map an existing state file. `items` (the bundle's id map) lets `row_of` find base rows.
        Raises StateFormatError (newer format), StateError (corrupt, or a writer holds it)."""
        path = Path(path)
        _read_header(path)  # validates magic, version and size before anything is mapped
        fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        try:
            if not readonly:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StateError(f"{path}: another subscriber writes this state file; run one per host") from None
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        state = cls(path, fd, mm, readonly, items)
        if not readonly:
            settle_odd_rows(state.version)  # a writer that died mid-row
            state._i64[_W_PID] = os.getpid()
            state._staged = 0
        state.warm()
        return state

    def warm(self) -> None:
        """Compile (or load from numba's cache) every kernel this side calls, for these exact
        array types, so that the first request or delta pays nothing."""
        self.gather(np.zeros(1, np.int32))
        if not self.readonly:
            empty = np.zeros(0, np.int64)
            self.write_rows(empty, empty, empty, empty, empty, empty, empty)
            store_release(np.zeros(1, np.int64), 0)

    def close(self) -> None:
        """Unmap (if no view of ours is still referenced elsewhere) and release the writer lock."""
        for name in (*[n for n, _ in ROW_COLUMNS], *[n for n, _ in NEW_COLUMNS], "vector", "text_embedding"):
            self.__dict__.pop(name, None)
        self._head = self._n_new = self._stats = self._lag = None  # type: ignore[assignment]
        self._i64 = self._f64 = self._u32 = self._publisher = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a column view: the mapping goes when that does
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ItemState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading (any process) ---------------------------------------------------------------

    @property
    def n_new(self) -> int:
        """New-SKU rows published so far (rows n_base .. n_base + n_new - 1 are visible)."""
        return int(load_acquire(self._n_new))

    @property
    def n_rows(self) -> int:
        """Visible rows: n_base + n_new."""
        return self.n_base + self.n_new

    @property
    def status(self) -> Status:
        return Status(int(self._u32[_H_STATUS]))

    @property
    def heartbeat_at(self) -> float:
        return float(self._f64[_W_HEARTBEAT])

    def gather(self, rows: np.ndarray, max_retries: int = DEFAULT_RETRIES) -> Offers:
        """Consistent (price, discount, in_stock, retired) of `rows` (int32 [n]); rows that are not
        visible read as retired and out of stock."""
        rows = np.ascontiguousarray(rows, dtype=np.int32)
        n = rows.shape[0]
        out = Offers(np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty(n, np.uint8))
        gather_offers(rows, self.n_rows, self.version, self.price, self.discount, self.in_stock, self.retired, *out, max_retries)
        return out

    def refresh_new(self) -> int:
        """Bring the SKU → row map of new rows up to date (reads only the rows added since the last
        call: rows never change SKU). Returns n_new."""
        n = self.n_new
        if n > self._known_new:
            for i, raw in enumerate(self.sku[self._known_new : n].tolist(), start=self._known_new):
                self._new_rows[raw.decode("utf-8")] = self.n_base + i
            self._known_new = n
        return n

    def new_row_of(self, sku: str) -> int:
        """Row of a SKU that arrived after the build, or -1."""
        row = self._new_rows.get(sku, -1)
        if row < 0 and self.readonly and self.refresh_new():
            row = self._new_rows.get(sku, -1)
        return row

    def row_of(self, sku: str) -> int:
        """Row of any SKU (bundle rows need `items`), or -1."""
        if self.items is not None:
            row = self.items.row_of(sku)
            if row >= 0:
                return row
        return self.new_row_of(sku)

    def new_item(self, row: int) -> NewItem:
        """Static fields of a visible new-SKU row."""
        i = row - self.n_base
        if not 0 <= i < self.n_new:
            raise IndexError(f"row {row} is not a visible new-SKU row ({self.n_base}..{self.n_rows - 1})")
        return NewItem(
            row=row,
            sku=_text(bytes(self.sku[i])),
            title=_text(bytes(self.title[i])),
            category_path=_text(bytes(self.category_path[i])),
            brand=_text(bytes(self.brand[i])),
            seller=_text(bytes(self.seller[i])),
            created_at=float(self.created_at[i]),
            has_vector=bool(self.has_vector[i]),
        )

    def progress(self) -> Progress:
        """Last applied (publisher, epoch, seq, updated_at), read consistently."""
        for _ in range(1000):
            v1 = int(self._u32[_H_PROGRESS])
            got = Progress(_text(bytes(self._publisher[0])), int(self._i64[_W_EPOCH]), int(self._i64[_W_SEQ]), float(self._f64[_W_UPDATED]))
            if v1 % 2 == 0 and int(self._u32[_H_PROGRESS]) == v1:
                return got
        return got

    def changes(self) -> int:
        """A counter that moves whenever deltas or a snapshot were applied: readers key caches of
        derived data (e.g. the in-stock row list) on it."""
        return int(self._stats[_STAT["applied_deltas"]]) + int(self._stats[_STAT["resyncs"]])

    def stats(self) -> InventoryStats:
        p = self.progress()
        return InventoryStats(
            status=self.status.name.lower(),
            publisher=p.publisher,
            epoch=p.epoch,
            seq=p.seq,
            updated_at=p.updated_at,
            heartbeat_at=self.heartbeat_at,
            writer_pid=int(self._i64[_W_PID]),
            n_new=self.n_new,
            capacity=self.capacity,
            counters={name: int(self._stats[i]) for i, name in enumerate(STAT_NAMES)},
            lag_buckets=[int(x) for x in self._lag[: len(LAG_BOUNDS) + 1]],
        )

    # --- writing (the subscriber only) -------------------------------------------------------

    def _writer(self) -> None:
        if self.readonly:
            raise StateError(f"{self.path}: opened read-only")

    def write_rows(
        self,
        rows: np.ndarray,
        in_stock: np.ndarray,
        stock_qty: np.ndarray,
        price: np.ndarray,
        discount: np.ndarray,
        promo: np.ndarray,
        retired: np.ndarray,
    ) -> None:
        """Store full records of distinct rows, each under its seqlock."""
        self._writer()
        write_rows(
            np.ascontiguousarray(rows, dtype=np.int64), self.version, self.in_stock, self.stock_qty, self.price,
            self.discount, self.promo, self.retired,
            np.ascontiguousarray(in_stock, dtype=np.uint8), np.ascontiguousarray(stock_qty, dtype=np.int32),
            np.ascontiguousarray(price, dtype=np.float32), np.ascontiguousarray(discount, dtype=np.float32),
            np.ascontiguousarray(promo, dtype=np.uint32), np.ascontiguousarray(retired, dtype=np.uint8),
        )

    def stage_new_row(self, item: NewSku, vector: np.ndarray | None = None) -> int:
        """Write a new SKU's static fields into the next free row, still invisible. Returns the row,
        or -1 when the file is full. Raises ValueError when an embedding has the wrong width."""
        self._writer()
        text = None
        if item.text_embedding is not None and self.text_dim:
            text = np.asarray(item.text_embedding, dtype=np.float32)
            if text.shape != (self.text_dim,):
                raise ValueError(f"text_embedding of {item.sku!r} has {text.size} values, the state holds {self.text_dim}")
        if vector is not None:
            vector = np.asarray(vector, dtype=np.float32).reshape(-1)
            if vector.shape != (self.dim,):
                raise ValueError(f"vector for {item.sku!r} has {vector.size} values, the state holds {self.dim}")
        i = self.n_new + self._staged
        if i >= self.capacity:
            return -1
        self.sku[i] = item.sku.encode("utf-8")
        self.title[i] = _cut(item.title, TITLE_BYTES)
        self.category_path[i] = item.category_path.encode("utf-8")
        self.brand[i] = item.brand.encode("utf-8")
        self.seller[i] = item.seller.encode("utf-8")
        self.created_at[i] = item.created_at
        self.text_embedding[i] = 0.0 if text is None else text
        self.vector[i] = 0.0 if vector is None else vector
        self.has_vector[i] = 0 if vector is None else 1
        row = self.n_base + i
        self._staged += 1
        self._new_rows[item.sku] = row
        return row

    def publish_new_rows(self) -> int:
        """Make staged rows visible (release store of n_new). Returns n_new."""
        self._writer()
        if self._staged:
            n = self.n_new + self._staged
            store_release(self._n_new, n)
            self._staged = 0
            self._known_new = n
        return self.n_new

    def set_vector(self, row: int, vector: np.ndarray) -> None:
        """The integrator's hook for new rows' item vectors (e.g. from a content tower), any time
        after the row exists: the vector is stored first, then `has_vector`."""
        self._writer()
        i = row - self.n_base
        if not 0 <= i < self.n_new + self._staged:
            raise IndexError(f"row {row} is not a new-SKU row")
        # Two numpy stores in program order: on x86-64 another process that sees has_vector = 1
        # also sees the vector (stores become visible in order; see kernels.seqlock).
        self.vector[i] = np.asarray(vector, dtype=np.float32).reshape(self.dim)
        self.has_vector[i] = 1

    def set_progress(self, publisher: str, epoch: int, seq: int, updated_at: float | None = None) -> None:
        """Under the header's own seqlock (numpy stores in program order: the x86 assumption)."""
        self._writer()
        self._u32[_H_PROGRESS] += 1
        if publisher != self._publisher_id:
            self._publisher[0] = publisher.encode("utf-8")[:64]
            self._publisher_id = publisher
        self._i64[_W_EPOCH] = epoch
        self._i64[_W_SEQ] = seq
        self._f64[_W_UPDATED] = time.time() if updated_at is None else updated_at
        self._u32[_H_PROGRESS] += 1

    def set_status(self, status: Status) -> None:
        self._writer()
        self._u32[_H_STATUS] = int(status)

    def beat(self, now: float | None = None) -> None:
        """The subscriber is alive (workers may compare heartbeat_at with their clock)."""
        self._f64[_W_HEARTBEAT] = time.time() if now is None else now

    def count(self, name: str, n: int = 1) -> None:
        self._stats[_STAT[name]] += n

    def observe_lag(self, seconds: float) -> None:
        ns = max(0, int(seconds * 1e9))
        s = self._stats
        s[_STAT["lag_last_ns"]] = ns
        if ns > s[_STAT["lag_max_ns"]]:
            s[_STAT["lag_max_ns"]] = ns
        s[_STAT["lag_sum_ns"]] += ns
        s[_STAT["lag_count"]] += 1
        self._lag[bisect.bisect_left(LAG_BOUNDS, seconds)] += 1


def _read_header(path: Path) -> np.void:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise StateError(f"{path}: cannot read item state: {exc}") from exc
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise StateError(f"{path}: not an Aisle item state file (no {MAGIC!r} header)")
    h = np.frombuffer(raw, HEADER, count=1)[0]
    if int(h["version"]) > FORMAT_VERSION:
        raise StateFormatError(f"{path}: item state format {int(h['version'])} was made by a newer Aisle (this one reads {FORMAT_VERSION})")
    if int(h["version"]) != FORMAT_VERSION or int(h["header_bytes"]) != HEADER_BYTES:
        raise StateError(f"{path}: corrupt item state header (version {int(h['version'])}, header {int(h['header_bytes'])} bytes)")
    _, expected = file_layout(int(h["n_base"]), int(h["capacity"]), int(h["dim"]), int(h["text_dim"]))
    if size != expected or int(h["file_bytes"]) != expected:
        raise StateError(f"{path}: corrupt item state: {size} bytes, its header implies {expected}")
    return h


def _write_new(path: Path, bundle: Bundle, n_base: int, capacity: int, dim: int, text_dim: int) -> None:
    regions, size = file_layout(n_base, capacity, dim, text_dim)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w+b") as f:
            f.truncate(size)  # sparse: untouched new-SKU rows cost no memory
            with mmap.mmap(f.fileno(), size) as mm:
                head = np.frombuffer(mm, HEADER, count=1)
                head["magic"], head["version"], head["header_bytes"] = MAGIC, FORMAT_VERSION, HEADER_BYTES
                head["build_id"] = bundle.build_id.encode("utf-8")[:128]
                head["n_base"], head["capacity"], head["dim"], head["text_dim"] = n_base, capacity, dim, text_dim
                head["file_bytes"], head["created_at"] = size, time.time()
                for name in ("in_stock", "stock_qty", "price", "discount"):
                    dtype, _, offset = regions[name]
                    dst = np.frombuffer(mm, dtype, count=n_base, offset=offset)
                    src = bundle.item_column(name)
                    for a in range(0, n_base, _CHUNK):
                        dst[a : a + _CHUNK] = src[a : a + _CHUNK]
                    del dst
                del head
                mm.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- applying deltas ----------------------------------------------------------------------------


class Baseline(NamedTuple):
    """The bundle's values of the mutable columns: what a row returns to when the publisher's
    snapshot says nothing about it."""

    in_stock: np.ndarray  # uint8 [n_base]
    stock_qty: np.ndarray  # int32
    price: np.ndarray  # float32
    discount: np.ndarray  # float32

    @classmethod
    def of(cls, bundle: Bundle) -> Baseline:
        return cls(*(bundle.item_column(name) for name in ("in_stock", "stock_qty", "price", "discount")))


def carried_deltas(state: ItemState, baseline: Baseline) -> list[Delta]:
    """The deltas that turn `baseline` (the values of the bundle `state` belongs to) into `state`'s
    rows: for each base row that differs, its stock, price, discount and promotion (or its
    retirement); for each visible new-SKU row that is not retired, its listing and promotion.
    Applied to another bundle (StateWriter.rebase), they carry what the live feed had set over to
    that bundle's state while the publisher cannot be asked for a snapshot. `state.items` must be
    its bundle's id map. Rows are read without their seqlock: meant for a state whose writer is
    idle (a silent publisher); a row caught mid-write is set right by the next resync."""
    if state.items is None:
        raise ValueError("carried_deltas needs the state's bundle id map (ItemState items=...)")
    out: list[Delta] = []
    n = state.n_base
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        stock = (state.in_stock[a:b] != baseline.in_stock[a:b]) | (state.stock_qty[a:b] != baseline.stock_qty[a:b])
        price = state.price[a:b] != baseline.price[a:b]
        discount = state.discount[a:b] != baseline.discount[a:b]
        promo = state.promo[a:b] != 0
        retired = state.retired[a:b] != 0
        changed = np.flatnonzero(stock | price | discount | promo | retired)
        for i, sku in zip(changed.tolist(), state.items.ids_of(changed + a)):
            row = a + i
            if retired[i]:
                out.append(Retire(sku))
                continue
            if stock[i]:
                out.append(Stock(sku, bool(state.in_stock[row]), int(state.stock_qty[row])))
            if price[i]:
                out.append(Price(sku, float(state.price[row])))
            if discount[i]:
                out.append(Discount(sku, float(state.discount[row])))
            if promo[i]:
                out.append(Promotion(sku, int(state.promo[row])))
    for row in range(n, n + state.n_new):
        if state.retired[row]:
            continue
        item = state.new_item(row)
        text = state.text_embedding[row - n].tolist() if state.text_dim else None
        out.append(NewSku(
            sku=item.sku, title=item.title, category_path=item.category_path, brand=item.brand, seller=item.seller,
            price=float(state.price[row]), discount=float(state.discount[row]), in_stock=bool(state.in_stock[row]),
            qty=int(state.stock_qty[row]), created_at=item.created_at, text_embedding=text,
        ))
        if state.promo[row]:
            out.append(Promotion(item.sku, int(state.promo[row])))
    return out


class Applied(msgspec.Struct):
    applied: int = 0  # deltas stored
    rejected: int = 0  # could not be stored (bad embedding width)
    unknown: int = 0  # SKU unknown to the bundle and never announced
    capacity_full: int = 0
    rows: int = 0  # distinct rows written
    new_rows: int = 0  # new-SKU rows published
    reverted: int = 0  # rows put back to the bundle's values (rebase only)


class StateWriter:
    """Turns deltas into row writes on the writer's ItemState. Delta semantics (the publisher's
    snapshot relies on them, see engine.inventory.publisher.compact):

    Stock      qty := qty; in_stock := in_stock and not retired
    Price      price := price            Discount   discount := discount
    Promotion  promo := flags            Retire     retired := 1, in_stock := 0
    NewSku     a row for an unknown SKU (static fields, then published); on any row:
               in_stock, qty, price, discount := the delta's; promo := 0; retired := 0

    `embed(item)` (optional) returns a new SKU's item vector (float32 [dim]) or None.
    """

    def __init__(
        self,
        state: ItemState,
        items: IdMap,
        baseline: Baseline | None = None,
        embed: Callable[[NewSku], np.ndarray | None] | None = None,
    ) -> None:
        state._writer()
        self.state, self.items, self.baseline, self.embed = state, items, baseline, embed
        state.items = items
        state.refresh_new()
        self._ids = items.ids
        self._width = self._ids.dtype.itemsize

    def _base_rows(self, skus: Sequence[str]) -> list[int]:
        """Rows in the bundle (-1 if absent), one vectorised binary search."""
        keys = [s.encode("utf-8") for s in skus]
        n = len(self._ids)
        if not keys or n == 0:
            return [-1] * len(keys)
        fits = np.fromiter((0 < len(k) <= self._width for k in keys), dtype=bool, count=len(keys))
        probe = np.array([k if ok else b"" for k, ok in zip(keys, fits)], dtype=self._ids.dtype)
        pos = np.minimum(np.searchsorted(self._ids, probe), n - 1)
        return np.where(fits & (self._ids[pos] == probe), pos, -1).tolist()

    def _start(self, rows: np.ndarray, rebase: bool) -> list[list]:
        """Starting record of each row, as six lists: the stored one (apply), or what the row holds
        without any delta (rebase: the bundle's values; a published new SKU not announced again is
        retired). Rows staged in this call start from zeros."""
        st, bl = self.state, self.baseline
        cols = [st.in_stock[rows], st.stock_qty[rows], st.price[rows], st.discount[rows], st.promo[rows], st.retired[rows]]
        if rebase:
            base = rows < st.n_base
            if bl is not None:
                b = np.where(base, rows, 0)
                cols[0] = np.where(base, bl.in_stock[b], cols[0])
                cols[1] = np.where(base, bl.stock_qty[b], cols[1])
                cols[2] = np.where(base, bl.price[b], cols[2])
                cols[3] = np.where(base, bl.discount[b], cols[3])
                cols[4] = np.where(base, 0, cols[4])
                cols[5] = np.where(base, 0, cols[5])
            new = ~base
            cols[0] = np.where(new, 0, cols[0])
            cols[1] = np.where(new, 0, cols[1])
            cols[4] = np.where(new, 0, cols[4])
            cols[5] = np.where(new, 1, cols[5])
        staged = rows >= st.n_base + st.n_new
        return [np.where(staged, 0, c).tolist() for c in cols]

    def _collect(self, deltas: Iterable[Delta], rebase: bool, out: Applied) -> tuple[np.ndarray, list[list]]:
        """Fold deltas into one full record per touched row: (rows int64 [k], six value lists)."""
        deltas = list(deltas)
        st = self.state
        slot_of: dict[int, int] = {}
        rows: list[int] = []
        slots: list[int] = []  # per delta: its row's slot, or -1 when it cannot be stored
        for d, row in zip(deltas, self._base_rows([d.sku for d in deltas])):
            if row < 0:
                row = st.new_row_of(d.sku)
            if row < 0 and type(d) is NewSku:
                try:
                    row = st.stage_new_row(d, self.embed(d) if self.embed is not None else None)
                except ValueError:
                    out.rejected += 1
                    slots.append(-1)
                    continue
                if row < 0:
                    out.capacity_full += 1
                    slots.append(-1)
                    continue
            elif row < 0:
                out.unknown += 1
                slots.append(-1)
                continue
            s = slot_of.get(row)
            if s is None:
                s = slot_of[row] = len(rows)
                rows.append(row)
            slots.append(s)
        row_array = np.asarray(rows, dtype=np.int64)
        cols = self._start(row_array, rebase)
        c_in, c_qty, c_price, c_disc, c_promo, c_ret = cols
        for d, s in zip(deltas, slots):
            if s < 0:
                continue
            kind = type(d)
            if kind is Stock:
                c_qty[s] = d.qty
                c_in[s] = int(d.in_stock and not c_ret[s])
            elif kind is Price:
                c_price[s] = d.price
            elif kind is Discount:
                c_disc[s] = d.discount
            elif kind is Promotion:
                c_promo[s] = d.flags
            elif kind is Retire:
                c_ret[s], c_in[s] = 1, 0
            else:  # NewSku
                c_in[s], c_qty[s], c_price[s], c_disc[s], c_promo[s], c_ret[s] = int(d.in_stock), d.qty, d.price, d.discount, 0, 0
            out.applied += 1
        return row_array, cols

    def _flush(self, rows: np.ndarray, cols: list[list], out: Applied) -> None:
        if rows.size:
            self.state.write_rows(rows, *cols)
            out.rows += int(rows.size)
        before = self.state.n_new
        out.new_rows += self.state.publish_new_rows() - before

    def apply(self, deltas: Iterable[Delta]) -> Applied:
        """Apply deltas in order; each touched row is written once, new rows published last."""
        out = Applied()
        self._flush(*self._collect(deltas, False, out), out)
        return out

    def rebase(self, deltas: Iterable[Delta]) -> Applied:
        """Make the state equal to baseline ⊕ deltas (a snapshot, then the updates after it):
        rows the deltas touch get their full record computed from the bundle's values; every
        other row that differs from the bundle goes back to it; published new SKUs the deltas
        do not announce are retired. Without a baseline, base rows the deltas do not touch are
        left as they are. Each row is written at most once. O(n_base) compare, in chunks."""
        st, out = self.state, Applied()
        rows, cols = self._collect(deltas, True, out)
        touched = np.zeros(st.n_base + st.capacity, dtype=bool)
        touched[rows] = True
        bl = self.baseline
        if bl is not None:
            for a in range(0, st.n_base, _CHUNK):
                b = min(a + _CHUNK, st.n_base)
                diff = (
                    (st.in_stock[a:b] != bl.in_stock[a:b])
                    | (st.stock_qty[a:b] != bl.stock_qty[a:b])
                    | (st.price[a:b] != bl.price[a:b])
                    | (st.discount[a:b] != bl.discount[a:b])
                    | (st.promo[a:b] != 0)
                    | (st.retired[a:b] != 0)
                ) & ~touched[a:b]
                back = np.flatnonzero(diff) + a
                if back.size:
                    zeros = np.zeros(back.size, np.uint8)
                    st.write_rows(back, bl.in_stock[back], bl.stock_qty[back], bl.price[back], bl.discount[back], zeros, zeros)
                    out.reverted += int(back.size)
        lo, hi = st.n_base, st.n_base + st.n_new
        orphans = np.flatnonzero((st.retired[lo:hi] == 0) & ~touched[lo:hi]) + lo
        if orphans.size:
            zeros = np.zeros(orphans.size, np.uint8)
            st.write_rows(orphans, zeros, st.stock_qty[orphans], st.price[orphans], st.discount[orphans], zeros, zeros + 1)
            out.reverted += int(orphans.size)
        self._flush(rows, cols, out)
        return out
