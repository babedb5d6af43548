"""`monitor/drift.json`: the training-time histograms the engine compares served traffic with.

The builder writes it (builder/drift.py) from the ranker's training queries; the engine's drift
monitor (engine/drift.py) reads it, bins sampled served rows against the same edges
(kernels/drift.py) and reports the Population Stability Index per feature and for the ranker's
raw score. The part is optional: a bundle built before drift monitoring has no such file and is
served without a monitor.

Format (JSON object, version 1):

    magic           "AISLE-DRIFT"
    format_version  1
    feature_names   the feature spec (artifacts.featurespec) the columns refer to
    rows, queries   reference rows (candidate rows of the training queries) and queries
    score_rows      rows the score histogram was made from (the validation queries' candidates)
    weighting       how rows were weighted ("query": each query counts once, whatever its size)
    surface_queries surface name -> reference queries of that surface
    features        [{name, column, histogram}] one per monitored feature, in column order
    score           {histogram, mean, mean_by_surface}: the ranker's raw score (its margin)
    skipped         feature name -> why it is not monitored (constant, set by the sampling, ...)

A histogram is {edges, pooled, by_surface}: `edges` are the m ascending, finite interior bin
edges; the m + 2 bins are kernels/drift.py's (bin b < m + 1: edges[b−1] ≤ x < edges[b]; bin m + 1:
NaN). `pooled` holds the m + 2 reference proportions over all rows, `by_surface` the same per
surface (only surfaces with enough reference queries). The engine mixes the per-surface
proportions by the served surface mix (`Histogram.expected`), so a storefront whose traffic is
mostly home pages is not reported as drifted merely because the builder sampled 50% home queries.

Schema evolution as for the manifest: new fields get defaults and go last; a change old readers
would misread bumps FORMAT_VERSION.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from artifacts import layout
from artifacts.errors import BundleCorruptError
from artifacts.manifest import check_header
from artifacts.schema import SURFACE_NAMES

if TYPE_CHECKING:
    from artifacts.bundle import Bundle

MAGIC = "AISLE-DRIFT"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
# Proportions are written as JSON floats; a segment whose sum is further than this from 1 is damaged.
_SUM_TOLERANCE = 1e-6


class Histogram(msgspec.Struct, frozen=True, kw_only=True):
    edges: list[float]  # m ascending, finite interior edges
    pooled: list[float]  # m + 2 proportions over every reference row (last: NaN)
    by_surface: dict[str, list[float]] = {}  # surface name -> m + 2 proportions

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 2

    def expected(self, surface_shares: Mapping[str, float]) -> np.ndarray:
        """float64 [m + 2]: the reference proportions for a population with these surface shares
        (name -> weight, any positive scale), each surface's own histogram where the reference has
        one, else the pooled one. No shares: the pooled histogram."""
        pooled = np.asarray(self.pooled, dtype=np.float64)
        total = sum(w for w in surface_shares.values() if w > 0)
        if total <= 0:
            return pooled
        out = np.zeros(self.n_bins, dtype=np.float64)
        for surface, weight in surface_shares.items():
            if weight > 0:
                own = self.by_surface.get(surface)
                out += (weight / total) * (np.asarray(own, dtype=np.float64) if own is not None else pooled)
        return out


class FeatureReference(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    column: int  # index into Reference.feature_names (and into the ranker's feature matrix)
    histogram: Histogram


class ScoreReference(msgspec.Struct, frozen=True, kw_only=True):
    histogram: Histogram
    mean: float  # weighted mean raw score over the reference rows
    mean_by_surface: dict[str, float] = {}

    def expected_mean(self, surface_shares: Mapping[str, float]) -> float:
        """The mean raw score a population with these surface shares would have had in training."""
        total = sum(w for w in surface_shares.values() if w > 0)
        if total <= 0:
            return self.mean
        return sum((w / total) * self.mean_by_surface.get(s, self.mean) for s, w in surface_shares.items() if w > 0)


class Reference(msgspec.Struct, frozen=True, kw_only=True):
    magic: str = MAGIC
    format_version: int = FORMAT_VERSION
    feature_names: list[str]
    rows: int
    queries: int
    score_rows: int
    weighting: str = "query"
    surface_queries: dict[str, int] = {}
    features: list[FeatureReference]
    score: ScoreReference
    skipped: dict[str, str] = {}

    @property
    def monitored(self) -> list[str]:
        return [f.name for f in self.features]


def pack_edges(edge_lists: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(edges float64 [total], edge_offsets int64 [k + 1]): several features' edges packed for the
    kernels in kernels/drift.py."""
    lengths = np.asarray([len(e) for e in edge_lists], dtype=np.int64)
    offsets = np.zeros(len(edge_lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    flat = [float(x) for e in edge_lists for x in e]
    return np.asarray(flat, dtype=np.float64), offsets


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Reference)


def encode_reference(reference: Reference) -> bytes:
    """The file's bytes (indented: people read it), after the same checks the reader makes."""
    check_reference(reference, "drift reference")
    return msgspec.json.format(_encoder.encode(reference), indent=1) + b"\n"


def write_reference(path: Path, reference: Reference) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_reference(reference))


def parse_reference(raw: bytes, where: str) -> Reference:
    """Decode and check a drift reference. Raises BundleFormatError (made by a newer builder) or
    BundleCorruptError (anything else wrong), naming `where`."""
    check_header(raw, where, what="drift reference", magic=MAGIC, supported=SUPPORTED_FORMAT_VERSIONS,
                 not_ours="corrupt drift reference", use="monitor")  # fmt: skip
    try:
        reference = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleCorruptError(f"{where}: corrupt drift reference: {exc}") from exc
    check_reference(reference, where)
    return reference


def read_reference(path: Path) -> Reference:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise BundleCorruptError(f"{path}: missing drift reference") from exc
    return parse_reference(raw, str(path))


def load_reference(bundle: Bundle) -> Reference | None:
    """The bundle's drift reference, or None for a bundle built without one (older builders)."""
    if not bundle.has(layout.DRIFT_REFERENCE):
        return None
    return read_reference(bundle.path(layout.DRIFT_REFERENCE))


def check_reference(reference: Reference, where: str) -> None:
    """Raise BundleCorruptError unless every histogram is well formed and every feature names its
    column. The monitor then bins against the edges without further checks."""
    problems: list[str] = []
    names = reference.feature_names
    if len(set(names)) != len(names):
        problems.append("feature_names has repeats")
    seen: set[str] = set()
    for f in reference.features:
        if not 0 <= f.column < len(names) or names[f.column] != f.name:
            problems.append(f"feature {f.name!r} claims column {f.column}, which is not that feature")
        if f.name in seen:
            problems.append(f"feature {f.name!r} appears twice")
        seen.add(f.name)
        problems += [f"feature {f.name!r}: {p}" for p in _histogram_problems(f.histogram)]
    problems += [f"score: {p}" for p in _histogram_problems(reference.score.histogram)]
    means = [reference.score.mean, *reference.score.mean_by_surface.values()]
    if not all(math.isfinite(m) for m in means):
        problems.append("score: mean is not finite")
    unknown = {*reference.surface_queries, *reference.score.mean_by_surface} - set(SURFACE_NAMES)
    if unknown:
        problems.append(f"unknown surfaces {sorted(unknown)}")
    if min(reference.rows, reference.queries, reference.score_rows) < 0:
        problems.append("negative row or query count")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BundleCorruptError(f"{where}: corrupt drift reference: {shown}")


def _histogram_problems(h: Histogram) -> list[str]:
    problems: list[str] = []
    edges = h.edges
    if not all(math.isfinite(e) for e in edges):
        problems.append("an edge is not finite")
    elif any(b <= a for a, b in zip(edges, edges[1:])):
        problems.append("edges are not strictly ascending")
    for label, props in (("pooled", h.pooled), *((f"surface {s!r}", p) for s, p in h.by_surface.items())):
        if len(props) != len(edges) + 2:
            problems.append(f"{label} has {len(props)} proportions for {len(edges)} edges (expected {len(edges) + 2})")
        elif not all(math.isfinite(p) and p >= 0 for p in props) or abs(sum(props) - 1.0) > _SUM_TOLERANCE * max(1, len(props)):
            problems.append(f"{label} proportions are not a distribution (sum {sum(props)!r})")
    unknown = set(h.by_surface) - set(SURFACE_NAMES)
    if unknown:
        problems.append(f"unknown surfaces {sorted(unknown)}")
    return problems
