"""The plain baseline (bench/baseline): a smoke test, no timing assertions. The comparison runs and
writes well-formed JSON; the baseline never breaks the hard rules (out of stock, blocked brands,
purchased items, anchors); its FastAPI server answers every surface over real HTTP."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from artifacts.bundle import open_bundle
from bench import workload
from bench.baseline.pipeline import BadRequest, BaselineRecommender, UnknownItem
from engine.schemas import RecommendQuery
from tests._server import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def baseline(tiny_bundle: Path):
    rec = BaselineRecommender(tiny_bundle, threads=1)
    yield rec
    rec.close()


def _queries(root: Path, n: int, seed: int) -> list[RecommendQuery]:
    bundle = open_bundle(root, verify="sizes")
    return [q for surface in workload.SURFACES for q in workload.draw(bundle, surface, n, seed)]


def test_compare_writes_a_well_formed_result(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.baseline import compare

    out = tmp_path / "baseline.json"
    assert compare.main(["--bundle", str(tiny_bundle), "--requests", "30", "--block", "10", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["environment"]["commit"] and result["environment"]["cpu"]
    assert result["bundle"]["items"] > 0 and result["bundle"]["id"]
    assert set(result["surfaces"]) == {"home", "pdp", "cart"}
    for data in result["surfaces"].values():
        for system in ("aisle", "baseline", "baseline_1t"):
            s = data["ms"][system]
            assert 0 < s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
        for variant in ("baseline", "baseline_1t"):
            assert set(data["ratio_over_aisle"][variant]) == {"p50", "p90", "p99", "mean"}
            assert 0 < data["ratio_over_aisle"][variant]["p50"]
            assert 0 <= data["overlap_with_aisle"][variant]["shared_at_20"] <= 1
        assert data["baseline_out_of_stock_returned"] == 0
        assert data["short_slates"] == {"aisle": 0, "baseline": 0, "baseline_1t": 0}
    printed = capsys.readouterr().out
    assert "| home | Aisle |" in printed and "ratio baseline (1 thread) / Aisle" in printed


def test_baseline_keeps_the_hard_rules(baseline: BaselineRecommender, tiny_bundle: Path) -> None:
    now = baseline.end_ts
    for q in _queries(tiny_bundle, 8, seed=3):
        items = baseline.recommend(q, now=now)
        assert len(items) == 20
        rows = [baseline.row_of[item["sku"]] for item in items]
        assert len(set(rows)) == len(rows)
        assert all(baseline.in_stock[r] != 0 for r in rows)
        anchors = {q.item_id} if q.item_id else set(q.cart)
        assert not anchors & {item["sku"] for item in items}
        record = baseline.snapshot.get(q.user_id) if q.user_id else None
        if record is not None:
            assert not set(rows) & set(record.purchased)
            assert not {int(baseline.brand[r]) for r in rows} & set(record.blocked_brands)
            assert not {int(baseline.seller[r]) for r in rows} & set(record.blocked_sellers)


def test_baseline_drops_a_blocked_brand_and_out_of_stock_items(baseline: BaselineRecommender, tiny_bundle: Path) -> None:
    now = baseline.end_ts
    q = next(q for q in _queries(tiny_bundle, 5, seed=4) if q.surface == "home")
    items = baseline.recommend(q, now=now)
    rows = [baseline.row_of[item["sku"]] for item in items]
    brand_name = {code: name for name, code in baseline.brand_code.items()}
    code = next(int(baseline.brand[r]) for r in rows if int(baseline.brand[r]) in brand_name)
    blocked = baseline.recommend(msgspec.structs.replace(q, block_brands=[brand_name[code]]), now=now)
    assert len(blocked) == 20
    assert all(int(baseline.brand[baseline.row_of[item["sku"]]]) != code for item in blocked)

    in_stock = baseline.in_stock
    try:
        baseline.in_stock = np.array(in_stock, copy=True)
        baseline.in_stock[rows[:10]] = 0  # the first half of the slate sells out
        after = baseline.recommend(q, now=now)
    finally:
        baseline.in_stock = in_stock
    assert len(after) == 20
    assert not {item["sku"] for item in after} & {item["sku"] for item in items[:10]}


def test_baseline_rejects_bad_requests(baseline: BaselineRecommender) -> None:
    with pytest.raises(UnknownItem):
        baseline.recommend(RecommendQuery("pdp", item_id="NO-SUCH-SKU"))
    with pytest.raises(BadRequest):
        baseline.recommend(RecommendQuery("cart"))


def _get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_fastapi_server_answers_every_surface_over_http(tiny_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline.server", "--bundle", str(tiny_bundle), "--port", str(port), "--workers", "1"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if _get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "baseline server not ready after 60 s"
            time.sleep(0.2)
        bundle_id = open_bundle(tiny_bundle, verify="none").build_id
        for surface in workload.SURFACES:
            q = workload.queries(tiny_bundle, surface, 1, seed=2)[0]
            status, body = _get(port, "/v1/recommendations?" + workload.to_query_string(q))
            assert status == 200, body
            assert len(body["items"]) == 20 and body["bundle"] == bundle_id
            assert all(item["sku"] and item["reason"] for item in body["items"])
        assert _get(port, "/v1/recommendations?surface=pdp&item_id=NO-SUCH-SKU")[0] == 404
        assert _get(port, "/v1/recommendations?surface=nope")[0] == 400
        assert _get(port, "/v1/recommendations?surface=home&count=0")[0] == 400
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
