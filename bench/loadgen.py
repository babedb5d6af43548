"""An open-loop HTTP/1.1 load generator, run in its own process.

Why open loop: a closed-loop client (wrk, ab, a pool of threads that each wait for their answer
before sending the next request) slows down exactly when the server stalls, so the stall is
recorded once instead of for every request that should have been sent meanwhile ("coordinated
omission"). Here request i is *due* at t0 + offset[i] whatever happened before (offsets i/rate, or
Poisson arrivals with a seed), and its latency runs from that due time to the last byte of the
response: if the server stalls, the requests queued behind the stall accrue latency as real users'
requests would.

The timer of an event loop wakes up to a millisecond late, so requests are released up to
`early_s` (1 ms) before they are due, and a request's latency runs from min(due, sent): never
shorter than the real round trip, and including every moment it waited past its due time. The
send lag (sent - due) is reported so the client's own lateness is visible.

The client must never be the bottleneck: connections are opened on demand whenever a request is
due and every open connection is busy, up to `max_connections`; when the cap is reached requests
wait in a queue (still timed from their due time) and `cap_waits` counts it. Idle connections are
reused round-robin so load spreads over every connection and thus every server worker (the kernel
hands each accepted connection to one worker). The client's own CPU time is recorded so a
saturated client shows up in the result.

Self-contained on purpose (stdlib, numpy, uvloop if importable): the driver runs this file as a
script in a fresh process (`python -P`, so bench/http.py cannot shadow the stdlib's http), so the
client shares neither the server's process nor its GIL, and does not import the engine.

    python -m bench.loadgen --url http://127.0.0.1:8000 --paths-file paths.txt --rate 200 \
        --duration 10 [--warmup 1] [--poisson --seed 1] [--cpu 1] [--json out.json]
    python -m bench.loadgen --spec spec.json            # the same, as one JSON object (the driver)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Log-bucketed histogram: 20 buckets per decade from 10 us to 100 s (HdrHistogram-like, ~12%
# bucket width), enough to plot a latency distribution from the JSON alone.
HIST_LO_MS, HIST_PER_DECADE, HIST_DECADES = 0.01, 20, 7


class LoadgenError(Exception):
    """A load specification that cannot run (bad URL, empty request list, impossible rate)."""


@dataclass
class LoadSpec:
    """One open-loop run: `rate` requests per second for `warmup_s + duration_s` seconds, cycling
    through `paths`; requests due during the first `warmup_s` are sent but left out of the stats."""

    url: str
    paths: list[str]
    rate: float
    duration_s: float
    warmup_s: float = 0.0
    poisson: bool = False
    seed: int = 1
    min_connections: int = 4  # opened before t0, so both workers of a 2-worker server get some
    max_connections: int = 512
    timeout_s: float = 10.0
    early_s: float = 0.001  # release up to this much before due (event-loop timer resolution)
    cpu: int | None = None  # pin this process to one CPU (os.sched_setaffinity)

    def validate(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise LoadgenError(f"url must be http://host[:port], got {self.url!r} (https is not supported)")
        if not self.paths:
            raise LoadgenError("no request paths: give at least one path such as /v1/recommendations?surface=home")
        if not all(p.startswith("/") for p in self.paths):
            raise LoadgenError("every request path must start with '/'")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise LoadgenError(f"rate must be a positive number of requests per second, got {self.rate}")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise LoadgenError(f"duration must be > 0 and warm-up >= 0, got {self.duration_s} and {self.warmup_s}")
        if not 1 <= self.min_connections <= self.max_connections:
            raise LoadgenError(f"need 1 <= min_connections <= max_connections, got {self.min_connections}, {self.max_connections}")
        if self.cpu is not None and self.cpu not in os.sched_getaffinity(0):
            raise LoadgenError(f"cannot pin to CPU {self.cpu}: allowed CPUs are {sorted(os.sched_getaffinity(0))}")


def schedule(spec: LoadSpec) -> np.ndarray:
    """Due times in seconds after t0 (float64, ascending) for every request of the run."""
    total = spec.warmup_s + spec.duration_s
    if not spec.poisson:
        return np.arange(int(math.floor(total * spec.rate)), dtype=np.float64) / spec.rate
    rng = np.random.default_rng(spec.seed)
    n = int(total * spec.rate * 1.2 + 10 * math.sqrt(total * spec.rate) + 10)  # enough gaps to pass `total`
    offsets = np.cumsum(rng.exponential(1.0 / spec.rate, size=n))
    while offsets[-1] < total:  # vanishingly rare; extend rather than truncate the process
        offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(rng.exponential(1.0 / spec.rate, size=n))])
    return offsets[offsets < total]


# Outcome codes per request.
PENDING, OK, FAILED = 0, 1, 2


class Ledger:
    """State of one run: per-request due/sent/done times and outcomes, the kind of each failure."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.offsets = offsets
        n = len(offsets)
        # Plain lists: scalar stores into a list are cheaper than into a numpy array.
        self.due: list[float] = [0.0] * n
        self.sent: list[float] = [0.0] * n
        self.done: list[float] = [0.0] * n
        self.outcome: list[int] = [PENDING] * n
        self.failures: dict[int, str] = {}  # request index -> error kind (rare, so a dict)
        self.finished = 0
        self.all_finished = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0

    def fail(self, i: int, kind: str) -> None:
        if self.outcome[i] != PENDING:
            return
        self.outcome[i] = FAILED
        self.done[i] = time.perf_counter()
        self.failures[i] = kind
        self._finish()

    def succeed(self, i: int, t: float) -> None:
        self.outcome[i] = OK
        self.done[i] = t
        self._finish()

    def _finish(self) -> None:
        self.finished += 1
        if self.finished == len(self.offsets):
            self.all_finished.set()


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight at a time (no pipelining).
    Responses must carry Content-Length (the servers under test always do)."""

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.current = -1  # request index in flight, -1 when idle
        self.started = 0.0
        self.need = -1  # bytes of the whole response once the head is parsed
        self.status = 0
        self.close_after = False
        self.alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def send(self, i: int) -> None:
        ledger = self.pool.ledger
        self.current = i
        self.need = -1
        self.started = time.perf_counter()
        ledger.sent[i] = self.started
        ledger.in_flight += 1
        if ledger.in_flight > ledger.max_in_flight:
            ledger.max_in_flight = ledger.in_flight
        self.transport.write(self.pool.requests[i % len(self.pool.requests)])  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        t = time.perf_counter()  # the last byte may be in this chunk: take the time first
        buf = self.buf
        buf += data
        if self.current < 0:
            self._broken("unexpected_data")
            return
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower() + b"\r\n"  # every header line now ends in CRLF
            try:
                self.status = int(head[9:12])
                at = head.index(b"\r\ncontent-length:") + 17
                length = int(head[at:head.index(b"\r\n", at)])
            except ValueError:
                self._broken("bad_response")  # no Content-Length (chunked) or not HTTP
                return
            self.close_after = b"\r\nconnection: close" in head
            self.need = end + 4 + length
        if len(buf) < self.need:
            return
        del buf[: self.need]
        i, self.current = self.current, -1
        ledger = self.pool.ledger
        ledger.in_flight -= 1
        if 200 <= self.status < 300:
            ledger.succeed(i, t)
        else:
            ledger.fail(i, f"status_{self.status}")
        if self.close_after:
            self.transport.close()  # type: ignore[union-attr]
            return
        self.pool.release(self)

    def _broken(self, kind: str) -> None:
        if self.current >= 0:
            self.pool.ledger.in_flight -= 1
            self.pool.ledger.fail(self.current, kind)
            self.current = -1
        self.transport.abort()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.current >= 0:
            self.pool.ledger.in_flight -= 1
            self.pool.ledger.fail(self.current, "connection")
            self.current = -1
        self.pool.lost(self)


class Pool:
    """Hands due requests to idle connections, opening more when all are busy (up to the cap)."""

    def __init__(self, spec: LoadSpec, ledger: Ledger) -> None:
        parts = urlsplit(spec.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        host_header = parts.netloc.encode()
        prefix = parts.path.rstrip("/").encode()
        # Pre-encoded once: building request bytes per send would cost more than sending them.
        self.requests = [b"GET " + prefix + p.encode() + b" HTTP/1.1\r\nHost: " + host_header + b"\r\nUser-Agent: aisle-loadgen\r\n\r\n"
                         for p in spec.paths]
        self.spec = spec
        self.ledger = ledger
        self.idle: deque[Connection] = deque()
        self.waiting: deque[int] = deque()
        self.open: set[Connection] = set()
        self.connecting = 0
        self.opened = 0
        self.cap_waits = 0
        self.connect_errors = 0
        self.loop = asyncio.get_running_loop()

    async def prime(self) -> None:
        """Open min_connections before the first request is due (connect time is not latency)."""
        await asyncio.gather(*(self._connect() for _ in range(self.spec.min_connections)))
        if not self.open:
            raise LoadgenError(f"cannot connect to {self.host}:{self.port}")

    def submit(self, i: int) -> None:
        if self.idle:
            self.idle.popleft().send(i)
            return
        self.waiting.append(i)
        if len(self.waiting) > self.connecting:
            if len(self.open) + self.connecting < self.spec.max_connections:
                self.connecting += 1  # counted now so a burst of due requests opens one each, no more
                self.loop.create_task(self._connect(counted=True))
            else:
                self.cap_waits += 1

    def release(self, conn: Connection) -> None:
        if self.waiting:
            conn.send(self.waiting.popleft())
        else:
            self.idle.append(conn)  # FIFO reuse: spread requests over every connection

    def lost(self, conn: Connection) -> None:
        self.open.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        if len(self.waiting) > self.connecting and len(self.open) + self.connecting < self.spec.max_connections:
            self.connecting += 1  # requests are waiting and their connection just went away: replace it
            self.loop.create_task(self._connect(counted=True))

    async def _connect(self, counted: bool = False) -> None:
        if not counted:
            self.connecting += 1
        try:
            _, conn = await self.loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError:
            self.connecting -= 1
            self.connect_errors += 1
            if self.waiting:  # give the oldest waiting request a definite outcome, or we could spin forever
                self.ledger.fail(self.waiting.popleft(), "connect")
            return
        self.connecting -= 1
        self.opened += 1
        self.open.add(conn)
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:  # both asyncio and uvloop set it already; a request is one small write anyway
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.release(conn)

    def check_timeouts(self, now: float) -> None:
        limit = now - self.spec.timeout_s
        for conn in list(self.open):
            if conn.current >= 0 and conn.started < limit:
                conn._broken("timeout")


async def _drive(spec: LoadSpec) -> dict:
    offsets = schedule(spec)
    ledger = Ledger(offsets)
    pool = Pool(spec, ledger)
    await pool.prime()
    n = len(offsets)
    early = spec.early_s
    watchdog_every = min(0.25, spec.timeout_s / 10)

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(watchdog_every)
            pool.check_timeouts(time.perf_counter())

    dog = asyncio.get_running_loop().create_task(watchdog())
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter() + 0.01
    due = ledger.due
    for i in range(n):
        due[i] = t0 + float(offsets[i])
    i = 0
    while i < n:
        horizon = time.perf_counter() + early
        while i < n and due[i] <= horizon:  # catch up in a burst if the loop woke late
            pool.submit(i)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, due[i] - early - time.perf_counter()))
    last_due = due[-1] if n else t0
    try:
        await asyncio.wait_for(ledger.all_finished.wait(), timeout=max(0.0, last_due + spec.timeout_s + 1.0 - time.perf_counter()))
    except asyncio.TimeoutError:
        pass
    t_end = time.perf_counter()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    dog.cancel()
    for j in range(n):  # whatever is left never got an answer (or never got a connection)
        if ledger.outcome[j] == PENDING:
            ledger.fail(j, "timeout" if ledger.sent[j] else "unsent")
    for conn in list(pool.open):
        conn.transport.close()  # type: ignore[union-attr]
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return summarise(spec, ledger, pool, t0, t_end, cpu, loop_name)


def _percentiles(ms: np.ndarray) -> dict[str, float | None]:
    if len(ms) == 0:
        return {"p50": None, "p90": None, "p99": None, "p99.9": None, "max": None, "mean": None}
    out: dict[str, float | None] = {}
    for p, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES)):
        out[f"p{p:g}"] = round(float(v), 3)
    out["max"] = round(float(ms.max()), 3)
    out["mean"] = round(float(ms.mean()), 3)
    return out


def histogram(ms: np.ndarray) -> list[list[float]]:
    """[[bucket upper bound ms, count], ...] for the non-empty log buckets (20 per decade)."""
    if len(ms) == 0:
        return []
    k = np.floor(np.log10(np.maximum(ms, HIST_LO_MS) / HIST_LO_MS) * HIST_PER_DECADE).astype(np.int64)
    k = np.minimum(k, HIST_PER_DECADE * HIST_DECADES)
    counts = np.bincount(k)
    return [[round(HIST_LO_MS * 10 ** ((b + 1) / HIST_PER_DECADE), 4), int(c)] for b, c in enumerate(counts) if c]


def _count(kinds: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in kinds:
        out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def summarise(spec: LoadSpec, ledger: Ledger, pool: Pool, t0: float, t_end: float, cpu_s: float, loop_name: str) -> dict:
    """The JSON-serialisable result of one run; latency stats over the measured window only."""
    due = np.asarray(ledger.due)
    sent = np.asarray(ledger.sent)
    done = np.asarray(ledger.done)
    outcome = np.asarray(ledger.outcome, dtype=np.int8)
    measured = ledger.offsets >= spec.warmup_s
    ok = measured & (outcome == OK)
    was_sent = measured & (sent > 0)
    window_start = t0 + spec.warmup_s
    start = np.where(sent > 0, np.minimum(due, sent), due)
    latency_ms = (done[ok] - start[ok]) * 1e3
    service_ms = (done[ok] - sent[ok]) * 1e3  # from the actual send: what a closed-loop client reports
    lag_ms = (sent[was_sent] - due[was_sent]) * 1e3
    n_measured, n_ok, n_sent = int(measured.sum()), int(ok.sum()), int(was_sent.sum())
    last_done = float(done[ok].max()) if n_ok else window_start
    last_sent = float(sent[was_sent].max()) if n_sent else window_start
    warm_n = len(ledger.offsets) - n_measured  # measured requests are the tail (offsets ascend)
    errors = _count([k for i, k in ledger.failures.items() if i >= warm_n])
    wall = t_end - t0
    return {
        "offered_rate": spec.rate,
        "arrivals": "poisson" if spec.poisson else "uniform",
        "seed": spec.seed,
        "duration_s": spec.duration_s,
        "warmup_s": spec.warmup_s,
        "requests_total": len(ledger.offsets),
        "completed_total": int((outcome == OK).sum()),
        "requests": n_measured,
        "completed": n_ok,
        "errors": errors,
        "errors_total": sum(errors.values()),
        "error_rate": round(sum(errors.values()) / n_measured, 5) if n_measured else 0.0,
        "errors_incl_warmup": _count(list(ledger.failures.values())),
        # Rates over the measured window, stretched to the last send/answer if those ran late.
        "sent_rate": round(n_sent / max(spec.duration_s, last_sent - window_start), 2),
        "achieved_rate": round(n_ok / max(spec.duration_s, last_done - window_start), 2),
        "latency_ms": _percentiles(latency_ms),
        "service_ms": _percentiles(service_ms),
        "send_lag_ms": _percentiles(lag_ms),
        "histogram_ms": histogram(latency_ms),
        "connections": {"opened": pool.opened, "cap": spec.max_connections, "cap_waits": pool.cap_waits,
                        "connect_errors": pool.connect_errors, "max_in_flight": ledger.max_in_flight},
        "client": {"cpu_s": round(cpu_s, 3), "wall_s": round(wall, 3), "cpu_util": round(cpu_s / wall, 3) if wall > 0 else None,
                   "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)), "loop": loop_name},
    }


def run(spec: LoadSpec) -> dict:
    """Run `spec` in this process (pinning it if spec.cpu is set) and return the result dict."""
    spec.validate()
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    try:
        import uvloop

        uvloop.install()  # type: ignore[attr-defined]
    except ImportError:
        pass
    # The collector would pause the client at random moments and add its pauses to the latencies.
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_drive(spec))
    finally:
        gc.enable()


class LoadProcess:
    """A load generator running in its own process; `result()` waits for it and returns its dict.

    Why a process: the client must not share a GIL, an event loop or (with spec.cpu) a core with
    whoever drives it or with the server."""

    def __init__(self, spec: LoadSpec, workdir: Path, python: str = sys.executable) -> None:
        spec.validate()
        workdir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.spec_file = workdir / f"loadgen-spec-{os.getpid()}-{time.monotonic_ns()}.json"
        self.out_file = self.spec_file.with_suffix(".out.json")
        self.spec_file.write_text(json.dumps(asdict(spec)))
        self.err_file = self.spec_file.with_suffix(".err")
        with open(self.err_file, "wb") as err:
            # -P: do not put bench/ on sys.path, where http.py and profile.py would shadow the stdlib.
            self.proc = subprocess.Popen([python, "-P", str(Path(__file__).resolve()), "--spec", str(self.spec_file), "--json", str(self.out_file)],
                                         stdout=subprocess.DEVNULL, stderr=err)

    def result(self, extra_timeout_s: float = 60.0) -> dict:
        timeout = self.spec.warmup_s + self.spec.duration_s + self.spec.timeout_s + extra_timeout_s
        try:
            code = self.proc.wait(timeout=timeout)
            if code != 0:
                raise LoadgenError(f"load generator exited with {code}: {self.err_file.read_text(errors='replace').strip()[-2000:]}")
            return json.loads(self.out_file.read_text())
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise LoadgenError(f"load generator still running {timeout:.0f}s after start; killed") from None
        finally:
            for f in (self.spec_file, self.out_file, self.err_file):
                f.unlink(missing_ok=True)


def run_process(spec: LoadSpec, workdir: Path, python: str = sys.executable) -> dict:
    """Run `spec` in a fresh process (see LoadProcess) and return its result."""
    return LoadProcess(spec, workdir, python).result()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("--spec", help="a JSON LoadSpec (every other option is ignored)")
    p.add_argument("--url", help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--paths-file", help="request paths, one per line (cycled)")
    p.add_argument("--rate", type=float, help="requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds sent first and left out of the stats (default 1)")
    p.add_argument("--poisson", action="store_true", help="Poisson arrivals instead of evenly spaced ones")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-connections", type=int, default=512)
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (default 10)")
    p.add_argument("--cpu", type=int, help="pin the client to this CPU")
    p.add_argument("--json", help="write the result here (else print it)")
    args = p.parse_args(argv)
    try:
        if args.spec:
            spec = LoadSpec(**json.loads(Path(args.spec).read_text()))
        else:
            if not (args.url and args.paths_file and args.rate):
                p.error("give --spec, or --url, --paths-file and --rate")
            paths = [line.strip() for line in Path(args.paths_file).read_text().splitlines() if line.strip()]
            spec = LoadSpec(url=args.url, paths=paths, rate=args.rate, duration_s=args.duration, warmup_s=args.warmup,
                            poisson=args.poisson, seed=args.seed, max_connections=args.max_connections,
                            min_connections=min(4, args.max_connections), timeout_s=args.timeout, cpu=args.cpu)
        result = run(spec)
    except LoadgenError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
