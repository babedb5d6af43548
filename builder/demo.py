"""`aisle demo`: the README's main command. Synthesises a store (once), builds and publishes a
bundle (once, or with --rebuild), serves it with Granian, shows a slate per surface over HTTP,
and prints ready-to-paste requests. Keeps serving until Ctrl-C (or exits with --once).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

from artifacts import layout
from artifacts.bundle import Bundle, open_bundle
from artifacts.publish import current_build_id
from artifacts.snapshot import ShopperSnapshot
from builder.build import build
from builder.config import load_build_config
from builder.inspect import describe
from builder.progress import ConsoleProgress
from builder.synth import generate


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _get(host: str, port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _sample_shopper(bundle: Bundle) -> tuple[str | None, list[int]]:
    """A returning shopper with some history: the most telling example."""
    snap = ShopperSnapshot(bundle.path(layout.SHOPPER_SNAPSHOT), bundle.manifest.dims["snapshot_map_size"])
    users = bundle.users
    for row in range(0, len(users), max(1, len(users) // 200)):
        record = snap.get(users.id_of(row))
        if record is not None and len(record.recent_items) >= 5:
            return users.id_of(row), list(record.recent_items)
    return None, []


def _show(bundle: Bundle, host: str, port: int, title: str, params: dict) -> None:
    path = "/v1/recommendations?" + urlencode({k: v for k, v in params.items() if v is not None})
    status, body = _get(host, port, path)
    print(f"\n{title}\n  GET {path}  → {status}" + (f", fallback {body.get('fallback')}" if body.get("fallback") else ""))
    for rank, item in enumerate(body.get("items", []), 1):
        name = bundle.title(bundle.items.row_of(item["sku"]))
        print(f"  {rank:>2}. {item['sku']:<14} {name[:40]:<40} {item['score']:+.3f}  {item['reason'][:56]}")
    if status != 200:
        print(f"  {body}")


def run_demo(scale: str, workdir: Path, seed: int = 7, rebuild: bool = False, port: int = 8000, once: bool = False) -> int:
    data = workdir / "data" / f"{scale}-{seed}"
    root = workdir / "bundles" / f"{scale}-{seed}"
    progress = ConsoleProgress()
    if not (data / "catalog.parquet").exists():
        progress.note(f"synthesising the '{scale}' store into {data}")
        generate(scale=scale, seed=seed, out=data, progress=progress, overwrite=True)
    if rebuild or current_build_id(root) is None:
        progress.note(f"building a bundle into {root}")
        build(data, root, load_build_config(None), progress=progress)
    print(describe(root / "current"))
    bundle = open_bundle(root / "current", verify="sizes")

    host = "127.0.0.1"
    if not _port_free(host, port):
        print(f"aisle demo: port {port} is in use; pass --port", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "builder.cli", "serve", "--bundles", str(root), "--workers", "2", "--port", str(port),
           "--state", str(workdir / "state" / f"{scale}-{seed}")]
    progress.note("starting: " + " ".join(["aisle", *cmd[3:]]))
    server = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                print(f"aisle demo: the server exited with {server.returncode}", file=sys.stderr)
                return 1
            try:
                if _get(host, port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                print("aisle demo: the server did not become ready in 180 s", file=sys.stderr)
                return 1
            time.sleep(0.3)
        shopper, recent = _sample_shopper(bundle)
        last = bundle.items.id_of(recent[-1] if recent else int(bundle.array(layout.POPULAR_GLOBAL)[0]))
        if recent:
            print(f"\nShopper {shopper} recently viewed: " + "; ".join(bundle.title(r)[:32] for r in recent[-3:]))
        _show(bundle, host, port, f"home: Top picks for {shopper}", {"surface": "home", "user_id": shopper, "count": 8})
        _show(bundle, host, port, f"pdp: Similar to {last} ({bundle.title(bundle.items.row_of(last))[:40]})",
              {"surface": "pdp", "item_id": last, "user_id": shopper, "count": 8})
        _show(bundle, host, port, f"cart: Frequently bought with {last}", {"surface": "cart", "cart": last, "user_id": shopper, "count": 8})
        _show(bundle, host, port, "home: a new, anonymous shopper", {"surface": "home", "count": 8})
        base = f"http://{host}:{port}"
        print(
            f"\nServing {bundle.build_id} on {base} (2 workers). Try:\n"
            f"  curl '{base}/v1/recommendations?surface=home&user_id={shopper}&count=10'\n"
            f"  curl '{base}/v1/recommendations?surface=pdp&item_id={last}'\n"
            f"  curl '{base}/v1/recommendations?surface=cart&cart={last}'\n"
            f"  curl -X POST {base}/v1/events -H 'content-type: application/json' "
            f"-d '{{\"events\":[{{\"event_id\":\"e1\",\"user_id\":\"{shopper}\",\"sku\":\"{last}\",\"type\":\"click\"}}]}}'\n"
            f"  curl {base}/metrics ; curl {base}/openapi.json ; the status page: {base}/status"
        )
        if once:
            return 0
        print("\nCtrl-C stops the server.")
        server.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
