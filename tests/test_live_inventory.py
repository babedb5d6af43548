"""Live inventory end to end: the reference publisher (`aisle inventory serve`), the host's
subscriber started by `aisle serve`, 2 Granian workers reading shared memory, real ZeroMQ."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.inventory import wire
from engine.inventory.publisher import publish_one
from tests._server import REPO, Server, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    pub, snap = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    publisher = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "inventory", "serve", "--pub", pub, "--snapshot", snap, "--id", "test-inventory"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    settings = f'[inventory]\nupdates_endpoint = "{pub}"\nsnapshot_endpoint = "{snap}"\nsync_timeout_s = 60.0\n'
    srv = Server(tiny_bundle, tmp_path_factory.mktemp("live-state"), workers=2, settings_toml=settings)
    try:
        srv.wait_ready(workers=2)
        assert "live inventory" not in srv.get("/readyz").json()["detail"]
        yield srv, snap
    finally:
        srv.stop()
        os.killpg(publisher.pid, signal.SIGTERM)
        publisher.wait(timeout=20)


def _skus(srv: Server, **params: object) -> set[str]:
    reply = srv.recommend(**params)
    assert reply.status == 200, reply.body
    return {i["sku"] for i in reply.json()["items"]}


def _until(predicate, timeout: float = 1.0) -> float:
    """Seconds until predicate() held (polling), or fail after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not visible within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def test_an_item_published_out_of_stock_leaves_every_worker_within_a_second(live: tuple[Server, str]) -> None:
    srv, control = live
    shown = set.intersection(*(_skus(srv, surface="home", user_id="stock-shopper", count=20) for _ in range(6)))
    target = sorted(shown)[0]  # shown by both workers, every time: its absence later is the delta's doing
    publish_one(wire.Stock(target, False, 0), control)
    _until(lambda: all(target not in _skus(srv, surface="home", user_id="stock-shopper", count=20) for _ in range(6)))
    for _ in range(20):  # and it stays out, whichever worker answers
        assert target not in _skus(srv, surface="home", user_id="stock-shopper", count=20)


def test_a_price_change_reaches_the_price_filter(live: tuple[Server, str]) -> None:
    srv, control = live
    shown = _skus(srv, surface="home", user_id="price-shopper", count=20, price_max=1e6)
    target = sorted(shown)[1]
    publish_one(wire.Price(target, 5e7), control)
    _until(lambda: all(target not in _skus(srv, surface="home", user_id="price-shopper", count=20, price_max=1e6) for _ in range(6)))


def test_a_retired_sku_is_never_returned_afterwards(live: tuple[Server, str]) -> None:
    srv, control = live
    shown = _skus(srv, surface="pdp", item_id=sorted(_skus(srv, surface="home", count=5))[0], count=20)
    target = sorted(shown)[0]
    publish_one(wire.Retire(target), control)
    _until(lambda: all(target not in _skus(srv, surface="home", count=40) | _skus(srv, surface="pdp", item_id=sorted(shown)[1], count=40) for _ in range(4)))


def test_a_retired_sku_as_the_anchor_gets_alternatives_never_itself(live: tuple[Server, str]) -> None:
    """Documented behaviour: a shopper on a retired product's page, or with it in the cart, is
    shown similar items in stock (alternatives), never the retired item."""
    srv, control = live
    anchor = sorted(_skus(srv, surface="home", user_id="retired-anchor", count=10))[2]
    publish_one(wire.Retire(anchor), control)
    _until(lambda: all(anchor not in _skus(srv, surface="home", user_id="retired-anchor", count=40) for _ in range(4)))
    for params in ({"surface": "pdp", "item_id": anchor}, {"surface": "cart", "cart": anchor}):
        for _ in range(4):  # whichever worker answers
            reply = srv.recommend(count=10, **params)
            assert reply.status == 200, reply.body
            skus = [i["sku"] for i in reply.json()["items"]]
            assert len(skus) == 10 and anchor not in skus


def test_a_new_sku_is_recommended_before_any_rebuild_and_leaves_when_retired(live: tuple[Server, str], tiny_bundle: Path) -> None:
    from artifacts.bundle import open_bundle

    srv, control = live
    bundle = open_bundle(tiny_bundle / "current")
    anchor_sku = sorted(_skus(srv, surface="home", user_id="fresh-shopper", count=10))[0]
    row = bundle.items.row_of(anchor_sku)
    vocab = bundle.vocab
    twin = wire.NewSku(
        sku="SKU-BRAND-NEW-1", title="Brand new twin", category_path=vocab.category_path[int(bundle.item_column("category")[row])],
        brand=vocab.brands[int(bundle.item_column("brand")[row])], seller=vocab.sellers[int(bundle.item_column("seller")[row])],
        price=float(bundle.item_column("price")[row]), discount=0.0, in_stock=True, qty=5, created_at=time.time(),
    )
    publish_one(twin, control)
    waited = _until(lambda: all(twin.sku in _skus(srv, surface="pdp", item_id=anchor_sku, count=20) for _ in range(4)))
    reply = srv.recommend(surface="pdp", item_id=anchor_sku, count=20).json()
    assert next(i for i in reply["items"] if i["sku"] == twin.sku)["reason"] == "New arrival"
    assert twin.sku in _skus(srv, surface="home", user_id="someone-new", count=20)  # the new-arrival slot
    own_page = srv.recommend(surface="pdp", item_id=twin.sku, count=20)  # its own product page works at once
    assert own_page.status == 200 and twin.sku not in {i["sku"] for i in own_page.json()["items"]}
    publish_one(wire.Retire(twin.sku), control)
    _until(lambda: all(twin.sku not in _skus(srv, surface="pdp", item_id=anchor_sku, count=20) for _ in range(4)))
    assert waited < 1.0
