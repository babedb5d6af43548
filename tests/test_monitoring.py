"""/metrics from a real server with 2 worker processes: after known traffic, every count is exactly
what was sent, whichever worker answers the scrape; the variant label matches the responses'
`variant`; every served slate is logged; drift gauges appear; the live inventory feed's figures are
the host's (read from the item state file), not summed over workers."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from engine.inventory import wire
from engine.inventory.publisher import publish_one
from engine.inventory.state import ItemState, state_path
from engine.metrics import FALLBACKS, SOURCES, STATUSES, SURFACES, variants_for
from engine.settings import Settings
from tests._server import REPO, Server, free_port, until
from tests.test_metrics import parse, value
from tests.test_status_page import figures, number

pytestmark = pytest.mark.slow

# A holdout and one two-arm experiment over the rest: shoppers with an id (or a session) land in
# "holdout", "ab:a" or "ab:b"; anonymous ones in "default". Drift samples every ranked request so a
# few dozen requests give a PSI.
SETTINGS = """
holdout = 0.2

[drift]
sample_rate = 1.0
rows_per_request = 20
min_rows = 40
window = 4000

[[experiments]]
name = "ab"
traffic = 0.8

[[experiments.variants]]
name = "a"

[[experiments.variants]]
name = "b"
mmr_lambda = 0.5
"""
ARMS = ("default", "holdout", "ab:a", "ab:b")


@dataclass
class Sent:
    """What the test sent and what the server answered, counted on the client side."""

    requests: Counter = field(default_factory=Counter)  # (surface, status, variant) -> n
    ok: int = 0  # 200 recommendation responses
    short: Counter = field(default_factory=Counter)  # surface -> n
    empty: Counter = field(default_factory=Counter)
    served_by_source: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)  # outcome -> n
    batches: Counter = field(default_factory=Counter)  # outcome -> n


def _recommend(srv: Server, sent: Sent, asked: int = 10, **params: object) -> dict:
    reply = srv.recommend(**params)
    body = reply.json()
    if reply.status != 200:
        return body
    items = body["items"]
    surface = str(params["surface"])
    sent.requests[(surface, "200", body["variant"])] += 1
    sent.ok += 1
    sent.served_by_source.update(i["source"] for i in items)
    if len(items) < asked:
        sent.short[surface] += 1
    if not items:
        sent.empty[surface] += 1
    return body


def send_traffic(srv: Server) -> Sent:
    """Recommendations on every surface and arm, some refused, one empty; three event batches."""
    sent = Sent()
    skus = [i["sku"] for i in _recommend(srv, sent, surface="home", count=10)["items"]]
    for i in range(45):
        surface = ("home", "pdp", "cart")[i % 3]
        params: dict[str, object] = {"surface": surface, "count": 10}
        if i % 5:
            params["user_id"] = f"monitored-shopper-{i}"
        elif i % 10 == 0:
            params["session_id"] = f"monitored-session-{i}"  # assigned by session when anonymous
        if surface == "pdp":
            params["item_id"] = skus[i % len(skus)]
        elif surface == "cart":
            params["cart"] = ",".join(skus[i % 3 : i % 3 + 2])
        body = _recommend(srv, sent, **params)
        assert "items" in body, body
    for _ in range(3):  # refused while decoding: no surface known, no arm
        assert srv.get("/v1/recommendations", surface="shelf").status == 422
        sent.requests[("other", "422", "none")] += 1
    for _ in range(2):  # decoded, then refused: the surface is known, still no arm
        assert srv.recommend(surface="pdp", item_id="NO-SUCH-SKU").status == 404
        sent.requests[("pdp", "404", "none")] += 1
    # Re-ranking only unknown SKUs answers 200 with nothing in it (count defaults to 1).
    empty = _recommend(srv, sent, asked=1, surface="home", candidates="NOPE-1,NOPE-2")
    assert empty["items"] == [] and empty["unranked"] == ["NOPE-1", "NOPE-2"]

    click = {"event_id": "mon-1", "user_id": "monitored-shopper-1", "sku": skus[0], "type": "click"}
    batch = [click, click, {**click, "event_id": "mon-2", "type": "add_to_cart"}, {**click, "event_id": "mon-3", "type": "impression"}]
    reply = srv.post_json("/v1/events", {"events": batch})
    assert reply.status == 202 and (reply.json()["accepted"], reply.json()["duplicates"]) == (3, 1)
    reply = srv.post_json("/v1/events", {"events": [{**click, "event_id": "mon-4"}, {**click, "event_id": "mon-5", "user_id": ""}]})
    assert reply.status == 202 and (reply.json()["accepted"], reply.json()["rejected"]) == (1, 1)
    assert srv.request("POST", "/v1/events", b"{not json", {"content-type": "application/json"}).status == 400
    sent.events.update(accepted=4, duplicate=1, rejected=1)
    sent.batches.update(stored=2, refused=1)
    return sent


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tiny_bundle, tmp_path_factory.mktemp("monitoring-state"), workers=2, settings_toml=SETTINGS)
    try:
        srv.wait_ready(workers=2)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def sent(server: Server) -> Sent:
    return send_traffic(server)


def scrape(srv: Server) -> dict:
    reply = srv.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(reply.body.decode())


def scrape_when(srv: Server, sample: str, at_least: float) -> dict | None:
    seen = scrape(srv)
    return seen if value(seen, sample) >= at_least else None


def _requests(seen: dict, surface: str, status: str, variant: str) -> float:
    return sum(value(seen, "aisle_requests_total", surface=surface, status=status, fallback=f, variant=variant) for f in FALLBACKS)


def test_the_variant_label_takes_the_settings_arms(server: Server, sent: Sent) -> None:
    seen = scrape(server)
    declared = [dict(labels)["variant"] for (_, labels) in seen["aisle_variant_request_seconds"]["samples"] if _ == "aisle_variant_request_seconds_count"]
    assert declared == list(variants_for(msgspec.toml.decode(SETTINGS.encode(), type=Settings))) == [*ARMS, "none"]
    assert {dict(labels)["variant"] for (_, labels) in seen["aisle_requests_total"]["samples"]} == {*ARMS, "none"}


def test_request_counts_are_exact_whichever_worker_answers(server: Server, sent: Sent) -> None:
    assert {arm for (_, _, arm) in sent.requests} >= set(ARMS)  # the traffic reached every arm
    for _ in range(12):  # new connections: both workers answer some of these scrapes
        seen = scrape(server)
        assert value(seen, "aisle_worker_up") == 2
        for surface in SURFACES:
            for status in STATUSES:
                for variant in (*ARMS, "none"):
                    assert _requests(seen, surface, status, variant) == sent.requests[(surface, status, variant)], (surface, status, variant)
        for variant in (*ARMS, "none"):
            in_arm = sum(n for (_, _, arm), n in sent.requests.items() if arm == variant)
            assert value(seen, "aisle_variant_request_seconds_count", variant=variant) == in_arm
        for surface in SURFACES:
            assert value(seen, "aisle_request_seconds_count", surface=surface) == sum(n for (s, _, _), n in sent.requests.items() if s == surface)
            assert value(seen, "aisle_short_responses_total", surface=surface) == sent.short[surface]
            assert value(seen, "aisle_empty_responses_total", surface=surface) == sent.empty[surface]
        assert sent.empty["home"] == 1
        for source in SOURCES:
            assert value(seen, "aisle_candidates_served_total", source=source) == sent.served_by_source[source]
        proposed = sum(value(seen, "aisle_candidates_total", source=s) for s in SOURCES)
        assert proposed >= sum(sent.served_by_source.values()) - sent.served_by_source["backfill"] - sent.served_by_source["new"]


def test_events_and_event_batches_are_counted_by_outcome(server: Server, sent: Sent) -> None:
    for _ in range(6):
        seen = scrape(server)
        for outcome in ("accepted", "duplicate", "rejected"):
            assert value(seen, "aisle_events_total", outcome=outcome) == sent.events[outcome]
        for outcome in ("stored", "refused", "unavailable"):
            assert value(seen, "aisle_event_batches_total", outcome=outcome) == sent.batches[outcome]


def test_every_served_slate_is_logged_once_committed(server: Server, sent: Sent) -> None:
    seen = until(lambda: scrape_when(server, "aisle_slates_logged_total", sent.ok), what="slates logged")
    assert value(seen, "aisle_slates_logged_total") == sent.ok
    assert value(seen, "aisle_slates_dropped_total") == 0 and value(seen, "aisle_slates_failed_total") == 0
    assert value(seen, "aisle_slates_queued") == 0
    from engine.eventlog import EventLog

    log = EventLog(server.state, readonly=True)
    try:
        slates = [slate for _, slate in log.iter_slates()]
    finally:
        log.close()
    assert len(slates) == sent.ok
    served = Counter()
    for (_, status, arm), n in sent.requests.items():
        served[arm] += n if status == "200" else 0
    assert Counter(s.variant for s in slates) == +served


def test_drift_gauges_come_from_the_workers_windows(server: Server, sent: Sent) -> None:
    seen = until(lambda: scrape_when(server, "aisle_drift_sampled_rows", 40), what="drift window")
    psi = [value(seen, "aisle_feature_psi", feature=f) for (_, labels) in seen["aisle_feature_psi"]["samples"] for f in [dict(labels)["feature"]]]
    assert any(math.isfinite(x) and x >= 0 for x in psi)
    assert math.isfinite(value(seen, "aisle_ranker_score_reference_mean"))
    assert math.isfinite(value(seen, "aisle_ranker_score_mean"))
    assert value(seen, "aisle_drifted_features") >= 0
    page = figures(server.get("/status").body.decode())  # the answering worker's window, in a table
    assert number(page, "drift-rows") >= 40
    features = [key for (attribute, key) in page.rows if attribute == "data-feature"]
    assert features and all(math.isfinite(float(page.rows[("data-feature", f)]["psi"])) for f in features)  # type: ignore[arg-type]


def test_no_inventory_families_without_a_feed(server: Server, sent: Sent) -> None:
    assert not [name for name in scrape(server) if name.startswith("aisle_inventory_")]


# --- with the live inventory feed ------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    pub, snap = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    publisher = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "inventory", "serve", "--pub", pub, "--snapshot", snap, "--id", "monitored-inventory"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    settings = f'[inventory]\nupdates_endpoint = "{pub}"\nsnapshot_endpoint = "{snap}"\nsync_timeout_s = 60.0\n'
    srv = Server(tiny_bundle, tmp_path_factory.mktemp("monitoring-live-state"), workers=2, settings_toml=settings)
    try:
        srv.wait_ready(workers=2)
        yield srv, snap
    finally:
        srv.stop()
        os.killpg(publisher.pid, signal.SIGTERM)
        publisher.wait(timeout=20)


def test_inventory_figures_are_the_hosts_not_summed_over_workers(live: tuple[Server, str], tiny_bundle: Path) -> None:
    from artifacts.bundle import open_bundle

    srv, control = live
    skus = [i["sku"] for i in srv.recommend(surface="home", count=5).json()["items"]]
    last = 0
    for sku in skus:
        last = publish_one(wire.Stock(sku, False, 0), control).seq
    until(lambda: value(scrape(srv), "aisle_inventory_seq") == last, what="the last batch applied")
    bundle = open_bundle(tiny_bundle / "current")
    with ItemState.open(state_path(srv.state, bundle.build_id), readonly=True) as state:
        host = state.stats()
    for _ in range(8):
        seen = scrape(srv)
        assert value(seen, "aisle_inventory_status", status="synced") == 1
        assert value(seen, "aisle_inventory_status", status="resyncing") == 0
        assert value(seen, "aisle_inventory_publisher_info", publisher=host.publisher) == 1
        assert value(seen, "aisle_inventory_applied_deltas_total") == host.counters["applied_deltas"] >= len(skus)
        assert value(seen, "aisle_inventory_gaps_total") == host.counters["gaps"]
        assert value(seen, "aisle_inventory_resyncs_total") == host.counters["resyncs"] >= 1  # the start is a resync
        assert value(seen, "aisle_inventory_lag_seconds_count") == host.counters["applied_batches"] == sum(host.lag_buckets)
        assert value(seen, "aisle_inventory_new_sku_capacity") == host.capacity
        assert 0 <= value(seen, "aisle_inventory_last_update_age_seconds") < 600
    page = figures(srv.get("/status").body.decode())
    assert page.by_id["inventory-status"][0] == "synced"
    assert number(page, "inventory-seq") == last and number(page, "inventory-gaps") == host.counters["gaps"]
    assert page.by_id["inventory-publisher"][1] == host.publisher
