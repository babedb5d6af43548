"""Calibrating a ranking head's scores into probabilities, and measuring how well that worked.

Fitting (the map's file format and the serving kernel are artifacts/calibration.py and
kernels/calibrate.py; a map is evaluated here with the same kernel the engine runs):

- `fit_isotonic`: weighted isotonic regression of the label on the score (pool-adjacent-
  violators over tie-pooled scores), then a small-sample guard, then knot compression.
  - Knots sit at each block's weighted-mean score ("centred" isotonic regression, Oron &
    Flournoy 2017) and the map is linear between them: it is continuous, strictly increasing
    between blocks (so a calibrated score keeps the ranking's order except where the data said
    two scores are equally good), and calibrates better than the step function in between.
  - Small-sample guard: a PAV block of a handful of rows has an extreme rate (the top block is
    often all positives, giving p = 1 and an infinite log loss on the next negative). Each
    block's rate is shrunk towards the Platt fit at its centre with `prior_weight` pseudo-rows:
    p_k = (S_k + m·platt(x_k)) / (W_k + m). A large block keeps its own rate (W = 1,000, m = 5:
    0.5% pull), a tiny block borrows the parametric curve's shape, and no output is exactly 0 or
    1. On simulated heads (base rates 2–20%, 3k–2M rows, a score Platt cannot fit exactly) m = 3
    to 10 gave the lowest held-out log loss; m = 0 had 2–5× their excess log loss below 30k rows,
    and m ≥ 30 dragged mid-range blocks towards the misspecified Platt curve. Pseudo-counts
    towards the global rate were the alternative; they pull the tails, where the rates differ
    most from the mean, the wrong way. The shrunk rates are pooled again (PAV, weights W_k + m),
    since shrinking blocks by different amounts can break monotonicity.
  - PAV itself is the classic stack algorithm, compiled with numba (it is sequential by nature:
    each merge depends on the last); the sort, tie pooling and block sums are NumPy.
  - Knot compression: Douglas-Peucker on the polyline with a vertical tolerance (default
    0.001): a knot is kept only if dropping it would move the map by more than the tolerance
    somewhere. Both polylines are linear between the original knots, so the largest
    difference anywhere is the largest at an original knot, which is what is measured and
    stored as `max_error`. If more than `max_knots` knots survive, the tolerance is raised
    (bisection) until they fit. Calibration targets are ~0.01–0.02 in ECE; 0.001 is invisible.
  - Outside the fitted range the map is flat (the first and last block's probability): a
    score beyond anything seen gets the most extreme probability that was supported by data.
- `fit_platt`: p = σ(a·s + b) by Newton's method with a backtracking line search, on Platt's
  smoothed targets (N₊ + 1)/(N₊ + 2) and 1/(N₋ + 2) (Platt 1999; Lin, Lin & Weng 2007), which
  keep the fit finite on separable data. The slope is constrained to a ≥ 0: a calibration map
  must not reverse the head's order; with anti-correlated scores the best such map is the
  (smoothed) base rate.
- `choose`: fits both on one part, keeps the lower held-out log loss, refits it on everything.

Weights are frequency weights throughout: a row of weight 2 is exactly two identical rows,
and `prior_weight` is counted in the same unit (rescale importance weights so a typical row
weighs about 1, or set `prior_weight` accordingly).

Metrics (each weighted, labels 0/1): `expected_calibration_error` (and the `reliability_table`
it is computed from), `ece_noise_floor` (what a perfectly calibrated head would score on the same
rows), `log_loss`, `auc` (ties count one half, O(n log n)), `evaluate_head` (all of them),
`plot_reliability` (PNG, one line per head).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec
import numpy as np
from numba import njit

from artifacts.calibration import CalibrationMap, Calibrator, map_problems

DEFAULT_PRIOR_WEIGHT = 5.0  # pseudo-rows of the Platt curve added to every isotonic block
DEFAULT_MAX_KNOTS = 256
DEFAULT_TOLERANCE = 1e-3  # largest |Δp| knot compression may introduce (before the cap forces more)
DEFAULT_BINS = 15
_PLATT_MAX_ITERATIONS = 100
_LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1 − eps]: a certain mistake costs ~34.5 nats, not inf
_WILSON_Z = 1.959963984540054  # 95% two-sided


class CalibrationInputError(ValueError):
    """Scores, labels or weights that cannot be calibrated or scored (shape, values, empty)."""


class HeldOutScores(msgspec.Struct, frozen=True, kw_only=True):
    log_loss: float
    ece: float


class CalibrationChoice(msgspec.Struct, frozen=True, kw_only=True):
    map: CalibrationMap  # the chosen kind, refitted on every row
    chosen: Literal["isotonic", "platt"]
    held_out: dict[str, HeldOutScores]  # kind -> its scores on the held-out part, fitted on the rest
    fit_rows: int
    held_out_rows: int


class ReliabilityTable(msgspec.Struct, frozen=True, kw_only=True):
    """Per bin (ascending predicted probability; empty bins left out): the weighted mean
    prediction, the weighted observed rate with a 95% Wilson interval (on the bin's effective
    sample size), the bin's weight and row count."""

    strategy: str
    mean_predicted: list[float]
    observed: list[float]
    low: list[float]
    high: list[float]
    weight: list[float]
    count: list[int]

    @property
    def ece(self) -> float:
        w = np.asarray(self.weight, dtype=np.float64)
        if w.sum() <= 0:
            return math.nan
        gap = np.abs(np.asarray(self.mean_predicted) - np.asarray(self.observed))
        return float((w * gap).sum() / w.sum())


class HeadMetrics(msgspec.Struct, frozen=True, kw_only=True):
    ece: float
    log_loss: float
    auc: float
    rows: int
    weight: float
    positive_rate: float  # weighted share of label 1
    mean_predicted: float  # weighted; equal to positive_rate for a calibrated head (calibration-in-the-large)
    table: ReliabilityTable
    # The ECE a perfectly calibrated head would show on these rows from sampling noise alone (mean
    # over labels drawn from its own predictions): an ECE near it is as good as the rows can tell.
    ece_floor: float = math.nan  # NaN in reports written before it was measured


# -- inputs ----------------------------------------------------------------------------------------
def _inputs(
    values: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, what: str, *, probabilities: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values float64 [n], labels float64 [n] of 0/1, weights float64 [n] > 0): rows of zero
    weight dropped. Raises CalibrationInputError on a wrong shape, a non-finite value or weight,
    a label other than 0/1, a negative weight, or a probability outside [0, 1]."""
    v = np.asarray(values, dtype=np.float64)
    y = np.asarray(labels)
    if v.ndim != 1 or y.shape != v.shape:
        raise CalibrationInputError(f"{what}: expected 1-D arrays of equal length, got shapes {v.shape} and {y.shape}")
    if y.dtype == np.bool_:
        y = y.astype(np.float64)
    elif not np.issubdtype(y.dtype, np.number):
        raise CalibrationInputError(f"{what}: labels must be 0/1 numbers or booleans, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if not np.all((y == 0.0) | (y == 1.0)):
        bad = y[(y != 0.0) & (y != 1.0)][:3]
        raise CalibrationInputError(f"{what}: labels must be 0 or 1, found {bad.tolist()}")
    if not np.all(np.isfinite(v)):
        raise CalibrationInputError(f"{what}: {int((~np.isfinite(v)).sum())} non-finite values (expected finite scores)")
    if probabilities and (v.min(initial=0.0) < 0.0 or v.max(initial=0.0) > 1.0):
        raise CalibrationInputError(f"{what}: probabilities must lie in [0, 1], found [{v.min()}, {v.max()}]")
    if weights is None:
        return v, y, np.ones_like(v)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != v.shape:
        raise CalibrationInputError(f"{what}: weights have shape {w.shape}, expected {v.shape}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise CalibrationInputError(f"{what}: weights must be finite and ≥ 0")
    keep = w > 0
    if not keep.all():
        v, y, w = v[keep], y[keep], w[keep]
    return v, y, w


def _fit_inputs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, y, w = _inputs(scores, labels, weights, what)
    if s.size == 0:
        raise CalibrationInputError(f"{what}: no rows of positive weight to fit on")
    return s, y, w


class _Groups(NamedTuple):
    """Rows pooled by distinct score (ascending): every row with one score must get one probability."""

    score: np.ndarray  # float64 [g], strictly ascending
    weight: np.ndarray  # float64 [g], > 0
    positive: np.ndarray  # float64 [g], weight of label 1


def _pool_ties(s: np.ndarray, y: np.ndarray, w: np.ndarray) -> _Groups:
    order = np.argsort(s)  # not stable, twice as fast: rows with one score are summed, their order is moot
    s, w, wy = s[order], w[order], (w * y)[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return _Groups(s[starts], np.add.reduceat(w, starts), np.add.reduceat(wy, starts))


# -- pool adjacent violators ------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _pav_starts(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Boundaries of the weighted least-squares non-decreasing fit of `values` (float64 [n], in
    order) with `weights` (float64 [n], > 0): int64 [k + 1], block b is [starts[b], starts[b + 1])
    and its fitted value is its weighted mean; the block means strictly increase. Classic stack
    PAV: O(n) time (every merge removes a block), O(n) scratch."""
    n = values.shape[0]
    total = np.empty(n, dtype=np.float64)
    weight = np.empty(n, dtype=np.float64)
    starts = np.empty(n + 1, dtype=np.int64)
    k = 0
    for i in range(n):
        total[k] = values[i] * weights[i]
        weight[k] = weights[i]
        starts[k] = i
        k += 1
        while k > 1 and total[k - 2] / weight[k - 2] >= total[k - 1] / weight[k - 1]:
            total[k - 2] += total[k - 1]
            weight[k - 2] += weight[k - 1]
            k -= 1
    starts[k] = n
    return starts[: k + 1].copy()


def pav(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted isotonic (non-decreasing) least-squares fit of `values` in the order given:
    float64 [n], each entry its block's weighted mean. values, weights: float64 [n], weights > 0
    (default 1). O(n)."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    if v.ndim != 1 or w.shape != v.shape or not (w > 0).all():
        raise CalibrationInputError(f"pav: expected 1-D values and positive weights of equal length, got {v.shape} and {w.shape}")
    if v.size == 0:
        return v.copy()
    starts = _pav_starts(v, w)
    means = np.add.reduceat(v * w, starts[:-1]) / np.add.reduceat(w, starts[:-1])
    return np.repeat(means, np.diff(starts))


# -- isotonic -----------------------------------------------------------------------------------------
def fit_isotonic(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    max_knots: int | None = DEFAULT_MAX_KNOTS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> CalibrationMap:
    """Isotonic calibration map of labels on scores (module docstring: centred knots, guard,
    compression, clamping).

    scores: float [n], finite (any scale: the head's raw margin is the natural one). labels: 0/1
    [n]. weights: float [n] ≥ 0, frequency weights (None: all 1; zero-weight rows are ignored).
    prior_weight: the guard's pseudo-rows per block (0 turns the guard off: pure PAV rates).
    max_knots: cap on the knots kept (None: no cap); tolerance: compression's largest allowed
    |Δp| (0: every block's knot is kept, up to max_knots).
    Time O(n log n) for the sort, then O(n): 5M rows in about 3 s on a 2-vCPU VM, mostly the sort.
    """
    s, y, w = _fit_inputs(scores, labels, weights, "fit_isotonic")
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        raise CalibrationInputError(f"fit_isotonic: prior_weight must be finite and ≥ 0, got {prior_weight}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise CalibrationInputError(f"fit_isotonic: tolerance must be finite and ≥ 0, got {tolerance}")
    if max_knots is not None and max_knots < 2:
        raise CalibrationInputError(f"fit_isotonic: max_knots must be at least 2, got {max_knots}")
    g = _pool_ties(s, y, w)
    starts = _pav_starts(g.positive / g.weight, g.weight)[:-1]
    W = np.add.reduceat(g.weight, starts)
    S = np.add.reduceat(g.positive, starts)
    SX = np.add.reduceat(g.weight * g.score, starts)  # Σ w·s per block, for its centre
    lo, hi = g.score[starts], g.score[np.r_[starts[1:], len(g.score)] - 1]
    if prior_weight > 0:
        a, b = _platt_newton(g)
        q = _sigmoid(a * (SX / W) + b)
        T = S + prior_weight * q
        V = W + prior_weight
        merged = _pav_starts(T / V, V)[:-1]
        W, T, V, SX = (np.add.reduceat(arr, merged) for arr in (W, T, V, SX))
        lo, hi = lo[merged], hi[np.r_[merged[1:], len(lo)] - 1]
        rate = T / V
    else:
        rate = S / W
    # Rounding could put a centre an ulp outside its block; inside it, centres strictly ascend.
    x = np.clip(SX / W, lo, hi)
    yk = np.clip(rate, 0.0, 1.0)
    if x.size == 1:  # one block (one distinct score, or no signal at all): a constant map needs two knots
        x = np.array([x[0], np.nextafter(x[0], np.inf)]) if x[0] < np.finfo(np.float64).max else np.array([np.nextafter(x[0], -np.inf), x[0]])
        yk = np.repeat(yk, 2)
    keep = _compress(x, yk, tolerance, max_knots)
    xs, ys = x[keep], yk[keep]
    error = float(np.max(np.abs(np.interp(x, xs, ys) - yk)))
    cmap = CalibrationMap(kind="isotonic", x=xs.tolist(), y=ys.tolist(), rows=int(s.size), weight=float(w.sum()),
                          positive_weight=float(min(g.positive.sum(), w.sum())), max_error=error)  # fmt: skip
    _check_fitted(cmap)
    return cmap


def _douglas_peucker(x: np.ndarray, y: np.ndarray, tolerance: float) -> np.ndarray:
    """bool [k]: the knots to keep so that the polyline through them is within `tolerance` of
    (x, y) at every knot (first and last always kept). O(k log k) typically, O(k²) at worst."""
    k = x.size
    keep = np.zeros(k, dtype=np.bool_)
    keep[0] = keep[-1] = True
    stack = [(0, k - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        inner = slice(i + 1, j)
        line = y[i] + (y[j] - y[i]) * ((x[inner] - x[i]) / (x[j] - x[i]))
        gap = np.abs(y[inner] - line)
        m = int(np.argmax(gap))
        if gap[m] > tolerance:
            cut = i + 1 + m
            keep[cut] = True
            stack.append((i, cut))
            stack.append((cut, j))
    return keep


def _compress(x: np.ndarray, y: np.ndarray, tolerance: float, max_knots: int | None) -> np.ndarray:
    # Tolerance 0 keeps every knot, even exactly collinear ones (the raw fit, e.g. to compare with a reference).
    keep = _douglas_peucker(x, y, tolerance) if tolerance > 0 else np.ones(x.size, dtype=np.bool_)
    if max_knots is None or keep.sum() <= max_knots:
        return keep
    # Fewest-error tolerance that fits the cap: the kept count only falls as the tolerance grows,
    # and 1 (two knots: the whole range of a probability) always fits.
    low, high = max(tolerance, 1e-9), 1.0
    best = _douglas_peucker(x, y, high)
    for _ in range(40):
        mid = math.sqrt(low * high)
        trial = _douglas_peucker(x, y, mid)
        if trial.sum() <= max_knots:
            high, best = mid, trial
        else:
            low = mid
        if high / low < 1.01:
            break
    return best


def _check_fitted(cmap: CalibrationMap) -> None:
    problems = map_problems(cmap)
    if problems:  # a bug here, not bad input: say so rather than write a file the engine refuses
        raise RuntimeError(f"fitted calibration map is malformed ({'; '.join(problems)}); please report this")


# -- Platt --------------------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@njit(cache=True, nogil=True)
def _platt_pass(z: np.ndarray, weight: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> tuple[float, float, float, float, float, float]:
    """One pass over the pooled rows at logit = α·z + β: (loss, ∂α, ∂β, ∂²αα, ∂²αβ, ∂²ββ) of
    Σ w·softplus(logit) − t·logit (the log loss against `target` positive weight t). z, weight,
    target: float64 [g]. One exp and one log1p per row, no temporaries: a few million rows in
    tens of milliseconds, where the same in NumPy allocates a dozen arrays per Newton step."""
    loss = g_a = g_b = h_aa = h_ab = h_bb = 0.0
    for i in range(z.shape[0]):
        logit = alpha * z[i] + beta
        if logit > 0.0:  # softplus and σ written so that exp never overflows
            e = np.exp(-logit)
            softplus = logit + np.log1p(e)
            p = 1.0 / (1.0 + e)
        else:
            e = np.exp(logit)
            softplus = np.log1p(e)
            p = e / (1.0 + e)
        loss += weight[i] * softplus - target[i] * logit
        r = weight[i] * p - target[i]
        h = weight[i] * p * (1.0 - p)
        g_a += r * z[i]
        g_b += r
        h_aa += h * z[i] * z[i]
        h_ab += h * z[i]
        h_bb += h
    return loss, g_a, g_b, h_aa, h_ab, h_bb


def _platt_newton(g: _Groups) -> tuple[float, float]:
    """(a, b) with a ≥ 0, minimising the weighted log loss of σ(a·s + b) against Platt's
    smoothed targets, over tie-pooled rows (the loss depends on the rows only through each
    score's weight and positive weight, so this is exact and cheaper). Newton's method with
    Armijo backtracking on standardised scores."""
    total = float(g.weight.sum())
    n_pos = float(g.positive.sum())
    n_neg = max(total - n_pos, 0.0)
    t_pos, t_neg = (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0)
    target = g.positive * t_pos + (g.weight - g.positive) * t_neg  # smoothed positive weight per score
    base = float(target.sum() / total)
    intercept_only = (0.0, math.log(base / (1.0 - base)))
    # Standardised scores keep the Hessian well conditioned whatever the head's score scale.
    mu = float((g.weight * g.score).sum() / total)
    sd = float(np.sqrt((g.weight * (g.score - mu) ** 2).sum() / total))
    if not sd > 0:
        return intercept_only
    z = (g.score - mu) / sd
    theta = np.array(intercept_only)
    loss, *derivatives = _platt_pass(z, g.weight, target, theta[0], theta[1])
    for _ in range(_PLATT_MAX_ITERATIONS):
        g_a, g_b, h_aa, h_ab, h_bb = derivatives
        grad = np.array([g_a, g_b])
        hess = np.array([[h_aa, h_ab], [h_ab, h_bb]]) + 1e-12 * total * np.eye(2)
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)  # twice the loss reduction Newton predicts
        if not decrement > 1e-14 * total:
            break
        t = 1.0
        while t > 1e-10:
            trial = theta - t * step
            trial_loss, *trial_derivatives = _platt_pass(z, g.weight, target, trial[0], trial[1])
            if trial_loss <= loss - 1e-4 * t * decrement:
                break
            t *= 0.5
        else:
            break  # no descent left at machine precision: converged
        theta, loss, derivatives = trial, trial_loss, trial_derivatives
    if theta[0] < 0:  # the loss is convex, so the constrained optimum sits on a = 0
        return intercept_only
    return float(theta[0] / sd), float(theta[1] - theta[0] * mu / sd)


def fit_platt(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> CalibrationMap:
    """Platt map p = σ(a·s + b), a ≥ 0 (module docstring). scores: float [n], finite; labels:
    0/1 [n]; weights: float [n] ≥ 0, frequency weights (None: all 1). O(n log n) (tie pooling)
    plus a few O(distinct scores) Newton steps."""
    s, y, w = _fit_inputs(scores, labels, weights, "fit_platt")
    g = _pool_ties(s, y, w)
    a, b = _platt_newton(g)
    cmap = CalibrationMap(kind="platt", a=a, b=b, rows=int(s.size), weight=float(w.sum()),
                          positive_weight=float(min(g.positive.sum(), w.sum())))  # fmt: skip
    _check_fitted(cmap)
    return cmap


# -- choosing -----------------------------------------------------------------------------------------
def apply_map(cmap: CalibrationMap, scores: np.ndarray) -> np.ndarray:
    """float64 [n]: the map at `scores`, computed by the serving kernel."""
    return Calibrator(cmap).apply(np.ascontiguousarray(scores, dtype=np.float64))


def choose(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    held_out_fraction: float = 0.3,
    seed: int = 0,
    *,
    groups: np.ndarray | None = None,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    max_knots: int | None = DEFAULT_MAX_KNOTS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> CalibrationChoice:
    """Isotonic or Platt, whichever has the lower log loss on a held-out part when fitted on the
    rest; the winner is then refitted on every row (more data for the map that ships; its
    held-out numbers are those of the same recipe on less data, never of a map scored on its
    own fitting rows). Ties go to Platt, the simpler map.

    A random `held_out_fraction` of rows (of `groups`, int or bytes [n], when given: a query's
    or a session's rows then stay on one side, as correlated rows would otherwise flatter the
    more flexible map) is held out, drawn with `seed`. Raises CalibrationInputError when either
    part would be empty.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise CalibrationInputError(f"choose: held_out_fraction must be in (0, 1), got {held_out_fraction}")
    s, y, w = _inputs(scores, labels, weights, "choose")  # zero weights dropped: split the rows that count
    if groups is not None:
        gr = np.asarray(groups)
        if gr.shape != np.shape(scores):
            raise CalibrationInputError(f"choose: groups have shape {gr.shape}, expected {np.shape(scores)}")
        if weights is not None:
            gr = gr[np.asarray(weights, dtype=np.float64) > 0]
    rng = np.random.default_rng(seed)
    if groups is None:
        held = rng.random(s.size) < held_out_fraction
    else:
        unique, inverse = np.unique(gr, return_inverse=True)
        held = (rng.random(unique.size) < held_out_fraction)[inverse]
    if held.all() or not held.any():
        raise CalibrationInputError(f"choose: {s.size} rows cannot be split into a fitting and a held-out part at fraction {held_out_fraction}")
    fit, out = ~held, held
    options = {"prior_weight": prior_weight, "max_knots": max_knots, "tolerance": tolerance}
    candidates = {"isotonic": fit_isotonic(s[fit], y[fit], w[fit], **options), "platt": fit_platt(s[fit], y[fit], w[fit])}
    scored: dict[str, HeldOutScores] = {}
    for kind, cmap in candidates.items():
        p = apply_map(cmap, s[out])
        scored[kind] = HeldOutScores(log_loss=log_loss(p, y[out], w[out]), ece=expected_calibration_error(p, y[out], w[out]))
    chosen: Literal["isotonic", "platt"] = "isotonic" if scored["isotonic"].log_loss < scored["platt"].log_loss else "platt"
    final = fit_isotonic(s, y, w, **options) if chosen == "isotonic" else fit_platt(s, y, w)
    return CalibrationChoice(map=final, chosen=chosen, held_out=scored, fit_rows=int(fit.sum()), held_out_rows=int(out.sum()))


# -- metrics ------------------------------------------------------------------------------------------
def log_loss(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted mean negative log-likelihood in nats; probabilities clipped to [1e−15, 1 − 1e−15].
    NaN for no rows of positive weight."""
    p, y, w = _inputs(probs, labels, weights, "log_loss", probabilities=True)
    if p.size == 0:
        return math.nan
    p = np.clip(p, _LOG_LOSS_EPS, 1.0 - _LOG_LOSS_EPS)
    return float(-(w * (y * np.log(p) + (1.0 - y) * np.log1p(-p))).sum() / w.sum())


def auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted ROC AUC: the probability that a random positive outscores a random negative
    (each row drawn in proportion to its weight), ties counting one half. NaN when either class
    has no weight. O(n log n)."""
    s, y, w = _inputs(scores, labels, weights, "auc")
    if s.size == 0:
        return math.nan
    g = _pool_ties(s, y, w)
    pos, neg = g.positive, g.weight - g.positive
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return math.nan
    below = np.cumsum(neg) - neg  # negative weight strictly below each distinct score
    return float((pos * (below + 0.5 * neg)).sum() / n_pos / n_neg)  # two divisions: the product of tiny totals underflows


def reliability_table(
    probs: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> ReliabilityTable:
    """Bin predictions and compare each bin's mean prediction with its observed rate.

    "uniform": bins of equal width on [0, 1]. "quantile": edges at the weighted quantiles of the
    predictions, so bins hold about equal weight (the default: heads whose probabilities crowd
    near 0, like a purchase head, still get `bins` informative bins). Either way a value equal to
    an edge goes to the bin above, so tied predictions (an isotonic map's flat steps) never
    straddle two bins; quantile edges that coincide merge their bins, and empty bins are left out.
    """
    if strategy not in ("quantile", "uniform"):
        raise CalibrationInputError(f"reliability_table: strategy must be 'quantile' or 'uniform', got {strategy!r}")
    if bins < 1:
        raise CalibrationInputError(f"reliability_table: bins must be ≥ 1, got {bins}")
    p, y, w = _inputs(probs, labels, weights, "reliability_table", probabilities=True)
    if strategy == "uniform":
        edges = np.arange(1, bins, dtype=np.float64) / bins
    elif p.size:
        order = np.argsort(p)
        cum = np.cumsum(w[order])
        at = np.searchsorted(cum, cum[-1] * np.arange(1, bins) / bins, side="left")
        edges = np.unique(p[order][np.minimum(at, p.size - 1)])
    else:
        edges = np.zeros(0)
    b = np.searchsorted(edges, p, side="right")
    n_bins = edges.size + 1
    W = np.bincount(b, weights=w, minlength=n_bins)
    W2 = np.bincount(b, weights=w * w, minlength=n_bins)
    P = np.bincount(b, weights=w * p, minlength=n_bins)
    Y = np.bincount(b, weights=w * y, minlength=n_bins)
    C = np.bincount(b, minlength=n_bins)
    used = W > 0
    W, W2, P, Y, C = W[used], W2[used], P[used], Y[used], C[used]
    rate = Y / W
    low, high = _wilson(rate, W * W / W2)
    return ReliabilityTable(strategy=strategy, mean_predicted=(P / W).tolist(), observed=rate.tolist(), low=low.tolist(),
                            high=high.tolist(), weight=W.tolist(), count=C.astype(np.int64).tolist())  # fmt: skip


def _wilson(rate: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z2 = _WILSON_Z**2
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = _WILSON_Z * np.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def expected_calibration_error(
    probs: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> float:
    """Σ_bins (bin weight / total weight) · |mean prediction − observed rate| over
    `reliability_table`'s bins. NaN for no rows of positive weight. Even a perfectly calibrated
    head scores about 0.8·√(p(1−p)·bins/n) from sampling noise alone."""
    return reliability_table(probs, labels, weights, bins, strategy).ece


def ece_noise_floor(
    probs: np.ndarray,
    weights: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    strategy: Literal["quantile", "uniform"] = "quantile",
    replicates: int = 20,
    seed: int = 0,
) -> float:
    """The mean ECE of `probs` against labels drawn from `probs` themselves (Bernoulli, seeded):
    what a perfectly calibrated head scores on rows this many, this weighted and this spread,
    from sampling noise alone. Binned ECE is biased upwards on a finite sample; a head whose ECE
    sits near this floor is calibrated as far as the sample can show. NaN for no rows."""
    if replicates < 1:
        raise CalibrationInputError(f"ece_noise_floor: replicates must be ≥ 1, got {replicates}")
    p, _, w = _inputs(probs, np.zeros(np.shape(probs)), weights, "ece_noise_floor", probabilities=True)
    if p.size == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    draws = [reliability_table(p, (rng.random(p.size) < p).astype(np.float64), w, bins, strategy).ece for _ in range(replicates)]
    return float(np.mean(draws))


def evaluate_head(
    probs: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> HeadMetrics:
    """Everything `aisle eval` reports for one calibrated head: ECE with its reliability table and
    its noise floor, log loss, AUC, and calibration in the large (mean prediction against positive
    rate)."""
    table = reliability_table(probs, labels, weights, bins, strategy)
    p, y, w = _inputs(probs, labels, weights, "evaluate_head", probabilities=True)
    total = float(w.sum())
    return HeadMetrics(
        ece=table.ece, log_loss=log_loss(p, y, w), auc=auc(p, y, w), rows=int(p.size), weight=total,
        positive_rate=float((w * y).sum() / total) if total > 0 else math.nan,
        mean_predicted=float((w * p).sum() / total) if total > 0 else math.nan, table=table,
        ece_floor=ece_noise_floor(p, w, bins, strategy),
    )  # fmt: skip


def plot_reliability(tables: Mapping[str, ReliabilityTable], path: Path, title: str = "Reliability per head") -> Path:
    """Write a reliability diagram (PNG): observed rate against mean prediction per bin, one line
    per head with its 95% intervals and ECE, the diagonal for reference, and each bin's share of
    the head's weight underneath. Returns the path written."""
    from matplotlib.figure import Figure  # the OO API on the Agg canvas: no display, no pyplot state

    fig = Figure(figsize=(6.5, 7.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1])
    extent = top_share = 0.0
    for i, (name, t) in enumerate(tables.items()):
        pred, obs = np.asarray(t.mean_predicted), np.asarray(t.observed)
        if pred.size == 0:
            continue
        extent = max(extent, float(pred.max()), float(np.max(t.high)))
        err = np.vstack([np.maximum(obs - np.asarray(t.low), 0.0), np.maximum(np.asarray(t.high) - obs, 0.0)])
        top.errorbar(pred, obs, yerr=err, color=f"C{i}", marker="o", markersize=3, capsize=2, linewidth=1.2, label=f"{name} (ECE {t.ece:.4f})")
        share = np.asarray(t.weight) / np.sum(t.weight)
        # Stems, not a line: with quantile bins every share is equal and the spacing of the stems
        # (where the predictions sit) is what there is to see.
        bottom.vlines(pred, 0.0, share, color=f"C{i}", linewidth=1.0, alpha=0.8)
        bottom.plot(pred, share, color=f"C{i}", marker=".", linestyle="none")
        top_share = max(top_share, float(share.max()))
    # Zoom to where the predictions are (a purchase head lives below 0.1), keeping the diagonal in view.
    limit = min(1.0, max(extent * 1.05, 0.01))
    top.plot([0.0, limit], [0.0, limit], color="0.5", linestyle="--", linewidth=1.0, label="perfectly calibrated")
    top.set_xlim(0.0, limit)
    top.set_ylim(0.0, limit)
    top.set_ylabel("observed rate")
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlim(0.0, limit)
    bottom.set_ylim(0.0, max(top_share * 1.15, 0.01))
    bottom.set_xlabel("mean predicted probability (bin)")
    bottom.set_ylabel("share of weight")
    bottom.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
