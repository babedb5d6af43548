"""Small dense-coded stores with planted structure, built directly (no ingest) for model tests.

The toy store: 3 departments × 4 leaf categories; each shopper prefers 1–2 leaves and makes 85% of
their clicks / carts / purchases there (Zipf popularity inside a leaf), 15% anywhere; impressions
and skips of random items are mixed in as noise that no model may treat as a positive. A share of
items (`cold_share`) never appears in any event: they are the cold items.
"""

from __future__ import annotations

import numpy as np

from artifacts.schema import EventType
from builder.store import Categories, Events, IngestReport, Items, Store, Users

DEPARTMENTS = ("Home", "Sports", "Tech")
LEAVES_PER_DEPARTMENT = 4
REGIONS = ("", "eu", "us", "apac")
DEVICES = ("", "mobile", "desktop", "app")
DAY = 86_400


def _categories() -> tuple[Categories, np.ndarray, np.ndarray]:
    """→ (tree, leaf node ids int32 [12], department node of each leaf int32 [12])."""
    paths, parents, depths, leaves, tops = [""], [-1], [0], [], []
    for department in DEPARTMENTS:
        top = len(paths)
        paths.append(department)
        parents.append(0)
        depths.append(1)
        for j in range(LEAVES_PER_DEPARTMENT):
            leaves.append(len(paths))
            tops.append(top)
            paths.append(f"{department}/Leaf{j}")
            parents.append(top)
            depths.append(2)
    tree = Categories(
        path=tuple(paths), parent=np.array(parents, dtype=np.int32), depth=np.array(depths, dtype=np.int8)
    )
    return tree, np.array(leaves, dtype=np.int32), np.array(tops, dtype=np.int32)


def make_toy_store(
    n_items: int = 300, n_users: int = 200, seed: int = 0, *, text_dim: int = 0, cold_share: float = 0.1
) -> Store:
    """A Store with planted category preferences, events in time order (see the module docstring).
    `Items.category` is the item's leaf node, `Items.cat_top` its department."""
    rng = np.random.default_rng(seed)
    tree, leaf_nodes, leaf_tops = _categories()
    n_leaves = len(leaf_nodes)
    leaf = rng.permutation(np.arange(n_items) % n_leaves)
    brands = ("",) + tuple(f"brand{k:02d}" for k in range(2 * n_leaves))
    sellers = ("",) + tuple(f"seller{k}" for k in range(6))
    brand = (1 + 2 * leaf + rng.integers(0, 2, n_items)).astype(np.int32)
    brand[rng.random(n_items) < 0.05] = 0
    price = np.exp(rng.normal(2.5 + leaf_tops[leaf] / 5.0, 0.6)).astype(np.float32)
    price[rng.random(n_items) < 0.05] = np.nan
    text = None
    if text_dim:
        centres = rng.standard_normal((n_leaves, text_dim))
        text = (centres[leaf] + 0.5 * rng.standard_normal((n_items, text_dim))).astype(np.float32)
    items = Items(
        sku=np.array([f"sku{i:05d}" for i in range(n_items)], dtype=object),
        title=np.array([f"item {i}" for i in range(n_items)], dtype=object),
        category=leaf_nodes[leaf],
        cat_top=leaf_tops[leaf],
        brand=brand,
        seller=rng.integers(1, len(sellers), n_items).astype(np.int32),
        price=price,
        discount=np.zeros(n_items, dtype=np.float32),
        in_stock=np.ones(n_items, dtype=bool),
        stock_qty=np.full(n_items, -1, dtype=np.int32),
        created_at=np.zeros(n_items, dtype=np.int64),
        text_embedding=text,
    )

    cold = rng.random(n_items) < cold_share
    warm_by_leaf = [rng.permutation(np.flatnonzero((leaf == c) & ~cold)) for c in range(n_leaves)]
    warm_all = np.flatnonzero(~cold)
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "user", "session", "item", "type", "device", "region")}
    session_base = 0
    user_region = rng.integers(1, len(REGIONS), n_users).astype(np.int16)
    for u in range(n_users):
        liked = rng.choice(n_leaves, size=int(rng.integers(1, 3)), replace=False)
        n = int(rng.integers(10, 41))
        chosen = np.empty(n, dtype=np.int64)
        for k in range(n):
            if rng.random() < 0.85:
                pool = warm_by_leaf[int(rng.choice(liked))]
                weights = 1.0 / (np.arange(len(pool)) + 1.0) ** 0.8
                chosen[k] = pool[rng.choice(len(pool), p=weights / weights.sum())]
            else:
                chosen[k] = rng.choice(warm_all)
        kind = rng.choice(
            [EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE], size=n, p=[0.7, 0.2, 0.1]
        ).astype(np.int8)
        # Noise: an impression or skip of a random item next to every interaction.
        noise_item = rng.choice(n_items, n)
        noise_kind = rng.choice([EventType.IMPRESSION, EventType.SKIP], size=n, p=[0.8, 0.2]).astype(np.int8)
        # Every shopper is active across the whole month, so a time cut-off leaves most of them
        # with both a history before it and a next item after it.
        ts = np.sort(rng.choice(30 * DAY, size=n, replace=False)).astype(np.int64) + 1
        gaps = np.diff(ts, prepend=ts[0])
        session = session_base + np.cumsum(np.concatenate([[0], (gaps[1:] > 1_800).astype(np.int64)]))
        session_base = int(session[-1]) + 1
        per_session_device = rng.integers(1, len(DEVICES), int(session[-1] - session[0]) + 1)
        device = per_session_device[session - session[0]].astype(np.int8)
        for key, values in (
            ("ts", np.concatenate([ts, ts - 1])),
            ("user", np.full(2 * n, u, dtype=np.int32)),
            ("session", np.concatenate([session, session]).astype(np.int32)),
            ("item", np.concatenate([chosen, noise_item]).astype(np.int32)),
            ("type", np.concatenate([kind, noise_kind])),
            ("device", np.concatenate([device, device])),
            ("region", np.full(2 * n, user_region[u], dtype=np.int16)),
        ):
            columns[key].append(values)
    flat = {k: np.concatenate(v) for k, v in columns.items()}
    order = np.argsort(flat["ts"], kind="stable")
    m = len(order)
    events = Events(
        ts=flat["ts"][order].astype(np.int64),
        user_row=flat["user"][order],
        session_row=flat["session"][order],
        item_row=flat["item"][order],
        type=flat["type"][order],
        dwell_ms=np.zeros(m, dtype=np.int32),
        surface=np.zeros(m, dtype=np.int8),
        position=np.full(m, -1, dtype=np.int16),
        device=flat["device"][order],
        region=flat["region"][order],
    )
    users = Users(
        user_id=np.array([f"u{u:05d}" for u in range(n_users)], dtype=object),
        region=user_region,
        signup_ts=np.zeros(n_users, dtype=np.int64),
        blocked_brands_indptr=np.zeros(n_users + 1, dtype=np.int64),
        blocked_brands=np.zeros(0, dtype=np.int32),
        blocked_sellers_indptr=np.zeros(n_users + 1, dtype=np.int64),
        blocked_sellers=np.zeros(0, dtype=np.int32),
    )
    return Store(
        items=items,
        events=events,
        users=users,
        categories=tree,
        brands=brands,
        sellers=sellers,
        regions=REGIONS,
        devices=DEVICES,
        report=IngestReport(),
    )
