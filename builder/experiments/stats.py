"""The statistics of an online experiment, on plain arrays (one entry per randomisation unit).

The shopper is the unit that is randomised, and one shopper makes many requests, so requests are
not independent: a request-level ratio (clicks / requests) is a ratio of two per-unit sums and its
variance comes from the delta method over units (Deng, Knoblich, Lu 2018, "Applying the delta
method in metric analytics"), not from a binomial over requests, which would be too narrow. A
per-unit proportion (conversion) is a plain two-proportion z-test. Revenue per request is heavy
tailed, so it gets a Poisson bootstrap over units (each unit weighted by an independent
Poisson(1) draw, which resamples clusters without an index gather and parallelises as one
matrix product per chunk).

All intervals are two-sided at 1 − alpha. Undefined values (an empty arm, a zero control) are
NaN here; the Analysis turns them into nulls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

NAN = float("nan")
# Cells (replicates × units) of one bootstrap chunk: 4 M float64 weights ≈ 32 MB at a time.
BOOTSTRAP_CHUNK_CELLS = 1 << 22


@dataclass(frozen=True, slots=True)
class Comparison:
    """Treatment against control on one metric."""

    control: float  # the control's value
    treatment: float
    abs_diff: float  # treatment − control
    abs_ci: tuple[float, float]
    rel_diff: float  # treatment / control − 1; NaN when the control is 0
    rel_ci: tuple[float, float]
    p_value: float  # two-sided, H0: no difference
    method: str  # "delta", "two-proportion z", "poisson bootstrap"


def z_critical(alpha: float) -> float:
    """The two-sided normal quantile for a 1 − alpha interval (1.96 at 0.05)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    return float(sps.norm.ppf(1 - alpha / 2))


def _p_normal(diff: float, se: float) -> float:
    if not (math.isfinite(diff) and math.isfinite(se)):
        return NAN
    if se == 0:
        return 1.0 if diff == 0 else 0.0
    return math.erfc(abs(diff / se) / math.sqrt(2))


def _interval(centre: float, se: float, z: float) -> tuple[float, float]:
    return (centre - z * se, centre + z * se)


def ratio_variance(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """(Σnum / Σden, its variance) for float64 [n] per-unit sums, by the delta method.

    With X̄, Ȳ the unit means, Var(X̄/Ȳ) ≈ (σ²_X/μ²_Y − 2 μ_X σ_XY/μ³_Y + μ²_X σ²_Y/μ⁴_Y) / n, the
    moments estimated with n − 1. NaN ratio when Σden = 0; NaN variance when n < 2.
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"num and den must be 1-d arrays of one length; got {num.shape} and {den.shape}")
    n = num.size
    if n == 0:
        return NAN, NAN
    mx, my = float(num.mean()), float(den.mean())
    if my == 0:
        return NAN, NAN
    ratio = mx / my
    if n < 2:
        return ratio, NAN
    vx = float(num.var(ddof=1))
    vy = float(den.var(ddof=1))
    cxy = float(np.dot(num - mx, den - my) / (n - 1))
    var = (vx / my**2 - 2 * mx * cxy / my**3 + mx**2 * vy / my**4) / n
    return ratio, max(var, 0.0)  # rounding can leave a tiny negative for near-constant ratios


def _relative(rc: float, vc: float, rt: float, vt: float, z: float) -> tuple[float, tuple[float, float]]:
    """rt/rc − 1 and its interval: delta method on the ratio of two independent estimates."""
    if not (math.isfinite(rc) and rc != 0 and math.isfinite(rt)):
        return NAN, (NAN, NAN)
    rel = rt / rc - 1
    var = vt / rc**2 + rt**2 * vc / rc**4
    return rel, _interval(rel, math.sqrt(var), z) if math.isfinite(var) else (NAN, NAN)


def compare_ratio(num_c: np.ndarray, den_c: np.ndarray, num_t: np.ndarray, den_t: np.ndarray, alpha: float) -> Comparison:
    """Σnum/Σden of treatment against control (per-unit sums, float64 [n_c] and [n_t]), delta
    method: z-test on the difference, normal intervals on the absolute and relative difference."""
    z = z_critical(alpha)
    rc, vc = ratio_variance(num_c, den_c)
    rt, vt = ratio_variance(num_t, den_t)
    diff = rt - rc
    se = math.sqrt(vc + vt) if math.isfinite(vc + vt) else NAN
    rel, rel_ci = _relative(rc, vc, rt, vt, z)
    return Comparison(rc, rt, diff, _interval(diff, se, z), rel, rel_ci, _p_normal(diff, se), "delta")


def ratio_interval(num: np.ndarray, den: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """(ratio, low, high): one arm's Σnum/Σden with its delta-method interval."""
    r, v = ratio_variance(num, den)
    lo, hi = _interval(r, math.sqrt(v), z_critical(alpha)) if math.isfinite(v) else (NAN, NAN)
    return r, lo, hi


def compare_proportions(x_c: int, n_c: int, x_t: int, n_t: int, alpha: float) -> Comparison:
    """x/n of treatment against control, one Bernoulli per unit: the pooled two-proportion z-test
    for the p-value, unpooled (Wald) intervals for the differences."""
    z = z_critical(alpha)
    if min(n_c, n_t) <= 0:
        return Comparison(x_c / n_c if n_c else NAN, x_t / n_t if n_t else NAN, NAN, (NAN, NAN), NAN, (NAN, NAN), NAN, "two-proportion z")
    if not (0 <= x_c <= n_c and 0 <= x_t <= n_t):
        raise ValueError(f"successes must lie in [0, n]; got {x_c}/{n_c} and {x_t}/{n_t}")
    pc, pt = x_c / n_c, x_t / n_t
    pooled = (x_c + x_t) / (n_c + n_t)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
    vc, vt = pc * (1 - pc) / n_c, pt * (1 - pt) / n_t
    diff = pt - pc
    rel, rel_ci = _relative(pc, vc, pt, vt, z)
    return Comparison(pc, pt, diff, _interval(diff, math.sqrt(vc + vt), z), rel, rel_ci, _p_normal(diff, se0), "two-proportion z")


def proportion_interval(x: int, n: int, alpha: float) -> tuple[float, float, float]:
    """(x/n, low, high) with the Wilson score interval (sound near 0 and 1, unlike Wald)."""
    if n <= 0:
        return NAN, NAN, NAN
    z = z_critical(alpha)
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, centre - half, centre + half


def poisson_bootstrap(num: np.ndarray, den: np.ndarray, replicates: int = 2000, seed: int | np.random.SeedSequence | list[int] = 0) -> np.ndarray:
    """float64 [replicates]: Σ wᵢ numᵢ / Σ wᵢ denᵢ with wᵢ ~ Poisson(1) drawn per unit and
    replicate (Σden = 0 in a replicate gives NaN). Vectorised: one [chunk, n] weight matrix times
    the [n, 2] sums per chunk, chunks of at most BOOTSTRAP_CHUNK_CELLS weights."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"num and den must be 1-d arrays of one length; got {num.shape} and {den.shape}")
    if replicates < 1:
        raise ValueError(f"replicates must be ≥ 1; got {replicates}")
    out = np.full(replicates, NAN)
    n = num.size
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    sums = np.stack([num, den], axis=1)
    step = max(1, BOOTSTRAP_CHUNK_CELLS // n)
    for start in range(0, replicates, step):
        b = min(step, replicates - start)
        weights = rng.poisson(1.0, size=(b, n)).astype(np.float64)
        s = weights @ sums
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start : start + b] = np.where(s[:, 1] > 0, s[:, 0] / s[:, 1], NAN)
    return out


def percentile_interval(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    """The alpha/2 and 1 − alpha/2 percentiles of the finite replicates."""
    r = replicates[np.isfinite(replicates)]
    if r.size == 0:
        return NAN, NAN
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def compare_bootstrap(control: float, treatment: float, reps_c: np.ndarray, reps_t: np.ndarray, alpha: float) -> Comparison:
    """Treatment against control from independent bootstrap replicates of each arm (float64
    [B] each, e.g. `poisson_bootstrap`): percentile intervals of the replicate differences, and
    the two-sided p-value of the interval that just touches 0, 2·min(#d ≤ 0, #d ≥ 0) (+1
    smoothed), so it is never 0 and at least 2/(B+1)."""
    if reps_c.shape != reps_t.shape:
        raise ValueError("both arms need the same number of replicates")
    d = reps_t - reps_c
    ok = np.isfinite(d)
    diff = treatment - control
    if not ok.any():
        return Comparison(control, treatment, diff, (NAN, NAN), NAN, (NAN, NAN), NAN, "poisson bootstrap")
    d = d[ok]
    b = d.size
    p = min(1.0, 2 * min(int((d <= 0).sum()) + 1, int((d >= 0).sum()) + 1) / (b + 1))
    if control != 0 and math.isfinite(control):
        with np.errstate(divide="ignore", invalid="ignore"):
            rel_reps = reps_t[ok] / reps_c[ok] - 1
        rel, rel_ci = treatment / control - 1, percentile_interval(rel_reps, alpha)
    else:
        rel, rel_ci = NAN, (NAN, NAN)
    return Comparison(control, treatment, diff, percentile_interval(d, alpha), rel, rel_ci, p, "poisson bootstrap")


def sample_ratio(observed: np.ndarray, expected_shares: np.ndarray) -> tuple[float, float]:
    """(chi², p) of units per arm (int [k]) against the arms' expected shares (float [k], any
    positive scale): Pearson's goodness of fit with k − 1 degrees of freedom."""
    observed = np.asarray(observed, dtype=np.float64)
    shares = np.asarray(expected_shares, dtype=np.float64)
    if observed.shape != shares.shape or observed.size < 2:
        raise ValueError("a sample-ratio check needs ≥ 2 arms, one expected share each")
    if (shares < 0).any() or shares.sum() <= 0:
        raise ValueError(f"expected shares must be ≥ 0 with a positive sum; got {shares.tolist()}")
    total = observed.sum()
    if total == 0:
        return NAN, NAN
    expected = shares / shares.sum() * total
    if ((expected == 0) & (observed > 0)).any():
        return math.inf, 0.0  # units in an arm that should have none
    keep = expected > 0
    if keep.sum() < 2:
        return 0.0, 1.0
    chi2, p = sps.chisquare(observed[keep], expected[keep])
    return float(chi2), float(p)


def gini(counts: np.ndarray) -> float:
    """The Gini coefficient of non-negative counts (e.g. impressions per SKU, zeros included for
    items never shown): 0 when all are equal, 1 − 1/n when one item has everything; 0 for an
    empty or all-zero input. O(n log n)."""
    x = np.sort(np.asarray(counts, dtype=np.float64).ravel())
    if x.size and x[0] < 0:
        raise ValueError("gini: counts must be ≥ 0")
    n = x.size
    total = float(x.sum())
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2 * np.dot(ranks, x) / (n * total) - (n + 1) / n)
