"""What the simulator knows about every SKU right now: live price, discount and stock, and the SKUs
it added during the run (with their hidden latents), on top of the store's catalog.

The simulator is the inventory service of its world: the catalog gives the starting state, its own
`InventoryFeed` changes it (and tells the engine), and its shoppers see only this state. So it
knows, for any slate the engine serves, whether an item was sold out or retired, and since when.

Rows 0..n_base-1 are the catalog's (World row order); new SKUs take rows n_base.. in arrival
order, up to `capacity_new`. Writers take `lock`; readers on the request path read the arrays
without it (a row's fields can be mid-update for an instant, which at worst changes one shopper's
one decision; the stock rule has a grace period anyway).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from builder.simulator.world import World

NEVER = -math.inf  # unavailable_since of a row unavailable from the start (or never changed)


class Market:
    """Live item state. Arrays hold capacity rows; rows ≥ `n` are unused. r = rows."""

    def __init__(self, world: World, *, capacity_new: int = 5_000, track_stock: bool = False) -> None:
        n = world.n_items
        cap = n + max(0, capacity_new)
        d = world.latent.shape[1]
        t = world.text_embedding.shape[1]
        self.world = world
        self.lock = threading.Lock()
        self.n_base = n
        self.n = n
        self.capacity = cap
        # Selling stock down is only honest when the engine hears about it (the inventory feed):
        # without one, the catalog's stock is what both sides believe for the whole run.
        self.track_stock = track_stock
        self.skus: list[str] = list(world.skus)
        self.row_of: dict[str, int] = {s: i for i, s in enumerate(self.skus)}
        self.price = _grow(world.price, cap, 0.0)  # float64 [r], live list price
        self.base_price = _grow(world.price, cap, 1.0)  # float64 [r], the price price_term refers to
        self.discount = _grow(world.discount, cap, 0.0)  # float64 [r]
        self.qty = _grow(world.stock_qty, cap, 0)  # int64 [r]
        self.in_stock = _grow(world.in_stock, cap, False)  # bool [r]
        self.retired = np.zeros(cap, dtype=bool)
        self.unavailable_since = np.full(cap, NEVER, dtype=np.float64)  # time.monotonic() of the last stock-out/retire
        self.latent = np.zeros((cap, d), dtype=np.float32)
        self.latent[:n] = world.latent
        self.quality = _grow(world.quality, cap, 0.0)  # float32 [r]
        self.price_term = _grow(world.price_term, cap, 0.0)  # float32 [r], at base_price
        self.brand = _grow(world.brand, cap, -1)  # int32 [r]
        self.seller = _grow(world.seller, cap, -1)
        self.leaf = _grow(world.leaf, cap, -1)
        self.complement = _grow(world.complement, cap, -1)
        self.text = np.zeros((cap, t), dtype=np.float32)
        self.text[:n] = world.text_embedding
        self.brand_names: list[str] = list(world.brands)
        self.seller_names: list[str] = list(world.sellers)
        self._brand_code = {b: k for k, b in enumerate(self.brand_names)}
        self._seller_code = {s: k for k, s in enumerate(self.seller_names)}

    # --- reads ----------------------------------------------------------------------------------

    def rows_of(self, skus: list[str]) -> np.ndarray:
        """int64 [len(skus)]: rows, -1 for SKUs this market never heard of."""
        get = self.row_of.get
        return np.fromiter((get(s, -1) for s in skus), dtype=np.int64, count=len(skus))

    def live_price_term(self, rows: np.ndarray) -> np.ndarray:
        """float64 [k]: the truth's price term moved by how far the live price is from the price
        it was computed at (log scale, like the term itself)."""
        return self.price_term[rows].astype(np.float64) + np.log(
            np.maximum(self.price[rows], 1e-6) / np.maximum(self.base_price[rows], 1e-6)
        )

    def available(self, row: int) -> bool:
        return bool(self.in_stock[row]) and not bool(self.retired[row])

    def paid_price(self, row: int) -> float:
        return float(self.price[row] * (1.0 - self.discount[row]))

    def unavailable_for(self, row: int, asked_at: float, grace_s: float) -> str | None:
        """Why serving `row` to a request sent at `asked_at` (time.monotonic()) broke the stock
        rule: "retired" / "out_of_stock" when it was unavailable more than `grace_s` before the
        request (the feed needs a moment to reach every worker), else None."""
        if self.in_stock[row] and not self.retired[row]:
            return None
        if self.unavailable_since[row] > asked_at - grace_s:
            return None
        return "retired" if self.retired[row] else "out_of_stock"

    # --- writes (the inventory side and checkout) ---------------------------------------------

    def buy(self, row: int) -> tuple[bool, int]:
        """One unit of `row` at checkout → (bought, quantity left). A sold-out or retired item
        cannot be bought. With stock tracking the quantity goes down and the last unit sells the
        item out (the caller publishes that)."""
        with self.lock:
            if not self.available(row):
                return False, int(self.qty[row])
            if not self.track_stock:
                return True, int(self.qty[row])
            left = max(int(self.qty[row]) - 1, 0)
            self.qty[row] = left
            if left == 0:
                self.in_stock[row] = False
                self.unavailable_since[row] = time.monotonic()
            return True, left

    def set_stock(self, row: int, in_stock: bool, qty: int) -> None:
        with self.lock:
            was = self.available(row)
            self.in_stock[row] = in_stock
            self.qty[row] = qty
            if was and not self.available(row):
                self.unavailable_since[row] = time.monotonic()

    def set_price(self, row: int, price: float) -> None:
        with self.lock:
            self.price[row] = price

    def set_discount(self, row: int, discount: float) -> None:
        with self.lock:
            self.discount[row] = discount

    def retire(self, row: int) -> None:
        with self.lock:
            if self.available(row):
                self.unavailable_since[row] = time.monotonic()
            self.retired[row] = True
            self.in_stock[row] = False

    def add_sku(
        self,
        sku: str,
        *,
        latent: np.ndarray,
        quality: float,
        price: float,
        price_term: float,
        qty: int,
        brand: str,
        seller: str,
        leaf: int,
        text: np.ndarray | None = None,
    ) -> int:
        """A new SKU's row (visible to `rows_of` once this returns). Raises ValueError when the
        SKU exists or the market is full (`capacity_new`)."""
        with self.lock:
            if sku in self.row_of:
                raise ValueError(f"SKU {sku!r} already exists")
            if self.n >= self.capacity:
                raise ValueError(f"no room for more new SKUs (capacity_new = {self.capacity - self.n_base})")
            row = self.n
            self.skus.append(sku)
            self.price[row] = self.base_price[row] = price
            self.discount[row] = 0.0
            self.qty[row] = qty
            self.in_stock[row] = qty > 0
            self.retired[row] = False
            self.latent[row] = latent
            self.quality[row] = quality
            self.price_term[row] = price_term
            self.brand[row] = self._code(self._brand_code, self.brand_names, brand)
            self.seller[row] = self._code(self._seller_code, self.seller_names, seller)
            self.leaf[row] = leaf
            self.complement[row] = -1
            if text is not None and self.text.shape[1]:
                self.text[row] = text
            self.n = row + 1
            self.row_of[sku] = row  # last: the row is complete before anyone can look it up
            return row

    @staticmethod
    def _code(codes: dict[str, int], names: list[str], name: str) -> int:
        code = codes.get(name)
        if code is None:
            code = codes[name] = len(names)
            names.append(name)
        return code


def _grow(values: np.ndarray, capacity: int, fill: float | int | bool) -> np.ndarray:
    out = np.full(capacity, fill, dtype=values.dtype)
    out[: len(values)] = values
    return out
