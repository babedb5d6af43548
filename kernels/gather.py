"""Gather and accumulate neighbours of several anchor items from a CSR table.

Used by every item-to-item source (co-visitation, co-purchase, complementary categories): the
score of a neighbour is the sum over anchors of anchor_weight × edge weight, and its "because of"
anchor is the one that contributed most (that is what the explanation names).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def accumulate_neighbours(
    indptr: np.ndarray,
    indices: np.ndarray,
    weights: np.ndarray,
    anchors: np.ndarray,
    anchor_weights: np.ndarray,
    slot_of: np.ndarray,
):
    """indptr int64 [n_rows+1], indices int32, weights float32: the CSR table;
    anchors int32 [a] rows of the table (out-of-range rows are skipped), anchor_weights float32 [a];
    slot_of int32 [n_cols] scratch, all -1 on entry and restored on exit.

    Returns (rows int32 [u], scores float32 [u], best_anchor int32 [u]) in first-seen order.
    Anchors themselves are not excluded here (filters do that)."""
    n_rows = indptr.shape[0] - 1
    n_cols = slot_of.shape[0]
    total = 0
    for a in range(anchors.shape[0]):
        r = anchors[a]
        if 0 <= r < n_rows:
            total += indptr[r + 1] - indptr[r]
    rows = np.empty(total, dtype=np.int32)
    scores = np.zeros(total, dtype=np.float32)
    best = np.empty(total, dtype=np.int32)
    best_w = np.zeros(total, dtype=np.float32)
    u = 0
    for a in range(anchors.shape[0]):
        r = anchors[a]
        if r < 0 or r >= n_rows:
            continue
        aw = anchor_weights[a]
        for p in range(indptr[r], indptr[r + 1]):
            c = indices[p]
            if c < 0 or c >= n_cols:
                continue
            contrib = aw * weights[p]
            slot = slot_of[c]
            if slot < 0:
                slot = u
                slot_of[c] = u
                rows[u] = c
                best[u] = r
                best_w[u] = contrib
                u += 1
            elif contrib > best_w[slot]:
                best_w[slot] = contrib
                best[slot] = r
            scores[slot] += contrib
    for j in range(u):
        slot_of[rows[j]] = -1
    return rows[:u].copy(), scores[:u].copy(), best[:u].copy()
