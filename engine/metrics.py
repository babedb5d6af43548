"""Counters, gauges and histograms shared by every worker process, rendered as Prometheus text.

Granian runs the engine as several worker processes, and `/metrics` must give the same totals
whichever worker answers. Every worker maps one file and writes only its own row of it. Any
worker renders the sum of all the rows.

The catalogue (`FAMILIES`) is fixed in code. Every label value is declared, so every series has a
fixed column, and a typo fails at the call with a ValueError instead of making a new series.

File format (`metrics.bin`, little-endian, version 1):

    offset 0     header (struct `<8sIIII32s`): magic b"AISLEMET", format version, header bytes
                 (4096), slots (64), columns, SHA-256 of the layout (see `Layout.digest`)
    offset 64    int64[slots]    pid that last claimed each slot (0 = never); informational only
    offset 576   float64[slots]  wall time of that claim
    offset 4096  float64[slots, columns], row-major: one row per slot

Columns, family by family, in catalogue order, series by series in the order of the label
values' cartesian product (first label slowest):

    counter, gauge   one column per series
    histogram        one column per bucket (NOT cumulative; the last one is the +Inf overflow),
                     then one column for the sum. The count is the sum of the buckets.

A file with another magic is not ours. We refuse to touch it. A file of another version, layout or
size is replaced with a new one: the new file is written beside it and renamed over it, so a
process that still maps the old file never faults.

Slots: a worker claims a slot with an fcntl byte-range lock on the sidecar `metrics.bin.lock`
(byte 1 + slot) and holds it until it exits. The kernel drops the lock when the process dies,
even on SIGKILL, so a dead worker's slot can be claimed again and the check is immune to pid
reuse. A claimed slot keeps its counter and histogram values, so totals stay monotonic across
worker restarts. Its gauges are reset, because they described the dead process. Byte 0 of the
lock file serialises creating files, claiming slots and `render`'s liveness check.

Aggregation at render time: counters and histograms are summed over every slot, live or dead.
Gauges combine only the live slots (sum, max or min, as declared). Slots still unset are skipped.
`Metrics.totals()` is that merged picture as numbers (`Totals`): `/metrics` renders it, and the
status page reads its figures from it, so the two never disagree.

The catalogue depends on the settings in one way: the `variant` label takes every experiment arm
(`families_for(settings)`). Every worker gets the same settings, so they agree on the layout; new
settings with other arms make another layout, and the file is recreated (counts start again).

Some families are not stored here but computed when rendering (`COMPUTED`): the live workers, the
bundle served, and the live inventory feed, whose figures are host-wide already (one subscriber
writes them into the item state file) and must not be summed over workers.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import itertools
import json
import math
import mmap
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, Sequence

import numpy as np

from artifacts.featurespec import FEATURE_NAMES, SOURCE_NAMES
from engine.inventory.state import LAG_BOUNDS, InventoryStats, Status

if TYPE_CHECKING:
    from engine.settings import Settings

MAGIC = b"AISLEMET"
FORMAT_VERSION = 1
MAX_SLOTS = 64
HEADER_BYTES = 4096
_HEAD = struct.Struct("<8sIIII32s")
_PIDS_AT = 64
_CLAIMED_AT = _PIDS_AT + 8 * MAX_SLOTS
_GLOBAL_BYTE = 0  # lock-file byte guarding create / claim / liveness; slot i is byte 1 + i

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_INF = math.inf
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class MetricsError(Exception):
    """The metrics file cannot be used: it is not ours, or every slot is held by a live process."""


# --- the catalogue ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Label:
    name: str
    values: tuple[str, ...]  # every value a series may take, in render order


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[Label, ...] = ()
    buckets: tuple[float, ...] = ()  # histogram upper bounds, ascending and finite; +Inf is implied
    aggregate: Literal["sum", "max", "min"] = "sum"  # gauges across live workers


SURFACES = ("home", "pdp", "cart", "other")
STATUSES = ("200", "400", "401", "404", "405", "413", "415", "422", "429", "503", "500")
FALLBACKS = ("none", "ranker_unavailable", "ranker_failed", "heads_unavailable", "heads_failed", "deadline", "features_unavailable", "index_unavailable", "popularity")
STAGES = ("resolve", "retrieve", "filter", "features", "rank", "rerank", "encode")
SOURCES = (*SOURCE_NAMES, "backfill")
FILTERS = ("out_of_stock_or_blocked_or_excluded", "request_filter")
EVENT_OUTCOMES = ("accepted", "duplicate", "rejected")
# 202; 4xx (a bad batch); 429 (the key's rate limit); 503 shed (the worker was behind); 503 (the log could not store it)
BATCH_OUTCOMES = ("stored", "refused", "limited", "shed", "unavailable")
SHED_ENDPOINTS = ("recommendations", "events")
SHED_REASONS = ("queue_delay", "in_flight")
LIMITED_ENDPOINTS = ("reads", "writes", "metrics")
SWAP_OUTCOMES = ("swapped", "refused")
# Experiment arms: "default" (no experiment), "holdout", one "experiment:variant" per arm of the
# settings (see `variants_for`), and "none" for a request answered before it was assigned (an error).
UNASSIGNED = "none"
DRIFT_FEATURES = FEATURE_NAMES

REQUEST_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def variants_for(settings: Settings | None = None) -> tuple[str, ...]:
    """The `variant` label's values: what a response's `variant` can say, plus UNASSIGNED."""
    arms = [f"{e.name}:{v.name}" for e in settings.experiments for v in e.variants] if settings is not None else []
    return ("default", "holdout", *arms, UNASSIGNED)


def families_for(settings: Settings | None = None) -> tuple[Family, ...]:
    """The stored catalogue for these settings (None: no experiments)."""
    variant = Label("variant", variants_for(settings))
    return (
        Family(
            "aisle_requests_total",
            "counter",
            "Recommendation requests answered, by surface (other: refused before the query was decoded), HTTP status, "
            "the first degradation step taken and the experiment arm (none: refused before assignment).",
            (Label("surface", SURFACES), Label("status", STATUSES), Label("fallback", FALLBACKS), variant),
        ),
        Family("aisle_request_seconds", "histogram", "Recommendation request latency inside the engine, by surface.", (Label("surface", SURFACES),), REQUEST_BUCKETS),
        Family("aisle_variant_request_seconds", "histogram", "Recommendation request latency inside the engine, by experiment arm.", (variant,), REQUEST_BUCKETS),
        Family("aisle_stage_seconds", "histogram", "Time spent in each pipeline stage.", (Label("stage", STAGES),), STAGE_BUCKETS),
        Family(
            "aisle_candidates_total",
            "counter",
            "Candidates proposed, by source. The share that reaches the final slate is "
            "aisle_candidates_served_total / aisle_candidates_total, per source.",
            (Label("source", SOURCES),),
        ),
        Family("aisle_candidates_served_total", "counter", "Items served, by the source that proposed them.", (Label("source", SOURCES),)),
        Family("aisle_filtered_total", "counter", "Candidates removed by filters.", (Label("filter", FILTERS),)),
        Family("aisle_short_responses_total", "counter", "Responses (200) with fewer items than asked for, empty ones included.", (Label("surface", SURFACES),)),
        Family("aisle_empty_responses_total", "counter", "Responses (200) with no item at all.", (Label("surface", SURFACES),)),
        Family("aisle_events_total", "counter", "Shopper events received, by outcome.", (Label("outcome", EVENT_OUTCOMES),)),
        Family(
            "aisle_event_batches_total",
            "counter",
            "Event batches posted, by outcome: stored (202), refused (4xx but 429), limited (429: the key's rate limit), "
            "shed (503: the worker was overloaded), unavailable (503: the log could not store it).",
            (Label("outcome", BATCH_OUTCOMES),),
        ),
        Family(
            "aisle_shed_total",
            "counter",
            "Requests refused with 503 + Retry-After because the worker was behind: queue_delay (the request waited over "
            "limits.max_queue_delay_ms) or in_flight (limits.max_in_flight requests already in progress).",
            (Label("endpoint", SHED_ENDPOINTS), Label("reason", SHED_REASONS)),
        ),
        Family("aisle_rate_limited_total", "counter", "Requests refused with 429: their API key was over its rate limit, by endpoint guard.", (Label("endpoint", LIMITED_ENDPOINTS),)),
        Family("aisle_queue_delay_seconds", "gauge", "Longest a request waited in a worker's event loop queue over the last second (max over live workers).", aggregate="max"),
        Family("aisle_slates_logged_total", "counter", "Served slates committed to the event log (impressions for experiment analysis)."),
        Family("aisle_slates_dropped_total", "counter", "Served slates not logged: the log's queue was full, or it was closing, or a write failed."),
        Family("aisle_slates_failed_total", "counter", "Served slates not logged because building or queueing one raised (a bug: see the server log)."),
        Family("aisle_slates_queued", "gauge", "Served slates waiting for the next event log commit, over live workers."),
        Family("aisle_bundle_swaps_total", "counter", "Bundle hot swaps attempted by workers, by outcome.", (Label("outcome", SWAP_OUTCOMES),)),
        Family("aisle_bundle_age_seconds", "gauge", "Age of the oldest bundle any live worker serves.", aggregate="max"),
        Family("aisle_bundle_loaded_timestamp_seconds", "gauge", "Earliest time at which a live worker loaded its bundle.", aggregate="min"),
        # Drift: each worker samples its own window; the worst worker is the one to look at.
        Family("aisle_feature_psi", "gauge", "Population stability index of a ranker feature, served vs training (max over live workers' windows; NaN below drift.min_rows).", (Label("feature", DRIFT_FEATURES),), aggregate="max"),
        Family("aisle_ranker_score_psi", "gauge", "Population stability index of the ranker's raw score, served vs training (max over live workers).", aggregate="max"),
        Family("aisle_ranker_score_mean", "gauge", "Mean sampled raw ranker score (max over live workers).", aggregate="max"),
        Family("aisle_ranker_score_reference_mean", "gauge", "Mean raw ranker score over the training reference.", aggregate="max"),
        Family("aisle_drift_sampled_rows", "gauge", "Sampled candidate rows in a worker's drift window (max over live workers).", aggregate="max"),
        Family("aisle_drifted_features", "gauge", "Features (and the ranker score) whose PSI is over drift.threshold (max over live workers).", aggregate="max"),
    )


FAMILIES: tuple[Family, ...] = families_for()

# Computed at render time, not stored: the live slots, the bundle id `render` is given, and the
# live inventory feed (host-wide figures from the item state file, given to `render`).
WORKER_UP = Family("aisle_worker_up", "gauge", "Worker processes alive (holding a metrics slot).")
BUNDLE_INFO = Family("aisle_bundle_info", "gauge", "The bundle served by the worker that answered this scrape.", (Label("bundle", ()),))
INVENTORY_COUNTERS: tuple[tuple[str, str], ...] = (
    ("applied_batches", "Inventory update batches applied."),
    ("applied_deltas", "Inventory deltas applied."),
    ("rejected_deltas", "Inventory deltas that failed validation or could not be stored."),
    ("unknown_skus", "Inventory deltas for a SKU neither in the bundle nor announced as new."),
    ("capacity_full", "New SKUs refused: the state file has no free new-SKU row."),
    ("gaps", "Sequence gaps seen by the subscriber (messages lost)."),
    ("resyncs", "Snapshots applied by the subscriber (after a gap, a late start or a publisher restart)."),
    ("resync_failures", "Snapshot requests that timed out or broke."),
    ("heartbeats", "Publisher heartbeats received."),
)
INVENTORY_PUBLISHER = Family("aisle_inventory_publisher_info", "gauge", "The publisher whose deltas the item state follows.", (Label("publisher", ()),))
INVENTORY: tuple[Family, ...] = (
    Family("aisle_inventory_status", "gauge", "Live inventory feed state (1 for the current one).", (Label("status", tuple(s.name.lower() for s in Status)),)),
    INVENTORY_PUBLISHER,
    Family("aisle_inventory_seq", "gauge", "Sequence number of the last applied update batch."),
    Family("aisle_inventory_last_update_age_seconds", "gauge", "Seconds since the last applied update batch was published."),
    Family("aisle_inventory_heartbeat_age_seconds", "gauge", "Seconds since the subscriber last heard the publisher."),
    Family("aisle_inventory_new_skus", "gauge", "SKUs added since the bundle was built (new-SKU rows in use)."),
    Family("aisle_inventory_new_sku_capacity", "gauge", "New-SKU rows the state file holds."),
    Family("aisle_inventory_lag_seconds", "histogram", "Publish-to-applied lag of inventory update batches.", (), LAG_BOUNDS),
    *(Family(f"aisle_inventory_{name}_total", "counter", text + " Host-wide; restarts at 0 with a new bundle's state file.") for name, text in INVENTORY_COUNTERS),
)
COMPUTED = (WORKER_UP, BUNDLE_INFO, *INVENTORY)
COMPUTED_DYNAMIC = (BUNDLE_INFO, INVENTORY_PUBLISHER)  # label values known only at render time


# --- layout: catalogue -> columns ---------------------------------------------------------------


class HistogramSeries(NamedTuple):
    first_bucket: int  # column of the first bucket; bucket i is first_bucket + i
    bounds: tuple[float, ...]
    sum_column: int


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs) + "}" if pairs else ""


def _le(bound: float) -> str:
    return "+Inf" if bound == _INF else repr(float(bound))


def _value(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (_INF, -_INF):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def _validate(families: Sequence[Family]) -> None:
    seen: set[str] = set()
    for f in (*families, *COMPUTED):
        if not _NAME.match(f.name) or f.name in seen:
            raise ValueError(f"metric family {f.name!r}: expected a unique Prometheus metric name")
        seen.add(f.name)
        if f.kind not in ("counter", "gauge", "histogram") or f.aggregate not in ("sum", "max", "min"):
            raise ValueError(f"metric family {f.name!r}: unknown kind {f.kind!r} or aggregate {f.aggregate!r}")
        names = [label.name for label in f.labels]
        if len(set(names)) != len(names) or not all(_LABEL.match(n) and not n.startswith("__") for n in names):
            raise ValueError(f"metric family {f.name!r}: label names {names} must be unique and valid")
        for label in f.labels:
            if f not in COMPUTED_DYNAMIC and (not label.values or len(set(label.values)) != len(label.values)):
                raise ValueError(f"metric family {f.name!r}: label {label.name!r} needs distinct declared values")
        if f.kind == "histogram":
            b = f.buckets
            if "le" in names or not b or any(not math.isfinite(x) for x in b) or any(x >= y for x, y in zip(b, b[1:])):
                raise ValueError(f"histogram {f.name!r}: needs finite ascending buckets and no 'le' label")
        elif f.buckets:
            raise ValueError(f"metric family {f.name!r}: only histograms have buckets")


class Layout:
    """Where each series of a catalogue lives in a row, and the text that renders it.

    Built once per process; the dicts it holds are the hot path's only lookups.
    """

    def __init__(self, families: Sequence[Family] = FAMILIES) -> None:
        _validate(families)
        self.families = tuple(families)
        self.by_name = {f.name: f for f in self.families}
        # (family, ((label, value), ...) in declared order) -> column / HistogramSeries
        self.counters: dict[tuple, int] = {}
        self.gauges: dict[tuple, int] = {}
        self.histograms: dict[tuple, HistogramSeries] = {}
        self.gauge_columns: list[int] = []
        self.gauge_aggregates: list[tuple[int, str]] = []  # (column, sum | max | min)
        column = 0
        for f in self.families:
            for pairs in _series(f):
                key = (f.name, pairs)
                if f.kind == "histogram":
                    self.histograms[key] = HistogramSeries(column, f.buckets, column + len(f.buckets) + 1)
                    column += len(f.buckets) + 2
                else:
                    (self.counters if f.kind == "counter" else self.gauges)[key] = column
                    if f.kind == "gauge":
                        self.gauge_columns.append(column)
                        self.gauge_aggregates.append((column, f.aggregate))
                    column += 1
        self.n_columns = column
        self._plan: list[tuple[Family, str, list[tuple]]] | None = None  # render's prebuilt sample prefixes
        self._selections: dict[tuple[str, tuple[tuple[str, str], ...]], list] = {}  # `series` answers
        canonical = [FORMAT_VERSION, MAX_SLOTS]
        canonical += [[f.name, f.kind, [[label.name, list(label.values)] for label in f.labels], list(f.buckets)] for f in self.families]
        self.digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).digest()

    def resolve(self, kind: str, family: str, labels: dict[str, object]) -> int | HistogramSeries:
        """The column (or histogram series) for a call, or a ValueError that says what is allowed."""
        f = self.by_name.get(family)
        if f is None:
            computed = " (computed at render time, not set by callers)" if family in (c.name for c in COMPUTED) else ""
            raise ValueError(f"unknown metric family {family!r}{computed}; declared: {sorted(self.by_name)}")
        if f.kind != kind:
            raise ValueError(f"metric family {family!r} is a {f.kind}, not a {kind}")
        expected = [label.name for label in f.labels]
        if sorted(labels) != sorted(expected):
            raise ValueError(f"metric family {family!r} takes labels {expected}, got {sorted(labels)}")
        for label in f.labels:
            if labels[label.name] not in label.values:
                raise ValueError(f"{family}: label {label.name}={labels[label.name]!r} is not one of {list(label.values)}")
        key = (family, tuple((label.name, labels[label.name]) for label in f.labels))
        table = {"counter": self.counters, "gauge": self.gauges, "histogram": self.histograms}[kind]
        return table[key]

    def series(self, family: str, labels: dict[str, str]) -> list[int | HistogramSeries]:
        """The columns (or histogram series) of `family` whose labels include `labels` (a subset of
        the family's labels; {} = every series). ValueError for an unknown family, label or value."""
        key = (family, tuple(sorted(labels.items())))
        found = self._selections.get(key)
        if found is not None:
            return found
        f = self.by_name.get(family)
        if f is None:
            raise ValueError(f"unknown metric family {family!r}; declared: {sorted(self.by_name)}")
        declared = {label.name: label.values for label in f.labels}
        for name, v in labels.items():
            if name not in declared or v not in declared[name]:
                raise ValueError(f"{family}: {name}={v!r} is not a declared label value; labels: { {k: list(vs) for k, vs in declared.items()} }")
        table = {"counter": self.counters, "gauge": self.gauges, "histogram": self.histograms}[f.kind]
        wanted = labels.items()
        found = self._selections[key] = [table[(family, pairs)] for pairs in _series(f) if wanted <= set(pairs)]
        return found

    def _render_plan(self) -> list[tuple[Family, str, list[tuple]]]:
        """Per family: its HELP/TYPE text and each sample's text up to the value, built once."""
        plan = []
        for f in self.families:
            entries: list[tuple] = []
            for pairs in _series(f):
                key = (f.name, pairs)
                if f.kind == "histogram":
                    h = self.histograms[key]
                    buckets = tuple(f"{f.name}_bucket{_labels_text((*pairs, ('le', _le(b))))} " for b in (*h.bounds, _INF))
                    entries.append((buckets, f"{f.name}_sum{_labels_text(pairs)} ", f"{f.name}_count{_labels_text(pairs)} ", h.first_bucket, h.sum_column))
                else:
                    entries.append((f"{f.name}{_labels_text(pairs)} ", self.counters[key] if f.kind == "counter" else self.gauges[key]))
            plan.append((f, _help_type(f), entries))
        return plan

    def render(self, totals: Totals, bundle_id: str | None, computed: Sequence[tuple[Family, Sequence[Computed]]] = ()) -> str:
        """The exposition text of merged `totals`, then the computed families."""
        if self._plan is None:
            self._plan = self._render_plan()
        values = totals.values.tolist()
        out: list[str] = []
        for f, head, entries in self._plan:
            out.append(head)
            if f.kind == "histogram":
                for buckets, sum_text, count_text, first, sum_column in entries:
                    cumulative = 0.0
                    for i, text in enumerate(buckets):
                        cumulative += values[first + i]
                        out.append(f"{text}{_value(cumulative)}\n")
                    out.append(f"{sum_text}{_value(values[sum_column])}\n")
                    out.append(f"{count_text}{_value(cumulative)}\n")
            else:
                for text, column in entries:
                    out.append(f"{text}{_value(values[column])}\n")
        out.append(_help_type(WORKER_UP))
        out.append(f"{WORKER_UP.name} {totals.workers}\n")
        out.append(_help_type(BUNDLE_INFO))
        if bundle_id is not None:
            out.append(f"{BUNDLE_INFO.name}{_labels_text((('bundle', bundle_id),))} 1\n")
        for f, samples in computed:
            if f not in COMPUTED or f in (WORKER_UP, BUNDLE_INFO):
                raise ValueError(f"{f.name}: only the declared computed families (COMPUTED) can be given to render")
            out.append(_help_type(f))
            names = [label.name for label in f.labels]
            for sample in samples:
                pairs = tuple(zip(names, sample.labels))
                if len(pairs) != len(names) or any(label.values and v not in label.values for label, v in zip(f.labels, sample.labels)):
                    raise ValueError(f"{f.name}: labels {sample.labels} do not fit {names}")
                if f.kind == "histogram":
                    _render_histogram(out, f.name, pairs, f.buckets, sample.buckets, sample.value)
                else:
                    out.append(f"{f.name}{_labels_text(pairs)} {_value(float(sample.value))}\n")
        return "".join(out)


class Computed(NamedTuple):
    """One series of a family computed at render time (not stored in the file)."""

    labels: tuple[str, ...] = ()  # values, in the family's label order
    value: float = 0.0  # counter or gauge value; a histogram's sum
    buckets: Sequence[float] = ()  # histogram only: per bucket, NOT cumulative, then the overflow


def _render_histogram(out: list[str], name: str, pairs: tuple[tuple[str, str], ...], bounds: Sequence[float], counts: Sequence[float], total: float) -> None:
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{name}: expected {len(bounds) + 1} bucket counts (the last one the overflow); got {len(counts)}")
    cumulative = 0.0
    for bound, count in zip((*bounds, _INF), counts):
        cumulative += count
        out.append(f"{name}_bucket{_labels_text((*pairs, ('le', _le(bound))))} {_value(float(cumulative))}\n")
    out.append(f"{name}_sum{_labels_text(pairs)} {_value(float(total))}\n")
    out.append(f"{name}_count{_labels_text(pairs)} {_value(float(cumulative))}\n")


def _series(f: Family) -> list[tuple[tuple[str, str], ...]]:
    """Every series of a family as (label, value) pairs, in column (and render) order."""
    names = [label.name for label in f.labels]
    return [tuple(zip(names, values)) for values in itertools.product(*(label.values for label in f.labels))]


def _help_type(f: Family) -> str:
    return f"# HELP {f.name} {_escape_help(f.help)}\n# TYPE {f.name} {f.kind}\n"


# --- merged totals: what /metrics renders and the status page reads -----------------------------


class Histogram(NamedTuple):
    bounds: tuple[float, ...]  # upper bounds, ascending; the +Inf overflow is implied
    counts: np.ndarray  # float64 [len(bounds) + 1], per bucket, NOT cumulative
    sum: float

    @property
    def count(self) -> float:
        return float(self.counts.sum())

    def quantile(self, q: float) -> float:
        """Estimated q-quantile, as Prometheus' histogram_quantile: linear within the bucket that
        holds the rank (the first bucket starts at 0); in the overflow, the highest finite bound.
        NaN for an empty histogram."""
        return bucket_quantile(q, self.bounds, self.counts)


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is in [0, 1]; got {q}")
    total = float(sum(counts))
    if total <= 0:
        return math.nan
    rank = q * total
    below = 0.0
    for i, count in enumerate(counts):
        if count > 0 and below + count >= rank:
            if i == len(bounds):
                return float(bounds[-1])
            lower = float(bounds[i - 1]) if i else 0.0
            return lower + (float(bounds[i]) - lower) * max(rank - below, 0.0) / count
        below += count
    return float(bounds[-1])


@dataclass(frozen=True)
class Totals:
    """The merged picture at one moment: counters and histograms summed over every slot, gauges
    combined over the live ones, all in one vector in the layout's column order."""

    layout: Layout
    values: np.ndarray  # float64 [n_columns]
    pids: tuple[int, ...]  # live worker processes (holding a slot), by slot
    taken_at: float  # time.time()

    @property
    def workers(self) -> int:
        return len(self.pids)

    def counter(self, family: str, /, **labels: str) -> float:
        """Sum of the counter's series whose labels include `labels` (none given: all of them)."""
        self._kind(family, "counter")
        columns = self.layout.series(family, labels)
        return float(self.values[columns].sum()) if columns else 0.0

    def histogram(self, family: str, /, **labels: str) -> Histogram:
        """The histogram's series whose labels include `labels`, merged."""
        f = self._kind(family, "histogram")
        counts = np.zeros(len(f.buckets) + 1, np.float64)
        total = 0.0
        for h in self.layout.series(family, labels):
            counts += self.values[h.first_bucket : h.sum_column]  # type: ignore[union-attr]
            total += float(self.values[h.sum_column])  # type: ignore[union-attr]
        return Histogram(f.buckets, counts, total)

    def gauge(self, family: str, /, **labels: str) -> float:
        """One gauge series (every label given), combined over live workers; NaN if none set it."""
        self._kind(family, "gauge")
        return float(self.values[self.layout.resolve("gauge", family, labels)])  # type: ignore[index]

    def since(self, earlier: Totals) -> Totals:
        """Counters and histograms as increases since `earlier` (a window); gauges as now."""
        if earlier.layout is not self.layout:
            raise ValueError("totals of two different layouts cannot be compared")
        values = self.values - earlier.values
        gauges = self.layout.gauge_columns
        values[gauges] = self.values[gauges]
        return Totals(self.layout, values, self.pids, self.taken_at)

    def _kind(self, family: str, kind: str) -> Family:
        f = self.layout.by_name.get(family)
        if f is None or f.kind != kind:
            raise ValueError(f"{family!r} is not a {kind} of this catalogue")
        return f


# --- the shared file ----------------------------------------------------------------------------


def _lock(fd: int, byte: int, *, wait: bool) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
    except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held by another process
        return False
    return True


def _unlock(fd: int, byte: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)


class _GlobalLock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        _lock(self.fd, _GLOBAL_BYTE, wait=True)

    def __exit__(self, *exc: object) -> None:
        _unlock(self.fd, _GLOBAL_BYTE)


def _file_state(path: Path, layout: Layout) -> Literal["ok", "missing", "stale"]:
    """'stale' = ours but of another version, layout or size (or empty): safe to replace."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD.size)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return "missing"
    if not head:
        return "stale"
    if head[: len(MAGIC)] != MAGIC:
        raise MetricsError(f"{path} is not an Aisle metrics file (no {MAGIC!r} magic); refusing to overwrite it: point metrics at another path")
    if len(head) < _HEAD.size:
        return "stale"
    _, version, header_bytes, slots, columns, digest = _HEAD.unpack(head)
    expected = (FORMAT_VERSION, HEADER_BYTES, MAX_SLOTS, layout.n_columns, layout.digest)
    if (version, header_bytes, slots, columns, digest) != expected or size != HEADER_BYTES + 8 * MAX_SLOTS * layout.n_columns:
        return "stale"
    return "ok"


def _create(path: Path, layout: Layout) -> None:
    """Write a zeroed file beside `path` and rename it over `path` (callers hold the global lock)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    header = bytearray(HEADER_BYTES)
    _HEAD.pack_into(header, 0, MAGIC, FORMAT_VERSION, HEADER_BYTES, MAX_SLOTS, layout.n_columns, layout.digest)
    with open(tmp, "wb") as fh:
        fh.write(header)
        fh.truncate(HEADER_BYTES + 8 * MAX_SLOTS * layout.n_columns)
        _allocate(fh.fileno(), HEADER_BYTES + 8 * MAX_SLOTS * layout.n_columns)
    os.replace(tmp, path)


def _allocate(fd: int, size: int) -> None:
    """Give the file's every block now. A sparse file's hole is only given a block when a store
    into the mapping first touches it, and on a full disk that store is a SIGBUS that kills the
    worker (and two such deaths in a row make Granian stop the server). Allocating at start turns
    a full disk into a clear error before serving instead."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise MetricsError(f"cannot allocate {size} bytes for the metrics file: {exc.strerror} (is the state directory's disk full?)") from exc


class _Claim:
    """One process's slot in one file, shared by every `Metrics` handle that process opens on it.

    There is one per process and path because POSIX record locks belong to the process: a second
    lock file descriptor would see its own process's slots as free, and closing it would drop them.
    """

    def __init__(self, path: Path, layout: Layout) -> None:
        self.path = path
        self.layout = layout
        self.pid = os.getpid()
        self.refs = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            with _GlobalLock(self.lock_fd):
                if _file_state(path, layout) != "ok":
                    _create(path, layout)
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    _allocate(fd, HEADER_BYTES + 8 * MAX_SLOTS * layout.n_columns)  # a file an older version left sparse
                    self.mm = mmap.mmap(fd, HEADER_BYTES + 8 * MAX_SLOTS * layout.n_columns)
                finally:
                    os.close(fd)
                self.slot = next((i for i in range(MAX_SLOTS) if _lock(self.lock_fd, 1 + i, wait=False)), -1)
                if self.slot < 0:
                    self.mm.close()
                    raise MetricsError(f"all {MAX_SLOTS} slots of {path} are held by live processes; is something opening Metrics per request?")
                struct.pack_into("<q", self.mm, _PIDS_AT + 8 * self.slot, self.pid)
                struct.pack_into("<d", self.mm, _CLAIMED_AT + 8 * self.slot, time.time())
                self.matrix = np.frombuffer(self.mm, np.float64, MAX_SLOTS * layout.n_columns, HEADER_BYTES).reshape(MAX_SLOTS, layout.n_columns)
                self.matrix[self.slot, layout.gauge_columns] = np.nan  # the dead owner's gauges
        except BaseException:
            os.close(self.lock_fd)
            raise
        start = (HEADER_BYTES // 8) + self.slot * layout.n_columns
        self.row = memoryview(self.mm).cast("d")[start : start + layout.n_columns]

    def live_slots(self) -> np.ndarray:
        """bool[MAX_SLOTS]: slots whose lock a live process holds (ours counts as live)."""
        live = np.zeros(MAX_SLOTS, bool)
        with _GlobalLock(self.lock_fd):  # so a worker claiming right now is not told "taken"
            for i in range(MAX_SLOTS):
                if i == self.slot:
                    live[i] = True  # testing our own lock would succeed, and unlocking would drop it
                elif _lock(self.lock_fd, 1 + i, wait=False):
                    _unlock(self.lock_fd, 1 + i)
                else:
                    live[i] = True
        return live

    def release(self) -> None:
        self.row.release()
        del self.matrix
        self.mm.close()
        _unlock(self.lock_fd, 1 + self.slot)
        os.close(self.lock_fd)


_RELEASED = memoryview(bytearray(8)).cast("d")
_RELEASED.release()
_COMBINE = {"sum": np.sum, "max": np.max, "min": np.min}
_CLAIMS: dict[Path, _Claim] = {}
# A forked child does not inherit its parent's record locks: it must claim its own slot.
os.register_at_fork(after_in_child=_CLAIMS.clear)


class Metrics:
    """A worker's handle on the shared metrics file.

    Open one per worker process, after the fork (in the ASGI lifespan startup). Writes are plain
    stores into this process's row: call the writing methods from one thread per process, because
    `+=` on shared memory is not atomic between threads.
    """

    __slots__ = ("_claim", "_row", "_counters", "_gauges", "_histograms", "_layout")

    def __init__(self, claim: _Claim) -> None:
        self._claim = claim
        self._layout = claim.layout
        self._row = claim.row
        self._counters = dict(claim.layout.counters)
        self._gauges = dict(claim.layout.gauges)
        self._histograms = dict(claim.layout.histograms)

    @classmethod
    def open(cls, path: Path, families: Sequence[Family] = FAMILIES) -> Metrics:
        """Map `path`, creating or replacing it if it is missing or of another layout, and claim a
        free slot (one per process: a second `open` in the same process shares the first's slot).

        Raises MetricsError if `path` is some other file, or if all MAX_SLOTS slots are held by live
        processes.
        """
        path = Path(path).resolve()
        claim = _CLAIMS.get(path)
        if claim is None:
            claim = _CLAIMS[path] = _Claim(path, Layout(families))
        elif claim.layout.families != tuple(families):
            raise MetricsError(f"{path} is already open in this process with another catalogue")
        claim.refs += 1
        return cls(claim)

    @property
    def slot(self) -> int:
        return self._claim.slot

    # --- the hot path: one dict lookup and one or two stores --------------------------------

    def inc(self, family: str, value: float = 1.0, /, **labels: str) -> None:
        """Add `value` (finite, >= 0) to a counter. ValueError for an unknown family or label."""
        column = self._counters.get((family, tuple(labels.items())))
        if column is None:
            column = self._learn(self._counters, "counter", family, labels)
        if not 0.0 <= value < _INF:
            raise ValueError(f"{family}: a counter only goes up by a finite amount, got {value!r}")
        self._row[column] += value

    def observe(self, family: str, value: float, /, **labels: str) -> None:
        """Record one observation (finite) in a histogram."""
        series = self._histograms.get((family, tuple(labels.items())))
        if series is None:
            series = self._learn(self._histograms, "histogram", family, labels)
        if not -_INF < value < _INF:
            raise ValueError(f"{family}: expected a finite observation, got {value!r}")
        first, bounds, sum_column = series
        self._row[first + bisect.bisect_left(bounds, value)] += 1.0
        self._row[sum_column] += value

    def set(self, family: str, value: float, /, **labels: str) -> None:
        """Set this worker's value of a gauge (combined over live workers at render time)."""
        column = self._gauges.get((family, tuple(labels.items())))
        if column is None:
            column = self._learn(self._gauges, "gauge", family, labels)
        self._row[column] = float(value)

    def counter(self, family: str, /, **labels: str) -> int:
        """The column of a counter series, for `add` on the hottest paths."""
        return self._layout.resolve("counter", family, labels)  # type: ignore[return-value]

    def add(self, column: int, value: float = 1.0) -> None:
        """Add `value` (finite, >= 0) to the counter column from `counter`."""
        if not 0.0 <= value < _INF:
            raise ValueError(f"a counter only goes up by a finite amount, got {value!r}")
        self._row[column] += value

    def histogram(self, family: str, /, **labels: str) -> HistogramSeries:
        """A histogram series, for `observe_at` on the hottest paths."""
        return self._layout.resolve("histogram", family, labels)  # type: ignore[return-value]

    def observe_at(self, series: HistogramSeries, value: float) -> None:
        if not -_INF < value < _INF:
            raise ValueError(f"expected a finite observation, got {value!r}")
        first, bounds, sum_column = series
        self._row[first + bisect.bisect_left(bounds, value)] += 1.0
        self._row[sum_column] += value

    def _learn(self, table: dict, kind: str, family: str, labels: dict[str, str]) -> int | HistogramSeries:
        # Keyword order is part of the fast key, so the same series may be called with its labels
        # in another order: resolve (and validate) once, then remember that order too.
        found = self._layout.resolve(kind, family, labels)
        table[(family, tuple(labels.items()))] = found
        return found

    # --- reading --------------------------------------------------------------------------------

    def totals(self) -> Totals:
        """The merged picture over all slots (see `Totals`), read once from shared memory."""
        claim = self._claim
        live = claim.live_slots()
        snapshot = np.array(claim.matrix)  # one copy: later arithmetic sees a fixed picture
        pids = np.frombuffer(claim.mm, np.int64, MAX_SLOTS, _PIDS_AT)
        values = snapshot.sum(axis=0)
        for column, aggregate in self._layout.gauge_aggregates:
            seen = snapshot[live, column]
            seen = seen[~np.isnan(seen)]  # NaN: a live worker that has not set it yet
            values[column] = float(_COMBINE[aggregate](seen)) if seen.size else math.nan
        return Totals(self._layout, values, tuple(int(pids[i]) for i in np.flatnonzero(live)), time.time())

    def render(self, bundle_id: str | None = None, computed: Sequence[tuple[Family, Sequence[Computed]]] = (), totals: Totals | None = None) -> str:
        """Prometheus text exposition (format 0.0.4, serve as CONTENT_TYPE) over all slots:
        counters and histograms summed over every slot, gauges combined over live slots; then
        the computed families given (e.g. `inventory_families(...)`)."""
        return self._layout.render(totals if totals is not None else self.totals(), bundle_id, computed)

    def close(self) -> None:
        """Drop this handle; the last handle of a process frees the slot (its values stay)."""
        claim = self._claim
        if self._row is _RELEASED:
            return
        claim.refs -= 1
        self._row = _RELEASED  # writes through a closed handle raise ValueError
        if claim.refs == 0:
            if _CLAIMS.get(claim.path) is claim:
                del _CLAIMS[claim.path]
            claim.release()


def inventory_families(stats: InventoryStats, now: float) -> list[tuple[Family, list[Computed]]]:
    """The live inventory feed's families from the item state's header (host-wide figures: the one
    subscriber of this host wrote them), to pass to `render`."""
    by_name = {f.name: f for f in INVENTORY}
    lag_sum = stats.counters.get("lag_sum_ns", 0) / 1e9
    out: list[tuple[Family, list[Computed]]] = [
        (by_name["aisle_inventory_status"], [Computed((s.name.lower(),), float(stats.status == s.name.lower())) for s in Status]),
        (by_name["aisle_inventory_publisher_info"], [Computed((stats.publisher,), 1.0)] if stats.publisher else []),
        (by_name["aisle_inventory_seq"], [Computed((), float(stats.seq))]),
        (by_name["aisle_inventory_last_update_age_seconds"], [Computed((), max(0.0, now - stats.updated_at) if stats.updated_at else math.nan)]),
        (by_name["aisle_inventory_heartbeat_age_seconds"], [Computed((), max(0.0, now - stats.heartbeat_at) if stats.heartbeat_at else math.nan)]),
        (by_name["aisle_inventory_new_skus"], [Computed((), float(stats.n_new))]),
        (by_name["aisle_inventory_new_sku_capacity"], [Computed((), float(stats.capacity))]),
        (by_name["aisle_inventory_lag_seconds"], [Computed((), lag_sum, [float(x) for x in stats.lag_buckets])]),
    ]
    out += [(by_name[f"aisle_inventory_{name}_total"], [Computed((), float(stats.counters.get(name, 0)))]) for name, _ in INVENTORY_COUNTERS]
    return out
