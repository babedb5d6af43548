"""The recommendation pipeline as a competent, typical Python team would write it.

`BaselineRecommender(bundle_root).recommend(query, now)` does the same work as Aisle's engine
(engine.service.Recommender.run) with the engine's default settings, from the same bundle:

- **Loading.** Everything a typical service loads at start-up with the usual libraries: the item
  columns, item vectors and CSR tables with ``np.load`` (fully into memory, not memory-mapped), a
  ``dict`` from SKU to row and a ``list`` from row to SKU, the vocabulary from ``vocab.json``, the
  USearch index with ``Index.restore(path, view=True)``, the user tower as an
  ``onnxruntime.InferenceSession`` with default session options, the ranker as
  ``lightgbm.Booster(model_file=models/ranker.lgb.txt)``. The shopper snapshot is read with the
  bundle's own reader (``artifacts.snapshot``: it is a file format, msgpack records in LMDB), as
  are the manifest checks (``artifacts.bundle.open_bundle``); that is I/O, not the pipeline.
- **Shopper.** The snapshot record as it comes (Python lists); the user vector from the ONNX
  session over the shopper's recent item vectors (left-padded, back-to-back repeats collapsed, as
  the tower's file contract says).
- **Candidate sources** (``engine.settings`` defaults, same names and sizes per surface): item-to-
  item sources walk the co-visitation / co-purchase / complementary-category CSR rows per anchor
  in Python, accumulating neighbour scores in a ``dict`` and sorting it; list sources (popular,
  trending, category-popular) take each list's head and keep an item's best score in a ``dict``;
  ANN and "similar" query the USearch index; new arrivals are scored with NumPy. Candidates from
  all sources are merged into one ``dict`` row -> per-source scores (first-seen order).
- **Features** (``artifacts.featurespec.FEATURE_NAMES``, column for column the engine's spec,
  reimplemented here, not imported from the engine): item columns are gathered per column with
  NumPy fancy indexing (what anyone who knows NumPy writes), shopper-specific ones (category,
  department and brand affinity, recent-item counts) with per-candidate ``dict.get`` lookups in a
  list comprehension (the usual way to join a per-user dict onto candidates without pandas),
  cosine features with one matrix product. Columns are collected by name and stacked.
- **Ranking.** ``Booster.predict(X)`` on every retrieved candidate (LightGBM's own predict,
  default ``num_threads``), then the engine's blend: z(relevance) + 0.15 · z(log buy rate).
- **Threads.** By default both ONNX Runtime and LightGBM use their own defaults (a pool over every
  core, as shipped). ``threads=1`` pins both to one thread, which is what a team does once it
  sees several workers fighting over the cores (Aisle's own sessions are single-threaded): on a
  busy 2-vCPU host, LightGBM's OpenMP team waiting at its barrier for a descheduled thread costs
  milliseconds per request. bench.baseline.compare measures both.
- **Post-filtering** with NumPy *after* ranking (rank everything, then drop): out of stock,
  blocked brands and sellers (the shopper's and the request's), already purchased, anchors and
  cart items, request exclusions, category and price filters. Then a full sort, a diversity cap
  walk in Python (per brand / seller / category, the engine's default caps, relaxed only when the
  list would otherwise be short), popular-item backfill when too few survive, and the top
  ``count`` as a list of dicts ``{sku, score, reason, source}``.

Knowingly not done (the engine does): MMR diversity over item vectors, the new-item boost and
Thompson-sampled exploration slots, live inventory / live events / SKUs added since the build,
the ranker's 400-candidate cap (the baseline ranks every retrieved candidate, out-of-stock ones
included, since it filters afterwards), the per-request deadline ladder. Nothing here imports the
engine's stages or the numba kernels; ``engine.schemas.RecommendQuery`` (the request type) and
``engine.settings`` (default sizes) are the only engine imports.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from pathlib import Path

import artifacts  # noqa: F401  (onnxruntime must be imported before usearch: see artifacts/__init__.py)
import lightgbm
import numpy as np
import onnxruntime
from usearch.index import Index

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.featurespec import FEATURE_NAMES, SOURCE_NAMES
from artifacts.schema import SURFACE_BY_NAME
from artifacts.snapshot import ShopperRecord, ShopperSnapshot
from engine.schemas import RecommendQuery
from engine.settings import Settings
from engine.stages import REASON_PRIORITY, reason_text  # the product's wording, not its pipeline

DAY = 86_400.0
N_SOURCES = len(SOURCE_NAMES)
SOURCE_POS = {name: i for i, name in enumerate(SOURCE_NAMES)}
CTR_PRIOR = (1.0, 30.0)
FUNNEL_PRIOR = (1.0, 10.0)
CART, PURCHASE = 2, 3  # artifacts.schema.EventType codes
MAX_COUNT = 100

class BadRequest(ValueError):
    """A request the baseline cannot serve as asked (HTTP 400)."""


class UnknownItem(LookupError):
    """The pdp item (or every cart item) is not in the bundle (HTTP 404)."""


class _Csr:
    """A CSR table loaded into memory: neighbours of r are indices[indptr[r]:indptr[r+1]]."""

    def __init__(self, root: Path, name: str) -> None:
        p_indptr, p_indices, p_weights = layout.csr(name)
        self.indptr = np.load(root / p_indptr)
        self.indices = np.load(root / p_indices)
        self.weights = np.load(root / p_weights)
        self.n_rows = len(self.indptr) - 1

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= r < self.n_rows:
            return self.indices[:0], self.weights[:0]
        start, end = self.indptr[r], self.indptr[r + 1]
        return self.indices[start:end], self.weights[start:end]


class _Shopper:
    """What the pipeline needs to know about the shopper, from the snapshot record (or nothing)."""

    def __init__(self, record: ShopperRecord | None) -> None:
        r = record or ShopperRecord()
        self.known = record is not None
        self.region, self.device = r.region, r.device
        self.recent, self.recent_types = list(r.recent_items), list(r.recent_types)
        self.purchased = list(r.purchased)
        self.blocked_brands, self.blocked_sellers = list(r.blocked_brands), list(r.blocked_sellers)
        self.category_nodes, self.category_weights = list(r.category_nodes), list(r.category_weights)
        self.brand_affinity = dict(zip(r.brand_codes, r.brand_weights))
        self.mean_price = float(r.mean_price)
        self.n_events = r.n_events


class BaselineRecommender:
    """The engine's pipeline, the typical way (see the module docstring)."""

    def __init__(self, bundle_root: Path | str, settings: Settings | None = None, threads: int | None = None) -> None:
        """threads: None = the libraries' defaults (ONNX Runtime's default session options,
        LightGBM's default num_threads: every core), as a team would ship it; an int pins both the
        user tower's and the ranker's thread pools to that many threads."""
        bundle = open_bundle(Path(bundle_root), verify="sizes")
        self.threads = threads
        root = bundle.root
        self.root = root
        self.build_id = bundle.build_id
        self.settings = settings or Settings()
        # --- item table -------------------------------------------------------------------
        skus = np.load(root / layout.ITEM_SKU)
        self.skus: list[str] = [s.decode("utf-8") for s in skus.tolist()]
        self.row_of: dict[str, int] = {sku: i for i, sku in enumerate(self.skus)}
        self.n_items = len(self.skus)
        col = lambda name: np.load(root / layout.item_column(name))  # noqa: E731
        self.category, self.cat_top = col("category"), col("cat_top")
        self.brand, self.seller = col("brand"), col("seller")
        self.price, self.discount, self.in_stock = col("price"), col("discount"), col("in_stock")
        self.created_at, self.popularity, self.trend = col("created_at"), col("popularity"), col("trend")
        self.impressions, self.clicks = col("impressions"), col("clicks")
        self.carts, self.purchases = col("carts"), col("purchases")
        self.title_offsets = np.load(root / layout.ITEM_TITLE_OFFSETS)
        self.title_bytes = np.load(root / layout.ITEM_TITLE_BYTES, mmap_mode="r")
        # --- vocabulary -------------------------------------------------------------------
        vocab = json.loads((root / layout.VOCAB).read_text(encoding="utf-8"))
        self.category_path: list[str] = vocab["categories"]["path"]
        self.category_depth: list[int] = vocab["categories"]["depth"]
        self.category_leaf = [p.split("/")[-1] if p else "" for p in self.category_path]
        self.regions: list[str] = vocab["regions"]
        self.brand_code = {name: code for code, name in enumerate(vocab["brands"]) if name}
        self.seller_code = {name: code for code, name in enumerate(vocab["sellers"]) if name}
        self.region_code = {name: code for code, name in enumerate(vocab["regions"]) if name}
        self.device_code = {name: code for code, name in enumerate(vocab["devices"]) if name}
        # --- vectors, tables, lists ---------------------------------------------------------
        self.vectors = np.load(root / layout.ITEM_VECTORS)
        self.covisit = _Csr(root, layout.COVISIT)
        self.copurchase = _Csr(root, layout.COPURCHASE)
        self.complements = _Csr(root, layout.COMPLEMENT_CATEGORIES)
        self.popular_by_category = _Csr(root, layout.POPULAR_BY_CATEGORY)
        self.popular_by_region = _Csr(root, layout.POPULAR_BY_REGION)
        self.trending_by_region = _Csr(root, layout.TRENDING_BY_REGION)
        self.trending_by_top = _Csr(root, layout.TRENDING_BY_TOP)
        self.popular = np.load(root / layout.POPULAR_GLOBAL)
        self.new_arrivals = np.load(root / layout.NEW_ARRIVALS)
        # --- models and the shopper snapshot -----------------------------------------------
        self.index = Index.restore(str(root / layout.ITEM_INDEX), view=True)
        self.index.expansion_search = self.settings.expansion_search  # the engine's ef, for comparable recall
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.tower = onnxruntime.InferenceSession(str(root / layout.USER_TOWER), options, providers=["CPUExecutionProvider"])
        hist = next(i for i in self.tower.get_inputs() if i.name == "hist")
        self.history_len, self.dim = int(hist.shape[1]), int(hist.shape[2])
        meta = self.tower.get_modelmeta().custom_metadata_map
        self.n_regions, self.n_devices = int(meta["aisle.n_regions"]), int(meta["aisle.n_devices"])
        self.ranker = lightgbm.Booster(model_file=str(root / layout.RANKER_LIGHTGBM))
        if self.ranker.num_feature() != len(FEATURE_NAMES):
            raise ValueError(f"ranker has {self.ranker.num_feature()} features; the spec has {len(FEATURE_NAMES)}")
        map_size = int(bundle.manifest.dims.get("snapshot_map_size", 1 << 30)) if bundle.manifest else 1 << 34
        self.snapshot = ShopperSnapshot(root / layout.SHOPPER_SNAPSHOT, map_size=map_size)
        self.end_ts = int(bundle.manifest.dims.get("end_ts", 0)) if bundle.manifest else 0
        self.sources = {
            "ann": self._ann, "covisit": self._covisit, "coview": self._coview, "copurchase": self._copurchase,
            "similar": self._similar, "trending": self._trending, "popular": self._popular,
            "category_popular": self._category_popular, "new": self._new, "complements": self._complements,
        }

    # -- the request ------------------------------------------------------------------------
    def recommend(self, q: RecommendQuery, now: float | None = None, timings: dict[str, float] | None = None) -> list[dict]:
        """The top `count` items for q: list of {sku, score, reason, source}, best first.
        Raises BadRequest or UnknownItem. `timings`, if given, receives seconds per stage."""
        t0 = time.perf_counter()
        now = int(now if now is not None else time.time())
        count = q.count if q.count is not None else self.settings.limits.default_count
        if not 1 <= count <= MAX_COUNT:
            raise BadRequest(f"'count' must be in [1, {MAX_COUNT}], got {count}")
        anchors: list[int] = []
        if q.surface == "pdp":
            if not q.item_id:
                raise BadRequest("surface 'pdp' needs 'item_id'")
            if q.item_id not in self.row_of:
                raise UnknownItem(f"unknown item_id {q.item_id!r}")
            anchors = [self.row_of[q.item_id]]
        elif q.surface == "cart":
            if not q.cart:
                raise BadRequest("surface 'cart' needs 'cart'")
            anchors = sorted({self.row_of[s] for s in q.cart if s in self.row_of})
            if not anchors:
                raise UnknownItem(f"none of the cart's SKUs is known: {', '.join(q.cart[:5])}")
        elif q.surface != "home":
            raise BadRequest(f"unknown surface {q.surface!r}")

        shopper = _Shopper(self.snapshot.get(q.user_id) if q.user_id else None)
        if q.recent:
            shopper.recent += [self.row_of[s] for s in q.recent if s in self.row_of]
            shopper.recent_types += [1] * (len(shopper.recent) - len(shopper.recent_types))
            shopper.recent, shopper.recent_types = shopper.recent[-50:], shopper.recent_types[-50:]
        region = self.region_code.get(q.region or "", 0) or shopper.region
        device = self.device_code.get(q.device or "", 0) or shopper.device
        user_vector = self._user_vector(shopper, region, device)
        t1 = time.perf_counter()

        # Retrieval: every source of the surface's plan, merged into one dict (first-seen order).
        candidates: dict[int, list] = {}  # row -> [scores per source, anchors per source]
        for spec in self.settings.retrieval.plan(q.surface):
            found = self.sources[spec.name](anchors, shopper, region, user_vector, spec.k)
            s = SOURCE_POS[spec.name]
            for row, score, anchor in found:
                entry = candidates.get(row)
                if entry is None:
                    entry = candidates[row] = [[0.0] * N_SOURCES, [-1] * N_SOURCES]
                if score > entry[0][s]:
                    entry[0][s] = score
                    entry[1][s] = anchor
        rows = np.fromiter(candidates.keys(), dtype=np.int64, count=len(candidates))
        t2 = time.perf_counter()

        X = self._features(rows, candidates, anchors, shopper, user_vector, q.surface, device, region, now)
        t3 = time.perf_counter()
        if not len(rows):
            relevance = np.zeros(0)
        elif self.threads is None:
            # LightGBM's default is OpenMP's: every core, unless OMP_NUM_THREADS says otherwise
            # (the bench package sets it to 1 for the engine's sake); ask for the cores explicitly.
            relevance = self.ranker.predict(X, num_threads=os.cpu_count() or 1)
        else:
            relevance = self.ranker.predict(X, num_threads=self.threads)
        t4 = time.perf_counter()

        # Post-filter what was ranked, blend, sort, cap.
        blocked_brands = shopper.blocked_brands + [self.brand_code[b] for b in q.block_brands if b in self.brand_code]
        blocked_sellers = shopper.blocked_sellers + [self.seller_code[s] for s in q.block_sellers if s in self.seller_code]
        excluded = anchors + shopper.purchased + [self.row_of[s] for s in q.exclude if s in self.row_of]
        category_nodes = self._category_nodes(q.category) if q.category else None
        keep = self._allowed(rows, blocked_brands, blocked_sellers, excluded, category_nodes, q.price_min, q.price_max)
        rows, relevance, X = rows[keep], relevance[keep], X[keep]
        kept_positions = np.flatnonzero(keep)
        w = self.settings.ranking
        score = w.weight_relevance * _z(relevance)
        if w.weight_conversion:
            score = score + w.weight_conversion * _z(np.log(X[:, FEATURE_NAMES.index("item_buy_rate")]))
        if w.weight_price:
            score = score + w.weight_price * _z(X[:, FEATURE_NAMES.index("item_log_price")])
        order = np.argsort(-score, kind="stable")
        picked = self._capped(order, rows, count)

        entries = list(candidates.values())
        out = []
        for pos in picked:
            row = int(rows[pos])
            entry = entries[kept_positions[pos]]
            source, reason = self._explain(q.surface, entry, row, region)
            out.append({"sku": self.skus[row], "score": round(float(score[pos]), 6), "reason": reason, "source": source})
        if len(out) < count:
            out += self._backfill(count - len(out), {int(rows[p]) for p in picked} | set(candidates),
                                  blocked_brands, blocked_sellers, excluded, category_nodes, q.price_min, q.price_max)
        t5 = time.perf_counter()
        if timings is not None:
            timings.update(resolve=t1 - t0, retrieve=t2 - t1, features=t3 - t2, rank=t4 - t3, post=t5 - t4, total=t5 - t0)
        return out

    def warm(self) -> None:
        """One request per surface, so the first real request pays no lazy initialisation."""
        anchor = [self.skus[int(self.popular[0])]] if len(self.popular) else []
        self.recommend(RecommendQuery("home", count=10), now=self.end_ts)
        if anchor:
            self.recommend(RecommendQuery("pdp", item_id=anchor[0], count=10), now=self.end_ts)
            self.recommend(RecommendQuery("cart", cart=anchor, count=10), now=self.end_ts)

    def close(self) -> None:
        self.snapshot.close()

    # -- shopper -----------------------------------------------------------------------------
    def _user_vector(self, shopper: _Shopper, region: int, device: int) -> np.ndarray:
        recent = [r for r in shopper.recent if 0 <= r < self.n_items]
        recent = [r for i, r in enumerate(recent) if i == 0 or r != recent[i - 1]][-self.history_len :]
        hist = np.zeros((1, self.history_len, self.dim), np.float32)
        mask = np.zeros((1, self.history_len), np.float32)
        if recent:
            hist[0, self.history_len - len(recent) :] = self.vectors[recent]
            mask[0, self.history_len - len(recent) :] = 1.0
        context = np.array([[region if 0 <= region < self.n_regions else 0, device if 0 <= device < self.n_devices else 0]], np.int64)
        return self.tower.run(None, {"hist": hist, "hist_mask": mask, "context": context})[0][0]

    def _recent_anchors(self, shopper: _Shopper, types: tuple[int, ...] | None = None) -> tuple[list[int], list[float]]:
        """The shopper's distinct recent items, most recent first, with weights decay**i."""
        r = self.settings.retrieval
        seen: set[int] = set()
        out: list[int] = []
        for row, kind in zip(reversed(shopper.recent), reversed(shopper.recent_types)):
            if (types is not None and kind not in types) or row in seen:
                continue
            seen.add(row)
            out.append(row)
            if len(out) == r.recent_anchors:
                break
        return out, [r.recency_decay**i for i in range(len(out))]

    def _departments(self, shopper: _Shopper, n: int) -> list[tuple[int, float]]:
        depth = self.category_depth
        return [(c, w) for c, w in zip(shopper.category_nodes, shopper.category_weights) if 0 <= c < len(depth) and depth[c] == 1][:n]

    # -- candidate sources: each returns [(row, score, anchor row or -1)], best first ---------
    def _neighbours(self, table: _Csr, anchors: list[int], weights: list[float], k: int) -> list[tuple[int, float, int]]:
        scores: dict[int, float] = {}
        best: dict[int, tuple[float, int]] = {}
        for anchor, aw in zip(anchors, weights):
            neighbours, edge_weights = table.row(anchor)
            for item, ew in zip(neighbours.tolist(), edge_weights.tolist()):
                contrib = aw * ew
                scores[item] = scores.get(item, 0.0) + contrib
                if item not in best or contrib > best[item][0]:
                    best[item] = (contrib, anchor)
        ranked = sorted(((item, s) for item, s in scores.items() if s > 0), key=lambda kv: -kv[1])[:k]
        return [(item, s, best[item][1]) for item, s in ranked]

    def _from_lists(self, lists: list[tuple[np.ndarray, float]], k: int) -> list[tuple[int, float, int]]:
        """Union of ranked lists: an item's score is its best weight / (1 + position); ties by row."""
        best: dict[int, float] = {}
        for items, weight in lists:
            if weight <= 0:
                continue
            for i, item in enumerate(items[: max(k, 1) * 2].tolist()):
                s = weight / (1.0 + i)
                if s > best.get(item, 0.0):
                    best[item] = s
        return [(item, s, -1) for item, s in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]

    def _ann(self, anchors, shopper, region, user_vector, k):
        found = self.index.search(user_vector, min(k, len(self.index)))
        return [(int(key), 2.0 - float(d), -1) for key, d in zip(found.keys.tolist(), found.distances.tolist())]

    def _similar(self, anchors, shopper, region, user_vector, k):
        best: dict[int, tuple[float, int]] = {}
        for anchor in anchors[-3:]:
            found = self.index.search(self.vectors[anchor], min(k + 1, len(self.index)))
            for key, d in zip(found.keys.tolist(), found.distances.tolist()):
                s = 2.0 - d  # 1 + cosine: every proposal scores > 0
                if key not in anchors and (key not in best or s > best[key][0]):
                    best[key] = (s, anchor)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
        return [(item, s, a) for item, (s, a) in ranked]

    def _covisit(self, anchors, shopper, region, user_vector, k):
        recent, weights = self._recent_anchors(shopper)
        return self._neighbours(self.covisit, recent, weights, k)

    def _coview(self, anchors, shopper, region, user_vector, k):
        return self._neighbours(self.covisit, anchors, [1.0] * len(anchors), k)

    def _copurchase(self, anchors, shopper, region, user_vector, k):
        if anchors:
            return self._neighbours(self.copurchase, anchors, [1.0] * len(anchors), k)
        recent, weights = self._recent_anchors(shopper, types=(CART, PURCHASE))
        return self._neighbours(self.copurchase, recent, weights, k)

    def _trending(self, anchors, shopper, region, user_vector, k):
        lists = [(self.trending_by_region.row(region)[0], 1.0)]
        if len(lists[0][0]) == 0:
            lists = [(self.trending_by_region.row(r)[0], 0.8) for r in range(self.trending_by_region.n_rows)]
        lists += [(self.trending_by_top.row(dept)[0], 0.5 + w) for dept, w in self._departments(shopper, 2)]
        return self._from_lists(lists, 2 * k)[:k]

    def _popular(self, anchors, shopper, region, user_vector, k):
        return self._from_lists([(self.popular_by_region.row(region)[0], 1.0), (self.popular, 0.9)], k)

    def _category_popular(self, anchors, shopper, region, user_vector, k):
        if anchors:
            cats = [(int(self.category[a]), 1.0) for a in anchors[-3:]]
        else:
            depth = self.category_depth
            cats = [(c, w) for c, w in zip(shopper.category_nodes, shopper.category_weights) if 0 <= c < len(depth) and depth[c] > 1][:3]
        return self._from_lists([(self.popular_by_category.row(c)[0], w) for c, w in cats], k)

    def _new(self, anchors, shopper, region, user_vector, k):
        rows = self.new_arrivals
        if len(rows) == 0:
            return []
        scores = 1.0 / (1.0 + np.arange(len(rows)))
        departments = self._departments(shopper, 3)
        if departments:
            tops = self.cat_top[rows]
            boost = np.zeros(len(rows))
            for dept, w in departments:
                boost += (tops == dept) * w
            scores = scores * (1.0 + 4.0 * boost)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(r), float(s), -1) for r, s in zip(rows[order].tolist(), scores[order].tolist())]

    def _complements(self, anchors, shopper, region, user_vector, k):
        if not anchors:
            return []
        cats = [int(self.category[a]) for a in anchors]
        related = self._neighbours(self.complements, cats, [1.0] * len(cats), 5)
        if not related:
            return []
        top = related[0][1]
        return self._from_lists([(self.popular_by_category.row(c)[0], w / top) for c, w, _ in related], k)

    # -- features ----------------------------------------------------------------------------
    def _features(self, rows, candidates, anchors, shopper: _Shopper, user_vector, surface, device, region, now) -> np.ndarray:
        """float32 [n, len(FEATURE_NAMES)], columns in the feature spec's order."""
        n = len(rows)
        f: dict[str, np.ndarray | float] = {}
        vecs = self.vectors[rows]
        f["ann_score"] = vecs @ user_vector
        if anchors:
            f["anchor_sim"] = (vecs @ self.vectors[anchors].T).max(axis=1)
            f["anchor_same_category"] = np.isin(self.category[rows], self.category[anchors])
            anchor_brands = [b for b in self.brand[anchors].tolist() if b > 0]
            f["anchor_same_brand"] = np.isin(self.brand[rows], anchor_brands)
        else:
            f["anchor_sim"] = f["anchor_same_category"] = f["anchor_same_brand"] = np.nan
        source_scores = np.array([entry[0] for entry in candidates.values()], dtype=np.float32).reshape(n, N_SOURCES)
        for name, column in zip(SOURCE_NAMES, source_scores.T):
            f[f"src_{name}"] = column
        f["n_sources"] = (source_scores > 0).sum(axis=1)
        imp, clk = self.impressions[rows], self.clicks[rows]
        f["item_log_popularity"] = np.log1p(self.popularity[rows])
        f["item_trend"] = self.trend[rows]
        f["item_ctr"] = (clk + CTR_PRIOR[0]) / (imp + CTR_PRIOR[1])
        f["item_cart_rate"] = (self.carts[rows] + FUNNEL_PRIOR[0]) / (clk + FUNNEL_PRIOR[1])
        f["item_buy_rate"] = (self.purchases[rows] + FUNNEL_PRIOR[0]) / (clk + FUNNEL_PRIOR[1])
        discount = self.discount[rows]
        effective = self.price[rows] * (1.0 - discount)
        f["item_log_price"] = np.log1p(effective)
        f["item_discount"] = discount
        f["item_days_listed"] = (now - self.created_at[rows]) / DAY
        category_affinity = dict(zip(shopper.category_nodes, shopper.category_weights))
        f["aff_category"] = [category_affinity.get(c, 0.0) for c in self.category[rows].tolist()]
        f["aff_department"] = [category_affinity.get(c, 0.0) for c in self.cat_top[rows].tolist()]
        f["aff_brand"] = [shopper.brand_affinity.get(b, 0.0) for b in self.brand[rows].tolist()]
        with np.errstate(divide="ignore", invalid="ignore"):
            f["price_ratio"] = np.log(effective / shopper.mean_price) if shopper.mean_price > 0 else np.nan
        recent_counts = Counter(shopper.recent)
        f["recent_count"] = [recent_counts.get(r, 0) for r in rows.tolist()]
        f["user_log_events"] = math.log1p(shopper.n_events)
        f["user_history_len"] = len(shopper.recent)
        f["ctx_surface"] = SURFACE_BY_NAME[surface]
        f["ctx_device"] = device
        f["ctx_hour"] = (now // 3600) % 24
        f["ctx_dow"] = ((now // 86_400) + 3) % 7
        f["ctx_region"] = region
        X = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
        for j, name in enumerate(FEATURE_NAMES):
            X[:, j] = f[name]
        return X

    # -- filters, caps, explanations -----------------------------------------------------------
    def _category_nodes(self, path: str) -> list[int]:
        prefix = path.strip().strip("/")
        nodes = [i for i, p in enumerate(self.category_path) if p and (p == prefix or p.startswith(prefix + "/"))]
        if not nodes:
            raise BadRequest(f"'category' {path!r} is not a category of this catalog")
        return nodes

    def _allowed(self, rows, blocked_brands, blocked_sellers, excluded, category_nodes, price_min, price_max) -> np.ndarray:
        """bool [n]: the item may be shown."""
        keep = self.in_stock[rows] != 0
        if blocked_brands:
            keep &= ~np.isin(self.brand[rows], blocked_brands)
        if blocked_sellers:
            keep &= ~np.isin(self.seller[rows], blocked_sellers)
        if excluded:
            keep &= ~np.isin(rows, excluded)
        if category_nodes is not None:
            keep &= np.isin(self.category[rows], category_nodes)
        if price_min is not None or price_max is not None:
            price = self.price[rows] * (1.0 - self.discount[rows])
            if price_min is not None:
                keep &= price >= price_min
            if price_max is not None:
                keep &= price <= price_max
        return keep

    def _capped(self, order: np.ndarray, rows: np.ndarray, count: int) -> list[int]:
        """Walk the sorted positions, skipping an item whose brand / seller / category already
        has its cap; if that leaves the list short, the skipped ones fill it in order."""
        rr = self.settings.rerank
        caps = (rr.max_per_brand, rr.max_per_seller, rr.max_per_category)
        columns = (self.brand, self.seller, self.category)
        counts: tuple[dict[int, int], ...] = ({}, {}, {})
        picked: list[int] = []
        aside: list[int] = []
        for pos in order.tolist():
            if len(picked) == count:
                break
            row = rows[pos]
            codes = [int(col[row]) for col in columns]
            if any(cap > 0 and code > 0 and counts[i].get(code, 0) >= cap for i, (cap, code) in enumerate(zip(caps, codes))):
                aside.append(pos)
                continue
            picked.append(pos)
            for i, code in enumerate(codes):
                counts[i][code] = counts[i].get(code, 0) + 1
        return picked + aside[: count - len(picked)]

    def _backfill(self, short, present, blocked_brands, blocked_sellers, excluded, category_nodes, price_min, price_max) -> list[dict]:
        """Popular items (then any item) that pass the filters, when ranking left too few."""
        out: list[dict] = []
        for pool in (self.popular[: self.settings.retrieval.backfill], np.arange(self.n_items)):
            pool = np.asarray([r for r in pool.tolist() if r not in present], dtype=np.int64)
            if len(pool) == 0:
                continue
            pool = pool[self._allowed(pool, blocked_brands, blocked_sellers, excluded, category_nodes, price_min, price_max)]
            for row in pool[: short - len(out)].tolist():
                present.add(row)
                out.append({"sku": self.skus[row], "score": 0.0, "reason": "Popular", "source": "popular"})
            if len(out) >= short:
                break
        return out

    def _title(self, row: int) -> str:
        start, end = int(self.title_offsets[row]), int(self.title_offsets[row + 1])
        return bytes(self.title_bytes[start:end]).decode("utf-8", errors="replace")

    def _explain(self, surface: str, entry: list, row: int, region: int) -> tuple[str, str]:
        scores, anchors = entry
        source = next((s for s in REASON_PRIORITY[surface] if scores[SOURCE_POS[s]] > 0), "popular")
        anchor = anchors[SOURCE_POS[source]]
        title = self._title(anchor) if anchor >= 0 else ""
        category = self.category_leaf[int(self.category[row])]
        name = self.regions[region] if 0 < region < len(self.regions) else ""
        return reason_text(source, title, category, name)


def _z(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    sd = x.std() if len(x) else 0.0
    return (x - x.mean()) / sd if sd > 1e-9 else np.zeros_like(x)
