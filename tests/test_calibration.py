"""Calibration: PAV against a brute-force reference, the isotonic and Platt fits (monotone,
weights as repeated rows, the small-sample guard, knot compression, recovering known curves),
choosing on held-out rows, the metrics against plain references, the serving kernel against
np.interp, the file format and each refusal, and the reliability plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import types

from artifacts.calibration import (
    MAX_KNOTS,
    CalibrationMap,
    Calibrator,
    encode_calibration,
    map_problems,
    parse_calibration,
    read_calibration,
    write_calibration,
)
from artifacts.errors import BundleCorruptError, BundleFormatError
from builder.calibration import (
    CalibrationInputError,
    apply_map,
    auc,
    choose,
    ece_noise_floor,
    evaluate_head,
    expected_calibration_error,
    fit_isotonic,
    fit_platt,
    log_loss,
    pav,
    plot_reliability,
    reliability_table,
)
from kernels.calibrate import apply_isotonic, apply_platt, warm

EXACT = {"prior_weight": 0.0, "max_knots": None, "tolerance": 0.0}  # pure PAV at block centres, every knot kept


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def distorted_head(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, label, true probability): the score is a monotone but badly non-logistic transform
    of the latent the truth is logistic in, like a GBDT margin trained on a different objective."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    p = sigmoid(1.5 * z - 1.0)
    y = (rng.random(n) < p).astype(np.float64)
    return np.exp(z) + 0.1 * z**3, y, p


# -- PAV ----------------------------------------------------------------------------------------------
def pav_reference(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The min-max formula of isotonic regression: fit_i = max_{j ≤ i} min_{k ≥ i} mean(j..k)."""
    n = len(values)
    out = np.empty(n)
    for i in range(n):
        out[i] = max(min(np.dot(values[j : k + 1], weights[j : k + 1]) / weights[j : k + 1].sum() for k in range(i, n)) for j in range(i + 1))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(1, 4)), min_size=1, max_size=12))
def test_pav_matches_the_min_max_formula(rows: list[tuple[int, int]]) -> None:
    values = np.array([v for v, _ in rows], dtype=np.float64)
    weights = np.array([w for _, w in rows], dtype=np.float64)
    fitted = pav(values, weights)
    np.testing.assert_allclose(fitted, pav_reference(values, weights), rtol=0, atol=1e-12)
    assert np.all(np.diff(fitted) >= 0)


def test_pav_agrees_with_scipy_on_larger_inputs() -> None:
    optimize = pytest.importorskip("scipy.optimize")  # a build extra: an independent implementation to compare with
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=20_000) + np.linspace(-2, 2, 20_000), 1)
    weights = rng.random(20_000) + 0.01
    np.testing.assert_allclose(pav(values, weights), optimize.isotonic_regression(values, weights=weights).x, rtol=0, atol=1e-12)


def test_pav_empty_and_refusals() -> None:
    assert pav(np.zeros(0)).shape == (0,)
    with pytest.raises(CalibrationInputError, match="positive weights"):
        pav(np.ones(3), np.array([1.0, 0.0, 1.0]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(1, 4)), min_size=1, max_size=12))
def test_isotonic_knots_are_the_brute_force_blocks_at_their_weighted_centres(rows: list[tuple[int, int, int]]) -> None:
    scores = np.array([s for s, _, _ in rows], dtype=np.float64) * 0.5
    labels = np.array([y for _, y, _ in rows], dtype=np.float64)
    weights = np.array([w for _, _, w in rows], dtype=np.float64)
    cmap = fit_isotonic(scores, labels, weights, **EXACT)
    # Reference: pool tied scores, brute-force isotonic regression, then one knot per block.
    distinct = np.unique(scores)
    W = np.array([weights[scores == s].sum() for s in distinct])
    S = np.array([(weights * labels)[scores == s].sum() for s in distinct])
    fitted = pav_reference(S / W, W)
    xs, ys, start = [], [], 0
    for end in range(1, len(distinct) + 1):
        if end == len(distinct) or abs(fitted[end] - fitted[start]) > 1e-9:
            xs.append(np.dot(distinct[start:end], W[start:end]) / W[start:end].sum())
            ys.append(fitted[start])
            start = end
    if len(xs) == 1:  # a constant map still has two knots
        assert cmap.y == [ys[0], ys[0]] and cmap.x[0] == xs[0] and cmap.x[1] > xs[0]
        return
    np.testing.assert_allclose(cmap.x, xs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cmap.y, ys, rtol=0, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 400), distinct=st.sampled_from([1, 2, 5, 50, 10_000]), rate=st.sampled_from([0.0, 0.02, 0.3, 1.0]))
def test_isotonic_map_is_monotone_valid_and_never_certain(seed: int, n: int, distinct: int, rate: float) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, distinct, n) * 0.37 - 3.0
    labels = (rng.random(n) < rate).astype(np.float64)
    cmap = fit_isotonic(scores, labels, rng.random(n) * 3)
    assert map_problems(cmap) == []
    assert 2 <= len(cmap.x) <= 256
    # The guard keeps every probability off 0 and 1, even with one class only.
    assert 0.0 < min(cmap.y) and max(cmap.y) < 1.0
    probe = np.sort(np.r_[scores, rng.normal(size=50) * 5, -np.inf, np.inf])
    assert np.all(np.diff(apply_map(cmap, probe)) >= 0)


def test_small_sample_guard_pulls_thin_extreme_blocks_towards_platt() -> None:
    # Perfectly separated data: pure PAV says 0 below and 1 above, a certain answer from 6 rows.
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    labels = np.array([0, 0, 0, 1, 1, 1], dtype=np.float64)
    assert fit_isotonic(scores, labels, **EXACT).y == [0.0, 1.0]
    guarded = fit_isotonic(scores, labels, prior_weight=5.0)
    assert 0.05 < guarded.y[0] < 0.5 < guarded.y[-1] < 0.95
    # A large block barely moves: 2,000 rows at a 30% rate stay at 30% within the pull 5/2005.
    big = fit_isotonic(np.zeros(2000), (np.arange(2000) < 600).astype(np.float64))
    assert big.y[0] == pytest.approx(0.3, abs=0.3 * 5 / 2005 + 1e-12)


def test_weight_two_is_a_duplicated_row() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    scores = np.round(rng.normal(size=n), 2)
    labels = (rng.random(n) < sigmoid(2 * scores - 1)).astype(np.float64)
    weights = rng.integers(0, 4, n).astype(np.float64)  # 0 drops the row
    rows = np.repeat(np.arange(n), weights.astype(np.int64))
    for fit in (fit_isotonic, fit_platt):
        weighted, repeated = fit(scores, labels, weights), fit(scores[rows], labels[rows])
        assert weighted.kind == repeated.kind and weighted.rows < repeated.rows
        np.testing.assert_allclose(weighted.x, repeated.x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(weighted.y, repeated.y, rtol=1e-12, atol=1e-12)
        assert (weighted.a, weighted.b) == pytest.approx((repeated.a, repeated.b), rel=1e-9, abs=1e-12)
        assert weighted.weight == repeated.weight
    p = sigmoid(scores)
    for metric in (log_loss, auc, expected_calibration_error):
        assert metric(p, labels, weights) == pytest.approx(metric(p[rows], labels[rows]), rel=1e-12)


def test_isotonic_is_equivariant_in_the_score_scale() -> None:
    scores, labels, _ = distorted_head(20_000, seed=4)
    a, b = fit_isotonic(scores, labels), fit_isotonic(10.0 * scores - 3.0, labels)
    np.testing.assert_allclose(b.y, a.y, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.x, 10.0 * np.asarray(a.x) - 3.0, rtol=1e-9, atol=1e-9)


def test_knot_compression_bounds_the_error_it_reports() -> None:
    scores, labels, _ = distorted_head(200_000, seed=5)
    full = fit_isotonic(scores, labels, max_knots=None, tolerance=0.0)
    assert full.max_error == 0.0
    for tolerance, cap in ((1e-3, 256), (1e-3, 8)):
        small = fit_isotonic(scores, labels, max_knots=cap, tolerance=tolerance)
        assert 2 <= len(small.x) <= min(cap, len(full.x))
        assert set(small.x) <= set(full.x)  # compression keeps a subset of the knots
        # Both maps are linear between the full knots, so the largest gap anywhere is the largest at a knot.
        dense = np.linspace(full.x[0] - 1, full.x[-1] + 1, 100_001)
        gap = np.abs(apply_map(small, np.r_[full.x, dense]) - apply_map(full, np.r_[full.x, dense])).max()
        assert gap == pytest.approx(small.max_error, abs=1e-15)
        if cap == 256:
            assert small.max_error <= tolerance
        else:  # the cap forced a coarser map, and it says so
            assert small.max_error > tolerance


def test_constant_scores_give_a_flat_two_knot_map() -> None:
    cmap = fit_isotonic(np.full(50, 2.5), (np.arange(50) < 10).astype(np.float64))
    assert len(cmap.x) == 2 and cmap.x[0] == 2.5 and cmap.y[0] == cmap.y[1]
    assert cmap.y[0] == pytest.approx(0.2, abs=0.02)
    assert fit_platt(np.full(50, 2.5), (np.arange(50) < 10).astype(np.float64)).a == 0.0


# -- Platt --------------------------------------------------------------------------------------------
def test_platt_recovers_a_known_curve_in_any_score_scale() -> None:
    rng = np.random.default_rng(6)
    s = rng.normal(size=200_000)
    y = (rng.random(s.size) < sigmoid(1.7 * s - 0.4)).astype(np.float64)
    cmap = fit_platt(s, y)
    assert cmap.kind == "platt" and cmap.x == [] and cmap.y == []
    assert (cmap.a, cmap.b) == pytest.approx((1.7, -0.4), abs=0.03)
    scaled = fit_platt(1000.0 * s + 5.0, y)  # standardised internally: same curve, in the new units
    assert (scaled.a * 1000.0, scaled.b + 5.0 * scaled.a) == pytest.approx((cmap.a, cmap.b), rel=1e-6)


def test_platt_stays_finite_on_separable_data_and_never_inverts_the_order() -> None:
    s = np.arange(20, dtype=np.float64)
    separable = fit_platt(s, (s >= 10).astype(np.float64))
    assert math.isfinite(separable.a) and separable.a > 0
    inverted = fit_platt(s, (s < 10).astype(np.float64))
    assert inverted.a == 0.0
    assert sigmoid(inverted.b) == pytest.approx((10 + 1) / 22)  # the smoothed base rate: Platt's targets


# -- choosing on held-out rows --------------------------------------------------------------------------
def test_isotonic_calibration_of_a_distorted_score_is_calibrated_on_held_out_rows() -> None:
    scores, labels, truth = distorted_head(200_000, seed=7)
    fit, test = slice(0, 100_000), slice(100_000, None)
    cmap = fit_isotonic(scores[fit], labels[fit])
    calibrated = apply_map(cmap, scores[test])
    assert expected_calibration_error(calibrated, labels[test]) < 0.02
    assert expected_calibration_error(calibrated, labels[test], strategy="uniform") < 0.02
    assert log_loss(calibrated, labels[test]) < log_loss(truth[test], labels[test]) + 0.002
    # The uncalibrated score squashed to (0, 1) is far off: the test is not trivially easy.
    assert expected_calibration_error(sigmoid(scores[test]), labels[test]) > 0.1


def test_choose_prefers_isotonic_for_a_non_logistic_score_and_refits_on_every_row() -> None:
    scores, labels, _ = distorted_head(60_000, seed=8)
    choice = choose(scores, labels, held_out_fraction=0.3, seed=1)
    assert choice.chosen == "isotonic" and choice.map.kind == "isotonic"
    assert set(choice.held_out) == {"isotonic", "platt"}
    assert choice.held_out["isotonic"].log_loss < choice.held_out["platt"].log_loss
    assert choice.fit_rows + choice.held_out_rows == 60_000
    assert 0.25 < choice.held_out_rows / 60_000 < 0.35
    assert choice.map == fit_isotonic(scores, labels)  # the winner, refitted on everything


def test_choose_keeps_a_group_on_one_side_and_refuses_an_impossible_split() -> None:
    scores, labels, _ = distorted_head(5_000, seed=9)
    groups = np.arange(5_000) // 10  # 500 queries of 10 candidates
    choice = choose(scores, labels, held_out_fraction=0.5, seed=2, groups=groups)
    assert choice.held_out_rows % 10 == 0
    with pytest.raises(CalibrationInputError, match="cannot be split"):
        choose(scores[:1], labels[:1], held_out_fraction=0.5)
    with pytest.raises(CalibrationInputError, match="held_out_fraction"):
        choose(scores, labels, held_out_fraction=1.0)


# -- metrics ------------------------------------------------------------------------------------------
def auc_reference(s: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    num = den = 0.0
    for i in np.flatnonzero(y == 1):
        for j in np.flatnonzero(y == 0):
            pair = w[i] * w[j]
            num += pair * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
            den += pair
    return num / den if den > 0 else math.nan


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1), st.sampled_from([0.0, 1.0, 2.5]) | st.floats(0.01, 3.0)), min_size=0, max_size=40))
def test_auc_matches_the_pairwise_reference_with_ties_and_weights(rows: list[tuple[int, int, float]]) -> None:
    s = np.array([r[0] for r in rows], dtype=np.float64)
    y = np.array([r[1] for r in rows], dtype=np.float64)
    w = np.array([r[2] for r in rows], dtype=np.float64)
    expected = auc_reference(s, y, w)
    got = auc(s, y, w)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_auc_extremes() -> None:
    y = np.array([0, 0, 1, 1], dtype=np.float64)
    assert auc(np.array([1.0, 2.0, 3.0, 4.0]), y) == 1.0
    assert auc(np.array([4.0, 3.0, 2.0, 1.0]), y) == 0.0
    assert auc(np.ones(4), y) == 0.5
    assert math.isnan(auc(np.ones(3), np.ones(3)))


def test_log_loss_matches_the_formula_and_clips_certain_mistakes() -> None:
    p = np.array([0.9, 0.2, 0.6])
    y = np.array([1.0, 0.0, 0.0])
    w = np.array([1.0, 2.0, 0.5])
    expected = -(np.log(0.9) + 2 * np.log(0.8) + 0.5 * np.log(0.4)) / 3.5
    assert log_loss(p, y, w) == pytest.approx(expected, rel=1e-12)
    assert log_loss(np.array([0.0]), np.array([1.0])) == pytest.approx(-math.log(1e-15))


def test_ece_is_small_for_a_calibrated_head_and_large_for_a_miscalibrated_one() -> None:
    rng = np.random.default_rng(10)
    p = rng.beta(2.0, 5.0, size=200_000)
    y = (rng.random(p.size) < p).astype(np.float64)
    for strategy in ("quantile", "uniform"):
        assert expected_calibration_error(p, y, strategy=strategy) < 0.01
        assert expected_calibration_error(np.sqrt(p), y, strategy=strategy) > 0.15  # overconfident upwards
        assert expected_calibration_error(p * 0.5, y, strategy=strategy) > 0.1  # underestimates everything


def test_the_noise_floor_is_what_a_calibrated_head_scores_and_shrinks_with_the_sample() -> None:
    rng = np.random.default_rng(13)
    floors = {}
    for n in (1_600, 25_600):
        p = rng.beta(2.0, 5.0, size=n)
        observed = [expected_calibration_error(p, (rng.random(n) < p).astype(np.float64)) for _ in range(40)]
        floors[n] = ece_noise_floor(p)
        # a calibrated head's ECE over fresh labels averages the floor (40 draws: the mean is within ~5%)
        assert floors[n] == pytest.approx(np.mean(observed), rel=0.15)
        assert floors[n] == pytest.approx(0.8 * math.sqrt(np.mean(p * (1 - p)) * 15 / n), rel=0.35)  # the docstring's rule
        assert expected_calibration_error(p * 0.7, (rng.random(n) < p).astype(np.float64)) > 2 * floors[n]  # a real gap stands out
    assert floors[25_600] < floors[1_600] / 3  # ~1/√n: 16 times the rows, a quarter of the floor
    assert ece_noise_floor(np.full(50, 0.0)) == 0.0 and math.isnan(ece_noise_floor(np.zeros(0)))
    assert ece_noise_floor(p, seed=1) != ece_noise_floor(p, seed=2) and ece_noise_floor(p, seed=1) == ece_noise_floor(p, seed=1)
    with pytest.raises(CalibrationInputError, match="replicates"):
        ece_noise_floor(p, replicates=0)


def test_reliability_table_bins_and_ties() -> None:
    rng = np.random.default_rng(11)
    p = rng.random(10_000)
    y = (rng.random(p.size) < p).astype(np.float64)
    table = reliability_table(p, y, bins=10, strategy="quantile")
    assert len(table.count) == 10 and sum(table.count) == 10_000
    assert max(table.count) - min(table.count) <= 2  # equal-weight bins
    assert np.all(np.diff(table.mean_predicted) > 0)
    assert all(lo <= obs <= hi for lo, obs, hi in zip(table.low, table.observed, table.high))
    # Tied predictions never straddle a bin edge: all-equal predictions make one bin.
    flat = reliability_table(np.full(100, 0.3), (np.arange(100) < 30).astype(np.float64))
    assert flat.count == [100] and flat.ece == pytest.approx(0.0, abs=1e-12)
    # Uniform bins: an edge value goes up, 1.0 lands in the last bin, empty bins are left out.
    edges = reliability_table(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0]), bins=2, strategy="uniform")
    assert edges.count == [1, 2]
    empty = reliability_table(np.zeros(0), np.zeros(0))
    assert empty.count == [] and math.isnan(empty.ece)


def test_evaluate_head_reports_everything() -> None:
    scores, labels, _ = distorted_head(50_000, seed=12)
    p = apply_map(fit_isotonic(scores[:25_000], labels[:25_000]), scores[25_000:])
    m = evaluate_head(p, labels[25_000:])
    assert m.rows == 25_000 and m.ece < 0.03 and 0.7 < m.auc < 1.0
    assert m.mean_predicted == pytest.approx(m.positive_rate, abs=0.01)
    assert m.log_loss == pytest.approx(log_loss(p, labels[25_000:]))
    assert 0 < m.ece_floor < 0.03 and m.ece_floor == ece_noise_floor(p)
    assert m.auc == pytest.approx(auc(scores[25_000:], labels[25_000:]), abs=0.002)  # calibration keeps the order (up to ties)
    assert msgspec.json.decode(msgspec.json.encode(m), type=type(m)) == m  # reports serialise as they are


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_isotonic(np.array([0.0, np.nan]), np.array([0, 1])), "non-finite"),
        (lambda: fit_platt(np.array([0.0, 1.0]), np.array([0, 2])), "labels must be 0 or 1"),
        (lambda: fit_isotonic(np.array([0.0, 1.0]), np.array([0, 1]), np.array([1.0, -1.0])), "weights must be finite"),
        (lambda: fit_isotonic(np.array([0.0, 1.0]), np.array([0, 1]), np.zeros(2)), "no rows"),
        (lambda: fit_isotonic(np.zeros(3), np.zeros(2)), "equal length"),
        (lambda: expected_calibration_error(np.array([1.2]), np.array([1])), r"\[0, 1\]"),
        (lambda: reliability_table(np.array([0.5]), np.array([1]), strategy="kmeans"), "strategy"),
    ],
)
def test_bad_inputs_are_refused_with_what_was_expected(call, message: str) -> None:
    with pytest.raises(CalibrationInputError, match=message):
        call()


# -- the serving kernel -------------------------------------------------------------------------------
knot_lists = st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=40, unique=True)


@settings(max_examples=200, deadline=None)
@given(xs=knot_lists, seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300))
def test_isotonic_kernel_is_np_interp_bit_for_bit(xs: list[float], seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.sort(np.asarray(xs))
    y = np.sort(rng.random(x.size))
    y[rng.random(x.size) < 0.3] = 0.0
    y = np.sort(y)
    # Scores inside, outside and exactly on knots, plus NaN and infinities.
    s = np.r_[rng.uniform(x[0] - 5, x[-1] + 5, n), rng.choice(x, min(n, 10)), np.nan, np.inf, -np.inf]
    out = np.empty_like(s)
    apply_isotonic(s, x, y, out)
    np.testing.assert_array_equal(out, np.interp(s, x, y))
    s32 = s.astype(np.float32)
    expected32 = np.interp(s32.astype(np.float64), x, y).astype(np.float32)
    apply_isotonic(s32, x, y, s32)  # in place, float32 as the ranker emits it
    np.testing.assert_array_equal(s32, expected32)


def test_platt_kernel_matches_numpy() -> None:
    s = np.r_[np.linspace(-2000, 2000, 1001), np.nan]
    out = np.empty_like(s)
    apply_platt(s, 0.7, -1.2, out)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(out, 1.0 / (1.0 + np.exp(-(0.7 * s - 1.2))), rtol=1e-15, atol=0)
    assert np.isnan(out[-1]) and out[0] == 0.0 and out[-2] == 1.0
    s32 = s.astype(np.float32)
    apply_platt(s32, 0.7, -1.2, s32)
    np.testing.assert_allclose(s32, out.astype(np.float32), rtol=1e-6)


def test_warm_compiles_the_production_signatures() -> None:
    warm()
    f32, f64 = types.float32[::1], types.float64[::1]
    assert (f32, f64, f64, f32) in apply_isotonic.signatures  # the ranker's float32 margins, in place
    assert (f32, types.float64, types.float64, f32) in apply_platt.signatures
    assert (f64, f64, f64, f64) in apply_isotonic.signatures  # the builder and the evaluation


def test_calibrator_applies_either_kind_and_checks_shapes() -> None:
    iso = CalibrationMap(kind="isotonic", x=[-1.0, 0.0, 2.0], y=[0.1, 0.2, 0.9])
    platt = CalibrationMap(kind="platt", a=2.0, b=-1.0)
    s = np.array([-3.0, -0.5, 1.0, 5.0], dtype=np.float32)
    np.testing.assert_array_equal(Calibrator(iso).apply(s), np.interp(s.astype(np.float64), iso.x, iso.y))
    np.testing.assert_allclose(Calibrator(platt).apply(s), sigmoid(2.0 * s.astype(np.float64) - 1.0), rtol=1e-15)
    with pytest.raises(ValueError, match="same shape"):
        Calibrator(iso).apply(s, np.empty(3, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D scores"):
        Calibrator(iso).apply(s.reshape(2, 2))


# -- the file format ----------------------------------------------------------------------------------
def fitted_maps() -> dict[str, CalibrationMap]:
    scores, labels, _ = distorted_head(20_000, seed=13)
    return {"click": fit_isotonic(scores, labels), "cart": fit_platt(scores, labels), "purchase": fit_isotonic(scores[:500], labels[:500])}


def test_format_round_trip_is_exact(tmp_path: Path) -> None:
    maps = fitted_maps()
    path = tmp_path / "models" / "calibration.json"
    write_calibration(path, maps)
    back = read_calibration(path)
    assert back == maps and list(back) == list(maps)
    s = np.linspace(-5, 30, 1000)
    for name in maps:
        np.testing.assert_array_equal(apply_map(back[name], s), apply_map(maps[name], s))
    doc = json.loads(path.read_text())
    assert doc["magic"] == "AISLE-CALIBRATION" and doc["format_version"] == 1


def corrupt(doc: dict, head: str = "click", **fields: object) -> bytes:
    doc = json.loads(json.dumps(doc))
    doc["heads"][head].update(fields)
    return json.dumps(doc).encode()


GOOD = {"magic": "AISLE-CALIBRATION", "format_version": 1, "heads": {"click": {"kind": "isotonic", "x": [0.0, 1.0, 2.0], "y": [0.1, 0.2, 0.3]}}}


def test_a_well_formed_minimal_file_reads() -> None:
    maps = parse_calibration(json.dumps(GOOD).encode(), "calibration.json")
    assert maps["click"].y == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not a JSON object"),
        (json.dumps({**GOOD, "magic": "AISLE-DRIFT"}).encode(), "magic is 'AISLE-DRIFT'"),
        (json.dumps({**GOOD, "format_version": 0}).encode(), "format_version 0 is not valid"),
        (json.dumps({**GOOD, "heads": {}}).encode(), "no heads"),
        (json.dumps({**GOOD, "heads": {"bad name!": GOOD["heads"]["click"]}}).encode(), "head name"),
        (corrupt(GOOD, kind="spline"), "corrupt calibration maps"),
        (corrupt(GOOD, x=[0.0, 2.0, 1.0]), "not strictly ascending"),
        (corrupt(GOOD, x=[0.0, 1.0, 1.0]), "not strictly ascending"),
        (corrupt(GOOD, y=[0.1, 0.3, 0.2]), "not monotone"),
        (corrupt(GOOD, y=[-0.1, 0.2, 0.3]), r"leave \[0, 1\]"),
        (corrupt(GOOD, y=[0.1, 0.2, 1.5]), r"leave \[0, 1\]"),
        (corrupt(GOOD, x=[0.0, 1.0, 7.25]).replace(b"7.25", b"1e999"), "out of range"),  # JSON has no inf: msgspec refuses 1e999
        (corrupt(GOOD, x=[0.0], y=[0.5]), "1 knots"),
        (corrupt(GOOD, x=list(range(MAX_KNOTS + 1)), y=[0.5] * (MAX_KNOTS + 1)), f"{MAX_KNOTS + 1} knots"),
        (corrupt(GOOD, y=[0.1, 0.2]), "3 x knots but 2 y knots"),
        (corrupt(GOOD, x=[0.0, 1.0, None]), "corrupt calibration maps"),
        (corrupt(GOOD, a=1.0), "carries platt parameters"),
        (corrupt(GOOD, kind="platt", x=[], y=[], a=-1.0), "negative"),
        (corrupt(GOOD, kind="platt", x=[], y=[], a=7.25).replace(b"7.25", b"-1e999"), "out of range"),
        (corrupt(GOOD, kind="platt"), "carries 3 x"),
        (corrupt(GOOD, weight=1.0, positive_weight=2.0), "provenance"),
    ],
)
def test_bad_files_are_refused_as_corrupt_naming_the_file(raw: bytes, message: str) -> None:
    with pytest.raises(BundleCorruptError, match=message) as caught:
        parse_calibration(raw, "bundle/models/calibration.json")
    assert str(caught.value).startswith("bundle/models/calibration.json: ")


def test_a_newer_format_asks_for_an_upgrade() -> None:
    with pytest.raises(BundleFormatError, match="made by a newer builder.*upgrade Aisle"):
        parse_calibration(json.dumps({**GOOD, "format_version": 2}).encode(), "calibration.json")


def test_the_writer_refuses_what_the_reader_would(tmp_path: Path) -> None:
    bad = CalibrationMap(kind="isotonic", x=[0.0, 1.0], y=[0.5, 0.4])
    with pytest.raises(BundleCorruptError, match="not monotone"):
        encode_calibration({"click": bad})
    with pytest.raises(BundleCorruptError, match="not finite"):
        write_calibration(tmp_path / "c.json", {"click": CalibrationMap(kind="isotonic", x=[0.0, math.inf], y=[0.1, 0.2])})
    assert not (tmp_path / "c.json").exists()
    with pytest.raises(BundleCorruptError, match="missing calibration maps"):
        read_calibration(tmp_path / "absent.json")


# -- the plot -----------------------------------------------------------------------------------------
def test_reliability_plot_is_written(tmp_path: Path) -> None:
    tables = {}
    for i, head in enumerate(("click", "cart", "purchase")):
        scores, labels, _ = distorted_head(20_000, seed=20 + i)
        tables[head] = reliability_table(apply_map(fit_isotonic(scores[:10_000], labels[:10_000]), scores[10_000:]), labels[10_000:])
    tables["empty"] = reliability_table(np.zeros(0), np.zeros(0))
    path = plot_reliability(tables, tmp_path / "plots" / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
