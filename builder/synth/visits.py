"""When shoppers visit: the session schedule over the event horizon.

Each shopper makes a Poisson number of visits with mean `sessions_per_shopper × activity`, scaled
by the share of the horizon after their sign-up. A visit's day follows a weekly cycle (weekends
busier) with mild growth over the horizon; its hour follows a daily cycle in the shopper's local
time (evening peak), converted to UTC by the region's offset. A visit uses the shopper's preferred
device most of the time. Everything is vectorised; visits come back sorted by start time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from builder.synth.catalog import DAY
from builder.synth.shoppers import DEVICES, Shoppers

# 2026-06-01T00:00:00Z, a Monday: the fixed end of every synthetic store's event log.
HORIZON_END = 1_780_272_000

# Share of a day's visits starting in each local hour (0-23): quiet night, lunch bump, evening peak.
_HOURLY = np.array(
    [1.2, 0.7, 0.4, 0.3, 0.3, 0.4, 0.9, 1.8, 2.8, 3.4, 3.8, 4.2]  # 00-11
    + [5.0, 4.8, 4.2, 4.0, 4.2, 4.8, 5.8, 7.0, 7.8, 7.4, 5.6, 3.0]  # 12-23
)
HOURLY_SHARE = _HOURLY / _HOURLY.sum()
# UTC offsets (hours) of shoppers.REGIONS, in order.
REGION_UTC_OFFSET = np.array([-4, -7, 1, 2, 8, -3])
WEEKEND_LIFT = 1.25
GROWTH = 0.2  # the last day is this much busier than the first
PREFERRED_DEVICE_SHARE = 0.85


@dataclass(frozen=True)
class Visits:
    """Sessions sorted by (start, shopper). S = sessions."""

    user: np.ndarray  # int32 [S], shopper row
    start: np.ndarray  # int64 [S], epoch seconds, ≥ the shopper's sign-up, < horizon end
    device: np.ndarray  # int8 [S], index into shoppers.DEVICES

    def __len__(self) -> int:
        return len(self.user)


def horizon(horizon_days: int, end: int | None = None) -> tuple[int, int]:
    """(start, end) epoch seconds of the event log: `horizon_days` whole days ending at `end`
    (default HORIZON_END; else floored to a whole UTC day)."""
    end = HORIZON_END if end is None else int(end) // DAY * DAY
    return end - horizon_days * DAY, end


def schedule_visits(
    shoppers: Shoppers, sessions_per_shopper: float, horizon_start: int, horizon_end: int, seed: int
) -> Visits:
    """All sessions of the horizon, deterministic in `seed`."""
    rng = np.random.default_rng([seed, 3])
    n_days = (horizon_end - horizon_start) // DAY
    # First whole day on or after sign-up; shoppers signing up on the last day do not visit.
    first_day = np.clip(-((horizon_start - shoppers.signup_ts) // DAY), 0, n_days).astype(np.int64)
    day = np.arange(n_days)
    weekday = (day + (horizon_start // DAY + 3) % 7) % 7  # 1970-01-01 was a Thursday (3)
    day_weight = np.where(weekday >= 5, WEEKEND_LIFT, 1.0) * (1.0 + GROWTH * day / max(n_days - 1, 1))
    cum = np.concatenate(([0.0], np.cumsum(day_weight)))
    available = (cum[n_days] - cum[first_day]) / cum[n_days]
    counts = rng.poisson(sessions_per_shopper * shoppers.activity * available)
    user = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    lo, hi = cum[first_day[user]], cum[n_days]
    day_of = np.searchsorted(cum, lo + rng.random(len(user)) * (hi - lo), side="right") - 1
    day_of = np.clip(day_of, first_day[user], n_days - 1)
    local_hour = rng.choice(24, size=len(user), p=HOURLY_SHARE)
    utc_hour = local_hour - REGION_UTC_OFFSET[shoppers.region[user]]
    utc_second = utc_hour * 3_600 + rng.integers(0, 3_600, size=len(user))
    # Wrapping into the same UTC day keeps every visit inside the horizon and after sign-up.
    start = horizon_start + day_of * DAY + np.mod(utc_second, DAY)
    start = np.maximum(start, shoppers.signup_ts[user] + 60)
    other = (shoppers.device[user] + rng.integers(1, len(DEVICES), size=len(user))) % len(DEVICES)
    device = np.where(rng.random(len(user)) < PREFERRED_DEVICE_SHARE, shoppers.device[user], other).astype(np.int8)
    keep = start < horizon_end
    order = np.lexsort((user[keep], start[keep]))
    return Visits(user=user[keep][order], start=start[keep][order].astype(np.int64), device=device[keep][order])
