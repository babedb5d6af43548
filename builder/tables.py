"""Count-based retrieval tables: co-visitation, co-purchase, complementary categories, popularity,
trending, new arrivals, and per-item behaviour statistics.

All are computed from events strictly before `until_ts`, so the builder can make a leak-free
"as of the cut-off" copy to train the ranker on and an "as of now" copy to serve.

Output formats are in artifacts.layout: CSR tables (int64 indptr, int32 indices, float32 weights,
neighbours sorted by descending weight) and int32 item lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from artifacts import layout
from artifacts.publish import save_array, save_csr
from artifacts.schema import EventType
from builder.config import TablesConfig
from builder.store import Store

DAY = 86_400.0

# How much each interaction says about interest. Impressions are what an earlier recommender
# chose, not what the shopper did, so they carry no weight; skips and dwell records annotate
# another event.
TYPE_WEIGHT = np.zeros(len(EventType), dtype=np.float32)
TYPE_WEIGHT[EventType.CLICK] = 1.0
TYPE_WEIGHT[EventType.ADD_TO_CART] = 3.0
TYPE_WEIGHT[EventType.PURCHASE] = 5.0

# Damping of the neighbour's own popularity in item-to-item scores (score = w_ab / pop_b^alpha):
# raw co-occurrence ranks the best sellers first for every anchor; full cosine over-promotes
# one-off pairs. 0.5 sits between and is the usual choice for co-visitation lists.
NEIGHBOUR_POPULARITY_DAMPING = 0.5
# Items per session considered for co-purchase pairs (pairs grow with the square of it).
MAX_BASKET = 50


@dataclass(frozen=True)
class TableStats:
    interactions: int
    covisit_pairs: int
    copurchase_pairs: int
    covisit_nnz: int
    copurchase_nnz: int
    complement_nnz: int
    new_arrivals: int


@njit(cache=True)
def _session_pairs(session: np.ndarray, item: np.ndarray, weight: np.ndarray, window: int, cap: int):
    """Pairs (a, b, w) and (b, a, w) of different items within `window` positions of each other in
    one session (window 0 = the whole session); w = mean weight of the two events / distance, so
    closer and stronger interactions count more.

    session/item int32 [m] sorted by (session, time); weight float32 [m]; cap = output capacity
    (the caller computes the exact pair count bound)."""
    m = session.shape[0]
    a_out = np.empty(cap, dtype=np.int32)
    b_out = np.empty(cap, dtype=np.int32)
    w_out = np.empty(cap, dtype=np.float32)
    c = 0
    start = 0
    while start < m:
        end = start
        while end < m and session[end] == session[start]:
            end += 1
        for i in range(start, end):
            hi = min(end, i + window + 1) if window > 0 else end
            for j in range(i + 1, hi):
                if item[i] == item[j]:
                    continue
                w = np.float32((weight[i] + weight[j]) * 0.5 / (j - i if window > 0 else 1))
                a_out[c] = item[i]
                b_out[c] = item[j]
                w_out[c] = w
                a_out[c + 1] = item[j]
                b_out[c + 1] = item[i]
                w_out[c + 1] = w
                c += 2
        start = end
    return a_out[:c], b_out[:c], w_out[:c]


@njit(cache=True)
def _topn_per_row(keys: np.ndarray, weights: np.ndarray, n_cols: np.int64, n_rows: int, topn: int, norm: np.ndarray):
    """keys int64 [p] = a * n_cols + b, SORTED, possibly repeated; weights float32 [p].
    Sums repeats, divides by norm[b], keeps the `topn` best b per a. Returns CSR arrays."""
    p = keys.shape[0]
    # aggregate repeated keys
    uk = np.empty(p, dtype=np.int64)
    uw = np.empty(p, dtype=np.float32)
    u = 0
    i = 0
    while i < p:
        k = keys[i]
        s = np.float32(0.0)
        while i < p and keys[i] == k:
            s += weights[i]
            i += 1
        uk[u] = k
        b = k % n_cols
        uw[u] = s / norm[b]
        u += 1
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    out_idx = np.empty(u, dtype=np.int32)
    out_w = np.empty(u, dtype=np.float32)
    c = 0
    i = 0
    row = 0
    while i < u:
        a = uk[i] // n_cols
        j = i
        while j < u and uk[j] // n_cols == a:
            j += 1
        while row <= a:
            indptr[row] = c
            row += 1
        seg_w = uw[i:j]
        order = np.argsort(-seg_w, kind="mergesort")
        take = min(topn, j - i)
        for t in range(take):
            out_idx[c] = np.int32(uk[i + order[t]] % n_cols)
            out_w[c] = seg_w[order[t]]
            c += 1
        i = j
    while row <= n_rows:
        indptr[row] = c
        row += 1
    return indptr, out_idx[:c].copy(), out_w[:c].copy()


def _distinct_in_session(session: np.ndarray, item: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """First occurrence of each item per session, at most `limit` items per session (a basket of
    hundreds of items is a bot or a bulk order and says little about complements), in order."""
    if len(item) == 0:
        return session, item
    keys = session.astype(np.int64) * (int(item.max()) + 1) + item
    _, first = np.unique(keys, return_index=True)
    first.sort()
    s, i = session[first], item[first]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    rank = np.arange(len(s)) - np.repeat(starts, np.diff(np.r_[starts, len(s)]))
    keep = rank < limit
    return s[keep], i[keep]


def _pairs_to_csr(a: np.ndarray, b: np.ndarray, w: np.ndarray, n_rows: int, n_cols: int, topn: int, norm: np.ndarray):
    """CSR [n_rows] of the `topn` best columns per row; norm float32 [n_cols] divides scores."""
    if norm.shape[0] != n_cols:
        raise ValueError(f"norm has {norm.shape[0]} entries, expected {n_cols}")
    keys = a.astype(np.int64) * np.int64(n_cols) + b.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return _topn_per_row(keys[order], w[order].astype(np.float32), np.int64(n_cols), n_rows, topn, norm.astype(np.float32))


def _topn_lists(group: np.ndarray, item: np.ndarray, score: np.ndarray, n_groups: int, n_cols: int, topn: int):
    """Per group, the `topn` columns (items, categories) by summed score. int32 [p] / float32 [p]."""
    keep = score > 0
    ones = np.ones(n_cols, dtype=np.float32)
    return _pairs_to_csr(group[keep], item[keep], score[keep], max(n_groups, 1), n_cols, topn, ones)


def _ancestors(parent: np.ndarray) -> list[np.ndarray]:
    """For each category node, the node itself and all its ancestors except the root."""
    out: list[np.ndarray] = []
    for node in range(len(parent)):
        chain = []
        cur = node
        while cur > 0:
            chain.append(cur)
            cur = int(parent[cur])
        out.append(np.asarray(chain, dtype=np.int32))
    return out


def build_tables(store: Store, until_ts: int, config: TablesConfig, out_dir: Path) -> TableStats:
    """Compute every count-based table from events before `until_ts` and write them under out_dir."""
    ev = store.events
    items = store.items
    n_items = len(items)
    before = ev.ts < until_ts
    weight_all = TYPE_WEIGHT[ev.type]
    inter = before & (weight_all > 0)

    # -- per-item statistics (raw counts + decayed popularity / trend) -------------------------
    age_days = (until_ts - ev.ts[before]).astype(np.float64) / DAY
    rows_b = ev.item_row[before]
    types_b = ev.type[before]
    w_b = weight_all[before].astype(np.float64)
    stats = {}
    for name, code in (
        ("impressions", EventType.IMPRESSION),
        ("clicks", EventType.CLICK),
        ("carts", EventType.ADD_TO_CART),
        ("purchases", EventType.PURCHASE),
        ("views", EventType.DWELL),
    ):
        stats[name] = np.bincount(rows_b[types_b == code], minlength=n_items).astype(np.float32)
    long_decay = np.exp(-np.log(2.0) * age_days / config.popularity_half_life_days)
    short_decay = np.exp(-np.log(2.0) * age_days / config.trending_half_life_days)
    popularity = np.bincount(rows_b, weights=w_b * long_decay, minlength=n_items).astype(np.float32)
    short = np.bincount(rows_b, weights=w_b * short_decay, minlength=n_items)
    # Trend: recent rate over long-run rate, shrunk toward 1 for items with little evidence
    # (a single click on a quiet item is not a trend).
    ratio = config.popularity_half_life_days / config.trending_half_life_days
    trend = ((short * ratio + 5.0) / (popularity + 5.0)).astype(np.float32)
    trend_score = (trend * np.log1p(short)).astype(np.float32)
    for name, values in stats.items():
        save_array(out_dir, layout.item_column(name), values)
    save_array(out_dir, layout.item_column("popularity"), popularity)
    save_array(out_dir, layout.item_column("trend"), trend)

    # -- co-visitation and co-purchase (session windows) ---------------------------------------
    order = np.lexsort((ev.ts[inter], ev.session_row[inter]))
    sess = ev.session_row[inter][order].astype(np.int32)
    item = ev.item_row[inter][order].astype(np.int32)
    wt = weight_all[inter][order].astype(np.float32)
    item_pop = np.bincount(item, weights=wt, minlength=n_items).astype(np.float32)
    norm = np.maximum(item_pop, 1.0) ** NEIGHBOUR_POPULARITY_DAMPING
    a, b, w = _session_pairs(sess, item, wt, config.covisit_window, 2 * config.covisit_window * len(item))
    cv = _pairs_to_csr(a, b, w, n_items, n_items, config.covisit_topn, norm)
    save_csr(out_dir, layout.COVISIT, *cv)
    covisit_pairs = len(a)

    buy_mask = (ev.type[inter][order] == EventType.ADD_TO_CART) | (ev.type[inter][order] == EventType.PURCHASE)
    bs, bi = _distinct_in_session(sess[buy_mask], item[buy_mask], MAX_BASKET)
    lengths = np.bincount(bs)
    cap = int((lengths.astype(np.int64) * (lengths - 1)).sum())
    # Each basket pair counts once per session, whatever the quantities or repeats.
    pa, pb, pw = _session_pairs(bs, bi, np.ones(len(bi), np.float32), 0, cap)
    buy_pop = np.bincount(bi, minlength=n_items).astype(np.float32)
    cp = _pairs_to_csr(pa, pb, pw, n_items, n_items, config.copurchase_topn, np.maximum(buy_pop, 1.0) ** NEIGHBOUR_POPULARITY_DAMPING)
    save_csr(out_dir, layout.COPURCHASE, *cp)

    # -- complementary categories: co-purchase lift between leaf categories --------------------
    n_cats = len(store.categories)
    cat = items.category
    ca, cb = cat[pa], cat[pb]
    diff = ca != cb
    cat_buys = np.bincount(cat[bi], minlength=n_cats).astype(np.float64)
    if diff.any():
        keys = ca[diff].astype(np.int64) * n_cats + cb[diff]
        uniq, counts = np.unique(keys, return_counts=True)
        ua, ub = (uniq // n_cats).astype(np.int32), (uniq % n_cats).astype(np.int32)
        total = max(cat_buys.sum(), 1.0)
        lift = counts * total / np.maximum(cat_buys[ua] * cat_buys[ub], 1.0)
        # Lift alone crowns pairs seen once between rare categories; weight it by evidence.
        score = (np.log1p(lift) * np.log1p(counts) * (counts >= 2)).astype(np.float32)
        comp = _topn_lists(ua, ub, score, n_cats, n_cats, config.complement_topn)
    else:
        comp = (np.zeros(n_cats + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    save_csr(out_dir, layout.COMPLEMENT_CATEGORIES, *comp)

    # -- popularity and trending lists ----------------------------------------------------------
    live = items.created_at <= until_ts
    pop_score = np.where(live, popularity, 0.0).astype(np.float32)
    ranked = np.argsort(-pop_score, kind="stable")
    ranked = ranked[pop_score[ranked] > 0][: config.popular_topn]
    if len(ranked) < config.popular_topn:  # a store with little behaviour still needs a default list
        rest = np.setdiff1d(np.flatnonzero(live), ranked, assume_unique=False)
        rest = rest[np.argsort(-items.created_at[rest], kind="stable")]
        ranked = np.concatenate([ranked, rest[: config.popular_topn - len(ranked)]])
    save_array(out_dir, layout.POPULAR_GLOBAL, ranked.astype(np.int32))

    anc = _ancestors(store.categories.parent)
    node_counts = np.array([len(x) for x in anc], dtype=np.int64)
    item_nodes_len = node_counts[cat]
    g_item = np.repeat(np.arange(n_items, dtype=np.int32), item_nodes_len)
    g_node = np.concatenate([anc[c] for c in cat]) if n_items else np.zeros(0, np.int32)
    save_csr(out_dir, layout.POPULAR_BY_CATEGORY, *_topn_lists(g_node, g_item, pop_score[g_item], n_cats, n_items, config.popular_topn))
    dept = items.cat_top
    save_csr(
        out_dir, layout.TRENDING_BY_TOP, *_topn_lists(dept, np.arange(n_items, dtype=np.int32), np.where(live, trend_score, 0).astype(np.float32), n_cats, n_items, config.popular_topn)
    )

    n_regions = max(len(store.regions), 1)
    reg = ev.region[before & (weight_all > 0)].astype(np.int32)
    reg_item = ev.item_row[before & (weight_all > 0)].astype(np.int32)
    inter_age = (until_ts - ev.ts[before & (weight_all > 0)]).astype(np.float64) / DAY
    inter_w = weight_all[before & (weight_all > 0)].astype(np.float64)
    reg_pop = (inter_w * np.exp(-np.log(2.0) * inter_age / config.popularity_half_life_days)).astype(np.float32)
    reg_short = (inter_w * np.exp(-np.log(2.0) * inter_age / config.trending_half_life_days)).astype(np.float32)
    save_csr(out_dir, layout.POPULAR_BY_REGION, *_topn_lists(reg, reg_item, reg_pop, n_regions, n_items, config.popular_topn))
    # trending per region: recent activity weighted by the item's global trend ratio
    save_csr(out_dir, layout.TRENDING_BY_REGION, *_topn_lists(reg, reg_item, reg_short * trend[reg_item], n_regions, n_items, config.popular_topn))

    # -- new arrivals ----------------------------------------------------------------------------
    horizon = until_ts - config.new_arrival_days * DAY
    fresh = np.flatnonzero(live & (items.created_at >= horizon))
    if len(fresh) == 0:
        fresh = np.flatnonzero(live)
    fresh = fresh[np.argsort(-items.created_at[fresh], kind="stable")][: max(config.popular_topn, 200)]
    save_array(out_dir, layout.NEW_ARRIVALS, fresh.astype(np.int32))

    return TableStats(
        interactions=int(inter.sum()),
        covisit_pairs=int(covisit_pairs),
        copurchase_pairs=int(len(pa)),
        covisit_nnz=int(len(cv[1])),
        copurchase_nnz=int(len(cp[1])),
        complement_nnz=int(len(comp[1])),
        new_arrivals=int(len(fresh)),
    )
