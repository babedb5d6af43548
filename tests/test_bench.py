"""Benchmarks are not tests; this only checks the bench commands run and write well-formed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_pipeline_bench_writes_a_well_formed_result(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--bundle", str(tiny_bundle), "--requests", "30", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["environment"]["commit"] and result["environment"]["cpu"]
    for surface in ("home", "pdp", "cart"):
        total = result["surfaces"][surface]["ms"]["total"]
        assert 0 < total["p50"] <= total["p99"] <= total["max"]
    assert "| home | **total** |" in done.stdout


def _aisle_bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder.cli", "bench", *args], capture_output=True, text=True, timeout=timeout)


def test_aisle_bench_lists_the_benchmarks_and_refuses_unknown_ones() -> None:
    listed = _aisle_bench()
    assert listed.returncode == 2 and "pipeline" in listed.stdout and "peers" in listed.stdout
    unknown = _aisle_bench("nonesuch")
    assert unknown.returncode == 2 and "unknown benchmark 'nonesuch'" in unknown.stderr


def test_peers_bench_writes_a_well_formed_result(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    done = _aisle_bench("peers", "--bundles", str(tiny_bundle), "--requests", "20", "--only", "metarank,filtered", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["environment"]["commit"] and result["bundle"]["items"] > 0
    for row in result["metarank"]["sizes"]:
        assert row["http"]["errors"] == 0 and row["http"]["requests"] == 20
        assert 0 < row["in_process"]["ms"]["p50"] <= row["in_process"]["ms"]["p99"]
    for row in result["filtered_ann"]["rows"]:
        assert row["out_of_stock_served"] == 0
        if row["in_stock_share"] * result["bundle"]["items"] >= 100:  # (1% of the tiny catalog cannot fill a slate)
            assert row["short_responses"] == 0
    gorse = _aisle_bench("peers", "--bundles", str(tiny_bundle), "--requests", "10", "--only", "gorse", "--no-http", "--json", str(out))
    assert gorse.returncode == 0, gorse.stderr
    sizes = json.loads(out.read_text())["gorse"]["sizes"]
    assert [s["n"] for s in sizes] == [10, 100, 1000] and sizes[0]["item_based"]["in_process"]["items_mean"] == 10


def test_candidates_bench_writes_a_well_formed_result(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "candidates.json"
    done = _aisle_bench("candidates", "--bundle", str(tiny_bundle), "--requests", "20", "--caps", "20,400", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for surface in ("home", "pdp", "cart"):
        caps = result["surfaces"][surface]["caps"]
        assert [c["cap"] for c in caps] == [20, 400] and 0 <= caps[0]["recall_of_uncapped_slate"] <= 1
