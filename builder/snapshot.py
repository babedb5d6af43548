"""Shopper feature records as of a point in time, and the LMDB snapshot that ships them.

`shopper_records` is the one place a shopper's state is derived from the behaviour log; the
ranker's training queries use it at the cut-off and the published snapshot uses it at build time,
so training and serving see shoppers the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lmdb
import numpy as np

from artifacts.snapshot import ENCODER, ShopperRecord
from artifacts.schema import EventType
from builder.store import Store
from builder.tables import TYPE_WEIGHT

TOP_CATEGORIES = 12  # strongest category nodes kept per shopper (leaves and departments)
TOP_BRANDS = 8
WRITE_BATCH = 50_000  # records per LMDB transaction


def _grouped_top(user: np.ndarray, key: np.ndarray, weight: np.ndarray, n_users: int, top: int):
    """Per user, the `top` keys by summed weight, weights normalised by the user's total.
    Returns (indptr int64 [n_users+1], keys int32, weights float32)."""
    if len(user) == 0:
        return np.zeros(n_users + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    width = int(key.max()) + 1
    pair = user.astype(np.int64) * width + key
    uniq, inv = np.unique(pair, return_inverse=True)
    sums = np.bincount(inv, weights=weight).astype(np.float64)
    u, k = uniq // width, (uniq % width).astype(np.int32)
    total = np.bincount(user, weights=weight, minlength=n_users)
    order = np.lexsort((-sums, u))
    u, k, sums = u[order], k[order], sums[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    rank = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))
    keep = rank < top
    u, k, sums = u[keep], k[keep], sums[keep]
    indptr = np.zeros(n_users + 1, np.int64)
    np.add.at(indptr, u + 1, 1)
    return np.cumsum(indptr), k, (sums / np.maximum(total[u], 1e-9)).astype(np.float32)


def shopper_records(
    store: Store, until_ts: int, recent_items: int, purchased_items: int, only_users: np.ndarray | None = None
) -> Iterator[tuple[int, ShopperRecord]]:
    """(user_row, record) for every shopper (or `only_users`), from events strictly before until_ts.

    Shoppers with no interactions still get a record (region, blocks): the engine must honour
    their blocked brands and sellers on their very first request."""
    ev, items, users = store.events, store.items, store.users
    n_users = len(users)
    weight = TYPE_WEIGHT[ev.type]
    sel = (ev.ts < until_ts) & (weight > 0)
    order = np.lexsort((ev.ts[sel], ev.user_row[sel]))
    u = ev.user_row[sel][order]
    rows = ev.item_row[sel][order]
    types = ev.type[sel][order]
    ts = ev.ts[sel][order]
    dev = ev.device[sel][order]
    w = weight[sel][order].astype(np.float64)
    bounds = np.searchsorted(u, np.arange(n_users + 1))

    cat_key = np.concatenate([items.category[rows], items.cat_top[rows]])
    cat_user = np.concatenate([u, u])
    cat_w = np.concatenate([w, w])
    c_ptr, c_key, c_w = _grouped_top(cat_user, cat_key, cat_w, n_users, TOP_CATEGORIES)
    known_brand = items.brand[rows] > 0
    b_ptr, b_key, b_w = _grouped_top(u[known_brand], items.brand[rows][known_brand], w[known_brand], n_users, TOP_BRANDS)
    price = items.price[rows].astype(np.float64)
    priced = np.isfinite(price)
    price_sum = np.bincount(u[priced], weights=price[priced], minlength=n_users)
    price_n = np.bincount(u[priced], minlength=n_users)
    purchases = types == EventType.PURCHASE
    n_purch = np.bincount(u[purchases], minlength=n_users)

    targets = range(n_users) if only_users is None else (int(x) for x in only_users)
    for user in targets:
        lo, hi = int(bounds[user]), int(bounds[user + 1])
        r_lo = max(lo, hi - recent_items)
        bought = rows[lo:hi][types[lo:hi] == EventType.PURCHASE][-purchased_items:]
        bb = users.blocked_brands[users.blocked_brands_indptr[user] : users.blocked_brands_indptr[user + 1]]
        bsl = users.blocked_sellers[users.blocked_sellers_indptr[user] : users.blocked_sellers_indptr[user + 1]]
        devices = dev[lo:hi]
        yield user, ShopperRecord(
            region=int(users.region[user]),
            device=int(np.bincount(devices).argmax()) if hi > lo else 0,
            recent_items=rows[r_lo:hi].tolist(),
            recent_types=types[r_lo:hi].tolist(),
            recent_ts=ts[r_lo:hi].tolist(),
            purchased=bought.tolist(),
            blocked_brands=bb.tolist(),
            blocked_sellers=bsl.tolist(),
            category_nodes=c_key[c_ptr[user] : c_ptr[user + 1]].tolist(),
            category_weights=c_w[c_ptr[user] : c_ptr[user + 1]].tolist(),
            brand_codes=b_key[b_ptr[user] : b_ptr[user + 1]].tolist(),
            brand_weights=b_w[b_ptr[user] : b_ptr[user + 1]].tolist(),
            mean_price=float(price_sum[user] / price_n[user]) if price_n[user] else float("nan"),
            n_events=hi - lo,
            n_purchases=int(n_purch[user]),
            first_ts=int(ts[lo]) if hi > lo else 0,
            last_ts=int(ts[hi - 1]) if hi > lo else 0,
        )


def snapshot_map_size(n_users: int) -> int:
    """LMDB map size for a snapshot of n_users: generous (sparse file, costs no disk), recorded in
    the manifest because readers must open with at least the writer's size (STACK-NOTES pitfall 4)."""
    need = (64 << 20) + n_users * 4096
    return 1 << max(26, int(np.ceil(np.log2(need))))


def write_snapshot(store: Store, until_ts: int, recent_items: int, purchased_items: int, path: Path) -> tuple[int, int]:
    """Write every shopper's record into a single-file LMDB at `path`. Returns (records, map_size)."""
    map_size = snapshot_map_size(len(store.users))
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), subdir=False, map_size=map_size, sync=True, metasync=True, lock=True, max_dbs=0)
    count = 0
    try:
        batch: list[tuple[bytes, bytes]] = []
        user_ids = store.users.user_id
        for user, record in shopper_records(store, until_ts, recent_items, purchased_items):
            batch.append((str(user_ids[user]).encode("utf-8"), ENCODER.encode(record)))
            if len(batch) >= WRITE_BATCH:
                count += _put(env, batch)
                batch = []
        if batch:
            count += _put(env, batch)
        env.sync(True)
    finally:
        env.close()
    # The lock file belongs to the writer; the published snapshot is opened without locks.
    Path(str(path) + "-lock").unlink(missing_ok=True)
    return count, map_size


def _put(env: lmdb.Environment, batch: list[tuple[bytes, bytes]]) -> int:
    batch.sort()  # sorted keys let LMDB append pages instead of splitting them
    with env.begin(write=True) as txn:
        consumed, added = txn.cursor().putmulti(batch, append=False)
    return added
