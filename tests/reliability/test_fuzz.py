"""Bad input (issue 8): property-based fuzzing of the real server against its own OpenAPI document.

A real `aisle serve` (Granian, 2 workers, the tiny bundle) with API keys on every endpoint that
can take one. Schemathesis loads the document from the server's own /openapi.json and runs its
phases over every operation: the examples, the coverage phase (boundary values and, in negative
mode, every way to break each parameter and body: missing and wrong-typed fields, out-of-range
numbers, too-long strings and lists, undeclared methods) and Hypothesis fuzzing of positive and
negative data. Every response is checked: never a 5xx, a status the document lists for the
operation, the documented content type, a body that matches the documented schema, the
documented headers, and that an operation needing a key refuses requests without one.

Two passes: one with the server's API key, so every operation is exercised past the 401, and one
without any key, where every keyed operation must answer its documented 401 (and the open ones
must still answer). Generation is derandomized with a fixed seed, so a run sends the same
requests every time; AISLE_SOAK=1 sends many more (SOAK.scale).

A failure lists every distinct problem found, each with a curl command that reproduces it.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from engine.openapi import openapi_document
from engine.settings import LimitSettings, SecuritySettings, Settings
from tests._server import Server
from tests.reliability._soak import SOAK, report

pytestmark = pytest.mark.slow

KEY = "fuzz-write-key-0123456789abcdef"
READ_KEY = "fuzz-read-key-0123456789abcdef"
# Every endpoint that can need a key needs one here (read_keys makes recommendations keyed,
# protect_metrics /metrics), so the unauthenticated pass meets a 401 on each of them.
# Overload shedding is off: on a small shared machine a descheduled worker can see its loop late
# and answer 503 "overloaded" to a perfectly good request; that is shedding working as designed
# (tested on its own), not bad input handled badly, and would make this test flaky.
SETTINGS = f"""
[security]
api_keys = ["{KEY}"]
read_keys = ["{READ_KEY}"]
protect_metrics = true

[limits]
max_queue_delay_ms = 0
"""

OPERATIONS = {
    "GET /v1/recommendations",
    "POST /v1/recommendations",
    "POST /v1/events",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /status",
    "GET /openapi.json",
}
OPEN = {"GET /healthz", "GET /readyz", "GET /openapi.json"}

# The checks run on every response (schemathesis' names).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",  # a keyed operation answers 401 without a key, and with a wrong one
    "negative_data_rejection",  # input the document rules out gets a 4xx (the statuses: in fuzz())
    "unsupported_method",  # a method the path does not take: 405 with an Allow header
    "allow_header_conformance",  # ... listing exactly the documented methods
)
SEED = 20261202


@dataclass
class Tally:
    """What one schemathesis run sent and saw."""

    examples: collections.Counter[str] = field(default_factory=collections.Counter)  # requests per operation
    statuses: dict[str, collections.Counter[int]] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    failures: dict[tuple[str, ...], str] = field(default_factory=dict)  # distinct problem -> how to reproduce it
    errors: list[str] = field(default_factory=list)  # the run itself went wrong (schema, network)
    seconds: float = 0.0

    def classes(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for counts in self.statuses.values():
            for status, n in counts.items():
                out[f"{status // 100}xx"] += n
        return out


def store_values(bundle_root: Path, per_kind: int = 40) -> dict[str, list[str]]:
    """Ids the served bundle knows (SKUs, shoppers, categories, brands, sellers, regions, devices),
    evenly spaced: fuzzed requests often draw on them (BINDINGS), so they get past "unknown item"
    into the pipeline with the rest of their input still malformed or extreme."""
    from artifacts.bundle import open_bundle

    bundle = open_bundle(bundle_root / "current")
    vocab = bundle.vocab

    def spaced(values: list[str]) -> list[str]:
        values = [v for v in values if v]
        return values[:: max(1, len(values) // per_kind)][:per_kind]

    return {
        "skus": spaced([bundle.items.id_of(i) for i in range(bundle.n_items)]),
        "users": spaced([bundle.users.id_of(i) for i in range(len(bundle.users))]),
        "categories": spaced(list(vocab.category_path)),
        "brands": spaced(list(vocab.brands)),
        "sellers": spaced(list(vocab.sellers)),
        "regions": spaced(list(vocab.regions)),
        "devices": spaced(list(vocab.devices)),
    }


# Format-aware seeds (drawn alongside schemathesis' own values): cursors in this API's format at
# and past its edges (other scripts' digits, more digits than int() converts, signs, spaces), and
# strings that have broken parsers elsewhere (NUL, lone combining marks, right-to-left override,
# astral emoji, numbers spelt the ways float() also reads, percent signs and path tricks).
SEEDS = {
    "cursors": ["c1.0", "c1.20", "c1.400", "c1.401", "c1.\u00b2", "c1.\u0661\u0662", "c1.\uff11", "c1." + "9" * 5000, "c1.-1", "c1.+1",
                "c1. 1", "c1.1 ", "c1.0x10", "c1.1_0", "c2.20", "c1."],
    "nasty": ["\x00", "a\x00", "\u0301", "\u202eevil", "\U0001f4a9" * 20, "NaN", "-Infinity", "1e309", "-0", "0x10", "1_000",
              "%00", "%", "../../etc/passwd", "' OR '1'='1", " ", ",", ",,,", "\t\n", "\ufeff", "\ufffd"],
}

# Where the store's ids and the seeds go: (parameter or body path, dictionary, share of draws that take one).
BINDINGS = [
    *((f"{where}.cursor", "cursors", 0.2) for where in ("query", "body")),
    *((f"{where}.item_id", "skus", 0.6) for where in ("query", "body")),
    *((f"{where}.user_id", "users", 0.5) for where in ("query", "body")),
    *((f"{where}.category", "categories", 0.3) for where in ("query", "body")),
    *((f"{where}.region", "regions", 0.5) for where in ("query", "body")),
    *((f"{where}.device", "devices", 0.5) for where in ("query", "body")),
    *((f"body.{name}[*]", "skus", 0.7) for name in ("cart", "recent", "exclude", "candidates")),
    ("body.block_brands[*]", "brands", 0.7),
    ("body.block_sellers[*]", "sellers", 0.7),
    ("body.events[*].sku", "skus", 0.7),
    ("body.events[*].user_id", "users", 0.7),
]


def fuzz(base_url: str, *, key: str | None, examples: int, store: dict[str, list[str]] | None = None) -> Tally:
    """Run schemathesis' examples, coverage and fuzzing phases over every operation of the
    server's document, with `key` sent (both schemes) or none, drawing ids from `store`
    (store_values) when given; every failing check and every run error is collected (the run
    does not stop at the first)."""
    config: dict = {
        "seed": SEED,
        "suppress-health-check": ["too_slow"],  # the one health check that depends on the machine's speed
        "cache": {"enabled": False},  # no state from earlier runs: every run sends the same requests
        "continue-on-failure": True,
        "workers": 1,
        "request-timeout": 60,
        # The keys are this test's own: reproducing commands carry them (and session ids) as sent.
        "output": {"sanitization": {"enabled": False}},
        "generation": {
            "mode": "all",  # schema-valid data and every way to break it
            "max-examples": examples,
            "deterministic": True,
            "database": "none",
        },
        "checks": {
            "enabled": False,
            **{name: {"enabled": True} for name in CHECKS},
            # Schemathesis' list of refusals plus 413: this API answers too many list entries
            # (and too long a query or body) with 413, and Granian a too-long URI with 414.
            "negative_data_rejection": {"enabled": True, "expected-statuses": [400, 401, 404, 405, 413, 414, 415, 422, 429]},
        },
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},  # with every undeclared method (PUT, DELETE, OPTIONS, TRACE, ...)
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},  # no links between operations to follow
        },
    }
    if store:
        config["dictionaries"] = {name: {"values": values} for name, values in (store | SEEDS).items()}
        config["parameters"] = {where: {"dictionary": name, "probability": share} for where, name, share in BINDINGS}
        # Any other string, anywhere, is now and then one of the nasty ones.
        config["generation"]["dictionaries"] = {"string": {"dictionary": "nasty", "probability": 0.05}}
    if key is not None:
        config["auth"] = {"openapi": {"bearer": {"bearer": key}, "apiKey": {"api_key": key}}}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=SchemathesisConfig.from_dict(config))
    # Schemathesis leaves out the operation that served it the document unless a filter names it:
    # name every documented path, so /openapi.json is fuzzed like the rest.
    schema = schema.include(path=sorted(schema.raw_schema["paths"]))
    tally = Tally()
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                tally.examples[recorder.label] += 1
                if interaction.response is not None:
                    tally.statuses[recorder.label][interaction.response.status_code] += 1
            for case_id, nodes in recorder.checks.items():
                for node in nodes:
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        problem = (recorder.label, node.name, failure.title, failure.message)
                        tally.failures.setdefault(problem, node.failure_info.code_sample)
                    elif node.status == Status.ERROR:  # the check itself could not judge the response
                        problem = (recorder.label, node.name, "the check raised an error", "")
                        tally.failures.setdefault(problem, f"case {case_id} ({recorder.label})")
        elif isinstance(event, events.NonFatalError):
            tally.errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            tally.errors.append(f"schemathesis stopped: {event.exception!r}")
    tally.seconds = time.monotonic() - started
    return tally


def described(tally: Tally, name: str, longest: int = 8000) -> list[str]:
    """One entry per distinct problem: what broke and a command that reproduces it (a huge one,
    e.g. a thousand-entry list, is cut at `longest` characters, saying so)."""

    def cut(text: str) -> str:
        return text if len(text) <= longest else f"{text[:longest]}… ({len(text) - longest} more characters)"

    lines = [f"[{name}] {label} · {check}: {title}\n    {message.strip()}\n    reproduce: {cut(curl)}"
             for (label, check, title, message), curl in sorted(tally.failures.items())]
    return lines + [f"[{name}] run error: {error}" for error in tally.errors]


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tiny_bundle, tmp_path_factory.mktemp("state-fuzz"), workers=2, settings_toml=SETTINGS)
    try:
        srv.wait_ready(workers=2)
        yield srv
    finally:
        srv.stop()


def test_fuzzing_finds_no_5xx_and_no_response_that_breaks_the_document(server: Server, tiny_bundle: Path) -> None:
    base = f"http://127.0.0.1:{server.port}"
    keyed = fuzz(base, key=KEY, examples=SOAK.scale(100, 2000), store=store_values(tiny_bundle))
    anonymous = fuzz(base, key=None, examples=SOAK.scale(15, 300))

    classes = keyed.classes() + anonymous.classes()
    failures = described(keyed, "with key") + described(anonymous, "without key")
    report(
        "fuzz",
        operations=len(keyed.examples),
        examples=sum(keyed.examples.values()) + sum(anonymous.examples.values()),
        examples_per_operation="/".join(f"{op.split()[0]}:{op.split()[1]}={keyed.examples[op] + anonymous.examples[op]}" for op in sorted(OPERATIONS)),
        status_2xx=classes["2xx"],
        status_4xx=classes["4xx"],
        status_5xx=classes["5xx"],
        failures=len(failures),
        seconds=round(keyed.seconds + anonymous.seconds, 1),
    )
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures)
    assert classes["5xx"] == 0

    # Every operation was exercised, past the 401 when the key was sent ...
    assert set(keyed.examples) == OPERATIONS
    for operation in OPERATIONS:
        answered = keyed.statuses[operation]
        assert sum(n for status, n in answered.items() if 200 <= status < 300), (operation, answered)
    # ... and with malformed input: the recommendation and event routes refused some of it.
    for operation in ("GET /v1/recommendations", "POST /v1/recommendations", "POST /v1/events"):
        refused = {status for status in keyed.statuses[operation] if 400 <= status < 500 and status not in (401, 405)}
        assert len(refused) >= 2, (operation, keyed.statuses[operation])

    # Without a key: every keyed operation answered its documented 401 and nothing else (an
    # undeclared method is 405 before any key is looked at, and Granian refuses a URI too long
    # to parse with 414 before the app sees it); the open ones still answered.
    for operation in OPERATIONS:
        answered = anonymous.statuses[operation]
        if operation in OPEN:
            assert 200 in answered, (operation, answered)
        else:
            assert answered[401] and set(answered) <= {401, 405, 414}, (operation, answered)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind"),
    [
        # Superscript digits passed str.isdigit() and then broke int(): a 500. Other scripts'
        # digits were read as an offset ('c1.१२' served page 12): not a cursor this API returns.
        ("GET", "/v1/recommendations?surface=home&cursor=c1.%C2%B2", None, 400, "bad_request"),
        ("GET", "/v1/recommendations?surface=home&cursor=c1.%E0%A5%A7%E0%A5%A8", None, 400, "bad_request"),
        ("POST", "/v1/recommendations", '{"surface": "home", "cursor": "c1.\\u0967\\u0968"}', 400, "bad_request"),
        # More digits than int() converts by default: a 500; now simply too deep.
        ("GET", "/v1/recommendations?surface=home&cursor=c1." + "9" * 5000, None, 422, "invalid"),
        ("POST", "/v1/recommendations", '{"surface": "home", "cursor": "c1.' + "1" * 5000 + '"}', 422, "invalid"),
        ("GET", "/v1/recommendations?surface=home&cursor=c1.0000000000000000000000020", None, 200, None),
        ("GET", "/v1/recommendations?surface=home&cursor=c1.401", None, 422, "invalid"),
    ],
)
def test_inputs_that_once_got_a_500_get_a_clear_4xx(server: Server, method: str, path: str, body: str | None, status: int, kind: str | None) -> None:
    headers = {"x-api-key": KEY} | ({"content-type": "application/json"} if body is not None else {})
    reply = server.request(method, path, body.encode() if body is not None else None, headers)
    assert reply.status == status, reply.body[:300]
    assert reply.headers["content-type"] == "application/json"
    if kind is not None:
        assert reply.json()["error"] == kind and reply.json()["detail"]


def test_the_document_covers_every_route_status_and_limit() -> None:
    doc = json.loads(openapi_document())
    schemathesis.openapi.from_dict(doc).validate()  # against the OpenAPI 3.1 schema
    operations = {f"{method.upper()} {path}" for path, item in doc["paths"].items() for method in item}
    assert operations == OPERATIONS
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status == "414":  # answered by Granian itself, before the app
                    assert "content" not in response
                    continue
                assert "X-Request-Id" in response["headers"], (method, path, status)
                if status.startswith(("4", "5")) and path != "/readyz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["allOf"][0] == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            if operation["security"]:
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
                assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
    get = {p["name"]: p for p in doc["paths"]["/v1/recommendations"]["get"]["parameters"]}
    assert get["surface"]["required"] and get["count"]["schema"]["minimum"] == 1
    assert get["cart"]["schema"]["maxItems"] == LimitSettings().max_cart_items and get["cart"]["explode"] is False
    body = doc["components"]["schemas"]["RecommendQuery"]
    assert body["additionalProperties"] is False and body["properties"]["candidates"]["maxItems"] == LimitSettings().max_rank_items
    assert doc["components"]["schemas"]["EventBatch"]["properties"]["events"]["maxItems"] == LimitSettings().max_events_per_batch


def test_a_servers_own_document_follows_its_keys_and_limits() -> None:
    def security(settings: Settings) -> dict[str, list]:
        doc = json.loads(openapi_document(settings))
        return {f"{m.upper()} {p}": op["security"] for p, item in doc["paths"].items() for m, op in item.items()}

    keyed = [{"bearer": []}, {"apiKey": []}]
    # No keys: nothing is ever refused for want of one, so no operation lists a 401.
    assert set(map(str, security(Settings()).values())) == {"[]"}
    assert "401" not in json.dumps(json.loads(openapi_document(Settings()))["paths"])
    writes_only = security(Settings(security=SecuritySettings(api_keys=[KEY])))
    assert writes_only["POST /v1/events"] == writes_only["GET /status"] == keyed
    assert writes_only["GET /v1/recommendations"] == writes_only["GET /metrics"] == []
    everything = security(Settings(security=SecuritySettings(api_keys=[KEY], read_keys=[READ_KEY], protect_metrics=True)))
    assert {op for op, req in everything.items() if req == keyed} == OPERATIONS - OPEN
    small = json.loads(openapi_document(Settings(limits=LimitSettings(max_count=10, max_rank_items=50))))
    count = next(p for p in small["paths"]["/v1/recommendations"]["get"]["parameters"] if p["name"] == "count")
    assert count["schema"]["maximum"] == 50 and "1-10" in count["description"]
