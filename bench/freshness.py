"""Freshness and the write path over HTTP, against a real 2-worker server:

1. publish → invisible: an item on the current slate is published out of stock through the
   reference publisher; we poll the recommendations endpoint (both workers answer) until no
   response carries it, then restore it. p50/p99 over --toggles rounds.
2. durable event ingest: --clients concurrent HTTP clients POST batches of --batch events for
   --seconds; events/s that got a 202 (each 202 means fsynced).

    python -m bench.freshness --bundles ROOT [--toggles 100] [--json bench/results/freshness.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.environment import REPO, environment
from bench.http import free_port
from engine.inventory import wire
from engine.inventory.publisher import publish_one


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> dict:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return json.loads(r.read())

    def post(self, path: str, body: bytes) -> int:
        self.conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        r = self.conn.getresponse()
        r.read()
        return r.status


def run(bundles: Path, toggles: int, clients: int, batch: int, seconds: float) -> dict:
    pub, snap, port = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", free_port()
    state = Path(tempfile.mkdtemp(prefix="aisle-fresh-"))
    (state / "settings.toml").write_text(f'[inventory]\nupdates_endpoint = "{pub}"\nsnapshot_endpoint = "{snap}"\n')
    procs = [
        subprocess.Popen([sys.executable, "-m", "builder.cli", "inventory", "serve", "--pub", pub, "--snapshot", snap],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "builder.cli", "serve", "--bundles", str(bundles), "--workers", "2", "--port", str(port),
                          "--state", str(state), "--settings", str(state / "settings.toml")],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    try:
        client = None
        deadline = time.monotonic() + 300
        while client is None:
            try:
                c = Client(port)
                if c.get("/readyz").get("status") == "ready":
                    client = c
            except OSError:
                time.sleep(0.3)
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready")
        path = "/v1/recommendations?surface=home&user_id=bench-fresh&count=20"
        lags: list[float] = []
        polls: list[int] = []
        for _ in range(toggles):
            sku = client.get(path)["items"][0]["sku"]
            t0 = time.perf_counter()
            publish_one(wire.Stock(sku, False, 0), snap)
            n = 0
            while True:  # two consecutive answers without it: both workers have seen it
                n += 1
                if sku not in {i["sku"] for i in client.get(path)["items"]} and sku not in {i["sku"] for i in client.get(path)["items"]}:
                    break
            lags.append((time.perf_counter() - t0) * 1e3)
            polls.append(n)
            publish_one(wire.Stock(sku, True, 5), snap)
            time.sleep(0.05)
        lag = np.asarray(lags)

        accepted = [0] * clients
        stop = threading.Event()

        def ingest(k: int) -> None:
            c = Client(port)
            n = 0
            while not stop.is_set():
                events = [{"event_id": f"c{k}-{n}-{i}", "user_id": f"u{(n * batch + i) % 20011}", "sku": f"SKU-{(k * 7919 + n * batch + i) % 50021}", "type": "click"} for i in range(batch)]
                if c.post("/v1/events", json.dumps({"events": events}).encode()) == 202:
                    accepted[k] += batch
                n += 1

        threads = [threading.Thread(target=ingest, args=(k,)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        return {
            "benchmark": "freshness-http",
            "environment": environment(),
            "bundles": str(bundles),
            "publish_to_invisible_ms": {
                "rounds": toggles,
                "p50": round(float(np.percentile(lag, 50)), 2),
                "p90": round(float(np.percentile(lag, 90)), 2),
                "p99": round(float(np.percentile(lag, 99)), 2),
                "max": round(float(lag.max()), 2),
                "polls_mean": round(float(np.mean(polls)), 1),
            },
            "event_ingest": {"clients": clients, "batch": batch, "seconds": round(elapsed, 1), "events_per_s": round(sum(accepted) / elapsed)},
        }
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.splitlines()[0])
    p.add_argument("--bundles", required=True)
    p.add_argument("--toggles", type=int, default=100)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    result = run(Path(args.bundles), args.toggles, args.clients, args.batch, args.seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("publish_to_invisible_ms", "event_ingest")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
