"""The validated, dense-coded store the builder's stages work on.

`ingest` turns canonical files (artifacts.schema) into a `Store`: every external id replaced by a
dense row, every enumerated string by a small integer code, every column a NumPy array with a
stated dtype. Later stages (embeddings, tables, snapshots, ranker) read only this.

Conventions: `*_row` are dense positions (int32), vocabularies are tuples of strings whose index is
the code, code 0 of `brands`, `sellers`, `regions` and `devices` is the empty string ("unknown").
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np


@dataclass(frozen=True)
class Categories:
    """The category tree, flattened. Node 0 is the root (path ""); every path prefix is a node.

    `path[i]` is the full '/'-joined path, `parent[i]` the parent node (root: -1), `depth[i]` the
    number of path elements (root 0). Leaves are the nodes items point at.
    """

    path: tuple[str, ...]
    parent: np.ndarray  # int32 [n_nodes]
    depth: np.ndarray  # int8 [n_nodes]

    def __len__(self) -> int:
        return len(self.path)


@dataclass(frozen=True)
class Items:
    """Catalog, one row per SKU; row order is ascending `sku` (so the id map is a plain sort)."""

    sku: np.ndarray  # object (str) [n]
    title: np.ndarray  # object (str) [n]
    category: np.ndarray  # int32 [n]: node of the item's full category path
    cat_top: np.ndarray  # int32 [n]: depth-1 ancestor node (the item's department)
    brand: np.ndarray  # int32 [n]: code into Store.brands
    seller: np.ndarray  # int32 [n]: code into Store.sellers
    price: np.ndarray  # float32 [n], NaN = unknown
    discount: np.ndarray  # float32 [n] in [0, 1)
    in_stock: np.ndarray  # bool [n]
    stock_qty: np.ndarray  # int32 [n], -1 = unknown
    created_at: np.ndarray  # int64 [n], epoch seconds
    text_embedding: np.ndarray | None = None  # float32 [n, d_text]
    image_embedding: np.ndarray | None = None  # float32 [n, d_image]

    def __len__(self) -> int:
        return len(self.sku)


@dataclass(frozen=True)
class Events:
    """Behaviour log, sorted by (ts, then input order). Events for unknown SKUs are not here
    (ingest counts and reports them)."""

    ts: np.ndarray  # int64 [m], epoch seconds
    user_row: np.ndarray  # int32 [m] into Users
    session_row: np.ndarray  # int32 [m], dense session ids (sessions never span users)
    item_row: np.ndarray  # int32 [m] into Items
    type: np.ndarray  # int8 [m], artifacts.schema.EventType
    dwell_ms: np.ndarray  # int32 [m]
    surface: np.ndarray  # int8 [m], artifacts.schema.SURFACE_NAMES code
    position: np.ndarray  # int16 [m], -1 = not from a slate
    device: np.ndarray  # int8 [m], code into Store.devices
    region: np.ndarray  # int16 [m], code into Store.regions

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, keep: np.ndarray) -> Events:
        """The events at `keep` (a bool mask or sorted row positions), order kept."""
        return Events(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


@dataclass(frozen=True)
class Users:
    """Every shopper seen in events or the users file; row order is ascending `user_id`."""

    user_id: np.ndarray  # object (str) [u]
    region: np.ndarray  # int16 [u], code into Store.regions (0 = unknown)
    signup_ts: np.ndarray  # int64 [u]
    blocked_brands_indptr: np.ndarray  # int64 [u + 1] CSR over blocked_brands
    blocked_brands: np.ndarray  # int32: brand codes
    blocked_sellers_indptr: np.ndarray  # int64 [u + 1]
    blocked_sellers: np.ndarray  # int32: seller codes

    def __len__(self) -> int:
        return len(self.user_id)


@dataclass(frozen=True)
class IngestReport:
    """What ingest did that a data engineer should know about.

    Events valid by the schema but left out of the Store are counted once each, under the first
    rule they fail, in this order: clock (future, too old), unknown SKU, bot (builder.ingest.screen).
    """

    rows_read: dict[str, int] = field(default_factory=dict)
    events_unknown_sku: int = 0
    ignored_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    events_future: int = 0  # dated after the build's clock + clock.future_tolerance_minutes
    events_too_old: int = 0  # more than clock.max_age_days before the newest event not in the future
    bot_events: int = 0  # every event of the shoppers in bot_user_ids
    bot_user_ids: tuple[str, ...] = ()  # shoppers with inhuman action rates (still in Users, with no events)
    notes: tuple[str, ...] = ()  # one line per kind of dropped event: how many, why, where the first is

    @property
    def events_dropped(self) -> int:
        return self.events_future + self.events_too_old + self.events_unknown_sku + self.bot_events


@dataclass(frozen=True)
class Store:
    items: Items
    events: Events
    users: Users
    categories: Categories
    brands: tuple[str, ...]
    sellers: tuple[str, ...]
    regions: tuple[str, ...]
    devices: tuple[str, ...]
    report: IngestReport

    def with_events(self, keep: np.ndarray) -> Store:
        """The same catalog and shoppers with only the events at `keep` (bool mask [m] or sorted
        positions): how evaluation holds interactions out of a build."""
        return replace(self, events=self.events.take(keep))
