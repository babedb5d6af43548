"""The storefront's side of the HTTP API: one keep-alive connection per simulator thread.

`Storefront.recommend` asks for a slate, `Storefront.post_events` sends a batch of events; both
decode the engine's own Structs (engine.schemas), retry a 503 after its Retry-After (capped: a
simulation should not stall for long) and reconnect after a dropped connection. Every answer is
reported to a `Tally` (status counts, retries, latency), so nothing fails silently.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import msgspec

from engine.schemas import Event, EventBatch, EventsResponse, RecommendResponse

_RESPONSE = msgspec.json.Decoder(RecommendResponse)
_EVENTS_RESPONSE = msgspec.json.Decoder(EventsResponse)
_ENCODE = msgspec.json.Encoder().encode
JSON_HEADERS = {"content-type": "application/json"}


class StorefrontError(RuntimeError):
    """The engine could not be reached, or is not ready, within the time allowed."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    prefix: str  # path prefix before /v1/... ("" usually)

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host:port URL of the engine, got {url!r}")
        return cls(parts.hostname, parts.port or 80, parts.path.rstrip("/"))


@dataclass
class Answer:
    status: int  # HTTP status; 0 = no answer (connection failed every time)
    body: bytes
    seconds: float  # wall time of the last attempt
    retries: int
    headers: dict[str, str]
    problem: str = ""  # a success status whose body could not be decoded: what was wrong

    @property
    def label(self) -> str:
        """How the answer is counted: its status, or "invalid" for an undecodable success."""
        return "invalid" if self.problem else str(self.status)


class Storefront:
    """One HTTP/1.1 keep-alive connection (not thread-safe: one per thread)."""

    def __init__(self, url: str, *, timeout_s: float = 30.0, max_retries: int = 5, max_backoff_s: float = 2.0) -> None:
        self.endpoint = Endpoint.parse(url)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.endpoint.host, self.endpoint.port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        """One request, retried on 503 (after Retry-After, capped) and on a dropped connection."""
        retries = 0
        while True:
            started = time.perf_counter()
            try:
                conn = self._connection()
                conn.request(method, self.endpoint.prefix + path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                answer = Answer(resp.status, data, time.perf_counter() - started, retries, {k.lower(): v for k, v in resp.getheaders()})
                if resp.will_close:
                    self.close()
            except (OSError, http.client.HTTPException):
                # Keep-alive connection closed by the server (restart, idle timeout): reconnect.
                self.close()
                if retries >= self.max_retries:
                    return Answer(0, b"", time.perf_counter() - started, retries, {})
                retries += 1
                time.sleep(min(0.05 * 2**retries, self.max_backoff_s))
                continue
            if answer.status != 503 or retries >= self.max_retries:
                return answer
            retries += 1
            time.sleep(min(_retry_after(answer.headers), self.max_backoff_s))

    def recommend(self, params: dict[str, object]) -> tuple[Answer, RecommendResponse | None]:
        query = urlencode({k: v for k, v in params.items() if v is not None and v != ""})
        answer = self.request("GET", f"/v1/recommendations?{query}")
        if answer.status != 200:
            return answer, None
        try:
            return answer, _RESPONSE.decode(answer.body)
        except msgspec.DecodeError as exc:
            answer.problem = f"recommendation body: {exc}"
            return answer, None

    def post_events(self, events: Sequence[Event]) -> tuple[Answer, EventsResponse | None]:
        answer = self.request("POST", "/v1/events", _ENCODE(EventBatch(list(events))), JSON_HEADERS)
        if answer.status != 202:
            return answer, None
        try:
            return answer, _EVENTS_RESPONSE.decode(answer.body)
        except msgspec.DecodeError as exc:
            answer.problem = f"events answer: {exc}"
            return answer, None

    def ready(self) -> tuple[int, dict]:
        """(status, body) of GET /readyz on a fresh connection (so a multi-worker server answers
        from whichever worker takes it)."""
        conn = http.client.HTTPConnection(self.endpoint.host, self.endpoint.port, timeout=self.timeout_s)
        try:
            conn.request("GET", self.endpoint.prefix + "/readyz")
            resp = conn.getresponse()
            data = resp.read()
            try:
                return resp.status, json.loads(data or b"{}")
            except ValueError:
                return resp.status, {}
        finally:
            conn.close()


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return max(0.05, float(headers.get("retry-after", "0.5")))
    except ValueError:
        return 0.5


def wait_ready(url: str, *, timeout_s: float = 120.0, need_inventory: bool = False) -> str:
    """Poll /readyz until the engine answers 200 (and, with `need_inventory`, serves live
    inventory, not the bundle's stock flags). Returns the bundle id. Raises StorefrontError."""
    front = Storefront(url, timeout_s=5.0)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = front.ready()
            last = f"{status} {body}"
            if status == 200 and not (need_inventory and "live inventory" in str(body.get("detail", ""))):
                return str(body.get("bundle") or "")
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise StorefrontError(f"the engine at {url} is not ready after {timeout_s:g}s (last answer: {last})")
