"""Drift monitoring: the kernels against NumPy, the reference file as a format, the builder's
histograms, and the engine's monitor on sampled rows (stable traffic, shifted traffic, a bundle
without a reference)."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.drift import Reference, encode_reference, load_reference, pack_edges, parse_reference
from artifacts.errors import BundleCorruptError, BundleFormatError
from artifacts.featurespec import FEATURE_INDEX, FEATURE_NAMES, N_FEATURES
from builder.drift import UNMONITORED, drift_reference, quantile_edges
from builder.ranker_data import TrainingSet
from engine.drift import SCORE, DriftMonitor
from engine.schemas import RecommendQuery
from engine.service import Recommender
from engine.settings import DeadlineSettings, DriftSettings, Settings
from kernels.drift import PSI_EPSILON, bin_index, bin_offsets, move_counts, psi

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "bundle-v1"
SURFACES = ("home", "pdp", "cart")


# -- kernels against plain NumPy -----------------------------------------------------------------
def bins_reference(X: np.ndarray, columns: np.ndarray, edge_lists: list[np.ndarray]) -> np.ndarray:
    offsets = bin_offsets(pack_edges(edge_lists)[1])
    out = np.empty((len(X), len(columns)), np.int64)
    for j, (c, edges) in enumerate(zip(columns, edge_lists)):
        x = X[:, c].astype(np.float64)
        local = np.searchsorted(np.asarray(edges, np.float64), x, side="right")
        out[:, j] = offsets[j] + np.where(np.isnan(x), len(edges) + 1, local)
    return out


def psi_reference(expected: np.ndarray, counts: np.ndarray) -> float:
    a = np.maximum(counts / counts.sum(), PSI_EPSILON)
    e = np.maximum(expected, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 200),
    n_edges=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    nan_share=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_bins_and_counts_match_numpy_with_ties_and_nans(seed: int, n: int, n_edges: list[int], nan_share: float) -> None:
    rng = np.random.default_rng(seed)
    F = len(n_edges) + 2
    # Values on a coarse grid, so many sit exactly on an edge (ties go to the upper bin).
    X = rng.integers(-4, 5, size=(n, F)).astype(np.float32) / 2
    X[rng.random((n, F)) < nan_share] = np.nan
    columns = rng.permutation(F)[: len(n_edges)].astype(np.int32)
    edge_lists = [np.unique(rng.integers(-4, 5, m) / 2).astype(np.float64) for m in n_edges]
    edges, edge_offsets = pack_edges(edge_lists)
    got = bin_index(X, columns, edges, edge_offsets)
    want = bins_reference(X, columns, edge_lists)
    np.testing.assert_array_equal(got, want)
    counts = np.zeros(int(bin_offsets(edge_offsets)[-1]), np.int64)
    move_counts(counts, np.full(3, -1, np.int32), got.ravel())
    np.testing.assert_array_equal(counts, np.bincount(want.ravel(), minlength=len(counts)))
    move_counts(counts, got[: n // 2].ravel(), np.zeros(0, np.int32))  # the first half leaves the window
    np.testing.assert_array_equal(counts, np.bincount(want[n // 2 :].ravel(), minlength=len(counts)))


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sizes=st.lists(st.integers(1, 15), min_size=1, max_size=6), empty_share=st.sampled_from([0.0, 0.3]))
def test_psi_matches_numpy_including_empty_bins(seed: int, sizes: list[int], empty_share: float) -> None:
    rng = np.random.default_rng(seed)
    offsets = np.zeros(len(sizes) + 1, np.int64)
    offsets[1:] = np.cumsum(sizes)
    expected, counts = np.zeros(offsets[-1]), np.zeros(offsets[-1], np.int64)
    for j in range(len(sizes)):
        seg = slice(offsets[j], offsets[j + 1])
        e = rng.random(sizes[j]) * (rng.random(sizes[j]) >= empty_share)
        e[0] += 1e-3
        expected[seg] = e / e.sum()
        c = rng.integers(0, 50, sizes[j]) * (rng.random(sizes[j]) >= empty_share)
        c[-1] += 1
        counts[seg] = c
    got = psi(expected, counts, offsets, PSI_EPSILON)
    want = [psi_reference(expected[offsets[j] : offsets[j + 1]], counts[offsets[j] : offsets[j + 1]]) for j in range(len(sizes))]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_psi_of_no_observations_is_nan() -> None:
    out = psi(np.array([0.5, 0.5]), np.zeros(2, np.int64), np.array([0, 2], np.int64), PSI_EPSILON)
    assert np.isnan(out[0])


def _psi_of(reference_values: np.ndarray, served: np.ndarray) -> float:
    edges = quantile_edges(reference_values.astype(np.float32), np.ones(len(reference_values)))
    flat, offsets = pack_edges([edges])
    col = np.zeros(1, np.int32)
    ref_bins = bin_index(reference_values.reshape(-1, 1).astype(np.float32), col, flat, offsets).ravel()
    expected = np.bincount(ref_bins, minlength=len(edges) + 2) / len(ref_bins)
    counts = np.zeros(len(edges) + 2, np.int64)
    move_counts(counts, np.zeros(0, np.int32), bin_index(served.reshape(-1, 1).astype(np.float32), col, flat, offsets).ravel())
    return float(psi(expected, counts, bin_offsets(offsets), PSI_EPSILON)[0])


def test_psi_is_near_zero_for_the_reference_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(3)
    reference = rng.lognormal(1.0, 0.8, 50_000)
    assert _psi_of(reference, rng.lognormal(1.0, 0.8, 5_000)) < 0.02
    assert _psi_of(reference, rng.lognormal(1.0 + 0.8, 0.8, 5_000)) > 0.5  # one standard deviation up
    assert 0.02 < _psi_of(reference, rng.lognormal(1.0 + 0.2, 0.8, 5_000)) < _psi_of(reference, rng.lognormal(1.5, 0.8, 5_000))


def test_quantile_edges_isolate_a_point_mass_and_merge_ties() -> None:
    values = np.concatenate([np.zeros(700), np.linspace(0.01, 1.0, 300)]).astype(np.float32)
    edges = quantile_edges(values, np.ones(len(values)), 10)
    assert edges == sorted(set(edges)) and edges[0] == 0.0
    assert 0.0 < edges[1] < 1e-30  # [0, next float) holds exactly the zeros
    assert len(edges) <= 11
    assert quantile_edges(np.array([np.nan, np.nan], np.float32), np.ones(2)) == []
    assert quantile_edges(np.full(10, 2.5, np.float32), np.ones(10)) == [2.5]


# -- a synthetic training set: the builder's reference and the engine's monitor ---------------------
def _rows(rng: np.random.Generator, surfaces: np.ndarray, groups: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """float32 [Σ groups, N_FEATURES]: a feature matrix with the structure of real ones (missing
    anchor features on home, a mostly-zero source score, a constant column, surface-dependent
    popularity)."""
    s = np.repeat(surfaces, groups)
    X = rng.normal(size=(len(s), N_FEATURES)).astype(np.float32)
    X[:, FEATURE_INDEX["ctx_surface"]] = np.select([s == "home", s == "pdp"], [0, 1], 2)
    for name in ("anchor_sim", "anchor_same_category", "anchor_same_brand"):
        X[s == "home", FEATURE_INDEX[name]] = np.nan
    X[:, FEATURE_INDEX["item_discount"]] = 0.0
    X[:, FEATURE_INDEX["src_ann"]] = np.where(rng.random(len(s)) < 0.7, 0.0, rng.random(len(s)))
    # Popularity differs a lot between surfaces: a traffic mix unlike the builder's must not look like drift.
    X[:, FEATURE_INDEX["item_log_popularity"]] += np.where(s == "home", 3.0, 0.0) + shift
    return X


def _scores(rng: np.random.Generator, X: np.ndarray, shift: float = 0.0) -> np.ndarray:
    return (0.5 * X[:, FEATURE_INDEX["ann_score"]] + rng.normal(0, 0.3, len(X)) + shift).astype(np.float32)


def _training_set(seed: int = 0) -> TrainingSet:
    rng = np.random.default_rng(seed)
    ts = TrainingSet()
    for side, n_queries in (("train", 900), ("valid", 300)):
        groups = rng.integers(20, 80, n_queries).astype(np.int32)
        surfaces = np.asarray(SURFACES)[rng.choice(3, n_queries, p=[0.5, 0.3, 0.2])]
        ts.X[side] = _rows(rng, surfaces, groups)
        ts.y[side] = np.zeros(len(ts.X[side]), np.int32)
        ts.groups[side] = groups
        ts.surfaces[side] = surfaces
    return ts


@pytest.fixture(scope="module")
def synthetic_reference() -> Reference:
    ts = _training_set()
    return drift_reference(ts, _scores(np.random.default_rng(1), ts.X["valid"]))


def test_the_builder_monitors_every_varying_feature_and_says_why_not_the_rest(synthetic_reference: Reference) -> None:
    ref = synthetic_reference
    assert ref.feature_names == list(FEATURE_NAMES)
    monitored = set(ref.monitored)
    assert monitored | set(ref.skipped) == set(FEATURE_NAMES) and not monitored & set(ref.skipped)
    assert set(UNMONITORED) <= set(ref.skipped)
    assert "constant" in ref.skipped["item_discount"]
    assert {"ann_score", "anchor_sim", "src_ann", "item_log_popularity"} <= monitored
    for f in ref.features:
        h = f.histogram
        assert len(h.edges) >= 1 and np.all(np.diff(h.edges) > 0)
        assert abs(sum(h.pooled) - 1) < 1e-9 and set(h.by_surface) == set(SURFACES)
    anchor = next(f for f in ref.features if f.name == "anchor_sim").histogram
    assert anchor.by_surface["home"][-1] == 1.0 and anchor.by_surface["pdp"][-1] == 0.0  # missing on home only
    assert 0.4 < anchor.pooled[-1] < 0.6  # each query counts once: about half the queries are home pages
    assert ref.score.histogram.edges[0] < ref.score.mean < ref.score.histogram.edges[-1]
    assert ref.surface_queries["home"] > ref.surface_queries["pdp"] > ref.surface_queries["cart"]


def test_the_reference_file_round_trips_and_refuses_damage(synthetic_reference: Reference, tmp_path: Path) -> None:
    raw = encode_reference(synthetic_reference)
    assert parse_reference(raw, "drift.json") == synthetic_reference
    doc = msgspec.json.decode(raw)
    with pytest.raises(BundleFormatError, match="newer builder"):
        parse_reference(msgspec.json.encode({**doc, "format_version": 99}), "drift.json")
    with pytest.raises(BundleCorruptError, match="magic"):
        parse_reference(msgspec.json.encode({**doc, "magic": "NOPE"}), "drift.json")
    with pytest.raises(BundleCorruptError, match="not a JSON object"):
        parse_reference(b"[1, 2", "drift.json")
    bad = msgspec.json.decode(raw)
    bad["features"][0]["histogram"]["edges"] = list(reversed(bad["features"][0]["histogram"]["edges"]))
    with pytest.raises(BundleCorruptError, match="ascending"):
        parse_reference(msgspec.json.encode(bad), "drift.json")
    bad = msgspec.json.decode(raw)
    bad["features"][0]["column"] = bad["features"][1]["column"]
    with pytest.raises(BundleCorruptError, match="claims column"):
        parse_reference(msgspec.json.encode(bad), "drift.json")
    bad = msgspec.json.decode(raw)
    bad["score"]["histogram"]["pooled"] = bad["score"]["histogram"]["pooled"][:-1]
    with pytest.raises(BundleCorruptError, match="proportions"):
        parse_reference(msgspec.json.encode(bad), "drift.json")


def _feed(monitor: DriftMonitor, rng: np.random.Generator, n_requests: int, surface_p: list[float], shift: float = 0.0, score_shift: float = 0.0) -> None:
    for _ in range(n_requests):
        surface = np.asarray(SURFACES)[[rng.choice(3, p=surface_p)]]
        n = int(rng.integers(20, 80))
        X = _rows(rng, surface, np.array([n]), shift)
        monitor.maybe_observe(X, _scores(rng, X, score_shift))


def test_the_monitor_reports_nothing_below_min_rows_then_stable_psi(synthetic_reference: Reference) -> None:
    s = DriftSettings(sample_rate=1.0, rows_per_request=8, window=4000, min_rows=400, threshold=0.2)
    monitor = DriftMonitor(synthetic_reference, s, seed=5)
    rng = np.random.default_rng(11)
    _feed(monitor, rng, 40, [0.5, 0.3, 0.2])
    early = monitor.report()
    assert early.rows == 320 and early.psi == {} and early.score_psi is None and early.mean_score is None and early.drifted == []
    _feed(monitor, rng, 460, [0.5, 0.3, 0.2])
    report = monitor.report()
    assert report.rows == 4000 and report.score_rows == 4000  # the ring holds the last `window` rows
    assert set(report.psi) == set(synthetic_reference.monitored)
    assert max(report.psi.values()) < 0.05 and report.score_psi < 0.05 and report.drifted == []
    assert abs(report.mean_score - report.reference_mean_score) < 0.05
    assert monitor.report() is report  # nothing new: the cached report


def test_shifted_rows_are_marked_as_drifted(synthetic_reference: Reference) -> None:
    s = DriftSettings(sample_rate=1.0, rows_per_request=8, window=3000, min_rows=500, threshold=0.2)
    monitor = DriftMonitor(synthetic_reference, s, seed=6)
    _feed(monitor, np.random.default_rng(12), 400, [0.5, 0.3, 0.2], shift=1.0, score_shift=0.5)
    report = monitor.report()
    assert report.psi["item_log_popularity"] > 0.3  # one standard deviation up
    assert "item_log_popularity" in report.drifted and SCORE in report.drifted
    assert report.score_psi > 0.2 and report.mean_score > report.reference_mean_score + 0.3
    assert max(v for k, v in report.psi.items() if k != "item_log_popularity") < 0.1  # only the shifted feature


def test_a_traffic_mix_unlike_the_builders_is_not_drift(synthetic_reference: Reference) -> None:
    """Only home pages served: popularity (3 higher on home) and the missing anchor features would
    look drifted against the pooled reference; each surface is compared with its own."""
    s = DriftSettings(sample_rate=1.0, rows_per_request=8, window=3000, min_rows=500)
    monitor = DriftMonitor(synthetic_reference, s, seed=7)
    _feed(monitor, np.random.default_rng(13), 400, [1.0, 0.0, 0.0])
    report = monitor.report()
    assert report.drifted == [] and max(report.psi.values()) < 0.05
    pooled = np.asarray(next(f for f in synthetic_reference.features if f.name == "anchor_sim").histogram.pooled)
    assert pooled[-1] < 0.6  # what the pooled comparison would have expected


def test_sampling_takes_a_random_subset_at_the_sample_rate(synthetic_reference: Reference) -> None:
    X = np.zeros((400, N_FEATURES), np.float32)
    X[:, FEATURE_INDEX["recent_count"]] = np.arange(400)  # row i carries i
    never = DriftMonitor(synthetic_reference, DriftSettings(sample_rate=0.0, min_rows=1), seed=1)
    for _ in range(200):
        never.maybe_observe(X, None)
    assert never.report().rows == 0
    some = DriftMonitor(synthetic_reference, DriftSettings(sample_rate=0.25, rows_per_request=4, min_rows=1), seed=2)
    for _ in range(2000):
        some.maybe_observe(X, None)
    rows = some.report().rows
    assert rows % 4 == 0 and 0.2 < rows / 4 / 2000 < 0.3
    assert some.report().score_psi is None and some.report().score_rows == 0  # unscored rows: no score histogram
    taken = some._rows[:rows, FEATURE_INDEX["recent_count"]]
    assert 150 < taken.mean() < 250 and taken.max() > 350  # the whole list, not its head
    some.maybe_observe(X[:2], None)  # fewer candidates than rows_per_request: all of them
    some.maybe_observe(np.zeros((0, N_FEATURES), np.float32), None)
    some.maybe_observe(np.zeros((5, 3), np.float32), None)  # not the engine's features: ignored
    assert some.report().rows in (rows, rows + 2)


def test_a_reference_for_another_feature_spec_is_refused(synthetic_reference: Reference) -> None:
    other = msgspec.structs.replace(synthetic_reference, feature_names=[*FEATURE_NAMES[:-1], "something_else"])
    with pytest.raises(ValueError, match="rebuild"):
        DriftMonitor(other, DriftSettings())


def test_a_reference_from_before_a_feature_was_appended_monitors_the_leading_columns() -> None:
    """A bundle built before the last feature was appended to the (append-only) spec: the engine
    gives it the leading columns (CatalogView.n_features), and its reference applies to them."""
    ts = _training_set()
    old = TrainingSet(X={k: np.ascontiguousarray(v[:, :-1]) for k, v in ts.X.items()}, y=ts.y, groups=ts.groups, surfaces=ts.surfaces)
    ref = drift_reference(old, _scores(np.random.default_rng(1), ts.X["valid"]), feature_names=FEATURE_NAMES[:-1])
    monitor = DriftMonitor(ref, DriftSettings(sample_rate=1.0, rows_per_request=8, window=3000, min_rows=500), seed=3)
    assert monitor.n_features == N_FEATURES - 1
    rng = np.random.default_rng(14)
    for _ in range(300):
        surface = np.asarray(SURFACES)[[rng.choice(3, p=[0.5, 0.3, 0.2])]]
        X = _rows(rng, surface, np.array([int(rng.integers(20, 80))]))
        monitor.maybe_observe(np.ascontiguousarray(X[:, :-1]), _scores(rng, X))
        monitor.maybe_observe(X, _scores(rng, X))  # the full spec's width is not this bundle's: ignored
    report = monitor.report()
    assert report.rows == 2400 and FEATURE_NAMES[-1] not in report.psi
    assert report.drifted == [] and max(report.psi.values()) < 0.05


# -- a built bundle -----------------------------------------------------------------------------
def test_a_built_bundle_carries_a_verified_reference_with_sensible_edges(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current", verify="full")
    assert layout.DRIFT_REFERENCE in bundle.manifest.files  # sized and checksummed like every part
    ref = load_reference(bundle)
    assert ref is not None and ref.feature_names == list(FEATURE_NAMES)
    assert ref.rows > 1000 and ref.score_rows > 100 and ref.queries == (
        bundle.manifest.counts["ranker_queries_train"] + bundle.manifest.counts["ranker_queries_valid"]
    )
    assert set(ref.monitored) | set(ref.skipped) == set(FEATURE_NAMES)
    assert {"ann_score", "item_log_popularity", "item_ctr", "aff_category", "n_sources"} <= set(ref.monitored)
    for f in ref.features:
        h = f.histogram
        assert np.all(np.diff(h.edges) > 0) and sum(p > 0 for p in h.pooled) >= 2, f.name
        assert len(h.edges) <= 2 * 10 + 1
    low, high = ref.score.histogram.edges[0], ref.score.histogram.edges[-1]
    assert len(ref.score.histogram.edges) >= 5 and low < ref.score.mean < high


def test_the_engine_monitors_served_features_against_the_bundle(tiny_bundle: Path) -> None:
    # A generous budget: a request that runs late skips the ranker and gives rows without a score.
    settings = Settings(
        drift=DriftSettings(sample_rate=1.0, rows_per_request=8, window=5000, min_rows=200), deadlines=DeadlineSettings(budget_ms=60_000.0)
    )
    bundle = open_bundle(tiny_bundle / "current")
    rec = Recommender(bundle, settings, live=None)
    assert rec.drift is not None and rec.load_report.drift is None
    rec.warm()
    assert rec.drift.report().rows == 0  # warm-up requests are not traffic
    now = bundle.manifest.dims["end_ts"]
    anchors = [bundle.items.id_of(int(r)) for r in bundle.array(layout.POPULAR_GLOBAL)[:20]]
    for i in range(90):
        user = bundle.users.id_of(i % len(bundle.users))
        anchor = anchors[i % len(anchors)]
        for q in (RecommendQuery("home", user_id=user), RecommendQuery("pdp", user_id=user, item_id=anchor)):
            rec.run(q, now=now + i * 600)
    report = rec.drift.report()
    assert report.rows == 180 * 8 and report.score_rows == report.rows
    assert set(report.psi) == set(rec.drift.reference.monitored)
    assert all(np.isfinite(v) and v >= 0 for v in report.psi.values())
    assert np.isfinite(report.mean_score) and report.score_psi is not None
    assert report.threshold == 0.2 and set(report.drifted) <= {*report.psi, SCORE}


def test_a_bundle_without_a_reference_still_serves_unmonitored(tmp_path: Path) -> None:
    rec = Recommender(open_bundle(FIXTURE_V1, verify="sizes"), Settings(), live=None)
    assert rec.drift is None and "no drift reference" in rec.load_report.drift
    response, _ = rec.run(RecommendQuery("home", count=5), now=rec.end_ts)
    assert len(response.items) == 5


def test_a_damaged_reference_is_reported_and_the_bundle_still_serves(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(open_bundle(tiny_bundle / "current", verify="none").root, copy)
    (copy / layout.DRIFT_REFERENCE).write_bytes(b'{"magic": "AISLE-DRIFT", "format_version": 2}')
    with pytest.raises(BundleCorruptError):
        open_bundle(copy, verify="sizes")  # the manifest lists the part: a changed file is caught
    rec = Recommender(open_bundle(copy, verify="none"), Settings(), live=None)
    assert rec.drift is None and "newer builder" in rec.load_report.drift
    response, _ = rec.run(RecommendQuery("home", count=5), now=rec.end_ts)
    assert len(response.items) == 5
