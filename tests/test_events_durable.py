"""The durable event path over HTTP: a 202 means stored, whatever happens to the server next."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from engine.eventlog import EventLog
from tests._server import Server

pytestmark = pytest.mark.slow


def test_accepted_events_survive_kill_9_right_after_the_202(tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    srv = Server(tiny_bundle, state, workers=2)
    accepted: list[str] = []
    try:
        srv.wait_ready(workers=2)
        for batch in range(20):
            events = [
                {"event_id": f"b{batch}-e{i}", "user_id": f"u{i % 7}", "sku": "SKU-ANY", "type": "click" if i % 2 else "impression"}
                for i in range(50)
            ]
            reply = srv.post_json("/v1/events", {"events": events + events[:5]})  # 5 duplicates per batch
            assert reply.status == 202, reply.body
            body = reply.json()
            assert (body["accepted"], body["duplicates"], body["rejected"]) == (50, 5, 0)
            accepted += [e["event_id"] for e in events]
        os.killpg(srv.proc.pid, signal.SIGKILL)  # no shutdown, no flush: only what was fsynced counts
        srv.proc.wait(timeout=10)
    finally:
        srv.stop()
    log = EventLog(state, readonly=True)
    try:
        stored = [e.event_id for _, e in log.iter_events()]
    finally:
        log.close()
    assert sorted(stored) == sorted(accepted)


def test_a_replayed_batch_is_counted_as_duplicates(tiny_bundle: Path, tmp_path: Path) -> None:
    srv = Server(tiny_bundle, tmp_path / "state", workers=2)
    try:
        srv.wait_ready(workers=2)
        events = [{"event_id": f"r-{i}", "user_id": "u", "sku": "SKU-ANY", "type": "click"} for i in range(10)]
        first = srv.post_json("/v1/events", {"events": events}).json()
        again = [srv.post_json("/v1/events", {"events": events}).json() for _ in range(4)]  # lands on both workers
        assert first["accepted"] == 10
        assert all((r["accepted"], r["duplicates"]) == (0, 10) for r in again)
    finally:
        srv.stop()


def test_the_next_build_learns_from_the_live_log(tiny_store: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    import polars as pl

    from engine.schemas import Event

    sku = pl.read_parquet(tiny_store / "catalog.parquet")["sku"][0]
    state = tmp_path / "state"
    log = EventLog(state)
    log.append([Event(event_id=f"live-{i}", user_id="live-shopper", sku=sku, type="purchase", ts=1780270000.0 + i) for i in range(3)])
    log.close()
    config = Path(__file__).parent / "fixtures" / "bundle-v1.build.toml"
    done = subprocess.run(
        [sys.executable, "-m", "builder.cli", "build", "--data", str(tiny_store), "--out", str(tmp_path / "b"),
         "--config", str(config), "--events-log", str(state)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "log_events 3" in done.stderr
    from artifacts.bundle import open_bundle

    bundle = open_bundle(tmp_path / "b")
    assert bundle.users.row_of("live-shopper") >= 0
