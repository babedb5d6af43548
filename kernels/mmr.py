"""Greedy Maximal Marginal Relevance (Carbonell & Goldstein, 1998): trade relevance for variety
when filling the final slots.

Relevance is the ranker's score min-max normalised over the unmasked candidates, so one λ means
the same whatever the ranker's scale; similarity is the inner product of L2-normalised vectors.
The max-similarity to the picks so far is kept incrementally, so each step costs one pass over
the candidates (O(n·d)) and the whole selection O(k·n·d).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.filters import MASKED
from kernels.topk import topk


@njit(cache=True, nogil=True)
def mmr_select(scores: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Pick up to k candidates greedily by λ·rel[i] − (1 − λ)·max_sim(i, picked).

    scores: float32 [n]; entries ≤ MASKED (or NaN) are never picked.
    vectors: float32 [n, d], C-contiguous, row i the L2-normalised embedding of candidate i
        (finite values; a zero row is "similar to nothing"; candidates past its last row are
        never picked).
    k: int (Python int); ≤ 0 gives an empty result, more than the unmasked count gives them all.
    lam: float in [0, 1] (clamped): 1 = pure relevance, 0 = pure novelty after the first pick.
    Returns int32 [min(k, unmasked)] candidate positions in pick order.

    rel = (score − min) / (max − min) over the unmasked candidates (all 1 when they are equal);
    before the first pick the similarity term is 0, so the first pick is the best score. Ties on
    the objective go to the higher raw score, then to the lower position; with that rule λ = 1
    is exactly `kernels.topk.topk(scores, k)` (and is served by it, in O(n)). Similarities are
    float32 sums over d in order; the objective is float64.
    Complexity O(n·d + k·m·d) time for m unmasked candidates, O(m·d) scratch (a transposed copy
    of their vectors, so each step's similarity update is a contiguous elementwise loop that
    LLVM vectorises without fastmath).
    """
    if k <= 0:
        return np.empty(0, dtype=np.int32)
    if lam >= 1.0:
        return topk(scores, k)
    w_rel = np.float64(lam) if lam > 0.0 else np.float64(0.0)  # also maps NaN to 0
    w_sim = 1.0 - w_rel
    n = min(scores.shape[0], vectors.shape[0])
    d = vectors.shape[1]
    valid = np.empty(n, dtype=np.int32)
    m = 0
    lo = np.float32(0.0)
    hi = np.float32(0.0)
    for i in range(n):
        s = scores[i]
        if s > MASKED:
            if m == 0 or s < lo:
                lo = s
            if m == 0 or s > hi:
                hi = s
            valid[m] = i
            m += 1
    if m == 0:
        return np.empty(0, dtype=np.int32)
    take = min(k, m)
    # np.float64, not float(): inside numba float() of a float32 stays float32
    span = np.float64(hi) - np.float64(lo)
    rel = np.ones(m, dtype=np.float64)
    if span > 0.0:
        for j in range(m):
            rel[j] = (np.float64(scores[valid[j]]) - np.float64(lo)) / span
    vt = np.empty((d, m), dtype=np.float32)
    for j in range(m):
        r = valid[j]
        for c in range(d):
            vt[c, j] = vectors[r, c]
    max_sim = np.zeros(m, dtype=np.float32)
    sim = np.empty(m, dtype=np.float32)
    taken = np.zeros(m, dtype=np.uint8)
    out = np.empty(take, dtype=np.int32)
    for step in range(take):
        best = -1
        best_obj = 0.0
        best_score = np.float32(0.0)
        for j in range(m):
            if taken[j] != 0:
                continue
            obj = w_rel * rel[j]
            if step > 0:
                obj = obj - w_sim * np.float64(max_sim[j])
            s = scores[valid[j]]
            if best < 0 or obj > best_obj or (obj == best_obj and s > best_score):
                best = j
                best_obj = obj
                best_score = s
        taken[best] = 1
        out[step] = valid[best]
        if step + 1 == take:
            break
        sim[:] = 0.0
        for c in range(d):
            w = vt[c, best]
            for j in range(m):
                sim[j] += vt[c, j] * w
        if step == 0:
            max_sim[:] = sim
        else:
            for j in range(m):
                if sim[j] > max_sim[j]:
                    max_sim[j] = sim[j]
    return out


def warm() -> None:
    """Compile (or load from cache) `mmr_select` for the production signature: float32 [n]
    scores, C-contiguous float32 [n, d] vectors, Python int k, Python float λ."""
    scores = np.array([0.9, 0.5, MASKED], dtype=np.float32)
    vectors = np.ascontiguousarray(np.eye(3, 4, dtype=np.float32))
    mmr_select(scores, vectors, 2, 0.7)
