"""Calibration maps on the serving path: a head's raw score → a probability.

Two shapes of map (artifacts/calibration.py is the file format, builder/calibration.py fits them):

- isotonic: a monotone piecewise-linear function through knots (x_j, y_j), x strictly ascending,
  y non-decreasing in [0, 1]; flat outside [x_0, x_{m−1}] (y_0 below, y_{m−1} above). The
  arithmetic is NumPy's `np.interp`, operation for operation (same slope formula, same
  retry-from-the-right when the product is not finite), so the kernel equals `np.interp` bit
  for bit (including its guard against a non-finite slope) and the builder can evaluate maps
  with either.
- platt: p = 1 / (1 + exp(−(a·s + b))).

A NaN score gives a NaN probability: the ranker never emits one, so a NaN means a broken row
upstream, and passing it on lets the caller's degradation logic see it instead of hiding it
behind a plausible number. ±inf scores clamp like any score outside the knots (isotonic) or
saturate to 0 / 1 (platt).

Scores are read as float64 whatever their dtype (float32 → float64 is exact), so a map fitted
on float64 copies of float32 margins gives the same answer here. `out` may be `scores` itself
(each entry is read before it is written).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _knot_below(v: float, x: np.ndarray) -> int:
    """The j with x[j] ≤ v < x[j + 1], for x[0] ≤ v < x[m − 1] (binary search, ~log2 m steps)."""
    lo = 0
    hi = x.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if x[mid] <= v:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def apply_isotonic(scores: np.ndarray, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """out[i] = the piecewise-linear map through (x, y) at scores[i], for every i.

    scores: float32 or float64 [n]. x, y: float64 [m], m ≥ 2, x strictly ascending and finite,
    y finite (artifacts.calibration checks both when it reads a map; nothing is rechecked here).
    out: float32 or float64 [n] (may be `scores`). NaN score → NaN.
    Complexity O(n·log m) time, no allocation.
    """
    m = x.shape[0]
    x_lo = x[0]
    x_hi = x[m - 1]
    for i in range(scores.shape[0]):
        v = np.float64(scores[i])
        if v != v:
            out[i] = np.nan
        elif v < x_lo:
            out[i] = y[0]
        elif v >= x_hi:
            out[i] = y[m - 1]
        else:
            j = _knot_below(v, x)
            if x[j] == v:
                out[i] = y[j]
            else:
                slope = (y[j + 1] - y[j]) / (x[j + 1] - x[j])
                r = slope * (v - x[j]) + y[j]
                if r != r:  # np.interp's guard against a non-finite slope, kept so the two agree bit for bit
                    r = slope * (v - x[j + 1]) + y[j + 1]
                    if r != r and y[j] == y[j + 1]:
                        r = y[j]
                out[i] = r


@njit(cache=True, nogil=True)
def apply_platt(scores: np.ndarray, a: float, b: float, out: np.ndarray) -> None:
    """out[i] = 1 / (1 + exp(−(a·scores[i] + b))), for every i.

    scores: float32 or float64 [n]. a, b: finite floats. out: float32 or float64 [n] (may be
    `scores`). NaN score → NaN; a very negative logit gives exp overflow → inf → exactly 0.
    Complexity O(n).
    """
    for i in range(scores.shape[0]):
        v = np.float64(scores[i])
        out[i] = 1.0 / (1.0 + np.exp(-(a * v + b)))


def warm() -> None:
    """Compile (or load from cache) both kernels for the production signatures: float32 scores
    calibrated in place (the ranker's output) and float64 scores into a float64 array (the builder
    and the evaluation)."""
    x = np.array([-1.0, 0.0, 2.0], dtype=np.float64)
    y = np.array([0.1, 0.2, 0.9], dtype=np.float64)
    for dtype in (np.float32, np.float64):
        s = np.array([-2.0, 0.5, np.nan], dtype=dtype)
        apply_isotonic(s, x, y, s.copy())
        apply_platt(s, 1.0, 0.0, s.copy())
