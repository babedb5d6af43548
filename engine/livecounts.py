"""Per-worker cache of the live event log's item counters.

Features and trending read, for every candidate, the item's decayed counts since the build. Read
from LMDB one key per candidate, that is ~300 lookups per request; yet between two requests only
the items of the events logged in between can have changed. So each worker keeps the raw
counters (as-of time and counts, undecayed) of the items it has looked up, and before each read
drops the entries of items named by events logged since its last look. Most candidates have no
live activity at all, and "no counters" is cached too. Decay is applied at read time, so a cached
entry stays exact as time passes.

Consistency: the writer updates an item's counters in the same transaction that logs its events
(engine.eventlog), so an item whose new event we have not seen yet still has its old counters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.eventlog import EventLog

MAX_ENTRIES = 1 << 18  # items cached per worker (~100 B each); cleared when full
MAX_SCAN = 2_000  # new events examined per sync; past that, clearing the cache is cheaper


class LiveCounts:
    def __init__(self, log: EventLog, max_entries: int = MAX_ENTRIES, max_scan: int = MAX_SCAN) -> None:
        self.log = log
        self.max_entries, self.max_scan = max_entries, max_scan
        self.cache: dict[str, np.ndarray] = {}
        self.seen_seq = log.last_seq()

    def sync(self) -> None:
        """Forget the items of events logged since the last sync."""
        last = self.log.last_seq()
        if last == self.seen_seq:
            return
        if last - self.seen_seq > self.max_scan or last < self.seen_seq:
            self.cache.clear()  # a burst (or a different log): start afresh
        else:
            for _, event in self.log.iter_events(self.seen_seq):
                self.cache.pop(event.sku, None)
        self.seen_seq = last

    def counters(self, skus: Sequence[str], now: float) -> np.ndarray:
        """As EventLog.counters: float32 [len(skus), len(COUNTERS)] decayed to `now`."""
        self.sync()
        cache = self.cache
        raw = [cache.get(sku) for sku in skus]
        missing = [i for i, value in enumerate(raw) if value is None]
        if missing:
            if len(cache) + len(missing) > self.max_entries:
                cache.clear()
            fetched = self.log.raw_counters([skus[i] for i in missing])
            for i, row in zip(missing, fetched):
                raw[i] = cache[skus[i]] = row
        if not raw:
            return self.log.decayed(np.zeros((0, 1), np.float64), now)
        return self.log.decayed(np.vstack(raw), now)
