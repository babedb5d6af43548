"""Overload: what shedding buys when more requests arrive than the workers can serve.

The same server, the same bundle, the same open-loop arrivals (bench/loadgen.py: each request is
due at a fixed time whatever happened before, so a server that falls behind is charged for every
request queued behind it), twice in one run: with the engine's shedding on (the settings'
`limits.max_queue_delay_ms` / `max_in_flight`) and with it off (both 0: every request waits its
turn, the way a server without admission control behaves). Offered rates are multiples of a
capacity measured first in the same run. Per step: answered with 200, shed (503 + Retry-After),
timed out (no answer within the client's timeout), the latency of the 200s (p50/p99, from their
due time), and the workers' peak RSS (VmHWM).

    python -m bench.overload --bundles ROOT [--workers 2] [--surface home] [--factors 1.5,3]
        [--duration 8] [--timeout 2] [--json bench/results/overload-small.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.environment import environment
from bench.http import BenchError, ServerProcess, request_paths, target

MODES = {
    # Shedding as served by default (engine/settings.py LimitSettings).
    "shedding": "",
    "no shedding": "[limits]\nmax_queue_delay_ms = 0.0\nmax_in_flight = 0\n",
}


def _peak_rss_mib(pids: list[int]) -> float:
    peak = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return round(peak, 1)


def _step(server: ServerProcess, paths: list[str], rate: float, duration_s: float, timeout_s: float, workdir: Path) -> dict:
    spec = loadgen.LoadSpec(url=server.url, paths=paths, rate=rate, duration_s=duration_s, warmup_s=1.0, seed=1,
                            min_connections=8, max_connections=1024, timeout_s=timeout_s)
    r = loadgen.run_process(spec, workdir)
    errors = r["errors"]
    shed = errors.get("status_503", 0)
    timed_out = errors.get("timeout", 0)
    return {
        "offered_rate": rate,
        "requests": r["requests"],
        "ok": r["completed"],
        "ok_rate": r["achieved_rate"],
        "shed_503": shed,
        "timed_out": timed_out,
        "other_errors": {k: v for k, v in errors.items() if k not in ("status_503", "timeout")},
        "ok_latency_ms": r["latency_ms"],
        "worker_peak_rss_mib": _peak_rss_mib(server.worker_pids),
        "client_cpu_util": r["client"]["cpu_util"],
    }


def _capacity(server: ServerProcess, paths: list[str], workdir: Path) -> float:
    """The 200s per second served when offered 1,000 requests a second for a few seconds (shedding
    on: what the workers manage while refusing the rest). An under-estimate of the capacity (the
    refusals cost CPU too), so the factors are overload at least that large."""
    probe = _step(server, paths, 1000.0, 4.0, 2.0, workdir)
    return max(50.0, float(probe["ok_rate"]))


def run(bundles: Path, workers: int, surface: str, factors: list[float], duration_s: float, timeout_s: float) -> dict:
    spec = target("aisle")
    paths = request_paths(bundles, surface, 2000, 1)
    workdir = Path(tempfile.mkdtemp(prefix="aisle-overload-"))
    results: dict[str, list[dict]] = {}
    capacity = None
    try:
        for mode, toml in MODES.items():
            settings = workdir / f"{mode.replace(' ', '-')}.toml"
            settings.write_text(toml)
            server = ServerProcess(spec, bundles, workers, extra=["--settings", str(settings)])
            try:
                server.wait_ready()
                _step(server, paths, 100.0, 2.0, timeout_s, workdir)  # prime: page the bundle in
                if capacity is None:
                    capacity = _capacity(server, paths, workdir)
                    print(f"capacity ≈ {capacity:.0f} req/s ({workers} workers, {surface})", file=sys.stderr)
                steps = []
                for f in factors:
                    step = _step(server, paths, round(capacity * f, 1), duration_s, timeout_s, workdir)
                    step["factor"] = f
                    steps.append(step)
                    lat = step["ok_latency_ms"]
                    print(f"{mode:>12} x{f:<4g} ok {step['ok_rate']:7.1f}/s shed {step['shed_503']:6d} timeout {step['timed_out']:6d} "
                          f"p50 {lat['p50']} p99 {lat['p99']} ms rss {step['worker_peak_rss_mib']} MiB", file=sys.stderr)
                    time.sleep(1.0)
                results[mode] = steps
            finally:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "overload",
        "environment": environment(),
        "bundles": str(bundles),
        "workers": workers,
        "surface": surface,
        "capacity_rate": capacity,
        "duration_s": duration_s,
        "client_timeout_s": timeout_s,
        "latency": "from each request's due time to its last byte, 200 answers only (open loop)",
        "modes": {mode: MODES[mode] or "defaults" for mode in MODES},
        "results": results,
    }


def table(result: dict) -> str:
    lines = ["| mode | offered | 200/s | shed 503 | timed out | 200 p50 ms | 200 p99 ms | worker peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for mode, steps in result["results"].items():
        for s in steps:
            lat = s["ok_latency_ms"]
            lines.append(f"| {mode} | {s['factor']:g}× ({s['offered_rate']:.0f}/s) | {s['ok_rate']:.0f} | {s['shed_503']} | {s['timed_out']} | "
                         f"{lat['p50']} | {lat['p99']} | {s['worker_peak_rss_mib']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--surface", default="home")
    p.add_argument("--factors", default="1.5,3", help="offered rates as multiples of the measured capacity")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--timeout", type=float, default=2.0, help="the client gives up on an answer after this many seconds")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    try:
        factors = [float(x) for x in a.factors.split(",") if x.strip()]
    except ValueError:
        print(f"--factors: expected comma-separated numbers, got {a.factors!r}", file=sys.stderr)
        return 2
    try:
        result = run(a.bundles, a.workers, a.surface, factors, a.duration, a.timeout)
    except BenchError as exc:
        print(f"bench overload: {exc}", file=sys.stderr)
        return 1
    print(table(result))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
