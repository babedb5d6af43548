"""Nearest in-stock items: vector search that still returns k sellable items when most of the
catalog is out of stock.

An HNSW search returns the k nearest items whatever their stock; filtering afterwards leaves about
k·s of them when a share s of the catalog is in stock (2 of 200 at s = 1%), and the slate fills
up with popular backfill instead of near items. So the search adapts to s, estimated per request
from a fixed sample of stock flags (live flags when the inventory feed is attached):

- s·N small (≤ exact_max_rows): exact scan of the in-stock rows' vectors. At 1% of 1M that is
  10k dot products, cheaper than the HNSW walk it replaces, and exact.
- otherwise: HNSW asked for k/s·1.25 neighbours, then filtered, so about k in-stock neighbours
  survive; asked again for twice as many when fewer did, up to max_oversample.
- s ≥ 0.9: the plain search; the filter stage drops the few out-of-stock hits.
"""

from __future__ import annotations

import numpy as np

from artifacts.vectors import VectorIndex
from kernels.topk import topk

SAMPLE = 4096  # stock flags sampled per request to estimate the in-stock share (±1.6% at s = 0.5)
PLAIN_ABOVE = 0.9  # in-stock share above which the plain search is used


class NearestInStock:
    def __init__(self, index: VectorIndex, vectors: np.ndarray, exact_max_rows: int, max_oversample: int, seed: int = 0) -> None:
        self.index, self.vectors = index, vectors
        self.n = int(vectors.shape[0])
        self.exact_max_rows, self.max_oversample = int(exact_max_rows), int(max_oversample)
        self._cached: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None  # (key, rows, vectors)
        rng = np.random.default_rng(seed)
        self.sample = np.sort(rng.choice(self.n, min(SAMPLE, self.n), replace=False)).astype(np.int64) if self.n else np.zeros(0, np.int64)

    def share(self, in_stock: np.ndarray) -> float:
        """Estimated share of the catalog in stock (in_stock: uint8 [≥ n], live or static)."""
        if len(self.sample) == 0:
            return 0.0
        return float(np.count_nonzero(in_stock[self.sample])) / len(self.sample)

    def search(self, query: np.ndarray, k: int, in_stock: np.ndarray, generation: int = 0, expansion: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows int32, scores float32) of up to k nearest items by inner product, in stock first:
        on the oversampled and exact paths every row returned was in stock at `generation` (a
        counter that moves when stock changes; the filter stage re-checks every row anyway)."""
        if k <= 0 or self.n == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        s = self.share(in_stock)
        if s >= PLAIN_ABOVE:
            return self.index.search(query, k, expansion)
        # s = 0 in the sample may still leave a few in-stock rows: the exact path finds them.
        if s * self.n <= self.exact_max_rows:
            return self._exact(query, k, in_stock, generation)
        cap = max(self.max_oversample, k)
        wanted = min(int(np.ceil(k / s * 1.25)), cap)
        while True:
            rows, scores = self.index.search(query, wanted, expansion)
            keep = in_stock[rows] != 0
            if keep.sum() >= k or wanted >= cap or len(rows) < wanted:
                return rows[keep][:k], scores[keep][:k]
            wanted = min(2 * wanted, cap)  # this query's neighbourhood is sparser than the estimate

    def _exact(self, query: np.ndarray, k: int, in_stock: np.ndarray, generation: int) -> tuple[np.ndarray, np.ndarray]:
        # The in-stock rows and their vectors are gathered once per stock generation (a scan of
        # the whole catalog costs milliseconds at 1M; the product with them, tens of microseconds).
        key = (generation, id(in_stock))  # a view whose stock array is replaced starts afresh
        if self._cached is None or self._cached[0] != key:
            rows = np.flatnonzero(in_stock[: self.n]).astype(np.int32)
            self._cached = (key, rows, np.ascontiguousarray(self.vectors[rows], dtype=np.float32))
        _, rows, vecs = self._cached
        if len(rows) == 0:
            return rows, np.zeros(0, np.float32)
        scores = (vecs @ np.asarray(query, dtype=np.float32)).astype(np.float32)
        best = topk(scores, k)
        return rows[best], scores[best]


class ContextNearest:
    """Exact nearest items for shoppers without history.

    Their user-tower vector depends on the request context alone (region × device: a few dozen
    distinct vectors), and it lies far from the item vectors the HNSW graph was built on: at 1M
    items a graph search for it found 3% of its true top 150 (bench/README.md, Levers). Each
    such vector's exact top `depth` is computed once per worker (one pass over the catalog, ~12 ms
    at 1M) and cached; a request filters the cached list by live stock."""

    def __init__(self, vectors: np.ndarray, depth: int = 2_000, max_entries: int = 256) -> None:
        self.vectors, self.depth, self.max_entries = vectors, int(depth), int(max_entries)
        self.cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def search(self, query: np.ndarray, k: int, in_stock: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, scores) of the k nearest in-stock items, or None when fewer than k of the cached
        list are in stock (the caller falls back to the stock-aware search)."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        key = query.tobytes()
        hit = self.cache.get(key)
        if hit is None:
            if len(self.cache) >= self.max_entries:
                self.cache.clear()
            scores = (np.asarray(self.vectors) @ query).astype(np.float32)
            top = topk(scores, min(self.depth, len(scores)))
            hit = self.cache[key] = (top.astype(np.int32), scores[top])
        rows, scores = hit
        keep = in_stock[rows] != 0
        if int(keep.sum()) < min(k, len(rows)):
            return None
        return rows[keep][:k], scores[keep][:k]
