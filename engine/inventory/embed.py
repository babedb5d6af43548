"""Vectors for SKUs that arrive over the inventory feed: the bundle's item tower (ONNX) over the
new SKU's metadata, so a new item lands where the builder would have put a cold item with the same
category, brand, seller, price and text."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from artifacts import layout
from artifacts.bundle import Bundle
from artifacts.itemtower import ItemTower, ItemTowerError
from artifacts.schema import CATEGORY_SEPARATOR
from engine.inventory.wire import NewSku


class Codes:
    """External names → the bundle's vocabulary codes (0 = unknown)."""

    def __init__(self, bundle: Bundle) -> None:
        vocab = bundle.vocab
        self.node = {path: node for node, path in enumerate(vocab.category_path) if path}
        self.brand = {name: code for code, name in enumerate(vocab.brands) if name}
        self.seller = {name: code for code, name in enumerate(vocab.sellers) if name}

    def category(self, path: str) -> tuple[int, int]:
        """(node of the deepest known prefix of `path`, its department node); (0, 0) if none."""
        parts = [p.strip() for p in path.split(CATEGORY_SEPARATOR) if p.strip()]
        top = self.node.get(parts[0], 0) if parts else 0
        for depth in range(len(parts), 0, -1):
            node = self.node.get(CATEGORY_SEPARATOR.join(parts[:depth]))
            if node is not None:
                return node, top
        return 0, top


def make_embedder(bundle: Bundle) -> Callable[[NewSku], np.ndarray | None] | None:
    """The subscriber's `embed` hook for this bundle, or None if the bundle has no item tower
    (then new SKUs are served without a vector: new-arrival slots only)."""
    if not bundle.has(layout.ITEM_TOWER):
        return None
    try:
        tower = ItemTower(bundle.path(layout.ITEM_TOWER), threads=1)
    except ItemTowerError:
        return None
    codes = Codes(bundle)

    def embed(item: NewSku) -> np.ndarray | None:
        category, top = codes.category(item.category_path)
        text = None
        if tower.text_dim and item.text_embedding is not None and len(item.text_embedding) == tower.text_dim:
            text = np.asarray(item.text_embedding, dtype=np.float32)
        return tower.embed_one(category, top, codes.brand.get(item.brand, 0), codes.seller.get(item.seller, 0), item.price, text)

    return embed
