"""`/status`: one HTML page an operator can read at a glance, rendered on the server.

No script, no stylesheet or font or icon from anywhere (inline CSS, a `data:` favicon), so the page
works from an air-gapped browser and the app can forbid every load in its CSP header. Every figure
sits in an element with an `id` (or, in repeated rows, a `data-*` attribute) and carries its raw
number in `data-value`, so a test or a script can read it without parsing the formatted text.

Where the figures come from:

- requests, latency, candidates, events, slates, variants: the merged metrics (`engine.metrics.
  Totals`, the same numbers `/metrics` renders), totals since the metrics file was created; rates
  and the windowed latency quantiles are over the last minute, from samples of the merged totals
  that the answering worker keeps (`Engine.keep_figures`), so any worker gives the same answer;
- latency quantiles are estimated from histogram buckets, as Prometheus' histogram_quantile does;
- live inventory: the host's item state header (one subscriber writes it);
- drift: the answering worker's sampled window, beside the maximum over live workers' PSI gauges.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from typing import Iterable

from engine.drift import DriftReport
from engine.inventory.state import LAG_BOUNDS, InventoryStats
from engine.metrics import SOURCES, SURFACES, Totals, bucket_quantile, variants_for
from engine.settings import Settings

DASH = "—"
TOTAL_CLASS = ' class="total"'
DRIFTED_CLASS = ' class="drifted"'


@dataclass(frozen=True)
class BundleFacts:
    build_id: str
    created_at: str  # ISO-8601 UTC from the manifest ("" unknown)
    data_end_ts: float  # time of the last event the bundle learned from (0 unknown)
    loaded_at: float  # when this worker started serving it
    degraded: list[tuple[str, str]] = field(default_factory=list)  # (part, why) not loaded
    drift_off: str | None = None  # why drift is not monitored (None: it is)


@dataclass(frozen=True)
class EventLogFacts:
    last_seq: int  # last event sequence number in the log
    last_slate_seq: int
    queued: int  # slates this worker has waiting for a commit


@dataclass(frozen=True)
class StatusInputs:
    now: float
    pid: int  # the worker answering
    settings: Settings
    totals: Totals  # merged metrics, since the metrics file was created
    window: Totals | None  # increases over the last `window_s` seconds (None: no sample yet)
    window_s: float
    bundle: BundleFacts | None  # None: no bundle loaded (see `problem`)
    problem: str
    inventory: InventoryStats | None  # None: the feed is off or not synced
    events: EventLogFacts | None
    drift: DriftReport | None  # None: not monitored (see bundle.drift_off)


# --- formatting ---------------------------------------------------------------------------------


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _int(x: float | None) -> str:
    return f"{int(round(x)):,}" if _finite(x) else DASH  # type: ignore[arg-type]


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.2f} ms" if _finite(seconds) else DASH  # type: ignore[operator]


def _rate(x: float | None) -> str:
    return f"{x:.2f}/s" if _finite(x) else DASH  # type: ignore[str-format]


def _share(x: float | None) -> str:
    return f"{x * 100:.1f}%" if _finite(x) else DASH  # type: ignore[operator]


def _num(x: float | None, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _finite(x) else DASH  # type: ignore[str-format]


def _age(seconds: float | None) -> str:
    if not _finite(seconds):
        return DASH
    s = max(0.0, float(seconds))  # type: ignore[arg-type]
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _when(ts: float | None) -> str:
    if not _finite(ts) or not ts:
        return DASH
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")  # type: ignore[arg-type]


def _raw(value: object) -> str:
    if isinstance(value, float):  # NumPy floats too: their repr is not a plain number
        return repr(float(value)) if math.isfinite(value) else "NaN"
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def _td(text: str, value: object = None, *, id: str | None = None, cls: str | None = None) -> str:
    attrs = ""
    if id is not None:
        attrs += f' id="{_esc(id)}"'
    if cls is not None:
        attrs += f' class="{_esc(cls)}"'
    if value is not None:
        attrs += f' data-value="{_esc(_raw(value))}"'
    return f"<td{attrs}>{_esc(text)}</td>"


def _row(label: str, cell: str, hint: str = "") -> str:
    hint_html = f'<span class="hint">{_esc(hint)}</span>' if hint else ""
    return f'<tr><th scope="row">{_esc(label)}{hint_html}</th>{cell}</tr>'


def _table(head: Iterable[str], rows: Iterable[str], **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{_esc(v)}"' for k, v in attrs.items())
    cols = "".join(f'<th scope="col">{_esc(h)}</th>' for h in head)
    return f"<table{extra}><thead><tr>{cols}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _facts(rows: Iterable[str], **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{_esc(v)}"' for k, v in attrs.items())
    return f'<table class="facts"{extra}><tbody>{"".join(rows)}</tbody></table>'


def _iso_ts(text: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None
    except ValueError:
        return None


# --- sections -----------------------------------------------------------------------------------


def _header(s: StatusInputs) -> str:
    t = s.totals
    pids = ", ".join(str(p) for p in t.pids)
    bundle = s.bundle.build_id if s.bundle else "no bundle"
    state = "ready" if s.bundle else "not ready"
    return (
        f'<header><h1>Aisle <span class="state {state.replace(" ", "-")}" id="ready" data-value="{_esc(state)}">{_esc(state)}</span></h1>'
        f'<p>Answered by worker <b id="worker-pid" data-value="{s.pid}">{s.pid}</b> at '
        f'<span id="now" data-value="{_esc(_raw(s.now))}">{_esc(_when(s.now))}</span>; '
        f'live workers <b id="workers-live" data-value="{t.workers}">{t.workers}</b> '
        f'(<span id="worker-pids" data-value="{_esc(pids)}">{_esc(pids)}</span>); serving <b>{_esc(bundle)}</b>.</p></header>'
    )


def _bundle(s: StatusInputs) -> str:
    b = s.bundle
    if b is None:
        return f'<section id="bundle"><h2>Bundle</h2><p class="bad" id="problem">{_esc(s.problem or "no bundle loaded")}</p></section>'
    built = _iso_ts(b.created_at)
    rows = [
        _row("Build id", _td(b.build_id, b.build_id, id="bundle-id")),
        _row("Built", _td(b.created_at or DASH, built if built is not None else "", id="bundle-built")),
        _row("Age since build", _td(_age(s.now - built if built else None), (s.now - built) if built else math.nan, id="bundle-age")),
        _row("Data up to", _td(_when(b.data_end_ts), b.data_end_ts, id="bundle-data-end"), "last event it learned from"),
        _row("Data age", _td(_age(s.now - b.data_end_ts if b.data_end_ts else None), (s.now - b.data_end_ts) if b.data_end_ts else math.nan, id="bundle-data-age")),
        _row("Serving since", _td(_when(b.loaded_at), b.loaded_at, id="bundle-loaded"), "in this worker"),
        _row("Swaps (swapped / refused)", _td(
            f"{_int(s.totals.counter('aisle_bundle_swaps_total', outcome='swapped'))} / {_int(s.totals.counter('aisle_bundle_swaps_total', outcome='refused'))}",
            s.totals.counter("aisle_bundle_swaps_total", outcome="swapped"), id="bundle-swaps")),
    ]
    parts = ",".join(part for part, _ in b.degraded)
    if b.degraded:
        items = "".join(f'<li data-part="{_esc(part)}"><b>{_esc(part)}</b>: {_esc(why)}</li>' for part, why in b.degraded)
        degraded = f'<div id="degraded" class="bad" data-value="{_esc(parts)}"><p>Degraded: serving without</p><ul>{items}</ul></div>'
    else:
        degraded = '<p id="degraded" class="good" data-value="">Every part loaded: full pipeline.</p>'
    return f'<section id="bundle"><h2>Bundle</h2>{_facts(rows)}{degraded}</section>'


def _requests(s: StatusInputs) -> str:
    t, w = s.totals, s.window
    minute = f"last {s.window_s:.0f} s" if w is not None else "no sample yet"
    rows = []
    for surface in (*SURFACES, "all"):
        labels = {} if surface == "all" else {"surface": surface}
        total = t.counter("aisle_requests_total", **labels)
        ok = t.counter("aisle_requests_total", status="200", **labels)
        full = t.counter("aisle_requests_total", status="200", fallback="none", **labels)
        short = t.counter("aisle_short_responses_total", **labels)
        empty = t.counter("aisle_empty_responses_total", **labels)
        hist_all = t.histogram("aisle_request_seconds", **labels)
        rate = p50 = p99 = math.nan
        if w is not None and s.window_s > 0:
            rate = w.counter("aisle_requests_total", **labels) / s.window_s
            hist = w.histogram("aisle_request_seconds", **labels)
            p50, p99 = hist.quantile(0.5), hist.quantile(0.99)
        all_p50, all_p99 = hist_all.quantile(0.5), hist_all.quantile(0.99)
        name = "other (refused before decoding)" if surface == "other" else surface
        rows.append(
            f'<tr data-surface="{surface}"{TOTAL_CLASS if surface == "all" else ""}><th scope="row">{_esc(name)}</th>'
            + _td(_int(total), total, id=f"requests-{surface}")
            + _td(_int(total - ok), total - ok, id=f"errors-{surface}")
            + _td(_int(ok - full), ok - full, id=f"fallback-{surface}")
            + _td(_int(short), short, id=f"short-{surface}")
            + _td(_int(empty), empty, id=f"empty-{surface}")
            + _td(_rate(rate), rate, id=f"rate-{surface}")
            + _td(_ms(p50), p50, id=f"p50-{surface}")
            + _td(_ms(p99), p99, id=f"p99-{surface}")
            + _td(_ms(all_p50), all_p50, id=f"p50-all-{surface}")
            + _td(_ms(all_p99), all_p99, id=f"p99-all-{surface}")
            + "</tr>"
        )
    head = ("surface", "requests", "errors", "degraded", "short", "empty", f"rate ({minute})", "p50 (minute)", "p99 (minute)", "p50 (all)", "p99 (all)")
    stages = []
    for stage in ("resolve", "retrieve", "filter", "features", "rank", "rerank"):
        h = t.histogram("aisle_stage_seconds", stage=stage)
        p50, p99 = h.quantile(0.5), h.quantile(0.99)
        stages.append(f'<tr data-stage="{stage}"><th scope="row">{stage}</th>' + _td(_ms(p50), p50, cls="p50") + _td(_ms(p99), p99, cls="p99") + "</tr>")
    shed = t.counter("aisle_shed_total")
    limited = t.counter("aisle_rate_limited_total")
    delay = t.gauge("aisle_queue_delay_seconds")
    admission = [
        _row("Shed (503, overloaded)", _td(_int(shed), shed, id="shed"), "waited too long, or too many in progress"),
        _row("Rate limited (429)", _td(_int(limited), limited, id="rate-limited"), "a key over its limit"),
        _row("Queue delay", _td(_ms(delay), delay, id="queue-delay"), "longest wait in a worker's queue, last second"),
    ]
    return (
        '<section id="requests"><h2>Requests</h2>'
        '<p class="hint">Counts since the metrics file was created (all workers, restarts included); rate and '
        '"minute" quantiles over the last minute; latency is engine time, estimated from histogram buckets. '
        '"degraded": answered by a step down the degradation ladder.</p>'
        + _table(head, rows)
        + "<h3>Admission</h3>"
        + _facts(admission)
        + _table(("stage", "p50 (all)", "p99 (all)"), stages, id="stages")
        + "</section>"
    )


def _experiments(s: StatusInputs) -> str:
    t, settings = s.totals, s.settings
    count = {v: t.counter("aisle_requests_total", variant=v) for v in variants_for(settings)}

    def p99(variant: str) -> float:
        return t.histogram("aisle_variant_request_seconds", variant=variant).quantile(0.99)

    head = ("arm", "requests", "p99 (all)")
    base = [
        f'<tr data-variant="{v}"><th scope="row">{v}</th>' + _td(_int(count[v]), count[v], cls="requests") + _td(_ms(p99(v)), p99(v), cls="p99") + "</tr>"
        for v in ("default", "holdout")
    ]
    parts = [
        '<section id="experiments"><h2>Experiments</h2>',
        f'<p>Holdout: <span id="holdout-share" data-value="{settings.holdout}">{_share(settings.holdout)}</span> of shoppers, '
        f'served the base settings. Running experiments: <b id="experiments-count" data-value="{len(settings.experiments)}">{len(settings.experiments)}</b>.</p>',
        _table(head, base, id="base-arms"),
    ]
    for e in settings.experiments:
        weights = sum(v.weight for v in e.variants)
        in_experiment = sum(count[f"{e.name}:{v.name}"] for v in e.variants)
        rows = []
        for i, v in enumerate(e.variants):
            label = f"{e.name}:{v.name}"
            observed = count[label] / in_experiment if in_experiment else math.nan
            role = " (control)" if i == 0 else ""
            rows.append(
                f'<tr data-variant="{_esc(label)}"><th scope="row">{_esc(v.name)}{role}</th>'
                + _td(_num(v.weight, 2), v.weight, cls="weight")
                + _td(_share(v.weight / weights), v.weight / weights, cls="share")
                + _td(_int(count[label]), count[label], cls="requests")
                + _td(_share(observed), observed, cls="observed-share")
                + _td(_ms(p99(label)), p99(label), cls="p99")
                + "</tr>"
            )
        parts.append(
            f'<h3 data-experiment="{_esc(e.name)}">{_esc(e.name)}</h3>'
            f'<p>Traffic <span class="traffic" data-experiment="{_esc(e.name)}" data-value="{e.traffic}">{_share(e.traffic)}</span> of shoppers; '
            f'salt <code>{_esc(e.salt or e.name)}</code>; <span class="experiment-requests" data-experiment="{_esc(e.name)}" data-value="{in_experiment}">{_int(in_experiment)}</span> requests.</p>'
            + _table(("variant", "weight", "share", "requests", "observed share", "p99 (all)"), rows, data_experiment=e.name)
        )
    parts.append("</section>")
    return "".join(parts)


def _candidates(s: StatusInputs) -> str:
    t = s.totals
    rows = []
    for source in SOURCES:
        proposed = t.counter("aisle_candidates_total", source=source)
        served = t.counter("aisle_candidates_served_total", source=source)
        share = served / proposed if proposed else math.nan
        if not proposed and not served:
            continue
        rows.append(
            f'<tr data-source="{source}"><th scope="row">{source}</th>'
            + _td(_int(proposed), proposed, id=f"candidates-{source}")
            + _td(_int(served), served, id=f"served-{source}")
            + _td(_share(share), share, id=f"share-{source}")
            + "</tr>"
        )
    filtered = t.counter("aisle_filtered_total")
    return (
        '<section id="candidates"><h2>Candidates</h2>'
        '<p class="hint">Share: items served / candidates proposed, by the source that proposed them '
        '("backfill" and "new" items can be served without being counted as proposed).</p>'
        + _table(("source", "proposed", "served", "share served"), rows)
        + f'<p>Removed by filters: <b id="filtered" data-value="{filtered}">{_int(filtered)}</b>.</p></section>'
    )


def _inventory(s: StatusInputs) -> str:
    inv = s.inventory
    if inv is None:
        why = ("enabled, but no synced item state: serving the bundle's stock flags"
               if s.settings.inventory.enabled else "off: no inventory endpoints in the settings; serving the bundle's stock flags")
        return f'<section id="inventory"><h2>Live inventory</h2><p id="inventory-off" class="{"bad" if s.settings.inventory.enabled else "hint"}">{_esc(why)}</p></section>'
    c = inv.counters
    lag_p50 = bucket_quantile(0.5, LAG_BOUNDS, inv.lag_buckets)
    lag_p99 = bucket_quantile(0.99, LAG_BOUNDS, inv.lag_buckets)
    lag_max = c.get("lag_max_ns", 0) / 1e9 if c.get("lag_count", 0) else math.nan
    update_age = s.now - inv.updated_at if inv.updated_at else math.nan
    beat_age = s.now - inv.heartbeat_at if inv.heartbeat_at else math.nan
    good = inv.status == "synced"
    rows = [
        _row("Status", f'<td id="inventory-status" class="{"good" if good else "bad"}" data-value="{_esc(inv.status)}">{_esc(inv.status)}</td>'),
        _row("Publisher", _td(inv.publisher or DASH, inv.publisher, id="inventory-publisher")),
        _row("Epoch / sequence", _td(f"{inv.epoch} / {inv.seq}", inv.seq, id="inventory-seq")),
        _row("Last update", _td(f"{_age(update_age)} ago" if _finite(update_age) else DASH, update_age, id="inventory-update-age")),
        _row("Last heard", _td(f"{_age(beat_age)} ago" if _finite(beat_age) else DASH, beat_age, id="inventory-heartbeat-age"), "heartbeat"),
        _row("Lag p50 / p99 / max", _td(f"{_ms(lag_p50)} / {_ms(lag_p99)} / {_ms(lag_max)}", lag_p99, id="inventory-lag")),
        _row("Lag p50", _td(_ms(lag_p50), lag_p50, id="inventory-lag-p50"), "publish → applied"),
        _row("Lag p99", _td(_ms(lag_p99), lag_p99, id="inventory-lag-p99")),
        _row("Deltas applied", _td(_int(c.get("applied_deltas", 0)), c.get("applied_deltas", 0), id="inventory-applied")),
        _row("Deltas rejected / unknown SKU", _td(f"{_int(c.get('rejected_deltas', 0))} / {_int(c.get('unknown_skus', 0))}", c.get("rejected_deltas", 0), id="inventory-rejected")),
        _row("Sequence gaps", _td(_int(c.get("gaps", 0)), c.get("gaps", 0), id="inventory-gaps")),
        _row("Resyncs (failed)", _td(f"{_int(c.get('resyncs', 0))} ({_int(c.get('resync_failures', 0))})", c.get("resyncs", 0), id="inventory-resyncs")),
        _row("New SKUs", _td(f"{_int(inv.n_new)} of {_int(inv.capacity)}", inv.n_new, id="inventory-new-skus"), "since the build"),
    ]
    return f'<section id="inventory"><h2>Live inventory</h2>{_facts(rows)}</section>'


def _events(s: StatusInputs) -> str:
    t, e = s.totals, s.events
    rows = []
    for label, ident, value in (
        ("Events accepted", "events-accepted", t.counter("aisle_events_total", outcome="accepted")),
        ("Events duplicate", "events-duplicate", t.counter("aisle_events_total", outcome="duplicate")),
        ("Events rejected", "events-rejected", t.counter("aisle_events_total", outcome="rejected")),
        ("Batches stored", "batches-stored", t.counter("aisle_event_batches_total", outcome="stored")),
        ("Batches refused (4xx)", "batches-refused", t.counter("aisle_event_batches_total", outcome="refused")),
        ("Batches not stored (503)", "batches-unavailable", t.counter("aisle_event_batches_total", outcome="unavailable")),
        ("Batches shed (503, overloaded)", "batches-shed", t.counter("aisle_event_batches_total", outcome="shed")),
        ("Batches rate limited (429)", "batches-limited", t.counter("aisle_event_batches_total", outcome="limited")),
        ("Slates logged", "slates-logged", t.counter("aisle_slates_logged_total")),
        ("Slates dropped", "slates-dropped", t.counter("aisle_slates_dropped_total")),
        ("Slates failed", "slates-failed", t.counter("aisle_slates_failed_total")),
    ):
        rows.append(_row(label, _td(_int(value), value, id=ident)))
    queued = t.gauge("aisle_slates_queued")
    rows.append(_row("Slates queued", _td(_int(queued), queued, id="slates-queued"), "all workers"))
    if s.window is not None and s.window_s > 0:
        ingest = s.window.counter("aisle_events_total") / s.window_s
        slates = s.window.counter("aisle_slates_logged_total") / s.window_s
        rows.append(_row("Event ingest", _td(_rate(ingest), ingest, id="events-rate"), "last minute"))
        rows.append(_row("Slates logged", _td(_rate(slates), slates, id="slates-rate"), "last minute"))
    if e is not None:
        rows.append(_row("Last event seq", _td(str(e.last_seq), e.last_seq, id="events-last-seq")))
        rows.append(_row("Last slate seq", _td(str(e.last_slate_seq), e.last_slate_seq, id="slates-last-seq")))
    on = s.settings.events.log_slates
    rows.append(_row("Slate logging", _td("on" if on else "off (events.log_slates = false)", int(on), id="slates-on")))
    return f'<section id="events"><h2>Event log</h2>{_facts(rows)}</section>'


def _drift(s: StatusInputs) -> str:
    d, t = s.drift, s.totals
    if d is None:
        why = s.bundle.drift_off if s.bundle and s.bundle.drift_off else "no bundle loaded"
        return f'<section id="drift"><h2>Drift</h2><p id="drift-off" class="hint">Not monitored: {_esc(why)}</p></section>'
    min_rows = s.settings.drift.min_rows
    rows = [
        _row("Sampled rows", _td(f"{_int(d.rows)} (PSI from {_int(min_rows)})", d.rows, id="drift-rows"), f"worker {s.pid}'s window"),
        _row("Threshold", _td(_num(d.threshold, 2), d.threshold, id="drift-threshold"), "PSI above it marks drift"),
        _row("Ranker score mean", _td(_num(d.mean_score), d.mean_score if d.mean_score is not None else math.nan, id="score-mean")),
        _row("Reference mean", _td(_num(d.reference_mean_score), d.reference_mean_score, id="score-reference-mean"), "training, same surface mix"),
        _row("Ranker score PSI", _td(_num(d.score_psi), d.score_psi if d.score_psi is not None else math.nan, id="score-psi")),
        _row("Drifted", _td(f"{len(d.drifted)}: {', '.join(d.drifted)}" if d.drifted else "none", len(d.drifted), id="drifted-count", cls="wrap")),
    ]
    body = _facts(rows)
    if d.psi:
        feature_rows = []
        for name, value in sorted(d.psi.items(), key=lambda kv: (-kv[1] if math.isfinite(kv[1]) else 0.0, kv[0])):
            worst = t.gauge("aisle_feature_psi", feature=name) if name in _declared_features(t) else math.nan
            drifted = name in d.drifted
            feature_rows.append(
                f'<tr data-feature="{_esc(name)}"{DRIFTED_CLASS if drifted else ""}><th scope="row">{_esc(name)}</th>'
                + _td(_num(value), value, cls="psi")
                + _td(_num(worst), worst, cls="psi-max")
                + _td("drifted" if drifted else "", int(drifted), cls="mark")
                + "</tr>"
            )
        body += _table(("feature", f"PSI (worker {s.pid})", "PSI (max, all workers)", f"> {d.threshold:g}"), feature_rows, id="drift-features")
    else:
        body += f'<p id="drift-collecting" class="hint">Collecting: {_int(d.rows)} of {_int(min_rows)} rows before a PSI is reported.</p>'
    return f'<section id="drift"><h2>Drift</h2>{body}</section>'


def _declared_features(t: Totals) -> tuple[str, ...]:
    f = t.layout.by_name["aisle_feature_psi"]
    return f.labels[0].values


STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #1d232a; background: #f6f7f9; }
header h1 { margin: 0 0 .25rem; font-size: 1.5rem; }
h2 { font-size: 1.1rem; margin: 0 0 .5rem; }
h3 { font-size: 1rem; margin: .75rem 0 .25rem; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(28rem, 1fr)); gap: 1rem; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: .75rem 1rem; }
section#requests, section#experiments { grid-column: 1 / -1; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: right; padding: .15rem .5rem; border-bottom: 1px solid #eef0f3; white-space: nowrap; }
th[scope=row], thead th:first-child { text-align: left; font-weight: 500; }
thead th { font-size: .8rem; color: #56606b; font-weight: 600; }
table.facts td { text-align: left; }
tr.total th, tr.total td { font-weight: 600; border-top: 1px solid #c9ced4; }
tr.drifted td, .bad { color: #b3261e; }
.good { color: #1e7b34; }
.hint { color: #6b7580; font-size: .85rem; margin-left: .4rem; }
p.hint { margin: 0 0 .5rem; }
.state { font-size: .8rem; padding: .1rem .5rem; border-radius: 1rem; vertical-align: middle; }
.state.ready { background: #dcf3e2; color: #1e7b34; }
.state.not-ready { background: #fbe0de; color: #b3261e; }
code { font-size: .85rem; }
td.wrap { white-space: normal; }
"""


def render_status(s: StatusInputs) -> bytes:
    """The whole page, UTF-8."""
    title = f"Aisle status — {s.bundle.build_id if s.bundle else 'not ready'}"
    body = (
        _header(s)
        + "<main>"
        + _bundle(s)
        + _inventory(s)
        + _requests(s)
        + _experiments(s)
        + _events(s)
        + _candidates(s)
        + _drift(s)
        + "</main>"
    )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )
    return page.encode("utf-8")
