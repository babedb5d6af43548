"""Bundle hot swap under a steady request stream, with real Granian (2 workers)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.publish import set_current
from builder.build import build
from builder.progress import silent
from tests._server import Server

pytestmark = pytest.mark.slow


def test_publishing_a_bundle_switches_every_worker_without_a_failed_request(
    tiny_bundle: Path, tiny_store: Path, test_build_config, tmp_path: Path
) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    first = open_bundle(tiny_bundle / "current").root
    shutil.copytree(first, root / first.name)
    set_current(root, first.name)
    time.sleep(1.1)  # build ids carry the second: make the next one distinct
    second = build(tiny_store, root, test_build_config, progress=silent, publish=False)
    broken = root / "broken-copy"
    shutil.copytree(first, broken)
    vectors = broken / layout.ITEM_VECTORS
    raw = bytearray(vectors.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    vectors.write_bytes(bytes(raw))

    srv = Server(root, tmp_path / "state", workers=2, settings_toml="swap_check_seconds = 0.2\n")
    failures: list[str] = []
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                reply = srv.recommend(surface="home", user_id="u-swap", count=10)
                if reply.status != 200 or len(reply.json()["items"]) != 10:
                    failures.append(f"{reply.status} {reply.body[:200]!r}")
                else:
                    seen.append((time.monotonic(), reply.json()["bundle"]))
            except OSError as exc:
                failures.append(repr(exc))

    try:
        srv.wait_ready(workers=2)
        threads = [threading.Thread(target=stream) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        set_current(root, second.build_id)
        switched_at = time.monotonic()
        deadline = switched_at + 30
        while time.monotonic() < deadline:
            served = {srv.get("/readyz", fresh=True).json()["bundle"] for _ in range(10)}
            if served == {second.build_id}:
                break
            time.sleep(0.2)
        assert served == {second.build_id}, "every worker serves the new bundle"
        all_switched = time.monotonic()
        # a bundle that fails verification is refused; the current one keeps serving
        set_current(root, "broken-copy")
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert failures == []
        late = [b for (t, b) in seen if t > all_switched]
        assert late and set(late) == {second.build_id}
        assert {b for (_, b) in seen} <= {first.name, second.build_id}
        metrics = srv.get("/metrics").body.decode()
        assert 'aisle_bundle_swaps_total{outcome="refused"} 2' in metrics
        assert 'aisle_bundle_swaps_total{outcome="swapped"} 2' in metrics
    finally:
        stop.set()
        srv.stop()
