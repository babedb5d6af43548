"""Screening the behaviour log before anything learns from it: broken clocks and bots.

Some events are valid by the schema yet must not shape a bundle. Each is dropped and counted
(`builder.store.IngestReport`, then the manifest's counts and notes), once, under the first rule
it fails, in this order:

| rule         | dropped                                                                     | config  |
|--------------|-----------------------------------------------------------------------------|---------|
| future       | dated after the build's clock + `future_tolerance_minutes`                  | [clock] |
| too old      | more than `max_age_days` before the newest event kept by the rule above     | [clock] |
| unknown SKU  | naming a SKU the catalog lacks (`encode`)                                   |         |
| bot          | every event of a shopper with more than `max_actions_per_minute` actions in | [bots]  |
|              | any 60 seconds, or more than `max_actions_per_day` in any 24 hours          |         |

Dropped, not clamped: a future event clamped to "now" would become the freshest behaviour in the
log, the one trending lists and recent history weigh most. The build stops instead (InputError)
when the clock rules would leave no event at all (the exporting system's or this machine's clock
is wrong, not a few devices'), and when bots would take more than `bots.max_dropped_share` of the
events (the rule more likely misreads the log than finds that many bots).

Actions are clicks and add-to-carts: one tap each. Impressions, skips, dwells and checkout lines
are logged per page or per basket and grow with the page layout, not with the shopper's hands.
The per-minute rule needs timestamps finer than a minute: when every timestamp is a whole hour or
day it cannot tell a burst from a day's shopping, so it is skipped (and a note says so); the
per-day rule still applies. Everything here is array work over whole columns: no loop over events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import polars as pl

from artifacts.schema import EventType
from builder.config import BotConfig, ClockConfig
from builder.ingest.errors import InputError, Problem, shown
from builder.ingest.validate import ValidTable
from builder.store import Events

MINUTE, HOUR, DAY = 60, 3_600, 86_400
ACTIONS = (EventType.CLICK, EventType.ADD_TO_CART)
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ClockScreen:
    """What the clock rules keep of the events file (rows in file order)."""

    keep: pl.Series  # Boolean [rows of the events file]
    future: int
    too_old: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class BotScreen:
    """The shoppers the bot rules flag, and what dropping them removes."""

    is_bot: np.ndarray  # bool [users]
    events: int  # events of the flagged shoppers
    by_minute: int  # flagged shoppers over max_actions_per_minute
    by_day: int  # flagged shoppers over max_actions_per_day
    resolution: int  # seconds: the coarsest of a second, minute, hour, day dividing every timestamp

    @property
    def shoppers(self) -> int:
        return int(self.is_bot.sum())

    @property
    def minute_rule_skipped(self) -> bool:
        return self.resolution > MINUTE


def iso(ts: int) -> str:
    """Epoch seconds as ISO-8601 UTC, as the messages show times."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(table: ValidTable, row: int) -> str:
    """A 0-based file row as messages name it: 1-based, with the CSV line."""
    return f"row {row + 1}" + (f" (line {row + 2})" if table.file.is_csv else "")


def screen_clock(events: ValidTable, now: float, config: ClockConfig) -> ClockScreen:
    """The events whose `ts` the clock rules keep (see the module docstring), counted and noted.

    `now` is the build's clock, epoch seconds. Raises InputError when every event is dated after
    it (beyond the tolerance). O(m).
    """
    ts = events.frame["ts"]
    name = events.file.name
    latest = int(now + config.future_tolerance_minutes * MINUTE)
    future = ts > latest
    n_future = int(future.sum())
    if n_future and n_future == len(ts):
        problem = Problem(
            file=name,
            row=1,
            column="ts",
            expected=f"events dated no later than {iso(latest)} (this machine's clock + clock.future_tolerance_minutes)",
            found=f"{iso(int(ts[0]))}, and all {n_future:,} events are later than that",
            is_csv=events.file.is_csv,
        )
        raise InputError(
            f"{problem}: check the clock and time zone of the system that exported the file, and of this machine",
            (problem,),
        )
    notes: list[str] = []
    if n_future:
        first = int(future.arg_max())
        notes.append(
            f"{name}: dropped {n_future:,} event{'s' * (n_future > 1)} dated after {iso(latest)} (the build's clock + "
            f"{config.future_tolerance_minutes:g} minutes), the first at {_row(events, first)}: {iso(int(ts[first]))}"
        )
    too_old, oldest = pl.repeat(False, len(ts), dtype=pl.Boolean, eager=True), 0
    if len(ts) > n_future:
        oldest = int(ts.filter(~future).max()) - int(config.max_age_days * DAY)  # type: ignore[arg-type]
        too_old = ~future & (ts < oldest)
    n_old = int(too_old.sum())
    if n_old:
        first = int(too_old.arg_max())
        notes.append(
            f"{name}: dropped {n_old:,} event{'s' * (n_old > 1)} dated more than {config.max_age_days:g} days before the "
            f"newest event ({iso(oldest)}), the first at {_row(events, first)}: {iso(int(ts[first]))}"
        )
    return ClockScreen(keep=~(future | too_old), future=n_future, too_old=n_old, notes=tuple(notes))


def find_bots(events: Events, n_users: int, config: BotConfig) -> BotScreen:
    """Shoppers whose action rate no person reaches (see the module docstring). O(m log m).

    `events` are sorted by time (the Store's order); `n_users` sizes the result.
    """
    is_bot = np.zeros(n_users, dtype=bool)
    if not config.enabled or len(events) == 0:
        return BotScreen(is_bot, 0, 0, 0, 1)
    actions = np.flatnonzero(np.isin(events.type, np.asarray(ACTIONS, dtype=np.int8)))
    # Stable by shopper over time-sorted events: each shopper's actions, oldest first.
    order = actions[np.argsort(events.user_row[actions], kind="stable")]
    user, ts = events.user_row[order], events.ts[order]
    resolution = _resolution(events.ts)
    by_minute = np.zeros(0, dtype=np.int32)
    if resolution <= MINUTE:
        by_minute = _over_limit(user, ts, config.max_actions_per_minute, MINUTE)
    by_day = _over_limit(user, ts, config.max_actions_per_day, DAY)
    is_bot[by_minute] = True
    is_bot[by_day] = True
    n_events = int(is_bot[events.user_row].sum())
    return BotScreen(is_bot, n_events, len(by_minute), len(by_day), resolution)


def _over_limit(user: np.ndarray, ts: np.ndarray, limit: int, window: int) -> np.ndarray:
    """Shoppers (sorted int32 rows) with more than `limit` actions inside some `window` seconds.

    `user`, `ts` are the actions ordered by (shopper, time). A shopper has limit + 1 actions
    inside a window exactly when some action and the one `limit` places later are theirs and
    less than `window` seconds apart: one shifted comparison, no per-shopper loop.
    """
    if len(ts) <= limit:
        return np.zeros(0, dtype=np.int32)
    burst = (user[limit:] == user[:-limit]) & (ts[limit:] - ts[:-limit] < window)
    return np.unique(user[limit:][burst]).astype(np.int32)


def _resolution(ts: np.ndarray) -> int:
    """The coarsest of a day, an hour, a minute and a second that every timestamp is a whole multiple of."""
    for step in (DAY, HOUR, MINUTE):
        if len(ts) and not (ts % step).any():
            return step
    return 1


def _rules(config: BotConfig) -> tuple[str, str]:
    return (
        f"more than {config.max_actions_per_minute} clicks and add-to-carts within 60 seconds",
        f"more than {config.max_actions_per_day} within 24 hours",
    )


def _examples(screen: BotScreen, user_ids: np.ndarray) -> str:
    flagged = np.flatnonzero(screen.is_bot)
    examples = ", ".join(shown(str(u)) for u in user_ids[flagged[:_MAX_EXAMPLES]])
    return examples + (f" and {len(flagged) - _MAX_EXAMPLES:,} more" if len(flagged) > _MAX_EXAMPLES else "")


def refuse_mostly_bots(screen: BotScreen, events: ValidTable, user_ids: np.ndarray, total: int, config: BotConfig) -> None:
    """Raise InputError when the flagged shoppers hold more than `config.max_dropped_share` of the
    `total` events: a rule that removes most of a log more likely misreads it than finds bots."""
    if screen.events <= config.max_dropped_share * total:
        return
    per_minute, per_day = _rules(config)
    problem = Problem(
        file=events.file.name,
        column="user_id",
        expected=f"at most {config.max_dropped_share:.0%} of the events (bots.max_dropped_share) from shoppers with "
        f"{per_minute} or {per_day}",
        found=f"{screen.events:,} of {total:,} events ({screen.events / total:.1%}) from {screen.shoppers:,} such "
        f"shoppers, e.g. {_examples(screen, user_ids)}",
        is_csv=events.file.is_csv,
    )
    raise InputError(
        f"{problem}. A rule that removes most of a log more likely misreads it than finds bots: if the timestamps "
        "are coarser than they look, raise the [bots] limits in the build config or set bots.enabled = false",
        (problem,),
    )


def bot_notes(screen: BotScreen, events: ValidTable, user_ids: np.ndarray, config: BotConfig) -> tuple[str, ...]:
    """The manifest's lines about the bot rules: what was dropped, and a rule that was skipped."""
    name = events.file.name
    notes: list[str] = []
    if screen.minute_rule_skipped:
        step = "days" if screen.resolution == DAY else "hours"
        notes.append(
            f"{name}: every timestamp is a whole number of {step}, too coarse to tell a burst from a day's shopping: "
            "the per-minute bot rule (bots.max_actions_per_minute) was skipped; the per-day rule applied"
        )
    if screen.shoppers:
        per_minute, per_day = _rules(config)
        notes.append(
            f"{name}: dropped {screen.events:,} events of {screen.shoppers:,} bot{'s' * (screen.shoppers > 1)}, shoppers "
            f"with {per_minute} ({screen.by_minute:,}) or {per_day} ({screen.by_day:,}): {_examples(screen, user_ids)}"
        )
    return tuple(notes)
