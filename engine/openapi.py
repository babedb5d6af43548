"""The OpenAPI 3.1 document, generated from the msgspec schemas the app actually uses, so the
document cannot drift from the code."""

from __future__ import annotations

from functools import lru_cache

import msgspec

from engine.schemas import ErrorBody, EventBatch, EventsResponse, Health, RecommendQuery, RecommendResponse

_QUERY_DOCS = {
    "surface": "home | pdp | cart",
    "user_id": "the shopper; unknown or absent = cold start",
    "item_id": "pdp: the product being viewed (404 if unknown)",
    "cart": "cart: comma-separated SKUs in the cart",
    "count": "items to return, 1-100 (default 20)",
    "cursor": "next_cursor of the previous page",
    "recent": "comma-separated SKUs the shopper just viewed (most recent last)",
    "device": "device code, e.g. mobile",
    "region": "region code",
    "category": "only items under this category path",
    "price_min": "only items at or above this effective price",
    "price_max": "only items at or below this effective price",
    "exclude": "comma-separated SKUs never to return",
    "block_brands": "comma-separated brands never to return",
    "block_sellers": "comma-separated sellers never to return",
    "candidates": "re-ranking: comma-separated SKUs to rank instead of retrieving (POST a JSON body for long lists); "
    "count defaults to all of them, at most limits.max_rank_items",
    "session_id": "the storefront's session id (1-128 bytes): the experiment unit when there is no user_id, "
    "and logged with the served slate",
}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


# API keys (engine/auth.py): either scheme carries the same key. Which endpoints need one depends on
# the settings (an empty key list leaves them open); the document states the protected setup.
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key from security.api_keys (or read_keys for recommendations)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the same key, in its own header"},
}
KEYED = [{"bearer": []}, {"apiKey": []}]
# Recommendations need a key only when security.read_keys is set: the empty requirement says "or none".
KEYED_OR_OPEN = [*KEYED, {}]
UNAUTHORIZED = "missing or unknown API key (WWW-Authenticate: Bearer)"


def _keyed(operation: dict, security: list[dict]) -> dict:
    return {**operation, "security": security, "responses": {**operation["responses"], "401": _error(UNAUTHORIZED)}}


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    (query, *_), components = msgspec.json.schema_components(
        [RecommendQuery, RecommendResponse, EventBatch, EventsResponse, ErrorBody, Health], ref_template="#/components/schemas/{name}"
    )
    query_schema = components["RecommendQuery"]
    required = set(query_schema.get("required", []))
    parameters = [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": _QUERY_DOCS.get(name, ""),
            "schema": {"type": "string"} if name in ("cart", "recent", "exclude", "block_brands", "block_sellers", "candidates") else schema,
        }
        for name, schema in query_schema["properties"].items()
    ]

    def ok(ref: str, description: str) -> dict:
        return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}

    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Aisle", "version": "1", "description": "Recommendations for storefronts: home, pdp, cart."},
        "paths": {
            "/v1/recommendations": {
                "get": _keyed({
                    "summary": "Recommendations for one surface",
                    "parameters": parameters,
                    "responses": {
                        "200": ok("RecommendResponse", "the slate"),
                        "400": _error("malformed request (missing or unknown parameter)"),
                        "404": _error("unknown anchor item"),
                        "413": _error("too many list entries or too long a query"),
                        "422": _error("invalid value"),
                        "503": _error("no bundle loaded yet"),
                    },
                }, KEYED_OR_OPEN),
                "post": _keyed({
                    "summary": "The same, with the query as a JSON body (lists as arrays): for re-ranking long candidate lists",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RecommendQuery"}}}},
                    "responses": {
                        "200": ok("RecommendResponse", "the slate (for re-ranking: the given items that may be shown, best first)"),
                        "400": _error("not JSON, or a malformed query"),
                        "404": _error("unknown anchor item"),
                        "413": _error("body or a list too large"),
                        "415": _error("not application/json"),
                        "422": _error("invalid value"),
                        "503": _error("no bundle loaded yet"),
                    },
                }, KEYED_OR_OPEN),
            },
            "/v1/events": {
                "post": _keyed({
                    "summary": "A batch of shopper events",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventBatch"}}}},
                    "responses": {
                        "202": ok("EventsResponse", "accepted, duplicated and rejected counts"),
                        "400": _error("not JSON or not an event batch"),
                        "413": _error("body or batch too large"),
                        "415": _error("not application/json"),
                        "503": _error("not ready"),
                    },
                }, KEYED)
            },
            "/healthz": {"get": {"summary": "liveness (never needs a key)", "security": [], "responses": {"200": ok("Health", "alive")}}},
            "/readyz": {"get": {"summary": "readiness (bundle loaded, kernels warm; never needs a key)", "security": [],
                                "responses": {"200": ok("Health", "ready"), "503": ok("Health", "not ready")}}},
            "/metrics": {"get": _keyed({"summary": "Prometheus metrics, summed across workers (keyed when security.protect_metrics)",
                                        "responses": {"200": {"description": "text/plain exposition format 0.0.4"}}}, KEYED_OR_OPEN)},
            "/status": {"get": _keyed({"summary": "status page for people: bundle, live inventory, request rates and latency, drift, experiments (HTML, no-store, no external assets)",
                                       "responses": {"200": {"description": "text/html"}}}, KEYED)},
        },
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }
    return msgspec.json.encode(doc)
