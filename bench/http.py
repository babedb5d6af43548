"""Capacity and latency over HTTP, open loop: the figure a performance engineer can trust.

Starts the server itself (`aisle serve`, or the plain baseline), then offers a fixed request rate
with the open-loop load generator (bench/loadgen.py, in its own process; latency from each
request's *due* time, so a stalled server is charged for every request queued behind the stall),
stepping the rate up until the p99 leaves the budget, errors appear or the server falls behind.

CAPACITY is the highest offered rate whose p99 stays within --budget-ms with no errors and at
least 95% of the offered rate completed. One more step at HALF the capacity gives the latency a
service provisioned with 2x headroom would see (the issue's target: home p99 <= 8 ms at half
capacity, capacity >= 250 req/s per core).

Every step records the server's CPU time (utime + stime of the Granian main process and all its
workers, from /proc) per completed request, and the client's own CPU, so a saturated client shows.
With --pin (and --workers 1 on 2 cores) the server runs on CPU 0 and the load generator on CPU 1:
the capacity is then per core. Without --pin both share every core, and the result says so.
--wrk cross-checks with wrk (closed loop) paced to the half-capacity throughput and unpaced.

    python -m bench.http --bundles ROOT [--workers 1] [--surface home|pdp|cart|mix]
        [--rates 50,100,200 | --step auto] [--duration 10] [--budget-ms 8] [--pin] [--wrk]
        [--json bench/results/http-SCALE.json] [--target aisle|baseline]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench import loadgen
from bench.environment import REPO, environment

SURFACES = ("home", "pdp", "cart", "mix")
MIX = (("home", 0.5), ("pdp", 0.3), ("cart", 0.2))
MAX_ERROR_RATE_TO_CONTINUE = 0.01  # auto stepping stops above 1% errors
MIN_ACHIEVED_SHARE = 0.95  # ... or when less than 95% of the offered rate completes
CLIENT_SATURATED = 0.8  # client CPU share of one core above which its figures are suspect
WRK_SCRIPT = Path(__file__).with_name("wrk_recommend.lua")
ISSUE_TARGET = {"surface": "home", "p99_ms_at_half_capacity": 8.0, "capacity_per_core": 250.0}


class BenchError(Exception):
    """The benchmark cannot run as asked (missing target module, bad options, server not ready)."""


# ---------------------------------------------------------------------------------------------
# The servers under test, table-driven: one row per target.


@dataclass(frozen=True)
class Target:
    """How to start one server under test. `module` must be importable (checked before start)."""

    name: str
    module: str
    command: Callable[[Path, int, int, Path], list[str]]  # (bundles, port, workers, state dir) -> argv
    readyz_has_pid: bool  # /readyz names the answering worker's pid: wait until every worker answered


def _aisle_command(bundles: Path, port: int, workers: int, state: Path) -> list[str]:
    script = Path(sys.executable).with_name("aisle")  # the installed entry point, as an operator runs it
    head = [str(script)] if script.exists() else [sys.executable, "-m", "builder.cli"]
    return [*head, "serve", "--bundles", str(bundles), "--workers", str(workers), "--port", str(port), "--state", str(state)]


def _baseline_command(bundles: Path, port: int, workers: int, state: Path) -> list[str]:
    return [sys.executable, "-m", "bench.baseline.server", "--bundle", str(bundles), "--port", str(port), "--workers", str(workers)]


TARGETS: dict[str, Target] = {
    "aisle": Target("aisle", "builder.cli", _aisle_command, readyz_has_pid=True),
    "baseline": Target("baseline", "bench.baseline.server", _baseline_command, readyz_has_pid=False),
}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise BenchError(f"unknown target {name!r}; one of {', '.join(TARGETS)}")
    t = TARGETS[name]
    try:
        found = importlib.util.find_spec(t.module)
    except ModuleNotFoundError:
        found = None
    if found is None:
        raise BenchError(f"target {name!r} needs the module {t.module}, which is not in this checkout "
                         f"(python -m {t.module} would fail); use --target aisle or add the module")
    return t


# ---------------------------------------------------------------------------------------------
# The server process tree: start, readiness, discovery of workers, CPU time, pinning, stop.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid (Granian's workers are children of its main process)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            out += kids
            todo += kids
    return out


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads) in seconds, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces or ')'
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of pid (sched_setaffinity acts on one thread; later threads inherit)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except ProcessLookupError:
            pass


class ServerProcess:
    """One server under test, in its own session so that stopping it stops all its workers."""

    def __init__(self, spec: Target, bundles: Path, workers: int, port: int | None = None, extra: list[str] | None = None) -> None:
        self.spec = spec
        self.workers = workers
        self.port = port or free_port()
        self.state = Path(tempfile.mkdtemp(prefix=f"aisle-http-{spec.name}-"))
        self.command = [*spec.command(bundles, self.port, workers, self.state / "state"), *(extra or [])]
        self.log_path = self.state / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.worker_pids: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def _readyz(self) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/readyz")
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until /readyz is 200 (from every worker, when /readyz names the worker's pid)."""
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.spec.name} server exited with {self.proc.returncode} before it was ready:\n{self.tail()}")
            try:
                status, body = self._readyz()
            except OSError:
                status, body = 0, b""
            if status == 200:
                pid = _pid_of(body) if self.spec.readyz_has_pid else None
                if pid is None:
                    break
                seen.add(pid)
                if len(seen) >= self.workers:
                    break
            time.sleep(0.2)
        else:
            raise BenchError(f"{self.spec.name} server not ready after {timeout_s:.0f}s ({len(seen)} of {self.workers} workers answered):\n{self.tail()}")
        self.worker_pids = sorted(descendants(self.proc.pid))

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far of every process of the server, by pid."""
        out = {}
        for pid in self.pids():
            s = cpu_seconds(pid)
            if s is not None:
                out[pid] = s
        return out

    def pin(self, cpus: set[int]) -> None:
        for pid in self.pids():
            pin(pid, cpus)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self.state, ignore_errors=True)


def _pid_of(body: bytes) -> int | None:
    try:
        pid = json.loads(body).get("pid")
    except (ValueError, AttributeError):
        return None
    return int(pid) if isinstance(pid, int) else None


# ---------------------------------------------------------------------------------------------
# Requests.


def request_paths(bundles: Path, surface: str, n: int, seed: int) -> list[str]:
    """n request paths for `surface` (for mix: home 50%, pdp 30%, cart 20%, shuffled with seed)."""
    from bench.workload import queries, to_query_string

    if surface not in SURFACES:
        raise BenchError(f"unknown surface {surface!r}; one of {', '.join(SURFACES)}")
    if surface != "mix":
        return ["/v1/recommendations?" + to_query_string(q) for q in queries(bundles, surface, n, seed)]
    paths: list[str] = []
    for k, (name, share) in enumerate(MIX):
        paths += ["/v1/recommendations?" + to_query_string(q) for q in queries(bundles, name, max(1, round(n * share)), seed + k)]
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in order]


# ---------------------------------------------------------------------------------------------
# One rate step, the capacity search.


@dataclass
class Options:
    """Everything one benchmark run needs; the command line maps onto it one to one (see parser())."""

    bundles: Path
    target: str = "aisle"
    workers: int = 1
    surface: str = "home"
    rates: list[float] | None = None  # None: auto stepping
    start_rate: float = 50.0
    factor: float = 1.4
    max_steps: int = 25
    refine: int | None = None  # bisection steps between last pass and first fail (default: 2 if auto)
    duration_s: float = 10.0
    warmup_s: float = 1.0
    prime_s: float = 2.0
    idle_s: float = 2.0  # seconds without load to measure the server's idle CPU
    budget_ms: float = 8.0
    pin: bool = False
    poisson: bool = False
    seed: int = 1
    requests: int = 2000
    max_connections: int = 512
    timeout_s: float = 10.0
    wrk: bool = False
    wrk_connections: int = 4
    wrk_duration_s: float | None = None
    port: int | None = None
    ready_timeout_s: float = 300.0
    quiet: bool = False
    settings: Path | None = None  # engine settings TOML for `aisle serve --settings`
    settle_s: float = 0.5  # pause between steps, so one step's stragglers do not land in the next


class Bench:
    """A started server plus everything a step needs; `step(rate)` runs one open-loop step."""

    def __init__(self, opts: Options, server: ServerProcess, paths: list[str], client_cpu: int | None, workdir: Path) -> None:
        self.opts = opts
        self.server = server
        self.paths = paths
        self.client_cpu = client_cpu
        self.workdir = workdir
        self.idle_cores = 0.0  # the server's CPU use with no load (timers, file watching), see idle()

    def idle(self, seconds: float) -> float:
        """Measure the server's CPU use without load, in cores; steps report CPU net of it too."""
        before, t0 = self.server.cpu(), time.perf_counter()
        time.sleep(seconds)
        after, wall = self.server.cpu(), time.perf_counter() - t0
        self.idle_cores = max(0.0, sum(after[p] - before.get(p, 0.0) for p in after) / wall)
        return self.idle_cores

    def spec(self, rate: float, duration_s: float, warmup_s: float) -> loadgen.LoadSpec:
        o = self.opts
        return loadgen.LoadSpec(url=self.server.url, paths=self.paths, rate=rate, duration_s=duration_s, warmup_s=warmup_s,
                                poisson=o.poisson, seed=o.seed, min_connections=max(4, 2 * o.workers),
                                max_connections=o.max_connections, timeout_s=o.timeout_s, cpu=self.client_cpu)

    def step(self, rate: float, duration_s: float | None = None, warmup_s: float | None = None, label: str = "") -> dict:
        o = self.opts
        spec = self.spec(rate, o.duration_s if duration_s is None else duration_s, o.warmup_s if warmup_s is None else warmup_s)
        before, t0 = self.server.cpu(), time.perf_counter()
        result = loadgen.run_process(spec, self.workdir)
        after, wall = self.server.cpu(), time.perf_counter() - t0
        used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
        cpu_s = sum(used.values())
        n = result["completed_total"]  # warm-up included: the CPU window spans the whole loadgen run
        net = max(0.0, cpu_s - self.idle_cores * wall)
        result["server"] = {
            "cpu_s": round(cpu_s, 3),
            "cpu_ms_per_request": round(cpu_s * 1e3 / n, 3) if n else None,
            # Without the idle baseline, which dominates at low rates.
            "cpu_ms_per_request_net_of_idle": round(net * 1e3 / n, 3) if n else None,
            "cores_busy": round(cpu_s / wall, 3),
            "cpu_s_by_pid": {str(pid): round(s, 3) for pid, s in sorted(used.items())},
            "processes_changed": sorted(before) != sorted(after),  # a worker died or was respawned
        }
        judge(result, o.budget_ms)
        if not o.quiet:
            print(f"{label:>8} {_step_line(result)}", file=sys.stderr, flush=True)
        time.sleep(o.settle_s)
        return result


def judge(step: dict, budget_ms: float) -> None:
    """Mark a step passed (p99 within budget, no errors, >= 95% of the offered rate completed) and
    whether auto stepping may go on (it stops at p99 over budget, > 1% errors or < 95% achieved)."""
    p99 = step["latency_ms"]["p99"]
    why = []
    if p99 is None or p99 > budget_ms:
        why.append(f"p99 {p99} ms > budget {budget_ms} ms")
    if step["errors_total"]:
        why.append(f"{step['errors_total']} errors {step['errors']}")
    if step["achieved_rate"] < MIN_ACHIEVED_SHARE * step["offered_rate"]:
        why.append(f"achieved {step['achieved_rate']} < 95% of offered {step['offered_rate']}")
    step["passed"] = not why
    step["failed_because"] = why
    step["stop"] = (p99 is None or p99 > budget_ms or step["error_rate"] > MAX_ERROR_RATE_TO_CONTINUE
                    or step["achieved_rate"] < MIN_ACHIEVED_SHARE * step["offered_rate"])
    notes = []
    if (step["client"]["cpu_util"] or 0) > CLIENT_SATURATED:
        notes.append(f"client CPU {step['client']['cpu_util']:.0%} of a core: the client may be limiting")
    if step["connections"]["cap_waits"]:
        notes.append(f"connection cap {step['connections']['cap']} reached: {step['connections']['cap_waits']} requests waited for a connection")
    if step["server"]["processes_changed"]:
        notes.append("the server's process set changed during the step (a worker died or respawned)")
    step["notes"] = notes


def search(bench: Bench) -> tuple[list[dict], float | None, str]:
    """Run the rate steps; return (steps, capacity, why the search stopped)."""
    o = bench.opts
    steps: list[dict] = []
    rates = list(o.rates) if o.rates else [o.start_rate * o.factor ** k for k in range(o.max_steps)]
    rates = [round(r, 1) for r in rates]
    stopped = "ran every step" if o.rates else f"reached --max-steps {o.max_steps} without failing"
    first_fail: float | None = None
    for rate in rates:
        s = bench.step(rate)
        steps.append(s)
        if s["stop"]:
            first_fail = rate
            stopped = f"{rate:g} req/s: " + "; ".join(s["failed_because"])
            break
    refine = o.refine if o.refine is not None else (0 if o.rates else 2)
    passed = [s["offered_rate"] for s in steps if s["passed"]]
    lo = max(passed) if passed else None
    if lo is not None and first_fail is not None:
        hi = first_fail
        for _ in range(refine):  # bisect between the last passing and the first failing rate
            mid = round((lo + hi) / 2, 1)
            if mid in (lo, hi):
                break
            s = bench.step(mid, label="refine")
            s["refinement"] = True
            steps.append(s)
            if s["passed"]:
                lo = mid
            else:
                hi = mid
    passed = [s["offered_rate"] for s in steps if s["passed"]]
    if not passed:
        stopped += " (no step passed: try a lower --start-rate or --rates)"
    return steps, (max(passed) if passed else None), stopped


# ---------------------------------------------------------------------------------------------
# wrk cross-check (closed loop).

_WRK_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> dict:
    """Requests/sec, the --latency distribution (50/75/90/99 %), errors, and the WRK_JSON line
    written by wrk_recommend.lua's done() (exact microsecond percentiles, p99.9 and max)."""
    out: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["requests_per_s"] = float(m.group(1)) if m else None
    dist = {}
    for pct, value, unit in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        dist[f"p{float(pct):g}"] = round(float(value) * _WRK_UNITS_MS[unit], 3)
    out["latency_ms"] = dist
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    m = re.search(r"^WRK_JSON (.*)$", text, re.M)
    if m:
        exact = json.loads(m.group(1))
        out["exact_latency_ms"] = {k: round(v / 1e3, 3) for k, v in exact["latency_us"].items()}
    return out


def run_wrk(bench: Bench, connections: int, duration_s: float, pace_ms: float = 0.0) -> dict:
    """One wrk run over the same request paths; server CPU per request measured around it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"error": "wrk: not installed"}
    paths_file = bench.workdir / "wrk-paths.txt"
    paths_file.write_text("\n".join(bench.paths) + "\n")
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency", "-s", str(WRK_SCRIPT),
           bench.server.url, "--", str(paths_file), f"{pace_ms:.3f}"]
    cpus = {bench.client_cpu} if bench.client_cpu is not None else None
    before, t0 = bench.server.cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    after, wall = bench.server.cpu(), time.perf_counter() - t0
    if done.returncode != 0:
        return {"error": f"wrk exited with {done.returncode}: {done.stderr.strip()[-500:]}", "command": " ".join(cmd)}
    out = parse_wrk(done.stdout)
    cpu_s = sum(after[p] - before.get(p, 0.0) for p in after)
    out.update({"connections": connections, "pace_ms": round(pace_ms, 3), "duration_s": duration_s,
                "command": " ".join(cmd), "server_cpu_ms_per_request": round(cpu_s * 1e3 / out["requests"], 3) if out.get("requests") else None,
                "server_cores_busy": round(cpu_s / wall, 3)})
    time.sleep(bench.opts.settle_s)
    return out


def wrk_crosscheck(bench: Bench, rate: float, open_loop: dict) -> dict:
    """wrk paced to `rate` (compare with the open-loop step at that rate), then wrk unpaced (the
    closed-loop ceiling at C connections, to set beside the open-loop capacity)."""
    o = bench.opts
    if shutil.which("wrk") is None:
        return {"wrk": "not installed"}
    duration = o.wrk_duration_s or o.duration_s
    c = o.wrk_connections
    service = open_loop["service_ms"]["p50"] or 0.0
    # Each connection sends, waits for the answer (~service), then waits pace: C / (service + pace) req/s.
    pace = max(0.0, c * 1e3 / rate - service)
    return {
        "paced": {"target_rate": rate, **run_wrk(bench, c, duration, pace)},
        "unpaced": run_wrk(bench, c, duration),
        "open_loop_at_rate": {"offered_rate": open_loop["offered_rate"], "achieved_rate": open_loop["achieved_rate"],
                              "latency_ms": open_loop["latency_ms"], "service_ms": open_loop["service_ms"]},
    }


# ---------------------------------------------------------------------------------------------
# The whole benchmark.


def run(opts: Options) -> dict:
    spec = target(opts.target)
    allowed = sorted(os.sched_getaffinity(0))
    server_cpus: set[int] | None = None
    client_cpu: int | None = None
    if opts.pin:
        if opts.workers + 1 > len(allowed):
            raise BenchError(f"--pin needs one CPU per worker plus one for the load generator: {opts.workers} worker(s) + 1 > "
                             f"{len(allowed)} CPUs here; use --workers {len(allowed) - 1} or drop --pin")
        server_cpus, client_cpu = set(allowed[: opts.workers]), allowed[opts.workers]
    from artifacts.bundle import open_bundle

    bundle = open_bundle(opts.bundles, verify="sizes")
    bundle_info = {"id": bundle.build_id, "items": bundle.n_items, "path": str(bundle.root)}
    paths = request_paths(opts.bundles, opts.surface, opts.requests, opts.seed)
    workdir = Path(tempfile.mkdtemp(prefix="aisle-http-bench-"))
    extra = ["--settings", str(opts.settings)] if opts.settings else []
    if extra and opts.target != "aisle":
        raise BenchError("--settings is an Aisle engine settings file; it applies to --target aisle only")
    server = ServerProcess(spec, opts.bundles, opts.workers, opts.port, extra)
    try:
        server.wait_ready(opts.ready_timeout_s)
        if server_cpus is not None and client_cpu is not None:
            server.pin(server_cpus)
            os.sched_setaffinity(0, {client_cpu})  # this driver too: it must not disturb the server's core
        bench = Bench(opts, server, paths, client_cpu, workdir)
        if opts.prime_s > 0:  # page in the bundle parts this surface touches; not recorded
            bench.step(opts.rates[0] if opts.rates else opts.start_rate, duration_s=opts.prime_s, warmup_s=0.0, label="prime")
        idle_cores = bench.idle(opts.idle_s) if opts.idle_s > 0 else None
        steps, capacity, stopped = search(bench)
        half = bench.step(round(capacity / 2, 1), label="half") if capacity else None
        wrk: dict | None = None
        if opts.wrk:
            ref = half or next((s for s in steps if s["passed"]), steps[0])
            wrk = wrk_crosscheck(bench, ref["offered_rate"], ref)
        server_block = {
            "workers": opts.workers,
            "settings": opts.settings.read_text() if opts.settings else "defaults",
            "worker_pids": server.worker_pids,
            "pinned": bool(opts.pin),
            "server_cpus": sorted(server_cpus) if server_cpus else allowed,
            "client_cpus": [client_cpu] if client_cpu is not None else allowed,
            "idle_cores_busy": round(idle_cores, 4) if idle_cores is not None else None,
            "placement": (f"server (main + {opts.workers} worker) pinned to CPU {sorted(server_cpus)}, load generator and wrk to CPU {client_cpu}"
                          if opts.pin else f"server and load generator share all {len(allowed)} CPUs (not pinned)"),
            "command": server.command,
        }
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if opts.pin:
            os.sched_setaffinity(0, set(allowed))
    cap_step = next((s for s in steps if s["passed"] and s["offered_rate"] == capacity), None)
    ms_per_req = cap_step["server"]["cpu_ms_per_request"] if cap_step else None
    per_core = capacity if (capacity and opts.pin and opts.workers == 1) else None
    result = {
        "benchmark": "http-open-loop",
        "environment": environment(),
        "target": opts.target,
        "bundle": bundle_info,
        "server": server_block,
        "load": {"surface": opts.surface, "distinct_requests": len(paths), "seed": opts.seed,
                 "arrivals": "poisson" if opts.poisson else "uniform", "duration_s": opts.duration_s,
                 "warmup_s": opts.warmup_s, "prime_s": opts.prime_s, "budget_ms": opts.budget_ms,
                 "rates": opts.rates or f"auto: {opts.start_rate:g} x {opts.factor:g} per step",
                 "pass": f"p99 <= {opts.budget_ms:g} ms, no errors, achieved >= {MIN_ACHIEVED_SHARE:.0%} of offered",
                 "latency": "from each request's due time to its last response byte (open loop, no coordinated omission)"},
        "steps": steps,
        "capacity": {
            "rate": capacity,
            "stopped": stopped,
            "per_core": per_core,
            "server_cpu_ms_per_request": ms_per_req,
            # What one fully busy core could serve at this CPU cost: a ceiling, not a measured rate.
            "cpu_ceiling_per_core": round(1e3 / ms_per_req, 1) if ms_per_req else None,
        },
        "half_capacity": half,
        "wrk": wrk if opts.wrk else None,
    }
    result["issue_target"] = _issue_target(result, opts)
    return result


def _issue_target(result: dict, opts: Options) -> dict:
    half = result["half_capacity"]
    per_core = result["capacity"]["per_core"]
    p99 = half["latency_ms"]["p99"] if half else None
    out = {**ISSUE_TARGET, "applies": opts.surface == "home" and opts.pin and opts.workers == 1,
           "p99_ms_at_half_capacity_measured": p99, "capacity_per_core_measured": per_core}
    if out["applies"]:
        out["met"] = bool(p99 is not None and p99 <= ISSUE_TARGET["p99_ms_at_half_capacity"]
                          and per_core is not None and per_core >= ISSUE_TARGET["capacity_per_core"])
    else:
        out["met"] = None
        out["why_not_applicable"] = "the target is stated for the home surface, 1 worker pinned to one core (--pin --workers 1)"
    return out


# ---------------------------------------------------------------------------------------------
# Reporting.


def _step_line(s: dict) -> str:
    lat = s["latency_ms"]
    verdict = "pass" if s["passed"] else "FAIL: " + "; ".join(s["failed_because"])
    return (f"{s['offered_rate']:>8g} req/s offered, {s['achieved_rate']:>8g} achieved, p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms, "
            f"server {s['server']['cpu_ms_per_request']} CPU-ms/req, client CPU {s['client']['cpu_util']:.0%} — {verdict}")


def _row(label: str, s: dict) -> str:
    lat, srv = s["latency_ms"], s["server"]
    verdict = "pass" if s["passed"] else "fail"
    err = s["errors_total"] or ""
    return (f"| {label} | {s['offered_rate']:g} | {s['achieved_rate']:g} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['p99.9']} | "
            f"{lat['max']} | {err} | {srv['cpu_ms_per_request']} ({srv['cpu_ms_per_request_net_of_idle']}) | {srv['cores_busy']} | {s['client']['cpu_util']:.0%} | {verdict} |")


def table(result: dict) -> str:
    """The result as Markdown: a header line, one row per step, capacity, half capacity, wrk."""
    env, b, srv, load = result["environment"], result["bundle"], result["server"], result["load"]
    lines = [
        f"{result['target']} on bundle {b['id']} ({b['items']:,} items), surface {load['surface']}, {srv['workers']} worker(s); "
        f"{srv['placement']}; commit {env['commit']}, {env['cpu']} x {env['cores']}, load avg at start {env['loadavg_at_start'][0]:.2f}",
        f"open loop, {load['arrivals']} arrivals, {load['duration_s']:g} s per step after {load['warmup_s']:g} s warm-up; "
        f"pass = {load['pass']}",
        "",
        "| step | offered req/s | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | server CPU ms/req (net of idle) | server cores busy | client CPU | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, s in enumerate(result["steps"], 1):
        lines.append(_row(f"{k}" + (" (refine)" if s.get("refinement") else ""), s))
    if result["half_capacity"]:
        lines.append(_row("**half capacity**", result["half_capacity"]))
    cap = result["capacity"]
    found = f"{cap['rate']:g} req/s" if cap["rate"] is not None else "none: no step passed"
    lines += ["", f"**capacity: {found}** (p99 <= {load['budget_ms']:g} ms, no errors); stopped at {cap['stopped']}"]
    if cap["per_core"]:
        lines.append(f"per core (1 pinned worker): {cap['per_core']} req/s")
    if cap["cpu_ceiling_per_core"]:
        lines.append(f"server CPU at capacity: {cap['server_cpu_ms_per_request']} ms per request (a fully busy core: {cap['cpu_ceiling_per_core']} req/s)")
    t = result.get("issue_target")
    if t and t["applies"]:
        p99, per_core = t["p99_ms_at_half_capacity_measured"], t["capacity_per_core_measured"]
        measured = f"p99 {p99} ms at half capacity, {per_core:g} req/s per core" if per_core else "no capacity found"
        lines.append(f"issue target (home, p99 <= {t['p99_ms_at_half_capacity']:g} ms at half capacity, >= {t['capacity_per_core']:g} req/s per core): "
                     f"{'met' if t['met'] else 'NOT met'} ({measured})")
    notes = sorted({n for s in result["steps"] for n in s["notes"]})
    lines += [f"note: {n}" for n in notes]
    w = result.get("wrk")
    if w is not None:
        lines.append("")
        if "wrk" in w:
            lines.append(f"wrk cross-check: {w['wrk']}")
        else:
            lines += _wrk_lines(w)
    return "\n".join(lines)


def _wrk_lines(w: dict) -> list[str]:
    ol = w["open_loop_at_rate"]
    lines = ["| client | req/s | p50 ms | p75 ms | p90 ms | p99 ms | server CPU ms/req |", "|---|---|---|---|---|---|---|",
             f"| loadgen open loop @ {ol['offered_rate']:g} req/s (from due time) | {ol['achieved_rate']:g} | {ol['latency_ms']['p50']} | – | "
             f"{ol['latency_ms']['p90']} | {ol['latency_ms']['p99']} | – |"]
    for name in ("paced", "unpaced"):
        r = w[name]
        if "error" in r:
            lines.append(f"| wrk {name} | {r['error']} | | | | | |")
            continue
        d = r["latency_ms"]
        label = f"wrk closed loop c={r['connections']}" + (f", paced {r['pace_ms']} ms (target {r['target_rate']:g} req/s)" if name == "paced" else ", unpaced")
        lines.append(f"| {label} | {r['requests_per_s']} | {d.get('p50')} | {d.get('p75')} | {d.get('p90')} | {d.get('p99')} | {r['server_cpu_ms_per_request']} |")
    return lines


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates wants comma-separated numbers, e.g. 50,100,200; got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"--rates wants positive numbers, got {text!r}")
    return rates


def parser(prog: str = "python -m bench.http") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:15]))
    p.add_argument("--bundles", required=True, type=Path, help="bundle root holding current (what `aisle serve --bundles` takes)")
    p.add_argument("--target", default="aisle", choices=sorted(TARGETS), help="server under test (default aisle)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    p.add_argument("--surface", default="home", choices=SURFACES, help="request mix (mix: home 50%%, pdp 30%%, cart 20%%)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rates", type=_rates, help="offered rates in req/s, comma-separated, run in order until one fails")
    g.add_argument("--step", choices=["auto"], help="auto (the default): from --start-rate, x --factor per step until a step fails")
    p.add_argument("--start-rate", type=float, default=50.0)
    p.add_argument("--factor", type=float, default=1.4)
    p.add_argument("--max-steps", type=int, default=25)
    p.add_argument("--refine", type=int, help="bisection steps between the last passing and first failing rate (default 2 with auto, 0 with --rates)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per step (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds per step sent before measuring (default 1)")
    p.add_argument("--prime", type=float, default=2.0, help="seconds of unrecorded load before the first step (default 2)")
    p.add_argument("--idle", type=float, default=2.0, help="seconds without load to measure the server's idle CPU (default 2; 0: skip)")
    p.add_argument("--budget-ms", type=float, default=8.0, help="p99 budget in ms (default 8)")
    p.add_argument("--pin", action="store_true", help="server workers on their own CPUs, the load generator on the next one")
    p.add_argument("--poisson", action="store_true", help="Poisson arrivals (default: evenly spaced)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--requests", type=int, default=2000, help="distinct requests, cycled (default 2000)")
    p.add_argument("--max-connections", type=int, default=512, help="client connection cap (default 512)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (default 10)")
    p.add_argument("--wrk", action="store_true", help="cross-check with wrk (closed loop), paced to half capacity and unpaced")
    p.add_argument("--wrk-connections", type=int, default=4)
    p.add_argument("--wrk-duration", type=float, help="seconds per wrk run (default: --duration)")
    p.add_argument("--port", type=int, help="server port (default: a free one)")
    p.add_argument("--settings", type=Path, help="engine settings TOML passed to `aisle serve --settings` (e.g. a Granian runtime variant)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /readyz (default 300)")
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--quiet", action="store_true", help="no per-step progress on stderr")
    return p


def options(args: argparse.Namespace) -> Options:
    if args.workers < 1:
        raise BenchError(f"--workers must be at least 1, got {args.workers}")
    if args.duration <= 0 or args.warmup < 0 or args.prime < 0 or args.idle < 0:
        raise BenchError("--duration must be > 0; --warmup, --prime and --idle >= 0")
    if args.factor <= 1.0:
        raise BenchError(f"--factor must be > 1 so the rate grows, got {args.factor}")
    if not (args.bundles / "current").exists() and not (args.bundles / "manifest.json").exists():
        raise BenchError(f"{args.bundles} holds no bundle: expected ROOT/current (a root made by `aisle build --out ROOT`)")
    return Options(bundles=args.bundles, target=args.target, workers=args.workers, surface=args.surface, rates=args.rates,
                   start_rate=args.start_rate, factor=args.factor, max_steps=args.max_steps, refine=args.refine,
                   duration_s=args.duration, warmup_s=args.warmup, prime_s=args.prime, idle_s=args.idle, budget_ms=args.budget_ms, pin=args.pin,
                   poisson=args.poisson, seed=args.seed, requests=args.requests, max_connections=args.max_connections,
                   timeout_s=args.timeout, wrk=args.wrk, wrk_connections=args.wrk_connections, wrk_duration_s=args.wrk_duration,
                   port=args.port, ready_timeout_s=args.ready_timeout, quiet=args.quiet, settings=args.settings)


def main(argv: list[str] | None = None, prog: str = "python -m bench.http") -> int:
    args = parser(prog).parse_args(argv)
    try:
        result = run(options(args))
    except (BenchError, loadgen.LoadgenError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
