"""The request path's named stages (DESIGN.md §3):

    decode → ResolveShopper → RetrieveCandidates → FilterCandidates → GatherFeatures
           → PredictRanker → Rerank → encode

Each stage is a small class with `name` and `__call__(ctx)`; it reads the RequestContext, writes
its own fields, and degrades (ctx.degrade) instead of failing when an optional part is missing,
slow or broken. The builder runs RetrieveCandidates and GatherFeatures' underlying functions on its
training queries, so training and serving see the same candidates and features.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from artifacts.featurespec import FEATURE_INDEX, SOURCE_ID, SOURCE_NAMES
from artifacts.heads import HeadScores, RankingHeads
from artifacts.schema import EventType
from artifacts.ranker import CompiledRanker
from engine.candidates import Candidates
from engine.catalog import CatalogView
from engine.context import RequestContext
from engine.features import assemble_features
from engine.eventlog import EventLog
from engine.resolve import shopper_vector
from engine.retrieval import VECTOR_SOURCES, retrieve, score_given
from engine.settings import BlendWeights, Settings
from engine.shopper import Shopper
from engine.sources import default_sources
from kernels.caps import select_with_caps
from kernels.explore import place_exploration, thompson_scores
from kernels.filters import MASKED, apply_filters
from kernels.mmr import mmr_select
from kernels.topk import topk

DAY = 86_400.0
BACKFILL_SOURCE = SOURCE_ID["popular"]


class Stage(Protocol):
    name: str

    def __call__(self, ctx: RequestContext) -> None: ...


def _bitmap(codes: np.ndarray, size: int) -> np.ndarray:
    bits = np.zeros(size, np.uint8)
    codes = np.asarray(codes, dtype=np.int64)
    bits[codes[(codes >= 0) & (codes < size)]] = 1
    return bits


class ResolveShopper:
    """Snapshot record + live events + request context → ctx.shopper, region, device, vector."""

    name = "resolve"

    def __init__(self, view: CatalogView, live: EventLog | None, history_limit: int) -> None:
        self.view, self.live, self.history_limit = view, live, history_limit
        manifest = view.bundle.manifest
        self.since_ts = float(manifest.dims.get("end_ts", 0)) if manifest else 0.0

    def __call__(self, ctx: RequestContext, user_id: str | None = None, request_recent: np.ndarray | None = None) -> None:
        view = self.view
        shopper: Shopper | None = None
        if user_id:
            if view.snapshot is None:
                ctx.degrade("features_unavailable")
            else:
                record = view.snapshot.get(user_id)
                if record is not None:
                    shopper = Shopper.from_record(record)
        if shopper is None:
            shopper = Shopper.anonymous()
        rows: list[np.ndarray] = []
        types: list[np.ndarray] = []
        if self.live is not None and user_id:
            live_rows, live_types = self.live.recent_interactions(user_id, view.bundle.items.row_of, self.since_ts)
            if len(live_rows):
                rows.append(live_rows)
                types.append(live_types)
                # Bought since the build: never recommended again, like the snapshot's purchases.
                bought = live_rows[live_types == EventType.PURCHASE]
                if len(bought):
                    shopper.purchased = np.concatenate([shopper.purchased, bought]).astype(np.int32)
        if request_recent is not None and len(request_recent):
            rows.append(request_recent)
            types.append(np.full(len(request_recent), EventType.CLICK, np.int8))  # the page says "viewed"
        if rows:
            merged = np.concatenate([shopper.recent_items, *rows]).astype(np.int32)
            shopper.recent_items = merged[-self.history_limit :]
            merged_types = np.concatenate([shopper.recent_types, *types]).astype(np.int8)
            shopper.recent_types = merged_types[-self.history_limit :]
        ctx.region, ctx.device = shopper.context_codes(ctx.region, ctx.device)
        ctx.shopper = shopper
        ctx.user_vector = shopper_vector(view, ctx)


class RetrieveCandidates:
    name = "retrieve"

    def __init__(self, view: CatalogView, settings: Settings) -> None:
        self.view, self.settings = view, settings
        r = settings.retrieval
        self.sources = default_sources(r.recent_anchors, r.recency_decay)
        self.index_dependent = VECTOR_SOURCES

    def __call__(self, ctx: RequestContext) -> None:
        plan = self.settings.retrieval.plan(ctx.surface)
        if ctx.given is not None:  # re-ranking: score the caller's items, search nothing
            ctx.candidates = score_given(self.view, ctx, plan, self.sources, ctx.given)
            return
        if self.view.index is None and any(s.name in self.index_dependent for s in plan):
            ctx.degrade("index_unavailable")
        ctx.candidates = retrieve(self.view, ctx, plan, self.sources)


class FilterCandidates:
    """Hard rules first (never out of stock, never a blocked brand/seller, never an excluded item),
    then request filters; backfill from popular items when too few survive."""

    name = "filter"

    def __init__(self, view: CatalogView, settings: Settings) -> None:
        self.view, self.settings = view, settings
        vocab = view.bundle.vocab
        self.n_brands, self.n_sellers = len(vocab.brands), len(vocab.sellers)

    def _rules(self, ctx: RequestContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(blocked brand bitmap, blocked seller bitmap, excluded rows) of this request, built
        once per request however often _mask runs (backfill calls it again)."""
        if ctx.rules is None:
            f, s = ctx.filters, ctx.shopper
            ctx.rules = (
                _bitmap(np.concatenate([s.blocked_brands, f.blocked_brands]), self.n_brands),
                _bitmap(np.concatenate([s.blocked_sellers, f.blocked_sellers]), self.n_sellers),
                np.concatenate([ctx.anchors, s.purchased, f.exclude_rows]).astype(np.int64),
            )
        return ctx.rules

    def _mask(self, ctx: RequestContext, rows: np.ndarray) -> np.ndarray:
        """bool [n]: may be shown."""
        v, f = self.view, ctx.filters
        blocked_brands, blocked_sellers, excluded = self._rules(ctx)
        scores = np.ones(len(rows), np.float32)
        # The exclusion bitmap is the view's scratch (catalog-sized): set this request's few rows,
        # filter, clear them again, instead of allocating n_items bytes per call.
        excluded = excluded[(excluded >= 0) & (excluded < v.n_items)]
        v.excluded[excluded] = 1
        try:
            apply_filters(rows, scores, v.in_stock, v.brand, v.seller, blocked_brands, blocked_sellers, v.excluded)
        finally:
            v.excluded[excluded] = 0
        keep = scores > MASKED
        if f.category_nodes is not None:
            keep &= np.isin(v.category[rows], f.category_nodes)
        if v.inventory is not None or f.price_min is not None or f.price_max is not None:
            list_price, discount, available = v.offers(rows)
            if v.inventory is not None:  # a retired row, or one caught mid-update, is not shown
                keep &= available
            price = list_price * (1.0 - discount)
            if f.price_min is not None:
                keep &= price >= f.price_min
            if f.price_max is not None:
                keep &= price <= f.price_max
        return keep

    def __call__(self, ctx: RequestContext) -> None:
        cands = ctx.candidates
        keep = self._mask(ctx, cands.rows)
        ctx.filtered = int((~keep).sum())
        cands = cands.take(np.flatnonzero(keep))
        need = ctx.offset + ctx.count
        if len(cands) < need and ctx.given is None:  # re-ranking never adds items the caller did not give
            cands = self._backfill(ctx, cands, need)
        ctx.candidates = cands

    def _backfill(self, ctx: RequestContext, cands: Candidates, need: int) -> Candidates:
        """Popular items not yet present, filtered by the same rules; when even those run short (a
        heavily filtered request or a catalog mostly out of stock), any item that passes."""
        v = self.view
        short = need - len(cands)
        pool = np.asarray(v.popular, dtype=np.int32)[: self.settings.retrieval.backfill]
        pool = pool[~np.isin(pool, cands.rows)]
        pool = pool[self._mask(ctx, pool)]
        if len(pool) < short:
            rest = np.arange(v.n_items, dtype=np.int32)
            rest = rest[~np.isin(rest, cands.rows) & ~np.isin(rest, pool)]
            pool = np.concatenate([pool, rest[self._mask(ctx, rest)]])
        pool = pool[: short + ctx.count]
        n_sources = cands.source_scores.shape[1]
        scores = np.zeros((len(pool), n_sources), np.float32)
        scores[:, BACKFILL_SOURCE] = 1e-3 / (1.0 + np.arange(len(pool), dtype=np.float32))
        return Candidates(
            np.concatenate([cands.rows, pool]),
            np.concatenate([cands.source_scores, scores]),
            np.concatenate([cands.source, np.full(len(pool), BACKFILL_SOURCE, np.uint8)]),
            np.concatenate([cands.anchors, np.full((len(pool), n_sources), -1, np.int32)]),
        )


def retrieval_scores(cands: Candidates) -> np.ndarray:
    """Ranker-free order: each source's scores scaled to [0, 1], summed, so items several sources
    agree on come first. float32 [n]."""
    s = cands.source_scores
    if len(s) == 0:  # everything was filtered out (e.g. the whole catalog out of stock)
        return np.zeros(0, np.float32)
    top = s.max(axis=0)
    return (s / np.where(top > 0, top, 1.0)).sum(axis=1).astype(np.float32)


class GatherFeatures:
    name = "features"

    def __init__(self, view: CatalogView, settings: Settings) -> None:
        self.view, self.settings = view, settings

    def __call__(self, ctx: RequestContext) -> None:
        cands = ctx.candidates
        # A page deeper than the cap (count up to limits.max_count, or a cursor) still needs its
        # items ranked: the cap never cuts below offset + count.
        limit = max(self.settings.ranking.max_candidates, ctx.offset + ctx.count)
        if len(cands) > limit and ctx.given is None:  # given candidates are all ranked (limits.max_rank_items)  # the ranker's cost grows with rows: keep the best by retrieval
            cands = cands.take(np.sort(topk(retrieval_scores(cands), limit)))
            ctx.candidates = cands
        ctx.features = assemble_features(self.view, ctx, cands)


def _z(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(x.astype(np.float32), nan=0.0)
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 1e-9 else np.zeros_like(x)


def expected_value(heads: HeadScores, X: np.ndarray, w: BlendWeights) -> np.ndarray:
    """float32 [n]: P(click) · (click + cart · P(cart | click) + revenue · P(purchase | click) · price),
    price the effective price the features carry (a candidate without one earns no revenue term)."""
    value = np.full(len(heads.click), w.click, np.float32)
    if w.cart:
        value += np.float32(w.cart) * heads.cart
    if w.revenue:
        price = np.expm1(X[:, FEATURE_INDEX["item_log_price"]])
        value += np.float32(w.revenue) * heads.purchase * np.nan_to_num(price, nan=0.0)
    return value * heads.click


EXPLORED_NEW, EXPLORED_UNDEREXPOSED = 1, 2  # RequestContext.explored: which kind of exploration pick


class PredictRanker:
    """Score the candidates by the settings' objective. `legacy`: compiled GBDT relevance, blended
    with conversion and price. `heads`: the calibrated heads' expected value (expected_value), or
    legacy when the bundle has no heads or they fail (ctx.fallback says so). Without a ranker
    either (missing, disabled, failing): retrieval order."""

    name = "rank"

    def __init__(self, ranker: CompiledRanker | None, settings: Settings, heads: RankingHeads | None = None) -> None:
        self.ranker, self.settings, self.heads = ranker, settings, heads

    def __call__(self, ctx: RequestContext) -> None:
        cands, rs, dl = ctx.candidates, self.settings.ranking, self.settings.deadlines
        relevance = None
        if not rs.enabled:
            ctx.degrade("ranker_unavailable")
        elif ctx.elapsed_ms() > dl.budget_ms * dl.rank_share:
            ctx.degrade("deadline")
        elif rs.objective == "heads" and len(cands) and self._heads(ctx):
            return
        elif self.ranker is None:
            ctx.degrade("ranker_unavailable")
        elif len(cands):
            try:
                relevance = self.ranker.predict(ctx.features)
            except (ValueError, OSError, RuntimeError):
                ctx.degrade("ranker_failed")
        if relevance is None:
            ctx.scores = retrieval_scores(cands)
            return
        ctx.relevance = relevance  # the raw margin, comparable with the builder's (drift monitor)
        X = ctx.features
        score = rs.weight_relevance * _z(relevance)
        if rs.weight_conversion:
            score += rs.weight_conversion * _z(np.log(X[:, FEATURE_INDEX["item_buy_rate"]]))
        if rs.weight_price:
            score += rs.weight_price * _z(X[:, FEATURE_INDEX["item_log_price"]])
        ctx.scores = score.astype(np.float32)

    def _heads(self, ctx: RequestContext) -> bool:
        """Score by the heads; False (and the fallback noted) when they are absent or fail."""
        if self.heads is None:
            ctx.degrade("heads_unavailable")
            return False
        try:
            heads = self.heads.predict(ctx.features)
        except (ValueError, OSError, RuntimeError):
            ctx.degrade("heads_failed")
            return False
        ctx.value = expected_value(heads, ctx.features, self.settings.ranking.blend_for(ctx.surface))
        # Standardised like the legacy score, so the re-ranker's boost and MMR weights keep their scale.
        ctx.scores = _z(ctx.value)
        return True


class Rerank:
    """New-item boost → MMR diversity over item vectors → brand/seller/category caps →
    Thompson-sampled exploration slots for new items → the requested page."""

    name = "rerank"

    def __init__(self, view: CatalogView, settings: Settings) -> None:
        self.view, self.settings = view, settings

    def _posteriors(self, rows: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray]:
        """(clicks, impressions) per row: the bundle's counts plus the live log's decayed counts
        since the build, so the bandit learns from today's impressions, not last build's."""
        clicks = self.view.clicks[rows].astype(np.float32)
        shown = self.view.impressions[rows].astype(np.float32)
        live = self.view.live_counts(rows, now)
        if live is not None:
            clicks = clicks + live[:, 1]
            shown = shown + live[:, 4]
        return clicks, np.maximum(shown, clicks)

    def __call__(self, ctx: RequestContext) -> None:
        v, rr = self.view, self.settings.rerank
        cands = ctx.candidates
        k = ctx.offset + ctx.count
        scores = ctx.scores.astype(np.float32).copy()
        if len(cands) == 0:
            ctx.selected = np.zeros(0, np.int32)
            ctx.explored = np.zeros(0, np.uint8)
            return
        age_days = (ctx.now - v.created_at[cands.rows]).astype(np.float32) / np.float32(DAY)
        is_new = (age_days >= 0) & (age_days < rr.new_item_days)
        if rr.new_item_boost and is_new.any():
            scores = _z(scores) + np.where(is_new, rr.new_item_boost * (1.0 - age_days / rr.new_item_days), 0.0).astype(np.float32)
        pool = topk(scores, max(rr.mmr_pool, k))
        dl = self.settings.deadlines
        if ctx.elapsed_ms() > dl.budget_ms * dl.rerank_share:
            ctx.degrade("deadline")
            order = pool  # score order: diversity is the first thing to give up when late
        elif rr.mmr_pool > 0:
            # MMR orders the best mmr_pool; a longer page (a re-ranking request for 300 items)
            # continues in score order, so its cost stays O(pool²), not O(k²).
            head = pool[: rr.mmr_pool]
            vectors = np.ascontiguousarray(v.vectors[cands.rows[head]], dtype=np.float32)
            diverse = head[mmr_select(np.ascontiguousarray(scores[head]), vectors, len(head), float(rr.mmr_lambda))]
            order = np.concatenate([diverse, pool[len(head) :]])
        else:
            order = pool
        rows = cands.rows
        picked, _relaxed = select_with_caps(
            order.astype(np.int32), v.brand[rows].astype(np.int32), v.seller[rows].astype(np.int32),
            v.category[rows].astype(np.int32), rr.max_per_brand, rr.max_per_seller, rr.max_per_category, k,
        )
        explored = np.zeros(len(picked), np.uint8)
        slots = np.asarray([s for s in rr.explore_slots if s < k], np.int32)
        if len(slots):
            arms = np.flatnonzero(is_new)
            clicks, shown = self._posteriors(rows[arms], ctx.now)
            if rr.explore_underexposed > 0:
                # Older candidates among the best-scored, shown too rarely to be judged. Only the pool:
                # an exploration slot is a bet on an item the shopper may want, not a random one.
                old = pool[~is_new[pool]]
                old_clicks, old_shown = self._posteriors(rows[old], ctx.now)
                rare = old_shown < rr.explore_underexposed
                arms = np.concatenate([arms, old[rare]])
                clicks, shown = np.concatenate([clicks, old_clicks[rare]]), np.concatenate([shown, old_shown[rare]])
            if len(arms):
                a, b = rr.explore_prior
                draw = thompson_scores(clicks, shown, float(a), float(b), int(hash((ctx.now, int(rows[0]))) & 0x7FFFFFFF))
                ranked = arms[np.argsort(-draw, kind="stable")].astype(np.int32)
                final = place_exploration(picked.astype(np.int32), ranked, slots, k)
                # Everything not in the base list is an exploration pick: EXPLORED_NEW for a new
                # item (explained as a new arrival), EXPLORED_UNDEREXPOSED for an older one.
                explored = np.where(np.isin(final, picked), 0, np.where(is_new[final], EXPLORED_NEW, EXPLORED_UNDEREXPOSED)).astype(np.uint8)
                picked = final
        ctx.selected = picked[ctx.offset : k].astype(np.int32)
        ctx.explored = np.asarray(explored, np.uint8)[ctx.offset : k]


REASON_PRIORITY = {
    "home": ("covisit", "copurchase", "ann", "category_popular", "trending", "new", "similar", "coview", "complements", "popular"),
    "pdp": ("coview", "similar", "copurchase", "category_popular", "covisit", "ann", "trending", "new", "complements", "popular"),
    "cart": ("copurchase", "complements", "coview", "similar", "category_popular", "covisit", "ann", "trending", "new", "popular"),
}


class Explain:
    """A reason for every item, from the strongest source that proposed it and its anchor item.
    One call per slate: the source choice is vectorised, titles are read only for the anchors a
    reason names (a re-ranking slate can be 1,000 items long)."""

    def __init__(self, view: CatalogView) -> None:
        self.view = view
        self.bundle = view.bundle
        self.leaf = [p.split("/")[-1] if p else "" for p in self.bundle.vocab.category_path]
        self.regions = self.bundle.vocab.regions
        self.priority = {surface: np.asarray([SOURCE_ID[s] for s in order], np.int64) for surface, order in REASON_PRIORITY.items()}

    def __call__(self, ctx: RequestContext, positions: np.ndarray, explored: np.ndarray | None) -> list[tuple[str, str]]:
        cands = ctx.candidates
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return []
        priority = self.priority[ctx.surface]
        proposed = cands.source_scores[positions][:, priority] > 0  # [n, sources in priority order]
        chosen = np.where(proposed.any(axis=1), priority[proposed.argmax(axis=1)], cands.source[positions].astype(np.int64))
        anchors = cands.anchors[positions, chosen].tolist()
        categories = np.asarray(self.view.category[cands.rows[positions]]).tolist()
        flags = explored.tolist() if explored is not None else []
        region = self.regions[ctx.region] if 0 < ctx.region < len(self.regions) else ""
        titles: dict[int, str] = {}
        out = []
        for i, (sid, anchor, category) in enumerate(zip(chosen.tolist(), anchors, categories)):
            if i < len(flags) and flags[i] == EXPLORED_NEW:
                out.append(("new", "New arrival"))
                continue
            source = SOURCE_NAMES[sid]
            title = ""
            if anchor >= 0 and source in ("covisit", "coview", "copurchase", "similar"):
                title = titles.get(anchor) or titles.setdefault(anchor, self.bundle.title(anchor))
            out.append(reason_text(source, title, self.leaf[category], region))
        return out


def reason_text(source: str, title: str, category: str, region: str) -> tuple[str, str]:
    """(source shown, the sentence a shopper reads) for an item proposed by `source`; `title` is the
    anchor item's title ("" if none), category the item's leaf, region the request's ("" if none)."""
    if source in ("covisit", "coview") and title:
        return source, f"Because you viewed {title}"
    if source == "copurchase" and title:
        return source, f"Frequently bought with {title}"
    if source == "similar" and title:
        return source, f"Similar to {title}"
    if source == "ann":
        return source, "Picked for you"
    if source == "trending":
        return source, f"Trending in {region}" if region else f"Trending in {category}"
    if source == "category_popular":
        return source, f"Popular in {category}"
    if source == "complements":
        return source, "Goes with your cart"
    if source == "new":
        return source, "New arrival"
    return "popular", "Popular"


def timed(stage: Stage, ctx: RequestContext, *args: object) -> None:
    t0 = time.perf_counter()
    stage(ctx, *args)  # type: ignore[call-arg]
    ctx.timings[stage.name] = time.perf_counter() - t0
