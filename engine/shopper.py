"""Who is asking: the shopper state every stage reads, from the snapshot, the request, or both."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from artifacts.snapshot import ShopperRecord


@dataclass(slots=True)
class Shopper:
    """A shopper's state for one request. Item references are rows of the serving bundle."""

    known: bool  # found in the snapshot (or the live store)
    region: int = 0
    device: int = 0
    recent_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32, most recent last
    recent_types: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    purchased: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    blocked_brands: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    blocked_sellers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    category_nodes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    category_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    brand_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    brand_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    mean_price: float = float("nan")
    n_events: int = 0

    @classmethod
    def from_record(cls, record: ShopperRecord) -> Shopper:
        return cls(
            known=True,
            region=record.region,
            device=record.device,
            recent_items=np.asarray(record.recent_items, dtype=np.int32),
            recent_types=np.asarray(record.recent_types, dtype=np.int8),
            purchased=np.asarray(record.purchased, dtype=np.int32),
            blocked_brands=np.asarray(record.blocked_brands, dtype=np.int32),
            blocked_sellers=np.asarray(record.blocked_sellers, dtype=np.int32),
            category_nodes=np.asarray(record.category_nodes, dtype=np.int32),
            category_weights=np.asarray(record.category_weights, dtype=np.float32),
            brand_codes=np.asarray(record.brand_codes, dtype=np.int32),
            brand_weights=np.asarray(record.brand_weights, dtype=np.float32),
            mean_price=float(record.mean_price),
            n_events=record.n_events,
        )

    @classmethod
    def anonymous(cls, region: int = 0, device: int = 0) -> Shopper:
        return cls(known=False, region=region, device=device)

    def context_codes(self, region: int, device: int) -> tuple[int, int]:
        """The request's region and device codes where it has them (non-zero), else this
        shopper's: the one rule for serving (engine.stages) and for the builder's training rows,
        whose requests are logged events carrying the session's device and region."""
        return (region or self.region, device or self.device)
