"""Union of candidate lists from several sources into one struct-of-arrays.

Input is the concatenation of every source's output (rows, scores, source ids, anchors). Output
has each item once, in order of first appearance, with dense [n_unique, n_sources] matrices of
per-source scores (0 where a source did not propose the item) and per-source anchors (the item
that explains the proposal, -1 if none), plus the first source that proposed it. O(n) with a caller-owned scratch array, so no per-request allocation proportional to the
catalog.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def merge_candidates(
    rows: np.ndarray,
    scores: np.ndarray,
    sources: np.ndarray,
    anchors: np.ndarray,
    n_sources: int,
    slot_of: np.ndarray,
):
    """rows int32 [n], scores float32 [n], sources uint8 [n] (< n_sources), anchors int32 [n];
    slot_of: int32 [n_items] scratch, all -1 on entry and restored to -1 on exit.

    Returns (unique_rows int32 [u], source_scores float32 [u, n_sources], first_source uint8 [u],
    source_anchors int32 [u, n_sources]). For an item proposed twice by one source the higher
    score (and its anchor) is kept. Rows outside scratch are dropped.
    """
    n = rows.shape[0]
    n_items = slot_of.shape[0]
    uniq = np.empty(n, dtype=np.int32)
    first_src = np.empty(n, dtype=np.uint8)
    anchor_mat = np.full((n, n_sources), -1, dtype=np.int32)
    mat = np.zeros((n, n_sources), dtype=np.float32)
    seen = np.zeros((n, n_sources), dtype=np.uint8)
    u = 0
    for i in range(n):
        r = rows[i]
        if r < 0 or r >= n_items:
            continue
        s = sources[i]
        slot = slot_of[r]
        if slot < 0:
            slot = u
            slot_of[r] = u
            uniq[u] = r
            first_src[u] = s
            u += 1
        if seen[slot, s] == 0 or scores[i] > mat[slot, s]:
            mat[slot, s] = scores[i]
            anchor_mat[slot, s] = anchors[i]
            seen[slot, s] = 1
    for j in range(u):
        slot_of[uniq[j]] = -1
    return uniq[:u].copy(), mat[:u].copy(), first_src[:u].copy(), anchor_mat[:u].copy()
