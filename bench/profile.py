"""Flame graphs of the serving workers under a fixed open-loop load, one per surface and worker.

Why under load and per worker: a profile of one request in isolation misses what a loaded worker
spends its time on (the event loop, Granian's threads, the allocator, the timers), and Granian's
workers are separate processes, so py-spy attaches to each by pid. The load is the open-loop
generator's (bench/loadgen.py, in its own process) at a fixed rate well below capacity, so the
profile shows the cost per request rather than queueing.

py-spy samples with --nonblocking (the workers are not paused, so it barely perturbs them);
--native adds C/C++/Rust frames (onnxruntime, usearch, numba, Granian) but py-spy must then pause
the process for every sample, which slows the worker noticeably: compare rates, not latencies.

    python -m bench.profile --bundles ROOT [--surfaces home,pdp,cart] [--rate 100] [--duration 15]
        [--out bench/results/profiles] [--native]

Writes OUT/SURFACE-workerK.svg and OUT/index.json (environment, bundle, load, files, loadgen result).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.environment import environment
from bench.http import SURFACES, TARGETS, BenchError, ServerProcess, request_paths, target

PERMISSION_HINT = ("py-spy could not read the worker's memory: run as root, or allow ptrace "
                   "(sysctl kernel.yama.ptrace_scope=0, or give py-spy CAP_SYS_PTRACE in a container)")


def py_spy() -> str:
    """The py-spy next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("py-spy is not installed: pip install 'py-spy>=0.4,<0.5' (the bench extra of pyproject.toml)")
    return found


def spy_command(pid: int, out: Path, duration_s: float, sample_rate: int, native: bool) -> list[str]:
    cmd = [py_spy(), "record", "--format", "flamegraph", "-o", str(out), "--pid", str(pid),
           "--duration", str(max(1, round(duration_s))), "--rate", str(sample_rate)]
    # py-spy refuses --native with --nonblocking: native unwinding needs the process stopped.
    return cmd + (["--native"] if native else ["--nonblocking"])


def profile_surface(server: ServerProcess, surface: str, paths: list[str], out: Path, rate: float, duration_s: float,
                    warmup_s: float, sample_rate: int, native: bool, workdir: Path) -> dict:
    """Drive `rate` req/s of `surface` and record every worker for duration_s once warm."""
    spec = loadgen.LoadSpec(url=server.url, paths=paths, rate=rate, duration_s=duration_s + 1.0, warmup_s=warmup_s,
                            min_connections=max(4, 2 * len(server.worker_pids)))
    load = loadgen.LoadProcess(spec, workdir)
    time.sleep(warmup_s + 0.5)  # the loadgen process starts, connects and warms up first
    spies = []
    for k, pid in enumerate(server.worker_pids, 1):
        svg = out / f"{surface}-worker{k}.svg"
        cmd = spy_command(pid, svg, duration_s, sample_rate, native)
        spies.append((k, pid, svg, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    files = []
    for k, pid, svg, cmd, proc in spies:
        try:
            text, _ = proc.communicate(timeout=duration_s + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        entry: dict = {"surface": surface, "worker": k, "pid": pid, "command": " ".join(cmd)}
        counts = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        if proc.returncode == 0 and svg.exists() and svg.stat().st_size > 0:
            entry.update(file=svg.name, bytes=svg.stat().st_size,
                         samples=int(counts.group(1)) if counts else None, sample_errors=int(counts.group(2)) if counts else None)
        else:
            lowered = text.lower()
            hint = PERMISSION_HINT if ("permission" in lowered or "ptrace" in lowered or "operation not permitted" in lowered) else ""
            entry.update(file=None, error=f"py-spy exited with {proc.returncode}: {text.strip()[-800:]}" + (f" ({hint})" if hint else ""))
        files.append(entry)
    result = load.result()
    result.pop("histogram_ms", None)
    return {"surface": surface, "files": files, "load": result}


def run(bundles: Path, surfaces: list[str], rate: float, duration_s: float, out: Path, workers: int = 2,
        sample_rate: int = 500, native: bool = False, warmup_s: float = 2.0, target_name: str = "aisle",
        requests: int = 2000, seed: int = 1, quiet: bool = False) -> dict:
    spec = target(target_name)
    py_spy()  # fail before starting anything if it is missing
    from artifacts.bundle import open_bundle

    bundle = open_bundle(bundles, verify="sizes")
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="aisle-profile-"))
    server = ServerProcess(spec, bundles, workers)
    runs = []
    try:
        server.wait_ready()
        for surface in surfaces:
            if not quiet:
                print(f"profiling {surface}: {rate:g} req/s, {duration_s:g} s, workers {server.worker_pids}", file=sys.stderr, flush=True)
            paths = request_paths(bundles, surface, requests, seed)
            runs.append(profile_surface(server, surface, paths, out, rate, duration_s, warmup_s, sample_rate, native, workdir))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    index = {
        "benchmark": "profile-under-load",
        "environment": environment(),
        "target": target_name,
        "bundle": {"id": bundle.build_id, "items": bundle.n_items, "path": str(bundle.root)},
        "server": {"workers": workers, "command": server.command, "worker_pids": server.worker_pids},
        "profiler": {"tool": "py-spy", "sample_rate_hz": sample_rate, "native": native,
                     "mode": "blocking (needed for --native)" if native else "nonblocking"},
        "load": {"rate": rate, "duration_s": duration_s, "warmup_s": warmup_s, "arrivals": "uniform", "open_loop": True},
        "runs": runs,
    }
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def summary(index: dict) -> str:
    lines = [f"profiles of {index['target']} on bundle {index['bundle']['id']} ({index['bundle']['items']:,} items), "
             f"{index['server']['workers']} workers, {index['load']['rate']:g} req/s open loop, py-spy {index['profiler']['mode']}",
             "", "| surface | worker | file | samples (errors) | load p50 / p99 ms |", "|---|---|---|---|---|"]
    for r in index["runs"]:
        lat = r["load"]["latency_ms"]
        for f in r["files"]:
            spy = f"{f['samples']} ({f['sample_errors']})" if f["file"] else f.get("error", "")
            lines.append(f"| {r['surface']} | {f['worker']} (pid {f['pid']}) | {f['file'] or 'FAILED'} | {spy} | {lat['p50']} / {lat['p99']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m bench.profile") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--bundles", required=True, type=Path, help="bundle root holding current")
    p.add_argument("--surfaces", default="home,pdp,cart", help="comma-separated, of home, pdp, cart, mix (default home,pdp,cart)")
    p.add_argument("--rate", type=float, default=100.0, help="open-loop requests per second during the profile (default 100)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds recorded per surface (default 15)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before recording (default 2)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sample-rate", type=int, default=500, help="py-spy samples per second (default 500)")
    p.add_argument("--native", action="store_true", help="include native frames (py-spy then pauses the worker per sample)")
    p.add_argument("--target", default="aisle", choices=sorted(TARGETS))
    p.add_argument("--out", type=Path, default=Path("bench/results/profiles"))
    args = p.parse_args(argv)
    surfaces = [s.strip() for s in args.surfaces.split(",") if s.strip()]
    bad = [s for s in surfaces if s not in SURFACES]
    if bad or not surfaces:
        print(f"{prog}: unknown surface(s) {bad or surfaces}; use {', '.join(SURFACES)}", file=sys.stderr)
        return 2
    try:
        index = run(args.bundles, surfaces, args.rate, args.duration, args.out, args.workers, args.sample_rate,
                    args.native, args.warmup, args.target)
    except (BenchError, loadgen.LoadgenError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(summary(index))
    failed = [f for r in index["runs"] for f in r["files"] if not f["file"]]
    if failed:
        print(f"{prog}: {len(failed)} profile(s) failed; see errors above and in {args.out / 'index.json'}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
