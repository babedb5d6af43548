"""Memory of the serving fleet: RSS and PSS of `aisle serve` with 1 and with 2 workers.

Every worker maps the same bundle files (arrays with np.load(mmap_mode="r"), the index as a
USearch view, LMDB read-only), so the second worker should add its private memory (interpreter,
libraries, scratch) but not another copy of the bundle. PSS splits shared pages between the
processes that map them, so the PSS total is the honest fleet cost.

    python -m bench.rss --bundles ROOT [--requests 300] [--json bench/results/x.json]
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
import time
from pathlib import Path

from bench.environment import REPO, environment
from bench.http import free_port


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key.strip()] = int(value.split()[0])  # kB
    return out


def measure(bundles: Path, workers: int, requests: int) -> dict:
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="aisle-rss-"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "serve", "--bundles", str(bundles), "--workers", str(workers), "--port", str(port), "--state", str(state)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        pids: set[int] = set()
        while len(pids) < workers:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not become ready")
            try:
                status, body = _get(port, "/readyz")
                if status == 200:
                    pids.add(json.loads(body)["pid"])
            except OSError:
                time.sleep(0.3)
        for i in range(requests):  # touch the parts a real load touches
            for surface in ("home", "home", "pdp", "cart"):
                q = f"surface={surface}&user_id=u{i}"
                if surface != "home":
                    q += "&item_id=" if surface == "pdp" else "&cart="
                    q += _first_sku(port)
                _get(port, f"/v1/recommendations?{q}&count=20")
        worker_pids = sorted(pids)
        stats = {pid: _rollup(pid) for pid in worker_pids}
        main = _rollup(proc.pid)
        return {
            "workers": workers,
            "worker_rss_mib": [round(s["Rss"] / 1024, 1) for s in stats.values()],
            "worker_pss_mib": [round(s["Pss"] / 1024, 1) for s in stats.values()],
            "worker_private_mib": [round((s["Private_Clean"] + s["Private_Dirty"]) / 1024, 1) for s in stats.values()],
            "worker_shared_mib": [round((s["Shared_Clean"] + s["Shared_Dirty"]) / 1024, 1) for s in stats.values()],
            "total_rss_mib": round((sum(s["Rss"] for s in stats.values()) + main["Rss"]) / 1024, 1),
            "total_pss_mib": round((sum(s["Pss"] for s in stats.values()) + main["Pss"]) / 1024, 1),
            "supervisor_rss_mib": round(main["Rss"] / 1024, 1),
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


_sku_cache: dict[int, str] = {}


def _first_sku(port: int) -> str:
    if port not in _sku_cache:
        _, body = _get(port, "/v1/recommendations?surface=home&count=1")
        _sku_cache[port] = json.loads(body)["items"][0]["sku"]
    return _sku_cache[port]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.splitlines()[0])
    p.add_argument("--bundles", required=True, help="bundle root holding current")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--json")
    args = p.parse_args(argv)
    from artifacts.bundle import open_bundle

    bundle = open_bundle(Path(args.bundles), verify="sizes")
    size = sum(e.size for e in bundle.manifest.files.values())
    result = {
        "benchmark": "serve-rss",
        "environment": environment(),
        "bundle": {"id": bundle.build_id, "items": bundle.n_items, "size_mib": round(size / 2**20, 1)},
        "runs": [measure(Path(args.bundles), w, args.requests) for w in (1, 2)],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"bundle {bundle.build_id}: {result['bundle']['items']:,} items, {result['bundle']['size_mib']} MiB on disk")
    print("| workers | RSS per worker MiB | PSS per worker MiB | private per worker MiB | total RSS MiB | total PSS MiB |")
    print("|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(f"| {r['workers']} | {r['worker_rss_mib']} | {r['worker_pss_mib']} | {r['worker_private_mib']} | {r['total_rss_mib']} | {r['total_pss_mib']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
