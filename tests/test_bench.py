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
