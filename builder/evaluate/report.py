"""The readable evaluation report: one Markdown file plus PNG plots beside it, written from the
JSON-able result of `aisle eval`. Offline tooling only: matplotlib is imported inside
write_report, so importing this module stays cheap and the engine never pulls it in.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

REQUIRED = ("dataset", "protocol", "metrics")
MAIN_COLUMNS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR@20")
# Slate metrics carry the slate size in their name; matched by prefix so a run at another k still
# gets its columns.
SLATE_PREFIXES = ("revenue_NDCG@", "coverage@", "ILD@", "novelty@", "head_share@")
PLOTTED = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
SEGMENT_COLUMNS = ("HR@10", "NDCG@10")
FULL = "full pipeline"
SEGMENT_FULL_KEY = "full"  # how segments name the pipeline's own metrics
DASH = "–"


@dataclass(frozen=True)
class Variant:
    """One row of the main table: the pipeline, a baseline that was rerun, or a published row."""

    name: str
    metrics: dict[str, Any]
    ci: dict[str, Any]
    published: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} (published, not rerun)" if self.published else self.name


def write_report(result: dict, out_md: Path) -> list[Path]:
    """Write out_md (Markdown) and its PNG plots beside it (named <stem>-<plot>.png); return every path written."""
    _validate(result)
    import matplotlib

    matplotlib.use("Agg")  # headless machines and CI have no display; never try a GUI backend

    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    variants = _variants(result)
    segments = result.get("segments") or {}
    ablation = result.get("ablation") or []

    # Everything goes into a private staging directory first and is moved into place only once all
    # of it exists, so a crash or a plotting error never leaves a half report (or clobbers the last
    # good one). Same directory, so os.replace is an atomic rename.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_md.stem}.", suffix=".tmp", dir=out_md.parent))
    try:
        plots: dict[str, str] = {}  # plot key -> file name (relative to the Markdown)
        plots["metrics"] = f"{out_md.stem}-metrics.png"
        _plot_metrics(variants, staging / plots["metrics"])
        if segments:
            plots["segments"] = f"{out_md.stem}-segments.png"
            _plot_segments(segments, variants, staging / plots["segments"])
        if ablation:
            plots["ablation"] = f"{out_md.stem}-ablation.png"
            _plot_ablation(ablation, staging / plots["ablation"])
        heads = result.get("heads") or {}
        if heads:
            plots["heads"] = f"{out_md.stem}-reliability.png"
            _plot_heads(heads, staging / plots["heads"])
        (staging / out_md.name).write_text(_markdown(result, variants, plots), encoding="utf-8")

        written = [out_md.parent / name for name in plots.values()]
        for name in plots.values():
            os.replace(staging / name, out_md.parent / name)
        os.replace(staging / out_md.name, out_md)  # last: the report never links a missing plot
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_md, *written]


def _validate(result: Any) -> None:
    if not isinstance(result, dict):
        raise ValueError(f"evaluation result must be a dict, got {type(result).__name__}")
    missing = [key for key in REQUIRED if result.get(key) is None]
    if missing:
        raise ValueError(f"evaluation result lacks required key(s): {', '.join(missing)} (needs {', '.join(REQUIRED)})")
    if not isinstance(result["metrics"], dict):
        raise ValueError(f"evaluation result 'metrics' must be a dict of metric -> value, got {type(result['metrics']).__name__}")


def _variants(result: dict[str, Any]) -> list[Variant]:
    rows = [Variant(FULL, result["metrics"], result.get("ci") or {})]
    for name, body in (result.get("baselines") or {}).items():
        rows.append(Variant(name, body.get("metrics") or {}, body.get("ci") or {}))
    for name, metrics in (result.get("published") or {}).items():
        rows.append(Variant(name, metrics or {}, {}, published=True))
    return rows


# ---- formatting -------------------------------------------------------------------------------


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    return f"{value:.4f}" if _is_num(value) else DASH


def _interval(value: Any, ci: Any) -> tuple[float, float] | None:
    """The [lo, hi] interval when both it and the value it brackets are usable numbers."""
    if _is_num(value) and isinstance(ci, (list, tuple)) and len(ci) == 2 and all(map(_is_num, ci)):
        return float(ci[0]), float(ci[1])
    return None


def _with_ci(value: Any, ci: Any) -> str:
    interval = _interval(value, ci)
    return _num(value) + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table; the first text_columns are left-aligned, the numbers right-aligned."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)
    return [line(header), rule, *map(line, rows)]


def _image(alt: str, name: str) -> str:
    return f"![{alt}]({quote(name)})"  # quoted so a stem with spaces still links


def _columns(metric_dicts: list[dict[str, Any]]) -> list[str]:
    """The main columns, then whichever slate metrics any row has."""
    present = set().union(*(m.keys() for m in metric_dicts)) if metric_dicts else set()
    slate = [name for prefix in SLATE_PREFIXES for name in sorted(present) if name.startswith(prefix)]
    return [*MAIN_COLUMNS, *slate]


def _segment_keys(segments: dict[str, Any], variants: list[Variant]) -> list[str]:
    """Variant keys used in segments, in main-table order (pipeline, baselines), then any others."""
    seen = {key for body in segments.values() for key in (body.get("metrics") or {})}
    order = [SEGMENT_FULL_KEY, *(v.name for v in variants if not v.published and v.name != FULL)]
    return [k for k in order if k in seen] + sorted(seen - set(order))


def _segment_label(key: str) -> str:
    return FULL if key == SEGMENT_FULL_KEY else key


# ---- Markdown ---------------------------------------------------------------------------------


def _markdown(result: dict[str, Any], variants: list[Variant], plots: dict[str, str]) -> str:
    where = [str(result["protocol"])]
    if result.get("split"):
        where.append(f"{result['split']} split")
    if _is_num(result.get("users")):
        where.append(f"{int(result['users']):,} shoppers")
    out = [f"# Evaluation: {result['dataset']} ({', '.join(where)})", ""]
    if _is_num(result.get("k")):
        out += [f"Slates of k = {int(result['k'])}.", ""]
    out += _reproduce(result.get("run") or {})

    columns = _columns([v.metrics for v in variants])
    rows = [[v.label, *(_with_ci(v.metrics.get(c), v.ci.get(c)) for c in columns)] for v in variants]
    out += ["## Results", "", *_table(["Variant", *columns], rows), ""]
    notes = []
    if any(v.ci for v in variants):
        notes.append("Brackets are 95% bootstrap confidence intervals over shoppers.")
    if any(v.published for v in variants):
        notes.append("Published rows are copied from papers on the same data file, not rerun here.")
    out += [" ".join(notes), ""] if notes else []
    out += [_image("HR and NDCG per variant", plots["metrics"]), ""]

    segments = result.get("segments") or {}
    if segments:
        rows = []
        for segment, body in segments.items():
            users = f"{int(body['users']):,}" if _is_num(body.get("users")) else DASH
            per_variant = body.get("metrics") or {}
            for key in _segment_keys({segment: body}, variants):
                rows.append([segment, users, _segment_label(key), *(_num((per_variant[key] or {}).get(c)) for c in SEGMENT_COLUMNS)])
        out += ["## Segments", "", *_table(["Segment", "Users", "Variant", *SEGMENT_COLUMNS], rows, text_columns=3), ""]
        out += [_image("HR@10 per segment and variant", plots["segments"]), ""]

    ablation = result.get("ablation") or []
    if ablation:
        out += _ablation(ablation) + [_image("NDCG@10 per ablation row", plots["ablation"]), ""]

    heads = result.get("heads") or {}
    if heads:
        out += _heads(heads) + [_image("Reliability of each ranking head", plots["heads"]), ""]

    correlation = result.get("correlation") or {}
    if correlation:
        out += ["## Correlation", "", *_table(["Quantity", "Value"], [[k, _num(v)] for k, v in correlation.items()]), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _reproduce(run: dict[str, Any]) -> list[str]:
    out = ["## How to reproduce", ""]
    if not run:
        return out + ["No run record in this result: the command that produced it is unknown.", ""]
    if run.get("command"):
        out += ["```sh", str(run["command"]), "```", ""]
    facts = [(label, run.get(key)) for label, key in (("Commit", "commit"), ("Machine", "machine"), ("Started", "started_at"))]
    out += [f"- {label}: `{value}`" if label == "Commit" else f"- {label}: {value}" for label, value in facts if value]
    seconds = run.get("seconds")
    if isinstance(seconds, dict) and seconds:
        out.append("- Time: " + ", ".join(f"{phase} {s:.1f} s" for phase, s in seconds.items() if _is_num(s)))
    elif _is_num(seconds):
        out.append(f"- Time: {seconds:.1f} s")
    return out + [""]


def _heads(heads: dict[str, Any]) -> list[str]:
    rows = []
    for name, body in heads.items():
        cal, raw = body.get("calibrated") or {}, body.get("uncalibrated") or {}
        rows.append([
            name, _num(cal.get("ece")), _num(cal.get("ece_floor")), _num(raw.get("ece")), _num(cal.get("log_loss")), _num(cal.get("auc")),
            f"{int(cal['rows']):,}" if _is_num(cal.get("rows")) else DASH, _num(cal.get("positive_rate")), _num(cal.get("mean_predicted")),
            str(body.get("calibration", DASH)), str(body.get("labels") or body.get("position") or DASH),
        ])  # fmt: skip
    header = ["Head", "ECE", "ECE noise floor", "ECE uncalibrated", "Log loss", "AUC", "Rows", "Observed rate", "Mean predicted", "Map", "Labels / position"]
    note = ("Held-out shoppers of the bundle's build, cross-fitted (the trees and the calibration map never saw the judged "
            "rows); ECE over 15 equal-weight bins. The noise floor is the ECE a perfectly calibrated head "
            "would show on the same rows from sampling alone (labels drawn from its own predictions); an ECE near it "
            "is as calibrated as the rows can tell. Conversion heads are judged on their training labels' weights "
            "(open attribution windows weighted by the delay distribution, builder/labels.py).")
    return ["## Ranking heads", "", *_table(header, rows), "", note, ""]


def _plot_heads(heads: dict[str, Any], path: Path) -> None:
    from builder.calibration import ReliabilityTable, plot_reliability  # offline tooling, like matplotlib

    import msgspec

    tables = {name: msgspec.convert(body["calibrated"]["table"], ReliabilityTable) for name, body in heads.items()}
    plot_reliability(tables, path, title="Reliability per ranking head (held-out shoppers)")


def _ablation(rows: list[dict[str, Any]]) -> list[str]:
    metrics = [row.get("metrics") or {} for row in rows]
    columns = [c for c in _columns(metrics) if any(c in m for m in metrics)]
    base = metrics[0]

    def cell(m: dict[str, Any], column: str, first: bool) -> str:
        value, ref = m.get(column), base.get(column)
        if first or not (_is_num(value) and _is_num(ref)):
            return _num(value)
        return f"{value:.4f} ({value - ref:+.4f})"

    table = [[str(row.get("name", DASH)), *(cell(m, c, i == 0) for c in columns)] for i, (row, m) in enumerate(zip(rows, metrics))]
    note = f"Differences in parentheses are against the first row ({rows[0].get('name', DASH)})."
    return ["## Ablation", "", *_table(["Configuration", *columns], table), "", note, ""]


# ---- plots ------------------------------------------------------------------------------------


def _value(metrics: dict[str, Any], name: str) -> float:
    value = metrics.get(name)
    return float(value) if _is_num(value) else math.nan  # NaN bars are simply not drawn


def _grouped_bars(ax: Any, groups: list[str], series: list[tuple[str, list[float], dict[str, Any]]]) -> None:
    """One cluster per group, one bar per series; each series carries its own bar styling."""
    width = 0.8 / max(len(series), 1)
    for i, (label, heights, style) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar([g + offset for g in range(len(groups))], heights, width, label=label, **style)
    ax.set_xticks(range(len(groups)), groups)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _plot_metrics(variants: list[Variant], path: Path) -> None:
    from matplotlib.figure import Figure  # the OO API: no pyplot global state, nothing to close

    fig = Figure(figsize=(max(7.0, 1.2 * len(variants) + 3.0), 4.5), layout="constrained")
    ax = fig.subplots()
    series = []
    for i, v in enumerate(variants):
        heights = [_value(v.metrics, m) for m in PLOTTED]
        intervals = [_interval(v.metrics.get(m), v.ci.get(m)) for m in PLOTTED]
        style: dict[str, Any] = {"color": f"C{i}"}
        if any(intervals):
            # Asymmetric error bars from the CI (NaN: no bar, no cap); clipped at 0 as matplotlib rejects negatives.
            below = [max(0.0, h - iv[0]) if iv else math.nan for h, iv in zip(heights, intervals)]
            above = [max(0.0, iv[1] - h) if iv else math.nan for h, iv in zip(heights, intervals)]
            style |= {"yerr": [below, above], "capsize": 2}
        if v.published:  # published rows are someone else's numbers: hatched and faded
            style |= {"hatch": "//", "alpha": 0.5, "edgecolor": "black", "linewidth": 0.5}
        series.append((v.label, heights, style))
    _grouped_bars(ax, list(PLOTTED), series)
    ax.set_ylabel("score")
    ax.set_title("Ranking quality per variant")
    fig.savefig(path, dpi=110)


def _plot_segments(segments: dict[str, Any], variants: list[Variant], path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(segments)
    colours = {SEGMENT_FULL_KEY if v.name == FULL else v.name: f"C{i}" for i, v in enumerate(variants)}
    fig = Figure(figsize=(max(7.0, 1.4 * len(names) + 3.0), 4.5), layout="constrained")
    ax = fig.subplots()
    series = []
    for j, key in enumerate(_segment_keys(segments, variants)):
        heights = [_value((segments[s].get("metrics") or {}).get(key) or {}, "HR@10") for s in names]
        series.append((_segment_label(key), heights, {"color": colours.get(key, f"C{len(variants) + j}")}))
    _grouped_bars(ax, names, series)
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylabel("HR@10")
    ax.set_title("HR@10 per segment")
    fig.savefig(path, dpi=110)


def _plot_ablation(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    names = [str(row.get("name", DASH)) for row in rows]
    values = [_value(row.get("metrics") or {}, "NDCG@10") for row in rows]
    fig = Figure(figsize=(7.0, 1.0 + 0.45 * len(rows)), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(rows)), values, color=["C0", *["C7"] * (len(rows) - 1)])
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()  # first row (the reference) on top, as in the table
    if _is_num(values[0]):
        ax.axvline(values[0], color="C0", linestyle="--", linewidth=1)  # the reference, to read differences against
    ax.set_xlabel("NDCG@10")
    ax.set_title("Ablation: NDCG@10")
    fig.savefig(path, dpi=110)
