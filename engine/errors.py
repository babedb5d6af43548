"""API errors: each carries its HTTP status, a short kind and a detail that says what was wrong
and what to do. engine.app maps them (and only them) to JSON error responses; anything else is a
500 with a generic body, logged, never a traceback on the wire."""

from __future__ import annotations


class ApiError(Exception):
    status = 500
    kind = "internal"
    headers: tuple[tuple[bytes, bytes], ...] = ()  # extra response headers this kind of error carries

    def __init__(self, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(ApiError):
    status, kind = 400, "bad_request"


class Unauthorized(ApiError):
    status, kind = 401, "unauthorized"
    headers = ((b"www-authenticate", b"Bearer"),)


class NotFound(ApiError):
    status, kind = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, kind = 405, "method_not_allowed"


class TooLarge(ApiError):
    status, kind = 413, "too_large"


class UnsupportedMediaType(ApiError):
    status, kind = 415, "unsupported_media_type"


class Invalid(ApiError):
    status, kind = 422, "invalid"


class TooManyRequests(ApiError):
    status, kind = 429, "rate_limited"


class Overloaded(ApiError):
    """The worker is behind: answered at once rather than late (engine/overload.py)."""

    status, kind = 503, "overloaded"


class StorageFull(ApiError):
    """The event log could not make a batch durable (its map or its disk is full, or a write
    failed): nothing of the batch was stored."""

    status, kind = 503, "storage_unavailable"


class NotReady(ApiError):
    status, kind = 503, "not_ready"
