"""Start a real `aisle serve` (Granian, N worker processes) on 127.0.0.1 and talk HTTP to it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]


def until(predicate, timeout: float = 20.0, what: str = "condition", every: float = 0.1):
    """Poll until predicate() is truthy (its value is returned), or fail the test after `timeout`."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    def __init__(self, bundles: Path, state: Path, workers: int = 2, settings_toml: str = "") -> None:
        self.port = free_port()
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "builder.cli", "serve", "--bundles", str(bundles), "--workers", str(workers),
               "--port", str(self.port), "--state", str(state)]
        if settings_toml:
            path = state / "settings.toml"
            path.write_text(settings_toml)
            cmd += ["--settings", str(path)]
        self.log = open(state / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0, workers: int = 1) -> None:
        """Until /readyz answers 200 from `workers` distinct worker pids (or time runs out)."""
        deadline = time.monotonic() + timeout
        pids: set[int] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                reply = self.get("/readyz", fresh=True)
                if reply.status == 200:
                    pids.add(reply.json()["pid"])
                    if len(pids) >= workers:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return (self.state / "server.log").read_text(errors="replace")[-3000:]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, fresh: bool = False) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, path: str, fresh: bool = False, **params: Any) -> Reply:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return self.request("GET", path + (f"?{query}" if query else ""), fresh=fresh)

    def recommend(self, **params: Any) -> Reply:
        return self.get("/v1/recommendations", **params)

    def post_json(self, path: str, doc: Any) -> Reply:
        return self.request("POST", path, json.dumps(doc).encode(), {"content-type": "application/json"})

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
