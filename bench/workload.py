"""Realistic request mixes, shared by every benchmark (in process, over HTTP, the baseline).

Requests are drawn from the bundle's own shoppers: known shoppers with their snapshot history plus
a share of unknown ones; pdp anchors from the shopper's recent items (else a popular item); carts
of 1-3 such items. The same seed gives the same requests, so two systems measured in one run see
the same work.

    queries(bundle_root, "home", 2000, seed=1) -> list[RecommendQuery]
    to_query_string(q) -> "surface=home&user_id=...&count=20"
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from artifacts import layout
from artifacts.bundle import Bundle, open_bundle
from artifacts.snapshot import ShopperSnapshot
from engine.schemas import RecommendQuery

SURFACES = ("home", "pdp", "cart")
COLD_SHARE = 0.1  # unknown shoppers among the requests


def _snapshot(bundle: Bundle) -> ShopperSnapshot | None:
    if not bundle.has(layout.SHOPPER_SNAPSHOT):
        return None
    map_size = int(bundle.manifest.dims.get("snapshot_map_size", 1 << 30)) if bundle.manifest else 1 << 34
    return ShopperSnapshot(bundle.path(layout.SHOPPER_SNAPSHOT), map_size=map_size)


def draw(bundle: Bundle, surface: str, n: int, seed: int = 1, count: int = 20, with_history: bool = False) -> list[RecommendQuery]:
    """n requests for `surface` from this bundle's shoppers (see the module docstring);
    with_history: only known shoppers with recent items (no cold or history-less ones)."""
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}; one of {', '.join(SURFACES)}")
    rng = np.random.default_rng(seed)
    users, items = bundle.users, bundle.items
    snap = _snapshot(bundle)
    popular = np.asarray(bundle.array(layout.POPULAR_GLOBAL))[:1000].tolist()
    out: list[RecommendQuery] = []
    tries = 0
    try:
        while len(out) < n:
            tries += 1
            if with_history and tries > 200 * n:
                raise ValueError(f"bundle {bundle.build_id} has too few shoppers with history for {n} requests")
            if (rng.random() < COLD_SHARE and not with_history) or len(users) == 0:
                user, recent = f"cold-{int(rng.integers(1 << 30))}", []
            else:
                user = users.id_of(int(rng.integers(len(users))))
                record = snap.get(user) if snap is not None else None
                recent = list(record.recent_items) if record else []
                if with_history and not recent:
                    continue
            pick = recent if recent else popular
            anchor = items.id_of(int(pick[int(rng.integers(len(pick)))]))
            if surface == "home":
                out.append(RecommendQuery("home", user_id=user, count=count))
            elif surface == "pdp":
                out.append(RecommendQuery("pdp", user_id=user, item_id=anchor, count=count))
            else:
                extra = [items.id_of(int(pick[int(i)])) for i in rng.integers(len(pick), size=int(rng.integers(0, 3)))]
                out.append(RecommendQuery("cart", user_id=user, cart=sorted({anchor, *extra}), count=count))
    finally:
        if snap is not None:
            snap.close()
    return out


def queries(bundle_root: Path | str, surface: str, n: int, seed: int = 1, count: int = 20) -> list[RecommendQuery]:
    """draw() on the bundle at bundle_root (a bundle dir, ROOT/current or ROOT)."""
    return draw(open_bundle(Path(bundle_root), verify="sizes"), surface, n, seed, count)


def to_query_string(q: RecommendQuery) -> str:
    """The GET query string of /v1/recommendations for q (list parameters comma-separated)."""
    params: list[tuple[str, str]] = [("surface", q.surface)]
    if q.user_id:
        params.append(("user_id", q.user_id))
    if q.item_id:
        params.append(("item_id", q.item_id))
    if q.cart:
        params.append(("cart", ",".join(q.cart)))
    if q.count is not None:
        params.append(("count", str(q.count)))
    return urlencode(params)
