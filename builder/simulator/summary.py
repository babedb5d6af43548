"""What a simulation run did and saw: per-thread `Tally`s merged into one `SimulationSummary`
(a msgspec Struct, written as JSON by `aisle simulate --out`).

Definitions:
- impressions, clicks, ... are events the simulator posted (by type, `events_by_type`); the
  per-variant figures count only what came from a served slate (a landing page view is not);
- `ctr` = slate clicks / impressions; `revenue` = Σ paid price (price × (1 − discount)) of purchases;
- `impression_gini`: Gini coefficient of impressions per catalog item, over every catalog item
  (never shown = 0), so 0 = every item shown equally and → 1 = all impressions on one item;
- `catalog_coverage`: share of catalog items shown at least once;
- `violations`: hard-rule breaches seen in served slates (out_of_stock / retired beyond the
  feed's grace period, blocked_brand, blocked_seller, duplicate_sku);
- `latency_ms` / `event_latency_ms`: client-side wall time of recommendation requests / event
  posts (includes HTTP and JSON).
"""

from __future__ import annotations

from collections import Counter

import msgspec
import numpy as np


class VariantTally(msgspec.Struct):
    """What one arm (`variant` of the responses) served and what shoppers did with it."""

    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    add_to_cart: int = 0
    purchases: int = 0
    revenue: float = 0.0


class InventoryTally(msgspec.Struct):
    """Deltas the simulator's inventory feed published, by kind (and what went wrong)."""

    stock_out: int = 0  # Stock(in_stock=False): sold out by purchases or by the supplier
    restock: int = 0
    stock_level: int = 0  # Stock(in_stock=True) with a new quantity after a sale
    price: int = 0
    discount: int = 0
    new_sku: int = 0
    retire: int = 0
    batches: int = 0
    rejected: int = 0
    errors: list[str] = []


class SimulationSummary(msgspec.Struct):
    url: str
    seed: int
    taste_shift: float
    concurrency: int
    count: int
    sessions: int
    shoppers: int  # distinct shoppers who had a session
    pages: int  # slates requested plus landing views
    requests: int  # recommendation requests answered 200
    requests_by_surface: dict[str, int]
    events_by_type: dict[str, int]  # events generated (and posted)
    events_accepted: int
    events_duplicates: int
    events_rejected: int
    event_batches: int
    events_unsent: int  # in batches the engine never answered 202 (after retries)
    http_status: dict[str, int]  # every answer by status ("0" = no answer, "invalid" = undecodable 200/202), both routes
    http_errors: int  # answers that were neither 200/202 nor an expected 404 (unknown page anchor)
    not_found: int  # 404s (e.g. the page of a new SKU the engine has no vector for)
    retries: int
    violations: dict[str, int]
    examples: list[str]  # the first few violations and rejected events, for a human to look at
    variants: dict[str, VariantTally]
    bundles: dict[str, int]  # requests answered by each bundle build id
    fallbacks: dict[str, int]  # requests by degradation step ("none" = full pipeline)
    sources: dict[str, int]  # served slots by the candidate source that proposed the item
    clicks: int  # slate clicks
    add_to_cart: int
    purchases: int
    purchases_sold_out: int  # wanted at checkout, but the item had sold out meanwhile
    revenue: float
    ctr: float
    catalog_items: int
    distinct_items_served: int
    catalog_coverage: float
    impression_gini: float
    unknown_skus_served: int  # SKUs the simulator never heard of (neither catalog nor its new SKUs)
    new_sku_impressions: int  # slots given to SKUs the inventory feed listed during the run
    latency_ms: dict[str, float]
    event_latency_ms: dict[str, float]  # POST /v1/events (202 = durable: includes the log's group commit)
    wall_s: float
    requests_per_s: float
    inventory: InventoryTally | None = None
    impressions_by_sku: dict[str, int] = {}  # only with keep_item_counts


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "mean": round(float(ms.mean()), 3),
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p90": round(float(np.percentile(ms, 90)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
        "max": round(float(ms.max()), 3),
    }


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = equal; → 1 = concentrated). 0 for no mass."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    total = x.sum()
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float((2.0 * (ranks * x).sum() / (n * total)) - (n + 1.0) / n)


class Tally:
    """Counters of one simulator thread (no locks); `merge` adds another thread's."""

    def __init__(self) -> None:
        self.sessions = 0
        self.shoppers: set[int] = set()
        self.pages = 0
        self.requests_by_surface: Counter[str] = Counter()
        self.events_by_type: Counter[str] = Counter()
        self.events_accepted = 0
        self.events_duplicates = 0
        self.events_rejected = 0
        self.event_batches = 0
        self.events_unsent = 0
        self.http_status: Counter[str] = Counter()
        self.not_found = 0
        self.retries = 0
        self.violations: Counter[str] = Counter()
        self.examples: list[str] = []
        self.variants: dict[str, VariantTally] = {}
        self.bundles: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.purchases_sold_out = 0
        self.revenue = 0.0
        self.impressions_by_row: Counter[int] = Counter()
        self.unknown_skus = 0
        self.new_sku_impressions = 0
        self.latency_s: list[float] = []
        self.event_latency_s: list[float] = []

    def variant(self, name: str) -> VariantTally:
        tally = self.variants.get(name)
        if tally is None:
            tally = self.variants[name] = VariantTally()
        return tally

    def violation(self, kind: str, example: str) -> None:
        self.violations[kind] += 1
        self.note(f"{kind}: {example}")

    def note(self, example: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(example)

    def merge(self, other: Tally) -> None:
        self.sessions += other.sessions
        self.shoppers |= other.shoppers
        self.pages += other.pages
        self.requests_by_surface.update(other.requests_by_surface)
        self.events_by_type.update(other.events_by_type)
        self.events_accepted += other.events_accepted
        self.events_duplicates += other.events_duplicates
        self.events_rejected += other.events_rejected
        self.event_batches += other.event_batches
        self.events_unsent += other.events_unsent
        self.http_status.update(other.http_status)
        self.not_found += other.not_found
        self.retries += other.retries
        self.violations.update(other.violations)
        self.examples.extend(other.examples[: max(0, 20 - len(self.examples))])
        for name, t in other.variants.items():
            mine = self.variant(name)
            for field in VariantTally.__struct_fields__:
                setattr(mine, field, getattr(mine, field) + getattr(t, field))
        self.bundles.update(other.bundles)
        self.fallbacks.update(other.fallbacks)
        self.sources.update(other.sources)
        self.purchases_sold_out += other.purchases_sold_out
        self.revenue += other.revenue
        self.impressions_by_row.update(other.impressions_by_row)
        self.unknown_skus += other.unknown_skus
        self.new_sku_impressions += other.new_sku_impressions
        self.latency_s.extend(other.latency_s)
        self.event_latency_s.extend(other.event_latency_s)

    def summary(
        self,
        *,
        url: str,
        seed: int,
        taste_shift: float,
        concurrency: int,
        count: int,
        catalog_items: int,
        skus: list[str],
        wall_s: float,
        inventory: InventoryTally | None,
        keep_item_counts: bool,
    ) -> SimulationSummary:
        requests = sum(self.requests_by_surface.values())
        impressions = self.events_by_type.get("impression", 0)
        slate_clicks = sum(v.clicks for v in self.variants.values())
        counts = np.zeros(catalog_items, dtype=np.int64)
        for row, c in self.impressions_by_row.items():
            if row < catalog_items:
                counts[row] = c
        ok = {"200", "202"}
        errors = sum(c for s, c in self.http_status.items() if s not in ok and s != "404")
        return SimulationSummary(
            url=url,
            seed=seed,
            taste_shift=taste_shift,
            concurrency=concurrency,
            count=count,
            sessions=self.sessions,
            shoppers=len(self.shoppers),
            pages=self.pages,
            requests=requests,
            requests_by_surface=dict(sorted(self.requests_by_surface.items())),
            events_by_type=dict(sorted(self.events_by_type.items())),
            events_accepted=self.events_accepted,
            events_duplicates=self.events_duplicates,
            events_rejected=self.events_rejected,
            event_batches=self.event_batches,
            events_unsent=self.events_unsent,
            http_status=dict(sorted(self.http_status.items())),
            http_errors=errors,
            not_found=self.not_found,
            retries=self.retries,
            violations=dict(sorted(self.violations.items())),
            examples=self.examples,
            variants={k: msgspec.structs.replace(v, revenue=round(v.revenue, 2)) for k, v in sorted(self.variants.items())},
            bundles=dict(sorted(self.bundles.items())),
            fallbacks=dict(sorted(self.fallbacks.items())),
            sources=dict(sorted(self.sources.items())),
            clicks=slate_clicks,
            add_to_cart=self.events_by_type.get("add_to_cart", 0),
            purchases=self.events_by_type.get("purchase", 0),
            purchases_sold_out=self.purchases_sold_out,
            revenue=round(self.revenue, 2),
            ctr=round(slate_clicks / impressions, 6) if impressions else 0.0,
            catalog_items=catalog_items,
            distinct_items_served=int((counts > 0).sum()),
            catalog_coverage=round(float((counts > 0).mean()), 6) if catalog_items else 0.0,
            impression_gini=round(gini(counts), 6),
            unknown_skus_served=self.unknown_skus,
            new_sku_impressions=self.new_sku_impressions,
            latency_ms=_percentiles(self.latency_s),
            event_latency_ms=_percentiles(self.event_latency_s),
            wall_s=round(wall_s, 3),
            requests_per_s=round(requests / wall_s, 2) if wall_s > 0 else 0.0,
            inventory=inventory,
            impressions_by_sku={skus[r]: c for r, c in sorted(self.impressions_by_row.items())} if keep_item_counts else {},
        )
