"""The live store: what shoppers did since the bundle was built, shared by every worker.

One LMDB environment under `state_dir` (several worker processes, so LMDB's own locking; readers
open with the writer's map_size, STACK-NOTES pitfall 4). Per shopper it keeps a bounded ring of
recent interactions by SKU (not by row: rows change from bundle to bundle, SKUs do not).
"""

from __future__ import annotations

from pathlib import Path

import lmdb
import msgspec
import numpy as np

from artifacts.schema import EVENT_TYPE_BY_NAME, EventType
from engine.catalog import CatalogView

MAP_SIZE = 1 << 32  # 4 GiB of address space; the file grows only as written
RECENT_LIMIT = 50
# Event types that say something about interest (the same ones the builder learns from).
INTERACTIONS = frozenset({EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE})


class RecentItem(msgspec.Struct, array_like=True, frozen=True):
    sku: str
    type: int
    ts: float


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[RecentItem]).decode


class LiveStore:
    def __init__(self, state_dir: Path, recent_limit: int = RECENT_LIMIT) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "live.lmdb"
        self.recent_limit = recent_limit
        self._env = lmdb.open(str(self.path), subdir=False, map_size=MAP_SIZE, max_dbs=2, lock=True, sync=True)
        self._recent = self._env.open_db(b"recent")

    def record(self, events: list[tuple[str, str, str, float]]) -> int:
        """Append (user_id, sku, type name, ts) interactions; one transaction for the batch.
        Returns how many were interactions (impressions, skips, dwell do not enter the ring)."""
        by_user: dict[str, list[RecentItem]] = {}
        for user_id, sku, type_name, ts in events:
            code = EVENT_TYPE_BY_NAME[type_name]
            if code in INTERACTIONS:
                by_user.setdefault(user_id, []).append(RecentItem(sku, code, ts))
        if not by_user:
            return 0
        with self._env.begin(write=True, db=self._recent) as txn:
            for user_id, items in by_user.items():
                key = user_id.encode("utf-8")
                raw = txn.get(key)
                ring = (_decode(raw) if raw is not None else []) + sorted(items, key=lambda r: r.ts)
                txn.put(key, _encode(ring[-self.recent_limit :]))
        return sum(len(v) for v in by_user.values())

    def recent(self, user_id: str) -> list[RecentItem]:
        with self._env.begin(db=self._recent, buffers=True) as txn:
            raw = txn.get(user_id.encode("utf-8"))
            return _decode(raw) if raw is not None else []

    def recent_rows(self, user_id: str, view: CatalogView, since_ts: float = 0.0) -> np.ndarray:
        """int32 rows (oldest first) of the shopper's live interactions at or after `since_ts`
        (the bundle's end: earlier ones are already in its snapshot) that the bundle knows."""
        items = [r for r in self.recent(user_id) if r.ts >= since_ts]
        if not items:
            return np.zeros(0, np.int32)
        idmap = view.bundle.items
        rows = np.fromiter((idmap.row_of(r.sku) for r in items), dtype=np.int32, count=len(items))
        return rows[rows >= 0]

    def close(self) -> None:
        self._env.close()
