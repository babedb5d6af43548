"""Served slates on the durable event path (engine.eventlog `slates`, engine.slates): the round
trip, the group commit they share with events, the bounded queue, failures that stay theirs, the
flush on close, logs made before slates existed, read-only readers, and the record a real
Recommender's answer makes."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import msgspec
import numpy as np
import pytest

import artifacts  # noqa: F401  (loads onnxruntime before usearch: see artifacts/__init__.py)
from artifacts.bundle import open_bundle
from artifacts.schema import SURFACE_BY_NAME
from engine import eventlog
from engine.eventlog import FILE_NAME, MAP_SIZE, EventLog, EventLogError, ServedSlate
from engine.schemas import MAX_SESSION_ID_BYTES, Event, RecommendedItem, RecommendQuery, RecommendResponse
from engine.service import Recommender
from engine.settings import ExperimentSettings, Settings, VariantSettings, validate
from engine.slates import served_slate

NOW = 1_800_000_000.0
REPO = Path(__file__).resolve().parents[1]


def slate(i: int, **kw: object) -> ServedSlate:
    fields: dict[str, object] = dict(
        request_id=f"req-{i}", ts=NOW + i, unit=f"u{i % 3}", user_id=f"u{i % 3}", session_id="", surface=0,
        variant="default", arm_share=1.0, bundle="b1", skus=[f"SKU-{i}", "SKU-x"], scores=[0.9, 0.5],
        sources=["ann", "popular"], prices=[12.5, 0.0], categories=["Home/Kitchen", ""], count=2, offset=0,
        anchors=[], fallback="", took_ms=1.25,
    )  # fmt: skip
    fields.update(kw)
    return ServedSlate(**fields)  # type: ignore[arg-type]


def event(event_id: str) -> Event:
    return Event(event_id=event_id, user_id="u1", sku="SKU-1", type="click", ts=NOW - 10)


def wait_for(predicate, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    async def poll() -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    return poll()


# ---- the record and its database ----------------------------------------------------------------


def test_slates_round_trip_in_order_under_their_own_sequence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "SCAN_CHUNK", 3)  # several read transactions
    with EventLog(tmp_path) as log:
        assert (log.last_slate_seq(), list(log.iter_slates())) == (0, [])
        log.append([event("e1"), event("e2")], now=NOW)
        assert log.append_slates([slate(i) for i in range(4)]) == 1
        assert log.append_slates([slate(i) for i in range(4, 7)]) == 5
        assert log.append_slates([]) == 0
        got = list(log.iter_slates())
        assert [seq for seq, _ in got] == list(range(1, 8)) and log.last_slate_seq() == 7
        assert [s for _, s in got] == [slate(i) for i in range(7)]  # every field kept
        assert [seq for seq, _ in log.iter_slates(since_seq=5)] == [6, 7]
        assert log.last_seq() == 2  # events keep their own sequence
        assert log.slates_logged == 7 and log.commits == 3


def test_a_slate_is_a_msgpack_array_in_field_order(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append_slates([slate(1)])
        with log._env.begin(db=log._slate_db) as txn:
            raw = txn.get(struct.pack(">Q", 1))
    assert msgspec.msgpack.decode(raw)[:3] == ["req-1", NOW + 1, "u1"]
    assert ServedSlate.__struct_fields__[-1] == "took_ms" and len(ServedSlate.__struct_fields__) == 19


def test_append_slates_refuses_a_malformed_slate_and_writes_none(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        with pytest.raises(ValueError, match="slate 1 is not a well-formed ServedSlate"):
            log.append_slates([slate(0), slate(1, skus=[object()])])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="slate 0"):
            log.append_slates([slate(0, prices=[np.float32(1.0)])])  # numpy scalars are not msgpack
        assert log.last_slate_seq() == 0


# ---- log_slate: the group commit ----------------------------------------------------------------


def test_slates_ride_the_next_group_of_events_in_one_transaction(tmp_path: Path) -> None:
    log = EventLog(tmp_path)

    async def main() -> list:
        queued = [log.log_slate(slate(i)) for i in range(3)]
        result = await log.append_async([event("e1"), event("e2")], now=NOW)
        await log.aclose()
        return [queued, result]

    queued, result = asyncio.run(main())
    assert queued == [True] * 3 and result.accepted_ids == ["e1", "e2"]
    assert log.commits == 1  # one transaction, one fsync, for the events and the slates
    assert (log.slates_logged, log.slates_dropped) == (3, 0)
    with EventLog(tmp_path, readonly=True) as reader:
        assert [s.request_id for _, s in reader.iter_slates()] == ["req-0", "req-1", "req-2"]
        assert reader.last_seq() == 2


def test_slates_without_events_commit_on_their_own(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:

        async def main() -> bool:
            for i in range(5):
                log.log_slate(slate(i))
            return await wait_for(lambda: log.last_slate_seq() == 5)

        assert asyncio.run(main())  # no event and no close needed
        assert (log.commits, log.slates_logged, log.slates_queued) == (1, 5, 0)


def test_a_full_queue_drops_new_slates_and_counts_them(tmp_path: Path) -> None:
    log = EventLog(tmp_path, slate_queue_limit=2)

    async def main() -> list[bool]:
        queued = [log.log_slate(slate(i)) for i in range(5)]  # the committer has not run yet
        await log.aclose()
        return queued

    assert asyncio.run(main()) == [True, True, False, False, False]
    assert (log.slates_dropped, log.slates_logged) == (3, 2)
    with EventLog(tmp_path) as again:
        assert [s.request_id for _, s in again.iter_slates()] == ["req-0", "req-1"]


def test_a_slate_that_cannot_be_encoded_never_fails_an_event_append(tmp_path: Path) -> None:
    log = EventLog(tmp_path)

    async def main() -> object:
        log.log_slate(slate(0, skus=[object()]))  # type: ignore[list-item]
        log.log_slate(slate(1))
        assert not log.log_slate({"request_id": "not a slate"})  # type: ignore[arg-type]
        result = await log.append_async([event("e1")], now=NOW)
        await log.aclose()
        return result

    assert asyncio.run(main()).accepted_ids == ["e1"]  # type: ignore[attr-defined]
    assert (log.slates_logged, log.slates_dropped) == (1, 2)
    with EventLog(tmp_path) as again:
        assert [s.request_id for _, s in again.iter_slates()] == ["req-1"] and again.last_seq() == 1


def test_a_slate_write_that_fails_drops_the_slates_and_the_events_still_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = EventLog(tmp_path)

    def broken(txn: lmdb.Transaction, encoded: object) -> int:
        raise lmdb.MapFullError("no room for slates")

    monkeypatch.setattr(log, "_write_slates", broken)

    async def main() -> list:
        for i in range(3):
            log.log_slate(slate(i))
        results = await asyncio.gather(log.append_async([event("e1")], now=NOW), log.append_async([event("e2")], now=NOW))
        await log.aclose()
        return results

    results = asyncio.run(main())
    assert [r.accepted_ids for r in results] == [["e1"], ["e2"]]
    assert (log.slates_logged, log.slates_dropped) == (0, 3)
    with EventLog(tmp_path) as again:
        assert again.last_seq() == 2 and again.last_slate_seq() == 0


def test_slates_stop_before_the_map_is_full_and_leave_the_rest_to_events(tmp_path: Path) -> None:
    log = EventLog(tmp_path, map_size=1 << 20)
    fat = slate(0, skus=["S" * 60] * 200, categories=["C" * 100] * 200)  # ≈ 33 KB

    async def fill() -> list:
        results = []
        for i in range(60):  # well past 90% of 1 MiB in slates alone
            log.log_slate(fat)
            results.append(await log.append_async([event(f"e{i}")], now=NOW))
        await log.aclose()
        return results

    results = asyncio.run(fill())
    assert all(r.accepted_ids == [f"e{i}"] for i, r in enumerate(results))  # no event was refused
    assert log.slates_dropped > 0 and log.slates_logged + log.slates_dropped == 60
    with EventLog(tmp_path, map_size=1 << 20) as again:
        assert again.last_slate_seq() == log.slates_logged and again.last_seq() == 60
        assert again.append([event("later")], now=NOW).accepted_ids == ["later"]  # room is left for events
        with pytest.raises(eventlog.EventLogFull, match="kept for events"):
            again.append_slates([slate(1)])


def test_aclose_flushes_queued_slates_and_later_ones_are_refused(tmp_path: Path) -> None:
    log = EventLog(tmp_path)

    async def main() -> bool:
        for i in range(10):
            log.log_slate(slate(i))
        await log.aclose()
        return log.log_slate(slate(99))

    assert asyncio.run(main()) is False
    assert (log.slates_logged, log.slates_dropped) == (10, 1)
    with EventLog(tmp_path) as again:
        assert again.last_slate_seq() == 10


def test_a_read_only_log_refuses_slates_without_raising(tmp_path: Path) -> None:
    EventLog(tmp_path).close()
    with EventLog(tmp_path, readonly=True) as reader:

        async def main() -> bool:
            return reader.log_slate(slate(0))

        assert asyncio.run(main()) is False and reader.slates_dropped == 1
        with pytest.raises(EventLogError, match="read-only"):
            reader.append_slates([slate(0)])


# ---- logs made before slates, readers -------------------------------------------------------------


def _log_made_before_slates(state: Path) -> None:
    """Format 1 as the engine wrote it before slates: five databases, no `next_slate_seq`."""
    env = lmdb.open(str(state / FILE_NAME), subdir=False, map_size=MAP_SIZE, max_dbs=5)
    dbs = {name: env.open_db(name) for name in (b"meta", b"events", b"ids", b"item_counters", b"recent")}
    with env.begin(write=True, db=dbs[b"meta"]) as txn:
        txn.put(b"format", b"1")
        txn.put(b"half_life_s", struct.pack("<d", 21_600.0))
        txn.put(b"next_seq", struct.pack(">Q", 1))
    env.close()


def write_in_child(state: Path, code: str) -> None:
    """Run `code` in a fresh interpreter with `log` = a writable EventLog on `state` and `slate`,
    `event` from this module (LMDB opens an environment once per process)."""
    prelude = (
        "import sys, asyncio\nsys.path.insert(0, 'tests')\nimport artifacts\nfrom pathlib import Path\n"
        "from engine.eventlog import EventLog\nfrom test_slates import slate, event, NOW\n"
        f"log = EventLog(Path({str(state)!r}))\n"
    )
    subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + "\nlog.close()\n"], cwd=REPO, check=True)


def test_a_log_made_before_slates_gets_them_and_still_opens_with_five_databases(tmp_path: Path) -> None:
    _log_made_before_slates(tmp_path)
    with EventLog(tmp_path, readonly=True) as reader:
        assert (reader.last_slate_seq(), list(reader.iter_slates())) == (0, [])  # no `slates` database yet
        write_in_child(tmp_path, """
            log.append([event("e1")], now=NOW)
            async def main():
                log.log_slate(slate(0))
                await log.aclose()
            asyncio.run(main())
        """)
        assert [s.request_id for _, s in reader.iter_slates()] == ["req-0"]  # the reader finds the new database
        assert reader.last_slate_seq() == 1 and reader.last_seq() == 1
    env = lmdb.open(str(tmp_path / FILE_NAME), subdir=False, map_size=MAP_SIZE, max_dbs=5)  # as an older engine opens it
    with env.begin(db=env.open_db(b"events", create=False)) as txn:
        assert txn.stat()["entries"] == 1
    env.close()


def test_a_read_only_opener_reads_slates_a_writer_logs(tmp_path: Path) -> None:
    EventLog(tmp_path).close()
    with EventLog(tmp_path, readonly=True) as reader:
        write_in_child(tmp_path, "log.append_slates([slate(0), slate(1)])")
        assert [seq for seq, _ in reader.iter_slates()] == [1, 2] and reader.last_slate_seq() == 2
        write_in_child(tmp_path, "log.append_slates([slate(2)])")
        assert [s for _, s in reader.iter_slates(since_seq=2)] == [slate(2)]


# ---- the record of a real answer ------------------------------------------------------------------


@pytest.mark.slow
def test_served_slate_records_what_a_recommender_served(tiny_bundle: Path, tmp_path: Path) -> None:
    ab = ExperimentSettings("ab", [VariantSettings("a", 3.0), VariantSettings("b", 1.0)])
    rec = Recommender(open_bundle(tiny_bundle / "current"), validate(msgspec.structs.replace(Settings(), experiments=[ab])), live=None)
    bundle = rec.bundle
    now = bundle.manifest.dims["end_ts"]
    user = bundle.users.id_of(0)
    anchor = bundle.items.id_of(int(rec.view.popular[0]))
    queries = [
        RecommendQuery("home", user_id=user, count=10, session_id="s-1"),
        RecommendQuery("pdp", item_id=anchor, count=10, session_id="s-2"),
        RecommendQuery("cart", cart=[anchor, "NOT-A-SKU"], count=10),
    ]
    slates = []
    for q in queries:
        response, ctx = rec.run(q, request_id=f"r-{q.surface}", now=now)
        s = served_slate(q, response, ctx, rec)
        slates.append(s)
        assert s.skus == [i.sku for i in response.items] and len(s.skus) == 10
        assert s.scores == [i.score for i in response.items] and s.sources == [i.source for i in response.items]
        assert (s.request_id, s.bundle, s.variant, s.surface) == (f"r-{q.surface}", rec.build_id, response.variant, SURFACE_BY_NAME[q.surface])
        assert (s.count, s.offset, s.took_ms, s.fallback) == (10, 0, response.took_ms, response.fallback or "")
        rows = bundle.items.rows_of(s.skus)
        catalog_price = (rec.view.price[rows] * (1 - rec.view.discount[rows])).astype(np.float64)
        priced = np.isfinite(catalog_price) & (catalog_price > 0) & (rec.view.in_stock[rows] != 0)
        assert priced.sum() >= 5  # the tiny store prices most items
        np.testing.assert_allclose(np.asarray(s.prices)[priced], catalog_price[priced], rtol=1e-5)
        assert all(p > 0 for p in np.asarray(s.prices)[priced])
        assert s.categories == [bundle.vocab.category_path[c] for c in rec.view.category[rows].tolist()]
        assert all(s.categories)
    home, pdp, cart = slates
    assert (home.unit, home.user_id, home.session_id) == (user, user, "s-1")  # the user id is the unit
    assert (pdp.unit, pdp.user_id, pdp.anchors) == ("s-2", "", [anchor])  # else the session id
    assert (cart.unit, cart.variant, cart.arm_share, cart.anchors) == ("", "default", 1.0, [anchor, "NOT-A-SKU"])
    for s in (home, pdp):
        assert s.variant in ("ab:a", "ab:b") and s.arm_share == {"ab:a": 0.75, "ab:b": 0.25}[s.variant]
    with EventLog(tmp_path) as log:  # what the builder will read back
        log.append_slates(slates)
        assert [s for _, s in log.iter_slates()] == slates


@pytest.mark.slow
def test_served_slate_reads_live_prices_and_new_skus_from_the_item_state(tiny_bundle: Path, tmp_path: Path) -> None:
    from engine.inventory.state import ItemState, StateWriter
    from engine.inventory.wire import Discount, NewSku, Price

    bundle = open_bundle(tiny_bundle / "current")
    rec = Recommender(bundle, Settings(), live=None)
    writer_state = ItemState.create(tmp_path / "items.state", bundle, capacity=8)
    sku0, sku1 = bundle.items.id_of(0), bundle.items.id_of(1)
    new = NewSku("NEW-1", "A new thing", "Home/Brand New", "Acme", "S1", 40.0, 0.25, True, 3, NOW)
    StateWriter(writer_state, bundle.items).apply([Price(sku0, 7.0), Discount(sku0, 0.5), new])
    reader = ItemState.open(writer_state.path, readonly=True, items=bundle.items)
    rec.attach_inventory(reader)
    q = RecommendQuery("home", count=3)
    _, ctx = rec.run(q, now=bundle.manifest.dims["end_ts"])
    items = [RecommendedItem(sku0, 0.9, "r", "ann"), RecommendedItem("NEW-1", 0.8, "New arrival", "new"),
             RecommendedItem(sku1, 0.7, "r", "popular"), RecommendedItem("GONE", 0.1, "r", "popular")]  # fmt: skip
    response = RecommendResponse(items, rec.build_id, "default", None, "req", 1.0)
    s = served_slate(q, response, ctx, rec)
    base1 = float(np.float32(rec.view.price[1]) * (1 - np.float32(rec.view.discount[1])))
    assert s.prices[:2] == [3.5, 30.0] and s.prices[3] == 0.0  # live price × (1 − discount); unknown: 0
    assert s.prices[2] == pytest.approx(base1 if np.isfinite(base1) and base1 > 0 else 0.0, rel=1e-5)
    assert s.categories[1] == "Home/Brand New" and s.categories[3] == ""
    reader.close()
    writer_state.close()


def test_the_session_id_bound_is_the_event_logs() -> None:
    assert MAX_SESSION_ID_BYTES == eventlog.MAX_TEXT_BYTES
