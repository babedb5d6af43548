"""`/status` in a real browser: a real server (2 workers, one experiment) gets known traffic, then
headless Chromium loads the page; its DOM shows the live figures (the bundle /readyz names, the
request counts sent, the experiment and its variants with their counts), and it renders to a
non-trivial screenshot. The page needs nothing but the server: no script, no external asset."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests._server import Server

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")
SETTINGS = """
holdout = 0.1

[[experiments]]
name = "mmr"
traffic = 0.9

[[experiments.variants]]
name = "control"
weight = 2.0

[[experiments.variants]]
name = "diverse"
weight = 1.0
mmr_lambda = 0.5
"""


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} is on PATH (scripts/bootstrap installs Debian's chromium when run as root with apt-get)")


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Figures(HTMLParser):
    """Every element with an id (its data-value and text), every table row keyed by a
    data-variant/-surface/-feature/-source attribute (its cells' data-value by class), the tags
    used and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, tuple[str | None, str]] = {}
        self.rows: dict[tuple[str, str], dict[str, str | None]] = {}
        self.tags: Counter = Counter()
        self.refs: list[str] = []
        self._stack: list[tuple[str, str | None, str | None, list[str]]] = []  # (tag, id, data-value, text)
        self._row: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] += 1
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "tr":
            self._row = next(((k, v) for k, v in attrs if k in ("data-variant", "data-surface", "data-feature", "data-source") and v), None)
            if self._row:
                self.rows[self._row] = {}
        if tag == "td" and self._row and a.get("class"):
            self.rows[self._row][a["class"]] = a.get("data-value")  # type: ignore[index]
        if tag not in VOID:
            self._stack.append((tag, a.get("id"), a.get("data-value"), []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag in VOID or not any(t == tag for t, *_ in self._stack):
            return
        while self._stack:  # close what the end tag closes (implicitly closed children too)
            t, ident, raw, text = self._stack.pop()
            if ident:
                self.by_id[ident] = (raw, "".join(text).strip())
            if self._stack:
                self._stack[-1][3].extend(text)
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._stack:
            self._stack[-1][3].append(data)


def figures(page: str) -> Figures:
    parser = Figures()
    parser.feed(page)
    return parser


def number(f: Figures, ident: str) -> float:
    raw, text = f.by_id[ident]
    assert raw is not None, f"#{ident} has no data-value ({text!r})"
    return float(raw)


def run_browser(chromium: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp / 'profile'}", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser()  # first in a test's arguments: skips before a server starts for nothing


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tiny_bundle, tmp_path_factory.mktemp("status-state"), workers=2, settings_toml=SETTINGS)
    try:
        srv.wait_ready(workers=2)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def sent(server: Server) -> Counter:
    """Requests sent, by surface and by the variant each response named."""
    counts: Counter = Counter()
    skus = [i["sku"] for i in server.recommend(surface="home", count=5).json()["items"]]
    counts["home"] += 1
    counts["variant:default"] += 1
    for i in range(30):
        surface = ("home", "pdp", "cart")[i % 3]
        params = {"surface": surface, "user_id": f"status-shopper-{i}", "count": 8}
        if surface == "pdp":
            params["item_id"] = skus[i % len(skus)]
        elif surface == "cart":
            params["cart"] = skus[i % len(skus)]
        reply = server.recommend(**params)
        assert reply.status == 200, reply.body
        counts[surface] += 1
        counts["variant:" + reply.json()["variant"]] += 1
    event = {"event_id": "status-1", "user_id": "status-shopper-1", "sku": skus[0], "type": "click"}
    assert server.post_json("/v1/events", {"events": [event]}).status == 202
    return counts


def test_status_is_self_contained_html_the_same_from_every_worker(server: Server, sent: Counter) -> None:
    pids = set()
    for attempt in range(40):
        if attempt >= 8 and len(pids) == 2:
            break
        reply = server.get("/status")
        assert reply.status == 200
        assert reply.headers["content-type"] == "text/html; charset=utf-8" and reply.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in reply.headers["content-security-policy"]
        page = reply.body.decode()
        f = figures(page)
        assert f.tags["script"] == 0 and f.refs == ["data:,"]  # only the inline favicon
        assert not re.search(r"url\(|@import", page)
        pids.add(int(number(f, "worker-pid")))
        for surface in ("home", "pdp", "cart"):
            assert number(f, f"requests-{surface}") == sent[surface]
    assert len(pids) == 2  # both workers answered, with the same figures
    assert server.request("POST", "/status").status == 405


def test_chromium_shows_the_live_figures(chromium: str, server: Server, sent: Counter, tmp_path: Path) -> None:
    bundle = server.get("/readyz").json()["bundle"]
    url = f"http://127.0.0.1:{server.port}/status"
    done = run_browser(chromium, "--dump-dom", url, tmp=tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    dom = done.stdout.decode()
    f = figures(dom)
    assert f.by_id["bundle-id"][1] == bundle
    assert bundle in f.by_id.get("bundle-id", ("", ""))[1]
    for surface in ("home", "pdp", "cart"):
        assert number(f, f"requests-{surface}") == sent[surface], surface
        assert number(f, f"errors-{surface}") == 0
    assert number(f, "requests-all") == sent["home"] + sent["pdp"] + sent["cart"]
    assert number(f, "p99-all-home") > 0
    assert number(f, "workers-live") == 2
    assert number(f, "events-accepted") == 1
    assert f.by_id["degraded"][0] == ""  # every part loaded
    assert "inventory-off" in f.by_id  # no feed configured
    # the experiment, its arms with their weights and the requests each got
    assert number(f, "experiments-count") == 1
    assert number(f, "holdout-share") == pytest.approx(0.1)
    assert ("data-variant", "mmr:control") in f.rows and ("data-variant", "mmr:diverse") in f.rows
    assert float(f.rows[("data-variant", "mmr:control")]["share"]) == pytest.approx(2 / 3)  # type: ignore[arg-type]
    assert float(f.rows[("data-variant", "mmr:diverse")]["weight"]) == 1.0  # type: ignore[arg-type]
    for arm in ("mmr:control", "mmr:diverse", "holdout", "default"):
        assert float(f.rows[("data-variant", arm)]["requests"]) == sent["variant:" + arm], arm  # type: ignore[arg-type]
    assert sent["variant:mmr:control"] and sent["variant:mmr:diverse"]
    # drift: the tiny bundle has a reference; at the default sample rate the window is still filling
    assert "drift-rows" in f.by_id and number(f, "drift-threshold") == pytest.approx(0.2)


def test_chromium_renders_a_non_trivial_screenshot(chromium: str, server: Server, sent: Counter, tmp_path: Path) -> None:
    shot = tmp_path / "status.png"
    done = run_browser(chromium, "--window-size=1280,1800", f"--screenshot={shot}", f"http://127.0.0.1:{server.port}/status", tmp=tmp_path)
    assert done.returncode == 0 and shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    width, height, rows = _png_rows(shot.read_bytes())
    assert (width, height) == (1280, 1800)
    assert len(set(rows)) > 100  # text and tables, not a blank or single-colour page


def _png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the (filtered) scanlines of a non-interlaced 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, width = 8, b"", 0
    height = depth = colour = 0
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at : at + 4]), data[at + 4 : at + 8]
        chunk = data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
        elif kind == b"IDAT":
            idat += chunk
        at += 12 + length
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    stride = 1 + width * channels * depth // 8
    raw = zlib.decompress(idat)
    assert len(raw) == stride * height
    return width, height, [raw[i * stride : (i + 1) * stride] for i in range(height)]


def test_the_page_escapes_what_it_shows_and_marks_degraded_parts_and_drift(tmp_path: Path) -> None:
    """No server: the renderer alone, with a degraded bundle, a live feed and a drifted feature."""
    import math
    import time

    import msgspec

    from engine.drift import DriftReport
    from engine.inventory.state import LAG_BOUNDS, STAT_NAMES, InventoryStats
    from engine.metrics import Metrics, families_for
    from engine.settings import Settings
    from engine.status import BundleFacts, EventLogFacts, StatusInputs, render_status

    settings = msgspec.toml.decode(SETTINGS.encode(), type=Settings)
    m = Metrics.open(tmp_path / "metrics.bin", families_for(settings))
    try:
        m.set("aisle_feature_psi", 0.4, feature="item_ctr")
        totals = m.totals()
    finally:
        m.close()
    lag = [0] * (len(LAG_BOUNDS) + 1)
    lag[2] = 10
    inventory = InventoryStats(
        status="synced", publisher="<pub>", epoch=1, seq=77, updated_at=time.time() - 2, heartbeat_at=time.time(), writer_pid=1,
        n_new=5, capacity=100, counters=dict.fromkeys(STAT_NAMES, 0) | {"gaps": 2, "resyncs": 3, "applied_deltas": 40}, lag_buckets=lag,
    )
    drift = DriftReport(rows=900, psi={"item_ctr": 0.31, "ann_score": 0.02}, score_psi=0.05, mean_score=0.4,
                        reference_mean_score=0.38, threshold=0.2, drifted=["item_ctr"])
    page = render_status(StatusInputs(
        now=time.time(), pid=123, settings=settings, totals=totals, window=None, window_s=0.0,
        bundle=BundleFacts("b<1>", "2026-01-01T00:00:00Z", 1.7e9, time.time(), [("ranker", "<script>alert(1)</script>")], None),
        problem="", inventory=inventory, events=EventLogFacts(9, 4, 0), drift=drift,
    )).decode()
    f = figures(page)
    assert f.tags["script"] == 0 and "&lt;script&gt;" in page
    assert f.by_id["bundle-id"][1] == "b<1>" and f.by_id["degraded"][0] == "ranker"
    assert f.by_id["inventory-status"][0] == "synced" and number(f, "inventory-seq") == 77
    assert number(f, "inventory-gaps") == 2 and number(f, "inventory-resyncs") == 3 and number(f, "inventory-new-skus") == 5
    assert 0.001 <= number(f, "inventory-lag-p50") <= 0.002  # every batch in the (1 ms, 2 ms] bucket
    assert f.by_id["inventory-publisher"][1] == "<pub>"
    assert f.rows[("data-feature", "item_ctr")] == {"psi": "0.31", "psi-max": "0.4", "mark": "1"}
    assert f.rows[("data-feature", "ann_score")]["mark"] == "0" and math.isnan(float(f.rows[("data-feature", "ann_score")]["psi-max"]))  # type: ignore[arg-type]
    assert number(f, "drifted-count") == 1 and number(f, "score-reference-mean") == 0.38
    assert number(f, "events-last-seq") == 9 and number(f, "slates-last-seq") == 4
    assert f.by_id["rate-home"][0] == "NaN"  # no sample yet: no rate
