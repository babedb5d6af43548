"""ResolveShopper's vector step: the user tower over the shopper's recent item vectors."""

from __future__ import annotations

import numpy as np

from engine.catalog import CatalogView
from engine.context import RequestContext


def shopper_vector(view: CatalogView, ctx: RequestContext) -> np.ndarray | None:
    """float32 [dim] L2-normalised, or None when the bundle has no user tower. A shopper with no
    history still gets a vector (the tower's context-only output), so ANN works for cold starts."""
    if view.tower is None:
        return None
    recent = ctx.shopper.recent_items
    recent = recent[(recent >= 0) & (recent < view.n_items)]
    # The tower was trained on histories where click → cart → purchase of one item counts once
    # (builder.twotower); collapse back-to-back repeats the same way.
    if len(recent) > 1:
        recent = recent[np.r_[True, recent[1:] != recent[:-1]]]
    history = np.asarray(view.vectors[recent[-view.tower.history_len :]], dtype=np.float32)
    return view.tower.encode_one(history, ctx.region, ctx.device)
