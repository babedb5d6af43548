"""Drift statistics: histograms of feature columns against fixed bin edges, and the Population
Stability Index between a reference histogram and an observed one.

Bins of one feature. Its edges e_0 < e_1 < … < e_{m−1} (float64, ascending, finite) make m + 2
bins: bin b < m + 1 holds the values x with e_{b−1} ≤ x < e_b (e_{−1} = −∞, e_m = +∞), i.e. b is
the number of edges ≤ x; bin m + 1 holds NaN. Missing values get a bin of their own because a
change in how often a feature is missing is drift too.

Several features are packed side by side: feature j's edges are `edges[edge_offsets[j] :
edge_offsets[j + 1]]` and its bins are the global bins `bin_offsets[j] … bin_offsets[j + 1] − 1`
with `bin_offsets[j] = edge_offsets[j] + 2·j` (see `bin_offsets`), so one flat count vector holds
every feature's histogram.

PSI(e, a) = Σ_b (a_b − e_b) · ln(a_b / e_b) over the bins of a feature, with each proportion
clamped at ≥ eps so that an empty bin on either side gives a large but finite term. The usual
reading: < 0.1 stable, 0.1–0.2 watch, > 0.2 shifted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PSI_EPSILON = 1e-4  # proportions are clamped at this: an empty bin costs at most |Δ|·ln(|Δ|/1e-4)


def bin_offsets(edge_offsets: np.ndarray) -> np.ndarray:
    """int64 [k + 1]: where each feature's bins start in the packed count vector (the last entry
    is the total number of bins)."""
    edge_offsets = np.asarray(edge_offsets, dtype=np.int64)
    return edge_offsets + 2 * np.arange(len(edge_offsets), dtype=np.int64)


@njit(cache=True, nogil=True)
def _local_bin(x: float, edges: np.ndarray, lo: int, hi: int) -> int:
    """Number of edges[lo:hi] ≤ x (binary search); hi − lo + 1 for NaN."""
    if x != x:
        return hi - lo + 1
    a = lo
    b = hi
    while a < b:
        mid = (a + b) >> 1
        if edges[mid] <= x:
            a = mid + 1
        else:
            b = mid
    return a - lo


@njit(cache=True, nogil=True)
def bin_index(X: np.ndarray, columns: np.ndarray, edges: np.ndarray, edge_offsets: np.ndarray) -> np.ndarray:
    """Global bin of every (row, monitored feature).

    X: float32 [n, F], C-contiguous. columns: int32 [k], the column of X of each monitored feature
    (each in [0, F)). edges: float64 [total edges]; edge_offsets: int64 [k + 1] (module docstring).
    Returns int32 [n, k]: out[i, j] = bin_offsets[j] + local bin of X[i, columns[j]].
    Complexity O(n·k·log m) time, no scratch.
    """
    n = X.shape[0]
    k = columns.shape[0]
    out = np.empty((n, k), dtype=np.int32)
    for j in range(k):
        lo = edge_offsets[j]
        hi = edge_offsets[j + 1]
        base = lo + 2 * j
        c = columns[j]
        for i in range(n):
            out[i, j] = base + _local_bin(np.float64(X[i, c]), edges, lo, hi)
    return out


@njit(cache=True, nogil=True)
def move_counts(counts: np.ndarray, remove: np.ndarray, add: np.ndarray) -> None:
    """Keep packed histogram counts of a sliding window up to date, in place: one count off for
    every bin in `remove` (the rows leaving the window), one on for every bin in `add` (the rows
    entering it).

    counts: int64 [total bins]. remove, add: int32 [any], global bins (`bin_index(...).ravel()`);
    negative entries (an empty ring slot, a row without a score) are skipped, as are bins past
    the end of counts. O(len(remove) + len(add)).
    """
    m = counts.shape[0]
    for i in range(remove.shape[0]):
        b = remove[i]
        if 0 <= b < m:
            counts[b] -= 1
    for i in range(add.shape[0]):
        b = add[i]
        if 0 <= b < m:
            counts[b] += 1


@njit(cache=True, nogil=True)
def psi(expected: np.ndarray, counts: np.ndarray, offsets: np.ndarray, eps: float) -> np.ndarray:
    """PSI of each packed histogram.

    expected: float64 [total bins], reference proportions (each segment sums to 1).
    counts: float64 or int64 [total bins], observed counts (normalised here per segment).
    offsets: int64 [k + 1], segment j is [offsets[j], offsets[j + 1]) (`bin_offsets`).
    eps: float > 0, the floor both proportions are clamped at.
    Returns float64 [k]; NaN for a segment with no observations. O(total bins).
    """
    k = offsets.shape[0] - 1
    out = np.empty(k, dtype=np.float64)
    for j in range(k):
        total = 0.0
        for b in range(offsets[j], offsets[j + 1]):
            total += np.float64(counts[b])
        if total <= 0.0:
            out[j] = np.nan
            continue
        s = 0.0
        for b in range(offsets[j], offsets[j + 1]):
            a = np.float64(counts[b]) / total
            e = np.float64(expected[b])
            if a < eps:
                a = eps
            if not e >= eps:  # also NaN
                e = eps
            s += (a - e) * np.log(a / e)
        out[j] = s
    return out


def warm() -> None:
    """Compile (or load from cache) the kernels for the production signatures: C-contiguous
    float32 X, int32 columns and bins, float64 edges, int64 offsets and counts."""
    X = np.array([[0.0, 1.0], [np.nan, 2.0]], dtype=np.float32)
    columns = np.array([1], dtype=np.int32)
    edges = np.array([1.5], dtype=np.float64)
    edge_offsets = np.array([0, 1], dtype=np.int64)
    bins = bin_index(X, columns, edges, edge_offsets).ravel()
    counts = np.zeros(3, dtype=np.int64)
    move_counts(counts, np.full(2, -1, dtype=np.int32), bins)
    psi(np.array([0.5, 0.5, 0.0], dtype=np.float64), counts, bin_offsets(edge_offsets), PSI_EPSILON)
