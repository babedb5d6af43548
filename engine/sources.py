"""Candidate sources: named, pluggable retrievers, each proposing items with a score and the anchor
item that explains them. Settings choose sources per surface by name (engine.settings); the builder
runs these same classes to make the ranker's training candidates.

Contract (tests/test_sources.py checks every source against it): `retrieve` returns three aligned
arrays — rows int32 [≤ k] (unique, valid item rows), scores float32 (higher = better, > 0),
anchors int32 (the item row that led to the candidate, -1 if none) — and never raises for a
shopper or anchor it knows nothing about: it returns fewer or no candidates.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from engine.catalog import CatalogView
from engine.context import RequestContext
from kernels.gather import accumulate_neighbours
from kernels.topk import topk

EMPTY = (np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32))
SourceOutput = tuple[np.ndarray, np.ndarray, np.ndarray]


class CandidateSource(Protocol):
    name: str

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput: ...


def _best(rows: np.ndarray, scores: np.ndarray, anchors: np.ndarray, k: int) -> SourceOutput:
    if len(rows) > k:
        keep = topk(scores, k)
        return rows[keep], scores[keep], anchors[keep]
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order], anchors[order]


def _list_scores(n: int) -> np.ndarray:
    """Score of ranked-list position i: 1/(1+i), so the ranker sees rank, not a raw count."""
    return (1.0 / (1.0 + np.arange(n, dtype=np.float32))).astype(np.float32)


def _recent_anchors(ctx: RequestContext, limit: int, decay: float, types: tuple[int, ...] | None = None):
    """The shopper's distinct recent items, most recent first, with recency weights decay**i."""
    recent = ctx.shopper.recent_items[::-1]
    if types is not None and len(recent):
        rtypes = ctx.shopper.recent_types[::-1]
        recent = recent[np.isin(rtypes, np.asarray(types, dtype=np.int8))]
    _, first = np.unique(recent, return_index=True)
    anchors = recent[np.sort(first)][:limit].astype(np.int32)
    return anchors, (decay ** np.arange(len(anchors), dtype=np.float32)).astype(np.float32)


def _neighbours(view: CatalogView, table, anchors: np.ndarray, weights: np.ndarray, k: int) -> SourceOutput:
    if len(anchors) == 0:
        return EMPTY
    rows, scores, best = accumulate_neighbours(table.indptr, table.indices, table.weights, anchors, weights, view.slot_of)
    keep = scores > 0
    return _best(rows[keep], scores[keep], best[keep], k)


class CovisitSource:
    """Items co-viewed (session window) with the shopper's recent items."""

    name = "covisit"

    def __init__(self, recent_anchors: int = 10, decay: float = 0.85) -> None:
        self.recent_anchors, self.decay = recent_anchors, decay

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        anchors, weights = _recent_anchors(ctx, self.recent_anchors, self.decay)
        return _neighbours(view, view.covisit, anchors, weights, k)


class CoviewSource:
    """Items co-viewed with the anchor item (pdp) or the cart's items."""

    name = "coview"

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        return _neighbours(view, view.covisit, ctx.anchors, np.ones(len(ctx.anchors), np.float32), k)


class CopurchaseSource:
    """Frequently bought together with the anchor/cart items, else with recent carts and purchases."""

    name = "copurchase"

    def __init__(self, recent_anchors: int = 10, decay: float = 0.85) -> None:
        self.recent_anchors, self.decay = recent_anchors, decay

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        if len(ctx.anchors):
            anchors, weights = ctx.anchors, np.ones(len(ctx.anchors), np.float32)
        else:
            anchors, weights = _recent_anchors(ctx, self.recent_anchors, self.decay, types=(2, 3))
        return _neighbours(view, view.copurchase, anchors, weights, k)


class AnnSource:
    """Nearest items to the shopper's vector (user tower) in the item index."""

    name = "ann"

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        if ctx.user_vector is None or view.index is None:
            return EMPTY
        if len(ctx.shopper.recent_items) == 0:  # the tower's context-only vector: cached, exact
            rows, scores = view.search_for_context(ctx.user_vector, k)
        else:
            rows, scores = view.search_in_stock(ctx.user_vector, k)
        # Cosine can be ≤ 0 for far items; shift so every proposed item has a positive score.
        return rows, (scores + 1.0).astype(np.float32), np.full(len(rows), -1, np.int32)


class SimilarSource:
    """Nearest items to the anchor items' vectors (content + behaviour similarity)."""

    name = "similar"
    max_anchors = 3

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        if view.index is None or len(ctx.anchors) == 0:
            return EMPTY
        parts_r, parts_s, parts_a = [], [], []
        for anchor in ctx.anchors[-self.max_anchors :]:
            if not 0 <= anchor < view.n_items:
                continue
            rows, scores = view.search_in_stock(np.asarray(view.vectors[anchor], dtype=np.float32), k + 1, view.expansion_search_items)
            parts_r.append(rows)
            parts_s.append((scores + 1.0).astype(np.float32))
            parts_a.append(np.full(len(rows), anchor, np.int32))
        if not parts_r:
            return EMPTY
        rows, scores, anchors = np.concatenate(parts_r), np.concatenate(parts_s), np.concatenate(parts_a)
        keep = ~np.isin(rows, ctx.anchors)
        rows, scores, anchors = rows[keep], scores[keep], anchors[keep]
        # one entry per item: the best-scoring anchor wins
        order = np.lexsort((-scores, rows))
        rows, scores, anchors = rows[order], scores[order], anchors[order]
        first = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, bool)
        return _best(rows[first], scores[first], anchors[first], k)


def _from_lists(lists: list[tuple[np.ndarray, float]], k: int) -> SourceOutput:
    """Union of ranked lists, each with a weight; an item's score is its best weighted list score."""
    parts_r, parts_s = [], []
    for rows, weight in lists:
        if len(rows) == 0 or weight <= 0:
            continue
        rows = np.asarray(rows[: max(k, 1) * 2], dtype=np.int32)
        parts_r.append(rows)
        parts_s.append(_list_scores(len(rows)) * np.float32(weight))
    if not parts_r:
        return EMPTY
    rows, scores = np.concatenate(parts_r), np.concatenate(parts_s)
    order = np.lexsort((-scores, rows))
    rows, scores = rows[order], scores[order]
    first = np.r_[True, rows[1:] != rows[:-1]]
    return _best(rows[first], scores[first], np.full(int(first.sum()), -1, np.int32), k)


def _top_departments(view: CatalogView, ctx: RequestContext, n: int) -> list[tuple[int, float]]:
    depth = view.bundle.vocab.category_depth
    nodes, weights = ctx.shopper.category_nodes, ctx.shopper.category_weights
    picked = [(int(c), float(w)) for c, w in zip(nodes, weights) if 0 <= c < len(depth) and depth[c] == 1]
    return picked[:n]


class TrendingSource:
    """Trending in the shopper's region, and in the shopper's favourite departments."""

    name = "trending"

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        lists = [(view.trending_by_region.row(ctx.region)[0], 1.0)]
        if len(lists[0][0]) == 0:  # unknown region (anonymous shopper): trending anywhere
            lists = [(view.trending_by_region.row(r)[0], 0.8) for r in range(view.trending_by_region.n_rows)]
        lists += [(view.trending_by_top.row(dept)[0], 0.5 + w) for dept, w in _top_departments(view, ctx, 2)]
        rows, scores, anchors = _from_lists(lists, 2 * k)
        live = view.live_counts(rows, ctx.now)
        if live is not None:  # what is hot since the build climbs the list
            activity = live[:, 1] + 3.0 * live[:, 2] + 5.0 * live[:, 3]
            scores = (scores * (1.0 + np.log1p(activity))).astype(np.float32)
        return _best(rows, scores, anchors, k)


class PopularSource:
    """Popular in the shopper's region, then overall: the last-resort list that is never empty."""

    name = "popular"

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        return _from_lists([(view.popular_by_region.row(ctx.region)[0], 1.0), (np.asarray(view.popular), 0.9)], k)


class CategoryPopularSource:
    """Popular in the anchors' categories (pdp, cart), else in the shopper's favourite categories."""

    name = "category_popular"
    max_categories = 3

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        if len(ctx.anchors):
            cats = [(int(view.category[a]), 1.0) for a in ctx.anchors[-self.max_categories :] if 0 <= a < view.n_items]
        else:
            depth = view.bundle.vocab.category_depth
            cats = [
                (int(c), float(w))
                for c, w in zip(ctx.shopper.category_nodes, ctx.shopper.category_weights)
                if 0 <= c < len(depth) and depth[c] > 1
            ][: self.max_categories]
        return _from_lists([(view.popular_by_category.row(c)[0], w) for c, w in cats], k)


class NewArrivalsSource:
    """New arrivals, favouring the shopper's departments (exploration for fresh SKUs)."""

    name = "new"

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        rows = np.asarray(view.new_arrivals, dtype=np.int32)
        if len(rows) == 0:
            return EMPTY
        scores = _list_scores(len(rows))
        depts = _top_departments(view, ctx, 3)
        if depts:
            boost = np.zeros(len(rows), np.float32)
            tops = view.cat_top[rows]
            for dept, w in depts:
                boost += (tops == dept) * np.float32(w)
            scores = scores * (1.0 + 4.0 * boost)
        return _best(rows, scores.astype(np.float32), np.full(len(rows), -1, np.int32), k)


class ComplementsSource:
    """Popular items of categories bought together with the cart's (or anchor's) categories."""

    name = "complements"

    def retrieve(self, view: CatalogView, ctx: RequestContext, k: int) -> SourceOutput:
        anchors = ctx.anchors[(ctx.anchors >= 0) & (ctx.anchors < view.n_items)]
        if len(anchors) == 0:
            return EMPTY
        cats = view.category[anchors].astype(np.int32)
        comp, weights, _ = accumulate_neighbours(
            view.complements.indptr, view.complements.indices, view.complements.weights,
            cats, np.ones(len(cats), np.float32), view.cat_slot_of,
        )
        if len(comp) == 0:
            return EMPTY
        order = np.argsort(-weights, kind="stable")[:5]
        top_w = float(weights[order[0]])
        return _from_lists([(view.popular_by_category.row(int(comp[i]))[0], float(weights[i]) / top_w) for i in order], k)


def default_sources(recent_anchors: int = 10, decay: float = 0.85) -> dict[str, CandidateSource]:
    sources: list[CandidateSource] = [
        AnnSource(),
        CovisitSource(recent_anchors, decay),
        CoviewSource(),
        CopurchaseSource(recent_anchors, decay),
        SimilarSource(),
        TrendingSource(),
        PopularSource(),
        CategoryPopularSource(),
        NewArrivalsSource(),
        ComplementsSource(),
    ]
    return {s.name: s for s in sources}
