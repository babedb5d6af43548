"""SKUs that arrived over the inventory feed after the bundle was built.

They live in the host's shared item state (engine.inventory.state), rows n_base .. n_base+n_new,
with a vector from the bundle's item tower when the subscriber could compute one. They are not
in the bundle's tables, so they do not go through retrieval and ranking: this module picks the
best few for a request (nearest to the pdp anchor, the cart or the shopper's vector; newest first
without a vector) under the same hard rules, and the pipeline places them in the exploration slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifacts.bundle import Bundle
from engine.context import RequestContext
from engine.inventory.embed import Codes
from engine.inventory.state import ItemState


@dataclass(frozen=True, slots=True)
class FreshPick:
    sku: str
    score: float


class FreshItems:
    def __init__(self, state: ItemState, bundle: Bundle) -> None:
        self.state = state
        self.codes = Codes(bundle)
        cap = state.capacity
        self.category = np.zeros(cap, np.int32)
        self.brand = np.zeros(cap, np.int32)
        self.seller = np.zeros(cap, np.int32)
        self.skus: list[str] = []
        self.known = 0

    def refresh(self) -> int:
        """Decode the static fields of rows published since the last call (rows never change)."""
        n = self.state.n_new
        for i in range(self.known, n):
            item = self.state.new_item(self.state.n_base + i)
            self.category[i], _ = self.codes.category(item.category_path)
            self.brand[i] = self.codes.brand.get(item.brand, 0)
            self.seller[i] = self.codes.seller.get(item.seller, 0)
            self.skus.append(item.sku)
        self.known = n
        return n

    def pick(self, ctx: RequestContext, query: np.ndarray | None, k: int, min_similarity: float, exclude: set[str]) -> list[FreshPick]:
        """Up to k new SKUs for this request, best first. With a query vector only items whose
        cosine reaches min_similarity (a new item has to be relevant to earn a pdp/cart slot);
        without one (cold home), the newest."""
        n = self.refresh()
        if n == 0 or k <= 0:
            return []
        st, f, s = self.state, ctx.filters, ctx.shopper
        rows = np.arange(st.n_base, st.n_base + n, dtype=np.int32)
        offers = st.gather(rows)
        ok = (offers.in_stock != 0) & (offers.retired == 0) & (offers.unsettled == 0)
        blocked_brands = np.concatenate([s.blocked_brands, f.blocked_brands])
        blocked_sellers = np.concatenate([s.blocked_sellers, f.blocked_sellers])
        ok &= ~np.isin(self.brand[:n], blocked_brands[blocked_brands > 0])
        ok &= ~np.isin(self.seller[:n], blocked_sellers[blocked_sellers > 0])
        if f.category_nodes is not None:
            ok &= np.isin(self.category[:n], f.category_nodes)
        price = offers.price * (1.0 - offers.discount)
        if f.price_min is not None:
            ok &= price >= f.price_min
        if f.price_max is not None:
            ok &= price <= f.price_max
        if exclude:
            ok &= np.fromiter((sku not in exclude for sku in self.skus[:n]), dtype=bool, count=n)
        if query is not None:
            ok &= st.has_vector[:n] != 0
            scores = st.vector[:n] @ query.astype(np.float32)
            ok &= scores >= min_similarity
        else:
            scores = st.created_at[:n].astype(np.float64)
        candidates = np.flatnonzero(ok)
        best = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
        return [FreshPick(self.skus[i], float(scores[i]) if query is not None else 0.0) for i in best]
