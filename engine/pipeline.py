"""The request path, in process: ResolveShopper → RetrieveCandidates → FilterCandidates →
GatherFeatures → PredictRanker → Rerank, over one RequestContext.

This first version ranks and takes the top `count`; MMR, caps, exploration slots and per-stage
deadlines belong to the serving issue and slot in as stages here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from artifacts.featurespec import SOURCE_NAMES
from artifacts.ranker import CompiledRanker
from engine.candidates import Candidates
from engine.catalog import CatalogView
from engine.context import RequestContext
from engine.features import assemble_features
from engine.resolve import shopper_vector
from engine.retrieval import retrieve
from engine.settings import RetrievalSettings
from engine.shopper import Shopper
from engine.sources import default_sources
from kernels.filters import MASKED, apply_filters
from kernels.topk import topk


@dataclass(frozen=True, slots=True)
class Recommendation:
    row: int
    sku: str
    score: float
    source: str
    reason: str


def _bitmap(codes: np.ndarray, size: int) -> np.ndarray:
    bits = np.zeros(size, np.uint8)
    codes = codes[(codes >= 0) & (codes < size)]
    bits[codes] = 1
    return bits


class Pipeline:
    def __init__(self, view: CatalogView, ranker: CompiledRanker | None, retrieval: RetrievalSettings | None = None) -> None:
        self.view = view
        self.ranker = ranker
        self.retrieval = retrieval or RetrievalSettings()
        self.sources = default_sources(self.retrieval.recent_anchors, self.retrieval.recency_decay)
        vocab = view.bundle.vocab
        self._n_brands, self._n_sellers = len(vocab.brands), len(vocab.sellers)

    def resolve(self, surface: str, user_id: str | None, anchors: np.ndarray, now: int | None = None) -> RequestContext:
        record = self.view.snapshot.get(user_id) if (user_id and self.view.snapshot is not None) else None
        shopper = Shopper.from_record(record) if record is not None else Shopper.anonymous()
        ctx = RequestContext(surface, shopper, int(now if now is not None else time.time()), anchors.astype(np.int32), shopper.region, shopper.device)
        ctx.user_vector = shopper_vector(self.view, ctx)
        return ctx

    def filter(self, ctx: RequestContext, cands: Candidates) -> np.ndarray:
        """Positions of candidates that may be shown (in stock, not blocked, not excluded)."""
        v = self.view
        scores = np.ones(len(cands), np.float32)
        excluded = _bitmap(np.concatenate([ctx.anchors, ctx.shopper.purchased]).astype(np.int64), v.n_items)
        apply_filters(
            cands.rows, scores, v.in_stock, v.brand, v.seller,
            _bitmap(ctx.shopper.blocked_brands, self._n_brands), _bitmap(ctx.shopper.blocked_sellers, self._n_sellers), excluded,
        )
        return np.flatnonzero(scores > MASKED)

    def recommend(self, ctx: RequestContext, count: int = 20) -> list[Recommendation]:
        cands = retrieve(self.view, ctx, self.retrieval.plan(ctx.surface), self.sources)
        cands = cands.take(self.filter(ctx, cands))
        if self.ranker is not None and len(cands):
            scores = self.ranker.predict(assemble_features(self.view, ctx, cands))
        else:  # retrieval order: first appearance in plan order
            scores = -np.arange(len(cands), dtype=np.float32)
        best = topk(scores.astype(np.float32), count)
        return [self._explain(cands, int(i), float(scores[i])) for i in best]

    def _explain(self, cands: Candidates, i: int, score: float) -> Recommendation:
        row, source, anchor = int(cands.rows[i]), SOURCE_NAMES[int(cands.source[i])], int(cands.anchor[i])
        b = self.view.bundle
        anchor_title = b.title(anchor) if anchor >= 0 else ""
        category = b.vocab.category_path[int(self.view.category[row])].split("/")[-1]
        reason = {
            "ann": "Picked for you",
            "covisit": f"Because you viewed {anchor_title}",
            "coview": f"Often viewed with {anchor_title}",
            "copurchase": f"Frequently bought with {anchor_title}",
            "similar": f"Similar to {anchor_title}",
            "trending": f"Trending in {category}",
            "popular": "Popular",
            "category_popular": f"Popular in {category}",
            "new": "New arrival",
            "complements": "Goes with your cart",
        }[source]
        return Recommendation(row, b.items.id_of(row), score, source, reason)
