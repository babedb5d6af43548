"""Per-key rate limits, enforced across every worker of the host.

A limit is for the whole server, whatever worker a request lands on: a client on one keep-alive
connection always reaches the same worker, so a per-worker share (limit / workers) would halve
its rate. The workers therefore count in one shared file, `<state>/ratelimit-<digest>.bin`
(digest of the key list, so a server started with other keys never reads this layout), without a
lock: each worker writes only its own row (its metrics slot) and reads the others'.

The count is a sliding window (the estimate `previous window · (1 - elapsed share) + current
window` over windows of `rate_window_s`): smooth at window edges, two numbers per key and worker.
A row holds, per key, (window index, count in it, count in the window before). Rows of dead
workers age out by themselves: their window index stops matching.

Reads of another worker's row race with its writes; a count read one request stale lets at most
one request per worker through beyond the limit, which is fine for a rate limit.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import time
from pathlib import Path

import numpy as np

MAX_SLOTS = 64  # = engine.metrics.MAX_SLOTS: a worker's row is its metrics slot
_FIELDS = 3  # window index, count in it, count in the window before


class RateLimitError(Exception):
    """The rate-limit file cannot be used."""


class RateLimiter:
    """Sliding-window counters for `limits[i]` requests per `window_s` seconds, per key i (0 or
    less: key i is not limited). `slot` is this worker's row."""

    __slots__ = ("limits", "window_s", "slot", "_mm", "_cells", "_path")

    def __init__(self, state_dir: Path, key_digests: list[bytes], limits: list[float], window_s: float, slot: int) -> None:
        if len(key_digests) != len(limits):
            raise ValueError("one limit per key")
        if not 0 <= slot < MAX_SLOTS:
            raise ValueError(f"slot must be in [0, {MAX_SLOTS}); got {slot}")
        self.limits = np.asarray(limits, np.float64)
        self.window_s = float(window_s)
        self.slot = slot
        layout = hashlib.sha256(b"".join(key_digests) + repr((_FIELDS, MAX_SLOTS)).encode()).hexdigest()[:16]
        self._path = Path(state_dir) / f"ratelimit-{layout}.bin"
        n = max(1, len(key_digests))
        size = MAX_SLOTS * n * _FIELDS * 8
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)  # zeros: window 0 never matches a current window index
            # Every block now: a store into a hole of a sparse mapping on a full disk is a SIGBUS.
            os.posix_fallocate(fd, 0, size)
            self._mm = mmap.mmap(fd, size)
        except OSError as exc:
            raise RateLimitError(f"{self._path}: cannot map the rate-limit counters: {exc}") from exc
        finally:
            os.close(fd)
        self._cells = np.frombuffer(self._mm, np.float64).reshape(MAX_SLOTS, n, _FIELDS)

    def admit(self, key: int, now: float | None = None) -> float:
        """Count one request of key `key` and return 0.0, or return the seconds to wait before the
        key is under its limit again (the request is then not counted)."""
        limit = self.limits[key]
        if limit <= 0:
            return 0.0
        t = time.time() if now is None else now  # wall clock: every worker must agree on windows
        position = t / self.window_s
        window = math.floor(position)
        elapsed = position - window
        mine = self._cells[self.slot, key]
        if mine[0] != window:
            # A new window: the current count becomes the previous one if it is the window just
            # before; older counts are forgotten.
            mine[2] = mine[1] if mine[0] == window - 1 else 0.0
            mine[1] = 0.0
            mine[0] = window
        cells = self._cells[:, key]
        idx = cells[:, 0]
        current = float(cells[idx == window, 1].sum())
        previous = float(cells[idx == window, 2].sum() + cells[idx == window - 1, 1].sum())
        estimate = previous * (1.0 - elapsed) + current
        if estimate + 1.0 > limit * self.window_s:
            # Wait until the previous window's weight has fallen enough (at most to the window's
            # end, when the current one becomes the previous).
            if previous > 0 and current + 1.0 <= limit * self.window_s:
                needed = 1.0 - (limit * self.window_s - current - 1.0) / previous
                return max(0.001, (needed - elapsed) * self.window_s)
            return max(0.001, (1.0 - elapsed) * self.window_s)
        mine[1] += 1.0
        return 0.0

    def close(self) -> None:
        self._cells = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:  # a view still alive somewhere: the mapping goes with the process
            pass
