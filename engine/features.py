"""GatherFeatures: the ranker's input matrix, column for column as artifacts.featurespec says.

The builder calls this same function on its training candidates, so a feature cannot mean one
thing in training and another in serving. Everything is vectorised over candidates; nothing here
touches disk beyond the bundle's memory-mapped columns.
"""

from __future__ import annotations

import numpy as np

from artifacts.featurespec import FEATURE_INDEX, N_FEATURES, SOURCE_NAMES
from engine.candidates import Candidates
from engine.catalog import CatalogView
from engine.context import RequestContext

DAY = 86_400.0
# Beta-prior smoothing of rates: a new item with 1 click in 1 impression is not a 100% CTR.
CTR_PRIOR = (1.0, 30.0)  # (clicks, impressions) pseudo-counts
FUNNEL_PRIOR = (1.0, 10.0)  # (carts or purchases, clicks)

_F = FEATURE_INDEX
_SRC0 = FEATURE_INDEX[f"src_{SOURCE_NAMES[0]}"]


def _lookup(keys: np.ndarray, weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """weights[i] where keys[i] == values[j], else 0 (keys are few: a shopper's top-k)."""
    out = np.zeros(len(values), np.float32)
    for key, weight in zip(keys.tolist(), weights.tolist()):
        out[values == key] += weight
    return out


def assemble_features(view: CatalogView, ctx: RequestContext, cands: Candidates) -> np.ndarray:
    """float32 [n_candidates, view.n_features], C-contiguous, NaN = missing: every column of the
    spec (N_FEATURES), or, for a bundle built before later features were appended, the leading
    columns its ranker was trained on."""
    rows = cands.rows
    n = len(rows)
    X = np.zeros((n, N_FEATURES), dtype=np.float32)
    if n == 0:
        return np.zeros((0, view.n_features), dtype=np.float32)
    shopper = ctx.shopper
    vecs = np.asarray(view.vectors[rows], dtype=np.float32)

    X[:, _F["ann_score"]] = vecs @ ctx.user_vector if ctx.user_vector is not None else np.nan
    anchors = ctx.anchors[(ctx.anchors >= 0) & (ctx.anchors < view.n_items)]
    if len(anchors):
        avecs = np.asarray(view.vectors[anchors], dtype=np.float32)
        X[:, _F["anchor_sim"]] = (vecs @ avecs.T).max(axis=1)
        X[:, _F["anchor_same_category"]] = np.isin(view.category[rows], view.category[anchors])
        anchor_brands = view.brand[anchors]
        anchor_brands = anchor_brands[anchor_brands > 0]
        X[:, _F["anchor_same_brand"]] = np.isin(view.brand[rows], anchor_brands)
    else:
        X[:, _F["anchor_sim"]] = np.nan
        X[:, _F["anchor_same_category"]] = np.nan
        X[:, _F["anchor_same_brand"]] = np.nan

    X[:, _SRC0 : _SRC0 + len(SOURCE_NAMES)] = cands.source_scores
    X[:, _F["n_sources"]] = (cands.source_scores > 0).sum(axis=1)

    imp = view.impressions[rows].astype(np.float32)
    clk = view.clicks[rows].astype(np.float32)
    carts = view.carts[rows].astype(np.float32)
    buys = view.purchases[rows].astype(np.float32)
    live = view.live_counts(rows, ctx.now)  # behaviour since the build, from the live event log
    if live is not None:
        clk, carts, buys, imp = clk + live[:, 1], carts + live[:, 2], buys + live[:, 3], imp + live[:, 4]
    X[:, _F["item_log_popularity"]] = np.log1p(view.popularity[rows])
    X[:, _F["item_trend"]] = view.trend[rows]
    X[:, _F["item_ctr"]] = (clk + CTR_PRIOR[0]) / (imp + CTR_PRIOR[1])
    X[:, _F["item_cart_rate"]] = (carts + FUNNEL_PRIOR[0]) / (clk + FUNNEL_PRIOR[1])
    X[:, _F["item_buy_rate"]] = (buys + FUNNEL_PRIOR[0]) / (clk + FUNNEL_PRIOR[1])
    price, discount, _ = view.offers(rows)  # live prices when the inventory feed is attached
    price = price.astype(np.float32)
    discount = discount.astype(np.float32)
    effective = price * (1.0 - discount)
    X[:, _F["item_log_price"]] = np.log1p(effective)
    X[:, _F["item_discount"]] = discount
    X[:, _F["item_days_listed"]] = (ctx.now - view.created_at[rows]).astype(np.float32) / DAY

    X[:, _F["aff_category"]] = _lookup(shopper.category_nodes, shopper.category_weights, view.category[rows])
    X[:, _F["aff_department"]] = _lookup(shopper.category_nodes, shopper.category_weights, view.cat_top[rows])
    X[:, _F["aff_brand"]] = _lookup(shopper.brand_codes, shopper.brand_weights, view.brand[rows])
    with np.errstate(divide="ignore", invalid="ignore"):
        X[:, _F["price_ratio"]] = np.log(effective / np.float32(shopper.mean_price)) if shopper.mean_price > 0 else np.nan
    recent = shopper.recent_items
    if len(recent):
        uniq, counts = np.unique(recent, return_counts=True)
        pos = np.searchsorted(uniq, rows)
        pos = np.minimum(pos, len(uniq) - 1)
        X[:, _F["recent_count"]] = np.where(uniq[pos] == rows, counts[pos], 0)

    X[:, _F["user_log_events"]] = np.log1p(shopper.n_events)
    X[:, _F["user_history_len"]] = len(recent)
    X[:, _F["ctx_surface"]] = ctx.surface_code
    X[:, _F["ctx_device"]] = ctx.device
    X[:, _F["ctx_hour"]] = (ctx.now // 3600) % 24
    X[:, _F["ctx_dow"]] = ((ctx.now // 86_400) + 3) % 7  # 1970-01-01 was a Thursday
    # The request's region code, else the shopper's (ResolveShopper; the builder passes the
    # shopper's): a vocab code, so the trees split on it as on ctx_device.
    X[:, _F["ctx_region"]] = ctx.region
    if view.n_features < N_FEATURES:
        return np.ascontiguousarray(X[:, : view.n_features])
    return X
