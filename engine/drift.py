"""Drift monitoring: served features and ranker scores against the bundle's training histograms.

A sampled share of ranked requests (`drift.sample_rate`) gives up to `drift.rows_per_request` of
its candidate rows, a uniform random subset — not the top ones — so the sample is what the ranker
is asked to score, as the builder's reference is (artifacts/drift.py). Rows go into a ring buffer
of the last `drift.window` rows of this worker; each row is binned against the reference edges
as it enters, and the window's histograms are kept up to date incrementally (a row leaving the
ring takes its counts with it), so a sampled request costs a few microseconds and `report()` is
O(bins), not O(window × features). `report()` gives the Population Stability Index per monitored
feature and for the ranker's raw score, with the reference mixed by the surface mix of the window
(each surface is compared with its own training histograms), and the mean sampled score beside
the reference's.

Each Granian worker keeps its own window; /metrics publishes each worker's figures and the scrape
side aggregates them (max across live workers). A request that is not sampled costs one draw of a
Python RNG.
"""

from __future__ import annotations

import random
import threading

import msgspec
import numpy as np

from artifacts.drift import Reference, pack_edges
from artifacts.featurespec import FEATURE_NAMES, served_width
from artifacts.schema import SURFACE_NAMES
from engine.settings import DriftSettings
from kernels import drift as kernels_drift
from kernels.drift import PSI_EPSILON, bin_index, bin_offsets, move_counts, psi

SCORE = "ranker_score"  # the name the ranker's raw score goes by in `drifted`
SURFACE_FEATURE = "ctx_surface"


class DriftReport(msgspec.Struct, frozen=True):
    rows: int  # sampled rows in the window
    psi: dict[str, float]  # feature name -> PSI (empty while rows < min_rows)
    score_psi: float | None  # PSI of the ranker's raw score (None while fewer than min_rows scored rows)
    mean_score: float | None  # mean sampled raw ranker score (same condition)
    reference_mean_score: float  # the training mean for the window's surface mix
    threshold: float
    drifted: list[str]  # features (and "ranker_score") with PSI > threshold
    score_rows: int = 0  # rows of the window with a ranker score (the ranker ran for them)


class DriftMonitor:
    """One worker's sample of served rows and its PSI against a Reference. Not shared across
    processes; safe to call from several threads."""

    def __init__(self, reference: Reference, settings: DriftSettings, seed: int | None = None) -> None:
        # A bundle built before later features were appended to the (append-only) spec has a
        # reference over the leading columns, which is what the engine computes for it
        # (CatalogView.n_features); any other spec's columns mean something else.
        width = served_width(reference.feature_names)
        if width is None:
            raise ValueError(
                f"drift reference was made for {len(reference.feature_names)} features "
                f"({', '.join(reference.feature_names[:3])}, ...), this engine computes {len(FEATURE_NAMES)}: "
                "rebuild the bundle with this Aisle"
            )
        self.reference = reference
        self.settings = settings
        self.n_features = width
        self._rate = float(settings.sample_rate)
        self._per_request = int(settings.rows_per_request)
        self._capacity = int(settings.window)
        self._gate = random.Random(seed)  # one draw per request: Python's is ~20× cheaper than numpy's
        self._rng = np.random.default_rng(seed)
        self._rows = np.full((self._capacity, self.n_features), np.nan, dtype=np.float32)
        self._scores = np.full(self._capacity, np.nan, dtype=np.float32)
        self._next = 0  # ring position of the next row
        self._filled = 0  # valid rows in the ring (≤ capacity)
        self._observed = 0  # rows ever written (the report cache's key)
        self._lock = threading.Lock()
        self._cached: tuple[int, DriftReport] | None = None
        self._surface_column = FEATURE_NAMES.index(SURFACE_FEATURE)
        self._names = [f.name for f in reference.features]
        self._columns = np.asarray([f.column for f in reference.features], dtype=np.int32)
        self._edges, self._edge_offsets = pack_edges([f.histogram.edges for f in reference.features])
        self._bin_offsets = bin_offsets(self._edge_offsets)
        self._score_edges, self._score_edge_offsets = pack_edges([reference.score.histogram.edges])
        self._score_bin_offsets = bin_offsets(self._score_edge_offsets)
        self._score_column = np.zeros(1, dtype=np.int32)
        # Global bins of each ring slot (-1: empty slot / no score) and the window's counts.
        self._bins = np.full((self._capacity, len(self._columns)), -1, dtype=np.int32)
        self._score_bins = np.full(self._capacity, -1, dtype=np.int32)
        self._counts = np.zeros(int(self._bin_offsets[-1]), dtype=np.int64)
        self._score_counts = np.zeros(int(self._score_bin_offsets[-1]), dtype=np.int64)

    # -- the request path --------------------------------------------------------------------
    def maybe_observe(self, features: np.ndarray, raw_scores: np.ndarray | None) -> None:
        """Sample this request with probability sample_rate: copy up to rows_per_request random
        rows of `features` (float32 [n, F]) and their `raw_scores` (float32 [n]; None when the
        ranker did not run) into the window. Never raises on odd input: it is skipped."""
        if self._gate.random() >= self._rate:
            return
        if features.ndim != 2 or features.shape[1] != self.n_features or features.shape[0] == 0:
            return
        n = features.shape[0]
        k = min(self._per_request, n, self._capacity)
        pick = np.sort(self._rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)
        rows = np.ascontiguousarray(features[pick], dtype=np.float32)
        if raw_scores is not None and raw_scores.shape == (n,):
            scores = np.ascontiguousarray(raw_scores[pick], dtype=np.float32)
        else:
            scores = np.full(k, np.nan, dtype=np.float32)
        bins = bin_index(rows, self._columns, self._edges, self._edge_offsets)
        score_bins = bin_index(scores.reshape(-1, 1), self._score_column, self._score_edges, self._score_edge_offsets)[:, 0]
        score_bins[~np.isfinite(scores)] = -1  # a row the ranker did not score is not in the score histogram
        with self._lock:
            at = (self._next + np.arange(k)) % self._capacity
            move_counts(self._counts, self._bins[at].ravel(), bins.ravel())
            move_counts(self._score_counts, self._score_bins[at], score_bins)
            self._rows[at] = rows
            self._scores[at] = scores
            self._bins[at] = bins
            self._score_bins[at] = score_bins
            self._next = int((self._next + k) % self._capacity)
            self._filled = min(self._filled + k, self._capacity)
            self._observed += k

    # -- reading -----------------------------------------------------------------------------
    def report(self) -> DriftReport:
        """PSI per monitored feature and of the raw score over the current window (computed again
        only when rows arrived since the last call)."""
        with self._lock:
            cached = self._cached
            if cached is not None and cached[0] == self._observed:
                return cached[1]
            observed, n = self._observed, self._filled
            surfaces = self._rows[:n, self._surface_column].copy()
            scores = self._scores[:n].copy()
            counts = self._counts.copy()
            score_counts = self._score_counts.copy()
        report = self._compute(surfaces, scores, counts, score_counts)
        with self._lock:
            self._cached = (observed, report)
        return report

    def _compute(self, surfaces: np.ndarray, scores: np.ndarray, counts: np.ndarray, score_counts: np.ndarray) -> DriftReport:
        """surfaces: float32 [n] the ctx_surface feature of the window's rows; scores: float32 [n]
        (NaN = not scored); counts / score_counts: the window's packed histograms."""
        ref, s = self.reference, self.settings
        n = len(surfaces)
        scored = np.isfinite(scores)
        n_scored = int(scored.sum())
        if n < s.min_rows:
            return DriftReport(
                rows=n, psi={}, score_psi=None, mean_score=None, reference_mean_score=ref.score.mean,
                threshold=s.threshold, drifted=[], score_rows=n_scored,
            )
        shares = _surface_shares(surfaces)
        expected = np.concatenate([f.histogram.expected(shares) for f in ref.features]) if ref.features else np.zeros(0)
        values = psi(expected, counts, self._bin_offsets, PSI_EPSILON)
        by_feature = {name: float(v) for name, v in zip(self._names, values.tolist())}
        drifted = [name for name, v in by_feature.items() if v > s.threshold]
        score_psi = mean_score = None
        score_shares = _surface_shares(surfaces[scored])
        if n_scored >= s.min_rows:
            score_expected = ref.score.histogram.expected(score_shares)
            score_psi = float(psi(score_expected, score_counts, self._score_bin_offsets, PSI_EPSILON)[0])
            mean_score = float(scores[scored].astype(np.float64).mean())
            if score_psi > s.threshold:
                drifted.append(SCORE)
        return DriftReport(
            rows=n,
            psi=by_feature,
            score_psi=score_psi,
            mean_score=mean_score,
            reference_mean_score=float(ref.score.expected_mean(score_shares if n_scored else shares)),
            threshold=s.threshold,
            drifted=drifted,
            score_rows=n_scored,
        )

    def clear(self) -> None:
        """Forget every sampled row (after warm-up requests, which are not traffic)."""
        with self._lock:
            self._rows.fill(np.nan)
            self._scores.fill(np.nan)
            self._bins.fill(-1)
            self._score_bins.fill(-1)
            self._counts.fill(0)
            self._score_counts.fill(0)
            self._next = self._filled = 0
            self._observed += 1  # invalidates the cached report
            self._cached = None

    def warm(self) -> None:
        """Compile (or load from cache) the drift kernels, so the first /metrics scrape does not
        pay for it."""
        kernels_drift.warm()


def _surface_shares(codes: np.ndarray) -> dict[str, float]:
    """Surface name -> rows served on it, from the ctx_surface feature of the rows."""
    codes = codes[np.isfinite(codes)].astype(np.int64)
    counts = np.bincount(codes[(codes >= 0) & (codes < len(SURFACE_NAMES))], minlength=len(SURFACE_NAMES))
    return {name: float(c) for name, c in zip(SURFACE_NAMES, counts.tolist()) if c}
