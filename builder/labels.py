"""Conversion labels for clicks under an attribution window, with delayed conversions handled.

A purchase may follow its click by days (docs/ranking-objectives.md §3). A click at t converts if
the same shopper buys the same item in (t, t + W], W the attribution window. When the log ends at
`data_end` with t + W > data_end the click's window is still *open*: a conversion may be on its way,
so "no purchase yet" is not "no purchase". Counting such clicks as negatives (`naive`) biases
P(purchase | click) down, most for the newest clicks — exactly the ones a ranker trained on the log
learns its freshest signal from.

- `click_conversions`: one row per click as of `data_end` — converted or not, the delay of the
  conversion, whether the window is open, how much of it has elapsed.
- `delay_cdf`: F(d) = P(delay ≤ d | converted within W), the empirical CDF of the delays of clicks
  whose window is closed (their conversions within W are all observed).
- `purchase_labels`: (labels, weights) for a binary head under one of three strategies:
    - `naive`: every click, unconverted = negative, weight 1. Biased down for open windows.
    - `exclude`: clicks with an open window get weight 0 (whatever their label), the rest weight
      1. Unbiased, since whether a window is open depends on the click's time, not its outcome;
      it throws away the newest clicks. (Dropping only the *unconverted* open clicks would select
      on the label and bias the rate up — towards 1 for the open clicks themselves.)
    - `weighted`: every click; a converted click is a positive of weight 1, an unconverted click
      with an open window a negative of weight F(data_end − t): the probability that its
      conversion, had there been one, would already be in the log (the simplest form of Chapelle,
      "Modeling delayed feedback in display advertising", KDD 2014). Closed clicks weigh 1.

The `weighted` estimator. For an open click with true conversion probability p and elapsed time
e = data_end − t, a positive is observed with probability p·F(e). Its expected weighted share of
positives is p·F / (p·F + (1 − p·F)·F) = p / (1 + p·(1 − F)): the weight removes the bias of
order (1 − F) that `naive` has (naive observes p·F) and leaves one of relative size at most
p·(1 − F) — a few percent when P(purchase | click) is a few percent, and nothing once F = 1.
(Unbiased per-row weights would need p itself, i.e. the model being fitted: Yasui et al. 2020.)
Assumptions: the delay distribution is the same for every click (not a function of the item, the
shopper or the time — a segment-wise F would lift the first two), and stationary, so the closed
clicks' delays describe the open clicks' (a trend in delays within the last W shows up as bias);
where the window is open, what the weights correct is only the missing conversions, so a real
change in P(purchase | click) over the last W is learnt, not averaged away as `exclude` would;
conversions are attributed to every click of the (shopper, item) whose window contains the purchase
(several clicks before one purchase all convert), with the delay to the first such purchase.

Arrays: `*_row` int32 dense rows of the Store, timestamps int64 epoch seconds. Complexity O(m log m)
in the events, all vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from artifacts.schema import EventType
from builder.store import Events, Store

DAY = 86_400
DEFAULT_ATTRIBUTION_DAYS = 7.0  # docs/ranking-objectives.md §3: `ranker.attribution_days`

Strategy = Literal["naive", "exclude", "weighted"]
STRATEGIES: tuple[Strategy, ...] = ("naive", "exclude", "weighted")


class LabelError(ValueError):
    """Labels cannot be built as asked (bad window, unknown strategy, no delays to estimate F)."""


@dataclass(frozen=True)
class ClickConversions:
    """One row per click at or before `data_end`, in event order. n = clicks.

    `converted`: an outcome (by default a purchase) of the same item by the same shopper in
    (ts, ts + W] and at or before `data_end`. `delay`: seconds from the click to the first such
    outcome, -1 when not converted. `window_open`: ts + W > data_end, i.e. a conversion may still
    arrive. `elapsed`: data_end − ts, seconds (≥ 0).
    """

    event_row: np.ndarray  # int64 [n], row of the click in Store.events
    user_row: np.ndarray  # int32 [n]
    item_row: np.ndarray  # int32 [n]
    ts: np.ndarray  # int64 [n]
    converted: np.ndarray  # bool [n]
    delay: np.ndarray  # int64 [n], seconds, -1 = not converted
    window_open: np.ndarray  # bool [n]
    attribution_s: int  # W in seconds
    data_end: int  # epoch seconds the log is complete up to (inclusive)

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def elapsed(self) -> np.ndarray:
        """int64 [n]: data_end − ts, seconds."""
        return self.data_end - self.ts


@dataclass(frozen=True)
class DelayCDF:
    """The empirical CDF of conversion delays within the window: F(d) = P(delay ≤ d | converted
    within W), a step function over `delays` (int64 [k] seconds, sorted, each in (0, W])."""

    delays: np.ndarray  # int64 [k], sorted
    attribution_s: int

    def __len__(self) -> int:
        return len(self.delays)

    def __call__(self, elapsed: np.ndarray | int) -> np.ndarray:
        """float64, the shape of `elapsed` (seconds): F at each; 0 below the smallest delay, 1 from W on."""
        d = np.asarray(elapsed, dtype=np.int64)
        f = np.searchsorted(self.delays, d, side="right") / len(self.delays)
        return np.where(d >= self.attribution_s, 1.0, f)


def attribute_conversions(
    click_user: np.ndarray,
    click_item: np.ndarray,
    click_ts: np.ndarray,
    outcome_user: np.ndarray,
    outcome_item: np.ndarray,
    outcome_ts: np.ndarray,
    attribution_s: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(converted bool [n], delay int64 [n], -1 = none) for n clicks against k outcomes.

    A click (u, i, t) converts when some outcome (u, i, t') has t < t' ≤ t + attribution_s; the
    delay is t' − t of the first. Users and items are non-negative int32-range ids; inputs in any
    order. O((n + k) log(n + k)).
    """
    if attribution_s <= 0:
        raise LabelError(f"the attribution window must be > 0 seconds, got {attribution_s}")
    n, k = len(click_ts), len(outcome_ts)
    converted = np.zeros(n, dtype=bool)
    delay = np.full(n, -1, dtype=np.int64)
    if n == 0 or k == 0:
        return converted, delay
    pair = np.concatenate((_pair_key(click_user, click_item), _pair_key(outcome_user, outcome_item)))
    ts = np.concatenate((np.asarray(click_ts, np.int64), np.asarray(outcome_ts, np.int64)))
    # At equal times an outcome sorts before the click, so "the next outcome" is strictly later.
    is_click = np.r_[np.ones(n, dtype=np.int8), np.zeros(k, dtype=np.int8)]
    order = np.lexsort((is_click, ts, pair))
    pos = np.arange(n + k)
    # For every sorted position, the first outcome at or after it (n + k = none): a suffix minimum.
    candidate = np.where(is_click[order] == 0, pos, n + k)
    next_outcome = np.minimum.accumulate(candidate[::-1])[::-1]
    click_pos = np.flatnonzero(is_click[order] == 1)
    nxt = next_outcome[click_pos]
    found = nxt < n + k
    nxt = np.where(found, nxt, 0)
    pair, ts = pair[order], ts[order]
    same_pair = found & (pair[nxt] == pair[click_pos])
    gap = ts[nxt] - ts[click_pos]
    hit = same_pair & (gap <= attribution_s)
    rows = order[click_pos]  # original click indices (clicks are 0..n-1 in the concatenation)
    converted[rows] = hit
    delay[rows] = np.where(hit, gap, -1)
    return converted, delay


def click_conversions(
    store: Store | Events,
    attribution_days: float = DEFAULT_ATTRIBUTION_DAYS,
    data_end_ts: int | None = None,
    *,
    outcome: EventType = EventType.PURCHASE,
) -> ClickConversions:
    """Every click of `store` at or before `data_end_ts`, labelled by an `outcome` (default a
    purchase) of the same item by the same shopper within `attribution_days` after it.

    `data_end_ts`: the time the log is complete up to (inclusive), epoch seconds; events after it
    are ignored, as if the log had been read then (default: the newest event's time). For a
    synthetic store pass its horizon end (truth/store.json `horizon.end`). Raises LabelError for a
    window ≤ 0.
    """
    ev = store.events if isinstance(store, Store) else store
    if not (math.isfinite(attribution_days) and attribution_days > 0):
        raise LabelError(f"attribution_days must be a finite number > 0, got {attribution_days}")
    attribution_s = int(round(attribution_days * DAY))
    if data_end_ts is not None:
        data_end = int(data_end_ts)
    else:
        data_end = int(ev.ts.max()) if len(ev) else 0
    seen = ev.ts <= data_end
    click_rows = np.flatnonzero(seen & (ev.type == EventType.CLICK))
    out_rows = np.flatnonzero(seen & (ev.type == outcome))
    ts = ev.ts[click_rows].astype(np.int64)
    converted, delay = attribute_conversions(
        ev.user_row[click_rows], ev.item_row[click_rows], ts,
        ev.user_row[out_rows], ev.item_row[out_rows], ev.ts[out_rows], attribution_s,
    )  # fmt: skip
    return ClickConversions(
        event_row=click_rows.astype(np.int64),
        user_row=ev.user_row[click_rows].astype(np.int32),
        item_row=ev.item_row[click_rows].astype(np.int32),
        ts=ts,
        converted=converted,
        delay=delay,
        window_open=ts + attribution_s > data_end,
        attribution_s=attribution_s,
        data_end=data_end,
    )


def delay_cdf(conv: ClickConversions) -> DelayCDF:
    """F from the converted clicks whose window is closed (their in-window delays are all seen).

    Raises LabelError when there are none (a log shorter than the window, or no conversions):
    then nothing says how long conversions take, and `exclude` is the only sound strategy.
    """
    closed = conv.converted & ~conv.window_open
    if not closed.any():
        raise LabelError(
            f"no converted click with a closed attribution window ({conv.attribution_s / DAY:g} days "
            "before the log's end) to estimate the delay distribution from; use strategy='exclude' "
            "or a longer log"
        )
    return DelayCDF(delays=np.sort(conv.delay[closed]), attribution_s=conv.attribution_s)


def purchase_labels(
    conv: ClickConversions, strategy: Strategy = "weighted", cdf: DelayCDF | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(labels int8 [n] 0/1, weights float32 [n]) for the rows of `conv`, by `strategy` (module
    docstring): `naive`, `exclude` (open windows weigh 0: drop rows with weight 0 before training)
    or `weighted` (open unconverted clicks weigh F(data_end − ts); `cdf` defaults to
    `delay_cdf(conv)`; pass one estimated over a longer log to share it). Labels are the observed
    conversions under every strategy. Raises LabelError for an unknown strategy, or for `weighted`
    without any closed conversion to estimate F from.
    """
    labels = conv.converted.astype(np.int8)
    if strategy == "naive":
        return labels, np.ones(len(conv), dtype=np.float32)
    if strategy == "exclude":
        return labels, np.where(conv.window_open, 0.0, 1.0).astype(np.float32)
    if strategy == "weighted":
        f = (cdf if cdf is not None else delay_cdf(conv))(conv.elapsed)
        weights = np.where(conv.window_open & ~conv.converted, f, 1.0)
        return labels, weights.astype(np.float32)
    raise LabelError(f"unknown label strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


def _pair_key(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """int64: (user << 32) | item, one sortable key per (shopper, item); both non-negative int32."""
    return (np.asarray(user, np.int64) << 32) | np.asarray(item, np.int64)
