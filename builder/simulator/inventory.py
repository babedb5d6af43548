"""The simulator as the store's inventory and pricing service: it binds a reference
`InventoryPublisher` (docs/inventory-wire.md) on the endpoints the engine's settings name, and
while shoppers shop it

- sells stock down on purchases (a `Stock` out when the last unit goes, quantity updates batched),
- has suppliers run out of a few items and restocks some sold-out ones,
- changes a few prices and discounts,
- lists new SKUs (`NewSku`) cloned from an existing item: the same leaf, brand and seller, a price
  near its own, a hidden latent and quality near its own (so shoppers like it about as much),
  and a text embedding near its own (the engine's item tower turns it into a vector, so the new
  SKU can be retrieved before any rebuild);
- retires a few items now and then.

Every change goes into the `Market` first, then on the wire, so the shoppers and the violation
check always know at least as much as the engine. The churn rates are per second of wall time;
the random choices come from `seed`, but when they happen depends on timing, so a run with
the feed is repeatable only in distribution.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

import msgspec
import numpy as np

from builder.simulator.market import Market
from builder.simulator.summary import InventoryTally
from engine.inventory import wire
from engine.inventory.publisher import InventoryPublisher

log = logging.getLogger("aisle.simulate")

DISCOUNT_LEVELS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40)


class Churn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Inventory changes per second besides purchases (`scale` multiplies them all)."""

    stock_outs: float = 0.5  # a supplier runs out of an in-stock item
    restocks: float = 1.0  # a sold-out item comes back (20-60 units)
    prices: float = 2.0  # a price moves by a log-normal factor (σ 0.15)
    discounts: float = 1.0  # a discount is set to a new level (often none)
    new_skus: float = 0.5
    retires: float = 0.05
    tick_s: float = 0.25  # how often the feed acts (and flushes quantity updates)

    def scaled(self, scale: float) -> Churn:
        if scale < 0:
            raise ValueError(f"churn scale must be ≥ 0, got {scale}")
        return msgspec.structs.replace(
            self,
            stock_outs=self.stock_outs * scale,
            restocks=self.restocks * scale,
            prices=self.prices * scale,
            discounts=self.discounts * scale,
            new_skus=self.new_skus * scale,
            retires=self.retires * scale,
        )


class InventoryFeed:
    """Binds the publisher on `pub_endpoint` / `snapshot_endpoint` and runs two threads: the
    publisher's ROUTER loop (snapshots, heartbeats) and the churn loop. `sold(row, left)` is called
    by shopper threads after each purchase."""

    def __init__(
        self,
        market: Market,
        pub_endpoint: str,
        snapshot_endpoint: str,
        *,
        churn: Churn = Churn(),
        seed: int = 0,
        publisher_id: str = "aisle-simulate",
        sku_prefix: str | None = None,
    ) -> None:
        self.market = market
        self.churn = churn
        self.rng = np.random.default_rng([seed, 303])
        self.tally = InventoryTally()
        self.sku_prefix = sku_prefix or f"SIM-{uuid.uuid4().hex[:6].upper()}-"
        self._new = 0
        self._pending_qty: dict[int, int] = {}  # row → quantity left after sales, not yet published
        self._pending_lock = threading.Lock()
        self._tally_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.publisher = InventoryPublisher(pub_endpoint, snapshot_endpoint, publisher_id)

    @property
    def endpoints(self) -> tuple[str, str]:
        return self.publisher.pub_endpoint, self.publisher.snapshot_endpoint

    def start(self) -> None:
        serve = threading.Thread(target=self.publisher.serve_forever, args=(self._stop,), name="inventory-publisher", daemon=True)
        churn = threading.Thread(target=self._churn_loop, name="inventory-churn", daemon=True)
        self._threads = [serve, churn]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._flush_quantities()
        self.publisher.close()

    def __enter__(self) -> InventoryFeed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- publishing ------------------------------------------------------------------------------

    def _publish(self, deltas: Sequence[wire.Delta]) -> None:
        if not deltas:
            return
        report = self.publisher.publish(list(deltas))
        with self._tally_lock:
            self.tally.batches += 1
            self.tally.rejected += report.rejected
            for error in report.errors:
                if len(self.tally.errors) < 10:
                    self.tally.errors.append(error)

    def _counted(self, kind: str, n: int = 1) -> None:
        with self._tally_lock:  # shopper threads (sales) and the churn thread both count
            setattr(self.tally, kind, getattr(self.tally, kind) + n)

    def sold(self, row: int, left: int) -> None:
        """A purchase left `left` units of `row` (the market already counted it down)."""
        sku = self.market.skus[row]
        if left == 0:
            with self._pending_lock:
                self._pending_qty.pop(row, None)
            self._publish([wire.Stock(sku, False, 0)])
            self._counted("stock_out")
        else:
            with self._pending_lock:
                self._pending_qty[row] = left

    def _flush_quantities(self) -> None:
        with self._pending_lock:
            pending, self._pending_qty = self._pending_qty, {}
        m = self.market
        deltas = [wire.Stock(m.skus[r], True, int(m.qty[r])) for r in pending if m.available(r)]
        self._publish(deltas)
        self._counted("stock_level", len(deltas))

    # --- churn -----------------------------------------------------------------------------------

    def _churn_loop(self) -> None:
        tick = max(0.01, self.churn.tick_s)
        next_at = time.monotonic() + tick
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += tick
            try:
                self._flush_quantities()
                self.step(tick)
            except Exception:  # a bug in the feed must not kill the run silently; it is counted
                log.exception("inventory churn step failed")
                with self._tally_lock:
                    if len(self.tally.errors) < 10:
                        self.tally.errors.append("churn step failed (see the log)")

    def _how_many(self, rate: float, dt: float) -> int:
        return int(self.rng.poisson(rate * dt)) if rate > 0 else 0

    def step(self, dt: float) -> None:
        """One tick of `dt` seconds of supplier and merchandising changes."""
        m, rng, c = self.market, self.rng, self.churn
        deltas: list[wire.Delta] = []
        n = m.n
        for _ in range(self._how_many(c.stock_outs, dt)):
            row = int(rng.integers(n))
            if m.available(row):
                m.set_stock(row, False, 0)
                deltas.append(wire.Stock(m.skus[row], False, 0))
                self._counted("stock_out")
        for _ in range(self._how_many(c.restocks, dt)):
            sold_out = np.flatnonzero(~m.in_stock[:n] & ~m.retired[:n])
            if len(sold_out) == 0:
                break
            row = int(sold_out[rng.integers(len(sold_out))])
            qty = int(rng.integers(20, 61))
            m.set_stock(row, True, qty)
            deltas.append(wire.Stock(m.skus[row], True, qty))
            self._counted("restock")
        for _ in range(self._how_many(c.prices, dt)):
            row = int(rng.integers(n))
            price = _price_point(float(m.price[row]) * float(rng.lognormal(0.0, 0.15)))
            m.set_price(row, price)
            deltas.append(wire.Price(m.skus[row], price))
            self._counted("price")
        for _ in range(self._how_many(c.discounts, dt)):
            row = int(rng.integers(n))
            discount = DISCOUNT_LEVELS[int(rng.integers(len(DISCOUNT_LEVELS)))] if rng.random() < 0.6 else 0.0
            m.set_discount(row, discount)
            deltas.append(wire.Discount(m.skus[row], discount))
            self._counted("discount")
        for _ in range(self._how_many(c.retires, dt)):
            row = int(rng.integers(n))
            if not m.retired[row]:
                m.retire(row)
                deltas.append(wire.Retire(m.skus[row]))
                self._counted("retire")
        self._publish(deltas)
        for _ in range(self._how_many(c.new_skus, dt)):
            delta = self.new_sku()
            if delta is None:
                break
            self._publish([delta])
            self._counted("new_sku")

    def new_sku(self) -> wire.NewSku | None:
        """A new SKU cloned from a random catalog item (module docstring), added to the market;
        None when the market has no room left."""
        m, rng, w = self.market, self.rng, self.market.world
        if m.n >= m.capacity:
            return None
        src = int(rng.integers(m.n_base))
        d = m.latent.shape[1]
        latent = m.latent[src] + 0.35 * rng.standard_normal(d).astype(np.float32) / np.float32(np.sqrt(d))
        latent /= max(float(np.linalg.norm(latent)), 1e-12)
        price = _price_point(float(w.price[src]) * float(rng.lognormal(0.0, 0.2)))
        price_term = float(w.price_term[src]) + float(np.log(price / max(float(w.price[src]), 1e-6)))
        text = None
        if m.text.shape[1]:
            t = m.text.shape[1]
            text = m.text[src] + 0.3 * rng.standard_normal(t).astype(np.float32) / np.float32(np.sqrt(t))
            text /= max(float(np.linalg.norm(text)), 1e-12)
        self._new += 1
        sku = f"{self.sku_prefix}{self._new:06d}"
        qty = int(rng.integers(10, 41))
        brand, seller = m.brand_names[int(m.brand[src])], m.seller_names[int(m.seller[src])]
        m.add_sku(
            sku, latent=latent.astype(np.float32), quality=float(m.quality[src]) + 0.3 * float(rng.standard_normal()),
            price=price, price_term=price_term, qty=qty, brand=brand, seller=seller, leaf=int(m.leaf[src]), text=text,
        )  # fmt: skip
        return wire.NewSku(
            sku=sku,
            title=f"New {w.titles[src]}"[: wire.TITLE_BYTES],
            category_path=w.category_paths[int(w.leaf[src])],
            brand=brand,
            seller=seller,
            price=price,
            discount=0.0,
            in_stock=True,
            qty=qty,
            created_at=time.time(),
            text_embedding=[float(x) for x in text] if text is not None else None,
        )


def _price_point(raw: float) -> float:
    """Retail price points, as the synthetic catalog uses: x.99 above a couple of dollars."""
    return float(np.floor(raw) + 0.99) if raw >= 2.0 else float(max(round(raw, 2), 0.49))
