"""Per-brand, per-seller and per-category caps on the final list.

Caps are a preference, never a reason to return a short list: a candidate that would break a cap
is set aside, and if the capped walk ends before k picks, the set-aside candidates fill the rest
(in preference order) and are flagged as relaxed.

Codes can run to about a million while a request walks a few hundred candidates, so counts are
kept per *walked* code: each capped column is renumbered densely by one sort of the walked
candidates' codes, and scratch stays O(m) whatever the code range.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _dense_codes(codes: np.ndarray) -> np.ndarray:
    """int32 [m] codes → int32 [m] dense ids in [0, distinct); codes ≤ 0 (unknown) get -1.
    O(m log m)."""
    m = codes.shape[0]
    out = np.full(m, -1, dtype=np.int32)
    idx = np.argsort(codes)
    u = -1
    prev = np.int32(0)
    for p in range(m):
        j = idx[p]
        c = codes[j]
        if c <= 0:
            continue
        if u < 0 or c != prev:
            u += 1
            prev = c
        out[j] = u
    return out


@njit(cache=True, nogil=True)
def select_with_caps(
    order: np.ndarray,
    brand: np.ndarray,
    seller: np.ndarray,
    category: np.ndarray,
    max_per_brand: int,
    max_per_seller: int,
    max_per_category: int,
    k: int,
):
    """Walk `order`, taking each candidate unless that would exceed a cap; stop at k picks.

    order: int32 [m] candidate positions, most preferred first (positions outside [0, n) and
        repeats are skipped).
    brand, seller, category: int32 [n] codes per candidate position; code ≤ 0 is unknown and
        never capped.
    max_per_*: int (Python int); ≤ 0 means unlimited.
    k: int; ≤ 0 gives empty results.
    Returns (picked int32 [min(k, walked)], relaxed uint8 [same]): first every candidate taken
    within the caps in walk order, then, only if those are fewer than k, the candidates set aside
    by a cap, in walk order, with relaxed = 1. A set-aside candidate never displaces one that fit.

    Complexity O(m log m) time (one argsort per capped column), O(n + m) scratch.
    """
    n = min(brand.shape[0], seller.shape[0], category.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.uint8)
    seen = np.zeros(n, dtype=np.uint8)
    walk = np.empty(order.shape[0], dtype=np.int32)
    m = 0
    for j in range(order.shape[0]):
        p = order[j]
        if 0 <= p < n and seen[p] == 0:
            seen[p] = 1
            walk[m] = p
            m += 1
    take = min(k, m)
    cap_b = max_per_brand > 0
    cap_s = max_per_seller > 0
    cap_c = max_per_category > 0
    ids_b = np.empty(0, dtype=np.int32)
    ids_s = np.empty(0, dtype=np.int32)
    ids_c = np.empty(0, dtype=np.int32)
    if cap_b:
        ids_b = _dense_codes(brand[walk[:m]])
    if cap_s:
        ids_s = _dense_codes(seller[walk[:m]])
    if cap_c:
        ids_c = _dense_codes(category[walk[:m]])
    count_b = np.zeros(m if cap_b else 0, dtype=np.int32)
    count_s = np.zeros(m if cap_s else 0, dtype=np.int32)
    count_c = np.zeros(m if cap_c else 0, dtype=np.int32)
    picked = np.empty(take, dtype=np.int32)
    relaxed = np.zeros(take, dtype=np.uint8)
    aside = np.empty(m, dtype=np.int32)
    n_aside = 0
    t = 0
    for j in range(m):
        if t == take:
            break
        fits = True
        if cap_b and ids_b[j] >= 0 and count_b[ids_b[j]] >= max_per_brand:
            fits = False
        if cap_s and ids_s[j] >= 0 and count_s[ids_s[j]] >= max_per_seller:
            fits = False
        if cap_c and ids_c[j] >= 0 and count_c[ids_c[j]] >= max_per_category:
            fits = False
        if not fits:
            aside[n_aside] = walk[j]
            n_aside += 1
            continue
        picked[t] = walk[j]
        t += 1
        if cap_b and ids_b[j] >= 0:
            count_b[ids_b[j]] += 1
        if cap_s and ids_s[j] >= 0:
            count_s[ids_s[j]] += 1
        if cap_c and ids_c[j] >= 0:
            count_c[ids_c[j]] += 1
    j = 0
    while t < take:
        picked[t] = aside[j]
        relaxed[t] = 1
        t += 1
        j += 1
    return picked, relaxed


def warm() -> None:
    """Compile (or load from cache) `select_with_caps` for the production signature: int32 order
    and code columns, C-contiguous, Python int caps and k."""
    order = np.array([2, 0, 1], dtype=np.int32)
    codes = np.array([1, 1, 0], dtype=np.int32)
    select_with_caps(order, codes, codes.copy(), codes.copy(), 1, 1, 1, 3)
