"""Delayed conversions (docs/ranking-objectives.md §3): the attribution window, the delay CDF, the
three labelling strategies, and the opt-in long-delay synthetic store they are checked on.

Tolerances are Z standard errors of the rates compared. A rate here is Σ w·y / Σ w over a set of
clicks; its standard error is the binomial one, generalised by the delta method to weights and
summed per shopper, because one shopper's clicks share a checkout and are not independent (with
unit weights and one click per shopper it is exactly sqrt(p (1 − p) / n)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifacts.schema import EventType
from builder.ingest import load_store
from builder.labels import (
    DAY,
    ClickConversions,
    DelayCDF,
    LabelError,
    attribute_conversions,
    click_conversions,
    delay_cdf,
    purchase_labels,
)
from builder.store import Events
from builder.synth import generate

SEED = 7
MEAN_DELAY_DAYS = 3.0  # the long-delay store: exponential delay between checkout and payment
W_DAYS = 7.0  # attribution window
Z = 3.0  # standard errors allowed (two-sided) or required (one-sided)


# ---- the long-delay store -------------------------------------------------------------------------


@dataclass(frozen=True)
class DelayedStore:
    path: Path
    start: int
    end: int  # exclusive: every event is before it


@pytest.fixture(scope="module")
def delayed(tmp_path_factory: pytest.TempPathFactory) -> DelayedStore:
    out = tmp_path_factory.mktemp("delayed") / "tiny"
    summary = generate("tiny", seed=SEED, out=out, purchase_delay_days=MEAN_DELAY_DAYS)
    return DelayedStore(out, summary.horizon_start, summary.horizon_end)


@pytest.fixture(scope="module")
def delayed_events(delayed: DelayedStore) -> Events:
    return load_store(delayed.path, now=delayed.end).events


@pytest.fixture(scope="module")
def at_end(delayed: DelayedStore, delayed_events: Events) -> ClickConversions:
    """The clicks as labelled when the log is read at its end."""
    return click_conversions(delayed_events, W_DAYS, delayed.end - 1)


Rate = tuple[np.ndarray, np.ndarray]  # (w·y, w) per row: float64 [n] each


def _rate_gap_se(cluster: np.ndarray, a: Rate, b: Rate) -> tuple[float, float, float]:
    """(rate_a, rate_b, standard error of rate_a − rate_b) for rates Σ w·y / Σ w given as
    (w·y, w) per row (zero outside the set; the sets may share rows or shoppers), rows clustered by
    `cluster`: the delta-method variance of the difference of two ratio estimators."""
    z = np.zeros(len(cluster))
    rates = []
    for sign, (num, den) in ((1.0, a), (-1.0, b)):
        rate = float(num.sum() / den.sum())
        rates.append(rate)
        z += sign * (num - rate * den) / den.sum()
    _, inverse = np.unique(cluster, return_inverse=True)
    se = float(np.sqrt((np.bincount(inverse, weights=z) ** 2).sum()))
    return rates[0], rates[1], se


def _in_set(conv: ClickConversions, strategy: str, mask: np.ndarray) -> Rate:
    labels, weights = purchase_labels(conv, strategy)  # type: ignore[arg-type]
    w = np.where(mask, weights, 0.0).astype(np.float64)
    return w * labels, w


def test_naive_labels_underestimate_the_newest_clicks_and_weighted_labels_do_not(at_end: ClickConversions) -> None:
    """At the log's end the newest clicks (less than half the window ago) have most of their
    purchases still to come: counted as negatives they look far worse than old clicks (whose
    windows closed); weighted by the delay CDF they look like old clicks again."""
    old = ~at_end.window_open
    newest = at_end.window_open & (at_end.elapsed < at_end.attribution_s // 2)
    assert old.sum() > 3_000 and newest.sum() > 300  # the store is big enough for the test to mean something

    old_rate, naive_rate, se = _rate_gap_se(
        at_end.user_row, _in_set(at_end, "naive", old), _in_set(at_end, "naive", newest)
    )
    assert old_rate - naive_rate > Z * se, (old_rate, naive_rate, se)

    old_rate_w, weighted_rate, se_w = _rate_gap_se(
        at_end.user_row, _in_set(at_end, "weighted", old), _in_set(at_end, "weighted", newest)
    )
    assert old_rate_w == old_rate  # closed windows weigh 1 either way
    assert abs(old_rate - weighted_rate) <= Z * se_w, (old_rate, weighted_rate, se_w)

    # `exclude` learns nothing from an open window, converted or not, so what it estimates is
    # exactly the old clicks' rate: unbiased, at the price of the newest data.
    labels, weights = purchase_labels(at_end, "exclude")
    assert not weights[at_end.window_open].any()
    w = weights.astype(np.float64)
    assert float((w * labels).sum() / w.sum()) == pytest.approx(old_rate, rel=1e-12)


def test_weighted_labels_match_what_the_log_shows_once_the_windows_close(
    delayed: DelayedStore, delayed_events: Events, at_end: ClickConversions
) -> None:
    """Read the log as of weekly cut-offs before its end: the clicks whose window is open at a
    cut-off have, by the end of the log, a known outcome. Pooled over the cut-offs, the naive rate
    of those clicks is clearly below their true rate and the weighted one is not (same clicks, so
    the standard error is that of a paired difference)."""
    week = int(W_DAYS * DAY)
    truth_at = at_end.event_row  # sorted: event order
    num = {"naive": [], "weighted": []}
    den = {"naive": [], "weighted": []}
    truth, users = [], []
    # Cut-offs 1..7 weeks before the end: every open click's window has closed by the end, and the
    # earliest cut-off still has four days of closed windows to estimate the delay CDF from.
    for k in range(1, 8):
        cut = delayed.end - 1 - k * week
        assert cut - week > delayed.start
        conv = click_conversions(delayed_events, W_DAYS, cut)
        open_ = conv.window_open
        truth.append(at_end.converted[np.searchsorted(truth_at, conv.event_row[open_])].astype(np.float64))
        users.append(conv.user_row[open_])
        for strategy in num:
            labels, weights = purchase_labels(conv, strategy)  # type: ignore[arg-type]
            num[strategy].append((weights * labels)[open_].astype(np.float64))
            den[strategy].append(weights[open_].astype(np.float64))
    y_true = np.concatenate(truth)
    cluster = np.concatenate(users)
    assert len(y_true) > 3_000
    ones = np.ones(len(y_true))
    gaps = {}
    for strategy in num:
        estimate = (np.concatenate(num[strategy]), np.concatenate(den[strategy]))
        gaps[strategy] = _rate_gap_se(cluster, estimate, (y_true, ones))
    est, true, se = gaps["naive"]
    assert true - est > Z * se, gaps
    est, true, se = gaps["weighted"]
    assert abs(est - true) <= Z * se, gaps


def test_delay_cdf_is_the_stores_delay_distribution_within_the_window(
    delayed_events: Events, at_end: ClickConversions
) -> None:
    cdf = delay_cdf(at_end)
    closed = at_end.converted & ~at_end.window_open
    assert len(cdf) == int(closed.sum())
    assert cdf.delays.min() > 0 and cdf.delays.max() <= at_end.attribution_s
    assert float(cdf(at_end.attribution_s)) == 1.0
    # Exponential delays (mean 3 days) given ≤ 7 days have median 3·ln(2 / (1 + e^(-7/3))) days;
    # the minutes from click to checkout move it by well under a standard error. F_n(median) is a
    # share of clicks, but one checkout's clicks share a delay: its binomial standard error counts
    # checkouts, n_eff = (Σ clicks per checkout)² / Σ (clicks per checkout)².
    median = MEAN_DELAY_DAYS * np.log(2 / (1 + np.exp(-W_DAYS / MEAN_DELAY_DAYS))) * DAY
    per_checkout = np.unique(delayed_events.session_row[at_end.event_row[closed]], return_counts=True)[1]
    n_eff = per_checkout.sum() ** 2 / (per_checkout.astype(np.float64) ** 2).sum()
    assert abs(float(cdf(int(median))) - 0.5) <= Z * np.sqrt(0.25 / n_eff)


# ---- the synthetic store's opt-in delay -----------------------------------------------------------


def test_default_store_is_unchanged_by_the_delay_option(tiny_store: Path, tmp_path: Path) -> None:
    explicit = tmp_path / "tiny"
    generate("tiny", seed=SEED, out=explicit, purchase_delay_days=0.0)
    files = sorted(p.relative_to(tiny_store) for p in tiny_store.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(explicit) for p in explicit.rglob("*") if p.is_file())
    for name in files:
        assert (tiny_store / name).read_bytes() == (explicit / name).read_bytes(), name
    assert "purchase_delay_days" not in json.loads((explicit / "truth" / "store.json").read_text())["parameters"]


def test_delays_only_move_purchases_later_and_cut_them_at_the_end(tiny_store: Path, delayed: DelayedStore) -> None:
    """Same seed: every other event is identical, the same items are bought, each checkout's
    purchases move by one exponential delay, and purchases due after the end are not logged."""
    cols = ["ts", "user_id", "session_id", "sku", "type", "dwell_ms", "surface", "request_id", "position"]
    plain = pq.read_table(tiny_store / "events.parquet", columns=cols)
    late = pq.read_table(delayed.path / "events.parquet", columns=cols)
    is_buy = lambda t: pc.equal(t.column("type"), "purchase")  # noqa: E731
    assert plain.filter(pc.invert(is_buy(plain))).equals(late.filter(pc.invert(is_buy(late))))

    def purchases(t):  # (session, sku) -> ts; a cart never holds an item twice
        b = t.filter(is_buy(t))
        keys = zip(b.column("session_id").to_pylist(), b.column("sku").to_pylist())
        return dict(zip(keys, b.column("ts").to_pylist()))

    before, after = purchases(plain), purchases(late)
    assert set(after) < set(before)  # some were cut at the end
    assert max(after.values()) < delayed.end
    shift: dict[str, int] = {}
    for key, ts in after.items():
        assert shift.setdefault(key[0], ts - before[key]) == ts - before[key]  # one delay per checkout
    assert min(shift.values()) >= 0
    # Checkouts at least 30 days before the end are cut with probability e^-10: their delays are
    # a plain exponential sample, whose mean has standard error mean / sqrt(n).
    first_ts = {}
    for (session, _), ts in before.items():
        first_ts[session] = min(ts, first_ts.get(session, ts))
    early = np.array([d for s, d in shift.items() if first_ts[s] < delayed.end - 30 * DAY], dtype=np.float64)
    mean = MEAN_DELAY_DAYS * DAY
    assert len(early) > 150
    assert abs(early.mean() - mean) <= Z * mean / np.sqrt(len(early))
    info = json.loads((delayed.path / "truth" / "store.json").read_text())
    assert info["parameters"]["purchase_delay_days"] == MEAN_DELAY_DAYS


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_generate_rejects_a_bad_delay(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="purchase_delay_days"):
        generate("micro", seed=1, out=tmp_path / "s", purchase_delay_days=bad)


# ---- the window logic on hand-made logs ----------------------------------------------------------

H = 3_600
CLICK, BUY, CART = int(EventType.CLICK), int(EventType.PURCHASE), int(EventType.ADD_TO_CART)


def _events(rows: list[tuple[int, int, int, int]]) -> Events:
    """Events from (ts, user_row, item_row, type) rows, sorted by time like a Store's."""
    rows = sorted(rows, key=lambda r: r[0])
    m = len(rows)
    a = np.array(rows, dtype=np.int64).reshape(m, 4)
    return Events(
        ts=a[:, 0].copy(),
        user_row=a[:, 1].astype(np.int32),
        session_row=a[:, 1].astype(np.int32),
        item_row=a[:, 2].astype(np.int32),
        type=a[:, 3].astype(np.int8),
        dwell_ms=np.zeros(m, np.int32),
        surface=np.zeros(m, np.int8),
        position=np.full(m, -1, np.int16),
        device=np.zeros(m, np.int8),
        region=np.zeros(m, np.int16),
    )


def test_a_purchase_converts_a_click_only_inside_its_window() -> None:
    w = 7 * DAY
    ev = _events([
        (0, 0, 0, CLICK), (w, 0, 0, BUY),  # exactly at t + W: converts
        (0, 1, 0, CLICK), (w + 1, 1, 0, BUY),  # one second late: does not
        (10, 2, 0, CLICK), (10, 2, 0, BUY),  # same second: not after the click
        (5, 3, 0, BUY), (20, 3, 0, CLICK),  # before the click
        (0, 4, 0, CLICK), (100, 4, 1, BUY), (100, 5, 0, BUY),  # another item; another shopper
    ])  # fmt: skip
    conv = click_conversions(ev, 7.0, 100 * DAY)
    got = dict(zip(conv.user_row.tolist(), zip(conv.converted.tolist(), conv.delay.tolist())))
    assert got == {0: (True, w), 1: (False, -1), 2: (False, -1), 3: (False, -1), 4: (False, -1)}


def test_every_click_before_a_purchase_converts_with_its_own_delay() -> None:
    ev = _events([(0, 0, 0, CLICK), (2 * H, 0, 0, CLICK), (5 * H, 0, 0, BUY), (6 * H, 0, 0, BUY), (7 * H, 0, 0, CLICK)])
    conv = click_conversions(ev, 7.0, 10 * DAY)
    assert conv.converted.tolist() == [True, True, False]
    assert conv.delay.tolist() == [5 * H, 3 * H, -1]  # to the first purchase after each click


def test_the_log_end_censors_purchases_and_opens_windows() -> None:
    w = 7 * DAY
    end = 10 * DAY
    ev = _events([
        (end - w, 0, 0, CLICK),  # t + W == end: closed
        (end - w + 1, 1, 0, CLICK), (end - 1, 1, 0, BUY),  # open, converted inside the log
        (end - H, 2, 0, CLICK), (end + H, 2, 0, BUY),  # open; the purchase comes after the end
        (end + 2 * H, 3, 0, CLICK),  # after the end: not a click yet
    ])  # fmt: skip
    conv = click_conversions(ev, 7.0, end)
    assert conv.user_row.tolist() == [0, 1, 2]
    assert conv.window_open.tolist() == [False, True, True]
    assert conv.converted.tolist() == [False, True, False]
    assert conv.elapsed.tolist() == [w, w - 1, H]
    # Read later, the late purchase is there; by default the log ends at its newest event.
    later = click_conversions(ev, 7.0)
    assert later.data_end == end + 2 * H
    assert later.converted.tolist() == [False, True, True, False]


def test_the_outcome_can_be_an_add_to_cart() -> None:
    ev = _events([(0, 0, 0, CLICK), (H, 0, 0, CART), (0, 1, 0, CLICK), (H, 1, 0, BUY)])
    conv = click_conversions(ev, 1.0, DAY, outcome=EventType.ADD_TO_CART)
    assert dict(zip(conv.user_row.tolist(), conv.converted.tolist())) == {0: True, 1: False}


def test_strategies_weigh_open_windows_as_documented() -> None:
    end = 30 * DAY
    rows = [(d * DAY, d, 0, CLICK) for d in range(10)] + [(d * DAY + 2 * H * (d + 1), d, 0, BUY) for d in range(10)]
    rows += [(end - 2 * DAY, 20, 0, CLICK), (end - H, 21, 0, CLICK), (end - DAY, 22, 0, CLICK), (end - 1, 22, 0, BUY)]
    rows += [(5 * DAY, 30, 0, CLICK)]  # closed, unconverted
    conv = click_conversions(_events(rows), 7.0, end)
    cdf = delay_cdf(conv)
    assert cdf.delays.tolist() == [2 * H * (d + 1) for d in range(10)]  # only closed windows
    by_user = {u: i for i, u in enumerate(conv.user_row.tolist())}

    labels, weights = purchase_labels(conv, "naive")
    assert weights.tolist() == [1.0] * len(conv) and labels.sum() == 11

    labels, weights = purchase_labels(conv, "exclude")
    assert [weights[by_user[u]] for u in (20, 21, 22, 30)] == [0.0, 0.0, 0.0, 1.0]

    labels, weights = purchase_labels(conv, "weighted")
    # Open and unconverted: F(elapsed) = share of closed delays ≤ elapsed (2 days: all ten; 1 hour: none).
    assert weights[by_user[20]] == 1.0 and weights[by_user[21]] == 0.0
    assert labels[by_user[22]] == 1 and weights[by_user[22]] == 1.0  # a positive is kept
    assert weights[by_user[30]] == 1.0 and labels[by_user[30]] == 0
    shared = DelayCDF(delays=np.array([H, 3 * H], dtype=np.int64), attribution_s=7 * DAY)
    _, weights = purchase_labels(conv, "weighted", cdf=shared)
    assert weights[by_user[21]] == 0.5  # one of two delays ≤ 1 hour


def test_labels_refuse_what_they_cannot_do() -> None:
    fresh = click_conversions(_events([(0, 0, 0, CLICK), (H, 0, 0, BUY)]), 7.0, DAY)  # every window open
    with pytest.raises(LabelError, match="exclude"):
        delay_cdf(fresh)
    with pytest.raises(LabelError, match="exclude"):
        purchase_labels(fresh, "weighted")
    assert purchase_labels(fresh, "exclude")[1].tolist() == [0.0]
    with pytest.raises(LabelError, match="naive, exclude, weighted"):
        purchase_labels(fresh, "optimistic")  # type: ignore[arg-type]
    with pytest.raises(LabelError, match="attribution_days"):
        click_conversions(_events([(0, 0, 0, CLICK)]), 0.0, DAY)


def _reference(clicks: list[tuple[int, int, int]], outcomes: list[tuple[int, int, int]], w: int) -> list[int]:
    """Delay per click by brute force, -1 = none."""
    out = []
    for u, i, t in clicks:
        later = [t2 - t for u2, i2, t2 in outcomes if (u2, i2) == (u, i) and t < t2 <= t + w]
        out.append(min(later) if later else -1)
    return out


small = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 30))


@settings(max_examples=300, deadline=None)
@given(st.lists(small, max_size=25), st.lists(small, max_size=25), st.integers(1, 12))
def test_attribution_matches_a_brute_force_reference(clicks, outcomes, w) -> None:
    c = np.array(clicks, dtype=np.int64).reshape(-1, 3)
    o = np.array(outcomes, dtype=np.int64).reshape(-1, 3)
    converted, delay = attribute_conversions(c[:, 0], c[:, 1], c[:, 2], o[:, 0], o[:, 1], o[:, 2], w)
    expected = _reference(clicks, outcomes, w)
    assert delay.tolist() == expected
    assert converted.tolist() == [d >= 0 for d in expected]
