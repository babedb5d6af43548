"""The engine's use cases, independent of HTTP: recommend for a request, ingest a batch of events.

`Recommender` owns one bundle's serving view and the stage objects; `decode_query` turns a raw
query string into a validated RecommendQuery. Both raise engine.errors.ApiError subclasses only.

A Recommender always answers from its own bundle, with the knobs of the request's experiment arm.
When arms pin other bundles (`VariantSettings.bundle`), the worker holds one Recommender per
bundle, assigns the request once and hands the assignment to the one that serves the arm
(engine.app.Engine.serving).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl

import msgspec
import numpy as np

from artifacts import layout
from artifacts.bundle import Bundle
from artifacts.drift import load_reference
from artifacts.errors import BundleError
from artifacts.featurespec import FEATURE_NAMES, served_width
from artifacts.heads import RankingHeads, load_heads
from artifacts.ranker import CompiledRanker
from artifacts.usertower import UserTowerError
from artifacts.vectors import VectorIndexError
from engine.catalog import CatalogView
from engine.context import RequestContext, RequestFilters
from engine.drift import DriftMonitor
from engine.errors import BadRequest, Invalid, NotFound, TooLarge
from engine.fresh import FreshItems
from engine.inventory.state import ItemState
from engine.eventlog import EventLog
from engine.schemas import RecommendedItem, RecommendQuery, RecommendResponse
from engine.experiments import Assigner, Assignment
from engine.settings import Settings, with_variant
from engine.shopper import Shopper
from engine.stages import Explain, FilterCandidates, GatherFeatures, PredictRanker, ResolveShopper, RetrieveCandidates, Rerank, timed
from kernels import calibrate as kernels_calibrate
from kernels import caps as kernels_caps
from kernels import explore as kernels_explore
from kernels import mmr as kernels_mmr

LIST_PARAMS = frozenset({"cart", "recent", "exclude", "block_brands", "block_sellers", "candidates"})
CURSOR_PREFIX = "c1."
CURSOR_RE = re.compile(r"c1\.([0-9]+)")  # = CURSOR_PREFIX and the offset (engine.openapi documents the same pattern)


def decode_query(raw: str, settings: Settings) -> RecommendQuery:
    lim = settings.limits
    if len(raw) > lim.max_query_bytes:
        raise TooLarge(f"query string is {len(raw)} bytes; the limit is {lim.max_query_bytes}")
    params: dict[str, object] = {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"query string is not valid UTF-8: {exc}") from exc
    for key, value in pairs:
        if key in params:
            raise BadRequest(f"parameter '{key}' given more than once; list parameters are comma-separated")
        if key in LIST_PARAMS:
            items = [v.strip() for v in value.split(",") if v.strip()]
            params[key] = items
        else:
            params[key] = value
    try:
        query = msgspec.convert(params, RecommendQuery, strict=False)
    except msgspec.ValidationError as exc:
        raise _schema_error(exc) from exc
    return validate_query(query, settings)


def decode_body(body: bytes, settings: Settings) -> RecommendQuery:
    """A POSTed JSON RecommendQuery (the same fields as the query string; lists as JSON arrays):
    the natural form for re-ranking a long candidate list."""
    try:
        query = msgspec.json.decode(body, type=RecommendQuery)
    except msgspec.ValidationError as exc:
        raise _schema_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    return validate_query(query, settings)


def _schema_error(exc: msgspec.ValidationError) -> BadRequest | Invalid:
    message = str(exc)
    if "unknown field" in message or "missing required field" in message:
        return BadRequest(message.replace("Object", "query").replace("field", "parameter"))
    return Invalid(message.replace("$.", "parameter "))


def validate_query(query: RecommendQuery, settings: Settings) -> RecommendQuery:
    """Limits and cross-field rules, the same for GET and POST."""
    lim = settings.limits
    for key in sorted(LIST_PARAMS):
        entries = getattr(query, key)
        limit = {"cart": lim.max_cart_items, "recent": lim.max_recent_items, "candidates": lim.max_rank_items}.get(key, lim.max_filter_items)
        if len(entries) > limit:
            raise TooLarge(f"'{key}' has {len(entries)} entries; the limit is {limit}")
    for name in ("user_id", "item_id"):
        value = getattr(query, name)
        if value is not None and not 1 <= len(value.encode()) <= lim.max_id_bytes:
            raise Invalid(f"'{name}' must be 1-{lim.max_id_bytes} bytes, got {len(value.encode())}")
    for name in LIST_PARAMS:
        for value in getattr(query, name):
            if len(value.encode()) > lim.max_id_bytes:
                raise Invalid(f"'{name}' has an entry of {len(value.encode())} bytes; the limit is {lim.max_id_bytes}")
    max_count = lim.max_rank_items if query.candidates else lim.max_count
    if query.count is not None and not 1 <= query.count <= max_count:
        raise Invalid(f"'count' must be in [1, {max_count}], got {query.count}" + ("" if query.candidates else " (re-ranking requests with 'candidates' may ask for more)"))
    if query.candidates and query.cursor:
        raise BadRequest("'cursor' does not apply to re-ranking: ask for the whole list with 'count'")
    if query.surface == "pdp" and not query.item_id:
        raise BadRequest("surface 'pdp' needs 'item_id' (the product being viewed)")
    if query.surface == "cart" and not query.cart:
        raise BadRequest("surface 'cart' needs 'cart' (comma-separated SKUs in the cart)")
    for name in ("price_min", "price_max"):
        value = getattr(query, name)
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise Invalid(f"'{name}' must be a finite number ≥ 0, got {value}")
    if query.price_min is not None and query.price_max is not None and query.price_min > query.price_max:
        raise Invalid(f"'price_min' ({query.price_min}) is above 'price_max' ({query.price_max})")
    return query


def parse_cursor(cursor: str | None, max_offset: int) -> int:
    if cursor is None:
        return 0
    # ASCII digits only: str.isdigit() and int() also take other scripts' digits and superscripts
    # ('c1.²' passed isdigit, then int() raised: a 500), and a cursor this API returned has none.
    match = CURSOR_RE.fullmatch(cursor)
    if match is None:
        raise BadRequest(f"'cursor' {cursor[:80]!r} is not a cursor this API returned")
    # Digits beyond the deepest page's are too deep whatever they say; cutting them off first
    # also keeps int() away from Python's limit on digits per conversion (a 500 otherwise).
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > len(str(max_offset)) or int(digits) > max_offset:
        raise Invalid(f"'cursor' goes past the deepest page ({max_offset} items)")
    return int(digits)


@dataclass(frozen=True)
class LoadReport:
    """What loaded and what did not: the degradation ladder starts here."""

    ranker: str | None  # None = loaded; else why not
    index: str | None
    tower: str | None
    snapshot: str | None
    drift: str | None = None  # why served features are not monitored for drift (None = they are)
    heads: str | None = None  # why the ranking heads are not loaded (None = they are)


class Recommender:
    def __init__(self, bundle: Bundle, settings: Settings, live: EventLog | None) -> None:
        self.settings = settings
        self.bundle = bundle
        problems: dict[str, str | None] = {"ranker": None, "index": None, "tower": None, "snapshot": None}
        r = settings.retrieval
        self.view = CatalogView(
            bundle, load_index=False, load_tower=False, load_snapshot=False, expansion_search=settings.expansion_search,
            expansion_search_items=settings.expansion_search_items,
            exact_max_rows=r.ann_exact_max_rows, max_oversample=r.ann_max_oversample,
        )
        for part, loader in (("index", self.view.load_index), ("tower", self.view.load_tower), ("snapshot", self.view.load_snapshot)):
            try:
                loader()
            except (BundleError, UserTowerError, VectorIndexError, OSError) as exc:
                problems[part] = str(exc)
        # The models read the columns of the feature spec they were trained on: this engine's, or a
        # leading part of it for a bundle from before later features were appended (a staging
        # bundle, the builder's backtest, has no manifest yet and is this spec). Another spec's
        # columns mean something else: such models are not loaded, rather than fed wrong columns.
        recorded = [f.name for f in bundle.manifest.feature_spec] if bundle.manifest is not None else list(FEATURE_NAMES)
        spec_problem = None
        if served_width(recorded) is None:
            spec_problem = (f"the bundle's models read another feature spec ({len(recorded)} features, not this engine's "
                            f"{len(FEATURE_NAMES)} nor a leading part of them): rebuild the bundle with this Aisle")
        n_features = self.view.n_features
        ranker: CompiledRanker | None = None
        try:
            if spec_problem:
                raise BundleError(spec_problem)
            ranker = CompiledRanker(bundle.path(layout.RANKER_LIB), n_features=n_features)
        except (BundleError, OSError, KeyError) as exc:
            problems["ranker"] = str(exc)
        # The heads are optional: without them the `heads` objective serves the ranker (legacy).
        self.heads: RankingHeads | None = None
        heads_problem: str | None = None
        try:
            if spec_problem:
                raise BundleError(spec_problem)
            self.heads = load_heads(bundle, n_features)
            if self.heads is None:
                heads_problem = "the bundle has no ranking heads (built before them, or from a log without enough impressions)"
        except (BundleError, OSError, KeyError) as exc:
            heads_problem = str(exc)
        # Drift monitoring is optional: a bundle from before it (no reference) or with an unusable
        # reference serves as usual, unmonitored, and load_report.drift says why.
        self.drift: DriftMonitor | None = None
        drift_problem: str | None = None
        try:
            reference = load_reference(bundle)
            if reference is None:
                drift_problem = "the bundle has no drift reference (built before drift monitoring)"
            else:
                self.drift = DriftMonitor(reference, settings.drift)
        except (BundleError, ValueError, OSError) as exc:
            drift_problem = str(exc)
        self.load_report = LoadReport(**problems, drift=drift_problem, heads=heads_problem)
        self.view.events = live
        self.ranker = ranker
        self.live = live
        self.build_id = bundle.build_id
        self.items = bundle.items  # SKU ↔ row
        self.resolve = ResolveShopper(self.view, live, settings.limits.max_recent_items)
        self.stages = self._stages(settings)
        # Each experiment variant runs the same stages with its own settings over the same view
        # (stage objects hold settings and references, no arrays of their own).
        self.assigner = Assigner(settings)
        self.variant_settings = {f"{e.name}:{v.name}": with_variant(settings, v) for e in settings.experiments for v in e.variants}
        self.variant_stages = {label: self._stages(vs) for label, vs in self.variant_settings.items()}
        self.explain = Explain(self.view)
        vocab = bundle.vocab
        self.region_code = {name: code for code, name in enumerate(vocab.regions) if name}
        self.device_code = {name: code for code, name in enumerate(vocab.devices) if name}
        self.brand_code = {name: code for code, name in enumerate(vocab.brands) if name}
        self.seller_code = {name: code for code, name in enumerate(vocab.sellers) if name}
        self.category_path = vocab.category_path
        self.end_ts = int(bundle.manifest.dims.get("end_ts", 0)) if bundle.manifest else 0
        self.fresh: FreshItems | None = None

    def _stages(self, settings: Settings) -> tuple:
        return (
            RetrieveCandidates(self.view, settings),
            FilterCandidates(self.view, settings),
            GatherFeatures(self.view, settings),
            PredictRanker(self.ranker, settings, self.heads),
            Rerank(self.view, settings),
        )

    def attach_inventory(self, state: ItemState) -> None:
        """Live stock and prices from the host's shared item state, and the SKUs that arrived since
        the build."""
        self.view.attach_inventory(state)
        self.fresh = FreshItems(state, self.bundle)

    # -- decode: external ids → bundle rows/codes --------------------------------------------
    def _rows(self, skus: list[str]) -> np.ndarray:
        rows = self.items.rows_of(skus)
        return rows[rows >= 0]

    def _category_nodes(self, path: str) -> np.ndarray:
        prefix = path.strip().strip("/")
        nodes = [i for i, p in enumerate(self.category_path) if p and (p == prefix or p.startswith(prefix + "/"))]
        if not nodes:
            raise Invalid(f"'category' {path!r} is not a category of this catalog")
        return np.asarray(nodes, np.int32)

    def context(self, q: RecommendQuery, now: float | None = None) -> RequestContext:
        count = q.count if q.count is not None else self.settings.limits.default_count
        ctx = RequestContext(q.surface, Shopper.anonymous(), int(now if now is not None else time.time()))
        ctx.count = count
        ctx.offset = parse_cursor(q.cursor, self.settings.limits.max_cursor_offset)
        ctx.region = self.region_code.get(q.region or "", 0)
        ctx.device = self.device_code.get(q.device or "", 0)
        if q.surface == "pdp":
            row = self.items.row_of(q.item_id or "")
            if row < 0:
                row = self._proxy_for_new_sku(q.item_id or "")
            if row < 0:
                raise NotFound(f"unknown item_id {q.item_id!r}: not in bundle {self.build_id} nor among SKUs added since")
            ctx.anchors = np.asarray([row], np.int32)
        elif q.surface == "cart":
            rows = self._rows(q.cart)
            if len(rows) == 0:
                raise NotFound(f"none of the cart's SKUs is known to bundle {self.build_id}: {', '.join(q.cart[:5])}")
            ctx.anchors = np.unique(rows).astype(np.int32)
        if q.candidates:
            # Re-ranking: the caller's items, each once, in the caller's order; SKUs the bundle
            # does not know cannot be scored and are reported back as `unranked`.
            rows = self.items.rows_of(q.candidates)
            known = rows >= 0
            ctx.unranked = [sku for sku, ok in zip(q.candidates, known.tolist()) if not ok]
            rows = rows[known]
            _, first = np.unique(rows, return_index=True)
            ctx.given = rows[np.sort(first)].astype(np.int32)
            ctx.count = q.count if q.count is not None else max(len(ctx.given), 1)
        ctx.filters = RequestFilters(
            exclude_rows=self._rows(q.exclude),
            blocked_brands=np.asarray([self.brand_code[b] for b in q.block_brands if b in self.brand_code], np.int32),
            blocked_sellers=np.asarray([self.seller_code[s] for s in q.block_sellers if s in self.seller_code], np.int32),
            category_nodes=self._category_nodes(q.category) if q.category else None,
            price_min=q.price_min,
            price_max=q.price_max,
        )
        return ctx

    # -- the pipeline ------------------------------------------------------------------------
    def run(
        self, q: RecommendQuery, request_id: str | None = None, now: float | None = None, assignment: Assignment | None = None
    ) -> tuple[RecommendResponse, RequestContext]:
        """Answer `q` from this bundle. `assignment`: the request's arm when the caller already
        assigned it (the worker does, to pick the bundle); None = assign it here."""
        started = time.perf_counter()
        ctx = self.context(q, now)
        ctx.started = started
        timed(self.resolve, ctx, q.user_id, self._rows(q.recent) if q.recent else None)
        arm = assignment if assignment is not None else self.assigner.assign(q.user_id, q.session_id)
        ctx.variant, ctx.unit, ctx.arm_share = arm.label, arm.unit, arm.arm_share
        for stage in self.variant_stages.get(ctx.variant, self.stages):
            timed(stage, ctx)
        if self.drift is not None and ctx.features is not None:
            self.drift.maybe_observe(ctx.features, ctx.relevance)
        selected = ctx.selected
        skus = self.items.ids_of(ctx.candidates.rows[selected])
        scores = np.round(ctx.scores[selected].astype(np.float64), 6).tolist()
        items = [
            RecommendedItem(sku=sku, score=score, reason=reason, source=source)
            for sku, score, (source, reason) in zip(skus, scores, self.explain(ctx, selected, ctx.explored))
        ]
        if self.fresh is not None and ctx.offset == 0 and ctx.given is None:
            items = self._with_fresh(q, ctx, items, self.variant_settings.get(ctx.variant, self.settings))
        end = ctx.offset + ctx.count
        more = len(items) == ctx.count and end < self.settings.limits.max_cursor_offset
        response = RecommendResponse(
            items=items,
            bundle=self.build_id,
            variant=ctx.variant,
            fallback=ctx.fallback,
            request_id=request_id or uuid.uuid4().hex,
            took_ms=round((time.perf_counter() - started) * 1000.0, 3),
            next_cursor=f"{CURSOR_PREFIX}{end}" if more and ctx.given is None else None,
            unranked=ctx.unranked,
        )
        return response, ctx

    def _proxy_for_new_sku(self, sku: str) -> int:
        """A SKU added since the build has no row in the bundle's tables: its page is served as the
        page of its nearest bundle item (by the vector the item tower gave it). -1 if unknown."""
        if self.fresh is None or self.view.index is None:
            return -1
        state = self.fresh.state
        new_row = state.new_row_of(sku)
        if new_row < 0 or not state.has_vector[new_row - state.n_base]:
            return -1
        rows, _ = self.view.index.search(np.asarray(state.vector[new_row - state.n_base], dtype=np.float32), 1)
        return int(rows[0]) if len(rows) else -1

    def _with_fresh(self, q: RecommendQuery, ctx: RequestContext, items: list[RecommendedItem], settings: Settings) -> list[RecommendedItem]:
        """Put SKUs that arrived since the build into the first exploration slots of the first page
        (the arm's slots: an arm without exploration gets no fresh SKUs either)."""
        rr = settings.rerank
        slots = sorted(s for s in rr.explore_slots if s < ctx.count)[: rr.fresh_slots]
        if not slots:
            return items
        anchors = ctx.anchors[(ctx.anchors >= 0) & (ctx.anchors < self.view.n_items)]
        if len(anchors):
            query = np.asarray(self.view.vectors[anchors], dtype=np.float32).mean(axis=0)
            query /= max(float(np.linalg.norm(query)), 1e-12)
            min_similarity = rr.fresh_min_similarity_anchor
        else:
            query, min_similarity = ctx.user_vector, rr.fresh_min_similarity_home
        exclude = set(q.exclude) | set(q.cart) | ({q.item_id} if q.item_id else set()) | {i.sku for i in items}
        picks = self.fresh.pick(ctx, query, len(slots), min_similarity, exclude)  # type: ignore[union-attr]
        for slot, pick in zip(slots, picks):
            items.insert(slot, RecommendedItem(sku=pick.sku, score=round(pick.score, 6), reason="New arrival", source="new"))
        return items[: ctx.count]

    def close(self) -> None:
        """Release this bundle's files (after a swap, once no request uses it)."""
        if self.ranker is not None:
            self.ranker.close()
            self.ranker = None
        if self.heads is not None:
            self.heads.close()
            self.heads = None
        if self.view.snapshot is not None:
            self.view.snapshot.close()
        self.view.snapshot = None
        if self.view.inventory is not None:
            self.view.inventory.close()
            self.view.inventory = None
        self.view.index = None
        self.view.nearest = None
        self.view.context_nearest = None
        self.view.tower = None

    def warm(self) -> None:
        """Compile (or load from cache) every kernel and touch every part on each surface path,
        so no shopper's request pays a JIT compile or a cold page fault storm."""
        for kernel_module in (kernels_mmr, kernels_caps, kernels_explore, kernels_calibrate):
            kernel_module.warm()  # kernels a warm-up request may not reach (e.g. no new items)
        anchor = [self.items.id_of(int(self.view.popular[0]))] if len(self.view.popular) else []
        for surface in ("home", "pdp", "cart"):
            if surface != "home" and not anchor:
                continue
            q = RecommendQuery(surface=surface, item_id=anchor[0] if surface == "pdp" else None, cart=anchor if surface == "cart" else [], count=10)
            self.run(q, request_id="warm-up", now=self.end_ts)
        view = self.view
        if view.tower is not None and view.context_nearest is not None:
            # Every context-only shopper vector (region × device) and its exact neighbours, so
            # the first cold shopper of each context does not pay a pass over the catalog.
            empty = np.zeros((0, view.dim), np.float32)
            for region in range(len(self.bundle.vocab.regions)):
                for device in range(len(self.bundle.vocab.devices)):
                    view.context_nearest.search(view.tower.encode_one(empty, region, device), 1, view.in_stock)
        if self.drift is not None:
            self.drift.warm()
            self.drift.clear()  # warm-up requests are not traffic
