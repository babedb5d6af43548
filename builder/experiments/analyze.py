"""`analyze`: what each variant of an online experiment did, from a state dir's served-slate log
and event log, and how each arm differs from its experiment's control.

Variants are the slates' labels: "default", "holdout" or "experiment:arm". An experiment's arms
are compared with its control (the first variant in the settings; without settings, an arm named
"control", else the first by name); "holdout" is compared with "default" when both were served.
The unit of randomisation, and so of every variance, is the shopper (the slate's `unit`).

Metrics per variant (attribution: `builder.experiments.logs`):

| metric | definition | test against the control |
|---|---|---|
| ctr | attributed clicks / requests | delta method on per-unit sums |
| item_ctr | attributed clicks / items shown | delta method |
| add_to_cart_rate | attributed add-to-carts / requests | delta method |
| conversion | units with ≥ 1 attributed purchase / units | two-proportion z |
| revenue_per_request | Σ price of attributed purchases / requests | Poisson bootstrap over units |
| revenue_per_unit | Σ price of attributed purchases / units (per shopper: a variant that makes shoppers browse more pages is not penalised for its extra requests) | Poisson bootstrap over units |

and, descriptive only: coverage (distinct SKUs served; share of those served by any variant),
diversity (mean over slates of distinct leaf categories / items), impression concentration (Gini
of impressions per SKU over every SKU any variant served), engine latency p50/p99, the short-slate
and fallback rates. A unit seen in two arms of one experiment (the settings changed mid-run) is
left out of all of that experiment's arms, and counted.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from builder.experiments import stats
from builder.experiments.logs import ANONYMOUS, AnalysisError, Attribution, Slates, open_log, read_logs, read_slates
from engine.experiments import DEFAULT, HOLDOUT
from engine.settings import ExperimentSettings, Guardrails, Settings

FORMAT_VERSION = 1
METRICS: tuple[str, ...] = ("ctr", "item_ctr", "add_to_cart_rate", "conversion", "revenue_per_request", "revenue_per_unit")
METRIC_LABELS: dict[str, str] = {
    "ctr": "CTR",
    "item_ctr": "item CTR",
    "add_to_cart_rate": "add-to-cart rate",
    "conversion": "conversion",
    "revenue_per_request": "revenue per request",
    "revenue_per_unit": "revenue per shopper",
}
SRM_P = 0.001  # a split this unlikely under the configured shares is a broken experiment, not chance
DEFAULT_REPLICATES = 2000


class Estimate(msgspec.Struct, frozen=True):
    """A metric of one arm with its 1 − alpha interval (null when undefined)."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None


class Breach(msgspec.Struct, frozen=True):
    guardrail: str  # "latency_p99_ms", "max_short_rate", "max_fallback_rate" or "max_drop.<metric>"
    value: float  # the arm's figure (a relative difference for max_drop)
    limit: float  # the limit it crossed (for max_drop: −the tolerated drop)
    p_value: float | None = None
    message: str = ""


class ArmMetrics(msgspec.Struct, frozen=True, kw_only=True):
    variant: str  # the slates' label
    group: str  # the experiment's name, "default" or "holdout"
    arm: str
    expected_share: float | None  # of the experiment's units (SRM); None outside an experiment
    units: int
    requests: int
    items_shown: int
    clicks: int
    carts: int
    purchases: int
    purchasing_units: int
    revenue: float
    ctr: Estimate
    item_ctr: Estimate
    add_to_cart_rate: Estimate
    conversion: Estimate
    revenue_per_request: Estimate
    revenue_per_unit: Estimate
    coverage: int  # distinct SKUs served
    coverage_share: float  # of the distinct SKUs served by all variants
    diversity: float | None  # mean share of distinct leaf categories per slate
    gini: float  # of impressions per SKU, over every SKU served by any variant
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    short_rate: float  # slates with fewer items than asked for
    fallback_rate: float  # slates served by a degradation step
    breaches: list[Breach] = []


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    variant: str
    control: str
    metric: str
    method: str
    control_value: float | None
    variant_value: float | None
    abs_diff: float | None  # variant − control
    abs_ci_low: float | None
    abs_ci_high: float | None
    rel_diff: float | None  # variant / control − 1
    rel_ci_low: float | None
    rel_ci_high: float | None
    p_value: float | None
    significant: bool  # p < alpha


class SampleRatio(msgspec.Struct, frozen=True, kw_only=True):
    arms: list[str]
    units: list[int]
    expected_shares: list[float]
    shares_from: str  # "settings" or "slates"
    chi2: float | None
    p_value: float | None
    mismatch: bool  # p < SRM_P


class ExperimentResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # the experiment, or "holdout" (holdout against default)
    control: str  # the control's variant label
    variants: list[str]  # labels, control first
    control_from: str  # how the control was chosen (reads after "chosen by")
    guardrails: Guardrails
    crossover_units: int  # units seen in more than one arm, left out
    srm: SampleRatio | None
    differences: list[Difference]
    verdict: str


class Analysis(msgspec.Struct, frozen=True, kw_only=True):
    format_version: int
    state_dir: str
    generated_at: float
    since_ts: float | None
    until_ts: float | None
    alpha: float
    attribution_hours: float
    bootstrap_replicates: int
    seed: int
    slates_in_log: int
    slates_in_window: int
    first_slate_ts: float
    last_slate_ts: float
    skus_served: int  # distinct SKUs served by all variants in the window
    attribution: Attribution
    arms: list[ArmMetrics]
    experiments: list[ExperimentResult]
    traffic_srm: SampleRatio | None  # units per traffic layer against the settings' slices
    notes: list[str]

    def arm(self, variant: str) -> ArmMetrics:
        for a in self.arms:
            if a.variant == variant:
                return a
        raise KeyError(variant)

    def difference(self, variant: str, metric: str) -> Difference:
        for e in self.experiments:
            for d in e.differences:
                if d.variant == variant and d.metric == metric:
                    return d
        raise KeyError((variant, metric))


class Exposure(msgspec.Struct, frozen=True):
    """Impressions of a window of slates over the catalog."""

    gini: float  # of impressions per SKU, every catalog SKU counted (zeros for those never shown)
    coverage: float  # distinct SKUs shown / catalog size
    distinct: int  # distinct SKUs shown
    impressions: int  # items shown, all slates
    slates: int
    n_catalog: int  # the catalog size used (at least `distinct`)


def _f(x: float) -> float | None:
    """Finite float, else None (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None


def split_label(label: str) -> tuple[str, str]:
    """(group, arm) of a variant label: "exp:arm" → ("exp", "arm"); "default" → ("default", "default")."""
    group, sep, arm = label.partition(":")
    return (group, arm) if sep else (label, label)


@dataclass
class _Arm:
    """One arm's slates after exclusions, summed per unit (float64 [units] each)."""

    label: str
    rows: np.ndarray  # int64 slate rows
    requests: np.ndarray
    items: np.ndarray
    clicks: np.ndarray
    carts: np.ndarray
    purchases: np.ndarray
    revenue: np.ndarray
    revenue_reps: np.ndarray  # float64 [replicates]: bootstrap revenue per request
    unit_revenue_reps: np.ndarray  # float64 [replicates]: bootstrap revenue per unit


@dataclass
class _Group:
    name: str
    labels: list[str]  # control first
    control_from: str
    experiment: ExperimentSettings | None
    guardrails: Guardrails
    crossover: np.ndarray  # int64 unit codes seen in more than one of `labels`


def analyze(
    state_dir: Path,
    settings: Settings | None = None,
    *,
    since_ts: float | None = None,
    until_ts: float | None = None,
    attribution_hours: float = 24.0,
    alpha: float = 0.05,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> Analysis:
    """Analyse the slates served in [since_ts, until_ts) by the engine whose state dir is
    `state_dir`, with the events its shoppers sent. `settings` (the engine's, as served) names
    each experiment's control, arm weights and guardrails; None: controls by name, shares from
    the slates, default guardrails. Raises AnalysisError for unusable input."""
    if not 0 < alpha < 0.5:
        raise AnalysisError(f"alpha must be in (0, 0.5); got {alpha}")
    if replicates < 100:
        raise AnalysisError(f"at least 100 bootstrap replicates are needed; got {replicates}")
    logs = read_logs(Path(state_dir), since_ts, until_ts, attribution_hours * 3600.0)
    sl = logs.slates
    notes: list[str] = []
    by_name = {e.name: e for e in settings.experiments} if settings is not None else {}
    if settings is None:
        notes.append("No settings given: controls are chosen by name, expected shares come from the slates, guardrails are the defaults.")

    names, of_row = np.unique(np.array(sl.variant, dtype=object), return_inverse=True)
    labels = [str(x) for x in names]
    order = np.argsort(of_row, kind="stable")
    rows_of = dict(zip(labels, np.split(order, np.cumsum(np.bincount(of_row, minlength=len(labels)))[:-1])))
    groups = _groups(labels, by_name, settings, sl, rows_of, notes)

    excluded: dict[str, list[np.ndarray]] = {label: [] for label in labels}
    for g in groups:
        for label in g.labels:
            excluded[label].append(g.crossover)
    n_skus = len(sl.sku_names)
    item_row = np.repeat(np.arange(len(sl), dtype=np.int64), sl.n_items)  # the slate of each served item

    arms: dict[str, _Arm] = {}
    metrics: dict[str, ArmMetrics] = {}
    share_of = _expected_shares(groups, sl, rows_of)
    for label in labels:
        rows = rows_of[label]
        left_out = np.concatenate(excluded[label]) if excluded[label] else np.zeros(0, np.int64)
        if left_out.size:
            rows = rows[~np.isin(sl.unit_code[rows], left_out)]
        arm = _sum_units(label, rows, sl, replicates, seed)
        arms[label] = arm
        metrics[label] = _arm_metrics(arm, sl, item_row, alpha, share_of.get(label))

    results: list[ExperimentResult] = []
    for g in groups:
        control = arms[g.labels[0]]
        diffs = [d for label in g.labels[1:] for d in _differences(control, arms[label], alpha)]
        srm = _srm(g, metrics, settings) if g.name != HOLDOUT else None
        for label in g.labels:
            metrics[label] = msgspec.structs.replace(
                metrics[label], breaches=_breaches(metrics[label], [d for d in diffs if d.variant == label], g.guardrails, alpha, notes)
            )
        results.append(
            ExperimentResult(
                name=g.name, control=g.labels[0], variants=g.labels, control_from=g.control_from, guardrails=g.guardrails,
                crossover_units=int(g.crossover.size), srm=srm, differences=diffs,
                verdict=_verdict(g, diffs, srm, metrics, alpha),
            )
        )
        if g.crossover.size:
            notes.append(f"{g.name}: {len(g.crossover)} unit(s) seen in more than one arm (the settings changed mid-run?) are left out of every arm.")
    guarded = {label for g in groups for label in g.labels}
    for label in labels:
        if label not in guarded:  # "default" or "holdout" alone: the absolute limits still hold
            metrics[label] = msgspec.structs.replace(metrics[label], breaches=_breaches(metrics[label], [], Guardrails(), alpha, notes))

    a = logs.attribution
    if a.purchases_unattributed:
        notes.append(f"{a.purchases_unattributed} purchase(s) matched no slate (no logged slate's request id, and no slate showing "
                     f"the SKU to that shopper in the {attribution_hours:g} h before).")  # fmt: skip
    if a.unpriced_purchases:
        notes.append(f"{a.unpriced_purchases} attributed purchase(s) had no known price and add 0 revenue.")
    if any(len(g.labels) > 2 for g in groups):
        notes.append("Arms are each compared with their control at the stated alpha, without a correction for multiple comparisons.")
    return Analysis(
        format_version=FORMAT_VERSION,
        state_dir=str(state_dir),
        generated_at=time.time(),
        since_ts=since_ts,
        until_ts=until_ts,
        alpha=alpha,
        attribution_hours=attribution_hours,
        bootstrap_replicates=replicates,
        seed=seed,
        slates_in_log=logs.slates_total,
        slates_in_window=len(sl),
        first_slate_ts=float(sl.ts.min()),
        last_slate_ts=float(sl.ts.max()),
        skus_served=n_skus,
        attribution=a,
        arms=[metrics[label] for label in labels],
        experiments=results,
        traffic_srm=_traffic_srm(settings, sl, labels, notes),
        notes=notes,
    )


# ---- grouping ------------------------------------------------------------------------------------


def _groups(labels: list[str], by_name: dict[str, ExperimentSettings], settings: Settings | None, sl: Slates,
            rows_of: dict[str, np.ndarray], notes: list[str]) -> list[_Group]:  # fmt: skip
    """The comparisons to make: one per experiment seen, plus holdout against default."""
    arms_of: dict[str, list[str]] = {}
    for label in labels:
        group, _ = split_label(label)
        if group not in (DEFAULT, HOLDOUT):
            arms_of.setdefault(group, []).append(label)
    groups: list[_Group] = []
    for name, members in sorted(arms_of.items()):
        exp = by_name.get(name)
        present = {split_label(label)[1]: label for label in members}
        if exp is not None:
            order = [v.name for v in exp.variants]
            ordered = [present[a] for a in order if a in present] + sorted(present[a] for a in present if a not in order)
            control_from = "the settings (their first variant)"
            if exp.variants[0].name not in present:
                control_from = f"the settings, but their first variant {exp.variants[0].name!r} was never served: the first served arm stands in"
            unknown = sorted(a for a in present if a not in order)
            if unknown:
                notes.append(f"{name}: arm(s) {', '.join(unknown)} served but not in the settings.")
            guardrails = exp.guardrails
        else:
            if settings is not None:
                notes.append(f"{name}: served but not in the settings; control chosen by name, default guardrails.")
            if "control" in present:
                ordered = [present["control"]] + sorted(v for a, v in present.items() if a != "control")
                control_from = "its name ('control'; no settings for this experiment)"
            else:
                ordered = sorted(present.values())
                control_from = "name order (no settings for this experiment)"
            guardrails = Guardrails()
        if len(ordered) < 2:
            notes.append(f"{name}: only {ordered[0]} was served; nothing to compare it with.")
        groups.append(_Group(name, ordered, control_from, exp, guardrails, _crossover(ordered, sl, rows_of)))
    if DEFAULT in labels and HOLDOUT in labels:
        pair = [DEFAULT, HOLDOUT]
        groups.append(_Group(HOLDOUT, pair, "design (the holdout is compared with default)", None, Guardrails(), _crossover(pair, sl, rows_of)))
    return groups


def _crossover(labels: list[str], sl: Slates, rows_of: dict[str, np.ndarray]) -> np.ndarray:
    """int64 codes of the units that have slates in more than one of `labels`."""
    per_label = [np.unique(sl.unit_code[rows_of[label]]) for label in labels]
    codes, times = np.unique(np.concatenate(per_label), return_counts=True)
    return codes[times > 1]


def _expected_shares(groups: list[_Group], sl: Slates, rows_of: dict[str, np.ndarray]) -> dict[str, float]:
    """Each experiment arm's expected share of the experiment's units: the settings' weights,
    else what the slates recorded."""
    shares: dict[str, float] = {}
    for g in groups:
        if g.name == HOLDOUT:
            continue
        if g.experiment is not None:
            total = sum(v.weight for v in g.experiment.variants)
            for v in g.experiment.variants:
                shares[f"{g.name}:{v.name}"] = v.weight / total
        else:
            for label in g.labels:
                shares[label] = float(np.median(sl.arm_share[rows_of[label]]))
    return shares


# ---- per arm -------------------------------------------------------------------------------------


def _sum_units(label: str, rows: np.ndarray, sl: Slates, replicates: int, seed: int) -> _Arm:
    units, inv = np.unique(sl.unit_code[rows], return_inverse=True)
    n = len(units)

    def per_unit(values: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=values.astype(np.float64), minlength=n) if n else np.zeros(0)

    requests = per_unit(np.ones(rows.size))
    revenue = per_unit(sl.revenue[rows])
    # One stream per arm, keyed by its label: the replicates do not depend on which other arms exist.
    reps = stats.poisson_bootstrap(revenue, requests, replicates, np.random.SeedSequence([seed, zlib.crc32(label.encode())]))
    unit_reps = stats.poisson_bootstrap(revenue, np.ones(n), replicates, np.random.SeedSequence([seed, zlib.crc32(label.encode()), 1]))
    return _Arm(label, rows, requests, per_unit(sl.n_items[rows]), per_unit(sl.clicks[rows]), per_unit(sl.carts[rows]),
                per_unit(sl.purchases[rows]), revenue, reps, unit_reps)  # fmt: skip


def _estimate(value: float, lo: float, hi: float) -> Estimate:
    return Estimate(_f(value), _f(lo), _f(hi))


def _arm_metrics(arm: _Arm, sl: Slates, item_row: np.ndarray, alpha: float, share: float | None) -> ArmMetrics:
    rows = arm.rows
    group, name = split_label(arm.label)
    n_skus = len(sl.sku_names)
    in_arm = np.zeros(len(sl), dtype=bool)
    in_arm[rows] = True
    impressions = np.bincount(sl.sku_code[in_arm[item_row]], minlength=n_skus)
    n_units = len(arm.requests)
    buyers = int((arm.purchases > 0).sum())
    requests = float(arm.requests.sum())
    latency = np.percentile(sl.took_ms[rows], [50, 99]) if rows.size else (math.nan, math.nan)
    diversity = sl.diversity[rows]
    diversity = diversity[np.isfinite(diversity)]
    return ArmMetrics(
        variant=arm.label,
        group=group,
        arm=name,
        expected_share=share,
        units=n_units,
        requests=int(requests),
        items_shown=int(arm.items.sum()),
        clicks=int(arm.clicks.sum()),
        carts=int(arm.carts.sum()),
        purchases=int(arm.purchases.sum()),
        purchasing_units=buyers,
        revenue=float(arm.revenue.sum()),
        ctr=_estimate(*stats.ratio_interval(arm.clicks, arm.requests, alpha)),
        item_ctr=_estimate(*stats.ratio_interval(arm.clicks, arm.items, alpha)),
        add_to_cart_rate=_estimate(*stats.ratio_interval(arm.carts, arm.requests, alpha)),
        conversion=_estimate(*stats.proportion_interval(buyers, n_units, alpha)),
        revenue_per_request=_estimate(arm.revenue.sum() / requests if requests else math.nan, *stats.percentile_interval(arm.revenue_reps, alpha)),
        revenue_per_unit=_estimate(arm.revenue.sum() / n_units if n_units else math.nan, *stats.percentile_interval(arm.unit_revenue_reps, alpha)),
        coverage=int((impressions > 0).sum()),
        coverage_share=float((impressions > 0).sum() / n_skus) if n_skus else 0.0,
        diversity=_f(float(diversity.mean())) if diversity.size else None,
        gini=stats.gini(impressions),
        latency_p50_ms=_f(float(latency[0])),
        latency_p99_ms=_f(float(latency[1])),
        short_rate=float((sl.n_items[rows] < sl.count[rows]).mean()) if rows.size else 0.0,
        fallback_rate=float(sl.fallback[rows].mean()) if rows.size else 0.0,
    )


# ---- comparisons -----------------------------------------------------------------------------


def _difference(variant: str, control: str, metric: str, c: stats.Comparison, alpha: float) -> Difference:
    p = _f(c.p_value)
    return Difference(
        variant=variant, control=control, metric=metric, method=c.method,
        control_value=_f(c.control), variant_value=_f(c.treatment),
        abs_diff=_f(c.abs_diff), abs_ci_low=_f(c.abs_ci[0]), abs_ci_high=_f(c.abs_ci[1]),
        rel_diff=_f(c.rel_diff), rel_ci_low=_f(c.rel_ci[0]), rel_ci_high=_f(c.rel_ci[1]),
        p_value=p, significant=p is not None and p < alpha,
    )  # fmt: skip


def _differences(c: _Arm, t: _Arm, alpha: float) -> list[Difference]:
    buyers_c, buyers_t = int((c.purchases > 0).sum()), int((t.purchases > 0).sum())
    rpr_c = c.revenue.sum() / c.requests.sum() if c.requests.sum() else math.nan
    rpr_t = t.revenue.sum() / t.requests.sum() if t.requests.sum() else math.nan
    comparisons = {
        "ctr": stats.compare_ratio(c.clicks, c.requests, t.clicks, t.requests, alpha),
        "item_ctr": stats.compare_ratio(c.clicks, c.items, t.clicks, t.items, alpha),
        "add_to_cart_rate": stats.compare_ratio(c.carts, c.requests, t.carts, t.requests, alpha),
        "conversion": stats.compare_proportions(buyers_c, len(c.requests), buyers_t, len(t.requests), alpha),
        "revenue_per_request": stats.compare_bootstrap(rpr_c, rpr_t, c.revenue_reps, t.revenue_reps, alpha),
        "revenue_per_unit": stats.compare_bootstrap(
            c.revenue.sum() / len(c.revenue) if len(c.revenue) else math.nan,
            t.revenue.sum() / len(t.revenue) if len(t.revenue) else math.nan,
            c.unit_revenue_reps, t.unit_revenue_reps, alpha,
        ),
    }
    return [_difference(t.label, c.label, m, comparisons[m], alpha) for m in METRICS]


def _srm(g: _Group, metrics: dict[str, ArmMetrics], settings: Settings | None) -> SampleRatio | None:
    """Units per arm against the arms' expected shares: the settings' weights (arms never served
    count 0 units), else the shares the slates recorded (with the missing share as an arm of 0)."""
    arms = list(g.labels)
    units = [metrics[label].units for label in arms]
    if g.experiment is not None:
        total = sum(v.weight for v in g.experiment.variants)
        weight = {f"{g.name}:{v.name}": v.weight / total for v in g.experiment.variants}
        for label in weight:
            if label not in arms:
                arms.append(label)
                units.append(0)
        shares = [weight.get(label, 0.0) for label in arms]
        source = "settings"
    else:
        shares = [metrics[label].expected_share or 0.0 for label in arms]
        source = "slates"
        if sum(shares) < 1 - 1e-6:
            arms.append("(arms never served)")
            units.append(0)
            shares.append(1 - sum(shares))
    if sum(units) == 0 or sum(shares) <= 0:
        return None
    chi2, p = stats.sample_ratio(np.array(units), np.array(shares))
    return SampleRatio(arms=arms, units=units, expected_shares=shares, shares_from=source, chi2=_f(chi2), p_value=_f(p),
                       mismatch=bool(math.isfinite(p) and p < SRM_P))  # fmt: skip


def _traffic_srm(settings: Settings | None, sl: Slates, labels: list[str], notes: list[str]) -> SampleRatio | None:
    """Units per traffic layer (holdout, each experiment, the rest) against the settings' slices.
    Anonymous slates are not hashed into any layer and are left out."""
    if settings is None or (settings.holdout == 0 and not settings.experiments):
        return None
    layers = [HOLDOUT] + [e.name for e in settings.experiments] + [DEFAULT]
    rest = 1.0 - settings.holdout - sum(e.traffic for e in settings.experiments)
    shares = [settings.holdout] + [e.traffic for e in settings.experiments] + [max(rest, 0.0)]
    named = np.array([not u.startswith(ANONYMOUS) for u in sl.unit_names], dtype=bool)[sl.unit_code]
    units: dict[str, set[int]] = {layer: set() for layer in layers}
    strangers: set[str] = set()
    for code, label, ok in zip(sl.unit_code.tolist(), sl.variant, named.tolist()):
        group, _ = split_label(label)
        if not ok:
            continue
        if group in units:
            units[group].add(code)
        else:
            strangers.add(group)
    if strangers:
        notes.append(f"Experiment(s) {', '.join(sorted(strangers))} in the log but not in the settings are left out of the traffic check.")
    counts = [len(units[layer]) for layer in layers]
    if sum(counts) == 0:
        return None
    chi2, p = stats.sample_ratio(np.array(counts), np.array(shares))
    return SampleRatio(arms=layers, units=counts, expected_shares=shares, shares_from="settings", chi2=_f(chi2), p_value=_f(p),
                       mismatch=bool(math.isfinite(p) and p < SRM_P))  # fmt: skip


def _breaches(m: ArmMetrics, diffs: list[Difference], g: Guardrails, alpha: float, notes: list[str]) -> list[Breach]:
    out: list[Breach] = []
    if m.latency_p99_ms is not None and m.latency_p99_ms > g.latency_p99_ms:
        out.append(Breach("latency_p99_ms", m.latency_p99_ms, g.latency_p99_ms,
                          message=f"p99 engine latency {m.latency_p99_ms:.1f} ms > {g.latency_p99_ms:g} ms"))  # fmt: skip
    if m.short_rate > g.max_short_rate:
        out.append(Breach("max_short_rate", m.short_rate, g.max_short_rate,
                          message=f"short slates {m.short_rate:.1%} > {g.max_short_rate:.1%}"))  # fmt: skip
    if m.fallback_rate > g.max_fallback_rate:
        out.append(Breach("max_fallback_rate", m.fallback_rate, g.max_fallback_rate,
                          message=f"fallback slates {m.fallback_rate:.1%} > {g.max_fallback_rate:.1%}"))  # fmt: skip
    by_metric = {d.metric: d for d in diffs}
    for metric, tolerated in sorted(g.max_drop.items()):
        if metric not in METRICS:
            note = f"Guardrail max_drop.{metric} names no metric ({', '.join(METRICS)}); ignored."
            if note not in notes:
                notes.append(note)
            continue
        d = by_metric.get(metric)
        if d is None or d.rel_diff is None or d.p_value is None:
            continue
        if -d.rel_diff > tolerated and d.significant:
            out.append(Breach(f"max_drop.{metric}", d.rel_diff, -tolerated, d.p_value,
                              f"{METRIC_LABELS[metric]} {d.rel_diff:+.1%} against {d.control} "
                              f"(tolerated −{tolerated:.0%}, p={d.p_value:.2g})"))  # fmt: skip
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _verdict(g: _Group, diffs: list[Difference], srm: SampleRatio | None, metrics: dict[str, ArmMetrics], alpha: float) -> str:
    """One line: per arm, who wins on CTR and on revenue per request and by how much."""
    control = g.labels[0]
    if len(g.labels) < 2:
        line = f"{g.name}: only {control} was served; nothing to compare it with."
        if srm is not None and srm.mismatch:
            line += f" Sample ratio mismatch (p={srm.p_value:.2g})."
        return line
    parts: list[str] = []
    for label in g.labels[1:]:
        for metric in ("ctr", "revenue_per_request", "revenue_per_unit"):
            d = next(x for x in diffs if x.variant == label and x.metric == metric)
            name = METRIC_LABELS[metric]
            if d.p_value is None or d.abs_diff is None:
                parts.append(f"{name}: {label} vs {control} not measurable")
            elif d.significant:
                winner, loser = (label, control) if d.abs_diff > 0 else (control, label)
                parts.append(
                    f"{name}: {winner} beats {loser} by {abs(d.rel_diff or 0):.1%} "
                    f"({label} {_pct(d.rel_diff)} [{_pct(d.rel_ci_low)}, {_pct(d.rel_ci_high)}], p={d.p_value:.2g})"
                )
            else:
                parts.append(f"{name}: no significant difference between {label} and {control} ({_pct(d.rel_diff)}, p={d.p_value:.2g})")
    line = f"{g.name}: " + "; ".join(parts) + "."
    if srm is not None and srm.mismatch:
        line = f"{g.name}: SAMPLE RATIO MISMATCH (p={srm.p_value:.2g}); the split is broken, so the differences cannot be trusted. " + line
    breached = [f"{label} ({', '.join(b.guardrail for b in metrics[label].breaches)})" for label in g.labels if metrics[label].breaches]
    if breached:
        line += " Guardrails breached: " + "; ".join(breached) + "."
    return line


# ---- exposure (feedback-loop studies) ----------------------------------------------------------


def exposure(state_dir: Path, since_ts: float | None = None, until_ts: float | None = None, n_catalog: int = 0,
             variant: str | None = None) -> Exposure:  # fmt: skip
    """Impression concentration and catalog coverage of the slates served in [since_ts, until_ts)
    (None: unbounded), optionally of one variant label or experiment name. `n_catalog` is the
    catalog size: SKUs never shown count as zeros in the Gini; a catalog that grew past it
    (new SKUs shown) is taken at the number of distinct SKUs shown. Raises AnalysisError when
    the log is missing."""
    if n_catalog < 0:
        raise AnalysisError(f"n_catalog must be ≥ 0; got {n_catalog}")
    lo = -math.inf if since_ts is None else float(since_ts)
    hi = math.inf if until_ts is None else float(until_ts)
    with open_log(Path(state_dir)) as log:
        window, _ = read_slates(log, lo, hi)
    if variant is not None:
        window = window.take(np.flatnonzero([v == variant or split_label(v)[0] == variant for v in window.variant]))
    shown = np.bincount(window.sku_code, minlength=len(window.sku_names))
    distinct = int((shown > 0).sum())
    size = max(n_catalog, distinct)
    padded = np.concatenate([shown, np.zeros(size - distinct, np.int64)])
    return Exposure(
        gini=stats.gini(padded), coverage=distinct / size if size else 0.0, distinct=distinct,
        impressions=int(shown.sum()), slates=len(window), n_catalog=size,
    )  # fmt: skip
