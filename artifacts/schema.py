"""The canonical input schema (DESIGN.md §5): catalog, events, users.

This module is the contract between whoever produces store data (the synthetic store, the
adapters, a storefront's export, the engine's event log) and the builder that reads it. It holds
only declarations: column names, logical types, whether a column may be absent or null, and the
code tables for enumerated values. Both the builder (ingest) and the engine (event validation)
import it, so the two sides cannot disagree about what an event type is called.

Schema evolution (msgspec's rules): a new column is optional and goes last; a column is never
retyped; an enumerated code is never reused for another meaning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventType(enum.IntEnum):
    """Shopper event types. The integer codes are stored in bundles and logs: never renumber."""

    IMPRESSION = 0
    CLICK = 1
    ADD_TO_CART = 2
    PURCHASE = 3
    SKIP = 4
    DWELL = 5


EVENT_TYPE_NAMES: tuple[str, ...] = ("impression", "click", "add_to_cart", "purchase", "skip", "dwell")
EVENT_TYPE_BY_NAME: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPE_NAMES)}

SURFACE_NAMES: tuple[str, ...] = ("home", "pdp", "cart", "search", "other")
SURFACE_BY_NAME: dict[str, int] = {name: code for code, name in enumerate(SURFACE_NAMES)}

# Separator inside `category_path` ("Home/Kitchen/Cookware"); root first.
CATEGORY_SEPARATOR = "/"
# Separator of list-valued cells in CSV files (blocked_brands, blocked_sellers).
LIST_SEPARATOR = "|"


class ColumnType(enum.Enum):
    STRING = "string"
    INT = "int"  # 64-bit integer
    FLOAT = "float"
    BOOL = "bool"
    TIMESTAMP = "timestamp"  # integer epoch seconds, or an ISO-8601 string / Parquet timestamp
    STRING_LIST = "string_list"  # Parquet list<string>, or LIST_SEPARATOR-joined in CSV
    FLOAT_VECTOR = "float_vector"  # Parquet list<float> of one fixed length, or space-joined in CSV


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    required: bool = True  # the column must be present in the file
    nullable: bool = False  # a present column may hold nulls (filled with `default`)
    default: object = None
    doc: str = ""


@dataclass(frozen=True, slots=True)
class TableSchema:
    name: str
    key: tuple[str, ...]  # columns that must be unique together
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


S, I, F, B, T, L, V = (
    ColumnType.STRING,
    ColumnType.INT,
    ColumnType.FLOAT,
    ColumnType.BOOL,
    ColumnType.TIMESTAMP,
    ColumnType.STRING_LIST,
    ColumnType.FLOAT_VECTOR,
)

CATALOG = TableSchema(
    name="catalog",
    key=("sku",),
    columns=(
        Column("sku", S, doc="the storefront's item id, unique, 1-64 characters"),
        Column("title", S, required=False, nullable=True, default="", doc="display title"),
        Column("category_path", S, doc="root-first path, '/'-separated, e.g. 'Home/Kitchen/Cookware'"),
        Column("brand", S, required=False, nullable=True, default="", doc="brand name; empty = unknown"),
        Column("seller", S, required=False, nullable=True, default="", doc="seller name; empty = unknown"),
        Column("price", F, required=False, nullable=True, default=float("nan"), doc="list price ≥ 0; null = unknown"),
        Column("discount", F, required=False, nullable=True, default=0.0, doc="fraction off the list price, in [0, 1)"),
        Column("in_stock", B, required=False, nullable=True, default=True, doc="can be sold now"),
        Column("stock_qty", I, required=False, nullable=True, default=-1, doc="units in stock; -1 = unknown"),
        Column("created_at", T, required=False, nullable=True, default=0, doc="when the SKU was listed"),
        Column("text_embedding", V, required=False, nullable=True, doc="precomputed text embedding"),
        Column("image_embedding", V, required=False, nullable=True, doc="precomputed image embedding"),
    ),
)

EVENTS = TableSchema(
    name="events",
    key=(),  # `event_id`, when present, is checked for duplicates separately
    columns=(
        Column("ts", T, doc="when it happened"),
        Column("user_id", S, doc="shopper id (a storefront id or an anonymous cookie id)"),
        Column("session_id", S, required=False, nullable=True, default="", doc="browsing session"),
        Column("sku", S, doc="the item acted on"),
        Column("type", S, doc="one of " + ", ".join(EVENT_TYPE_NAMES)),
        Column("dwell_ms", I, required=False, nullable=True, default=0, doc="time on the item page"),
        Column("surface", S, required=False, nullable=True, default="other", doc="one of " + ", ".join(SURFACE_NAMES)),
        Column("request_id", S, required=False, nullable=True, default="", doc="recommendation request that showed it"),
        Column("position", I, required=False, nullable=True, default=-1, doc="0-based slot in the slate; -1 = not from a slate"),
        Column("device", S, required=False, nullable=True, default="", doc="e.g. mobile, desktop, app"),
        Column("region", S, required=False, nullable=True, default="", doc="coarse region code"),
        Column("event_id", S, required=False, nullable=True, default="", doc="idempotency key"),
    ),
)

USERS = TableSchema(
    name="users",
    key=("user_id",),
    columns=(
        Column("user_id", S),
        Column("region", S, required=False, nullable=True, default=""),
        Column("signup_ts", T, required=False, nullable=True, default=0),
        Column("blocked_brands", L, required=False, nullable=True, default=()),
        Column("blocked_sellers", L, required=False, nullable=True, default=()),
    ),
)

TABLES: dict[str, TableSchema] = {t.name: t for t in (CATALOG, EVENTS, USERS)}

# Attributes that must never drive personalisation (product brief). A column whose normalised name
# is one of these, or starts/ends with one of them (`user_age`, `gender_code`), is refused by the
# builder rather than silently dropped: somebody meant to use it, so the build must stop and say so.
SENSITIVE_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "age",
        "birth_date",
        "birthdate",
        "date_of_birth",
        "dob",
        "birth_year",
        "gender",
        "sex",
        "ethnicity",
        "race",
        "religion",
        "health",
        "disability",
        "sexual_orientation",
        "marital_status",
        "pregnancy",
        "nationality",
        "political_opinion",
        "political_affiliation",
        "trade_union",
        "genetic",
        "biometric",
    }
)


def sensitive_match(column_name: str) -> str | None:
    """The sensitive attribute a column name denotes, or None.

    Names are compared after lower-casing and mapping '-', ' ' and '.' to '_'. A name matches when
    it equals an attribute or has it as a whole '_'-separated prefix or suffix (`age_band`,
    `customer_gender`), so `page_views` or `stage` do not match `age`.
    """
    norm = column_name.strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")
    for attr in SENSITIVE_ATTRIBUTES:
        if norm == attr or norm.startswith(attr + "_") or norm.endswith("_" + attr):
            return attr
    return None
