"""An `Analysis` written out: DIR/analysis.json (the Struct as JSON), DIR/report.md (tables and
verdicts) and standalone SVG plots beside it (one bar chart per metric, one forest plot of the
relative differences)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from builder.experiments import svg
from builder.experiments.analyze import METRIC_LABELS, METRICS, Analysis, Difference, Estimate, SampleRatio

FORMATS: dict[str, Callable[[float], str]] = {
    "ctr": lambda v: f"{v:.4f}",
    "item_ctr": lambda v: f"{v:.4f}",
    "add_to_cart_rate": lambda v: f"{v:.4f}",
    "conversion": lambda v: f"{v:.2%}",
    "revenue_per_request": lambda v: f"{v:.3f}",
    "revenue_per_unit": lambda v: f"{v:.2f}",
}
FOREST = "differences.svg"


def plot_name(metric: str) -> str:
    return f"metric_{metric}.svg"


def write_outputs(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Write analysis.json, report.md and the plots into `out_dir` (created); → the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_write(out_dir / "analysis.json", msgspec.json.format(msgspec.json.encode(analysis), indent=2).decode() + "\n")]
    plots: list[str] = []
    for metric in METRICS:
        arms = analysis.arms
        estimates = [getattr(a, metric) for a in arms]
        text = svg.bar_chart(
            f"{METRIC_LABELS[metric]} per variant ({1 - analysis.alpha:.0%} CI)",
            [a.variant for a in arms],
            [e.value for e in estimates],
            [e.ci_low for e in estimates],
            [e.ci_high for e in estimates],
            FORMATS[metric],
        )
        written.append(_write(out_dir / plot_name(metric), text))
        plots.append(plot_name(metric))
    rows = [
        svg.Row(f"{d.variant} vs {d.control.split(':')[-1]}: {METRIC_LABELS[d.metric]}", d.rel_diff, d.rel_ci_low, d.rel_ci_high, d.significant)
        for e in analysis.experiments
        for d in e.differences
    ]
    if rows:
        title = f"Relative difference against the control ({1 - analysis.alpha:.0%} CI; red: p < {analysis.alpha:g})"
        written.append(_write(out_dir / FOREST, svg.forest_plot(title, rows)))
        plots.append(FOREST)
    written.append(_write(out_dir / "report.md", markdown(analysis, plots)))
    return written


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report
    return path


def _alt(plot: str) -> str:
    for metric in METRICS:
        if plot == plot_name(metric):
            return f"{METRIC_LABELS[metric]} per variant"
    return "relative differences against the control"


def _when(ts: float | None) -> str:
    if ts is None:
        return "unbounded"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(x: float | None, fmt: Callable[[float], str]) -> str:
    return "n/a" if x is None else fmt(x)


def _est(e: Estimate, fmt: Callable[[float], str]) -> str:
    if e.value is None:
        return "n/a"
    if e.ci_low is None or e.ci_high is None:
        return fmt(e.value)
    return f"{fmt(e.value)} [{fmt(e.ci_low)}, {fmt(e.ci_high)}]"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2%}"


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _srm_row(name: str, s: SampleRatio) -> list[str]:
    split = ", ".join(f"{a} {u:,} ({sh:.1%})" for a, u, sh in zip(s.arms, s.units, s.expected_shares))
    chi2 = "n/a" if s.chi2 is None else f"{s.chi2:.2f}"
    return [name, split, s.shares_from, chi2, _p(s.p_value), "**yes**" if s.mismatch else "no"]


def _diff_row(experiment: str, d: Difference) -> list[str]:
    fmt = FORMATS[d.metric]
    absolute = f"{_num(d.abs_diff, fmt)} [{_num(d.abs_ci_low, fmt)}, {_num(d.abs_ci_high, fmt)}]"
    relative = f"{_pct(d.rel_diff)} [{_pct(d.rel_ci_low)}, {_pct(d.rel_ci_high)}]"
    p = _p(d.p_value)
    return [experiment, f"{d.variant} vs {d.control}", METRIC_LABELS[d.metric], _num(d.control_value, fmt), _num(d.variant_value, fmt),
            absolute, relative, f"**{p}**" if d.significant else p, d.method]  # fmt: skip


def _guardrail_rows(a: Analysis) -> list[list[str]]:
    rows = []
    for arm in a.arms:
        breaches = "; ".join(b.message for b in arm.breaches) if arm.breaches else "none"
        rows.append([arm.variant, _num(arm.latency_p99_ms, lambda v: f"{v:.1f}"), f"{arm.short_rate:.2%}", f"{arm.fallback_rate:.2%}",
                     f"**{breaches}**" if arm.breaches else breaches])  # fmt: skip
    return rows


def markdown(a: Analysis, plots: list[str]) -> str:
    """report.md: verdicts, per-variant tables, differences, SRM, guardrails, attribution, plots."""
    conf = f"{1 - a.alpha:.0%}"
    lines = [
        "# Experiment analysis",
        "",
        f"State dir `{a.state_dir}`; slates served {_when(a.first_slate_ts)} – {_when(a.last_slate_ts)} "
        f"(window {_when(a.since_ts)} – {_when(a.until_ts)}): {a.slates_in_window:,} of the log's {a.slates_in_log:,}; "
        f"{a.skus_served:,} distinct SKUs served. alpha {a.alpha:g} ({conf} intervals), purchases attributed by request id, "
        f"else last touch within {a.attribution_hours:g} h; {a.bootstrap_replicates:,} bootstrap replicates, seed {a.seed}. "
        f"Generated {_when(a.generated_at)}.",
        "",
        "## Verdict",
        "",
        *([f"- {e.verdict}" for e in a.experiments] or ["- No experiment arms or holdout to compare: one variant only."]),
        "",
        "## Per variant",
        "",
        f"Shoppers (units), requests and what they did; rates with their {conf} intervals (delta method over units; "
        "conversion: Wilson; revenue per request: Poisson bootstrap over units).",
        "",
    ]
    lines += _table(
        ["variant", "units", "requests", "items shown", "clicks", "carts", "purchases", "revenue",
         *(METRIC_LABELS[m] for m in METRICS)],
        [[arm.variant, f"{arm.units:,}", f"{arm.requests:,}", f"{arm.items_shown:,}", f"{arm.clicks:,}", f"{arm.carts:,}",
          f"{arm.purchases:,}", f"{arm.revenue:,.2f}", *(_est(getattr(arm, m), FORMATS[m]) for m in METRICS)] for arm in a.arms],
    )  # fmt: skip
    lines += ["", "Serving and exposure: coverage is distinct SKUs served (share of all served by any variant); "
              "diversity is the mean share of distinct leaf categories per slate; Gini is over impressions per SKU.", ""]  # fmt: skip
    lines += _table(
        ["variant", "coverage", "diversity", "impression Gini", "latency p50 ms", "latency p99 ms", "short slates", "fallback"],
        [[arm.variant, f"{arm.coverage:,} ({arm.coverage_share:.1%})", _num(arm.diversity, lambda v: f"{v:.3f}"), f"{arm.gini:.3f}",
          _num(arm.latency_p50_ms, lambda v: f"{v:.2f}"), _num(arm.latency_p99_ms, lambda v: f"{v:.2f}"),
          f"{arm.short_rate:.2%}", f"{arm.fallback_rate:.2%}"] for arm in a.arms],
    )  # fmt: skip
    lines += ["", "## Differences against the control", ""]
    diff_rows = [_diff_row(e.name, d) for e in a.experiments for d in e.differences]
    if diff_rows:
        lines += [f"Variant minus control, {conf} intervals; p two-sided, **bold** when below {a.alpha:g}.", ""]
        lines += _table(["experiment", "comparison", "metric", "control", "variant", "Δ absolute", "Δ relative", "p", "method"], diff_rows)
        lines.append("")
        for e in a.experiments:
            left_out = f"; {e.crossover_units} unit(s) seen in several arms left out" if e.crossover_units else ""
            lines.append(f"- {e.name}: control {e.control}, chosen by {e.control_from}{left_out}")
    else:
        lines.append("Nothing to compare.")
    lines += ["", "## Sample-ratio mismatch", "", "Units per arm against the expected shares (chi-square goodness of fit; mismatch when p < 0.001).", ""]
    srm_rows = [_srm_row(e.name, e.srm) for e in a.experiments if e.srm is not None]
    if a.traffic_srm is not None:
        srm_rows.append(_srm_row("traffic layers", a.traffic_srm))
    lines += _table(["experiment", "units (expected share)", "shares from", "chi²", "p", "mismatch"], srm_rows) if srm_rows else ["No split to check."]
    lines += ["", "## Guardrails", ""]
    for e in a.experiments:
        g = e.guardrails
        drops = ", ".join(f"{m} −{v:.0%}" for m, v in sorted(g.max_drop.items()))
        lines.append(f"- {e.name}: latency p99 ≤ {g.latency_p99_ms:g} ms, short ≤ {g.max_short_rate:.0%}, fallback ≤ {g.max_fallback_rate:.0%}; "
                     f"tolerated significant drops against the control: {drops or 'none'}")  # fmt: skip
    lines.append("")
    lines += _table(["variant", "latency p99 ms", "short slates", "fallback", "breaches"], _guardrail_rows(a))
    at = a.attribution
    lines += [
        "",
        "## Attribution",
        "",
        f"Of {at.events_read:,} click, add-to-cart and purchase events: {at.clicks:,} clicks and {at.carts:,} add-to-carts credited by "
        f"request id ({at.clicks_unmatched:,} carried no logged slate's id); purchases {at.purchases_by_request:,} by request id, "
        f"{at.purchases_last_touch:,} by last touch, {at.purchases_unattributed:,} unattributed; {at.events_outside_window:,} "
        f"belonged to slates outside the window.",
        "",
        "## Plots",
        "",
        *(f"![{_alt(p)}]({p})" for p in plots),
    ]
    if a.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in a.notes)]
    lines += [
        "",
        "## Method",
        "",
        "The shopper (the slate's unit: user id, else session id) is what was randomised, so every variance is computed over "
        "units: request-level ratios (CTR, item CTR, add-to-cart rate) by the delta method on per-unit sums "
        "(Deng, Knoblich and Lu 2018), conversion (share of units with a purchase) by a two-proportion z-test, and revenue per "
        "request, which is heavy tailed, by a Poisson bootstrap over units (percentile intervals). Relative intervals use the "
        "delta method (bootstrap percentiles for revenue). An anonymous request without a session is its own unit.",
        "",
    ]
    return "\n".join(lines)

