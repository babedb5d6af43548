"""Overload shedding (engine/overload.py) and per-key rate limits (engine/ratelimit.py, engine/auth.py)
as units: the shedder on a real event loop, the shared counters across two workers' rows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.auth import Guard
from engine.errors import Unauthorized
from engine.overload import Shedder
from engine.ratelimit import RateLimiter
from engine.settings import SecuritySettings, SettingsError, load

WRITE_KEY = "write-key-0123456789abcdef"
READ_KEY = "read-key-storefront-0001"


# -- shedder -----------------------------------------------------------------------------------------
def test_a_loop_that_keeps_up_is_not_shed_and_a_blocked_one_is() -> None:
    async def scenario() -> list[str | None]:
        shedder = Shedder(max_queue_delay_ms=100, max_in_flight=0)
        shedder.start(asyncio.get_running_loop())
        seen = []
        await asyncio.sleep(0.05)
        seen.append(shedder.check())  # idle: the heartbeat runs on time
        time.sleep(0.3)  # the loop is held: whatever runs now waited at least this long
        seen.append(shedder.check())
        await asyncio.sleep(0.03)  # the loop went round: the heartbeat ran again
        seen.append(shedder.check())
        shedder.stop()
        return seen

    assert asyncio.run(scenario()) == [None, "queue_delay", None]


def test_the_peak_wait_is_reported_once() -> None:
    async def scenario() -> tuple[float, float]:
        shedder = Shedder(max_queue_delay_ms=0, max_in_flight=0)  # off: only measures
        shedder.start(asyncio.get_running_loop())
        await asyncio.sleep(0.02)
        time.sleep(0.2)
        assert shedder.check() is None  # measuring never sheds when the limit is off
        first, second = shedder.take_peak(), shedder.take_peak()
        shedder.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert first >= 0.15 and second == 0.0


def test_requests_in_flight_are_bounded() -> None:
    shedder = Shedder(max_queue_delay_ms=0, max_in_flight=2)
    shedder.enter()
    assert shedder.check() is None
    shedder.enter()
    assert shedder.check() == "in_flight"
    shedder.leave()
    assert shedder.check() is None


# -- rate limiter --------------------------------------------------------------------------------
def _pair(tmp_path: Path, limits: list[float], window_s: float = 1.0) -> tuple[RateLimiter, RateLimiter]:
    digests = [bytes([i]) * 32 for i in range(len(limits))]
    return (RateLimiter(tmp_path, digests, limits, window_s, slot=0), RateLimiter(tmp_path, digests, limits, window_s, slot=5))


def test_two_workers_share_one_limit(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, [10.0, 0.0])
    t0 = 10_000.0
    admitted = sum(1 for i in range(60) if (a if i % 2 else b).admit(0, now=t0 + 0.005 * i) == 0.0)
    assert admitted == 10  # not 10 per worker
    # key 1 has no limit; it is never counted against key 0 or refused
    assert all(a.admit(1, now=t0 + 0.3) == 0.0 for _ in range(100))


def test_the_window_slides_and_the_wait_is_until_there_is_room(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, [10.0])
    t0 = 20_000.0
    for i in range(10):
        assert a.admit(0, now=t0 + 0.01 * i) == 0.0
    wait = b.admit(0, now=t0 + 0.5)
    assert 0.0 < wait <= 0.5 + 1e-9  # the rest of this window at most
    # Half-way through the next window, half of the previous window's count still weighs in.
    later = t0 + 1.5
    admitted = sum(1 for _ in range(20) if b.admit(0, now=later) == 0.0)
    assert admitted == 5
    # Two windows on, the old counts are gone.
    assert sum(1 for _ in range(20) if a.admit(0, now=t0 + 3.0) == 0.0) == 10


def test_a_dead_workers_counts_age_out(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, [5.0])
    t0 = 30_000.0
    for _ in range(5):
        a.admit(0, now=t0)
    a.close()  # the worker is gone; its row stays in the file
    assert b.admit(0, now=t0 + 0.1) > 0.0
    assert b.admit(0, now=t0 + 2.0) == 0.0


def test_other_keys_use_another_file(tmp_path: Path) -> None:
    one = RateLimiter(tmp_path, [b"a" * 32], [1.0], 1.0, slot=0)
    other = RateLimiter(tmp_path, [b"b" * 32], [1.0], 1.0, slot=0)
    assert one.admit(0, now=5.0) == 0.0
    assert other.admit(0, now=5.0) == 0.0  # not the first key's count
    assert len(list(tmp_path.glob("ratelimit-*.bin"))) == 2


# -- guard: the key's id is what the limiter counts ------------------------------------------------
def test_the_guard_names_the_key_a_request_carried() -> None:
    guard = Guard(SecuritySettings(api_keys=[WRITE_KEY], read_keys=[READ_KEY]))
    assert guard.keys == [WRITE_KEY, READ_KEY]
    write = [(b"authorization", f"Bearer {WRITE_KEY}".encode())]
    read = [(b"x-api-key", READ_KEY.encode())]
    assert guard.require(guard.writes, write) == 0
    assert guard.require(guard.reads, write) == 0  # the same key, the same id, whatever the ring
    assert guard.require(guard.reads, read) == 1
    with pytest.raises(Unauthorized):
        guard.require(guard.writes, read)
    assert guard.require(guard.metrics, []) is None  # open: nobody to count


def test_rate_limit_settings_are_checked_without_echoing_keys(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    secret = "not-a-configured-key-12345678"
    path.write_text(f'[security]\napi_keys = ["{WRITE_KEY}"]\nrate_limit_per_s = -1\nrate_limits = {{ "{secret}" = 5.0 }}\n')
    with pytest.raises(SettingsError) as exc:
        load(path)
    message = str(exc.value)
    assert "security.rate_limit_per_s must be ≥ 0" in message
    assert "security.rate_limits entry 1 names a key that is in neither api_keys nor read_keys" in message
    assert secret not in message
