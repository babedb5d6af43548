"""Live inventory: the wire format, the shared item state and its seqlock, and the Clone protocol
over real ZeroMQ sockets (gaps, late joiners, publisher restarts), checked against a plain-Python
model of what the state must hold."""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts.bundle import Bundle, open_bundle, open_staging
from artifacts.manifest import Manifest
from artifacts.publish import finalize, inventory, save_array, set_current, staging_dir
from engine.inventory import wire
from engine.inventory.publisher import InventoryPublisher, compact, publish_from_file, publish_one
from engine.inventory.state import (
    HEADER,
    ItemState,
    StateError,
    StateFormatError,
    StateWriter,
    Baseline,
    Status,
    state_path,
)
from engine.inventory.subscriber import Subscriber, follow
from engine.inventory.wire import Delta, DeltaBatch, Discount, NewSku, Price, Promotion, Retire, Stock
from kernels.seqlock import gather_offers

SPAWN = multiprocessing.get_context("spawn")
N_BASE = 200
DIM = 4


def _make_bundle(root: Path, n: int = N_BASE) -> Bundle:
    (root / "items").mkdir(parents=True)
    (root / "embeddings").mkdir()
    rng = np.random.default_rng(3)
    np.save(root / "items/sku.npy", np.array([f"B{i:04d}".encode() for i in range(n)], dtype="S5"))
    np.save(root / "items/in_stock.npy", (rng.random(n) < 0.8).astype(np.uint8))
    np.save(root / "items/stock_qty.npy", rng.integers(0, 50, n).astype(np.int32))
    np.save(root / "items/price.npy", rng.uniform(1, 300, n).astype(np.float32))
    np.save(root / "items/discount.npy", (rng.integers(0, 5, n) / 10).astype(np.float32))
    np.save(root / "embeddings/items.npy", rng.normal(size=(n, DIM)).astype(np.float32))
    return open_staging(root)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _make_bundle(tmp_path_factory.mktemp("inventory") / "b1")


def sku(i: int) -> str:
    return f"B{i:04d}"


def new_sku(name: str, **kw) -> NewSku:
    fields = dict(title=f"Title of {name}", category_path="Home/Kitchen", brand="Acme", seller="S1", price=9.5, discount=0.1, in_stock=True, qty=3, created_at=1.7e9)
    fields.update(kw)
    return NewSku(name, **fields)


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# --- a plain-Python model of the state ------------------------------------------------------------

Record = tuple[int, int, float, float, int, int]  # in_stock, qty, price, discount, promo, retired


def model(bundle: Bundle, deltas: Sequence[Delta]) -> dict[str, Record]:
    """bundle ⊕ deltas, by the semantics table of docs/inventory-wire.md §3."""
    col = bundle.item_column
    out: dict[str, Record] = {
        s: (int(a), int(q), float(p), float(d), 0, 0)
        for s, a, q, p, d in zip(bundle.items.ids_of(np.arange(bundle.n_items)), col("in_stock"), col("stock_qty"), col("price"), col("discount"))
    }
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    for d in deltas:
        cur = out.get(d.sku)
        if isinstance(d, NewSku):
            out[d.sku] = (int(d.in_stock), d.qty, f32(d.price), f32(d.discount), 0, 0)
        elif cur is None:
            continue
        elif isinstance(d, Stock):
            out[d.sku] = (int(d.in_stock and not cur[5]), d.qty, *cur[2:])
        elif isinstance(d, Price):
            out[d.sku] = (*cur[:2], f32(d.price), *cur[3:])
        elif isinstance(d, Discount):
            out[d.sku] = (*cur[:3], f32(d.discount), *cur[4:])
        elif isinstance(d, Promotion):
            out[d.sku] = (*cur[:4], d.flags, cur[5])
        elif isinstance(d, Retire):
            out[d.sku] = (0, cur[1], cur[2], cur[3], cur[4], 1)
    return out


def records(state: ItemState) -> dict[str, Record]:
    """SKU → record of every visible row."""
    n = state.n_rows
    names = list(state.items.ids_of(np.arange(state.n_base))) if state.items is not None else []
    names += [bytes(s).decode() for s in state.sku[: n - state.n_base]]
    cols = [state.in_stock[:n], state.stock_qty[:n], state.price[:n], state.discount[:n], state.promo[:n], state.retired[:n]]
    return {s: (int(a), int(q), float(p), float(d), int(m), int(r)) for s, a, q, p, d, m, r in zip(names, *cols)}


def differences(state: ItemState, expected: dict[str, Record]) -> list[str]:
    """What differs; a SKU the expectation does not know must be retired in the state."""
    got = records(state)
    bad = [f"{s}: state {got.get(s)}, expected {e}" for s, e in expected.items() if got.get(s) != e]
    bad += [f"{s}: {r} should be retired" for s, r in got.items() if s not in expected and (r[0] or not r[5])]
    return bad


# --- wire -------------------------------------------------------------------------------------------


ALL_KINDS: list[Delta] = [
    Stock("B0001", False, 0),
    Price("B0002", 19.99),
    Discount("B0003", 0.25),
    Promotion("B0004", 0b101),
    new_sku("N1", text_embedding=[0.5, -1.0]),
    Retire("B0005"),
]


def test_every_delta_kind_survives_a_round_trip_in_a_batch() -> None:
    batch = DeltaBatch("inv-1", 7, 42, 1.7e9, ALL_KINDS)
    decoded, checked = wire.decode_batch(wire.encode(batch))
    assert decoded == batch and checked.rejected == 0
    assert [wire.decode_json_delta(msgspec.json.encode(d)) for d in ALL_KINDS] == ALL_KINDS


def test_bad_deltas_are_rejected_alone_and_the_rest_of_the_batch_stays() -> None:
    raw = [
        {"type": "stock", "sku": "B0001", "in_stock": False, "qty": 0},
        {"type": "price", "sku": "B0002", "price": -1.0},
        {"type": "price", "sku": "B0002", "price": float("nan")},
        {"type": "discount", "sku": "B0003", "discount": 1.0},
        {"type": "stock", "sku": "B0001", "in_stock": True, "qty": -3},
        {"type": "promotion", "sku": "B0004", "flags": 2**32},
        {"type": "new_sku", **msgspec.to_builtins(new_sku("N2"), builtin_types=None), "category_path": "x" * 300},
        {"type": "teleport", "sku": "B0001"},
        {"type": "stock", "sku": "", "in_stock": True, "qty": 1},
        {"type": "discount", "sku": "B0003", "discount": 0.5},
    ]
    payload = msgspec.msgpack.encode({"publisher": "p", "epoch": 1, "seq": 3, "sent_at": 0.0, "deltas": raw})
    batch, checked = wire.decode_batch(payload)
    assert batch.seq == 3
    assert batch.deltas == [Stock("B0001", False, 0), Discount("B0003", 0.5)]
    assert checked.rejected == 8 and len(checked.errors) == 8
    with pytest.raises(wire.WireError):
        wire.decode_batch(msgspec.msgpack.encode({"publisher": "p", "epoch": 1, "deltas": []}))
    with pytest.raises(wire.WireError):
        wire.decode_batch(b"\xc1 not msgpack")


def test_a_new_field_from_a_newer_publisher_is_ignored() -> None:
    payload = msgspec.msgpack.encode(
        {"publisher": "p", "epoch": 1, "seq": 1, "sent_at": 0.0, "region": "eu", "deltas": [{"type": "price", "sku": "B0001", "price": 2.0, "currency": "EUR"}]}
    )
    assert wire.decode_batch(payload)[0].deltas == [Price("B0001", 2.0)]


# --- seqlock kernels ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_gather_offers_matches_numpy_without_a_writer(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 50))
    limit = data.draw(st.integers(0, n))
    rows = np.array(data.draw(st.lists(st.integers(-3, n + 3), max_size=40)), dtype=np.int32)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    version = (rng.integers(0, 1000, n) * 2).astype(np.uint32)
    price, discount = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
    in_stock, retired = rng.integers(0, 2, n).astype(np.uint8), rng.integers(0, 2, n).astype(np.uint8)
    out = [np.empty(len(rows), t) for t in (np.float32, np.float32, np.uint8, np.uint8, np.uint8)]
    assert gather_offers(rows, limit, version, price, discount, in_stock, retired, *out, 8) == 0
    ok = (rows >= 0) & (rows < limit)
    r = np.where(ok, rows, 0)
    np.testing.assert_array_equal(out[0], np.where(ok, price[r], 0))
    np.testing.assert_array_equal(out[1], np.where(ok, discount[r], 0))
    np.testing.assert_array_equal(out[2], np.where(ok, in_stock[r], 0))
    np.testing.assert_array_equal(out[3], np.where(ok, retired[r], 1))
    assert not out[4].any()


def test_a_row_left_odd_reads_as_unsettled_after_bounded_retries() -> None:
    version = np.array([2, 3], np.uint32)
    out = [np.empty(2, t) for t in (np.float32, np.float32, np.uint8, np.uint8, np.uint8)]
    one = np.ones(2, np.float32)
    assert gather_offers(np.array([0, 1], np.int32), 2, version, one, one, np.ones(2, np.uint8), np.zeros(2, np.uint8), *out, 16) == 1
    assert out[4].tolist() == [0, 1]


HOT_ROWS = np.arange(0, 64, 4, dtype=np.int64)  # 16 rows the writer hammers


def _hammer(path: str, seconds: float, started) -> None:
    """Writer process: full records through the same kernel as the subscriber, with
    discount = price * 1e-6 (float32) on every row, a new price each round."""
    state = ItemState.open(Path(path), readonly=False)
    k = len(HOT_ROWS)
    prices = [np.full(k, np.float32(i % 99_991 + 1)) for i in range(1000)]
    discounts = [p * np.float32(1e-6) for p in prices]
    ones, qty, promo = np.ones(k, np.uint8), np.zeros(k, np.int32), np.zeros(k, np.uint32)
    state.write_rows(HOT_ROWS, ones, qty, prices[-1], discounts[-1], promo, ones - 1)  # the invariant holds from here on
    started.set()
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        for _ in range(50):
            state.write_rows(HOT_ROWS, ones, qty, prices[i % 1000], discounts[i % 1000], promo, ones - 1)
            i += 1
    state.close()


def test_readers_never_see_a_torn_price_and_discount_under_a_writer_process(bundle: Bundle, tmp_path: Path) -> None:
    reader = ItemState.create(tmp_path / "items.state", bundle, capacity=8, readonly=True)
    started = SPAWN.Event()
    writer = SPAWN.Process(target=_hammer, args=(str(reader.path), 1.5, started))
    writer.start()
    try:
        assert started.wait(60)
        rows = HOT_ROWS.astype(np.int32)
        checked = torn = naive_torn = unsettled = 0
        while writer.is_alive():
            got = reader.gather(rows)
            ok = got.unsettled == 0
            unsettled += int((~ok).sum())
            torn += int((got.discount[ok] != got.price[ok] * np.float32(1e-6)).sum())
            checked += int(ok.sum())
            p, d = reader.price[rows], reader.discount[rows]  # no seqlock: two separate gathers
            naive_torn += int((d != p * np.float32(1e-6)).sum())
    finally:
        writer.join(30)
    assert writer.exitcode == 0
    assert checked > 10_000
    assert torn == 0, f"{torn} torn (price, discount) pairs among {checked} seqlock reads"
    assert naive_torn > 0, "the writer never overlapped the reader: the test proved nothing"
    assert unsettled < checked // 100


# --- state file -------------------------------------------------------------------------------------


def test_state_file_is_reused_for_the_same_build_and_replaced_for_other_sizes(bundle: Bundle, tmp_path: Path) -> None:
    path = state_path(tmp_path, bundle.build_id)
    assert path.name.startswith("items-") and ":" not in path.name
    with ItemState.create(path, bundle, capacity=16) as st_:
        assert (st_.n_base, st_.capacity, st_.dim, st_.n_new) == (N_BASE, 16, DIM, 0)
        np.testing.assert_array_equal(st_.price[:N_BASE], bundle.item_column("price"))
        np.testing.assert_array_equal(st_.in_stock[:N_BASE], bundle.item_column("in_stock"))
        StateWriter(st_, bundle.items).apply([Price(sku(1), 5.0)])
        with pytest.raises(StateError, match="another subscriber"):
            ItemState.open(path, readonly=False)
    inode = path.stat().st_ino
    with ItemState.create(path, bundle, capacity=16, readonly=True) as again:
        assert path.stat().st_ino == inode and again.price[1] == 5.0
        with pytest.raises(ValueError):
            again.price[1] = 1.0  # read-only mapping
    with ItemState.create(path, bundle, capacity=32, readonly=True) as bigger:
        assert bigger.capacity == 32 and bigger.price[1] == bundle.item_column("price")[1]


def test_opening_refuses_a_newer_format_and_a_corrupt_file(bundle: Bundle, tmp_path: Path) -> None:
    path = tmp_path / "items.state"
    ItemState.create(path, bundle, capacity=4).close()
    raw = bytearray(path.read_bytes())
    newer = raw.copy()
    np.frombuffer(newer, HEADER, count=1)["version"] = 99
    (tmp_path / "newer.state").write_bytes(bytes(newer))
    with pytest.raises(StateFormatError, match="newer Aisle"):
        ItemState.open(tmp_path / "newer.state")
    (tmp_path / "short.state").write_bytes(bytes(raw[: len(raw) - 4096]))
    with pytest.raises(StateError, match="corrupt"):
        ItemState.open(tmp_path / "short.state")
    (tmp_path / "other.state").write_bytes(b"x" * 8192)
    with pytest.raises(StateError, match="not an Aisle item state"):
        ItemState.open(tmp_path / "other.state")


# --- delta semantics (no sockets) -------------------------------------------------------------------


def test_retire_takes_an_item_out_and_only_new_sku_brings_it_back(bundle: Bundle, tmp_path: Path) -> None:
    with ItemState.create(tmp_path / "s.state", bundle, capacity=4) as state:
        w = StateWriter(state, bundle.items)
        r = bundle.items.row_of(sku(7))
        w.apply([Stock(sku(7), True, 4), Retire(sku(7))])
        assert (state.in_stock[r], state.retired[r]) == (0, 1)
        w.apply([Stock(sku(7), True, 9)])
        assert (state.in_stock[r], state.retired[r], state.stock_qty[r]) == (0, 1, 9)
        w.apply([new_sku(sku(7), in_stock=True, qty=2, price=3.0)])
        assert (state.in_stock[r], state.retired[r], state.stock_qty[r], state.price[r]) == (1, 0, 2, 3.0)
        assert state.n_new == 0  # a known SKU never takes a new row


def test_new_skus_get_rows_static_fields_and_a_vector_then_the_file_fills(bundle: Bundle, tmp_path: Path) -> None:
    with ItemState.create(tmp_path / "s.state", bundle, capacity=2, text_dim=2) as state:
        w = StateWriter(state, bundle.items, embed=lambda item: np.full(DIM, len(item.sku), np.float32))
        long_title = "é" * 100  # 200 UTF-8 bytes: cut to 128 on a character boundary
        done = w.apply([new_sku("N1", title=long_title, text_embedding=[1.0, 2.0]), Price("N1", 4.0), new_sku("N22"), new_sku("N3")])
        assert (done.new_rows, done.capacity_full, state.n_new) == (2, 1, 2)
        reader = ItemState.open(state.path, items=bundle.items)
        row = reader.row_of("N1")
        assert row == N_BASE
        item = reader.new_item(row)
        assert (item.sku, item.title, item.category_path, item.brand, item.has_vector) == ("N1", "é" * 64, "Home/Kitchen", "Acme", True)
        assert reader.price[row] == 4.0 and reader.in_stock[row] == 1
        np.testing.assert_array_equal(reader.vector[0], np.full(DIM, 2.0))
        np.testing.assert_array_equal(reader.text_embedding[0], [1.0, 2.0])
        assert reader.row_of("N22") == N_BASE + 1 and reader.row_of("N3") == -1
        bad = w.apply([new_sku("N4", text_embedding=[1.0])])
        assert bad.rejected == 1


HISTORY = st.lists(
    st.one_of(
        st.builds(Stock, st.sampled_from([sku(i) for i in range(6)] + ["X1", "X2"]), st.booleans(), st.integers(0, 9)),
        st.builds(Price, st.sampled_from([sku(1), sku(2), "X1", "X2"]), st.sampled_from([1.5, 2.25, 99.0])),
        st.builds(Discount, st.sampled_from([sku(1), "X1"]), st.sampled_from([0.0, 0.5])),
        st.builds(Promotion, st.sampled_from([sku(3), "X2"]), st.integers(0, 7)),
        st.builds(Retire, st.sampled_from([sku(0), sku(1), "X1", "X2"])),
        st.builds(lambda s, a, p: new_sku(s, in_stock=a, price=p), st.sampled_from([sku(2), "X1", "X2"]), st.booleans(), st.sampled_from([3.0, 4.0])),
    ),
    max_size=30,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(HISTORY, st.integers(1, 5))
def test_a_history_and_its_compacted_snapshot_give_the_same_state(bundle: Bundle, history: list[Delta], batch: int) -> None:
    expected = model(bundle, history)
    assert model(bundle, compact(history)) == expected
    with tempfile.TemporaryDirectory() as tmp:
        with ItemState.create(Path(tmp) / "a.state", bundle, capacity=4) as a, ItemState.create(Path(tmp) / "b.state", bundle, capacity=4) as b:
            wa = StateWriter(a, bundle.items, Baseline.of(bundle))
            for i in range(0, len(history), batch):
                wa.apply(history[i : i + batch])
            StateWriter(b, bundle.items, Baseline.of(bundle)).rebase(compact(history))
            assert differences(a, expected) == []
            assert differences(b, expected) == []
            # and a rebase undoes whatever a different history did before
            wa.rebase(compact(history[: len(history) // 2]))
            assert differences(a, model(bundle, history[: len(history) // 2])) == []


# --- over ZeroMQ ----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(pub: InventoryPublisher) -> Iterator[InventoryPublisher]:
    stop = threading.Event()
    thread = threading.Thread(target=pub.serve_forever, args=(stop, 20), daemon=True)
    thread.start()
    try:
        yield pub
    finally:
        stop.set()
        thread.join(5)
        pub.close()


@contextlib.contextmanager
def subscribed(state: ItemState, bundle: Bundle, updates: str, snapshot: str, **kw) -> Iterator[Subscriber]:
    sub = Subscriber(state, bundle.items, updates, snapshot, bundle=bundle, poll_ms=20, snapshot_timeout_s=1.0, retry_s=(0.05, 0.5), **kw)
    stop = threading.Event()
    thread = threading.Thread(target=sub.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield sub
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive(), "subscriber did not stop within 5 s"


def publisher(name: str = "inv-test", pub: str = "tcp://127.0.0.1:*", snap: str = "tcp://127.0.0.1:*", **kw) -> InventoryPublisher:
    return InventoryPublisher(pub, snap, name, heartbeat_s=0.2, **kw)


def matches(state: ItemState, expected: dict[str, Record]) -> Callable[[], bool]:
    return lambda: not differences(state, expected)


def test_sequence_rules_of_a_synced_subscriber(bundle: Bundle, tmp_path: Path) -> None:
    """The state machine alone (no sockets): what each incoming batch leads to."""
    with ItemState.create(tmp_path / "s.state", bundle, capacity=4) as state:
        sub = Subscriber(state, bundle.items, "inproc://unused", "inproc://unused", bundle=bundle)

        def feed(epoch: int, seq: int, *deltas: Delta) -> str | None:
            sub._on_message([wire.TOPIC, wire.encode(DeltaBatch("p", epoch, seq, time.time(), list(deltas)))])
            return sub._need

        def synced_at(epoch: int, seq: int) -> None:
            sub._need, sub._key, sub._last_seq = None, ("p", epoch), seq

        synced_at(1, 5)
        assert feed(1, 6, Stock(sku(1), False, 0)) is None and state.in_stock[1] == 0
        assert feed(1, 6) is None and feed(1, 4, Stock(sku(1), True, 1)) is None  # heartbeat, duplicate
        assert state.in_stock[1] == 0
        assert "gap" in feed(1, 7)  # a heartbeat ahead of us: batch 7 was lost
        synced_at(1, 7)
        assert "gap" in feed(1, 9, Stock(sku(2), False, 0))
        assert state.in_stock[2] == 0  # applied at once all the same
        synced_at(1, 9)
        assert "epoch 2" in feed(2, 1, Stock(sku(3), False, 0))
        sub._superseded.add(("p", 1))
        synced_at(2, 1)
        assert feed(1, 10, Stock(sku(3), True, 1)) is None and state.in_stock[3] == 0  # from a replaced epoch
        sub._on_message([b"other-topic", b"x"])
        sub._on_message([wire.TOPIC, b"\xc1"])
        c = state.stats().counters
        assert (c["heartbeats"], c["duplicate_batches"], c["stale_batches"], c["bad_messages"], c["gaps"]) == (2, 1, 1, 2, 2)


def test_late_joiner_gets_everything_published_before_it_started(bundle: Bundle, tmp_path: Path) -> None:
    history: list[Delta] = [Stock(sku(i), False, 0) for i in range(0, 40, 3)] + [Price(sku(5), 1.25), new_sku("N1"), Retire(sku(9))]
    with serving(publisher()) as pub, ItemState.create(tmp_path / "s.state", bundle, capacity=8) as state:
        for d in history:
            pub.publish_one(d)
        assert state.status == Status.NEW
        with subscribed(state, bundle, pub.pub_endpoint, pub.snapshot_endpoint) as sub:
            assert sub.synced.wait(5)
            assert differences(state, model(bundle, history)) == []
            assert state.status == Status.SYNCED and state.progress().seq == pub.seq
            later = [Stock(sku(1), False, 0), Discount(sku(2), 0.5)]
            pub.publish(later)
            assert wait_until(matches(state, model(bundle, history + later)), 2)
            stats = state.stats()
            assert stats.counters["resyncs"] == 1 and stats.counters["gaps"] == 0 and stats.counters["applied_batches"] >= 1


def test_lost_messages_are_detected_and_repaired_by_a_resync(bundle: Bundle, tmp_path: Path) -> None:
    history: list[Delta] = []
    with serving(publisher()) as pub, ItemState.create(tmp_path / "s.state", bundle, capacity=8) as state:
        with subscribed(state, bundle, pub.pub_endpoint, pub.snapshot_endpoint, drop_every_n=4) as sub:
            assert sub.synced.wait(5)
            for i in range(40):
                d = Stock(sku(i), i % 2 == 0, i) if i % 3 else Price(sku(i), float(i + 1))
                history.append(d)
                pub.publish_one(d)
                time.sleep(0.002)
            assert wait_until(matches(state, model(bundle, history)), 5), differences(state, model(bundle, history))[:5]
            c = state.stats().counters
            assert c["dropped_on_purpose"] >= 5 and c["gaps"] >= 1 and c["resyncs"] >= 2


def test_a_restarted_publisher_is_a_new_epoch_and_the_state_follows_it(bundle: Bundle, tmp_path: Path) -> None:
    pub_ep, snap_ep = f"ipc://{tmp_path}/pub.ipc", f"ipc://{tmp_path}/snap.ipc"
    first: list[Delta] = [Stock(sku(1), False, 0), Price(sku(2), 7.0), new_sku("N1"), Promotion(sku(3), 4)]
    with ItemState.create(tmp_path / "s.state", bundle, capacity=8) as state, subscribed(state, bundle, pub_ep, snap_ep) as sub:
        with serving(publisher(pub=pub_ep, snap=snap_ep, epoch=1)) as pub:
            assert sub.synced.wait(5)
            pub.publish(first)
            assert wait_until(matches(state, model(bundle, first)), 2), (differences(state, model(bundle, first))[:3], state.stats())
            sub.synced.clear()
        # The new incarnation reloads only part of the truth, then publishes more.
        with serving(publisher(pub=pub_ep, snap=snap_ep, epoch=2)) as second:
            second.load([Stock(sku(1), False, 0), new_sku("N2")])
            second.publish([Stock(sku(4), False, 0)])
            expected = model(bundle, [Stock(sku(1), False, 0), new_sku("N2"), Stock(sku(4), False, 0)])
            assert sub.synced.wait(5)
            assert wait_until(matches(state, expected), 3), differences(state, expected)[:5]
            assert state.progress().epoch == 2
            n1 = state.row_of("N1")
            assert (state.in_stock[n1], state.retired[n1]) == (0, 1)  # the old epoch's new SKU is gone
            assert state.stats().counters["reverted_rows"] >= 3


def test_new_and_retired_skus_reach_a_read_only_mapping(bundle: Bundle, tmp_path: Path) -> None:
    with serving(publisher()) as pub, ItemState.create(tmp_path / "s.state", bundle, capacity=8) as state:
        reader = ItemState.open(state.path, readonly=True, items=bundle.items)
        with subscribed(state, bundle, pub.pub_endpoint, pub.snapshot_endpoint) as sub:
            assert sub.synced.wait(5)
            assert reader.row_of("NEW-1") == -1
            pub.publish([new_sku("NEW-1", title="Enamel pot", brand="Le Pot", price=80.0), Retire(sku(11))])
            assert wait_until(lambda: reader.n_new == 1)
            row = reader.row_of("NEW-1")
            assert row == N_BASE
            got = reader.gather(np.array([row, bundle.items.row_of(sku(11))], np.int32))
            assert got.price.tolist() == [80.0, pytest.approx(float(bundle.item_column("price")[11]))]
            assert got.in_stock.tolist() == [1, 0] and got.retired.tolist() == [0, 1]
            item = reader.new_item(row)
            assert (item.title, item.brand, item.category_path) == ("Enamel pot", "Le Pot", "Home/Kitchen")


def test_publish_from_file_goes_through_a_running_publisher(bundle: Bundle, tmp_path: Path) -> None:
    lines = tmp_path / "deltas.jsonl"
    lines.write_text(
        "# inventory feed\n"
        '{"type": "stock", "sku": "B0003", "in_stock": false, "qty": 0}\n'
        "\n"
        '{"type": "price", "sku": "B0004", "price": -2}\n'
        "not json\n"
        '{"type": "discount", "sku": "B0004", "discount": 0.3}\n'
    )
    with serving(publisher()) as pub, ItemState.create(tmp_path / "s.state", bundle, capacity=8) as state:
        with subscribed(state, bundle, pub.pub_endpoint, pub.snapshot_endpoint) as sub:
            assert sub.synced.wait(5)
            report = publish_from_file(lines, pub.snapshot_endpoint)
            assert (report.accepted, report.rejected) == (2, 2) and report.seq == pub.seq
            assert any(":5:" in e for e in report.errors)
            assert publish_one(Stock(sku(5), False, 0), pub.snapshot_endpoint).seq == pub.seq
            expected = model(bundle, [Stock(sku(3), False, 0), Discount(sku(4), 0.3), Stock(sku(5), False, 0)])
            assert wait_until(matches(state, expected), 2)


def _watch_flips(path: str, row: int, flips: int, conn) -> None:
    """Reader process: report (value, wall time) each time in_stock[row] changes."""
    state = ItemState.open(Path(path), readonly=True)
    last = int(state.in_stock[row])
    conn.send(("ready", last))
    end = time.monotonic() + 30
    while flips and time.monotonic() < end:
        now = int(state.in_stock[row])
        if now != last:
            conn.send((now, time.time()))
            last, flips = now, flips - 1
        else:
            time.sleep(0.0001)


def test_an_out_of_stock_is_visible_in_another_process_within_a_second(bundle: Bundle, tmp_path: Path) -> None:
    flips = 20
    with serving(publisher()) as pub, ItemState.create(tmp_path / "s.state", bundle, capacity=8) as state:
        with subscribed(state, bundle, pub.pub_endpoint, pub.snapshot_endpoint) as sub:
            assert sub.synced.wait(5)
            row = bundle.items.row_of(sku(20))
            pub.publish_one(Stock(sku(20), True, 1))
            assert wait_until(lambda: state.in_stock[row] == 1)
            ours, theirs = SPAWN.Pipe()
            watcher = SPAWN.Process(target=_watch_flips, args=(str(state.path), row, flips, theirs))
            watcher.start()
            try:
                assert ours.poll(60) and ours.recv() == ("ready", 1)
                lags = []
                for i in range(flips):
                    value = i % 2  # 0 first: out of stock
                    sent = time.time()
                    pub.publish_one(Stock(sku(20), bool(value), value))
                    assert ours.poll(1.0), f"flip {i} not seen within 1 s"
                    seen, at = ours.recv()
                    assert seen == value
                    lags.append(at - sent)
            finally:
                watcher.join(10)
            assert max(lags) < 1.0


def _publish_bundle(root: Path, build_id: str, n: int) -> None:
    """A published bundle with just the item table (the inventory needs nothing else)."""
    staging = staging_dir(root, build_id)
    src = _make_bundle(root / f".src-{build_id}", n)
    for name in ("items/sku.npy", "items/in_stock.npy", "items/stock_qty.npy", "items/price.npy", "items/discount.npy", "embeddings/items.npy"):
        save_array(staging, name, np.asarray(src.array(name)))
    files, arrays = inventory(staging)
    manifest = Manifest(
        build_id=build_id, created_at="2026-01-01T00:00:00Z", builder_version="test", inputs={}, config={},
        counts={"items": n}, dims={}, vocab_sizes={}, arrays=arrays, files=files, feature_spec=[], eval={}, stage_seconds={},
    )
    finalize(staging, manifest)
    set_current(root, build_id)


def test_following_current_makes_a_synced_state_file_per_bundle_and_prunes_old_ones(tmp_path: Path) -> None:
    bundles, states = tmp_path / "bundles", tmp_path / "state"
    bundles.mkdir()
    _publish_bundle(bundles, "build-1", 50)
    stop = threading.Event()
    with serving(publisher()) as pub:
        pub.publish([Stock(sku(3), False, 0), new_sku("N1")])
        thread = threading.Thread(
            target=follow, args=(bundles, states, pub.pub_endpoint, pub.snapshot_endpoint, stop), kwargs={"capacity": 4, "check_s": 0.05}, daemon=True
        )
        thread.start()
        try:
            seen: dict[str, ItemState] = {}
            for build_id, n in (("build-1", 50), ("build-2", 60), ("build-3", 70)):
                if build_id != "build-1":
                    _publish_bundle(bundles, build_id, n)
                path = state_path(states, build_id)
                assert wait_until(path.exists, 5)
                b = open_bundle(bundles / build_id, verify="none")
                seen[build_id] = reader = ItemState.open(path, items=b.items)
                assert wait_until(lambda: reader.status == Status.SYNCED, 5)
                assert reader.n_base == n and reader.row_of("N1") == n
                assert reader.in_stock[b.items.row_of(sku(3))] == 0
                pub.publish_one(Stock(sku(4), False, 0))
                assert wait_until(lambda: reader.in_stock[b.items.row_of(sku(4))] == 0, 2)
                pub.publish_one(Stock(sku(4), True, 1))
            # Pruning follows the new file's sync in the follower's own loop: eventually, not at once.
            kept = ["items-build-2.state", "items-build-3.state"]
            assert wait_until(lambda: sorted(p.name for p in states.glob("items-*.state")) == kept, 5)
            old = seen["build-1"]  # a worker still mapping a pruned file keeps reading it
            assert old.row_of("N1") == 50 and old.in_stock[3] == 0 and old.status == Status.SYNCED
        finally:
            stop.set()
            thread.join(5)
        assert not thread.is_alive()
