"""The drift reference (artifacts/drift.py): histograms of the ranker's features and raw score as
the builder saw them, for the engine to compare served traffic with.

Which rows. Features: every candidate row of the ranker's training and validation queries — the
population the ranker learned from, and the larger sample, so the quantile edges are stable.
Score: the compiled ranker's raw margin on the validation queries only. Those are scores of
queries the model was not fitted on, which is what the engine sees on live traffic; a booster's
scores on its own training rows are more spread out (it has fitted them), so they would make a
healthy engine look drifted.

Weighting. The engine samples a fixed number of candidate rows from each sampled request
(engine/drift.py), so every request counts about the same whatever its candidate count; here each
row weighs 1 / (its query's candidate count), so every query counts once too.

Surfaces. The builder samples home, pdp and cart queries in fixed shares (ranker_data.SURFACE_SHARE),
not in the storefront's proportions, and features such as `anchor_sim` are missing on home pages
and present elsewhere. Each histogram is therefore also kept per surface, and the engine mixes
them by the surface mix it actually serves.
"""

from __future__ import annotations

import numpy as np

from artifacts.drift import FeatureReference, Histogram, Reference, ScoreReference, pack_edges
from artifacts.featurespec import FEATURE_INDEX, FEATURE_NAMES
from artifacts.schema import SURFACE_NAMES
from builder.ranker_data import TrainingSet
from kernels.drift import bin_index, bin_offsets

N_BINS = 10  # quantile bins per feature (fewer after ties are merged)
POINT_MASS = 0.05  # a single value holding this share of the rows gets a bin of its own
MIN_REST_BINS = 3  # bins at least for the values outside those point masses ...
REST_SHARE = 0.01  # ... once they hold this share of the rows
MIN_SURFACE_QUERIES = 30  # a surface with fewer reference queries is compared with the pooled histogram
EDGE_SAMPLE = 200_000  # rows the quantile edges are estimated from (proportions use every row)
CHUNK_ROWS = 65_536  # rows binned at a time (bounds the int32 [rows, features] scratch)

# Features not monitored, and why. Their training distribution is set by how the builder samples
# queries, not by the storefront, so comparing traffic with it would raise a drift alarm on every
# deployment.
UNMONITORED: dict[str, str] = {
    "ctx_surface": "set by the builder's query sampling; the monitor compares each surface with its own histograms instead",
    "ctx_hour": "request clock: training home queries all sit at the cut-off, not at traffic's hours",
    "ctx_dow": "request clock: training home queries all sit at the cut-off, not at traffic's days",
    # Regions span time zones, so the region mix of a window of traffic follows which regions are
    # awake: on the synthetic store an hour of traffic is > 0.2 PSI from the daily mix in 21 of 24
    # UTC hours. The reference mixes every hour; comparing with it would alarm every day.
    "ctx_region": "follows the request clock: a window's region mix is the regions awake at its hours, training mixes all hours",
}


def quantile_edges(values: np.ndarray, weights: np.ndarray, n_bins: int = N_BINS) -> list[float]:
    """Ascending interior edges of about n_bins weighted-quantile bins of the finite values
    (float32 [n], weights float64 [n] > 0). Edges are data values, so ties collapse.

    A value holding ≥ POINT_MASS of the weight gets a bin of its own ([v, next float32 after v)),
    so a feature that is mostly 0 keeps its 0s apart from its small positive values. The other
    values get quantile bins in proportion to their share of the weight, and at least
    MIN_REST_BINS once they hold ≥ REST_SHARE of it: a source score that is 0 for 95% of the
    candidates still shows a shift among the candidates it did score."""
    finite = np.isfinite(values)
    v = values[finite].astype(np.float32)
    w = weights[finite].astype(np.float64)
    if len(v) == 0:
        return []
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    total = float(w.sum())
    uniq, first = np.unique(v, return_index=True)
    mass = np.add.reduceat(w, first) / total
    heavy = uniq[mass >= POINT_MASS]
    top = float(v[-1])
    edges: set[float] = set()
    for value in heavy.tolist():
        edges.add(float(value))
        if value < top:  # the top value already has [value, +inf)
            edges.add(float(np.nextafter(np.float32(value), np.float32(np.inf))))
    rest = ~np.isin(v, heavy)
    share = float(w[rest].sum()) / total
    if share > 0:
        m = max(int(round(n_bins * share)), MIN_REST_BINS if share >= REST_SHARE else 1)
        v_rest, cum = v[rest], np.cumsum(w[rest])
        levels = np.arange(1, m, dtype=np.float64) / m * float(cum[-1])
        picks = np.minimum(np.searchsorted(cum, levels, side="left"), len(v_rest) - 1)
        edges.update(float(x) for x in np.unique(v_rest[picks]).tolist())
    return sorted(edges)


def _query_weights(groups: np.ndarray) -> np.ndarray:
    """float64 [rows]: 1 / the row's query size."""
    groups = np.asarray(groups, dtype=np.int64)
    return np.repeat(1.0 / np.maximum(groups, 1), groups)


def _row_surfaces(surfaces: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """int64 [rows]: SURFACE_NAMES code of each row's query."""
    codes = np.asarray([SURFACE_NAMES.index(str(s)) for s in surfaces], dtype=np.int64)
    return np.repeat(codes, np.asarray(groups, dtype=np.int64))


def _weighted_counts(
    X: np.ndarray, columns: np.ndarray, edges: np.ndarray, edge_offsets: np.ndarray, weights: np.ndarray, surface: np.ndarray
) -> np.ndarray:
    """float64 [len(SURFACE_NAMES), total bins]: weighted packed histograms per surface code."""
    k = len(columns)
    total = int(bin_offsets(edge_offsets)[-1])
    out = np.zeros((len(SURFACE_NAMES), total), dtype=np.float64)
    for start in range(0, len(X), CHUNK_ROWS):
        chunk = np.ascontiguousarray(X[start : start + CHUNK_ROWS], dtype=np.float32)
        bins = bin_index(chunk, columns, edges, edge_offsets)
        w, s = weights[start : start + CHUNK_ROWS], surface[start : start + CHUNK_ROWS]
        for code in np.unique(s).tolist():
            here = s == code
            out[code] += np.bincount(bins[here].ravel(), weights=np.repeat(w[here], k), minlength=total)
    return out


def _histograms(
    counts: np.ndarray, edge_lists: list[list[float]], edge_offsets: np.ndarray, per_surface: list[str]
) -> list[Histogram]:
    """One Histogram per packed segment of `counts` (per-surface weighted counts)."""
    offsets = bin_offsets(edge_offsets)
    pooled_counts = counts.sum(axis=0)
    out = []
    for j, edges in enumerate(edge_lists):
        seg = slice(int(offsets[j]), int(offsets[j + 1]))
        by_surface = {name: _proportions(counts[SURFACE_NAMES.index(name), seg]) for name in per_surface}
        out.append(Histogram(edges=edges, pooled=_proportions(pooled_counts[seg]), by_surface=by_surface))
    return out


def _proportions(counts: np.ndarray) -> list[float]:
    total = float(counts.sum())
    if total <= 0:
        return [0.0] * (len(counts) - 1) + [1.0]  # no rows at all: "missing" (never used: surfaces need queries)
    return (counts / total).tolist()


def drift_reference(
    data: TrainingSet, valid_scores: np.ndarray, feature_names: tuple[str, ...] = FEATURE_NAMES, n_bins: int = N_BINS, seed: int = 0
) -> Reference:
    """The reference histograms of `data` (the ranker's training set) and of the compiled ranker's
    raw scores on its validation rows (float32 [rows of data.X["valid"]])."""
    sides = [s for s in ("train", "valid") if s in data.X and len(data.X[s])]
    if not sides:
        raise ValueError("the ranker's training set is empty: no drift reference can be made")
    valid_scores = np.asarray(valid_scores, dtype=np.float32)
    if "valid" not in sides or len(valid_scores) != len(data.X["valid"]):
        raise ValueError(f"need one raw score per validation row, got {len(valid_scores)} for {len(data.X.get('valid', ()))} rows")
    n_features = len(feature_names)
    for side in sides:
        if data.X[side].ndim != 2 or data.X[side].shape[1] != n_features:
            raise ValueError(f"{side} matrix is {data.X[side].shape}, expected [rows, {n_features}] (the feature spec)")
        if int(np.sum(data.groups[side])) != len(data.X[side]) or len(data.surfaces[side]) != len(data.groups[side]):
            raise ValueError(f"{side}: query sizes or surfaces do not add up to the rows of its matrix")
    weights = {s: _query_weights(data.groups[s]) for s in sides}
    surface = {s: _row_surfaces(data.surfaces[s], data.groups[s]) for s in sides}
    surface_queries: dict[str, int] = {}
    for s in sides:
        names, counts = np.unique(np.asarray(data.surfaces[s]).astype(str), return_counts=True)
        for name, count in zip(names.tolist(), counts.tolist()):
            surface_queries[name] = surface_queries.get(name, 0) + int(count)
    per_surface = [name for name in SURFACE_NAMES if surface_queries.get(name, 0) >= MIN_SURFACE_QUERIES]

    # Edges from a row sample (quantiles of 200k rows are as good as of millions), same weights.
    rng = np.random.default_rng(seed)
    n_rows = sum(len(data.X[s]) for s in sides)
    take = {s: (np.sort(rng.choice(len(data.X[s]), size=len(data.X[s]) * EDGE_SAMPLE // n_rows, replace=False))
                if n_rows > EDGE_SAMPLE else slice(None)) for s in sides}
    skipped: dict[str, str] = {}
    candidates: list[tuple[int, list[float]]] = []
    for column, name in enumerate(feature_names):
        if name in UNMONITORED:
            skipped[name] = UNMONITORED[name]
            continue
        values = np.concatenate([data.X[s][take[s], column] for s in sides])
        w = np.concatenate([weights[s][take[s]] for s in sides])
        candidates.append((column, quantile_edges(values, w, n_bins)))
    columns = np.asarray([c for c, _ in candidates], dtype=np.int32)
    edge_lists = [e for _, e in candidates]
    edges, edge_offsets = pack_edges(edge_lists)
    counts = sum(_weighted_counts(data.X[s], columns, edges, edge_offsets, weights[s], surface[s]) for s in sides)
    features: list[FeatureReference] = []
    for (column, _), histogram in zip(candidates, _histograms(counts, edge_lists, edge_offsets, per_surface)):
        name = feature_names[column]
        if sum(p > 0 for p in histogram.pooled) < 2:
            # One non-empty bin: no finite value at all (no edges), or one value (its own edge).
            only = f"always {histogram.edges[0]!r}" if histogram.edges else "always missing"
            skipped[name] = f"constant in the training rows ({only}): nothing to compare"
            continue
        features.append(FeatureReference(name=name, column=column, histogram=histogram))

    # The ranker's raw score on the validation rows.
    w_valid = weights["valid"]
    score_edges = quantile_edges(valid_scores, w_valid, n_bins)
    s_edges, s_offsets = pack_edges([score_edges])
    score_counts = _weighted_counts(
        valid_scores.reshape(-1, 1), np.zeros(1, np.int32), s_edges, s_offsets, w_valid, surface["valid"]
    )
    valid_queries = {name: int(np.sum(np.asarray(data.surfaces["valid"]).astype(str) == name)) for name in per_surface}
    score_per_surface = [name for name in per_surface if valid_queries[name] >= MIN_SURFACE_QUERIES]
    (score_histogram,) = _histograms(score_counts, [score_edges], s_offsets, score_per_surface)
    finite = np.isfinite(valid_scores)
    mean = float(np.average(valid_scores[finite], weights=w_valid[finite])) if finite.any() else 0.0
    mean_by_surface = {}
    for name in score_per_surface:
        here = finite & (surface["valid"] == SURFACE_NAMES.index(name))
        mean_by_surface[name] = float(np.average(valid_scores[here], weights=w_valid[here]))
    return Reference(
        feature_names=list(feature_names),
        rows=n_rows,
        queries=sum(len(data.groups[s]) for s in sides),
        score_rows=len(valid_scores),
        weighting="query",
        surface_queries=surface_queries,
        features=features,
        score=ScoreReference(histogram=score_histogram, mean=mean, mean_by_surface=mean_by_surface),
        skipped=skipped,
    )

