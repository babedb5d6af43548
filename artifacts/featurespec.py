"""The ranker's feature spec: names, order and meaning of the columns of the float32 matrix that
the builder trains on and the engine scores. Shared by both sides; the manifest records it.

The spec is append-only: a feature is added at the end, never removed, renamed or moved. A bundle
built before a feature was appended records a prefix of this spec, and the engine gives its ranker
the leading columns it was trained on (`served_width`, engine.catalog.CatalogView.n_features).

Personalisation reads behaviour (what a shopper viewed, carted, bought), the catalog and the
request context. No feature may read a sensitive attribute (artifacts.schema.SENSITIVE_ATTRIBUTES);
`check_spec` enforces that on the names, and the builder refuses such input columns outright.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from artifacts.schema import sensitive_match

# Candidate sources, in source-id order (uint8 ids on the hot path). Append only: ids are stored.
SOURCE_NAMES: tuple[str, ...] = (
    "ann",  # user tower → item index
    "covisit",  # co-viewed with the shopper's recent items
    "coview",  # co-viewed with the anchor item (pdp) or cart items
    "copurchase",  # bought together with recent purchases / cart / anchor
    "similar",  # nearest items to the anchor's vector
    "trending",  # trending in the shopper's region and departments
    "popular",  # popular overall / in region
    "category_popular",  # popular in the anchor's or the shopper's categories
    "new",  # new arrivals (exploration)
    "complements",  # popular items of categories complementary to the cart's
)
SOURCE_ID: dict[str, int] = {name: i for i, name in enumerate(SOURCE_NAMES)}


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    group: str  # source | item | match | shopper | context
    doc: str


FEATURES: tuple[Feature, ...] = (
    Feature("ann_score", "match", "cosine of the shopper vector (user tower) and the item vector; NaN without one"),
    Feature("anchor_sim", "match", "max cosine of the item vector and the anchor/cart item vectors; NaN without anchors"),
    *(Feature(f"src_{name}", "source", f"score from source '{name}', 0 if it did not propose the item") for name in SOURCE_NAMES),
    Feature("n_sources", "source", "how many sources proposed the item"),
    Feature("item_log_popularity", "item", "log1p of the decayed interaction weight at build time"),
    Feature("item_trend", "item", "short-window over long-window activity ratio"),
    Feature("item_ctr", "item", "smoothed clicks / impressions"),
    Feature("item_cart_rate", "item", "smoothed carts / clicks"),
    Feature("item_buy_rate", "item", "smoothed purchases / clicks"),
    Feature("item_log_price", "item", "log1p of the effective price; NaN if unknown"),
    Feature("item_discount", "item", "fraction off the list price"),
    Feature("item_days_listed", "item", "days since the SKU was listed"),
    Feature("aff_category", "match", "shopper's interaction share in the item's category"),
    Feature("aff_department", "match", "shopper's interaction share in the item's department"),
    Feature("aff_brand", "match", "shopper's interaction share with the item's brand"),
    Feature("price_ratio", "match", "log of item price over the shopper's mean price; NaN if either unknown"),
    Feature("recent_count", "match", "times the item is among the shopper's recent interactions"),
    Feature("anchor_same_category", "match", "1 if the item shares a category with an anchor, 0 if not, NaN without anchors"),
    Feature("anchor_same_brand", "match", "1 if the item shares a known brand with an anchor, 0 if not, NaN without anchors"),
    Feature("user_log_events", "shopper", "log1p of the shopper's interactions"),
    Feature("user_history_len", "shopper", "recent items available to the user tower"),
    Feature("ctx_surface", "context", "surface code (home 0, pdp 1, cart 2)"),
    Feature("ctx_device", "context", "device code"),
    Feature("ctx_hour", "context", "hour of day (UTC) of the request"),
    Feature("ctx_dow", "context", "day of week (Monday 0) of the request"),
    Feature("ctx_region", "context", "region code of the request, else the shopper's (0 = unknown)"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = len(FEATURES)


class SensitiveFeatureError(ValueError):
    """A feature spec that would personalise on a sensitive attribute."""


def check_spec(names: tuple[str, ...] = FEATURE_NAMES) -> None:
    for name in names:
        attr = sensitive_match(name)
        if attr is not None:
            raise SensitiveFeatureError(
                f"feature {name!r} refers to the sensitive attribute {attr!r}; Aisle never personalises on it"
            )


def served_width(recorded: Sequence[str]) -> int | None:
    """Columns of this spec a ranker trained on the recorded spec `recorded` reads: len(recorded)
    when it is this spec or a prefix of it (a bundle from before later features were appended),
    None when it is not (another spec, whose columns mean something else) or is empty."""
    names = tuple(recorded)
    return len(names) if names and names == FEATURE_NAMES[: len(names)] else None
