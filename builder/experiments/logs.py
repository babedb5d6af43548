"""Served slates joined with shopper events: what each slate was shown with, and which clicks,
carts and purchases it earned.

Attribution rules (docs in `aisle analyze --help` and the report):

- a click or an add-to-cart belongs to the slate whose `request_id` it carries; without one (or
  with an id no logged slate has) it belongs to none;
- a purchase belongs to the slate whose `request_id` it carries, priced at that slate's price for
  the SKU's slot. Otherwise (no id, or an unknown one) it goes to the **last touch**: the latest
  slate served to the same shopper (the event's user id or session id against the slate's) at or
  before the purchase's `ts` and at most `attribution_s` before it, that showed the SKU. With no
  such slate the purchase is unattributed (counted).

The window [since_ts, until_ts) applies to the slate's `ts`: an event counts when the slate it is
attributed to lies in the window, whenever the event happened. Slates up to `attribution_s` either
side of the window are read too, so a purchase's last touch is found even when it falls outside
(and the purchase then counts nowhere, rather than on an older in-window slate).

A slate without a unit (anonymous, no session) is its own unit: it cannot be followed across
requests, and it is never in an experiment (label "default").
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from artifacts.schema import EventType
from engine.eventlog import EventLog, EventLogError

# Prefix of the unit of an anonymous slate (its own request id): the unit separator cannot occur
# in a user or session id a client would send, so it never merges with a real shopper.
ANONYMOUS = "\x1f"


class AnalysisError(ValueError):
    """The logs cannot be analysed as asked (no log, no slates, an empty window, bad options)."""


class Attribution(msgspec.Struct, kw_only=True):
    """What the join did with the events it read (clicks, carts and purchases only)."""

    events_read: int = 0
    clicks: int = 0  # click events credited to an in-window slate (by request id)
    carts: int = 0
    purchases_by_request: int = 0  # purchases credited to an in-window slate by their request id
    purchases_last_touch: int = 0  # … by last touch
    purchases_unattributed: int = 0  # no slate by request id, none by last touch within the window of hours
    events_outside_window: int = 0  # clicks/carts/purchases credited to a slate outside [since, until)
    clicks_unmatched: int = 0  # clicks/carts whose request id is no logged slate's
    unpriced_purchases: int = 0  # credited purchases with no known price (revenue 0)


@dataclass
class Slates:
    """Slates as columns, one row per slate in log order. The items of row i are
    `sku_code[offsets[i]:offsets[i + 1]]` (codes into `sku_names`, slot order) with their
    `price`s. Columnar on purpose: an object and six lists per slate, kept by the hundred
    thousand, make Python's cyclic garbage collector the dominant cost of reading a log."""

    request_id: list[str]
    user_id: list[str]
    session_id: list[str]
    variant: list[str]
    unit_code: np.ndarray  # int64 [n] → unit_names
    unit_names: list[str]  # the assignment unit; ANONYMOUS + request id for a slate without one
    ts: np.ndarray  # float64 [n] epoch seconds
    arm_share: np.ndarray  # float64 [n]
    count: np.ndarray  # int32 [n], items asked for
    took_ms: np.ndarray  # float64 [n]
    fallback: np.ndarray  # bool [n], a degradation step served it
    diversity: np.ndarray  # float64 [n], distinct leaf categories / items with a known one; NaN with none
    offsets: np.ndarray  # int64 [n + 1]
    sku_code: np.ndarray  # int64 [items] → sku_names
    price: np.ndarray  # float64 [items], 0 unknown
    sku_names: list[str]
    clicks: np.ndarray  # int32 [n], attributed events (zeros until joined)
    carts: np.ndarray  # int32 [n]
    purchases: np.ndarray  # int32 [n]
    revenue: np.ndarray  # float64 [n], Σ price of attributed purchases

    def __len__(self) -> int:
        return len(self.request_id)

    @property
    def n_items(self) -> np.ndarray:
        """int32 [n]: items served per slate."""
        return np.diff(self.offsets).astype(np.int32)

    @property
    def unit(self) -> list[str]:
        return [self.unit_names[c] for c in self.unit_code]

    def skus(self, row: int) -> list[str]:
        return [self.sku_names[c] for c in self.sku_code[self.offsets[row] : self.offsets[row + 1]]]

    def take(self, rows: np.ndarray) -> Slates:
        """The given rows (int [k], ascending) as a table of their own, with SKU and unit codes
        renumbered over what those rows hold."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        skus, sku_code = np.unique(self.sku_code[items], return_inverse=True)
        units, unit_code = np.unique(self.unit_code[rows], return_inverse=True)
        return Slates(
            request_id=[self.request_id[r] for r in rows],
            user_id=[self.user_id[r] for r in rows],
            session_id=[self.session_id[r] for r in rows],
            variant=[self.variant[r] for r in rows],
            unit_code=unit_code.astype(np.int64),
            unit_names=[self.unit_names[c] for c in units],
            ts=self.ts[rows], arm_share=self.arm_share[rows], count=self.count[rows], took_ms=self.took_ms[rows],
            fallback=self.fallback[rows], diversity=self.diversity[rows],
            offsets=offsets, sku_code=sku_code.astype(np.int64), price=self.price[items], sku_names=[self.sku_names[c] for c in skus],
            clicks=self.clicks[rows], carts=self.carts[rows], purchases=self.purchases[rows], revenue=self.revenue[rows],
        )  # fmt: skip


@dataclass
class Logs:
    slates: Slates  # the in-window slates with what they earned
    attribution: Attribution
    slates_read: int  # slates read from the log (window ± attribution)
    slates_total: int  # slates in the log


def open_log(state_dir: Path) -> EventLog:
    """The state dir's event log, read-only, or an AnalysisError that says what is missing."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        raise AnalysisError(f"{state_dir}: expected a state directory (aisle serve --state); got no such directory")
    try:
        return EventLog(state_dir, readonly=True)
    except EventLogError as exc:
        raise AnalysisError(str(exc)) from exc


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around a bulk read. Decoding creates several small
    containers per record while the columns grow, so every collection re-walks everything read so
    far: 40% of the time of reading 200k slates (measured). The reads make no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_slates(log: EventLog, since_ts: float, until_ts: float) -> tuple[Slates, int]:
    """(the slates with since_ts ≤ ts < until_ts, in log order, as columns; slates in the log)."""
    with _collector_paused():
        return _read_slates(log, since_ts, until_ts)


def _read_slates(log: EventLog, since_ts: float, until_ts: float) -> tuple[Slates, int]:
    request_id: list[str] = []
    user_id: list[str] = []
    session_id: list[str] = []
    variant: list[str] = []
    unit_code, sku_code, offsets = array("q"), array("q"), array("q", [0])
    ts, arm_share, took_ms, diversity, price = array("d"), array("d"), array("d"), array("d"), array("d")
    count, fallback = array("i"), array("b")
    unit_of: dict[str, int] = {}
    code_of: dict[str, int] = {}
    total = 0
    for _, s in log.iter_slates():
        total += 1
        if not since_ts <= s.ts < until_ts:
            continue
        request_id.append(s.request_id)
        user_id.append(s.user_id)
        session_id.append(s.session_id)
        variant.append(s.variant)
        unit_code.append(unit_of.setdefault(s.unit or ANONYMOUS + s.request_id, len(unit_of)))
        ts.append(s.ts)
        arm_share.append(s.arm_share)
        took_ms.append(s.took_ms)
        count.append(s.count)
        fallback.append(bool(s.fallback))
        n = len(s.skus)
        sku_code.extend([code_of.setdefault(k, len(code_of)) for k in s.skus])
        price.extend(s.prices if len(s.prices) == n else (list(s.prices) + [0.0] * n)[:n])
        offsets.append(offsets[-1] + n)
        known = [c for c in s.categories if c]
        diversity.append(len(set(known)) / len(known) if known else math.nan)
    n = len(request_id)
    return Slates(
        request_id=request_id, user_id=user_id, session_id=session_id, variant=variant,
        unit_code=np.array(unit_code, dtype=np.int64), unit_names=list(unit_of),
        ts=np.array(ts, dtype=np.float64), arm_share=np.array(arm_share, dtype=np.float64), count=np.array(count, dtype=np.int32),
        took_ms=np.array(took_ms, dtype=np.float64), fallback=np.array(fallback, dtype=bool), diversity=np.array(diversity, dtype=np.float64),
        offsets=np.array(offsets, dtype=np.int64), sku_code=np.array(sku_code, dtype=np.int64), price=np.array(price, dtype=np.float64),
        sku_names=list(code_of),
        clicks=np.zeros(n, np.int32), carts=np.zeros(n, np.int32), purchases=np.zeros(n, np.int32), revenue=np.zeros(n, np.float64),
    ), total  # fmt: skip


def read_logs(state_dir: Path, since_ts: float | None = None, until_ts: float | None = None, attribution_s: float = 86_400.0) -> Logs:
    """The slates served in [since_ts, until_ts) (None: unbounded) with the events attributed to
    them (see the module docstring). Raises AnalysisError when the log is missing or holds no
    slates, or none in the window."""
    if not (math.isfinite(attribution_s) and attribution_s >= 0):
        raise AnalysisError(f"the attribution window must be ≥ 0 hours; got {attribution_s / 3600}")
    lo = -math.inf if since_ts is None else float(since_ts)
    hi = math.inf if until_ts is None else float(until_ts)
    if not lo < hi:
        raise AnalysisError(f"the window is empty: since_ts {since_ts} must be before until_ts {until_ts}")
    with open_log(state_dir) as log:
        slates, total = read_slates(log, lo - attribution_s, hi + attribution_s)
        if total == 0:
            raise AnalysisError(
                f"{log.path}: the log holds no served slates; run the engine with events.log_slates = true "
                "(and traffic) before analysing"
            )
        in_window = (slates.ts >= lo) & (slates.ts < hi)
        if not in_window.any():
            raise AnalysisError(f"{log.path}: none of its {total} slates was served in the window [{since_ts}, {until_ts})")
        join = _Join(slates, in_window, attribution_s)
        with _collector_paused():
            for _, event in log.iter_events():
                join.add(event)
    return Logs(slates.take(np.flatnonzero(in_window)), join.attribution, len(slates), total)


class _Join:
    """Event-by-event attribution onto the slates read (in the window or not); credits go into
    the table's clicks, carts, purchases and revenue columns."""

    def __init__(self, slates: Slates, in_window: np.ndarray, attribution_s: float) -> None:
        self.s = slates
        self.in_window = in_window
        self.attribution_s = attribution_s
        self.attribution = Attribution()
        self.code_of = {sku: code for code, sku in enumerate(slates.sku_names)}
        self.by_request: dict[str, int] = {}
        for i, rid in enumerate(slates.request_id):
            self.by_request.setdefault(rid, i)
        # Per shopper key (user id, session id): slate ts ascending with their rows (log order is
        # commit order, nearly but not exactly ts order).
        touches: dict[str, tuple[list[float], list[int]]] = {}
        ts = slates.ts.tolist()
        for i in np.argsort(slates.ts, kind="stable").tolist():
            for key in (slates.user_id[i], slates.session_id[i]):
                if key:
                    times, rows = touches.setdefault(key, ([], []))
                    if not rows or rows[-1] != i:  # user id = session id: once
                        times.append(ts[i])
                        rows.append(i)
        self.touches = touches
        self._latest_price: dict[int, float] | None = None

    def _slot(self, row: int, code: int | None) -> int:
        """The SKU's slot in the slate, −1 if it was not shown."""
        if code is None:
            return -1
        a, b = self.s.offsets[row], self.s.offsets[row + 1]
        hits = np.flatnonzero(self.s.sku_code[a:b] == code)
        return int(hits[0]) if hits.size else -1

    def latest_price(self, code: int | None) -> float:
        """The SKU's price in the latest slate that showed it with one (for a purchase credited by
        request id to a slate that did not show it), 0.0 unknown. Built on first use."""
        if code is None:
            return 0.0
        if self._latest_price is None:
            s = self.s
            item_ts = np.repeat(s.ts, s.n_items)
            priced = np.flatnonzero(s.price > 0)
            order = priced[np.argsort(item_ts[priced], kind="stable")]
            self._latest_price = dict(zip(s.sku_code[order].tolist(), s.price[order].tolist()))  # later wins
        return self._latest_price.get(code, 0.0)

    def add(self, event) -> None:  # event: engine.eventlog.StoredEvent
        kind = event.type
        if kind not in (EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE):
            return
        a, s = self.attribution, self.s
        a.events_read += 1
        i = self.by_request.get(event.request_id) if event.request_id else None
        if kind != EventType.PURCHASE:
            if i is None:
                a.clicks_unmatched += 1
            elif not self.in_window[i]:
                a.events_outside_window += 1
            elif kind == EventType.CLICK:
                s.clicks[i] += 1
                a.clicks += 1
            else:
                s.carts[i] += 1
                a.carts += 1
            return
        code = self.code_of.get(event.sku)
        by_request = i is not None
        if i is None:
            i = self._last_touch(event, code)
            if i is None:
                a.purchases_unattributed += 1
                return
        if not self.in_window[i]:
            a.events_outside_window += 1
            return
        slot = self._slot(i, code)
        price = float(s.price[s.offsets[i] + slot]) if slot >= 0 else self.latest_price(code)
        if not price > 0:
            a.unpriced_purchases += 1
            price = 0.0
        s.purchases[i] += 1
        s.revenue[i] += price
        if by_request:
            a.purchases_by_request += 1
        else:
            a.purchases_last_touch += 1

    def _last_touch(self, event, code: int | None) -> int | None:
        """The latest slate of the event's shopper at or before its ts, within the window of
        hours, that showed its SKU."""
        if code is None:
            return None
        best, best_ts = None, -math.inf
        earliest = event.ts - self.attribution_s
        for key in {event.user_id, event.session_id} - {""}:
            touches = self.touches.get(key)
            if touches is None:
                continue
            times, rows = touches
            j = bisect.bisect_right(times, event.ts) - 1
            while j >= 0 and times[j] >= earliest and times[j] > best_ts:
                if self._slot(rows[j], code) >= 0:
                    best, best_ts = rows[j], times[j]
                    break
                j -= 1
        return best
