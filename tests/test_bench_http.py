"""Smoke tests of the HTTP benchmark, the open-loop load generator and the profiler.

Benchmarks are not tests: nothing here asserts a latency or a rate. These check that the tools
run end to end against a real server and write well-formed results (a generous budget keeps the
capacity search deterministic on a busy machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import http as bench_http
from bench import loadgen
from tests._server import Server

pytestmark = pytest.mark.slow

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:18765
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.81ms    1.24ms  10.50ms   79.56%
    Req/Sec   137.25     10.48   160.00     70.00%
  Latency Distribution
     50%    3.52ms
     75%    4.30ms
     90%  850.00us
     99%    1.20s
  274 requests in 2.00s, 579.29KB read
  Non-2xx or 3xx responses: 3
Requests/sec:    136.66
Transfer/sec:    288.93KB
WRK_JSON {"requests": 274, "duration_us": 2004960, "bytes": 593198, "errors": {"connect": 0, "read": 0, "write": 0, "status": 3, "timeout": 0}, "latency_us": {"p50": 3521, "p75": 4300, "p90": 5192, "p99": 8357, "p99.9": 10504, "max": 10504, "mean": 3805.4}}
"""


def test_http_bench_steps_the_rate_and_writes_a_well_formed_result(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "http.json"
    code = bench_http.main(["--bundles", str(tiny_bundle), "--workers", "1", "--rates", "20,40", "--duration", "1",
                            "--warmup", "0.3", "--prime", "0.5", "--idle", "0.5", "--budget-ms", "2000", "--quiet", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["environment"]["commit"] and result["environment"]["cpu"]
    assert result["bundle"]["items"] > 0 and result["server"]["workers"] == 1 and result["server"]["pinned"] is False
    assert [s["offered_rate"] for s in result["steps"]] == [20, 40]
    for step in [*result["steps"], result["half_capacity"]]:
        assert step["completed"] == step["requests"] > 0
        assert step["errors_total"] == 0 and step["errors"] == {}
        lat = step["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert step["server"]["cpu_s"] >= 0 and step["client"]["cpu_s"] >= 0
        assert step["passed"] is True
    assert result["capacity"]["rate"] == 40
    assert result["half_capacity"]["offered_rate"] == 20
    assert result["wrk"] is None
    assert "**capacity: 40 req/s**" in capsys.readouterr().out
    assert "| **half capacity** | 20 |" in bench_http.table(result)


def test_http_bench_refuses_a_target_whose_module_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = bench_http.Target("nowhere", "bench.no_such_server", lambda *a: [], readyz_has_pid=False)
    monkeypatch.setitem(bench_http.TARGETS, "nowhere", missing)
    with pytest.raises(bench_http.BenchError, match="bench.no_such_server"):
        bench_http.target("nowhere")


def test_loadgen_against_a_running_server(tiny_bundle: Path, tmp_path: Path) -> None:
    paths = bench_http.request_paths(tiny_bundle, "mix", 50, seed=3)
    assert {p.split("surface=")[1].split("&")[0] for p in paths} == {"home", "pdp", "cart"}
    server = Server(tiny_bundle, tmp_path / "state", workers=1)
    try:
        server.wait_ready()
        spec = loadgen.LoadSpec(url=f"http://127.0.0.1:{server.port}", paths=paths, rate=40, duration_s=1.0, warmup_s=0.25,
                                poisson=True, seed=5)
        result = loadgen.run_process(spec, tmp_path)
    finally:
        server.stop()
    assert result["requests"] > 0 and result["completed"] == result["requests"]
    assert result["requests_total"] == result["completed_total"] > result["requests"]  # warm-up sent, not measured
    assert result["errors"] == {} and result["error_rate"] == 0
    assert sum(count for _, count in result["histogram_ms"]) == result["completed"]
    assert result["connections"]["opened"] >= 1 and result["connections"]["cap_waits"] == 0
    assert result["client"]["cpu_s"] > 0 and result["arrivals"] == "poisson"


def test_loadgen_reports_an_unreachable_server(tmp_path: Path) -> None:
    from tests._server import free_port

    spec = loadgen.LoadSpec(url=f"http://127.0.0.1:{free_port()}", paths=["/readyz"], rate=10, duration_s=0.5)
    with pytest.raises(loadgen.LoadgenError, match="cannot connect"):
        loadgen.run_process(spec, tmp_path)


def test_loadgen_schedule_is_seeded_and_fills_the_duration() -> None:
    even = loadgen.schedule(loadgen.LoadSpec(url="http://x", paths=["/"], rate=100, duration_s=2, warmup_s=0.5))
    assert len(even) == 250 and even[1] - even[0] == pytest.approx(0.01)
    spec = loadgen.LoadSpec(url="http://x", paths=["/"], rate=100, duration_s=2, poisson=True, seed=9)
    a, b = loadgen.schedule(spec), loadgen.schedule(spec)
    assert (a == b).all() and a[-1] < 2.0 and 120 < len(a) < 280


def test_wrk_output_is_parsed_with_units() -> None:
    parsed = bench_http.parse_wrk(WRK_OUTPUT)
    assert parsed["requests_per_s"] == 136.66 and parsed["requests"] == 274 and parsed["non_2xx"] == 3
    assert parsed["latency_ms"] == {"p50": 3.52, "p75": 4.3, "p90": 0.85, "p99": 1200.0}
    assert parsed["exact_latency_ms"]["p99.9"] == 10.504


def test_profile_writes_a_flame_graph_per_worker(tiny_bundle: Path, tmp_path: Path) -> None:
    from bench import profile

    out = tmp_path / "profiles"
    code = profile.main(["--bundles", str(tiny_bundle), "--surfaces", "home", "--rate", "30", "--duration", "2",
                         "--warmup", "0.5", "--workers", "1", "--out", str(out)])
    index = json.loads((out / "index.json").read_text())
    files = index["runs"][0]["files"]
    errors = [f["error"] for f in files if not f["file"]]
    if errors and any("permission" in e.lower() or "ptrace" in e.lower() for e in errors):
        pytest.skip(f"py-spy cannot attach to the worker here: {errors[0][:300]}")
    assert code == 0, errors
    assert len(files) == 1 and (out / "home-worker1.svg").read_text().lstrip().startswith("<?xml")
    assert index["bundle"]["items"] > 0 and index["runs"][0]["load"]["completed"] > 0
