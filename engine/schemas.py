"""The HTTP API's typed boundary: every request and response body as a msgspec Struct, with
module-level encoders/decoders (built once).

Schema evolution: new fields get defaults and go last; a field is never retyped or renamed.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Surface = Literal["home", "pdp", "cart"]
EventTypeName = Literal["impression", "click", "add_to_cart", "purchase", "skip", "dwell"]
MAX_SESSION_ID_BYTES = 128  # = engine.eventlog.MAX_TEXT_BYTES (session_id of a logged event)


class RecommendQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """GET /v1/recommendations query parameters (list parameters are comma-separated)."""

    surface: Surface
    user_id: str | None = None
    item_id: str | None = None  # pdp anchor
    cart: list[str] = []  # cart SKUs
    count: int | None = None
    cursor: str | None = None
    recent: list[str] = []  # client-side recent SKUs, most recent last (anonymous shoppers)
    device: str | None = None
    region: str | None = None
    category: str | None = None  # only items under this category path
    price_min: float | None = None
    price_max: float | None = None
    exclude: list[str] = []  # SKUs never to return
    block_brands: list[str] = []  # brands never to return (in addition to the shopper's own)
    block_sellers: list[str] = []
    # Re-ranking: rank exactly these SKUs (e.g. a search engine's results) instead of retrieving.
    # The hard rules still apply; count defaults to all of them (at most limits.max_rank_items).
    candidates: list[str] = []
    # The storefront's session: the experiment unit of a shopper without a user id, and logged
    # with the served slate so analysis can join it with the session's events.
    session_id: str | None = None

    def __post_init__(self) -> None:
        # Here rather than in engine.service.validate_query so GET and POST share it with no
        # settings: the bound is the event log's for session_id, so a session that can be
        # queried can also be logged with its events.
        if self.session_id is not None and not 1 <= len(self.session_id.encode()) <= MAX_SESSION_ID_BYTES:
            raise ValueError(f"'session_id' must be 1-{MAX_SESSION_ID_BYTES} bytes, got {len(self.session_id.encode())}")


class RecommendedItem(msgspec.Struct, frozen=True):
    sku: str
    score: float
    reason: str
    source: str


class RecommendResponse(msgspec.Struct, frozen=True):
    items: list[RecommendedItem]
    bundle: str
    variant: str
    fallback: str | None  # None = full pipeline; else the degradation step used
    request_id: str
    took_ms: float
    next_cursor: str | None = None
    unranked: list[str] = []  # given candidates that are not in the bundle (so could not be ranked)


class ErrorBody(msgspec.Struct, frozen=True):
    error: str  # short machine-readable kind: bad_request, not_found, too_large, invalid, not_ready, ...
    detail: str  # what was wrong and what to do


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    event_id: str
    user_id: str
    sku: str
    type: EventTypeName
    ts: float | None = None  # epoch seconds; default: server receive time
    session_id: str = ""
    surface: str = "other"
    request_id: str = ""
    position: int = -1
    dwell_ms: int = 0
    device: str = ""
    region: str = ""


class EventBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    events: list[Event]


class EventRejection(msgspec.Struct, frozen=True):
    index: int
    event_id: str
    reason: str


class EventsResponse(msgspec.Struct, frozen=True):
    accepted: int
    duplicates: int
    rejected: int
    rejections: list[EventRejection] = []


class Health(msgspec.Struct, frozen=True):
    status: str
    bundle: str | None = None
    pid: int = 0
    detail: str = ""


JSON = msgspec.json.Encoder()
EVENT_BATCH = msgspec.json.Decoder(EventBatch)
