"""Sellers of the synthetic store: the store itself (first party) plus marketplace sellers.

Seller 0 is the store's own retail arm and lists about a third of all items; marketplace sellers
specialise in one or two departments and have Zipf-like sizes. Names combine a word list
("Harbor", "Summit") with a trade noun ("Outlet", "Trading") and, past those pairs, a company form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIRST_PARTY = "Aisle Retail"
FIRST_PARTY_SHARE = 0.35  # share of items listed by seller 0

_WORDS = (
    "Harbor", "Summit", "Bluebird", "Maple", "Cedar", "Northwind", "Riverside", "Golden Gate",
    "Lakeside", "Oakridge", "Silverline", "Redwood", "Brightside", "Evergreen", "Ironbridge",
    "Westfield", "Eastgate", "Highland", "Seaside", "Pinecrest", "Sunrise", "Starlight", "Granite",
    "Willow", "Copper", "Meadow", "Falcon", "Orchard", "Canyon", "Prairie", "Beacon", "Atlas",
    "Juniper", "Lighthouse", "Foxglove", "Keystone", "Horizon", "Marigold", "Bayview", "Stonebridge",
)  # fmt: skip
_TRADES = (
    "Outlet", "Trading", "Direct", "Depot", "Market", "Emporium", "Supply", "Store", "Goods",
    "Mercantile", "Bazaar", "Warehouse", "Exchange", "Shop", "Traders", "Wholesale", "Corner",
    "Collective", "Boutique", "Dealers",
)  # fmt: skip
_FORMS = ("", " LLC", " Ltd", " & Co", " & Sons", " Inc")

MAX_SELLERS = 1 + len(_WORDS) * len(_TRADES) * len(_FORMS)


@dataclass(frozen=True)
class Sellers:
    """Seller table; index = seller code. Code 0 is the first-party seller."""

    name: tuple[str, ...]
    departments: np.ndarray  # int32 [n_sellers, 2]: departments served, -1 = none (all for 0)
    weight: np.ndarray  # float64 [n_sellers]: Zipf-like share among marketplace sellers

    def __len__(self) -> int:
        return len(self.name)


def build_sellers(n: int, n_departments: int, rng: np.random.Generator) -> Sellers:
    """`n` sellers (at least 2: the store and one marketplace seller)."""
    if not 2 <= n <= MAX_SELLERS:
        raise ValueError(f"sellers must be in [2, {MAX_SELLERS}], got {n}")
    pairs = len(_WORDS) * len(_TRADES)
    space = pairs if n - 1 <= pairs else MAX_SELLERS - 1
    names = [FIRST_PARTY]
    for code in rng.permutation(space)[: n - 1].tolist():
        pair, form = code % pairs, code // pairs
        names.append(f"{_WORDS[pair // len(_TRADES)]} {_TRADES[pair % len(_TRADES)]}{_FORMS[form]}")
    departments = np.full((n, 2), -1, dtype=np.int32)
    departments[1:, 0] = rng.permutation(np.arange(n - 1) % n_departments)
    second = rng.integers(n_departments, size=n - 1).astype(np.int32)
    use = (rng.random(n - 1) < 0.4) & (second != departments[1:, 0])
    departments[1:, 1] = np.where(use, second, -1)
    weight = np.zeros(n, dtype=np.float64)
    weight[1:] = (rng.permutation(n - 1) + 1.0) ** -1.0
    return Sellers(tuple(names), departments, weight)


def sellers_of_department(sellers: Sellers, department: int) -> np.ndarray:
    """int32 [k]: marketplace sellers (code ≥ 1) serving `department`."""
    return np.flatnonzero(np.any(sellers.departments == department, axis=1)).astype(np.int32)
