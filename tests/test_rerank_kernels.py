"""The Rerank kernels (MMR, caps, exploration) against plain NumPy/Python references: random
inputs, ties, empty, all masked, k = 0 and k past the end, plus the behaviour each one exists for."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba import types

from kernels import caps, explore, mmr
from kernels.caps import select_with_caps
from kernels.explore import place_exploration, thompson_scores
from kernels.filters import MASKED
from kernels.mmr import mmr_select
from kernels.topk import topk

TIE_PRONE = st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float(MASKED)]) | st.floats(-5, 5, width=32)


def topk_reference(scores: np.ndarray, k: int) -> np.ndarray:
    valid = np.flatnonzero(scores > MASKED)
    order = np.lexsort((valid, -scores[valid].astype(np.float64)))
    return valid[order][: max(k, 0)].astype(np.int32)


# --- MMR ------------------------------------------------------------------------------------


def mmr_reference(scores: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> np.ndarray:
    """The greedy loop as written in the docstring, in NumPy, with no shortcut for λ = 1.
    Similarities are float32 sums over d in order, so the picks match the kernel exactly."""
    lam = min(max(lam, 0.0), 1.0)
    valid = np.flatnonzero(scores > MASKED)
    if k <= 0 or valid.size == 0:
        return np.empty(0, np.int32)
    s = scores[valid]
    lo, hi = float(s.min()), float(s.max())
    rel = (s.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.ones(valid.size)
    vt = np.ascontiguousarray(vectors[valid].T)
    max_sim = np.zeros(valid.size, np.float32)
    taken = np.zeros(valid.size, bool)
    picked: list[int] = []
    for step in range(min(k, valid.size)):
        obj = lam * rel if step == 0 else lam * rel - (1.0 - lam) * max_sim.astype(np.float64)
        free = np.flatnonzero(~taken)
        best = free[np.lexsort((free, -s[free].astype(np.float64), -obj[free]))[0]]
        taken[best] = True
        picked.append(int(valid[best]))
        sim = np.zeros(valid.size, np.float32)
        for c in range(vt.shape[0]):
            sim += vt[c] * vt[c, best]
        max_sim = sim if step == 0 else np.maximum(max_sim, sim)
    return np.asarray(picked, np.int32)


def unit_rows(rng: np.random.Generator, n: int, d: int, distinct: int) -> np.ndarray:
    """n L2-normalised float32 rows drawn from `distinct` directions (repeats make similarity ties)."""
    pool = rng.integers(-2, 3, size=(max(distinct, 1), d)).astype(np.float32)
    pool[np.abs(pool).sum(axis=1) == 0, 0] = 1.0
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    return np.ascontiguousarray(pool[rng.integers(0, len(pool), n)], dtype=np.float32)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(TIE_PRONE, max_size=60),
    seed=st.integers(0, 10_000),
    d=st.integers(1, 8),
    distinct=st.integers(1, 12),
    k=st.integers(0, 70),
    lam=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]) | st.floats(0, 1),
)
# relevance needs float64: in float32 the min-max span below rounds to 2 and flips the last pick
@example(values=[0.0] * 12 + [2.0, -1.1920928955078125e-07], seed=0, d=2, distinct=3, k=9, lam=0.5)
def test_mmr_matches_reference_with_ties_and_masks(values, seed, d, distinct, k, lam) -> None:
    scores = np.asarray(values, dtype=np.float32)
    vectors = unit_rows(np.random.default_rng(seed), len(values), d, distinct)
    got = mmr_select(scores, vectors, k, lam)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, mmr_reference(scores, vectors, k, lam))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(TIE_PRONE, max_size=80), seed=st.integers(0, 10_000), k=st.integers(0, 90))
def test_mmr_with_lambda_one_is_topk(values, seed, k) -> None:
    scores = np.asarray(values, dtype=np.float32)
    vectors = unit_rows(np.random.default_rng(seed), len(values), 4, 3)
    expected = topk_reference(scores, k)
    np.testing.assert_array_equal(mmr_select(scores, vectors, k, 1.0), expected)
    np.testing.assert_array_equal(mmr_select(scores, vectors, k, 1.0), topk(scores, k))
    np.testing.assert_array_equal(mmr_reference(scores, vectors, k, 1.0), expected)


def test_mmr_with_small_lambda_takes_from_both_clusters() -> None:
    rng = np.random.default_rng(3)
    d = 16
    centres = np.eye(2, d, dtype=np.float32)
    vectors = np.repeat(centres, 10, axis=0) + 0.05 * rng.standard_normal((20, d)).astype(np.float32)
    vectors = np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)
    scores = np.r_[rng.uniform(0.9, 1.0, 10), rng.uniform(0.5, 0.6, 10)].astype(np.float32)
    cluster = np.r_[np.zeros(10, int), np.ones(10, int)]

    relevant = mmr_select(scores, vectors, 4, 1.0)
    diverse = mmr_select(scores, vectors, 4, 0.3)

    assert set(cluster[relevant]) == {0}
    assert diverse[0] == int(np.argmax(scores))  # the first pick is always the most relevant
    assert list(cluster[diverse[:2]]) == [0, 1]  # the runner-up cluster comes straight after


def test_mmr_lambda_means_the_same_at_any_score_scale() -> None:
    rng = np.random.default_rng(5)
    scores = (rng.integers(0, 64, 50) / 8).astype(np.float32)  # exact under ×4 and +3
    vectors = unit_rows(rng, 50, 8, 50)
    for lam in (0.2, 0.5, 0.8):
        np.testing.assert_array_equal(mmr_select(scores, vectors, 10, lam), mmr_select(scores * 4 + 3, vectors, 10, lam))


def test_mmr_never_picks_masked_and_handles_the_edges() -> None:
    vectors = unit_rows(np.random.default_rng(0), 6, 4, 6)
    scores = np.array([0.1, MASKED, 0.3, MASKED, 0.2, np.nan], np.float32)
    assert sorted(mmr_select(scores, vectors, 10, 0.5).tolist()) == [0, 2, 4]  # k > valid: all valid
    assert mmr_select(scores, vectors, 0, 0.5).shape == (0,)
    assert mmr_select(np.full(6, MASKED, np.float32), vectors, 3, 0.5).shape == (0,)
    assert mmr_select(np.zeros(0, np.float32), np.zeros((0, 4), np.float32), 3, 0.5).shape == (0,)
    np.testing.assert_array_equal(mmr_select(np.ones(6, np.float32), vectors[:2].copy(), 10, 0.5), [0, 1])  # 2..5 lack a vector
    one = np.array([MASKED, 2.0], np.float32)
    np.testing.assert_array_equal(mmr_select(one, vectors[:2].copy(), 5, 0.0), [1])


def test_mmr_ties_go_to_higher_score_then_lower_position() -> None:
    vectors = np.ascontiguousarray(np.eye(4, dtype=np.float32))  # orthogonal: every penalty is 0
    scores = np.array([1.0, 3.0, 3.0, 2.0], np.float32)
    np.testing.assert_array_equal(mmr_select(scores, vectors, 4, 0.0), [1, 2, 3, 0])
    np.testing.assert_array_equal(mmr_select(np.ones(4, np.float32), vectors, 4, 0.5), [0, 1, 2, 3])


# --- caps -----------------------------------------------------------------------------------


def caps_reference(order, brand, seller, category, max_b, max_s, max_c, k):
    n = min(len(brand), len(seller), len(category))
    walk: list[int] = []
    for p in order:
        if 0 <= p < n and p not in walk:
            walk.append(int(p))
    if k <= 0:
        return np.empty(0, np.int32), np.empty(0, np.uint8)
    columns = [(brand, max_b, {}), (seller, max_s, {}), (category, max_c, {})]
    picked: list[int] = []
    aside: list[int] = []
    for p in walk:
        if len(picked) == k:
            break
        if any(cap > 0 and col[p] > 0 and seen.get(col[p], 0) >= cap for col, cap, seen in columns):
            aside.append(p)
            continue
        picked.append(p)
        for col, _, seen in columns:
            seen[col[p]] = seen.get(col[p], 0) + 1
    backfill = aside[: min(k, len(walk)) - len(picked)]
    return np.asarray(picked + backfill, np.int32), np.asarray([0] * len(picked) + [1] * len(backfill), np.uint8)


def respects_caps(picked, brand, seller, category, max_b, max_s, max_c) -> bool:
    for col, cap in ((brand, max_b), (seller, max_s), (category, max_c)):
        codes, counts = np.unique(col[picked], return_counts=True)
        if cap > 0 and (counts[codes > 0] > cap).any():
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(0, 80),
    m=st.integers(0, 100),
    n_codes=st.sampled_from([1, 2, 3, 5, 20, 2_000_000]),
    caps_=st.tuples(*[st.integers(-1, 3)] * 3),
    k=st.integers(0, 90),
)
def test_caps_match_reference(seed, n, m, n_codes, caps_, k) -> None:
    rng = np.random.default_rng(seed)
    order = rng.integers(-2, n + 2, m).astype(np.int32)  # repeats and out-of-range positions
    brand, seller, category = (rng.integers(-1, n_codes + 1, n).astype(np.int32) for _ in range(3))
    picked, relaxed = select_with_caps(order, brand, seller, category, *caps_, k)
    ref_picked, ref_relaxed = caps_reference(order, brand, seller, category, *caps_, k)
    assert picked.dtype == np.int32 and relaxed.dtype == np.uint8
    np.testing.assert_array_equal(picked, ref_picked)
    np.testing.assert_array_equal(relaxed, ref_relaxed)
    assert respects_caps(picked[relaxed == 0], brand, seller, category, *caps_)


def test_caps_respected_when_possible() -> None:
    brand = np.repeat(np.arange(1, 4), 5).astype(np.int32)  # 3 brands × 5 items, best items all brand 1
    none = np.zeros(15, np.int32)
    picked, relaxed = select_with_caps(np.arange(15, dtype=np.int32), brand, none, none, 2, 0, 0, 6)
    np.testing.assert_array_equal(picked, [0, 1, 5, 6, 10, 11])
    assert not relaxed.any()


def test_caps_backfill_instead_of_a_short_list() -> None:
    brand = np.full(8, 42, np.int32)
    seller = np.array([7, 7, 7, 9, 9, 9, 9, 9], np.int32)
    none = np.zeros(8, np.int32)
    picked, relaxed = select_with_caps(np.arange(8, dtype=np.int32)[::-1].copy(), brand, seller, none, 2, 0, 0, 5)
    np.testing.assert_array_equal(picked, [7, 6, 5, 4, 3])
    np.testing.assert_array_equal(relaxed, [0, 0, 1, 1, 1])
    picked, relaxed = select_with_caps(np.arange(8, dtype=np.int32), brand, seller, none, 5, 1, 0, 4)
    np.testing.assert_array_equal(picked, [0, 3, 1, 2])  # one per seller first, then the rest in order
    np.testing.assert_array_equal(relaxed, [0, 0, 1, 1])


def test_caps_never_cap_unknown_codes_and_treat_nonpositive_caps_as_unlimited() -> None:
    order = np.arange(6, dtype=np.int32)
    unknown = np.zeros(6, np.int32)
    same = np.full(6, 1_000_000, np.int32)  # codes far past the candidate count
    picked, relaxed = select_with_caps(order, unknown, unknown, unknown, 1, 1, 1, 6)
    np.testing.assert_array_equal(picked, order)
    assert not relaxed.any()
    picked, relaxed = select_with_caps(order, same, same, same, 0, -1, 0, 6)
    np.testing.assert_array_equal(picked, order)
    assert not relaxed.any()
    picked, relaxed = select_with_caps(order, unknown, unknown, same, 0, 0, 3, 6)
    np.testing.assert_array_equal(relaxed, [0, 0, 0, 1, 1, 1])


def test_caps_edges() -> None:
    codes = np.array([1, 1, 2], np.int32)
    order = np.array([0, 1, 2], np.int32)
    for k in (0, -1):
        picked, relaxed = select_with_caps(order, codes, codes, codes, 1, 1, 1, k)
        assert picked.shape == relaxed.shape == (0,)
    picked, relaxed = select_with_caps(order[:0], codes, codes, codes, 1, 1, 1, 5)
    assert picked.shape == relaxed.shape == (0,)
    picked, relaxed = select_with_caps(order, codes, codes, codes, 1, 1, 1, 10)  # k > m
    np.testing.assert_array_equal(picked, [0, 2, 1])
    np.testing.assert_array_equal(relaxed, [0, 0, 1])


# --- Thompson sampling ----------------------------------------------------------------------


def beta_params_reference(successes, trials, prior_a, prior_b):
    s = np.nan_to_num(successes.astype(np.float64), nan=0.0).clip(min=0.0)
    f = np.nan_to_num(trials.astype(np.float64) - s, nan=0.0).clip(min=0.0)
    return (prior_a + s).clip(1e-6, 1e12), (prior_b + f).clip(1e-6, 1e12)


@settings(max_examples=40, deadline=None)
@given(
    s=st.floats(-2, 60),
    t=st.floats(0, 80),
    prior_a=st.floats(0.2, 5),
    prior_b=st.floats(0.2, 5),
    seed=st.integers(0, 2**40),
)
def test_thompson_draws_follow_the_reference_beta(s, t, prior_a, prior_b, seed) -> None:
    n = 4000
    successes = np.full(n, s, np.float32)
    trials = np.full(n, t, np.float32)
    draws = thompson_scores(successes, trials, prior_a, prior_b, seed)
    a, b = (float(x[0]) for x in beta_params_reference(successes, trials, prior_a, prior_b))
    assert draws.dtype == np.float32 and draws.shape == (n,)
    assert ((draws >= 0) & (draws <= 1)).all()
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(draws.mean() - mean) < 6 * math.sqrt(var / n) + 1e-6
    # two-sample Kolmogorov–Smirnov against NumPy's Beta sampler (α ≈ 1e-6), both in float32
    # (near 0 or 1 many draws round to the same float32)
    ref = np.sort(np.random.default_rng(seed).beta(a, b, n).astype(np.float32).astype(np.float64))
    grid = np.sort(draws.astype(np.float64))
    both = np.r_[grid, ref]
    gap = np.abs(np.searchsorted(grid, both, "right") - np.searchsorted(ref, both, "right")).max() / n
    assert gap < 2.69 * math.sqrt(2 / n)


def test_thompson_mean_is_the_posterior_mean() -> None:
    successes = np.repeat(np.array([0, 3, 40], np.float32), 20_000)
    trials = np.repeat(np.array([0, 10, 50], np.float32), 20_000)
    draws = thompson_scores(successes, trials, 1.0, 2.0, 11).reshape(3, -1)
    np.testing.assert_allclose(draws.mean(axis=1), [1 / 3, 4 / 13, 41 / 53], atol=0.005)


def test_thompson_same_seed_same_draws() -> None:
    rng = np.random.default_rng(1)
    trials = rng.integers(0, 100, 500).astype(np.float32)
    successes = (trials * rng.random(500)).astype(np.float32)
    first = thompson_scores(successes, trials, 1.0, 1.0, 1234)
    np.testing.assert_array_equal(first, thompson_scores(successes, trials, 1.0, 1.0, 1234))
    assert not np.array_equal(first, thompson_scores(successes, trials, 1.0, 1.0, 1235))
    np.testing.assert_array_equal(thompson_scores(successes, trials, 1.0, 1.0, 2**32 + 1234), first)  # low 32 bits


def test_thompson_survives_bad_counts_and_priors() -> None:
    bad = np.array([np.nan, np.inf, -5.0, 3.0, 0.0], np.float32)
    trials = np.array([1.0, np.inf, 2.0, np.nan, np.inf], np.float32)
    for prior in (0.0, -1.0, float("nan"), 1.0):
        draws = thompson_scores(bad, trials, prior, prior, 3)
        assert draws.shape == (5,) and ((draws >= 0) & (draws <= 1)).all()
    assert thompson_scores(np.zeros(0, np.float32), np.zeros(0, np.float32), 1.0, 1.0, 0).shape == (0,)


# --- exploration slots ----------------------------------------------------------------------


def place_reference(base, explore_, slots, k):
    if k <= 0:
        return np.empty(0, np.int32)
    ub: list[int] = []
    for p in base:
        if p >= 0 and p not in ub:
            ub.append(int(p))
    ue: list[int] = []
    for p in explore_:
        if p >= 0 and p not in ub and p not in ue:
            ue.append(int(p))
    reserved = {int(q) for q in slots if 0 <= q < k}
    out: list[int] = []
    while len(out) < k:
        p = len(out)
        if p in reserved and ue:
            out.append(ue.pop(0))
        elif ub:
            out.append(ub.pop(0))
        else:
            break
    owed = sum(1 for q in reserved if q >= len(out))
    out += ue[: min(owed, k - len(out))]
    return np.asarray(out, np.int32)


@settings(max_examples=200, deadline=None)
@given(
    base=st.lists(st.integers(-1, 40), max_size=30),
    explore_=st.lists(st.integers(-1, 40), max_size=15),
    slots=st.lists(st.integers(-2, 35), max_size=8),
    k=st.integers(-1, 35),
)
def test_place_exploration_matches_reference(base, explore_, slots, k) -> None:
    args = [np.asarray(x, np.int32) for x in (base, explore_, slots)]
    got = place_exploration(*args, k)
    assert got.dtype == np.int32
    assert len(got) <= max(k, 0) and len(set(got.tolist())) == len(got)
    np.testing.assert_array_equal(got, place_reference(base, explore_, slots, k))


def test_exploration_lands_exactly_on_the_slots() -> None:
    base = np.arange(20, dtype=np.int32)
    explore_ = np.array([3, 100, 101, 102, 103], np.int32)  # 3 is already in base: skipped
    slots = np.array([2, 5, 9], np.int32)
    got = place_exploration(base, explore_, slots, 10)
    assert len(got) == 10
    np.testing.assert_array_equal(got[slots], [100, 101, 102])
    np.testing.assert_array_equal(np.delete(got, slots), base[:7])


def test_exploration_with_fewer_picks_than_slots_lets_base_fill_in() -> None:
    base = np.arange(10, dtype=np.int32)
    got = place_exploration(base, np.array([50], np.int32), np.array([1, 3], np.int32), 5)
    np.testing.assert_array_equal(got, [0, 50, 1, 2, 3])
    np.testing.assert_array_equal(place_exploration(base, np.zeros(0, np.int32), np.array([0], np.int32), 3), [0, 1, 2])


def test_exploration_with_a_short_base_still_gets_its_slots() -> None:
    got = place_exploration(np.array([7, 8], np.int32), np.array([1, 2, 3], np.int32), np.array([1, 4, 6], np.int32), 10)
    np.testing.assert_array_equal(got, [7, 1, 8, 2, 3])  # slot 4 and 6 picks follow once base runs out
    assert place_exploration(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32), 5).shape == (0,)
    assert place_exploration(np.arange(3, dtype=np.int32), np.array([9], np.int32), np.array([0], np.int32), 0).shape == (0,)


# --- warm-up --------------------------------------------------------------------------------

F32, I32 = types.float32[::1], types.int32[::1]


@pytest.mark.parametrize(
    ("module", "kernel", "signature"),
    [
        (mmr, mmr_select, (F32, types.float32[:, ::1], types.int64, types.float64)),
        (caps, select_with_caps, (I32, I32, I32, I32, types.int64, types.int64, types.int64, types.int64)),
        (explore, thompson_scores, (F32, F32, types.float64, types.float64, types.int64)),
        (explore, place_exploration, (I32, I32, I32, types.int64)),
    ],
)
def test_warm_compiles_the_production_signature(module, kernel, signature) -> None:
    module.warm()
    assert signature in kernel.signatures
