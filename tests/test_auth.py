"""API keys (engine/auth.py): the rules per endpoint against a real server, constant-structure
comparison, header parsing, and the settings that refuse weak or repeated keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import engine.auth
from engine.auth import Guard, KeyRing, presented_key
from engine.errors import Unauthorized
from engine.eventlog import EventLog
from engine.settings import SecuritySettings, SettingsError, load
from tests._server import Server

WRITE_KEY = "write-key-0123456789abcdef"
OTHER_WRITE_KEY = "write-key-fedcba9876543210"
READ_KEY = "read-key-storefront-0001"
WRONG_KEY = "wrong-key-NEVER-ECHOED-4711"

SETTINGS = f"""
[security]
api_keys = ["{WRITE_KEY}", "{OTHER_WRITE_KEY}"]
read_keys = ["{READ_KEY}"]
protect_metrics = true
"""


def _event(event_id: str) -> dict:
    return {"events": [{"event_id": event_id, "user_id": "u-auth", "sku": "SKU-X", "type": "impression"}]}


# -- unit: key ring, header parsing, guard ---------------------------------------------------------
def test_ring_admits_exactly_its_keys() -> None:
    ring = KeyRing([WRITE_KEY, OTHER_WRITE_KEY])
    assert ring.admits(WRITE_KEY) and ring.admits(OTHER_WRITE_KEY)
    assert not ring.admits(WRITE_KEY[:-1] + "X")  # differs only in the last character
    assert not ring.admits(WRITE_KEY + "0")  # another length
    assert not ring.admits(WRITE_KEY[:8])
    assert not ring.admits("") and not ring.admits(None)


def test_empty_ring_is_open() -> None:
    ring = KeyRing([])
    assert ring.open and ring.admits(None) and ring.admits("anything")


def test_every_key_is_compared_the_same_way_whatever_is_presented(monkeypatch: pytest.MonkeyPatch) -> None:
    """A near miss, a key of another length, a missing key and a right key all go through the same
    comparisons: one compare_digest per configured key, on 32-byte digests, no early exit."""
    calls: list[tuple[int, int]] = []
    real = engine.auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(engine.auth.hmac, "compare_digest", spy)
    ring = KeyRing([WRITE_KEY, OTHER_WRITE_KEY, READ_KEY])
    traces = []
    for presented in (WRITE_KEY[:-1] + "X", "short", WRITE_KEY * 3, None, WRITE_KEY, READ_KEY):
        calls.clear()
        ring.admits(presented)
        traces.append(list(calls))
    assert all(trace == [(32, 32)] * 3 for trace in traces), traces


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"authorization", f"Bearer {WRITE_KEY}".encode())], WRITE_KEY),
        ([(b"authorization", f"bearer  {WRITE_KEY} ".encode())], WRITE_KEY),
        ([(b"x-api-key", WRITE_KEY.encode())], WRITE_KEY),
        ([(b"authorization", b"Basic dXNlcjpwYXNz"), (b"x-api-key", WRITE_KEY.encode())], WRITE_KEY),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], None),
        ([(b"authorization", b"Bearer ")], None),
        ([(b"x-api-key", b"")], None),
        ([], None),
    ],
)
def test_key_is_read_from_bearer_or_x_api_key(headers: list[tuple[bytes, bytes]], key: str | None) -> None:
    assert presented_key(headers) == key


def test_refusal_never_contains_the_presented_key() -> None:
    guard = Guard(SecuritySettings(api_keys=[WRITE_KEY]))
    with pytest.raises(Unauthorized) as caught:
        guard.require(guard.writes, [(b"x-api-key", WRONG_KEY.encode())])
    assert caught.value.status == 401 and (b"www-authenticate", b"Bearer") in caught.value.headers
    assert WRONG_KEY not in caught.value.detail and "missing or unknown API key" in caught.value.detail


def test_reads_open_until_read_keys_are_set() -> None:
    guard = Guard(SecuritySettings(api_keys=[WRITE_KEY]))
    assert guard.reads.open and guard.metrics.open and not guard.writes.open
    guard = Guard(SecuritySettings(api_keys=[WRITE_KEY], read_keys=[READ_KEY], protect_metrics=True))
    assert guard.reads.admits(READ_KEY) and guard.reads.admits(WRITE_KEY)
    assert not guard.writes.admits(READ_KEY)  # a storefront's read key cannot write events
    assert guard.metrics.admits(WRITE_KEY) and not guard.metrics.admits(READ_KEY)


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("security", "says"),
    [
        ('api_keys = ["short-key"]', "at least 16"),
        ('api_keys = ["has a space in the middle"]', "printable ASCII without spaces"),
        ('api_keys = ["non-ascii-key-\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"]', "printable ASCII"),
        (f'api_keys = ["{WRITE_KEY}", "{WRITE_KEY}"]', "list each key once"),
        (f'api_keys = ["{WRITE_KEY}"]\nread_keys = ["{WRITE_KEY}"]', "list each key once"),
        ("protect_metrics = true", "protect_metrics needs"),
    ],
)
def test_settings_refuse_weak_or_repeated_keys(tmp_path: Path, security: str, says: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f"[security]\n{security}\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=says) as caught:
        load(path)
    for key in ("short-key", "has a space", WRITE_KEY):
        assert key not in str(caught.value)  # keys are named by position, never by value


def test_settings_accept_good_keys(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(SETTINGS)
    sec = load(path).security
    assert sec.api_keys == [WRITE_KEY, OTHER_WRITE_KEY] and sec.read_keys == [READ_KEY] and sec.protect_metrics


# -- a real server with keys -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tiny_bundle, tmp_path_factory.mktemp("state-keyed"), workers=1, settings_toml=SETTINGS)
    try:
        srv.wait_ready(workers=1)
        yield srv
    finally:
        srv.stop()


def _post_events(srv: Server, doc: dict, headers: dict[str, str]) -> tuple[int, dict, dict]:
    reply = srv.request("POST", "/v1/events", json.dumps(doc).encode(), {"content-type": "application/json", **headers})
    return reply.status, reply.json(), reply.headers


@pytest.mark.slow
def test_keyed_server_enforces_keys_per_endpoint(keyed: Server) -> None:
    # Events: no key, a wrong key, a read key → 401, nothing stored.
    for headers in ({}, {"authorization": f"Bearer {WRONG_KEY}"}, {"x-api-key": WRONG_KEY}, {"x-api-key": READ_KEY},
                    {"authorization": f"Basic {WRITE_KEY}"}):
        status, body, reply_headers = _post_events(keyed, _event("refused"), headers)
        assert status == 401, headers
        assert body["error"] == "unauthorized" and "missing or unknown API key" in body["detail"]
        assert reply_headers["www-authenticate"] == "Bearer"
        assert WRONG_KEY not in json.dumps(body) and WRITE_KEY not in json.dumps(body)
    # With either header form → 202 and stored.
    status, body, _ = _post_events(keyed, _event("bearer-1"), {"authorization": f"Bearer {WRITE_KEY}"})
    assert status == 202 and body["accepted"] == 1
    status, body, _ = _post_events(keyed, _event("apikey-1"), {"x-api-key": OTHER_WRITE_KEY})
    assert status == 202 and body["accepted"] == 1

    # /status and /metrics (protect_metrics) need an api key; a read key is not enough.
    for path in ("/status", "/metrics"):
        assert keyed.get(path).status == 401
        assert keyed.request("GET", path, headers={"x-api-key": READ_KEY}).status == 401
        assert keyed.request("GET", path, headers={"authorization": f"Bearer {WRITE_KEY}"}).status == 200
    # Load balancers and tooling need none.
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert keyed.get(path).status == 200, path

    # Recommendations: read_keys are set, so a key from read_keys or api_keys is needed.
    refused = keyed.recommend(surface="home", user_id="u-auth")
    assert refused.status == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert keyed.request("POST", "/v1/recommendations", b'{"surface": "home"}', {"content-type": "application/json"}).status == 401
    for headers in ({"x-api-key": READ_KEY}, {"authorization": f"Bearer {WRITE_KEY}"}):
        reply = keyed.request("GET", "/v1/recommendations?surface=home&user_id=u-auth&count=5", headers=headers)
        assert reply.status == 200 and len(reply.json()["items"]) == 5
    body = keyed.request("POST", "/v1/recommendations", b'{"surface": "home", "count": 3}',
                         {"content-type": "application/json", "x-api-key": READ_KEY})
    assert body.status == 200

    # The refused recommendations are counted as 401s.
    text = keyed.request("GET", "/metrics", headers={"x-api-key": WRITE_KEY}).body.decode()
    counted = [line for line in text.splitlines() if line.startswith("aisle_requests_total{") and 'status="401"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 2, counted

    # The document says which paths need a key.
    doc = keyed.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "401" in doc["paths"]["/v1/events"]["post"]["responses"] and doc["paths"]["/healthz"]["get"]["security"] == []

    keyed.stop()
    log = (keyed.state / "server.log").read_text(errors="replace")
    for key in (WRONG_KEY, WRITE_KEY, OTHER_WRITE_KEY, READ_KEY):
        assert key not in log
    assert "security.api_keys is empty" not in log
    events = EventLog(keyed.state, readonly=True)
    try:
        assert events.last_seq() == 2  # the two authorised events; none of the refused ones
    finally:
        events.close()


@pytest.mark.slow
def test_server_without_keys_is_open_and_warns_once(tiny_bundle: Path, tmp_path: Path) -> None:
    srv = Server(tiny_bundle, tmp_path / "state", workers=1)
    try:
        srv.wait_ready(workers=1)
        assert srv.post_json("/v1/events", _event("open-1")).status == 202
        assert srv.get("/status").status == 200 and srv.get("/metrics").status == 200
        assert srv.recommend(surface="home", count=3).status == 200
    finally:
        srv.stop()
    log = (tmp_path / "state" / "server.log").read_text(errors="replace")
    assert log.count("security.api_keys is empty") == 1, log[-2000:]
