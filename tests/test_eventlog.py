"""The durable event log (engine.eventlog) and its builder adapter (builder.adapters.eventlog):
idempotency, ordering and durability across real processes, group commit, the map-full refusal,
the decayed counters and the recent ring, and the round trip into `load_store`."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import lmdb
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import artifacts  # noqa: F401  (loads onnxruntime before usearch: see artifacts/__init__.py)
from artifacts.schema import EVENTS, EventType
from builder.adapters.eventlog import export_events, merge_events
from builder.ingest import load_store
from engine.eventlog import COUNTERS, EventLog, EventLogError, EventLogFormatError, EventLogFull, RecentItem
from engine.schemas import Event

REPO = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000.0


def event(event_id: str, *, user_id: str = "u1", sku: str = "SKU-1", type: str = "click", ts: float | None = NOW - 10, **extra) -> Event:
    return Event(event_id=event_id, user_id=user_id, sku=sku, type=type, ts=ts, **extra)  # type: ignore[arg-type]


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    """A fresh interpreter running `code` (argv[1:] = args), stdout piped as text."""
    prelude = "import sys, json, time\nfrom pathlib import Path\nimport artifacts\nfrom engine.eventlog import EventLog\nfrom engine.schemas import Event\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def all_events(state: Path) -> list:
    with EventLog(state) as log:
        return list(log.iter_events())


# ---- append and idempotency ---------------------------------------------------------------------


def test_a_batch_is_logged_in_order_and_a_repeated_event_id_counts_once(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        result = log.append([event("e1"), event("e2", sku="SKU-2"), event("e1")], now=NOW)
        assert (result.accepted_ids, result.duplicate_ids, result.first_seq) == (["e1", "e2"], ["e1"], 1)
        again = log.append([event("e2"), event("e3")], now=NOW)
        assert (again.accepted_ids, again.duplicate_ids, again.first_seq) == (["e3"], ["e2"], 3)
        assert log.append([event("e1")], now=NOW).response().duplicates == 1
        rows = list(log.iter_events())
        assert [(seq, e.event_id, e.sku) for seq, e in rows] == [(1, "e1", "SKU-1"), (2, "e2", "SKU-2"), (3, "e3", "SKU-1")]
        assert [e.event_id for _, e in log.iter_events(since_seq=2)] == ["e3"]
        assert log.last_seq() == 3 and log.seq_of("e2") == 2 and log.seq_of("nope") is None


def test_every_field_is_stored_and_a_missing_ts_is_the_receive_time(tmp_path: Path) -> None:
    full = event("full", type="dwell", session_id="s", surface="pdp", request_id="r", position=3, dwell_ms=1500, device="app", region="eu")
    with EventLog(tmp_path) as log:
        log.append([full, event("no-ts", ts=None)], now=NOW)
        (_, stored), (_, defaulted) = log.iter_events()
    assert (stored.type_name, stored.surface_name, stored.session_id, stored.request_id) == ("dwell", "pdp", "s", "r")
    assert (stored.position, stored.dwell_ms, stored.device, stored.region, stored.ts) == (3, 1500, "app", "eu", NOW - 10)
    assert defaulted.ts == defaulted.received_at == NOW


def test_invalid_events_are_rejected_one_by_one_and_take_no_seq(tmp_path: Path) -> None:
    batch = [
        event("bad-user", user_id=""),
        event("ok-1"),
        event("bad-surface", surface="email"),
        event("bad-ts", ts=NOW + 3600),
        event("bad-position", position=-2),
        event("x" * 129),
        event("ok-2"),
    ]
    with EventLog(tmp_path) as log:
        result = log.append(batch, now=NOW)
        assert result.accepted_ids == ["ok-1", "ok-2"] and result.first_seq == 1
        assert [r.index for r in result.rejections] == [0, 2, 3, 4, 5]
        assert "surface must be one of" in result.rejections[1].reason
        assert [seq for seq, _ in log.iter_events()] == [1, 2]


def test_a_long_event_id_is_keyed_by_its_hash_and_still_deduplicated(tmp_path: Path) -> None:
    long_id = "é" * 128  # 256 bytes of UTF-8: still the raw key
    longer = "€" * 128  # 384 bytes: keyed by its hash (LMDB keys stop at 511 bytes)
    with EventLog(tmp_path) as log:
        assert log.append([event(long_id), event(longer)], now=NOW).accepted_ids == [long_id, longer]
        assert log.append([event(longer)], now=NOW).duplicate_ids == [longer]


def test_duplicates_only_commit_nothing(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append([event("e1")], now=NOW)
        assert log.append([event("e1"), event("bad", user_id="")], now=NOW).accepted_ids == []
        assert log.commits == 1


# ---- several processes -------------------------------------------------------------------------

_RACER = """
    state, name = Path(sys.argv[1]), sys.argv[2]
    log = EventLog(state)
    (state / f"ready-{name}").touch()
    while len(list(state.glob("ready-*"))) < 2:  # start together, so the writers really contend
        time.sleep(0.001)
    shared = [f"shared-{k}" for k in range(600)]
    if name == "b":
        shared.reverse()
    own = [f"{name}-{k}" for k in range(600)]
    accepted = duplicates = 0
    for start in range(0, 600, 50):
        ids = [x for pair in zip(shared[start:start + 50], own[start:start + 50]) for x in pair]
        result = log.append([Event(event_id=i, user_id=name, sku="SKU-" + i[-2:], type="click") for i in ids])
        accepted += len(result.accepted_ids)
        duplicates += len(result.duplicate_ids)
    print(json.dumps({"accepted": accepted, "duplicates": duplicates}))
"""


def test_two_processes_appending_at_once_lose_nothing_and_share_one_gapless_sequence(tmp_path: Path) -> None:
    EventLog(tmp_path).close()  # created once, as the first worker would
    children = [run_child(_RACER, str(tmp_path), name) for name in ("a", "b")]
    outputs = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    rows = all_events(tmp_path)
    ids = [e.event_id for _, e in rows]
    expected = {f"shared-{k}" for k in range(600)} | {f"{p}-{k}" for p in "ab" for k in range(600)}
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert [seq for seq, _ in rows] == list(range(1, len(expected) + 1))
    assert sum(o["accepted"] for o in outputs) == len(expected)
    assert sum(o["duplicates"] for o in outputs) == 600  # each shared id: accepted by one, duplicate for the other


def test_an_event_logged_by_one_process_is_a_duplicate_for_another(tmp_path: Path) -> None:
    child = run_child(
        """
        log = EventLog(Path(sys.argv[1]))
        print(len(log.append([Event(event_id="once", user_id="u", sku="s", type="purchase")]).accepted_ids))
        """,
        str(tmp_path),
    )
    assert child.communicate(timeout=30)[0].strip() == "1"
    with EventLog(tmp_path) as log:
        assert log.append([event("once")], now=NOW).duplicate_ids == ["once"]


def test_accepted_events_survive_a_sigkill_right_after_append_returns(tmp_path: Path) -> None:
    child = run_child(
        """
        log = EventLog(Path(sys.argv[1]))
        events = [Event(event_id=f"k-{i}", user_id="u", sku=f"s{i}", type="add_to_cart") for i in range(100)]
        assert len(log.append(events).accepted_ids) == 100
        print("ok", flush=True)
        time.sleep(60)
        """,
        str(tmp_path),
    )
    assert child.stdout.readline().strip() == "ok"  # type: ignore[union-attr]
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    rows = all_events(tmp_path)
    assert [e.event_id for _, e in rows] == [f"k-{i}" for i in range(100)]
    with EventLog(tmp_path) as log:
        assert [r.sku for r in log.recent("u")] == [f"s{i}" for i in range(50, 100)]


def test_a_writer_killed_mid_transaction_leaves_no_trace_and_no_stuck_lock(tmp_path: Path) -> None:
    child = run_child(
        """
        log = EventLog(Path(sys.argv[1]))
        txn = log._env.begin(write=True)
        txn.put(b"half-written", b"x", db=log._meta)
        print("in-txn", flush=True)
        time.sleep(60)
        """,
        str(tmp_path),
    )
    assert child.stdout.readline().strip() == "in-txn"  # type: ignore[union-attr]
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    with EventLog(tmp_path) as log:  # LMDB's robust writer mutex: the next writer recovers it
        assert log.append([event("after")], now=NOW).accepted_ids == ["after"]
        with log._env.begin(db=log._meta) as txn:
            assert txn.get(b"half-written") is None


# ---- group commit ------------------------------------------------------------------------------


def test_concurrent_async_appends_share_commits_and_all_are_durable(tmp_path: Path) -> None:
    log = EventLog(tmp_path)

    async def main() -> list:
        calls = [log.append_async([event(f"g{i}-{j}", user_id=f"u{i}") for j in range(5)], now=NOW) for i in range(20)]
        results = await asyncio.gather(*calls)
        await log.aclose()
        return results

    results = asyncio.run(main())
    assert log.commits < 20
    assert all(len(r.accepted_ids) == 5 for r in results)
    firsts = [r.first_seq for r in results]
    assert firsts == sorted(firsts) and len(set(firsts)) == 20  # call order, each call contiguous
    assert {e.event_id for _, e in all_events(tmp_path)} == {f"g{i}-{j}" for i in range(20) for j in range(5)}


def test_async_duplicates_across_calls_in_one_group_count_once(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:

        async def main() -> list:
            return await asyncio.gather(*(log.append_async([event("same"), event(f"own-{i}")], now=NOW) for i in range(5)))

        results = asyncio.run(main())
        assert sum(len(r.accepted_ids) for r in results) == 6
        assert [r.duplicate_ids for r in results] == [[]] + [["same"]] * 4
        asyncio.run(main())  # a second event loop gets its own committer
        assert log.last_seq() == 6


# ---- map full ----------------------------------------------------------------------------------


def test_a_full_map_refuses_the_batch_and_writes_none_of_it(tmp_path: Path) -> None:
    small = 1 << 20
    log = EventLog(tmp_path, map_size=small)
    big = "x" * 120
    full_at = None
    for n in range(200):
        before = (log.last_seq(), log.counters(["SKU-1"], now=NOW).tolist(), log.recent("u1"))
        batch = [event(f"b{n}-{i}", session_id=big, request_id=big) for i in range(100)]
        try:
            log.append(batch, now=NOW)
        except EventLogFull as exc:
            full_at = n
            assert "full" in str(exc)
            break
    assert full_at is not None and full_at > 0
    assert (log.last_seq(), log.counters(["SKU-1"], now=NOW).tolist(), log.recent("u1")) == before
    assert log.seq_of(f"b{full_at}-0") is None
    assert [seq for seq, _ in log.iter_events()] == list(range(1, log.last_seq() + 1))

    async def async_full() -> None:
        await log.append_async([event(f"late-{i}", session_id=big, request_id=big) for i in range(500)], now=NOW)

    with pytest.raises(EventLogFull):
        asyncio.run(async_full())
    assert log.append([event(f"b{full_at - 1}-0")], now=NOW).duplicate_ids  # still readable and answering
    log.close()


# ---- counters and the recent ring ---------------------------------------------------------------


def test_counters_decay_by_half_life_whatever_the_arrival_order(tmp_path: Path) -> None:
    with EventLog(tmp_path, half_life_s=100.0) as log:
        log.append([event("c1", ts=1000.0), event("v1", type="dwell", ts=1100.0)], now=2000.0)
        log.append([event("c2", ts=1100.0), event("p1", type="purchase", ts=1050.0), event("skip", type="skip", ts=1100.0)], now=2000.0)
        log.append([event("i1", type="impression", sku="SKU-2", ts=1200.0)], now=2000.0)
        got = log.counters(["SKU-1", "SKU-2", "NEVER"], now=1200.0)
    assert got.dtype == np.float32 and got.shape == (3, len(COUNTERS))
    # at t=1200 with h=100: clicks 2^-2 + 2^-1, views 2^-1, purchases 2^-1.5, the skip counts nowhere
    np.testing.assert_allclose(got[0], [0.5, 0.75, 0.0, 2**-1.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(got[1], [0, 0, 0, 0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)


def test_the_half_life_is_fixed_when_the_log_is_created(tmp_path: Path) -> None:
    EventLog(tmp_path, half_life_s=100.0).close()
    with EventLog(tmp_path) as log:
        assert log.half_life_s == 100.0
    with pytest.raises(EventLogError, match="half-life 100.0"):
        EventLog(tmp_path, half_life_s=3600.0)


def test_the_recent_ring_keeps_the_last_interactions_in_time_order(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        clicks = [event(f"r{i}", sku=f"S{i}", ts=1000.0 + i) for i in range(60)]
        noise = [event(f"n{i}", sku="NOISE", type=t, ts=2000.0) for i, t in enumerate(("impression", "skip", "dwell"))]
        log.append(clicks[:30] + noise, now=NOW)
        log.append(clicks[30:], now=NOW)
        log.append([event("late", sku="LATE", type="purchase", ts=1055.5)], now=NOW)  # arrives late, sorts in place
        ring = log.recent("u1")
        assert len(ring) == 50 and log.recent("nobody") == []
        assert [r.ts for r in ring] == sorted(r.ts for r in ring)
        assert ring[-5] == RecentItem("LATE", int(EventType.PURCHASE), 1055.5)
        assert [r.sku for r in ring][:3] == ["S11", "S12", "S13"]
        rows = {"S58": 7, "S59": 9}
        got = log.recent_rows("u1", lambda sku: rows.get(sku, -1), since_ts=1050.0)
        assert got.dtype == np.int32 and got.tolist() == [7, 9]


# ---- format ------------------------------------------------------------------------------------


def test_a_log_from_a_newer_format_is_refused_as_newer(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        with log._env.begin(write=True, db=log._meta) as txn:
            txn.put(b"format", b"99")
    with pytest.raises(EventLogFormatError, match="newer"):
        EventLog(tmp_path)


def test_opening_read_only_needs_an_existing_log(tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match="no such file"):
        EventLog(tmp_path / "none", readonly=True)
    EventLog(tmp_path).close()
    with EventLog(tmp_path, readonly=True) as log, pytest.raises(EventLogError, match="read-only"):
        log.append([event("e")])


# ---- builder adapter ---------------------------------------------------------------------------


def test_export_writes_canonical_events_and_increments_by_count(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with EventLog(state) as log:
        log.append([event("x1", ts=NOW - 0.5, surface="pdp", position=2), event("x2", type="dwell", dwell_ms=900)], now=NOW)
    first = export_events(state, tmp_path / "a" / "events.parquet")
    frame = pl.read_parquet(tmp_path / "a" / "events.parquet")
    assert first == 2 and tuple(frame.columns) == EVENTS.names
    assert frame.row(0, named=True) | {"ts": None} == {
        "ts": None, "user_id": "u1", "session_id": "", "sku": "SKU-1", "type": "click", "dwell_ms": 0,
        "surface": "pdp", "request_id": "", "position": 2, "device": "", "region": "", "event_id": "x1",
    }  # fmt: skip
    assert frame["ts"].to_list() == [math.floor(NOW - 0.5), int(NOW - 10)]
    with EventLog(state) as log:
        log.append([event("x3")], now=NOW)
    assert export_events(state, tmp_path / "b.parquet", since_seq=first) == 1
    assert pl.read_parquet(tmp_path / "b.parquet")["event_id"].to_list() == ["x3"]


def test_merge_adds_the_logs_events_once_and_the_builder_accepts_the_store(tiny_store: Path, tmp_path: Path) -> None:
    store_events = pl.read_parquet(tiny_store / "events.parquet")
    skus = pl.read_parquet(tiny_store / "catalog.parquet")["sku"].head(3).to_list()
    already = store_events.row(0, named=True)
    state = tmp_path / "state"
    with EventLog(state) as log:
        fresh = [event(f"live-{i}", user_id="new-shopper", sku=skus[i % 3], type="purchase", ts=NOW - 100 + i) for i in range(10)]
        log.append([*fresh, event(already["event_id"], user_id=already["user_id"], sku=already["sku"], type=already["type"])], now=NOW)
    out = tmp_path / "merged"
    summary = merge_events(tiny_store, state, out)
    assert summary == {"store_events": store_events.height, "log_events": 11, "log_duplicates": 1, "events": store_events.height + 10}
    assert sorted(p.name for p in out.iterdir()) == ["catalog.parquet", "events.parquet", "users.parquet"]
    store = load_store(out)
    assert store.report.rows_read["events.parquet"] == store_events.height + 10
    assert (out / "catalog.parquet").read_bytes() == (tiny_store / "catalog.parquet").read_bytes()
    again = merge_events(out, state, out)  # in place, same log: nothing added twice
    assert again["events"] == store_events.height + 10 and again["log_duplicates"] == 11
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # no temp dirs left


def test_merge_keeps_a_csv_catalog_and_extra_event_columns(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "catalog.csv").write_text("sku,category_path\nA,Home/Kitchen\nB,Home/Garden\n")
    (store / "events.csv").write_text("ts,user_id,sku,type,split\n1700000000,u1,A,click,train\n2023-11-15T00:00:00Z,u1,B,purchase,test\n")
    state = tmp_path / "state"
    with EventLog(state) as log:
        log.append([event("n1", sku="B")], now=NOW)
    merge_events(store, state, tmp_path / "out")
    merged = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert merged["split"].to_list() == ["train", "test", None]
    assert merged["ts"].to_list() == [1_700_000_000, 1_700_006_400, int(NOW - 10)]
    assert load_store(tmp_path / "out").report.rows_read["events.parquet"] == 3


def test_the_counter_record_is_six_little_endian_doubles(tmp_path: Path) -> None:
    # The on-disk format is a contract (docs/event-log.md): last_ts, then one double per COUNTERS.
    with EventLog(tmp_path, half_life_s=60.0) as log:
        log.append([event("f1", type="add_to_cart", ts=1234.0)], now=2000.0)
        env: lmdb.Environment = log._env
        with env.begin() as txn:
            raw = txn.get(b"SKU-1", db=log._counters)
    assert struct.unpack("<6d", raw) == (1234.0, 0.0, 0.0, 1.0, 0.0, 0.0)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["click", "dwell", "purchase", "impression", "add_to_cart"]), st.integers(0, 10_000)),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 4),
)
def test_counters_equal_the_closed_form_sum_in_any_order_and_batching(events: list[tuple[str, int]], batches: int) -> None:
    half_life, now = 3_000.0, 12_000.0
    column = {"dwell": 0, "click": 1, "add_to_cart": 2, "purchase": 3, "impression": 4}
    expected = np.zeros(len(COUNTERS))
    for type_name, ts in events:
        expected[column[type_name]] += 2.0 ** (-(now - ts) / half_life)
    with tempfile.TemporaryDirectory() as state, EventLog(Path(state), half_life_s=half_life) as log:
        batch = [event(f"h{i}", type=t, ts=float(ts)) for i, (t, ts) in enumerate(events)]
        for part in np.array_split(np.arange(len(batch)), batches):
            if len(part):
                log.append([batch[i] for i in part], now=now)
        np.testing.assert_allclose(log.counters(["SKU-1"], now=now)[0], expected, rtol=1e-5, atol=1e-6)


def test_a_malformed_call_in_a_group_fails_alone(tmp_path: Path) -> None:
    broken = types.SimpleNamespace(event_id="broken", user_id="u", sku="s", type="click", ts=None)  # no surface, …

    async def main() -> list:
        calls = [log.append_async([event(f"ok-{i}")], now=NOW) for i in range(3)]
        calls.insert(1, log.append_async([broken], now=NOW))  # type: ignore[list-item]
        return await asyncio.gather(*calls, return_exceptions=True)

    with EventLog(tmp_path) as log:
        outcomes = asyncio.run(main())
        assert isinstance(outcomes[1], AttributeError)
        assert [o.accepted_ids for i, o in enumerate(outcomes) if i != 1] == [["ok-0"], ["ok-1"], ["ok-2"]]


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(st.tuples(st.lists(st.tuples(st.sampled_from(["SKU-1", "SKU-2", "SKU-3"]), st.sampled_from(["click", "purchase", "impression", "dwell"])), max_size=5),
                                st.lists(st.sampled_from(["SKU-1", "SKU-2", "SKU-3", "NEVER"]), min_size=1, max_size=4)), min_size=1, max_size=8),
       max_scan=st.sampled_from([1, 2_000]))
def test_a_workers_counter_cache_reads_what_the_log_holds(steps: list, max_scan: int) -> None:
    """LiveCounts (engine/livecounts.py) keeps counters between requests and forgets the items of
    newly logged events: whatever the interleaving, it reads what the log itself answers."""
    from engine.livecounts import LiveCounts

    with tempfile.TemporaryDirectory() as tmp, EventLog(Path(tmp), half_life_s=100.0) as log:
        cache = LiveCounts(log, max_scan=max_scan)
        n = 0
        for batch, reads in steps:
            log.append([event(f"e{n + i}", sku=sku, type=kind, ts=1000.0 + n + i) for i, (sku, kind) in enumerate(batch)], now=2000.0)
            n += len(batch)
            np.testing.assert_array_equal(cache.counters(reads, now=1500.0), log.counters(reads, now=1500.0))
