"""The event log cannot store (issue 8, faults): its LMDB map is full, or the disk under it is.

Either way a batch is answered 503 with Retry-After and a JSON error body, never 202 unless it is
stored: after the server stops, the log is read back and holds exactly the acknowledged events,
and none of a refused batch's. Recommendations keep answering 200 meanwhile, /metrics counts the
refused batches, and once there is room again (a larger map, a freed disk) the same batches are
accepted.

The disk-full test runs on a small filesystem mounted for the test (root only; skipped with the
reason otherwise): a tmpfs, and an ext4 loop image when `mkfs.ext4` and loop devices are there.
The server's own log is kept off that filesystem (a symlink), as a real deployment's log would
be. On tmpfs, reading a page of a shared mapping allocates it, so the sparse files the workers
map (metrics.bin) are fully allocated once read; on ext4 their holes stay holes until written,
and a write into a hole on a full disk is SIGBUS, which kills the worker (see
`test_a_full_disk_answers_503_then_accepts_again`, where that is an expected failure).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._server import Reply, Server
from tests.reliability._soak import SOAK, report, stored_event_ids
from tests.reliability.test_kill_soak import worker_pids

pytestmark = pytest.mark.slow

BATCH = 50
MAX_BATCHES = 2_000  # a 1 MiB map holds a few thousand events: it is full long before this
REFUSED_AFTER_FULL = SOAK.scale(10, 50)  # batches answered 503 before the test frees room
BUS_ERROR = "Fatal Python error: Bus error"  # what faulthandler prints for a worker killed by SIGBUS


@dataclass
class Ledger:
    """What the clients were told, and what they check against the log afterwards."""

    acked: set[str] = field(default_factory=set)
    refused: dict[str, list[str]] = field(default_factory=dict)  # batch name → its ids (each answered 503)
    uncertain: set[str] = field(default_factory=set)  # batches whose connection died mid-request: maybe stored
    batches: dict[int, int] = field(default_factory=dict)  # status → count
    retry_after: set[str] = field(default_factory=set)
    errors: set[str] = field(default_factory=set)  # error kinds of the 503 bodies
    recs: dict[int, int] = field(default_factory=dict)
    bad: dict[int, int] = field(default_factory=dict)  # malformed recommendation requests: status → count
    conn_errors: int = 0
    n: int = 0

    def batch(self, size: int = BATCH) -> tuple[str, list[dict]]:
        """A new batch: its name and its events (unique ids)."""
        name = f"b{self.n}"
        self.n += 1
        return name, self.events(name, size)

    @staticmethod
    def events(name: str, size: int = BATCH) -> list[dict]:
        return [{"event_id": f"{name}-{i}", "user_id": f"su{i % 13}", "sku": f"SKU-{i % 7}", "type": "click"} for i in range(size)]

    def post(self, srv: Server, name: str, events: list[dict]) -> Reply:
        """POST a batch and file the answer; a connection that dies (a worker killed) is retried
        with the same ids, as a real client would, until the server answers."""
        while True:
            try:
                reply = srv.post_json("/v1/events", {"events": events})
                break
            except OSError:
                self.conn_errors += 1
                self.uncertain.add(name)  # the attempt may have been stored before its worker died
                if srv.proc.poll() is not None:
                    raise
        ids = [e["event_id"] for e in events]
        self.batches[reply.status] = self.batches.get(reply.status, 0) + 1
        if reply.status == 202:
            doc = reply.json()
            assert doc["rejected"] == 0 and doc["accepted"] + doc["duplicates"] == len(events), doc
            self.acked.update(ids)
            self.refused.pop(name, None)
        else:
            assert reply.status == 503, (reply.status, reply.body)
            assert re.fullmatch(r"[1-9][0-9]*", reply.headers.get("retry-after", "")), reply.headers
            doc = reply.json()
            assert set(doc) == {"error", "detail"} and all(isinstance(v, str) and v for v in doc.values()), doc
            self.retry_after.add(reply.headers["retry-after"])
            self.errors.add(doc["error"])
            self.refused[name] = ids
        return reply

    def recommend(self, srv: Server) -> int:
        status = self._get(srv, surface="home", count=10, user_id=f"su{self.n % 13}")
        self.recs[status] = self.recs.get(status, 0) + 1
        return status

    def bad_request(self, srv: Server) -> int:
        """A recommendation request refused as malformed (pdp without its item): a client error,
        counted in /metrics under a label no earlier request of these tests used."""
        status = self._get(srv, surface="pdp", user_id=f"su{self.n % 13}")
        self.bad[status] = self.bad.get(status, 0) + 1
        return status

    def _get(self, srv: Server, **params: object) -> int:
        while True:
            try:
                return srv.recommend(**params).status
            except OSError:
                self.conn_errors += 1
                if srv.proc.poll() is not None:
                    raise

    def check_log(self, state: Path) -> dict[str, int]:
        """Stored = acknowledged, exactly once each; no id of a batch still refused is stored."""
        stored, last_seq = stored_event_ids(state)
        refused = {i for name, ids in self.refused.items() if name not in self.uncertain for i in ids}
        figures = {
            "acked": len(self.acked),
            "stored": len(stored),
            "lost": len(self.acked - set(stored)),
            "duplicates": len(stored) - len(set(stored)),
            "refused_events": len(refused),
            "refused_but_stored": len(refused & set(stored)),
        }
        assert figures["lost"] == 0, sorted(self.acked - set(stored))[:5]
        assert figures["duplicates"] == 0
        assert figures["refused_but_stored"] == 0, sorted(refused & set(stored))[:5]
        assert set(stored) == self.acked, sorted(set(stored) - self.acked)[:5]
        assert last_seq == len(stored)
        return figures


def sigbus_frames(log_text: str) -> list[str]:
    """For each worker faulthandler saw die of SIGBUS: the innermost frame of its crashing thread."""
    frames = []
    for dump in log_text.split(BUS_ERROR)[1:]:
        found = re.search(r"^Current thread .*\n\s+File \"(?:.*/)?(\w+/[\w.]+)\", line (\d+) in (\w+)", dump, re.M)
        frames.append(f"{found[1]}:{found[2]} {found[3]}" if found else "?")
    return frames


def metric(text: str, name: str, **labels: str) -> float:
    want = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{want} not in /metrics")


def batches_counted(srv: Server) -> dict[str, float]:
    reply = srv.get("/metrics")
    assert reply.status == 200
    text = reply.body.decode()
    return {outcome: metric(text, "aisle_event_batches_total", outcome=outcome) for outcome in ("stored", "unavailable")}


# ---- the LMDB map is full ---------------------------------------------------------------------


def test_a_full_event_map_answers_503_and_never_202s_an_unstored_event(tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ledger = Ledger()
    srv = Server(tiny_bundle, state, workers=2, settings_toml="[events]\nmap_size_mib = 1\n")
    try:
        srv.wait_ready(workers=2)
        pids = worker_pids(srv.proc.pid)
        # Events (and the served slates that ride their commits) until the map is full.
        first_refused = None
        for _ in range(MAX_BATCHES):
            name, events = ledger.batch()
            reply = ledger.post(srv, name, events)
            if reply.status == 503:
                first_refused = (name, events)
                assert "full" in reply.json()["detail"], reply.body  # says why
                break
            assert ledger.recommend(srv) == 200
        assert first_refused is not None, f"the 1 MiB map took {MAX_BATCHES} batches of {BATCH} without a 503"
        full_at = len(ledger.acked)
        # Full: more batches, smaller ones too (a small one may still fit in the pages left). Each
        # is either stored (202) or absent (503); recommendations go on answering.
        refused = 1
        while refused < REFUSED_AFTER_FULL:
            name, events = ledger.batch(size=(BATCH, 10, 1)[ledger.n % 3])
            refused += ledger.post(srv, name, events).status == 503
            assert ledger.recommend(srv) == 200
        # A client retrying a batch whose 202 it lost still learns that it was stored.
        again = ledger.post(srv, "b0", ledger.events("b0"))
        assert (again.status, again.json()["duplicates"]) == (202, BATCH), again.body
        counted = batches_counted(srv)
        assert counted == {"stored": ledger.batches[202], "unavailable": ledger.batches[503]}, (counted, ledger.batches)
        assert worker_pids(srv.proc.pid) == pids, "no worker died"
    finally:
        srv.stop()
    figures = ledger.check_log(state)

    # The operator's remedy: a larger map (then the batches refused so far go in).
    srv = Server(tiny_bundle, state, workers=2, settings_toml="[events]\nmap_size_mib = 2\n")
    try:
        srv.wait_ready(workers=2)
        name, events = first_refused
        reply = ledger.post(srv, name, events)
        assert (reply.status, reply.json()["accepted"]) == (202, len(events)), reply.body
        assert ledger.recommend(srv) == 200
    finally:
        srv.stop()
    after = ledger.check_log(state)
    report(
        "storage_map_full",
        map_mib=1,
        events_stored_when_full=full_at,
        batches_202=ledger.batches[202],
        batches_503=ledger.batches[503],
        retry_after="/".join(sorted(ledger.retry_after)),
        error_kinds="/".join(sorted(ledger.errors)),
        recs_200=ledger.recs.get(200, 0),
        recs_other=sum(c for s, c in ledger.recs.items() if s != 200),
        accepted_after_2mib=after["stored"] - figures["stored"],
        **figures,
    )
    assert set(ledger.recs) == {200}


# ---- the disk is full -------------------------------------------------------------------------


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["tmpfs", "ext4"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A filesystem of a few MiB mounted at tmp_path/disk for this test, unmounted afterwards."""
    kind = request.param
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if kind == "tmpfs":
        done = _run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mount))
    else:
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("mkfs.ext4 is not installed")
        image = tmp_path / "disk.img"
        with open(image, "wb") as fh:
            fh.truncate(16 << 20)
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        if made.returncode != 0:
            pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
        done = _run("mount", "-o", "loop", str(image), str(mount))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here: {done.stderr.strip()}")
    try:
        yield kind, mount
    finally:
        deadline = time.monotonic() + 30
        while _run("umount", str(mount)).returncode != 0:  # busy for a moment while the server exits
            if time.monotonic() > deadline:
                _run("umount", "-l", str(mount))
                break
            time.sleep(0.1)


def fill(path: Path) -> int:
    """Write `path` until the filesystem has no byte left (largest chunks first); → bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
            block = bytes(chunk)
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def test_a_full_disk_answers_503_then_accepts_again(small_disk: tuple[str, Path], tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, mount = small_disk
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # a worker killed by SIGBUS says so in the log
    state = mount / "state"
    state.mkdir()
    server_log = tmp_path / "server.log"
    (state / "server.log").symlink_to(server_log)  # the server's own log is not on the full disk
    ledger = Ledger()
    srv = Server(tiny_bundle, state, workers=2)
    filled, accepted_again, server_exit, survived = 0, 0, None, False
    try:
        srv.wait_ready(workers=2)
        pids = worker_pids(srv.proc.pid)
        for _ in range(3):
            name, events = ledger.batch()
            assert ledger.post(srv, name, events).status == 202
            assert ledger.recommend(srv) == 200
        before, before_202 = batches_counted(srv), ledger.batches[202]
        filler = mount / "filler"
        filled = fill(filler)
        assert os.statvfs(mount).f_bavail == 0

        # Full. A batch may still fit in pages the log freed earlier; each is stored (202) or
        # absent (503), and recommendations go on answering.
        first_refused = None
        try:
            for _ in range(MAX_BATCHES):
                name, events = ledger.batch(size=(BATCH, 10, 1)[ledger.n % 3])
                if ledger.post(srv, name, events).status == 503:
                    first_refused = first_refused or (name, events)
                assert ledger.recommend(srv) == 200
                assert ledger.bad_request(srv) == 400
                if ledger.batches.get(503, 0) >= REFUSED_AFTER_FULL:
                    break
        except OSError:
            server_exit = srv.proc.poll()
            if server_exit is None:
                raise
        if server_exit is None:
            assert first_refused is not None, f"{MAX_BATCHES} batches on a full {kind} without a 503"
            full_202, full_503 = ledger.batches[202] - before_202, ledger.batches[503]
            counted = batches_counted(srv)

            # Room again: the first refused batch goes in, accepted (not duplicates: it was never
            # stored), and so do new ones.
            filler.unlink()
            name, events = first_refused
            reply = ledger.post(srv, name, events)
            assert (reply.status, reply.json()["accepted"]) == (202, len(events)), reply.body
            accepted_again += reply.json()["accepted"]
            name, events = ledger.batch()
            reply = ledger.post(srv, name, events)
            assert reply.status == 202, reply.body
            accepted_again += reply.json()["accepted"]
            assert ledger.recommend(srv) == 200
            survived = worker_pids(srv.proc.pid) == pids
            if survived and not ledger.conn_errors:  # (a dying worker's count may be cut short)
                assert counted["unavailable"] - before["unavailable"] == full_503
                assert counted["stored"] - before["stored"] == full_202
    finally:
        srv.stop()
    log_text = server_log.read_text(errors="replace")
    sigbus = sigbus_frames(log_text)
    figures = ledger.check_log(state)
    report(
        f"storage_disk_full_{kind}",
        filler_bytes=filled,
        batches_202=ledger.batches.get(202, 0),
        batches_503=ledger.batches.get(503, 0),
        accepted_after_free=accepted_again,
        retry_after="/".join(sorted(ledger.retry_after)),
        error_kinds="/".join(sorted(ledger.errors)),
        recs_200=ledger.recs.get(200, 0),
        recs_other=sum(c for s, c in ledger.recs.items() if s != 200),
        bad_requests_400=ledger.bad.get(400, 0),
        conn_errors=ledger.conn_errors,
        worker_sigbus=len(sigbus),
        sigbus_at="/".join(sorted(set(sigbus))).replace(" ", "_") or "-",
        server_exit=server_exit,
        **figures,
    )
    assert set(ledger.recs) == {200}
    # No worker may die of a store into a hole of a sparse shared file on the full disk (the
    # metrics and rate-limit files are allocated in full when they are created or claimed).
    assert not sigbus, f"worker(s) died of SIGBUS at {sorted(set(sigbus))}"
    assert server_exit is None, log_text[-3000:]
    assert ledger.conn_errors == 0 and survived, "no worker died"
