"""The serving view of a bundle: every part the online path reads, mapped once per worker.

Optional parts degrade instead of failing (DESIGN.md §7): no index → ANN-based sources return
nothing; no user tower → no shopper vector. Required parts (item table, tables, lists) missing is a
corrupt bundle.
"""

from __future__ import annotations

import numpy as np

from artifacts import layout
from artifacts.bundle import Bundle, Csr
from artifacts.errors import BundleCorruptError
from artifacts.featurespec import N_FEATURES, served_width
from artifacts.snapshot import ShopperSnapshot
from artifacts.usertower import UserTower
from artifacts.vectors import VectorIndex
from engine.eventlog import EventLog
from engine.inventory.state import ItemState
from engine.livecounts import LiveCounts
from engine.nearest import ContextNearest, NearestInStock


class CatalogView:
    def __init__(
        self,
        bundle: Bundle,
        *,
        load_index: bool = True,
        load_tower: bool = True,
        load_snapshot: bool = True,
        expansion_search: int = 256,
        expansion_search_items: int = 128,
        exact_max_rows: int = 50_000,
        max_oversample: int = 2_000,
    ) -> None:
        self.bundle = bundle
        self.n_items = bundle.n_items
        # Columns of the feature spec this bundle's ranker reads (engine.features): all of them, or
        # the leading ones for a bundle built before later features were appended (the spec is
        # append-only). A staging bundle (no manifest yet) is being built with this spec.
        recorded = [f.name for f in bundle.manifest.feature_spec] if bundle.manifest is not None else []
        self.n_features = served_width(recorded) or N_FEATURES
        col = bundle.item_column
        self.category = col("category")
        self.cat_top = col("cat_top")
        self.brand = col("brand")
        self.seller = col("seller")
        self.price = col("price")
        self.discount = col("discount")
        self.in_stock = col("in_stock")
        self.created_at = col("created_at")
        self.popularity = col("popularity")
        self.trend = col("trend")
        self.impressions = col("impressions")
        self.clicks = col("clicks")
        self.carts = col("carts")
        self.purchases = col("purchases")
        self.vectors = bundle.array(layout.ITEM_VECTORS)
        self.dim = int(self.vectors.shape[1])
        self.covisit: Csr = bundle.csr(layout.COVISIT)
        self.copurchase: Csr = bundle.csr(layout.COPURCHASE)
        self.complements: Csr = bundle.csr(layout.COMPLEMENT_CATEGORIES)
        self.popular_by_category: Csr = bundle.csr(layout.POPULAR_BY_CATEGORY)
        self.popular_by_region: Csr = bundle.csr(layout.POPULAR_BY_REGION)
        self.trending_by_region: Csr = bundle.csr(layout.TRENDING_BY_REGION)
        self.trending_by_top: Csr = bundle.csr(layout.TRENDING_BY_TOP)
        self.popular = bundle.array(layout.POPULAR_GLOBAL)
        self.new_arrivals = bundle.array(layout.NEW_ARRIVALS)
        self.expansion_search = expansion_search
        self.expansion_search_items = expansion_search_items  # ef for item-vector queries (similar items)
        self.exact_max_rows, self.max_oversample = exact_max_rows, max_oversample
        self.index: VectorIndex | None = None
        self.nearest: NearestInStock | None = None  # set with the index
        self.context_nearest: ContextNearest | None = None
        self.tower: UserTower | None = None
        self.snapshot: ShopperSnapshot | None = None
        self.inventory: ItemState | None = None
        self.events: EventLog | None = None  # the host's live event log (counters since the build)
        self._live_counts: LiveCounts | None = None  # this worker's cache over events' counters
        # Here an absent part is simply not loaded; the loaders themselves say so (see below).
        if load_index and bundle.has(layout.ITEM_INDEX):
            self.load_index()
        if load_tower and bundle.has(layout.USER_TOWER):
            self.load_tower()
        if load_snapshot and bundle.has(layout.SHOPPER_SNAPSHOT):
            self.load_snapshot()
        # Per-worker scratch for the gather/merge kernels: all -1 between calls. Requests run one
        # at a time per worker, so one buffer suffices.
        self.slot_of = np.full(self.n_items, -1, dtype=np.int32)
        self.cat_slot_of = np.full(len(bundle.vocab.category_path), -1, dtype=np.int32)
        self.excluded = np.zeros(self.n_items, dtype=np.uint8)  # FilterCandidates' scratch: all 0 between calls

    def attach_inventory(self, state: ItemState) -> None:
        """Read stock and prices from the live shared-memory state instead of the bundle's columns.
        Only base rows: every other per-item column covers exactly the bundle's items."""
        self.inventory = state
        self.in_stock = state.in_stock[: self.n_items]

    def live_counts(self, rows: np.ndarray, now: float) -> np.ndarray | None:
        """float32 [n, 5] decayed counts since the build (views, clicks, carts, purchases,
        impressions: engine.eventlog.COUNTERS) from the live event log, or None without one."""
        if self.events is None or len(rows) == 0:
            return None
        if self._live_counts is None or self._live_counts.log is not self.events:
            self._live_counts = LiveCounts(self.events)
        return self._live_counts.counters(self.bundle.items.ids_of(rows), now=float(now))

    def offers(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(price float32, discount float32, available bool) per row, consistent per row: with live
        inventory a seqlock read (a row never mixes two updates), else the bundle's columns."""
        if self.inventory is not None:
            o = self.inventory.gather(rows)
            return o.price, o.discount, (o.in_stock != 0) & (o.retired == 0) & (o.unsettled == 0)
        return self.price[rows], self.discount[rows], self.in_stock[rows] != 0

    # Optional parts: each loader raises if the part is absent or unusable; the caller decides
    # whether that is fatal (the builder) or a step down the degradation ladder (the engine, whose
    # load report, /readyz and /status then name the part: a bundle sealed without its snapshot
    # serves degraded, and must say so).
    def _absent(self, rel: str, serves: str) -> BundleCorruptError:
        return BundleCorruptError(f"{self.bundle.path(rel)}: missing bundle part (not in this bundle): {serves}")

    def load_index(self) -> None:
        if not self.bundle.has(layout.ITEM_INDEX):
            raise self._absent(layout.ITEM_INDEX, "no vector search; the other sources and popular lists serve")
        self.index = VectorIndex.open(self.bundle.path(layout.ITEM_INDEX), ndim=self.dim, expansion_search=self.expansion_search)
        self.nearest = NearestInStock(self.index, self.vectors, self.exact_max_rows, self.max_oversample)
        self.context_nearest = ContextNearest(self.vectors)

    def search_in_stock(self, query: np.ndarray, k: int, expansion: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to k nearest items to query that are in stock now (engine.nearest); needs the index.
        `expansion`: HNSW ef for this query (default expansion_search)."""
        if self.nearest is None:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        generation = self.inventory.changes() if self.inventory is not None else 0
        return self.nearest.search(query, k, self.in_stock, generation, expansion)

    def search_for_context(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """search_in_stock for a vector that depends on the request context only (a shopper
        without history): exact, from a per-worker cache (engine.nearest.ContextNearest)."""
        found = self.context_nearest.search(query, k, self.in_stock) if self.context_nearest is not None else None
        return found if found is not None else self.search_in_stock(query, k)

    def load_tower(self) -> None:
        if not self.bundle.has(layout.USER_TOWER):
            raise self._absent(layout.USER_TOWER, "no shopper vectors; shoppers are served without the user tower")
        self.tower = UserTower(self.bundle.path(layout.USER_TOWER), threads=1)

    def load_snapshot(self) -> None:
        if not self.bundle.has(layout.SHOPPER_SNAPSHOT):
            raise self._absent(layout.SHOPPER_SNAPSHOT, "no shopper features; shoppers are served from their session and popular lists")
        manifest = self.bundle.manifest
        map_size = int(manifest.dims.get("snapshot_map_size", 1 << 30)) if manifest else 1 << 34
        self.snapshot = ShopperSnapshot(self.bundle.path(layout.SHOPPER_SNAPSHOT), map_size=map_size)
