"""The shopper feature snapshot: one msgpack record per shopper in a single-file LMDB.

Key: the external `user_id` as UTF-8 bytes. Value: `ShopperRecord` (msgspec, array-like so the
encoding is compact and field order is the schema: new fields go last with defaults, never retype).
Item and category references are rows/nodes of the SAME bundle.

The snapshot is immutable once published, so readers open it read-only without a lock file
(STACK-NOTES pitfall 5 applies only to a file some process still writes).
"""

from __future__ import annotations

from pathlib import Path

import lmdb
import msgspec

from artifacts.errors import BundleCorruptError


class ShopperRecord(msgspec.Struct, array_like=True, frozen=True):
    region: int = 0
    device: int = 0  # most used device code
    recent_items: list[int] = []  # item rows, most recent last
    recent_types: list[int] = []  # EventType codes, aligned with recent_items
    recent_ts: list[int] = []  # epoch seconds, aligned with recent_items
    purchased: list[int] = []  # item rows bought (most recent last, bounded)
    blocked_brands: list[int] = []  # brand codes
    blocked_sellers: list[int] = []  # seller codes
    category_nodes: list[int] = []  # strongest category affinities (nodes of any depth)
    category_weights: list[float] = []  # normalised to sum 1 over the shopper's interactions
    brand_codes: list[int] = []
    brand_weights: list[float] = []
    mean_price: float = float("nan")  # mean price of items clicked/carted/bought; NaN = none
    n_events: int = 0  # interactions (click, cart, purchase) before the snapshot
    n_purchases: int = 0
    first_ts: int = 0
    last_ts: int = 0


ENCODER = msgspec.msgpack.Encoder()
DECODER = msgspec.msgpack.Decoder(ShopperRecord)


# LMDB allows one environment per file per process: handles over the same file share it.
_OPEN: dict[str, tuple[lmdb.Environment, int]] = {}


def _acquire(path: Path, map_size: int) -> lmdb.Environment:
    key = str(path.resolve())
    if key in _OPEN:
        env, refs = _OPEN[key]
        _OPEN[key] = (env, refs + 1)
        return env
    try:
        env = lmdb.open(key, subdir=False, readonly=True, lock=False, readahead=False, map_size=map_size, max_dbs=0)
    except lmdb.Error as exc:
        raise BundleCorruptError(f"{path}: cannot open shopper snapshot: {exc}") from exc
    _OPEN[key] = (env, 1)
    return env


def _release(path: Path) -> None:
    key = str(path.resolve())
    env, refs = _OPEN.get(key, (None, 0))
    if env is None:
        return
    if refs > 1:
        _OPEN[key] = (env, refs - 1)
    else:
        del _OPEN[key]
        env.close()


class ShopperSnapshot:
    """Read-only access to the snapshot. One transaction per lookup (≈1 µs to begin, STACK-NOTES)."""

    def __init__(self, path: Path, map_size: int) -> None:
        self._env = _acquire(path, map_size)
        self.path = path
        self._closed = False

    def get(self, user_id: str) -> ShopperRecord | None:
        key = user_id.encode("utf-8")
        if not key or len(key) > 511:
            return None
        with self._env.begin(buffers=True) as txn:
            raw = txn.get(key)
            if raw is None:
                return None
            try:
                return DECODER.decode(raw)
            except msgspec.DecodeError as exc:
                raise BundleCorruptError(f"{self.path}: corrupt record for a shopper: {exc}") from exc

    def __len__(self) -> int:
        return int(self._env.stat()["entries"])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self.path)
