"""Named sizes of the synthetic store.

A `Scale` holds every knob that changes with size; behaviour parameters (the click model, funnel
rates) live with the code that uses them (`sessions.BrowsingModel`) and do not change with scale,
so a `tiny` store behaves like a `1m` one, only smaller. Event counts are approximate: they follow
from `sessions_per_shopper` through the simulated funnel (about 35 events per session).
"""

from __future__ import annotations

import msgspec


class Scale(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    items: int  # SKUs in the catalog
    shoppers: int  # registered shoppers (users.parquet rows); some never visit
    sessions_per_shopper: float  # mean sessions per shopper over the horizon (activity is log-normal)
    departments: int  # top-level departments used (of taxonomy.DEPARTMENTS, in order)
    categories_per_department: int  # level-2 categories per department
    leaves_per_category: int  # level-3 leaves per category
    brands: int
    sellers: int  # including the first-party seller
    leaf_variants: int = 1  # > 1 splits each leaf into this many 4th-level variants
    horizon_days: int = 60  # length of the event log, ending at `sessions.HORIZON_END`
    latent_dim: int = 16  # hidden taste / item latent width (truth/*.npy)
    text_dim: int = 32  # width of catalog `text_embedding`
    slate_size: int = 10  # items per recommendation request in the log


SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        # A frozen test fixture: ~200 SKUs, ~100 shoppers, a few thousand events.
        Scale("micro", items=200, shoppers=100, sessions_per_shopper=1.0, departments=3,
              categories_per_department=2, leaves_per_category=3, brands=16, sellers=6),
        # Unit tests and quick experiments: a few seconds, ~50-80k events.
        Scale("tiny", items=2_000, shoppers=1_000, sessions_per_shopper=1.9, departments=6,
              categories_per_department=3, leaves_per_category=4, brands=120, sellers=30),
        # The demo: ~1M events.
        Scale("small", items=50_000, shoppers=20_000, sessions_per_shopper=1.45, departments=14,
              categories_per_department=5, leaves_per_category=6, brands=1_500, sellers=300),
        # Performance work: a million SKUs, ~10M events, 4-level categories.
        Scale("1m", items=1_000_000, shoppers=400_000, sessions_per_shopper=0.72, departments=14,
              categories_per_department=5, leaves_per_category=6, brands=12_000, sellers=2_500,
              leaf_variants=5),
        # The 5M-SKU capacity check (measured once by hand): ~20M events, every leaf in 8 variants.
        Scale("5m", items=5_000_000, shoppers=1_000_000, sessions_per_shopper=0.6, departments=14,
              categories_per_department=5, leaves_per_category=6, brands=25_000, sellers=4_800,
              leaf_variants=8),
    )
}  # fmt: skip


def resolve_scale(scale: str | Scale) -> Scale:
    """A `Scale` by name (one of SCALES) or as given; validated."""
    if isinstance(scale, str):
        try:
            scale = SCALES[scale]
        except KeyError:
            raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}") from None
    problems = []
    if scale.items < 10:
        problems.append(f"items must be ≥ 10, got {scale.items}")
    if scale.shoppers < 1:
        problems.append(f"shoppers must be ≥ 1, got {scale.shoppers}")
    if scale.sessions_per_shopper <= 0:
        problems.append(f"sessions_per_shopper must be > 0, got {scale.sessions_per_shopper}")
    if not 7 <= scale.horizon_days <= 3_650:
        problems.append(f"horizon_days must be in [7, 3650], got {scale.horizon_days}")
    if not 2 <= scale.latent_dim <= 256 or not 2 <= scale.text_dim <= 1024:
        problems.append("latent_dim must be in [2, 256] and text_dim in [2, 1024]")
    if not 1 <= scale.slate_size <= 50:
        problems.append(f"slate_size must be in [1, 50], got {scale.slate_size}")
    if problems:
        raise ValueError(f"invalid scale {scale.name!r}: " + "; ".join(problems))
    return scale
