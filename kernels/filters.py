"""Candidate filters as score masks (the `implicit` pattern): a filtered candidate keeps its slot
but its score becomes the finite sentinel MASKED, so later kernels need no compaction and no
`-inf` arithmetic.

Every rule of the product brief that must never be broken (out of stock, blocked brand or seller)
is applied here, before ranking, on the hot path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MASKED = np.float32(-3.0e38)


@njit(cache=True, nogil=True)
def apply_filters(
    rows: np.ndarray,
    scores: np.ndarray,
    in_stock: np.ndarray,
    item_brand: np.ndarray,
    item_seller: np.ndarray,
    blocked_brand: np.ndarray,
    blocked_seller: np.ndarray,
    excluded: np.ndarray,
) -> int:
    """Mask, in place, candidates that must not be shown. Returns how many remain unmasked.

    rows: int32 [n] item rows; scores: float32 [n] (masked in place);
    in_stock: uint8 [n_items] (0 = out of stock); item_brand / item_seller: int32 [n_items] codes;
    blocked_brand / blocked_seller: uint8 bitmaps over brand / seller codes (1 = blocked; may be
    shorter than the vocabulary: codes past the end are not blocked);
    excluded: uint8 bitmap over item rows (already bought, anchor, cart, request exclusions;
    may be empty = nothing excluded).
    Rows outside the item table are masked (defensive: a stale row must never be served).
    """
    n_items = in_stock.shape[0]
    n_bb = blocked_brand.shape[0]
    n_bs = blocked_seller.shape[0]
    n_ex = excluded.shape[0]
    remaining = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0 or r >= n_items or in_stock[r] == 0:
            scores[i] = MASKED
            continue
        b = item_brand[r]
        if 0 <= b < n_bb and blocked_brand[b] != 0:
            scores[i] = MASKED
            continue
        s = item_seller[r]
        if 0 <= s < n_bs and blocked_seller[s] != 0:
            scores[i] = MASKED
            continue
        if r < n_ex and excluded[r] != 0:
            scores[i] = MASKED
            continue
        if scores[i] > MASKED:
            remaining += 1
    return remaining
