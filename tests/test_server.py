"""The engine over HTTP: real Granian with 2 worker processes on 127.0.0.1, serving the tiny bundle."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts import layout
from artifacts.bundle import Bundle, open_bundle
from artifacts.publish import set_current
from engine.settings import RerankSettings
from tests._server import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tiny_bundle, tmp_path_factory.mktemp("state"), workers=2)
    try:
        srv.wait_ready(workers=2)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return open_bundle(tiny_bundle / "current")


def _rows(bundle: Bundle, skus: list[str]) -> np.ndarray:
    rows = bundle.items.rows_of(skus)
    assert (rows >= 0).all(), "every returned SKU is in the bundle"
    return rows


def check_slate(bundle: Bundle, body: dict, count: int, blocked_brands: set[str] = set(), blocked_sellers: set[str] = set()) -> np.ndarray:
    skus = [i["sku"] for i in body["items"]]
    assert len(skus) == count and len(set(skus)) == count
    rows = _rows(bundle, skus)
    assert bundle.item_column("in_stock")[rows].all()
    brands = {bundle.vocab.brands[b] for b in bundle.item_column("brand")[rows]}
    sellers = {bundle.vocab.sellers[s] for s in bundle.item_column("seller")[rows]}
    assert not brands & blocked_brands and not sellers & blocked_sellers
    assert all(i["reason"] and i["source"] for i in body["items"])
    assert body["bundle"] == bundle.build_id and body["request_id"] and body["took_ms"] >= 0
    return rows


def shopper_with_blocks(bundle: Bundle) -> tuple[str, set[str]]:
    from artifacts.snapshot import ShopperSnapshot

    snap = ShopperSnapshot(bundle.path(layout.SHOPPER_SNAPSHOT), bundle.manifest.dims["snapshot_map_size"])
    for row in range(len(bundle.users)):
        user = bundle.users.id_of(row)
        record = snap.get(user)
        if record and record.blocked_brands and record.recent_items:
            return user, {bundle.vocab.brands[b] for b in record.blocked_brands}
    raise AssertionError("the tiny store has shoppers with blocked brands")


def test_every_surface_returns_count_unique_in_stock_unblocked_items_with_reasons(server: Server, bundle: Bundle) -> None:
    user, blocked = shopper_with_blocks(bundle)
    home = server.recommend(surface="home", user_id=user, count=20)
    assert home.status == 200, home.body
    check_slate(bundle, home.json(), 20, blocked_brands=blocked)
    anchor = home.json()["items"][0]["sku"]
    pdp = server.recommend(surface="pdp", user_id=user, item_id=anchor, count=15)
    assert pdp.status == 200
    assert anchor not in [i["sku"] for i in pdp.json()["items"]]
    check_slate(bundle, pdp.json(), 15, blocked_brands=blocked)
    cart = [i["sku"] for i in home.json()["items"][:3]]
    reply = server.recommend(surface="cart", user_id=user, cart=",".join(cart), count=10)
    assert reply.status == 200
    assert not set(cart) & {i["sku"] for i in reply.json()["items"]}
    check_slate(bundle, reply.json(), 10, blocked_brands=blocked)


def test_both_workers_serve(server: Server) -> None:
    pids = {server.get("/healthz", fresh=True).json()["pid"] for _ in range(40)}
    assert len(pids) == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_slate_ever_breaks_a_hard_rule(server: Server, bundle: Bundle, data: st.DataObject) -> None:
    users = bundle.users
    surface = data.draw(st.sampled_from(["home", "pdp", "cart"]))
    user = data.draw(st.one_of(st.none(), st.integers(0, len(users) - 1).map(users.id_of), st.just("never-seen-before")))
    brands = [b for b in bundle.vocab.brands if b]
    sellers = [s for s in bundle.vocab.sellers if s]
    block_brands = data.draw(st.lists(st.sampled_from(brands), max_size=8, unique=True))
    block_sellers = data.draw(st.lists(st.sampled_from(sellers), max_size=3, unique=True))
    some_item = st.integers(0, bundle.n_items - 1).map(bundle.items.id_of)
    exclude = data.draw(st.lists(some_item, max_size=10, unique=True))
    params = {"surface": surface, "user_id": user, "count": data.draw(st.integers(1, 40))}
    params |= {"block_brands": ",".join(block_brands), "block_sellers": ",".join(block_sellers), "exclude": ",".join(exclude)}
    anchors: list[str] = []
    if surface == "pdp":
        anchors = [data.draw(some_item)]
        params["item_id"] = anchors[0]
    elif surface == "cart":
        anchors = data.draw(st.lists(some_item, min_size=1, max_size=5, unique=True))
        params["cart"] = ",".join(anchors)
    reply = server.recommend(**params)
    assert reply.status == 200, reply.body
    body = reply.json()
    skus = [i["sku"] for i in body["items"]]
    rows = _rows(bundle, skus)
    assert len(set(skus)) == len(skus) == params["count"]  # the catalog is large enough to fill any page
    assert bundle.item_column("in_stock")[rows].all()
    assert not {bundle.vocab.brands[b] for b in bundle.item_column("brand")[rows]} & set(block_brands)
    assert not {bundle.vocab.sellers[s] for s in bundle.item_column("seller")[rows]} & set(block_sellers)
    assert not set(skus) & (set(exclude) | set(anchors))


def test_a_cold_shopper_gets_a_full_diversified_list(server: Server, bundle: Bundle) -> None:
    reply = server.recommend(surface="home", user_id="brand-new-shopper", count=20)
    assert reply.status == 200
    rows = check_slate(bundle, reply.json(), 20)
    brands = bundle.item_column("brand")[rows]
    assert np.bincount(brands[brands > 0]).max() <= RerankSettings().max_per_brand  # the per-brand cap
    assert len(set(bundle.item_column("cat_top")[rows].tolist())) >= 4


def test_pages_follow_the_cursor_without_repeats(server: Server, bundle: Bundle) -> None:
    first = server.recommend(surface="home", user_id=bundle.users.id_of(3), count=10).json()
    second = server.recommend(surface="home", user_id=bundle.users.id_of(3), count=10, cursor=first["next_cursor"]).json()
    assert first["next_cursor"] and not {i["sku"] for i in first["items"]} & {i["sku"] for i in second["items"]}


def test_a_click_shapes_the_shoppers_next_home_slate(server: Server, bundle: Bundle) -> None:
    user = "shopper-who-just-clicked"
    covisit = bundle.csr(layout.COVISIT)
    anchor = int(np.argmax(np.diff(covisit.indptr)))  # an item with co-visited neighbours
    sku = bundle.items.id_of(anchor)
    before = server.recommend(surface="home", user_id=user, count=20).json()
    event = {"event_id": "e-1", "user_id": user, "sku": sku, "type": "click", "ts": float(bundle.manifest.dims["end_ts"] + 60)}
    posted = server.post_json("/v1/events", {"events": [event, event]})
    assert posted.status == 202 and posted.json()["accepted"] == 1 and posted.json()["duplicates"] == 1
    after = server.recommend(surface="home", user_id=user, count=20).json()
    title = bundle.title(anchor)
    assert any(i["reason"] == f"Because you viewed {title}" for i in after["items"])
    assert [i["sku"] for i in after["items"]] != [i["sku"] for i in before["items"]]


def test_items_bought_since_the_build_are_never_recommended_again(server: Server, bundle: Bundle) -> None:
    user = "shopper-who-just-bought"
    shown = [i["sku"] for i in server.recommend(surface="home", user_id=user, count=10).json()["items"]]
    bought = shown[:3]
    ts = float(bundle.manifest.dims["end_ts"] + 60)
    events = [{"event_id": f"buy-{sku}", "user_id": user, "sku": sku, "type": "purchase", "ts": ts} for sku in bought]
    assert server.post_json("/v1/events", {"events": events}).json()["accepted"] == 3
    for _ in range(4):  # whichever worker answers, on every surface
        for params in ({"surface": "home"}, {"surface": "pdp", "item_id": shown[5]}, {"surface": "cart", "cart": shown[6]}):
            items = {i["sku"] for i in server.recommend(user_id=user, count=40, **params).json()["items"]}
            assert not items & set(bought), params


@pytest.mark.parametrize(
    "method, path, status, kind",
    [
        ("GET", "/v1/recommendations", 400, "bad_request"),  # no surface
        ("GET", "/v1/recommendations?surface=home&colour=red", 400, "bad_request"),
        ("GET", "/v1/recommendations?surface=home&surface=pdp", 400, "bad_request"),
        ("GET", "/v1/recommendations?surface=shelf", 422, "invalid"),
        ("GET", "/v1/recommendations?surface=home&count=0", 422, "invalid"),
        ("GET", "/v1/recommendations?surface=home&count=101", 422, "invalid"),
        ("GET", "/v1/recommendations?surface=home&count=ten", 422, "invalid"),
        ("GET", "/v1/recommendations?surface=home&price_min=5&price_max=1", 422, "invalid"),
        ("GET", "/v1/recommendations?surface=home&category=No/Such/Aisle", 422, "invalid"),
        ("GET", "/v1/recommendations?surface=home&cursor=page-2", 400, "bad_request"),
        ("GET", "/v1/recommendations?surface=home&user_id=" + "u" * 65, 422, "invalid"),
        ("GET", "/v1/recommendations?surface=pdp", 400, "bad_request"),
        ("GET", "/v1/recommendations?surface=pdp&item_id=NO-SUCH-SKU", 404, "not_found"),
        ("GET", "/v1/recommendations?surface=cart", 400, "bad_request"),
        ("GET", "/v1/recommendations?surface=cart&cart=" + ",".join(f"S{i}" for i in range(51)), 413, "too_large"),
        ("GET", "/v1/recommendations?surface=home&q=" + "x" * 20000, 413, "too_large"),
        ("PUT", "/v1/recommendations?surface=home", 405, "method_not_allowed"),
        ("POST", "/v1/recommendations", 415, "unsupported_media_type"),
        ("GET", "/v1/recommendations?surface=home&candidates=A,B&cursor=c1.20", 400, "bad_request"),
        ("GET", "/v1/recommendations?surface=home&candidates=" + ",".join(f"S{i}" for i in range(1001)), 413, "too_large"),
        ("GET", "/v2/anything", 404, "not_found"),
    ],
)
def test_malformed_requests_get_the_right_status_and_a_json_body(server: Server, method: str, path: str, status: int, kind: str) -> None:
    reply = server.request(method, path)
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["error"] == kind and body["detail"] and "Traceback" not in body["detail"]


def test_a_405_lists_the_allowed_methods(server: Server) -> None:
    assert server.request("PUT", "/v1/recommendations?surface=home").headers["allow"] == "GET, POST"
    assert server.request("GET", "/v1/events").headers["allow"] == "POST"


def test_unknown_pdp_item_is_named_in_the_404(server: Server) -> None:
    assert "NO-SUCH-SKU" in server.recommend(surface="pdp", item_id="NO-SUCH-SKU").json()["detail"]


@pytest.mark.parametrize(
    "body, headers, status",
    [
        (b"{not json", {"content-type": "application/json"}, 400),
        (b'{"events": [{"event_id": "x"}]}', {"content-type": "application/json"}, 400),
        (b'{"events": []}', {"content-type": "text/plain"}, 415),
        (b'{"events": [' + b",".join([b'{"event_id":"a","user_id":"u","sku":"s","type":"click"}'] * 1001) + b"]}", {"content-type": "application/json"}, 413),
        (b"x" * 1_100_000, {"content-type": "application/json"}, 413),
    ],
)
def test_bad_event_batches_are_refused_with_json(server: Server, body: bytes, headers: dict, status: int) -> None:
    reply = server.request("POST", "/v1/events", body, headers)
    assert reply.status == status, reply.body
    assert reply.json()["detail"]


def test_invalid_events_are_rejected_one_by_one(server: Server) -> None:
    events = [
        {"event_id": "ok-1", "user_id": "u1", "sku": "SKU-X", "type": "impression"},
        {"event_id": "bad-1", "user_id": "", "sku": "SKU-X", "type": "click"},
        {"event_id": "bad-2", "user_id": "u1", "sku": "SKU-X", "type": "click", "ts": 4.0e12},
    ]
    body = server.post_json("/v1/events", {"events": events}).json()
    assert (body["accepted"], body["rejected"]) == (1, 2)
    assert [r["index"] for r in body["rejections"]] == [1, 2]


def test_health_readiness_metrics_and_openapi(server: Server) -> None:
    assert server.get("/healthz").json()["status"] == "ok"
    ready = server.get("/readyz").json()
    assert ready["status"] == "ready" and ready["bundle"]
    server.recommend(surface="home", count=5)
    text = server.get("/metrics").body.decode()
    assert "# TYPE aisle_requests_total counter" in text
    assert 'aisle_requests_total{surface="home",status="200",fallback="none",variant="default"}' in text
    doc = server.get("/openapi.json").json()
    assert set(doc["paths"]) >= {"/v1/recommendations", "/v1/events", "/healthz", "/readyz", "/metrics", "/status"}


def _broken_copy(tiny_bundle: Path, root: Path, part: str) -> Path:
    """A copy of the bundle whose `part` is garbage of the same size (passes the size check that
    workers do at start; fails to load)."""
    src = open_bundle(tiny_bundle / "current").root
    shutil.copytree(src, root / src.name)
    target = root / src.name / part
    target.write_bytes(b"\x00garbage" * (target.stat().st_size // 8) + b"\x00" * (target.stat().st_size % 8))
    set_current(root, src.name)
    return root


@pytest.mark.parametrize("part, fallback", [(layout.RANKER_LIB, "ranker_unavailable"), (layout.ITEM_INDEX, "index_unavailable")])
def test_a_broken_part_degrades_with_fallback_set(tiny_bundle: Path, tmp_path: Path, part: str, fallback: str) -> None:
    root = _broken_copy(tiny_bundle, tmp_path / "bundles", part)
    # A same-size corruption passes the size check but not sha256: start with size checks only,
    # as a worker that maps a bundle does, to reach the load-time fault.
    srv = Server(root, tmp_path / "state", workers=1, settings_toml='verify_at_start = "sizes"\n')
    try:
        srv.wait_ready()
        reply = srv.recommend(surface="home", user_id="x", count=20)
        assert reply.status == 200
        body = reply.json()
        assert body["fallback"] == fallback and len(body["items"]) == 20
        assert "degraded" in srv.get("/readyz").json()["detail"]
    finally:
        srv.stop()


def test_reranking_ranks_only_the_given_items_and_keeps_the_hard_rules(server: Server, bundle: Bundle) -> None:
    user, blocked = shopper_with_blocks(bundle)
    rng = np.random.default_rng(5)
    rows = rng.choice(bundle.n_items, 120, replace=False)
    brands = bundle.item_column("brand")
    blocked_rows = np.flatnonzero(np.isin(np.asarray([bundle.vocab.brands[b] for b in brands]), list(blocked)))[:5]
    out_of_stock = np.flatnonzero(bundle.item_column("in_stock") == 0)[:5]
    given = [bundle.items.id_of(int(r)) for r in np.concatenate([rows, blocked_rows, out_of_stock])] + ["NO-SUCH-SKU"]
    body = json.dumps({"surface": "home", "user_id": user, "candidates": given}).encode()
    reply = server.request("POST", "/v1/recommendations", body, {"content-type": "application/json"})
    assert reply.status == 200, reply.body
    answer = reply.json()
    skus = [i["sku"] for i in answer["items"]]
    assert answer["unranked"] == ["NO-SUCH-SKU"] and answer["next_cursor"] is None
    assert set(skus) <= set(given) and len(set(skus)) == len(skus)
    check_slate(bundle, answer, len(skus), blocked_brands=blocked)  # in stock, unblocked, with reasons
    in_stock = bundle.item_column("in_stock")[rows].astype(bool)
    unblocked = ~np.isin(np.asarray([bundle.vocab.brands[b] for b in brands[rows]]), list(blocked))
    # everything that passes the rules comes back (count defaults to all); purchases are also left out
    assert 0.8 * (in_stock & unblocked).sum() <= len(skus) <= (in_stock & unblocked).sum()
    # the same request as a query string ranks the same items
    short = given[:40]
    get = server.recommend(surface="home", user_id=user, candidates=",".join(short), count=10)
    assert get.status == 200 and len(get.json()["items"]) == 10
    assert {i["sku"] for i in get.json()["items"]} <= set(short)
