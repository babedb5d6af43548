"""External ids (SKUs, user ids) ↔ dense rows, as one sorted, memory-mappable array.

Rows are positions in ascending id order, so `row → id` is an index and `id → row` a binary
search (O(log n)), with nothing to build at load: a 1M-SKU map costs each worker no private memory.
Ids are stored as fixed-width UTF-8 bytes (`S<width>`); bytewise order of UTF-8 is code-point
order, which is Python's `str` order, so the builder's `sorted(skus)` and this map agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

MAX_ID_BYTES = 64


def encode_ids(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Sorted, unique str ids → `S<width>` array. Raises ValueError if unsorted, duplicated,
    empty, too long, or containing NUL (numpy's S dtype would silently strip it)."""
    encoded = [str(i).encode("utf-8") for i in ids]
    for pos, raw in enumerate(encoded):
        if not raw or len(raw) > MAX_ID_BYTES or b"\x00" in raw:
            raise ValueError(f"id at row {pos} must be 1-{MAX_ID_BYTES} UTF-8 bytes without NUL, got {raw!r}")
    width = max((len(raw) for raw in encoded), default=1)
    arr = np.array(encoded, dtype=f"S{width}")
    if len(arr) > 1 and not bool(np.all(arr[1:] > arr[:-1])):
        bad = int(np.argmin(arr[1:] > arr[:-1])) + 1
        raise ValueError(f"ids must be unique and sorted ascending; row {bad} ({arr[bad]!r}) breaks the order")
    return arr


class IdMap:
    """Bidirectional map over a sorted `S<width>` array (e.g. `np.load(path, mmap_mode="r")`)."""

    __slots__ = ("_ids",)

    def __init__(self, ids: np.ndarray) -> None:
        if ids.dtype.kind != "S" or ids.ndim != 1:
            raise ValueError(f"id map must be a 1-d bytes array, got {ids.dtype} with shape {ids.shape}")
        self._ids = ids

    @classmethod
    def load(cls, path: Path) -> IdMap:
        return cls(np.asarray(np.load(path, mmap_mode="r", allow_pickle=False)))  # a plain view: see Bundle.array

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def row_of(self, external_id: str) -> int:
        """Row of one id, or -1 if absent."""
        key = external_id.encode("utf-8")
        if not key or len(key) > self._ids.dtype.itemsize:
            return -1
        pos = int(np.searchsorted(self._ids, key))
        if pos < len(self._ids) and self._ids[pos] == key:
            return pos
        return -1

    def rows_of(self, external_ids: Iterable[str]) -> np.ndarray:
        """int32 rows, -1 where an id is absent. One vectorised binary search for all of them."""
        width = self._ids.dtype.itemsize
        keys = [i.encode("utf-8") for i in external_ids]
        if not keys or len(self._ids) == 0:
            return np.full(len(keys), -1, dtype=np.int32)
        # Too long, empty or NUL-ended keys cannot be stored ids (numpy's S dtype would cut or
        # strip them into a different key): they are absent.
        usable = np.fromiter((0 < len(k) <= width and not k.endswith(b"\x00") for k in keys), dtype=bool, count=len(keys))
        probe = np.array([k if ok else b"" for k, ok in zip(keys, usable.tolist())], dtype=f"S{width}")
        pos = np.minimum(np.searchsorted(self._ids, probe), len(self._ids) - 1)
        found = usable & (np.asarray(self._ids[pos]) == probe)
        return np.where(found, pos, -1).astype(np.int32)

    def id_of(self, row: int) -> str:
        if not 0 <= row < len(self._ids):
            raise IndexError(f"row {row} outside 0..{len(self._ids) - 1}")
        return bytes(self._ids[row]).decode("utf-8")

    def ids_of(self, rows: np.ndarray) -> list[str]:
        return [bytes(raw).decode("utf-8") for raw in self._ids[np.asarray(rows, dtype=np.int64)]]
