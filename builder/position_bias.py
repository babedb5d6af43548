"""Position bias: how likely a shopper is to examine each slot of a slate, estimated from the log.

The click head (docs/ranking-objectives.md §2) learns from logged impressions, and a click at
slot 7 says more than one at slot 0 because slot 7 is rarely looked at. This module turns the
store's impressions and clicks into examination propensities per 0-based slot, normalised so
p(0) = 1, and those into clipped inverse-propensity weights:

    log = impressions_with_clicks(store)
    props = estimate_propensities(log, max_position=20)
    w = ipw_weights(log.position, props)                    # float32, 1/p clipped at 1/p(20)

**Model.** A click needs the slot examined and the item relevant, independently (the
examination hypothesis):

    P(click | slot k, bucket g) = θ_k · γ_g,

θ_k the examination propensity of slot k, γ_g the relevance of a bucket (an item, or an item on
one surface: `relevance_by`). The product is identified only because the logging policy shows
the same item at different slots (the synthetic store samples every slot from the same mixture;
exploration slots do it on purpose), and only up to a common scale, fixed by θ_0 = 1.

**Methods.**

- `"em"`: regression EM (Wang et al., WSDM 2018, "Position Bias Estimation for Unbiased
  Learning to Rank in Personal Search") on the Bernoulli likelihood. E-step: a clicked row was
  examined and relevant; an unclicked row was examined (and irrelevant) with probability
  θ(1 − γ)/(1 − θγ), relevant (and unexamined) with γ(1 − θ)/(1 − θγ). M-step: θ_k = the mean
  posterior examination at slot k (θ_0 held at 1, which is the exact constrained M-step since
  θ's M-step separates by slot); γ_g = the bucket's mean posterior relevance shrunk towards
  its class mean (the surface's for item × surface buckets, the log's for item buckets) with
  `prior_strength` pseudo-rows: MAP under a Beta prior, a smoothed estimate without a GBDT.
  Caveat, measured on the synthetic store: with tens of impressions per bucket the per-bucket γ
  are incidental parameters (Neyman–Scott) and bias θ. A bucket never clicked gets γ ≈ 0
  unsmoothed, so its rows claim "examined everywhere" and lift deep slots; smoothing pushes the
  other way. On the `small` store (~16 impressions per bucket) the curve is 0.04–0.05 off the
  marginal curve at slots 1–3 for `prior_strength` 0, 10 or 50 (too high at 0, too low at 10 and
  50); with ~1,000 impressions per bucket it is within 0.03 (tests/test_position_bias.py).
- `"poisson"`: the same factorisation fitted with a Poisson working likelihood,
  clicks ~ Poisson(θ_k·γ_g). Its score is linear in the clicks, so profiling γ_g out
  (γ_g = clicks_g / Σ_rows θ_k) leaves unbiased estimating equations for θ however few rows a
  bucket has: it is the conditional likelihood of *where* each bucket's clicks fell given how
  many it got (the idea behind intervention harvesting: Agarwal et al., WSDM 2019). A bucket
  without a click carries no information and drops out. Fixed-point iterations, θ_k = clicks
  at k / Σ_rows at k γ_g; with `relevance_by="item_surface_user"` a multiplicative shopper
  effect too (γ_g·β_u, iterative proportional fitting), which absorbs shoppers who click more
  than others. Recommended, and the default: on the `small` synthetic store it recovers the
  browsing model's curve within 0.02 with the cascade (below) and the shopper effect (em: 0.06),
  and the marginal curve within 0.012 without them (em: 0.05).
- `"ctr_ratio"`: the naive baseline, CTR at slot k over CTR at slot 0. A policy that puts
  better items on top inflates the top slots' CTR and makes the curve fall too steeply; on the
  synthetic store, whose policy is nearly position-blind, it is the marginal curve (below).

**The cascade.** The synthetic shoppers (builder/synth/sessions.py) scan top-down, examine slot
k with probability 1/(1 + k)^0.8, and stop scanning after a click with probability 0.7, so
whether slot k is examined also depends on the clicks above it. With `cascade=False` (the
default) the model has one examination number per slot and fits the *marginal* examination
curve of the logs: θ_k · P(still scanning at k), averaged over slates (weighted by relevance).
On the synthetic store, where a quarter of top slots are clicked, that sits well below
1/(1 + k)^0.8 (0.46 vs 0.57 at slot 1, 0.08 vs 0.16 at slot 9), and no estimator of a
position-only curve can be checked against the browsing model's curve. It is the right curve
for a weight that depends on the position alone: it is what the clicks at slot k were actually
exposed to on average. With `cascade=True` the model is

    P(slot k examined | c clicks above it in the slate) = θ_k · (1 − s)^c,

which is the synthetic browsing model exactly; θ is then checkable against
`truth/position_bias.npy` and s is `Propensities.stop_after_click`. For `"em"` the E-step knows
that rows above a slate's last click were scanned (a later click proves it) while those below
were scanned only if the shopper did not stop after it (posterior per slate,
π = s / (s + (1 − s)·Π_below (1 − θγ))); for `"poisson"` the row's exposure is θ_k·(1 − s)^c and
s solves its Poisson score equation (Newton step per iteration). Use a cascade θ with weights
that also see the clicks above (`ipw_weights(..., clicks_above=...)`; Vardasbi et al., SIGIR
2020, "Cascade Model-based Propensity Estimation"), never with the position alone. The
cascade assumes top-down scanning that stops only after clicks: true of the synthetic shoppers
and the simulator, an assumption for real grid layouts.

Slots with fewer than `min_impressions` rows (and every slot the log never reached, up to
`max_position`) are not estimated from their own rows: they get a power law (1 + k)^(−α) fitted
by weighted least squares in log-log space on the reliable slots ≥ 1, and are flagged in
`Propensities.reliable`. Estimated propensities are floored at `MIN_PROPENSITY` (a slot with
impressions and no click at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from numba import njit

from artifacts.schema import EventType
from builder.store import Store

Method = Literal["em", "poisson", "ctr_ratio"]
RelevanceBy = Literal["item", "item_surface", "item_surface_user"]

METHODS = ("em", "poisson", "ctr_ratio")
RELEVANCE_BY = ("item", "item_surface", "item_surface_user")
DEFAULT_MAX_CLICK_DELAY_S = 86_400  # a click is matched to an impression of its slot at most a day before it
DEFAULT_ITERATIONS = {"em": 1_000, "poisson": 2_000}
DEFAULT_TOLERANCE = 1e-6  # stop when no θ_k moved more than this in one iteration
DEFAULT_PRIOR_STRENGTH = 10.0  # "em": pseudo-rows at the class mean added to every relevance bucket
DEFAULT_MIN_IMPRESSIONS = 500  # fewer rows than this at a slot: extrapolated, not estimated
DEFAULT_CLIP_POSITION = 20  # weights are capped at 1 / p(20), docs/ranking-objectives.md §2
MIN_PROPENSITY = 1e-4
_EPS = 1e-12


class PositionBiasError(ValueError):
    """A log from which propensities cannot be estimated (empty, no clicks, one slot, bad input)."""


@dataclass(frozen=True)
class ImpressionLog:
    """One row per logged impression, ordered by (slate, position). n = rows.

    A slate is one served request. `clicked` is 1 when the shopper clicked that item from that
    slate (a click of the same item at the same slot, at most `max_click_delay_s` after it).
    """

    slate: np.ndarray  # int32 [n], dense slate number, ascending; a slate's rows are contiguous
    position: np.ndarray  # int16 [n], 0-based slot, ascending within a slate
    item_row: np.ndarray  # int32 [n] into Store.items
    user_row: np.ndarray  # int32 [n] into Store.users
    surface: np.ndarray  # int8 [n], artifacts.schema.SURFACE_NAMES code
    ts: np.ndarray  # int64 [n], epoch seconds the slate was shown
    clicked: np.ndarray  # int8 [n], 0/1
    n_slates: int

    def __len__(self) -> int:
        return len(self.slate)

    def clicks_above(self) -> np.ndarray:
        """int16 [n]: clicks in the same slate at smaller positions than the row's."""
        return _clicks_above(self.slate, self.clicked)


@dataclass(frozen=True)
class Propensities:
    """Examination propensity by 0-based slot, relative to slot 0, and what it rests on.

    `propensity` is float64 [max_position + 1] with `propensity[0] == 1` and every value in
    [MIN_PROPENSITY, ∞) (≤ 1 in practice). `impressions` and `clicks` (int64, same shape) count
    the rows behind each slot; `reliable[k]` is False where the value was extrapolated (fewer
    than `min_impressions` rows). `cascade` says which curve this is (module docstring): the
    marginal one (False) or the browsing model's θ with `stop_after_click` = s (True; NaN
    otherwise). `iterations` is 0 for `ctr_ratio`; `converged` False when `iters` ran out.
    `decay` is the α of the power law used for unreliable slots.
    """

    propensity: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    reliable: np.ndarray
    method: str
    relevance_by: str
    cascade: bool
    stop_after_click: float
    iterations: int
    converged: bool
    decay: float

    @property
    def max_position(self) -> int:
        return len(self.propensity) - 1


# -- the impression log ----------------------------------------------------------------------------
def impressions_with_clicks(
    store: Store,
    since_ts: int | None = None,
    until_ts: int | None = None,
    *,
    max_click_delay_s: int = DEFAULT_MAX_CLICK_DELAY_S,
) -> ImpressionLog:
    """The store's slate impressions shown in [since_ts, until_ts), each with whether it was clicked.

    Rows are the impressions with a position (≥ 0). A slate is identified by its request, but the
    Store's events carry no `request_id` today (ingest drops it), so a slate here is the
    impressions sharing (shopper, session, surface, ts): exact for the synthetic store, which
    logs a slate's impressions at one instant, and for clients that post a slate at once.
    A click with a position is matched to the latest impression of the same shopper, item and
    position at or before it, at most `max_click_delay_s` earlier: its own slate, not an older
    one that showed the same item in the same slot. Clicks after `until_ts` still count for the
    impressions before it. A repeated (slate, position) keeps its first impression.
    Vectorised (polars sorts and an as-of join): O(m log m) for m events.
    """
    ev = store.events
    pos = ev.position.astype(np.int32)
    is_imp = (ev.type == int(EventType.IMPRESSION)) & (pos >= 0)
    if since_ts is not None:
        is_imp &= ev.ts >= since_ts
    if until_ts is not None:
        is_imp &= ev.ts < until_ts
    at = np.flatnonzero(is_imp)
    slate_key = ["user", "session", "ts", "surface"]
    imp = (
        pl.DataFrame(
            {
                "ts": ev.ts[at],
                "user": ev.user_row[at],
                "session": ev.session_row[at],
                "surface": ev.surface[at],
                "item": ev.item_row[at],
                "position": pos[at],
            }
        )
        .unique([*slate_key, "position"], keep="first", maintain_order=True)
        .sort([*slate_key, "position"])
    )
    starts = np.ones(imp.height, dtype=bool)
    if imp.height:
        key = imp.select(slate_key).to_numpy()
        starts[1:] = np.any(key[1:] != key[:-1], axis=1)
    slate = np.cumsum(starts, dtype=np.int64) - 1
    imp = imp.with_columns(slate=pl.Series(slate.astype(np.int32)), row=pl.Series(np.arange(imp.height, dtype=np.int64)))
    clicked = np.zeros(imp.height, dtype=np.int8)
    is_click = (ev.type == int(EventType.CLICK)) & (pos >= 0)
    if imp.height and is_click.any():
        ck = np.flatnonzero(is_click)
        clicks = pl.DataFrame(
            {"ts": ev.ts[ck], "user": ev.user_row[ck], "item": ev.item_row[ck], "position": pos[ck]}
        ).sort("ts")
        matched = clicks.join_asof(
            imp.select("ts", "user", "item", "position", "row").sort("ts"),
            on="ts",
            by=["user", "item", "position"],
            strategy="backward",
            tolerance=int(max_click_delay_s),
            check_sortedness=False,
        )["row"].drop_nulls()
        clicked[matched.to_numpy()] = 1
    return ImpressionLog(
        slate=imp["slate"].to_numpy().astype(np.int32),
        position=imp["position"].to_numpy().astype(np.int16),
        item_row=imp["item"].to_numpy().astype(np.int32),
        user_row=imp["user"].to_numpy().astype(np.int32),
        surface=imp["surface"].to_numpy().astype(np.int8),
        ts=imp["ts"].to_numpy().astype(np.int64),
        clicked=clicked,
        n_slates=int(slate[-1]) + 1 if len(slate) else 0,
    )


def _clicks_above(slate: np.ndarray, clicked: np.ndarray) -> np.ndarray:
    """int16 [n]: for rows sorted by (slate, position), the clicks earlier in the same slate."""
    n = len(slate)
    if n == 0:
        return np.zeros(0, dtype=np.int16)
    c = clicked.astype(np.int64)
    before = np.cumsum(c) - c  # clicks in earlier rows of the whole log
    starts = np.ones(n, dtype=bool)
    starts[1:] = slate[1:] != slate[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    return (before - before[first]).astype(np.int16)


# -- estimation ------------------------------------------------------------------------------------
def estimate_propensities(
    log: ImpressionLog,
    max_position: int,
    method: Method = "poisson",
    *,
    cascade: bool = False,
    relevance_by: RelevanceBy = "item_surface",
    iters: int | None = None,
    tol: float = DEFAULT_TOLERANCE,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
    min_impressions: int = DEFAULT_MIN_IMPRESSIONS,
) -> Propensities:
    """Examination propensities for slots 0..max_position (module docstring: model and methods;
    the default "poisson" is the recommended one, "em" its regression-EM alternative).

    Rows at positions above `max_position` are left out (ignoring the bottom of a slate is an
    exact marginal for every model here, the cascade included). `iters` defaults to
    DEFAULT_ITERATIONS[method]; `prior_strength` is used by "em" only; "item_surface_user" is
    for "poisson" only. Raises PositionBiasError on bad arguments, when the log has no rows or
    no clicks in range, when slot 0 has fewer than `min_impressions` rows or no click
    (everything is relative to it), or when no other slot has `min_impressions` rows.
    Time O(iters · n) for n rows ("poisson" converges in tens of iterations, "em" in hundreds:
    0.1–0.5 s and 2–3 s on the `small` store's 0.78M impressions, 2 cores), memory O(n).
    """
    if method not in METHODS:
        raise PositionBiasError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if relevance_by not in RELEVANCE_BY:
        raise PositionBiasError(f"unknown relevance_by {relevance_by!r}; expected one of {', '.join(RELEVANCE_BY)}")
    if relevance_by == "item_surface_user" and method != "poisson":
        raise PositionBiasError("relevance_by='item_surface_user' needs method='poisson' (a multiplicative shopper effect)")
    if cascade and method == "ctr_ratio":
        raise PositionBiasError("ctr_ratio has no cascade variant; use method='em' or 'poisson' with cascade=True")
    if max_position < 1:
        raise PositionBiasError(f"max_position must be ≥ 1 (propensities are relative to slot 0), got {max_position}")
    if not (prior_strength >= 0 and math.isfinite(prior_strength)):
        raise PositionBiasError(f"prior_strength must be a finite number ≥ 0, got {prior_strength}")
    if min_impressions < 1:
        raise PositionBiasError(f"min_impressions must be ≥ 1, got {min_impressions}")
    n_iter = DEFAULT_ITERATIONS.get(method, 0) if iters is None else int(iters)
    if method != "ctr_ratio" and n_iter < 1:
        raise PositionBiasError(f"iters must be ≥ 1, got {iters}")
    if np.any(log.position < 0):
        raise PositionBiasError("positions must be ≥ 0 (an impression not from a slate has no slot)")
    if not np.all((log.clicked == 0) | (log.clicked == 1)):
        raise PositionBiasError("clicked must be 0 or 1")
    if len(log) > 1 and np.any(np.diff(log.slate.astype(np.int64)) < 0):
        raise PositionBiasError("the log must be ordered by slate (as impressions_with_clicks returns it)")

    K = max_position + 1
    keep = log.position <= max_position
    pos = log.position[keep].astype(np.int64)
    c = log.clicked[keep].astype(np.float64)
    n_k = np.bincount(pos, minlength=K).astype(np.int64)
    c_k = np.bincount(pos, weights=c, minlength=K).round().astype(np.int64)
    if len(pos) == 0:
        raise PositionBiasError(f"no impressions at positions 0..{max_position}: nothing to estimate")
    if c_k.sum() == 0:
        raise PositionBiasError(
            f"{len(pos)} impressions and no click at positions 0..{max_position}: "
            "examination cannot be told from relevance without clicks"
        )
    if n_k[0] < min_impressions or c_k[0] == 0:
        raise PositionBiasError(
            f"slot 0 has {n_k[0]} impressions and {c_k[0]} clicks (need ≥ {min_impressions} impressions and a click): "
            "propensities are relative to slot 0"
        )
    reliable = n_k >= min_impressions
    if not reliable[1:].any():
        raise PositionBiasError(
            f"no slot but 0 has ≥ {min_impressions} impressions (counts {n_k[: min(K, 12)].tolist()}): "
            "a curve needs at least two slots"
        )

    stop, it, converged = math.nan, 0, True
    if method == "ctr_ratio":
        ctr = c_k / np.maximum(n_k, 1)
        theta = ctr / ctr[0]
    else:
        above = log.clicks_above()[keep].astype(np.int64) if cascade else np.zeros(len(pos), dtype=np.int64)
        surface = log.surface[keep].astype(np.int64)
        group, group_class = _relevance_groups(log.item_row[keep], surface, relevance_by)
        if method == "em":
            theta, stop, it, converged = _fit_em(
                pos, c, group, group_class, log.slate[keep].astype(np.int64), above, K, cascade,
                n_iter, tol, prior_strength,
            )  # fmt: skip
        else:
            user = log.user_row[keep].astype(np.int64) if relevance_by == "item_surface_user" else None
            theta, stop, it, converged = _fit_poisson(pos, c, group, user, above, K, cascade, n_iter, tol)
    theta = np.maximum(theta / theta[0], MIN_PROPENSITY)
    theta, decay = _fill_unreliable(theta, n_k, reliable)
    return Propensities(
        propensity=theta,
        impressions=n_k,
        clicks=c_k,
        reliable=reliable,
        method=method,
        relevance_by="" if method == "ctr_ratio" else relevance_by,
        cascade=cascade,
        stop_after_click=float(stop),
        iterations=it,
        converged=converged,
        decay=decay,
    )


def _relevance_groups(item_row: np.ndarray, surface: np.ndarray, relevance_by: str) -> tuple[np.ndarray, np.ndarray]:
    """(dense bucket per row int64 [n], the bucket's class int64 [G]: its surface for item ×
    surface buckets, 0 for item buckets). The class is what "em" shrinks a bucket towards."""
    item = item_row.astype(np.int64)
    if relevance_by == "item":
        group = np.unique(item, return_inverse=True)[1].astype(np.int64)
        return group, np.zeros(int(group.max()) + 1, dtype=np.int64)
    group = np.unique(item * 256 + (surface & 0xFF), return_inverse=True)[1].astype(np.int64)
    group_class = np.zeros(int(group.max()) + 1, dtype=np.int64)
    group_class[group] = surface
    return group, group_class


def _fit_em(
    pos: np.ndarray,
    c: np.ndarray,
    group: np.ndarray,
    group_class: np.ndarray,
    slate: np.ndarray,
    above: np.ndarray,
    K: int,
    cascade: bool,
    iters: int,
    tol: float,
    prior_strength: float,
) -> tuple[np.ndarray, float, int, bool]:
    """Regression EM; (θ float64 [K] with θ_0 = 1, s or NaN, iterations, converged)."""
    G = len(group_class)
    n_class = int(group_class.max()) + 1
    clicked = c > 0.5
    bounds = np.flatnonzero(np.r_[True, slate[1:] != slate[:-1], True]).astype(np.int64)
    n_clicks = float(c.sum())
    theta = np.full(K, 0.5)  # not 1: with every slot surely examined, EM never leaves θ = 1
    theta[0] = 1.0
    ctr = (np.bincount(group, weights=c, minlength=G) + c.mean()) / (np.bincount(group, minlength=G) + 1.0)
    gamma = np.clip(ctr, 1e-6, 1.0 - 1e-6)
    s = 0.5 if cascade else 0.0
    for it in range(1, iters + 1):
        th_num, th_den, g_num, g_den, stopped = _em_step(
            pos, clicked, group, above, bounds, theta, gamma, s, cascade, K, G
        )
        new_theta = th_num / np.maximum(th_den, _EPS)
        new_theta[0] = 1.0
        cls_mean = np.bincount(group_class, weights=g_num, minlength=n_class) / np.maximum(
            np.bincount(group_class, weights=g_den, minlength=n_class), _EPS
        )
        gamma = (g_num + prior_strength * cls_mean[group_class]) / np.maximum(g_den + prior_strength, _EPS)
        gamma = np.clip(gamma, 1e-9, 1.0 - 1e-9)
        if cascade:
            s = float(np.clip(stopped / max(n_clicks, 1.0), 1e-6, 1.0 - 1e-6))
        moved = float(np.max(np.abs(new_theta - theta)))
        theta = new_theta
        if moved < tol:
            return theta, s if cascade else math.nan, it, True
    return theta, s if cascade else math.nan, iters, False


@njit(cache=True, nogil=True)
def _em_step(
    pos: np.ndarray,
    clicked: np.ndarray,
    group: np.ndarray,
    above: np.ndarray,
    bounds: np.ndarray,
    theta: np.ndarray,
    gamma: np.ndarray,
    s: float,
    cascade: bool,
    K: int,
    G: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """One E-step with the M-step's sums, one pass over rows sorted by (slate, position).

    Returns per slot the weighted posterior examination and weight (θ = ratio), per bucket the
    weighted posterior relevance and weight, and Σ_slates π (the expected number of stops).
    A row's weight is the probability it was reachable: 1, or 1 − π for the rows below its
    slate's last click under the cascade (an unreachable row says nothing about X or R).
    """
    th_num = np.zeros(K)
    th_den = np.zeros(K)
    g_num = np.zeros(G)
    g_den = np.zeros(G)
    stopped = 0.0
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        n_clicks = 0
        log_q = 0.0
        if cascade:
            for r in range(lo, hi):
                n_clicks += clicked[r]
            for r in range(lo, hi):
                if not clicked[r] and n_clicks > 0 and above[r] == n_clicks:
                    log_q += np.log(max(1.0 - theta[pos[r]] * gamma[group[r]], 1e-12))
        pi = 0.0
        if n_clicks > 0:
            pi = s / (s + (1.0 - s) * np.exp(log_q))
            stopped += pi
        for r in range(lo, hi):
            t = theta[pos[r]]
            g = gamma[group[r]]
            if clicked[r]:
                w, pe, pr = 1.0, 1.0, 1.0
            else:
                d = max(1.0 - t * g, 1e-12)
                pe = t * (1.0 - g) / d
                pr = g * (1.0 - t) / d
                w = 1.0 - pi if (n_clicks > 0 and above[r] == n_clicks) else 1.0
            th_num[pos[r]] += w * pe
            th_den[pos[r]] += w
            g_num[group[r]] += w * pr
            g_den[group[r]] += w
    return th_num, th_den, g_num, g_den, stopped


def _fit_poisson(
    pos: np.ndarray,
    c: np.ndarray,
    group: np.ndarray,
    user: np.ndarray | None,
    above: np.ndarray,
    K: int,
    cascade: bool,
    iters: int,
    tol: float,
) -> tuple[np.ndarray, float, int, bool]:
    """Poisson working likelihood, E[click] = θ_k·(1 − s)^above·γ_g(·β_u); coordinate-wise
    closed-form updates (each block's exact maximiser given the others), and one Newton step on
    log(1 − s) per iteration. (θ float64 [K] with θ_0 = 1, s or NaN, iterations, converged)."""
    G = int(group.max()) + 1
    c_g = np.bincount(group, weights=c, minlength=G)
    c_k = np.bincount(pos, weights=c, minlength=K)
    theta = np.full(K, 0.5)
    theta[0] = 1.0
    beta = np.ones(1 if user is None else int(user.max()) + 1)
    c_u = None if user is None else np.bincount(user, weights=c, minlength=len(beta))
    b_row = np.ones(len(pos)) if user is None else beta[user]
    s = 0.5 if cascade else 0.0
    for it in range(1, iters + 1):
        a = (1.0 - s) ** above if cascade else 1.0
        gamma = c_g / np.maximum(np.bincount(group, weights=theta[pos] * a * b_row, minlength=G), _EPS)
        if user is not None:
            beta = c_u / np.maximum(np.bincount(user, weights=theta[pos] * a * gamma[group], minlength=len(beta)), _EPS)
            b_row = beta[user]
        exposure = a * gamma[group] * b_row
        new_theta = c_k / np.maximum(np.bincount(pos, weights=exposure, minlength=K), _EPS)
        new_theta = new_theta / new_theta[0]
        if cascade:
            mu = new_theta[pos] * exposure
            score = float((above * (c - mu)).sum())
            slope = float((above * above * mu).sum())
            if slope > 0:
                s = 1.0 - math.exp(min(math.log(1.0 - s) + score / slope, -1e-6))
        moved = float(np.max(np.abs(new_theta - theta)))
        theta = new_theta
        if moved < tol:
            return theta, s if cascade else math.nan, it, True
    return theta, s if cascade else math.nan, iters, False


def _fill_unreliable(theta: np.ndarray, n_k: np.ndarray, reliable: np.ndarray) -> tuple[np.ndarray, float]:
    """θ with unreliable slots replaced by (1 + k)^(−α), α fitted on the reliable slots ≥ 1
    (weighted by impressions, through the origin in log-log space, α ≥ 0); and α."""
    k = np.arange(len(theta), dtype=np.float64)
    fit = reliable & (k >= 1)
    x = np.log1p(k[fit])
    y = np.log(theta[fit])
    w = n_k[fit].astype(np.float64)
    alpha = max(float(-(w * x * y).sum() / max(float((w * x * x).sum()), _EPS)), 0.0)
    out = theta.astype(np.float64).copy()
    out[~reliable] = (1.0 + k[~reliable]) ** (-alpha)
    out[0] = 1.0
    return np.maximum(out, MIN_PROPENSITY), alpha


# -- weights ---------------------------------------------------------------------------------------
def ipw_weights(
    positions: np.ndarray,
    propensities: Propensities | np.ndarray,
    clip_at: float | None = None,
    *,
    clicks_above: np.ndarray | None = None,
) -> np.ndarray:
    """float32 [n]: 1 / p, capped at `clip_at`, for impressions at `positions` (int, [n], ≥ 0).

    p is the slot's propensity (a position past the curve's end gets the last slot's). With
    `clicks_above` (int [n], the clicks above each row in its slate: `ImpressionLog.clicks_above`)
    p = θ_k·(1 − s)^clicks_above, for a cascade fit only (`Propensities.cascade`); a marginal
    curve already averages over the clicks above and must be used with the position alone.
    The default cap is 1 / p(min(20, max_position)) of the curve (docs/ranking-objectives.md
    §2): past it a handful of deep clicks would dominate the loss; the cap trades a small bias
    at the deepest slots (and, with clicks above, below a click) for bounded variance: every
    weight is in [1, clip_at] when p ≤ 1. `clip_at` must be ≥ 1.
    """
    cascade_fit = isinstance(propensities, Propensities) and propensities.cascade
    p = np.asarray(propensities.propensity if isinstance(propensities, Propensities) else propensities, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise PositionBiasError("propensities must be a non-empty 1-D array of finite values > 0")
    pos = np.asarray(positions)
    if pos.ndim != 1 or not (np.issubdtype(pos.dtype, np.integer) or len(pos) == 0):
        raise PositionBiasError(f"positions must be a 1-D integer array, got dtype {pos.dtype} and shape {pos.shape}")
    if np.any(pos < 0):
        raise PositionBiasError("positions must be ≥ 0 (an impression not from a slate has no propensity)")
    if clip_at is None:
        clip_at = 1.0 / p[min(DEFAULT_CLIP_POSITION, len(p) - 1)]
    if not clip_at >= 1.0:
        raise PositionBiasError(f"clip_at must be ≥ 1 (a weight below 1 would count a click for less than one), got {clip_at}")
    prop = p[np.minimum(pos.astype(np.int64), len(p) - 1)]
    if clicks_above is not None:
        if not cascade_fit:
            raise PositionBiasError("clicks_above needs a cascade fit (estimate_propensities(..., cascade=True))")
        above = np.asarray(clicks_above)
        if above.shape != pos.shape or np.any(above < 0):
            raise PositionBiasError(f"clicks_above must be ≥ 0 with the positions' shape {pos.shape}, got {above.shape}")
        prop = prop * (1.0 - propensities.stop_after_click) ** above.astype(np.float64)
    return np.minimum(1.0 / prop, clip_at).astype(np.float32)
