"""The served-slate record: what a request showed, built from what the request already computed.

`served_slate` turns one answered request into an `engine.eventlog.ServedSlate` for the event
log's `slates` database (docs/event-log.md), the impression side of experiment analysis: the
app calls it after the answer is sent and hands the record to `EventLog.log_slate`.

It reads only memory the request path reads anyway: one vectorised SKU → row search over the
bundle's id map, one offer gather (the live seqlocked prices when the inventory feed is attached,
else the bundle's columns) and the category column. No LMDB read, no per-item Python beyond
building the lists.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from engine.context import RequestContext
from engine.eventlog import ServedSlate
from engine.schemas import RecommendQuery, RecommendResponse

if TYPE_CHECKING:
    from engine.service import Recommender


def served_slate(query: RecommendQuery, response: RecommendResponse, ctx: RequestContext, recommender: Recommender) -> ServedSlate:
    """The slate `recommender` served for `query` (its `response`, the `ctx` it ran with).

    Per item, in slot order: SKU, score and source as answered; the effective price the shopper
    was shown (list price × (1 − discount), live when the inventory feed is on; 0.0 when unknown
    or not a positive number); the leaf category path ("" unknown). SKUs that arrived over the
    inventory feed after the build take their price and category from the shared item state.
    """
    skus = [item.sku for item in response.items]
    n = len(skus)
    view = recommender.view
    rows = recommender.items.rows_of(skus) if n else np.zeros(0, np.int32)  # int32, -1 = not in the bundle
    categories = [""] * n
    base = np.flatnonzero(rows >= 0)
    paths = recommender.category_path
    for i, code in zip(base.tolist(), np.asarray(view.category[rows[base]]).tolist()):
        categories[i] = paths[code] if 0 <= code < len(paths) else ""
    state = view.inventory
    if state is not None and len(base) < n:
        for i in np.flatnonzero(rows < 0).tolist():
            row = state.new_row_of(skus[i])
            if row >= 0:  # a SKU published since the build: its row in the shared item state
                rows[i] = row
                categories[i] = state.new_item(row).category_path
    price, discount, _ = view.offers(np.maximum(rows, 0))  # unknown rows read row 0, then zeroed
    effective = (price * (1.0 - discount)).astype(np.float64)
    effective[(rows < 0) | ~((effective > 0) & (effective < np.inf))] = 0.0  # NaN (no price) fails both
    if query.surface == "pdp" and query.item_id:
        anchors = [query.item_id]
    elif query.surface == "cart":
        anchors = list(query.cart)
    else:
        anchors = []
    # When the request arrived, on the wall clock: earlier than any event the shopper can send
    # about this slate (the record itself is built after the answer is sent).
    ts = time.time() - (time.perf_counter() - ctx.started) if ctx.started else time.time()
    return ServedSlate(
        request_id=response.request_id,
        ts=ts,
        unit=ctx.unit,
        user_id=query.user_id or "",
        session_id=query.session_id or "",
        surface=ctx.surface_code,
        variant=response.variant,
        arm_share=float(ctx.arm_share),
        bundle=response.bundle,
        skus=skus,
        scores=[float(item.score) for item in response.items],
        sources=[item.source for item in response.items],
        prices=np.round(effective, 4).tolist(),  # float32 prices: 12.99, not 12.989999771118164
        categories=categories,
        count=int(ctx.count),
        offset=int(ctx.offset),
        anchors=anchors,
        fallback=response.fallback or "",
        took_ms=float(response.took_ms),
    )
