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
                "get": {
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
                },
                "post": {
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
                },
            },
            "/v1/events": {
                "post": {
                    "summary": "A batch of shopper events",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventBatch"}}}},
                    "responses": {
                        "202": ok("EventsResponse", "accepted, duplicated and rejected counts"),
                        "400": _error("not JSON or not an event batch"),
                        "413": _error("body or batch too large"),
                        "415": _error("not application/json"),
                        "503": _error("not ready"),
                    },
                }
            },
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": ok("Health", "alive")}}},
            "/readyz": {"get": {"summary": "readiness (bundle loaded, kernels warm)", "responses": {"200": ok("Health", "ready"), "503": ok("Health", "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics, summed across workers", "responses": {"200": {"description": "text/plain exposition format 0.0.4"}}}},
            "/status": {"get": {"summary": "status page for people: bundle, live inventory, request rates and latency, drift, experiments (HTML, no-store, no external assets)",
                                "responses": {"200": {"description": "text/html"}}}},
        },
        "components": {"schemas": components},
    }
    return msgspec.json.encode(doc)
