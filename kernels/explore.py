"""Exploration slots: Thompson sampling over per-candidate Beta posteriors, and placing the
sampled winners at reserved positions of the final list.

A candidate with s successes in t trials (clicks in impressions, say) gets a draw from
Beta(prior_a + s, prior_b + t − s); ranking candidates by their draws explores uncertain items
in proportion to their chance of being the best. Draws are seeded per call, so one request
(same seed) always gets the same list.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Beta shapes are kept in this range: numba's gamma sampler raises on a shape ≤ 0 and never
# returns on NaN or infinity.
_MIN_SHAPE = 1e-6
_MAX_SHAPE = 1e12


@njit(cache=True, nogil=True)
def _shape(x: float) -> float:
    if not x >= _MIN_SHAPE:  # also NaN
        return _MIN_SHAPE
    if x > _MAX_SHAPE:
        return _MAX_SHAPE
    return x


@njit(cache=True, nogil=True)
def thompson_scores(successes: np.ndarray, trials: np.ndarray, prior_a: float, prior_b: float, seed: int) -> np.ndarray:
    """One posterior draw per candidate.

    successes, trials: float32 [n] (fractional counts allowed, e.g. decayed); successes are
        clamped at ≥ 0, failures = trials − successes at ≥ 0 (NaN counts as 0).
    prior_a, prior_b: float > 0 (Beta prior; Beta(1, 1) is uniform).
    seed: int (a Python int below 2**63, else numba compiles a uint64 variant); only its low
        32 bits are used.
    Returns float32 [n] in [0, 1], draw i from Beta(prior_a + s_i, prior_b + f_i), each shape
    clamped to [1e-6, 1e12]. Same inputs and seed → same draws.

    Reseeds the calling thread's numba RNG (np.random.seed): numba keeps one generator per
    thread, so concurrent calls from other threads are not disturbed. O(n) time.
    """
    n = min(successes.shape[0], trials.shape[0])
    np.random.seed(np.uint32(seed & 0xFFFFFFFF))
    out = np.empty(n, dtype=np.float32)
    for i in range(n):
        s = np.float64(successes[i])  # not float(): in numba that keeps float32
        if not s > 0.0:
            s = 0.0
        f = np.float64(trials[i]) - s
        if not f > 0.0:
            f = 0.0
        out[i] = np.float32(np.random.beta(_shape(prior_a + s), _shape(prior_b + f)))
    return out


@njit(cache=True, nogil=True)
def place_exploration(base: np.ndarray, explore: np.ndarray, slots: np.ndarray, k: int) -> np.ndarray:
    """Insert exploration picks at reserved output positions, shifting the base list down.

    base: int32 [b] candidate positions in final order (the exploit list).
    explore: int32 [e] candidate positions, best sampled score first; those already in base
        (and repeats) are skipped.
    slots: int32 [s] 0-based output positions reserved for exploration (any order; positions
        outside [0, k) and repeats are ignored).
    k: int, the list length wanted; ≤ 0 gives an empty result.
    Negative positions in base or explore are dropped; the result has no repeats.
    Returns int32 [≤ k]: position p holds the next exploration pick if p is a slot and one is
    left, else the next base item. A slot with no exploration pick left takes a base item. If
    base runs out first, the picks for the remaining slots (up to k) follow at the end, so the
    number of exploration picks does not depend on the base length.
    Complexity O(b + e + s + k) time, O(k + max position) scratch.
    """
    if k <= 0:
        return np.empty(0, dtype=np.int32)
    top = -1
    for i in range(base.shape[0]):
        top = max(top, base[i])
    for i in range(explore.shape[0]):
        top = max(top, explore[i])
    seen = np.zeros(top + 1, dtype=np.uint8)
    ub = np.empty(base.shape[0], dtype=np.int32)
    nb = 0
    for i in range(base.shape[0]):
        p = base[i]
        if p >= 0 and seen[p] == 0:
            seen[p] = 1
            ub[nb] = p
            nb += 1
    ue = np.empty(explore.shape[0], dtype=np.int32)
    ne = 0
    for i in range(explore.shape[0]):
        p = explore[i]
        if p >= 0 and seen[p] == 0:
            seen[p] = 1
            ue[ne] = p
            ne += 1
    is_slot = np.zeros(k, dtype=np.uint8)
    for i in range(slots.shape[0]):
        q = slots[i]
        if 0 <= q < k:
            is_slot[q] = 1
    out = np.empty(k, dtype=np.int32)
    bi = 0
    ei = 0
    p = 0
    while p < k:
        if is_slot[p] != 0 and ei < ne:
            out[p] = ue[ei]
            ei += 1
        elif bi < nb:
            out[p] = ub[bi]
            bi += 1
        else:
            break
        p += 1
    owed = 0
    for q in range(p, k):
        owed += is_slot[q]
    while p < k and owed > 0 and ei < ne:
        out[p] = ue[ei]
        ei += 1
        owed -= 1
        p += 1
    return out[:p].copy()


def warm() -> None:
    """Compile (or load from cache) both kernels for the production signatures: float32 counts,
    int32 positions, C-contiguous; Python float priors, Python int seed and k."""
    counts = np.array([1.0, 0.0, 3.0], dtype=np.float32)
    thompson_scores(counts, counts + np.float32(2.0), 1.0, 1.0, 7)
    place_exploration(np.array([0, 1], dtype=np.int32), np.array([2], dtype=np.int32), np.array([1], dtype=np.int32), 3)
