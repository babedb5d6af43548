"""Each kernel against a plain NumPy/Python reference: random inputs, ties, empty, all masked."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.filters import MASKED, apply_filters
from kernels.gather import accumulate_neighbours
from kernels.merge import merge_candidates
from kernels.topk import topk


def topk_reference(scores: np.ndarray, k: int) -> np.ndarray:
    valid = np.flatnonzero(scores > MASKED)
    order = np.lexsort((valid, -scores[valid].astype(np.float64)))
    return valid[order][:k].astype(np.int32)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float(MASKED)]) | st.floats(-5, 5, width=32), max_size=200),
    k=st.integers(0, 50),
)
def test_topk_matches_reference_with_ties_and_masks(values: list[float], k: int) -> None:
    scores = np.asarray(values, dtype=np.float32)
    np.testing.assert_array_equal(topk(scores, k), topk_reference(scores, k))


def test_topk_empty_and_all_masked() -> None:
    assert topk(np.zeros(0, np.float32), 5).shape == (0,)
    assert topk(np.full(10, MASKED, np.float32), 5).shape == (0,)
    assert topk(np.ones(3, np.float32), 0).shape == (0,)


def filters_reference(rows, in_stock, brand, seller, bb, bs, excluded):
    keep = []
    for r in rows:
        ok = 0 <= r < len(in_stock) and in_stock[r] == 1
        ok = ok and not (brand[r] < len(bb) and bb[brand[r]])
        ok = ok and not (seller[r] < len(bs) and bs[seller[r]])
        ok = ok and not (r < len(excluded) and excluded[r])
        keep.append(ok)
    return np.asarray(keep, dtype=bool)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 300), stock_share=st.floats(0, 1))
def test_filters_match_reference(seed: int, n: int, stock_share: float) -> None:
    rng = np.random.default_rng(seed)
    n_items = 500
    rows = rng.integers(-3, n_items + 3, size=n).astype(np.int32)
    in_stock = (rng.random(n_items) < stock_share).astype(np.uint8)
    brand = rng.integers(0, 20, n_items).astype(np.int32)
    seller = rng.integers(0, 10, n_items).astype(np.int32)
    bb = (rng.random(rng.integers(0, 25)) < 0.2).astype(np.uint8)
    bs = (rng.random(rng.integers(0, 12)) < 0.2).astype(np.uint8)
    excluded = (rng.random(rng.integers(0, n_items)) < 0.1).astype(np.uint8)
    scores = rng.random(n).astype(np.float32)
    remaining = apply_filters(rows, scores, in_stock, brand, seller, bb, bs, excluded)
    expected = filters_reference(rows, in_stock, brand, seller, bb, bs, excluded)
    np.testing.assert_array_equal(scores > MASKED, expected)
    assert remaining == int(expected.sum())


def test_filters_all_masked_and_empty() -> None:
    rows = np.arange(5, dtype=np.int32)
    scores = np.ones(5, np.float32)
    none = np.zeros(0, np.uint8)
    assert apply_filters(rows, scores, np.zeros(5, np.uint8), np.zeros(5, np.int32), np.zeros(5, np.int32), none, none, none) == 0
    assert (scores == MASKED).all()
    assert apply_filters(rows[:0], scores[:0], np.ones(5, np.uint8), np.zeros(5, np.int32), np.zeros(5, np.int32), none, none, none) == 0


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 200), n_sources=st.integers(1, 6))
def test_merge_matches_reference(seed: int, n: int, n_sources: int) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.integers(-1, 60, n).astype(np.int32)
    scores = rng.random(n).astype(np.float32)
    sources = rng.integers(0, n_sources, n).astype(np.uint8)
    anchors = rng.integers(-1, 60, n).astype(np.int32)
    slot = np.full(50, -1, np.int32)  # rows ≥ 50 are out of range and dropped
    uniq, mat, first_src, anchor_mat = merge_candidates(rows, scores, sources, anchors, n_sources, slot)
    assert (slot == -1).all()
    order: list[int] = []
    ref: dict[int, np.ndarray] = {}
    ref_anchor: dict[int, np.ndarray] = {}
    first: dict[int, int] = {}
    seen: set[tuple[int, int]] = set()
    for r, s, src, a in zip(rows, scores, sources, anchors):
        if not 0 <= r < 50:
            continue
        if r not in ref:
            order.append(int(r))
            ref[r] = np.zeros(n_sources, np.float32)
            ref_anchor[r] = np.full(n_sources, -1, np.int32)
            first[r] = int(src)
        if (int(r), int(src)) not in seen or s > ref[r][src]:
            ref[r][src], ref_anchor[r][src] = s, a
            seen.add((int(r), int(src)))
    np.testing.assert_array_equal(uniq, np.asarray(order, np.int32))
    if order:
        np.testing.assert_array_equal(mat, np.stack([ref[r] for r in order]))
        np.testing.assert_array_equal(first_src, [first[r] for r in order])
        np.testing.assert_array_equal(anchor_mat, np.stack([ref_anchor[r] for r in order]))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), n_anchors=st.integers(0, 8))
def test_accumulate_neighbours_matches_reference(seed: int, n_anchors: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    lengths = rng.integers(0, 6, n)
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    indices = rng.integers(0, n, indptr[-1]).astype(np.int32)
    weights = rng.random(indptr[-1]).astype(np.float32)
    anchors = rng.integers(-2, n + 2, n_anchors).astype(np.int32)
    aw = rng.random(n_anchors).astype(np.float32)
    slot = np.full(n, -1, np.int32)
    rows, scores, best = accumulate_neighbours(indptr, indices, weights, anchors, aw, slot)
    assert (slot == -1).all()
    total: dict[int, float] = {}
    top: dict[int, tuple[float, int]] = {}
    for a, w in zip(anchors, aw):
        if not 0 <= a < n:
            continue
        for p in range(indptr[a], indptr[a + 1]):
            c, contrib = int(indices[p]), float(w * weights[p])
            total[c] = total.get(c, 0.0) + contrib
            if c not in top or contrib > top[c][0]:
                top[c] = (contrib, int(a))
    assert sorted(rows.tolist()) == sorted(total)
    for r, s, b in zip(rows, scores, best):
        assert abs(s - total[int(r)]) < 1e-5
        assert b == top[int(r)][1]
