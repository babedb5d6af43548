"""Overload shedding: answer fast with 503 + Retry-After instead of serving late.

A worker serves requests inline on its event loop, one at a time. Under a flood, requests queue
in the loop's ready queue (Granian hands at most `server.backpressure` of them to one worker; the
rest wait in Granian, outside Python's memory). What the shopper feels is the time a request
waits there, and Python cannot see a request before it runs. So the shedder measures the queue
from the inside: a heartbeat timer is due every PERIOD_S; while it has not run, the loop is busy
with callbacks queued ahead of it (the ready queue is first in, first out), so any request that
starts now has waited at least `now - due`. That is a lower bound: the loop runs the requests
queued when a pass began, and a request may have arrived during the pass before, so it may have
waited up to twice what the heartbeat shows. A request that finds the heartbeat overdue by more
than half of `limits.max_queue_delay_ms` is therefore refused at once, so that the ones served
waited about that bound at most. A refusal costs microseconds: a backlog drains quickly and the
requests after it are served on time again, instead of every request waiting behind every other
one (latency growing without bound while the client gives up).

Requests that wait on I/O inside the app (a body being uploaded, an event batch waiting for its
group commit) do not hold the loop; they are bounded by count instead (`limits.max_in_flight`),
which also bounds the memory their bodies can hold.

Health, readiness and metrics are never shed: they are cheap, and a load balancer or a scraper
must keep seeing the truth about an overloaded worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

PERIOD_S = 0.01  # heartbeat cadence: ~100 timer callbacks a second, ~0.05% of a core

Reason = Literal["queue_delay", "in_flight"]


class Shedder:
    """One per worker. `start` on the running loop, then `check` at the start of each request and
    `enter`/`leave` around the ones that count as in flight."""

    __slots__ = ("max_delay_s", "max_in_flight", "in_flight", "peak", "_due", "_loop", "_handle")

    def __init__(self, max_queue_delay_ms: float, max_in_flight: int) -> None:
        # The heartbeat shows at least half of the longest wait (see the module docstring).
        self.max_delay_s = max_queue_delay_ms / 1000.0 / 2.0
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.peak = 0.0  # longest wait seen by `check` since the last `take_peak`
        self._due = time.monotonic() + PERIOD_S
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._beat()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self) -> None:
        loop = self._loop
        if loop is None:
            return
        # loop.time() is time.monotonic() for asyncio and uvloop, the clock `lag` reads.
        self._due = loop.time() + PERIOD_S
        self._handle = loop.call_at(self._due, self._beat)

    def lag(self) -> float:
        """Seconds the heartbeat is overdue: a lower bound on how long the running request
        waited in the loop's queue (0 when the loop keeps up)."""
        return max(0.0, time.monotonic() - self._due)

    def check(self) -> Reason | None:
        """Why this request should be refused now, or None to serve it."""
        lag = time.monotonic() - self._due if self._loop is not None else 0.0
        if lag > self.peak:
            self.peak = lag
        if self.max_delay_s > 0 and lag > self.max_delay_s:
            return "queue_delay"
        if self.max_in_flight > 0 and self.in_flight >= self.max_in_flight:
            return "in_flight"
        return None

    def take_peak(self) -> float:
        peak, self.peak = self.peak, 0.0
        return peak

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
