"""Shared-memory metrics: totals across worker processes, slots surviving a killed worker, the file
as a versioned format, histogram maths against NumPy, and the output checked by a strict
Prometheus text (0.0.4) parser written here."""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
import re
import tempfile
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifacts.featurespec import FEATURE_NAMES
from engine.metrics import (
    FALLBACKS,
    FAMILIES,
    HEADER_BYTES,
    INVENTORY,
    MAGIC,
    MAX_SLOTS,
    STATUSES,
    SURFACES,
    Computed,
    Family,
    Label,
    Layout,
    Metrics,
    MetricsError,
    bucket_quantile,
    families_for,
    inventory_families,
    variants_for,
)

SPAWN = multiprocessing.get_context("spawn")  # as Granian's workers: fresh interpreters, no inherited state
HOME_OK = {"surface": "home", "status": "200", "fallback": "none", "variant": "default"}


# --- a strict parser for the text exposition format ------------------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_META = re.compile(r"# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)")
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _labels(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    pairs, at = [], 0
    while at < len(text):
        match = _PAIR.match(text, at)
        assert match, f"bad label set {text!r} at {at}"
        pairs.append((match[1], re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e[0]], match[2])))
        at = match.end()
    assert len({k for k, _ in pairs}) == len(pairs), f"repeated label in {text!r}"
    return tuple(pairs)


def parse(text: str) -> dict[str, dict]:
    """family -> {"type", "help", "samples": {(sample name, labels): value}}; asserts the format:
    HELP and TYPE before a family's samples, samples of a family contiguous, no repeated series,
    histogram buckets cumulative and ending in +Inf equal to _count."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current = None
    for line in text[:-1].split("\n"):
        meta = _META.fullmatch(line)
        if meta:
            kind, name, rest = meta.groups()
            fam = families.setdefault(name, {"samples": {}})
            assert kind.lower() not in fam, f"second {kind} for {name}"
            assert not fam["samples"], f"{kind} after samples of {name}"
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped")
            fam[kind.lower()] = rest
            current = name
            continue
        assert not line.startswith("#") and line, f"unexpected line {line!r}"
        sample = _SAMPLE.fullmatch(line)
        assert sample, f"not a sample line: {line!r}"
        name, label_text, value = sample.groups()
        base = re.sub(r"_(bucket|sum|count)$", "", name) if current and families[current].get("type") == "histogram" else name
        assert base == current, f"sample {name} outside its family block (in {current})"
        assert {"help", "type"} <= families[current].keys(), f"{current} has no HELP/TYPE before samples"
        key = (name, _labels(label_text))
        assert key not in families[current]["samples"], f"repeated series {line!r}"
        families[current]["samples"][key] = float(value)
    for name, fam in families.items():
        if fam["type"] == "histogram":
            for (sample, labels), count in fam["samples"].items():
                if sample.endswith("_count"):
                    buckets = [v for (s, ls), v in fam["samples"].items() if s.endswith("_bucket") and tuple(p for p in ls if p[0] != "le") == labels]
                    les = [dict(ls)["le"] for (s, ls) in fam["samples"] if s.endswith("_bucket") and tuple(p for p in ls if p[0] != "le") == labels]
                    assert les[-1] == "+Inf" and [float(x) for x in les] == sorted(float(x) for x in les), les
                    assert buckets == sorted(buckets) and buckets[-1] == count, (name, labels)
    return families


def value(families: dict, sample: str, **labels: str) -> float:
    family = re.sub(r"_(bucket|sum|count)$", "", sample) if sample not in families else sample
    for (name, pairs), v in families[family]["samples"].items():
        if name == sample and dict(pairs) == labels:
            return v
    raise KeyError((sample, labels))


@pytest.mark.parametrize(
    "text",
    [
        "x_total 1\n",  # no HELP/TYPE
        "# HELP x_total h\n# TYPE x_total counter\nx_total{a=\"b\\q\"} 1\n",  # unknown escape
        "# HELP x_total h\n# TYPE x_total counter\nx_total 1\nx_total 2\n",  # repeated series
        "# HELP x_total h\n# TYPE x_total counter\nx_total{a=b} 1\n",  # unquoted value
        "# HELP x_total h\n# TYPE x_total counter\nx_total 1",  # no final newline
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
    ],
)
def test_the_parser_rejects_malformed_text(text: str) -> None:
    with pytest.raises(AssertionError):
        parse(text)


# --- worker processes (module level so that spawn can import them) ------------------------------------


def _serve_some(path: str, requests: int, source: str, latency: float) -> None:
    m = Metrics.open(Path(path))
    for _ in range(requests):
        m.inc("aisle_requests_total", **HOME_OK)
        m.observe("aisle_request_seconds", latency, surface="home")
    m.inc("aisle_candidates_total", 10.0, source=source)
    m.close()


def _serve_then_hang(path: str, requests: int, age: float, conn) -> None:
    m = Metrics.open(Path(path))
    for _ in range(requests):
        m.inc("aisle_requests_total", **HOME_OK)
    m.set("aisle_bundle_age_seconds", age)
    m.set("aisle_bundle_loaded_timestamp_seconds", 1000.0)
    conn.send(m.slot)
    conn.recv()  # never comes: the test kills us


def _hold_every_slot(path: str, conn) -> None:
    fd = open(path + ".lock", "a+b")
    for i in range(MAX_SLOTS):
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1 + i)
    conn.send("holding")
    conn.recv()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "metrics.bin"


@pytest.fixture
def metrics(path: Path):
    m = Metrics.open(path)
    yield m
    m.close()


# --- across processes -----------------------------------------------------------------------------


def test_increments_from_two_processes_add_up_in_one_render(path: Path) -> None:
    workers = [
        SPAWN.Process(target=_serve_some, args=(str(path), 30, "ann", 0.004)),
        SPAWN.Process(target=_serve_some, args=(str(path), 12, "covisit", 0.2)),
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    reader = Metrics.open(path)
    try:
        seen = parse(reader.render())
    finally:
        reader.close()
    assert value(seen, "aisle_requests_total", **HOME_OK) == 42
    assert value(seen, "aisle_candidates_total", source="ann") == 10
    assert value(seen, "aisle_candidates_total", source="covisit") == 10
    assert value(seen, "aisle_request_seconds_count", surface="home") == 42
    assert value(seen, "aisle_request_seconds_bucket", surface="home", le="0.005") == 30
    assert value(seen, "aisle_request_seconds_bucket", surface="home", le="0.25") == 42
    assert value(seen, "aisle_request_seconds_sum", surface="home") == pytest.approx(30 * 0.004 + 12 * 0.2)
    assert value(seen, "aisle_worker_up") == 1  # the two workers exited; only the reader holds a slot


def test_a_killed_workers_slot_is_claimed_again_and_its_counts_stay(path: Path) -> None:
    ours, theirs = SPAWN.Pipe()
    doomed = SPAWN.Process(target=_serve_then_hang, args=(str(path), 5, 100.0, theirs))
    doomed.start()
    try:
        assert ours.poll(60)
        doomed_slot = ours.recv()
        reader = Metrics.open(path)
        reader.set("aisle_bundle_loaded_timestamp_seconds", 2000.0)
        seen = parse(reader.render())
        assert value(seen, "aisle_worker_up") == 2
        assert value(seen, "aisle_bundle_age_seconds") == 100  # max over live workers; the reader has not set it
        assert value(seen, "aisle_bundle_loaded_timestamp_seconds") == 1000  # min over live workers
    finally:
        doomed.kill()  # SIGKILL: no clean-up runs in the worker
        doomed.join(30)

    seen = parse(reader.render())
    assert value(seen, "aisle_worker_up") == 1
    assert value(seen, "aisle_requests_total", **HOME_OK) == 5  # a dead worker's counts still count
    assert math.isnan(value(seen, "aisle_bundle_age_seconds"))  # but its gauges do not
    assert value(seen, "aisle_bundle_loaded_timestamp_seconds") == 2000

    ours, theirs = SPAWN.Pipe()
    restarted = SPAWN.Process(target=_serve_then_hang, args=(str(path), 2, 7.0, theirs))
    restarted.start()
    try:
        assert ours.poll(60)
        assert ours.recv() == doomed_slot
        seen = parse(reader.render())
        assert value(seen, "aisle_requests_total", **HOME_OK) == 7  # monotonic: 5 kept + 2 new
        assert value(seen, "aisle_bundle_age_seconds") == 7
        assert value(seen, "aisle_worker_up") == 2
    finally:
        restarted.kill()
        restarted.join(30)
        reader.close()


def test_open_fails_when_every_slot_is_held_by_a_live_process(path: Path) -> None:
    Metrics.open(path).close()  # create the file and its lock file
    ours, theirs = SPAWN.Pipe()
    hog = SPAWN.Process(target=_hold_every_slot, args=(str(path), theirs))
    hog.start()
    try:
        assert ours.poll(60) and ours.recv() == "holding"
        with pytest.raises(MetricsError, match="all 64 slots"):
            Metrics.open(path)
    finally:
        hog.kill()
        hog.join(30)
    Metrics.open(path).close()  # free again once the holder is gone


# --- slots within one process ------------------------------------------------------------------------


def test_two_opens_in_one_process_share_its_slot(path: Path) -> None:
    a = Metrics.open(path)
    b = Metrics.open(path)
    assert a.slot == b.slot
    a.inc("aisle_events_total", outcome="accepted")
    b.inc("aisle_events_total", outcome="accepted")
    a.close()
    b.inc("aisle_events_total", outcome="accepted")  # still usable after the other handle closed
    assert value(parse(b.render()), "aisle_events_total", outcome="accepted") == 3
    b.close()
    with pytest.raises(ValueError):
        b.inc("aisle_events_total", outcome="accepted")  # a closed handle does not write into the void


def test_counts_survive_closing_and_reopening_the_same_layout(path: Path) -> None:
    m = Metrics.open(path)
    m.inc("aisle_events_total", 4.0, outcome="duplicate")
    m.close()
    m = Metrics.open(path)
    try:
        assert value(parse(m.render()), "aisle_events_total", outcome="duplicate") == 4
    finally:
        m.close()


def test_a_reclaimed_slot_forgets_the_previous_owners_gauges(path: Path) -> None:
    m = Metrics.open(path)
    m.set("aisle_bundle_age_seconds", 5.0)
    m.close()
    m = Metrics.open(path)
    try:
        assert math.isnan(value(parse(m.render()), "aisle_bundle_age_seconds"))  # unset, not the old 5
    finally:
        m.close()


# --- the file as a format ---------------------------------------------------------------------------------

TINY = (Family("tiny_total", "counter", "A one-series catalogue."),)


def test_a_file_of_another_layout_is_recreated_not_misread(path: Path) -> None:
    m = Metrics.open(path, TINY)
    m.inc("tiny_total", 5.0)
    m.close()
    assert path.stat().st_size == HEADER_BYTES + 8 * MAX_SLOTS * 1
    m = Metrics.open(path)
    try:
        seen = parse(m.render())
        assert path.stat().st_size == HEADER_BYTES + 8 * MAX_SLOTS * Layout().n_columns
        assert all(v == 0 for f in seen.values() if f["type"] == "counter" for v in f["samples"].values())
        assert "tiny_total" not in seen
    finally:
        m.close()
    m = Metrics.open(path, TINY)
    try:
        assert value(parse(m.render()), "tiny_total") == 0
    finally:
        m.close()


def test_a_layout_change_in_label_values_alone_is_another_layout() -> None:
    renamed = (Family("tiny_total", "counter", "Other help text."),)
    more = (Family("tiny_total", "counter", "A one-series catalogue.", (Label("x", ("a", "b")),)),)
    reordered = (Family("tiny_total", "counter", "A one-series catalogue.", (Label("x", ("b", "a")),)),)
    assert Layout(TINY).digest == Layout(renamed).digest  # help text does not move columns
    assert len({Layout(TINY).digest, Layout(more).digest, Layout(reordered).digest}) == 3


@pytest.mark.parametrize("damage", ["truncate", "empty", "other_version"])
def test_a_damaged_metrics_file_is_recreated(path: Path, damage: str) -> None:
    Metrics.open(path).close()
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "empty":
        raw = bytearray()
    else:
        raw[8] = 99
    path.write_bytes(bytes(raw))
    m = Metrics.open(path)
    try:
        m.inc("aisle_events_total", outcome="rejected")
        assert value(parse(m.render()), "aisle_events_total", outcome="rejected") == 1
        assert path.read_bytes()[:8] == MAGIC
    finally:
        m.close()


def test_a_file_that_is_not_ours_is_refused_and_left_alone(path: Path) -> None:
    path.write_bytes(b"PAR1 something precious")
    with pytest.raises(MetricsError, match="not an Aisle metrics file"):
        Metrics.open(path)
    assert path.read_bytes() == b"PAR1 something precious"


# --- histograms --------------------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_with_inclusive_upper_bounds(metrics: Metrics) -> None:
    for seconds in (0.0, 0.00005, 0.0012, 0.0025, 7.0):  # 0.00005 and 0.0025 sit exactly on bounds
        metrics.observe("aisle_stage_seconds", seconds, stage="rank")
    seen = parse(metrics.render())
    bucket = {le: value(seen, "aisle_stage_seconds_bucket", stage="rank", le=le) for le in ("5e-05", "0.001", "0.0025", "0.25", "+Inf")}
    assert bucket == {"5e-05": 2, "0.001": 2, "0.0025": 4, "0.25": 4, "+Inf": 5}
    assert value(seen, "aisle_stage_seconds_count", stage="rank") == 5
    assert value(seen, "aisle_stage_seconds_sum", stage="rank") == pytest.approx(7.00375)
    assert value(seen, "aisle_stage_seconds_count", stage="rerank") == 0


BOUNDS = (0.001, 0.01, 0.1, 1.0)
TIMED = (Family("t_seconds", "histogram", "Times.", (Label("stage", ("a", "b")),), BOUNDS),)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 2.0), st.sampled_from(BOUNDS)), max_size=60))
def test_histogram_matches_a_numpy_reference(observations: list[float]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        m = Metrics.open(Path(tmp) / "metrics.bin", TIMED)
        try:
            series = m.histogram("t_seconds", stage="b")
            for i, x in enumerate(observations):
                if i % 2:
                    m.observe("t_seconds", x, stage="b")
                else:
                    m.observe_at(series, x)
            seen = parse(m.render())
        finally:
            m.close()
    x = np.array(observations, np.float64)
    for bound in (*BOUNDS, math.inf):
        le = "+Inf" if bound == math.inf else repr(bound)
        assert value(seen, "t_seconds_bucket", stage="b", le=le) == np.count_nonzero(x <= bound)
    assert value(seen, "t_seconds_count", stage="b") == len(x)
    assert value(seen, "t_seconds_sum", stage="b") == pytest.approx(x.sum())
    assert value(seen, "t_seconds_count", stage="a") == 0


# --- the text format ------------------------------------------------------------------------------------


def test_render_is_prometheus_text_with_every_declared_series(metrics: Metrics) -> None:
    metrics.inc("aisle_requests_total", **HOME_OK)
    seen = parse(metrics.render(bundle_id="20260101T000000Z-abc"))
    for family in FAMILIES:
        assert seen[family.name]["type"] == family.kind and seen[family.name]["help"]
        n_series = math.prod(len(label.values) for label in family.labels)
        per_series = len(family.buckets) + 3 if family.kind == "histogram" else 1  # buckets, +Inf, sum, count
        assert len(seen[family.name]["samples"]) == n_series * per_series  # zeros included
    assert value(seen, "aisle_requests_total", **HOME_OK) == 1
    assert value(seen, "aisle_requests_total", surface="cart", status="503", fallback="popularity", variant="none") == 0
    assert value(seen, "aisle_bundle_info", bundle="20260101T000000Z-abc") == 1
    assert value(seen, "aisle_worker_up") == 1


def test_render_without_a_bundle_still_declares_bundle_info(metrics: Metrics) -> None:
    seen = parse(metrics.render())
    assert seen["aisle_bundle_info"]["type"] == "gauge" and seen["aisle_bundle_info"]["samples"] == {}


def test_label_values_and_help_are_escaped(path: Path) -> None:
    odd = 'a"b\\c\nd'
    catalogue = (Family("odd_total", "counter", "Help with a \\ and a\nnewline.", (Label("v", (odd, "plain")),)),)
    m = Metrics.open(path, catalogue)
    try:
        m.inc("odd_total", 2.0, v=odd)
        text = m.render(bundle_id='id "quoted"\n')
    finally:
        m.close()
    seen = parse(text)
    assert value(seen, "odd_total", v=odd) == 2
    assert value(seen, "aisle_bundle_info", bundle='id "quoted"\n') == 1
    assert seen["odd_total"]["help"] == "Help with a \\\\ and a\\nnewline."


# --- the hot path -------------------------------------------------------------------------------------------


def test_label_order_in_the_call_does_not_matter(metrics: Metrics) -> None:
    metrics.inc("aisle_requests_total", surface="pdp", status="429", fallback="deadline", variant="holdout")
    metrics.inc("aisle_requests_total", variant="holdout", fallback="deadline", status="429", surface="pdp")
    metrics.inc("aisle_requests_total", fallback="deadline", status="429", surface="pdp", variant="holdout")
    assert value(parse(metrics.render()), "aisle_requests_total", surface="pdp", status="429", fallback="deadline", variant="holdout") == 3


def test_precomputed_columns_count_like_named_calls(metrics: Metrics) -> None:
    column = metrics.counter("aisle_candidates_served_total", source="backfill")
    metrics.add(column)
    metrics.add(column, 4.0)
    metrics.inc("aisle_candidates_served_total", source="backfill")
    series = metrics.histogram("aisle_request_seconds", surface="cart")
    metrics.observe_at(series, 0.003)
    metrics.observe("aisle_request_seconds", 0.003, surface="cart")
    seen = parse(metrics.render())
    assert value(seen, "aisle_candidates_served_total", source="backfill") == 6
    assert value(seen, "aisle_request_seconds_bucket", surface="cart", le="0.003") == 2
    assert value(seen, "aisle_request_seconds_bucket", surface="cart", le="0.002") == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.inc("aisle_request_total", **HOME_OK),  # family typo
        lambda m: m.inc("aisle_requests_total", surface="hmoe", status="200", fallback="none", variant="default"),
        lambda m: m.inc("aisle_requests_total", surface="home", status=200, fallback="none", variant="default"),  # not a string
        lambda m: m.inc("aisle_requests_total", surface="home", status="200", fallback="none"),  # label missing
        lambda m: m.inc("aisle_requests_total", surface="home", status="200", fallback="none", variant="exp:b"),  # no such arm
        lambda m: m.inc("aisle_requests_total", region="eu", **HOME_OK),  # label extra
        lambda m: m.inc("aisle_stage_seconds", stage="rank"),  # a histogram is not a counter
        lambda m: m.observe("aisle_events_total", 1.0, outcome="accepted"),
        lambda m: m.set("aisle_worker_up", 3.0),  # computed at render time
        lambda m: m.inc("aisle_events_total", -1.0, outcome="accepted"),  # counters only go up
        lambda m: m.inc("aisle_events_total", math.nan, outcome="accepted"),
        lambda m: m.add(m.counter("aisle_events_total", outcome="accepted"), math.inf),
        lambda m: m.observe("aisle_stage_seconds", math.nan, stage="rank"),  # would poison the sum for good
        lambda m: m.counter("aisle_events_total", outcome="acepted"),
        lambda m: m.histogram("aisle_stage_seconds", stage="ranking"),
    ],
)
def test_mistakes_fail_loudly_and_write_nothing(metrics: Metrics, call) -> None:
    before = metrics.render()
    with pytest.raises(ValueError):
        call(metrics)
    assert metrics.render() == before


@pytest.mark.parametrize(
    "families",
    [
        (Family("x_total", "counter", "a"), Family("x_total", "counter", "b")),
        (Family("x seconds", "counter", "a"),),
        (Family("x_seconds", "histogram", "a", (Label("le", ("1",)),), (1.0,)),),
        (Family("x_seconds", "histogram", "a", (), (1.0, 0.5)),),
        (Family("x_seconds", "histogram", "a", (), (1.0, math.inf)),),
        (Family("x_total", "counter", "a", (), (1.0,)),),
        (Family("x_total", "counter", "a", (Label("v", ()),)),),
        (Family("x_total", "counter", "a", (Label("v", ("p", "p")),)),),
        (Family("aisle_worker_up", "gauge", "clashes with a computed family"),),
    ],
)
def test_a_malformed_catalogue_is_rejected(families: tuple[Family, ...]) -> None:
    with pytest.raises(ValueError):
        Layout(families)


# --- the catalogue from the settings ------------------------------------------------------------------


def _experiment_settings():
    from engine.settings import ExperimentSettings, Settings, VariantSettings, validate

    arms = [VariantSettings("control"), VariantSettings("diverse", mmr_lambda=0.5)]
    return validate(Settings(holdout=0.1, experiments=[ExperimentSettings("mmr", arms, traffic=0.5)]))


def test_the_variant_label_declares_every_arm_of_the_settings(path: Path) -> None:
    settings = _experiment_settings()
    assert variants_for(settings) == ("default", "holdout", "mmr:control", "mmr:diverse", "none")
    assert variants_for(None) == ("default", "holdout", "none")
    families = families_for(settings)
    m = Metrics.open(path, families)
    try:
        m.inc("aisle_requests_total", surface="home", status="200", fallback="none", variant="mmr:diverse")
        m.observe("aisle_variant_request_seconds", 0.004, variant="mmr:diverse")
        with pytest.raises(ValueError, match="variant"):
            m.inc("aisle_requests_total", surface="home", status="200", fallback="none", variant="mmr:other")
        seen = parse(m.render())
    finally:
        m.close()
    requests = seen["aisle_requests_total"]["samples"]
    assert len(requests) == len(SURFACES) * len(STATUSES) * len(FALLBACKS) * 5
    assert value(seen, "aisle_requests_total", surface="home", status="200", fallback="none", variant="mmr:diverse") == 1
    assert value(seen, "aisle_variant_request_seconds_count", variant="mmr:diverse") == 1
    assert value(seen, "aisle_variant_request_seconds_count", variant="mmr:control") == 0


def test_the_same_settings_give_the_same_layout_and_other_arms_another(path: Path) -> None:
    settings = _experiment_settings()
    assert Layout(families_for(settings)).digest == Layout(families_for(_experiment_settings())).digest
    assert Layout(families_for(settings)).digest != Layout(FAMILIES).digest
    m = Metrics.open(path, families_for(settings))
    m.inc("aisle_requests_total", surface="cart", status="200", fallback="none", variant="mmr:control")
    m.close()
    m = Metrics.open(path)  # a restart without the experiment: the file is recreated, not misread
    try:
        seen = parse(m.render())
        assert {dict(labels)["variant"] for _, labels in seen["aisle_requests_total"]["samples"]} == {"default", "holdout", "none"}
        assert all(v == 0 for v in seen["aisle_requests_total"]["samples"].values())
    finally:
        m.close()


def test_empty_responses_are_counted_apart_from_short_ones(metrics: Metrics) -> None:
    metrics.inc("aisle_short_responses_total", surface="pdp")
    metrics.inc("aisle_short_responses_total", surface="pdp")
    metrics.inc("aisle_empty_responses_total", surface="pdp")
    seen = parse(metrics.render())
    assert value(seen, "aisle_short_responses_total", surface="pdp") == 2
    assert value(seen, "aisle_empty_responses_total", surface="pdp") == 1
    assert value(seen, "aisle_empty_responses_total", surface="home") == 0


def test_drift_gauges_take_the_worst_live_worker(path: Path) -> None:
    ours, theirs = SPAWN.Pipe()
    other = SPAWN.Process(target=_set_drift_then_hang, args=(str(path), 0.35, theirs))
    other.start()
    try:
        assert ours.poll(60) and ours.recv() == "set"
        m = Metrics.open(path)
        try:
            m.set("aisle_feature_psi", 0.05, feature="item_ctr")
            m.set("aisle_feature_psi", math.nan, feature="ann_score")  # not monitored here
            seen = parse(m.render())
        finally:
            m.close()
    finally:
        other.kill()
        other.join(30)
    assert value(seen, "aisle_feature_psi", feature="item_ctr") == pytest.approx(0.35)
    assert value(seen, "aisle_feature_psi", feature="ann_score") == pytest.approx(0.1)
    assert math.isnan(value(seen, "aisle_feature_psi", feature="ctx_hour"))
    assert {dict(labels)["feature"] for _, labels in seen["aisle_feature_psi"]["samples"]} == set(FEATURE_NAMES)


def _set_drift_then_hang(path: str, psi: float, conn) -> None:
    m = Metrics.open(Path(path))
    m.set("aisle_feature_psi", psi, feature="item_ctr")
    m.set("aisle_feature_psi", 0.1, feature="ann_score")
    conn.send("set")
    conn.recv()


# --- merged totals: the numbers /metrics renders and /status reads ---------------------------------------


def test_totals_sum_series_by_partial_labels_and_window_by_difference(metrics: Metrics) -> None:
    for variant, n in (("default", 3), ("holdout", 2)):
        for _ in range(n):
            metrics.inc("aisle_requests_total", surface="home", status="200", fallback="none", variant=variant)
    metrics.inc("aisle_requests_total", surface="pdp", status="404", fallback="none", variant="none")
    metrics.observe("aisle_request_seconds", 0.004, surface="home")
    before = metrics.totals()
    metrics.inc("aisle_requests_total", surface="home", status="200", fallback="deadline", variant="default")
    metrics.observe("aisle_request_seconds", 0.04, surface="pdp")
    metrics.set("aisle_bundle_age_seconds", 12.0)
    now = metrics.totals()
    assert now.workers == 1 and now.pids == (os.getpid(),)
    assert now.counter("aisle_requests_total") == 7
    assert now.counter("aisle_requests_total", surface="home") == 6
    assert now.counter("aisle_requests_total", variant="default") == 4
    assert now.counter("aisle_requests_total", surface="home", status="200", fallback="none") == 5
    window = now.since(before)
    assert window.counter("aisle_requests_total") == 1 and window.counter("aisle_requests_total", fallback="deadline") == 1
    assert window.histogram("aisle_request_seconds").count == 1
    assert window.gauge("aisle_bundle_age_seconds") == 12  # gauges are not differenced
    merged = now.histogram("aisle_request_seconds")
    assert merged.count == 2 and merged.sum == pytest.approx(0.044)
    assert now.histogram("aisle_request_seconds", surface="home").count == 1
    with pytest.raises(ValueError):
        now.counter("aisle_requests_total", surface="hmoe")
    with pytest.raises(ValueError):
        now.counter("aisle_request_seconds")  # a histogram
    assert metrics.render(totals=now) == metrics.render()  # one source for both


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.5), min_size=1, max_size=200), st.sampled_from([0.5, 0.9, 0.99]))
def test_bucket_quantile_lands_in_the_bucket_of_the_true_quantile(observations: list[float], q: float) -> None:
    counts = np.zeros(len(BOUNDS) + 1)
    for x in observations:
        counts[np.searchsorted(BOUNDS, x, side="left")] += 1
    estimate = bucket_quantile(q, BOUNDS, counts)
    # The rank's bucket, as Prometheus picks it: the first whose cumulative count reaches q·n.
    bucket = int(np.searchsorted(np.cumsum(counts), q * len(observations), side="left"))
    lower = BOUNDS[bucket - 1] if bucket else 0.0
    upper = BOUNDS[bucket] if bucket < len(BOUNDS) else BOUNDS[-1]
    assert lower - 1e-12 <= estimate <= upper + 1e-12


def test_bucket_quantile_interpolates_within_a_bucket_and_is_nan_when_empty() -> None:
    assert bucket_quantile(0.5, (1.0, 2.0), [0, 4, 0]) == pytest.approx(1.5)
    assert bucket_quantile(0.99, (1.0, 2.0), [0, 0, 3]) == 2.0  # the overflow: the highest finite bound
    assert math.isnan(bucket_quantile(0.5, (1.0, 2.0), [0, 0, 0]))
    with pytest.raises(ValueError):
        bucket_quantile(1.5, (1.0,), [1, 0])


# --- computed families: the live inventory feed ------------------------------------------------------------


def _inventory_stats(**changes):
    from engine.inventory.state import LAG_BOUNDS, STAT_NAMES, InventoryStats

    counters = dict.fromkeys(STAT_NAMES, 0) | {"applied_batches": 4, "applied_deltas": 9, "gaps": 1, "resyncs": 2, "lag_sum_ns": 6_000_000}
    lag = [0] * (len(LAG_BOUNDS) + 1)
    lag[1], lag[3] = 3, 1  # 3 batches within 1 ms, 1 within 5 ms
    stats = InventoryStats(
        status="synced", publisher="pub-1", epoch=7, seq=42, updated_at=1000.0, heartbeat_at=1003.0, writer_pid=1,
        n_new=3, capacity=100, counters=counters, lag_buckets=lag,
    )
    return msgspec.structs.replace(stats, **changes)


def test_inventory_families_render_the_hosts_figures_as_they_are(metrics: Metrics) -> None:
    text = metrics.render(computed=inventory_families(_inventory_stats(), now=1010.0))
    seen = parse(text)
    assert value(seen, "aisle_inventory_status", status="synced") == 1
    assert value(seen, "aisle_inventory_status", status="resyncing") == 0
    assert value(seen, "aisle_inventory_publisher_info", publisher="pub-1") == 1
    assert value(seen, "aisle_inventory_seq") == 42
    assert value(seen, "aisle_inventory_last_update_age_seconds") == 10
    assert value(seen, "aisle_inventory_heartbeat_age_seconds") == 7
    assert value(seen, "aisle_inventory_applied_deltas_total") == 9
    assert value(seen, "aisle_inventory_gaps_total") == 1 and value(seen, "aisle_inventory_resyncs_total") == 2
    assert value(seen, "aisle_inventory_lag_seconds_count") == 4
    assert value(seen, "aisle_inventory_lag_seconds_bucket", le="0.001") == 3
    assert value(seen, "aisle_inventory_lag_seconds_sum") == pytest.approx(0.006)
    assert value(seen, "aisle_inventory_new_skus") == 3
    assert seen["aisle_inventory_gaps_total"]["type"] == "counter"


def test_without_a_feed_no_inventory_family_is_rendered(metrics: Metrics) -> None:
    assert not [name for name in parse(metrics.render()) if name.startswith("aisle_inventory")]


def test_only_declared_computed_families_can_be_rendered(metrics: Metrics) -> None:
    stray = Family("aisle_stray", "gauge", "Not declared as computed.")
    with pytest.raises(ValueError, match="COMPUTED"):
        metrics.render(computed=[(stray, [Computed((), 1.0)])])
    lag = next(f for f in INVENTORY if f.kind == "histogram")
    with pytest.raises(ValueError, match="bucket counts"):
        metrics.render(computed=[(lag, [Computed((), 0.0, [1.0, 2.0])])])
