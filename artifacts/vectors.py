"""The item vector index as a bundle file: a USearch HNSW index (`index.usearch`), opened as a
read-only memory-mapped view shared by every engine worker through the page cache.

File contract (written by `builder.index`): keys are item rows (uint64 of the dense `*_row`), one
vector per catalog item, L2-normalised, metric `ip` (f32/f16) or `cos` (i8; identical ranking on
unit vectors). Scores returned here are inner-product similarities, higher is better.

Imports numpy and usearch only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from usearch.index import Index, MetricKind, ScalarKind

# usearch 2.26 reports i8 + ip distances as the negated integer dot product of vectors scaled to
# about ±127 (measured: a unit vector against itself gives -15510), not as 1 - ip.
_I8_IP_SCALE = 127.0 * 127.0
_MISSING_KEY = np.uint64(np.iinfo(np.uint64).max)
_SENTINEL_SCORE = np.finfo(np.float32).min


class VectorIndexError(Exception):
    """The index file is missing, unreadable or does not match the bundle."""


class VectorIndex:
    """A read-only view over `index.usearch`. Use `VectorIndex.open(...)`."""

    def __init__(self, index: Index, path: Path) -> None:
        self._index = index
        self.path = path
        self.size = len(index)
        self.ndim = int(index.ndim)
        self.dtype = str(index.dtype)
        self.metric = index.metric
        self._i8_ip = index.metric == MetricKind.IP and index.dtype == ScalarKind.I8
        self.expansion_search = int(index.expansion_search)  # the default ef of search()

    @classmethod
    def open(cls, path: Path | str, ndim: int, expansion_search: int) -> VectorIndex:
        """Memory-map the index at `path`; `ndim` is the bundle's vector width, checked against the
        file. `expansion_search` is HNSW ef (values below k act as k)."""
        path = Path(path)
        if not path.is_file():
            raise VectorIndexError(f"vector index not found: {path} (expected the bundle's index.usearch)")
        try:
            # Key lookups (get by key) are never used on the serving path; skipping them saves a
            # private key→slot table per worker process (~48 MB per 1M items).
            index = Index.restore(str(path), view=True, enable_key_lookups=False)
        except (ValueError, RuntimeError) as exc:
            raise VectorIndexError(f"{path}: corrupt or truncated USearch index ({exc}); rebuild the bundle") from exc
        if index is None:
            raise VectorIndexError(f"{path}: not a USearch index (no readable header); the file is corrupt")
        if int(index.ndim) != ndim:
            raise VectorIndexError(f"{path}: index has ndim {index.ndim}, the bundle's vectors have {ndim}; corrupt bundle")
        if index.metric not in (MetricKind.IP, MetricKind.Cos):
            raise VectorIndexError(f"{path}: index metric {index.metric} is not ip or cos; rebuild with this builder")
        index.expansion_search = max(1, int(expansion_search))
        view = cls(index, path)
        view.expansion_search = int(index.expansion_search)
        return view

    def search(self, query: np.ndarray, k: int, expansion: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k by inner product for query float32 [D] → (rows int32 [k'], scores
        float32 [k']), k' ≤ k, scores non-increasing. One thread (engine workers share cores).
        `expansion`: HNSW ef for this query (default: the one the index was opened with)."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if query.shape != (self.ndim,):
            raise VectorIndexError(f"query: expected float32 [{self.ndim}], got shape {query.shape}")
        if k <= 0 or self.size == 0:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        ef = self.expansion_search if expansion is None else max(1, int(expansion))
        if self._index.expansion_search != ef:
            self._index.expansion_search = ef
        matches = self._index.search(query, min(int(k), self.size), threads=1)
        keys, distances = matches.keys, matches.distances
        # A single query's Matches is already cut to the found count; the checks guard against
        # padding conventions changing (usearch pads batches with key 0 and NaN distance).
        valid = (keys != _MISSING_KEY) & np.isfinite(distances)
        return keys[valid].astype(np.int32), self._similarity(distances[valid])

    def search_batch(self, queries: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k for each of queries float32 [Q, D] (e.g. one per shopper interest) → (rows int32
        [Q, k], scores float32 [Q, k], counts int32 [Q]); entries past counts[q] are row -1, score
        -3.4e38 (a finite sentinel, so masks and argmax stay NaN-free)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.ndim:
            raise VectorIndexError(f"queries: expected float32 [Q, {self.ndim}], got shape {queries.shape}")
        q, k = queries.shape[0], max(0, int(k))
        rows = np.full((q, k), -1, dtype=np.int32)
        scores = np.full((q, k), _SENTINEL_SCORE, dtype=np.float32)
        if q == 0 or k == 0 or self.size == 0:
            return rows, scores, np.zeros(q, dtype=np.int32)
        if self._index.expansion_search != self.expansion_search:  # search() may have left another ef
            self._index.expansion_search = self.expansion_search
        found = self._index.search(queries, min(k, self.size), threads=max(1, int(threads)))
        keys = np.asarray(found.keys).reshape(q, -1)
        distances = np.asarray(found.distances).reshape(q, -1)
        # One query comes back as Matches (already cut), several as BatchMatches padded with key 0
        # (a real row!) and NaN distances past `counts`: only counts says what was found.
        found_counts = getattr(found, "counts", None)
        counts = np.full(q, keys.shape[1]) if found_counts is None else np.asarray(found_counts).reshape(q)
        width = keys.shape[1]
        valid = (np.arange(width)[None, :] < counts[:, None]) & (keys != _MISSING_KEY) & np.isfinite(distances)
        rows[:, :width] = np.where(valid, keys.astype(np.int64), -1)
        scores[:, :width] = np.where(valid, self._similarity(np.nan_to_num(distances)), _SENTINEL_SCORE)
        return rows, scores, valid.sum(axis=1).astype(np.int32)

    def _similarity(self, distances: np.ndarray) -> np.ndarray:
        if self._i8_ip:
            return (-distances / _I8_IP_SCALE).astype(np.float32)
        return (1.0 - distances).astype(np.float32)
