"""The OpenAPI 3.1 document, generated from the msgspec schemas the app actually uses, so the
document cannot drift from the code.

Every route the app answers is here with every status it can answer with: each error status
names the `ErrorBody.error` kinds it carries (engine/errors.py), each 401 its WWW-Authenticate
header, each 429/503 its Retry-After header, and every response its X-Request-Id. Request
parameters and bodies carry the limits the decoders enforce (engine.service.validate_query and
the settings' `limits`), so a client (or a fuzzer, tests/reliability/test_fuzz.py) can tell a
request the server must accept from one it must refuse with a 4xx.

The JSON body states the cross-field rules too (pdp needs item_id, cart needs cart, re-ranking
takes no cursor and a larger count); what the schemas cannot say is in the descriptions: those
rules for the query string, byte (not character) lengths of ids, and the query string and body
size limits. `openapi_document(settings)` follows a server's settings (its limits, and which
routes its keys guard); without settings it describes the default limits with every route that
can need a key marked as keyed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, NamedTuple

import msgspec

from artifacts.featurespec import SOURCE_NAMES
from artifacts.schema import SURFACE_NAMES
from engine.errors import (
    BadRequest,
    Invalid,
    NotFound,
    NotReady,
    Overloaded,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from engine.schemas import MAX_SESSION_ID_BYTES, ErrorBody, EventBatch, EventsResponse, Health, RecommendQuery, RecommendResponse
from engine.settings import LimitSettings, Settings

# = engine.eventlog's per-event bounds (MAX_EVENT_ID_CHARS, MAX_ID_BYTES, MAX_TEXT_BYTES). They
# are only described, not constrained: an event that breaks one is rejected on its own inside a
# 202 (`rejections`), not with a 4xx for the batch, and the schema says what gets a 4xx.
_EVENT_DOCS = {
    "event_id": "the client's id of the event, 1-128 characters; a repeated id is counted as a duplicate, not stored twice",
    "user_id": "the shopper, 1-64 bytes (UTF-8)",
    "sku": "the item, 1-64 bytes (UTF-8)",
    "type": "what the shopper did",
    "ts": "epoch seconds, not in the future; absent: the time the server received the batch",
    "session_id": "the storefront's session id, at most 128 bytes",
    "surface": f"{' | '.join(SURFACE_NAMES)}: where the shopper saw the item",
    "request_id": "request_id of the slate the item was shown in (joins the event to its slate), at most 128 bytes",
    "position": "0-based slot in that slate (up to 32767); -1: not from a slate",
    "dwell_ms": "dwell events: milliseconds on the item page, ≥ 0",
    "device": "device code, at most 128 bytes",
    "region": "region code, at most 128 bytes",
}

LIST_PARAMETERS = ("cart", "recent", "exclude", "block_brands", "block_sellers", "candidates")


def _query_properties(lim: LimitSettings) -> dict[str, dict[str, Any]]:
    """The schema of each RecommendQuery field, without null, with the limits of `lim`: the GET
    query parameters and the POST body share them."""
    ident = {"type": "string", "minLength": 1, "maxLength": lim.max_id_bytes}
    # Character counts bound byte counts from below only; the byte limit is in the descriptions.
    entry = {"type": "string", "maxLength": lim.max_id_bytes}

    def listed(limit: int) -> dict[str, Any]:
        return {"type": "array", "items": entry, "maxItems": limit}

    count_max = max(lim.max_count, lim.max_rank_items)
    return {
        "surface": {"type": "string", "enum": ["home", "pdp", "cart"], "description": "home | pdp | cart"},
        "user_id": {**ident, "description": f"the shopper, 1-{lim.max_id_bytes} bytes; unknown or absent = cold start"},
        "item_id": {**ident, "description": f"pdp (required there): the product being viewed, 1-{lim.max_id_bytes} bytes (404 if unknown)"},
        "cart": {**listed(lim.max_cart_items), "description": f"cart (required there): SKUs in the cart, at most {lim.max_cart_items} "
                 "(404 if none is known)"},
        "count": {"type": "integer", "minimum": 1, "maximum": count_max,
                  "description": f"items to return: 1-{lim.max_count} (default {lim.default_count}); when re-ranking 1-{lim.max_rank_items} "
                  "(default: all given items)"},
        "cursor": {"type": "string", "pattern": r"^c1\.[0-9]+$",
                   "description": f"next_cursor of the previous page (not with candidates); at most {lim.max_cursor_offset} items deep"},
        "recent": {**listed(lim.max_recent_items), "description": f"SKUs the shopper just viewed, most recent last, at most {lim.max_recent_items}"},
        "device": {"type": "string", "description": "device code, e.g. mobile (an unknown code is ignored)"},
        "region": {"type": "string", "description": "region code (an unknown code is ignored)"},
        "category": {"type": "string", "description": "only items under this category path (422 if the catalog has no such category)"},
        "price_min": {"type": "number", "minimum": 0, "description": "only items at or above this effective price (finite, ≤ price_max)"},
        "price_max": {"type": "number", "minimum": 0, "description": "only items at or below this effective price (finite)"},
        "exclude": {**listed(lim.max_filter_items), "description": f"SKUs never to return, at most {lim.max_filter_items}"},
        "block_brands": {**listed(lim.max_filter_items), "description": f"brands never to return, at most {lim.max_filter_items}"},
        "block_sellers": {**listed(lim.max_filter_items), "description": f"sellers never to return, at most {lim.max_filter_items}"},
        "candidates": {**listed(lim.max_rank_items), "description": f"re-ranking: SKUs to rank instead of retrieving, at most "
                       f"{lim.max_rank_items}; unknown ones come back in `unranked`"},
        "session_id": {"type": "string", "minLength": 1, "maxLength": MAX_SESSION_ID_BYTES,
                       "description": f"the storefront's session id, 1-{MAX_SESSION_ID_BYTES} bytes: the experiment unit when there "
                       "is no user_id, and logged with the served slate"},
    }


def _with_limits(generated: dict[str, Any], limited: dict[str, Any]) -> dict[str, Any]:
    """msgspec's schema of a field with `limited` in place of its type; an optional field stays
    nullable (a JSON body may send null) and every field keeps its default."""
    out = {k: v for k, v in generated.items() if k not in ("anyOf", "type", "items", "enum")}
    description = limited.get("description")
    limited = {k: v for k, v in limited.items() if k != "description"}
    if any(branch == {"type": "null"} for branch in generated.get("anyOf", ())):
        out["anyOf"] = [limited, {"type": "null"}]
    else:
        out.update(limited)
    if description:
        out["description"] = description
    return out


# Which error kinds each status carries (engine/errors.py): the response schemas name them, so a
# body with the wrong kind for its status breaks the document.
_KINDS = {
    400: [BadRequest.kind],
    401: [Unauthorized.kind],
    404: [NotFound.kind],
    413: [TooLarge.kind],
    415: [UnsupportedMediaType.kind],
    422: [Invalid.kind],
    429: [TooManyRequests.kind],
    503: [NotReady.kind, Overloaded.kind],
}

_REQUEST_ID = {"$ref": "#/components/headers/X-Request-Id"}
_RETRY_AFTER = {"$ref": "#/components/headers/Retry-After"}
_HEADERS = {
    "X-Request-Id": {"description": "the request's id: the client's X-Request-Id, else a new one (also in the server log)",
                     "required": True, "schema": {"type": "string", "minLength": 1}},
    "Retry-After": {"description": "seconds to wait before retrying", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "WWW-Authenticate": {"description": "the scheme to authenticate with", "required": True, "schema": {"type": "string", "const": "Bearer"}},
}


def _error(status: int, description: str, kinds: list[str] | None = None) -> dict[str, Any]:
    """A JSON ErrorBody answer whose `error` is one of `kinds` (default: every kind of `status`)."""
    schema = {"allOf": [{"$ref": "#/components/schemas/ErrorBody"}, {"properties": {"error": {"enum": kinds or _KINDS[status]}}}]}
    headers: dict[str, Any] = {"X-Request-Id": _REQUEST_ID}
    if status in (429, 503):
        headers["Retry-After"] = _RETRY_AFTER
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    return {"description": description, "headers": headers, "content": {"application/json": {"schema": schema}}}


def _ok(ref: str, description: str, **headers: Any) -> dict[str, Any]:
    return {"description": description, "headers": {"X-Request-Id": _REQUEST_ID, **headers},
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "headers": {"X-Request-Id": _REQUEST_ID}, "content": {media_type: {"schema": {"type": "string"}}}}


# API keys (engine/auth.py): either scheme carries the same key. Which endpoints need one depends on
# the settings (engine.auth.Guard): a document for given settings says exactly that; without
# settings it states the protected setup, where reads and /metrics may or may not need one.
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key from security.api_keys (or read_keys for recommendations)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the same key, in its own header"},
}
KEYED = [{"bearer": []}, {"apiKey": []}]
# Recommendations need a key only when security.read_keys is set (and /metrics only with
# security.protect_metrics): the empty requirement says "or none".
KEYED_OR_OPEN = [*KEYED, {}]
UNAUTHORIZED = "missing or unknown API key (WWW-Authenticate: Bearer)"
RATE_LIMITED = "this API key is over its rate limit (security.rate_limit_per_s / rate_limits); Retry-After says when to retry"

Requirement = Literal["open", "keyed", "keyed_or_open"]
SECURITY: dict[str, list[dict]] = {"open": [], "keyed": KEYED, "keyed_or_open": KEYED_OR_OPEN}


class Access(NamedTuple):
    """Whether each guarded group of routes needs a key (= engine.auth.Guard's rings)."""

    reads: Requirement  # recommendations
    writes: Requirement  # events, /status
    metrics: Requirement

    @classmethod
    def of(cls, settings: Settings | None) -> Access:
        if settings is None:
            return cls("keyed_or_open", "keyed", "keyed_or_open")
        sec = settings.security
        return cls(
            reads="keyed" if sec.read_keys else "open",
            writes="keyed" if sec.api_keys else "open",
            metrics="keyed" if sec.protect_metrics and sec.api_keys else "open",
        )


# Granian refuses a request line longer than its HTTP parser takes (a URI over 65,534 bytes) with an
# empty 414 before the app sees the request, so this answer alone has no JSON body and no
# X-Request-Id. Any path can get it; the app's own limit on query strings (413) is far lower.
URI_TOO_LONG = {"description": "a URI over 65,534 bytes, refused by the HTTP server before the app: empty body"}


def _operation(operation: dict) -> dict:
    return {**operation, "responses": dict(sorted({**operation["responses"], "414": URI_TOO_LONG}.items()))}


def _keyed(operation: dict, requirement: Requirement) -> dict:
    if requirement == "open":  # a route that never asks for a key never refuses one
        return {**operation, "security": []}
    # Keys are checked before anything else about the request, and a known key may be rate limited.
    responses = {**operation["responses"], "401": _error(401, UNAUTHORIZED), "429": _error(429, RATE_LIMITED)}
    return {**operation, "security": SECURITY[requirement], "responses": responses}


def openapi_document(settings: Settings | None = None) -> bytes:
    """The document of a server with these settings: their limits, and which routes their keys
    guard. None: the default limits, and every route that can need a key marked as one that may."""
    return _document(settings.limits if settings is not None else LimitSettings(), Access.of(settings))


@lru_cache(maxsize=8)
def _document(lim: LimitSettings, access: Access) -> bytes:
    _, components = msgspec.json.schema_components(
        [RecommendQuery, RecommendResponse, EventBatch, EventsResponse, ErrorBody, Health], ref_template="#/components/schemas/{name}"
    )
    properties = _query_properties(lim)
    body = components["RecommendQuery"]
    body["properties"] = {name: _with_limits(schema, properties[name]) for name, schema in body["properties"].items()}
    body["description"] = ("The query of GET /v1/recommendations as a JSON object, lists as arrays. "
                           f"The whole body is at most {lim.max_body_bytes} bytes.")
    # The cross-field rules of engine.service.validate_query (400 when broken). A query string
    # cannot say them in OpenAPI; a JSON body can.
    body["allOf"] = [
        {"if": {"properties": {"surface": {"const": "pdp"}}},
         "then": {"required": ["item_id"], "properties": {"item_id": {"type": "string", "minLength": 1}}}},
        {"if": {"properties": {"surface": {"const": "cart"}}},
         "then": {"required": ["cart"], "properties": {"cart": {"minItems": 1}}}},
        # Re-ranking (candidates given): no cursor, count up to max_rank_items; else up to max_count.
        {"if": {"required": ["candidates"], "properties": {"candidates": {"minItems": 1}}},
         "then": {"properties": {"cursor": {"type": "null"}}},
         "else": {"properties": {"count": {"anyOf": [{"type": "integer", "maximum": lim.max_count}, {"type": "null"}]}}}},
    ]
    required = set(body.get("required", []))
    parameters = []
    for name in body["properties"]:
        schema = dict(properties[name])
        parameter = {"name": name, "in": "query", "required": name in required, "description": schema.pop("description")}
        if name in LIST_PARAMETERS:
            # `cart=A,B,C`: one parameter, entries separated by commas (blank entries are dropped).
            parameter |= {"style": "form", "explode": False}
        parameters.append({**parameter, "schema": schema})

    batch = components["EventBatch"]
    batch["properties"]["events"]["maxItems"] = lim.max_events_per_batch
    batch["description"] = (f"At most {lim.max_events_per_batch} events and {lim.max_body_bytes} bytes. An event that breaks a "
                            "per-event rule below is rejected on its own (listed in the answer's `rejections`), the rest are stored.")
    for name, schema in components["Event"]["properties"].items():
        schema["description"] = _EVENT_DOCS[name]
    components["RecommendedItem"]["properties"]["source"]["enum"] = sorted(SOURCE_NAMES)
    components["RecommendResponse"]["properties"]["next_cursor"]["description"] = "the cursor of the next page; null on the last page and when re-ranking"
    components["RecommendResponse"]["properties"]["fallback"]["description"] = "null: the full pipeline; else the first degradation step taken"
    components["Health"]["properties"]["status"]["enum"] = ["ok", "ready", "not_ready"]
    components["ErrorBody"]["description"] = "Every error: `error` is the kind (one per status), `detail` says what was wrong and what to do."

    recommendation_errors = {
        "404": _error(404, "pdp: unknown item_id; cart: none of the cart's SKUs is known"),
        "413": _error(413, f"too many entries in a list, or a query string over {lim.max_query_bytes} bytes"),
        "422": _error(422, "a value out of range or of the wrong type (count, cursor depth, prices, id lengths, category, surface)"),
        "503": _error(503, "no bundle loaded yet (not_ready), or the worker is overloaded (overloaded): retry after Retry-After"),
    }
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Aisle", "version": "1", "description": "Recommendations for storefronts: home, pdp, cart. Any other method on "
                 "a path is answered 405 and any other path 404, both with an ErrorBody."},
        "paths": {
            "/v1/recommendations": {
                "get": _keyed({
                    "summary": "Recommendations for one surface",
                    "operationId": "recommend",
                    "parameters": parameters,
                    "responses": {
                        "200": _ok("RecommendResponse", "the slate"),
                        "400": _error(400, "a missing, unknown or repeated parameter, a query string that is not UTF-8, a cursor this API "
                                      "did not return, or a cross-field rule broken (pdp needs item_id, cart needs cart, no cursor with candidates)"),
                        **recommendation_errors,
                    },
                }, access.reads),
                "post": _keyed({
                    "summary": "The same, with the query as a JSON body (lists as arrays): for re-ranking long candidate lists",
                    "operationId": "recommendPost",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RecommendQuery"}}}},
                    "responses": {
                        "200": _ok("RecommendResponse", "the slate (for re-ranking: the given items that may be shown, best first)"),
                        "400": _error(400, "not JSON, a missing or unknown field, a cursor this API did not return, or a cross-field rule broken"),
                        **recommendation_errors,
                        "413": _error(413, f"a body over {lim.max_body_bytes} bytes, or too many entries in a list"),
                        "415": _error(415, "not application/json"),
                    },
                }, access.reads),
            },
            "/v1/events": {
                "post": _keyed({
                    "summary": "A batch of shopper events",
                    "operationId": "postEvents",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventBatch"}}}},
                    "responses": {
                        "202": _ok("EventsResponse", "stored (fsynced): accepted, duplicated and rejected counts"),
                        "400": _error(400, "not JSON, or not an event batch (a missing or unknown field, a wrong type)"),
                        "413": _error(413, f"a body over {lim.max_body_bytes} bytes, or over {lim.max_events_per_batch} events"),
                        "415": _error(415, "not application/json"),
                        "503": _error(503, "the event log cannot store the batch now (storage_unavailable: its map or disk is full), the worker is overloaded (overloaded) or not started (not_ready): nothing was stored, retry after Retry-After"),
                    },
                }, access.writes)
            },
            "/healthz": {"get": {"summary": "liveness (never needs a key)", "operationId": "healthz", "security": [],
                                 "responses": {"200": _ok("Health", "alive (status ok)")}}},
            "/readyz": {"get": {"summary": "readiness (bundle loaded, kernels warm; never needs a key)", "operationId": "readyz", "security": [],
                                "responses": {"200": _ok("Health", "ready; detail names degraded parts"),
                                              "503": _ok("Health", "not ready; detail says why", **{"Retry-After": _RETRY_AFTER})}}},
            "/metrics": {"get": _keyed({"summary": "Prometheus metrics, summed across workers (keyed when security.protect_metrics)",
                                        "operationId": "metrics",
                                        "responses": {"200": _text("text/plain", "Prometheus text exposition format 0.0.4"),
                                                      "503": _error(503, "metrics are not initialised yet", [NotReady.kind])}}, access.metrics)},
            "/status": {"get": _keyed({"summary": "status page for people: bundle, live inventory, request rates and latency, drift, experiments (HTML, no-store, no external assets)",
                                       "operationId": "status",
                                       "responses": {"200": _text("text/html", "the page"),
                                                     "503": _error(503, "metrics are not initialised yet", [NotReady.kind])}}, access.writes)},
            "/openapi.json": {"get": {"summary": "this document (never needs a key)", "operationId": "openapi", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1", "headers": {"X-Request-Id": _REQUEST_ID},
                                                            "content": {"application/json": {"schema": {"type": "object", "required": ["openapi", "paths"]}}}}}}},
        },
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES, "headers": _HEADERS},
    }
    doc["paths"] = {path: {method: _operation(op) for method, op in item.items()} for path, item in doc["paths"].items()}
    return msgspec.json.encode(doc)
