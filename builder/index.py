"""Build the bundle's item vector index (USearch HNSW) and verify it the way the engine opens it.

Keys are item rows as uint64. Metric: `ip` for f32 / f16. For i8 the metric is `cos`: usearch
2.26's i8 `ip` distances are raw negated integer dot products (about -15,500 for a unit vector
with itself) instead of 1 - ip, while i8 `cos` gives 1 - cos; on the L2-normalised vectors this
index holds, cos and ip rank identically and `artifacts.vectors` turns both into similarities.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from usearch.index import Index

from artifacts.vectors import VectorIndex, VectorIndexError
from builder.config import IndexConfig

Progress = Callable[[str, int, int], None]

VERIFY_EXPANSION = 1024
MIN_SELF_HIT_RATE = 0.99
VERIFY_SAMPLE = 1_000  # vectors queried after the build
VERIFY_K = 10
# Similarity within which the own row counts as first even when another row is returned first:
# quantisation can reorder near-equal scores.
_TIE_TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "i8": 2e-2}
_ADD_CHUNKS = 20  # progress granularity of the build


class IndexBuildError(Exception):
    """The vectors cannot be indexed, or the written index fails its verification."""


@dataclass(frozen=True)
class IndexInfo:
    size: int
    dtype: str
    ndim: int
    connectivity: int
    seconds: float  # build + save + verify
    self_hit_rate: float  # share of the sample whose own row (or an identical vector) came first
    metric: str = "ip"
    expansion_add: int = 0
    sample: int = 0  # vectors queried for self_hit_rate
    file_bytes: int = 0


def metric_for(dtype: str) -> str:
    """The usearch metric used for a scalar kind (see the module docstring)."""
    return "cos" if dtype == "i8" else "ip"


def build_index(
    vectors: np.ndarray, config: IndexConfig, path: Path, progress: Progress | None = None, seed: int = 0
) -> IndexInfo:
    """Index vectors float32 [n, D] (L2-normalised; row i gets key i) into `path`, then reopen it
    as a view and check size and self-retrieval on a sample. Raises IndexBuildError.

    Cost: O(n log n) HNSW inserts, about 5 minutes per 1M×64 on 2 cores (STACK-NOTES)."""
    started = time.perf_counter()
    vectors = _checked(vectors)
    n, ndim = vectors.shape
    metric = metric_for(config.dtype)
    index = Index(
        ndim=ndim,
        metric=metric,
        dtype=config.dtype,
        connectivity=config.connectivity,
        expansion_add=config.expansion_add,
        expansion_search=config.expansion_search,
    )
    keys = np.arange(n, dtype=np.uint64)
    chunk = max(1, -(-n // _ADD_CHUNKS))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        index.add(keys[start:stop], vectors[start:stop], threads=config.threads)
        if progress is not None:
            progress("index: add", stop, n)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(str(path))
    del index

    if progress is not None:
        progress("index: verify", 0, 1)
    sample, hit_rate = _verify(vectors, config, path, seed)
    if progress is not None:
        progress("index: verify", 1, 1)
    return IndexInfo(
        size=n,
        dtype=config.dtype,
        ndim=ndim,
        connectivity=config.connectivity,
        seconds=time.perf_counter() - started,
        self_hit_rate=hit_rate,
        metric=metric,
        expansion_add=config.expansion_add,
        sample=sample,
        file_bytes=path.stat().st_size,
    )


def _checked(vectors: np.ndarray) -> np.ndarray:
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        raise IndexBuildError(f"vectors: expected a float32 [n, D] array, got {type(vectors).__name__} {getattr(vectors, 'shape', '')}")
    n, ndim = vectors.shape
    if n == 0 or ndim == 0:
        raise IndexBuildError(f"vectors: nothing to index (shape {vectors.shape})")
    if n >= 2**31:
        raise IndexBuildError(f"vectors: {n} rows do not fit int32 item rows")
    if vectors.dtype != np.float32:
        raise IndexBuildError(f"vectors: expected float32, got {vectors.dtype}")
    if not np.isfinite(vectors).all():
        bad = int((~np.isfinite(vectors).all(axis=1)).sum())
        raise IndexBuildError(f"vectors: {bad} rows hold NaN or inf; the embeddings stage produced broken vectors")
    return np.ascontiguousarray(vectors)


def _verify(vectors: np.ndarray, config: IndexConfig, path: Path, seed: int) -> tuple[int, float]:
    """Open `path` as the engine does and query a sample of the indexed vectors → (sample, rate).

    A query counts as a hit when its own row comes first, when the first row holds an identical
    vector (items with the same metadata and no id embedding share one), or when its own row is in
    the top VERIFY_K within the dtype's quantisation tolerance of the first score."""
    n, ndim = vectors.shape
    try:
        # Verification checks the graph's integrity, not serving recall: search it wider than
        # serving does, so HNSW's normal misses at 1M items (≈1% at ef 256) do not fail a build.
        view = VectorIndex.open(path, ndim=ndim, expansion_search=max(config.expansion_search, VERIFY_EXPANSION))
    except VectorIndexError as exc:
        raise IndexBuildError(f"the written index does not reopen: {exc}") from exc
    if view.size != n:
        raise IndexBuildError(f"{path}: index holds {view.size} vectors, expected {n}")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, VERIFY_SAMPLE), replace=False))
    rows, scores, counts = view.search_batch(vectors[sample], min(VERIFY_K, n), threads=config.threads)
    first = rows[:, 0]
    has_first = counts > 0
    own_first = first == sample
    duplicate = np.zeros(len(sample), dtype=bool)
    duplicate[has_first] = np.all(vectors[first[has_first]] == vectors[sample[has_first]], axis=1)
    tolerance = _TIE_TOLERANCE.get(config.dtype, 1e-3)
    own = rows == sample[:, None]
    own_score = np.where(own, scores, np.finfo(np.float32).min).max(axis=1)
    tied = own.any(axis=1) & (own_score >= scores[:, 0] - tolerance)
    hits = has_first & (own_first | duplicate | tied)
    rate = float(hits.mean())
    if rate < MIN_SELF_HIT_RATE:
        raise IndexBuildError(
            f"{path}: only {rate:.3f} of {len(sample)} sampled items retrieve themselves first "
            f"(need ≥ {MIN_SELF_HIT_RATE}); raise index.connectivity or expansion_add, or check the vectors"
        )
    return len(sample), rate
