"""`aisle analyze` (builder.experiments): the statistics are calibrated and powerful, the join
attributes events to the right slates, SRM and guardrails fire when they should, and the command
writes a report with parseable plots or refuses bad input in one line.

Logs are built synthetically with `EventLog.append_slates` / `append` (no server); calibration
runs the stats functions on arrays directly."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec
import numpy as np
import pytest

import artifacts  # noqa: F401  (native load order: see artifacts/__init__.py)
from builder.experiments import stats
from builder.experiments.analyze import Analysis, analyze, exposure
from builder.experiments.cli import main as analyze_main
from builder.experiments.logs import AnalysisError, read_logs
from engine.eventlog import EventLog, ServedSlate
from engine.schemas import Event
from engine.settings import ExperimentSettings, Guardrails, Settings, VariantSettings

REPO = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0
CATEGORIES = ["Beauty>Skin", "Beauty>Hair", "Beauty>Nails", "Home>Bath"]


def slate(request_id: str, unit: str, variant: str, skus: list[str], *, ts: float, prices: list[float] | None = None,
          share: float = 0.5, took_ms: float = 4.0, count: int | None = None, fallback: str = "",
          session_id: str = "") -> ServedSlate:  # fmt: skip
    n = len(skus)
    return ServedSlate(
        request_id=request_id, ts=ts, unit=unit, user_id=unit if not session_id else "", session_id=session_id, surface=0,
        variant=variant, arm_share=share, bundle="b1", skus=skus, scores=[1.0 - i / 100 for i in range(n)],
        sources=["ann"] * n, prices=prices if prices is not None else [10.0] * n,
        categories=[CATEGORIES[sum(map(ord, s)) % len(CATEGORIES)] for s in skus], count=n if count is None else count, offset=0,
        anchors=[], fallback=fallback, took_ms=took_ms,
    )  # fmt: skip


def ev(event_id: str, user_id: str, sku: str, type: str, ts: float, request_id: str = "", session_id: str = "") -> Event:
    return Event(event_id=event_id, user_id=user_id, sku=sku, type=type, ts=ts, request_id=request_id, session_id=session_id,  # type: ignore[arg-type]
                 surface="home")  # fmt: skip


def write_log(state: Path, slates: list[ServedSlate], events: list[Event]) -> None:
    with EventLog(state) as log:
        for i in range(0, len(slates), 20_000):
            log.append_slates(slates[i : i + 20_000])
        now = max([e.ts or 0 for e in events] + [T0]) + 1
        for i in range(0, len(events), 20_000):
            log.append(events[i : i + 20_000], now=now)


def experiment(*arms: str, guardrails: Guardrails | None = None, name: str = "exp") -> Settings:
    return Settings(experiments=[ExperimentSettings(name=name, variants=[VariantSettings(a) for a in arms], guardrails=guardrails or Guardrails())])


def simulate_ab(state: Path, p_click: dict[str, float], *, units_per_arm: int = 2000, seed: int = 1,
                took_ms: dict[str, float] | None = None, p_buy: float = 0.02) -> None:  # fmt: skip
    """Each unit makes 1–9 home requests of 10 SKUs out of 500; each slate gets a click with the
    arm's probability (scaled by a per-unit taste in [0.5, 1.5], so units differ) and, rarely,
    a purchase of the clicked SKU (by request id)."""
    rng = np.random.default_rng(seed)
    slates: list[ServedSlate] = []
    events: list[Event] = []
    for variant, p in p_click.items():
        for u in range(units_per_arm):
            unit = f"{variant}-u{u}"
            taste = rng.uniform(0.5, 1.5)
            for r in range(int(rng.integers(1, 10))):
                rid = f"{unit}-r{r}"
                ts = T0 + u + r * 60
                skus = [f"SKU{int(k)}" for k in rng.choice(500, 10, replace=False)]
                prices = [float(x) for x in np.round(rng.uniform(5, 50, 10), 2)]
                slates.append(slate(rid, unit, variant, skus, ts=ts, prices=prices, took_ms=(took_ms or {}).get(variant, 4.0) + rng.uniform(0, 2)))
                if rng.random() < min(p * taste, 1.0):
                    k = int(rng.integers(10))
                    events.append(ev(f"c-{rid}", unit, skus[k], "click", ts + 5, rid))
                    if rng.random() < p_buy / p:
                        events.append(ev(f"p-{rid}", unit, skus[k], "purchase", ts + 30, rid))
    write_log(state, slates, events)


# ---- (1) a known A/B ----------------------------------------------------------------------------


def test_a_better_arm_is_detected_with_the_right_sign_and_an_interval_covering_the_truth(tmp_path: Path) -> None:
    simulate_ab(tmp_path, {"exp:a": 0.10, "exp:b": 0.13})
    result = analyze(tmp_path, experiment("a", "b"))
    d = result.difference("exp:b", "ctr")
    assert d.control == "exp:a" and d.method == "delta"
    assert d.p_value is not None and d.p_value < 0.01
    assert d.abs_diff is not None and d.abs_diff > 0
    assert d.abs_ci_low is not None and d.abs_ci_high is not None
    assert d.abs_ci_low <= 0.03 <= d.abs_ci_high  # the true CTR difference (taste averages 1)
    assert d.rel_ci_low is not None and d.rel_ci_low > 0
    a, b = result.arm("exp:a"), result.arm("exp:b")
    assert a.units == b.units == 2000
    assert a.ctr.value == pytest.approx(a.clicks / a.requests)
    assert a.item_ctr.value == pytest.approx(a.clicks / a.items_shown)
    assert a.revenue_per_request.value == pytest.approx(a.revenue / a.requests)
    assert a.revenue_per_unit.value == pytest.approx(a.revenue / a.units)
    assert a.revenue_per_unit.ci_low is not None and a.revenue_per_unit.ci_low <= a.revenue_per_unit.value <= a.revenue_per_unit.ci_high
    assert result.difference("exp:b", "revenue_per_unit").method == "poisson bootstrap"
    assert a.conversion.value == pytest.approx(a.purchasing_units / a.units)
    (e,) = result.experiments
    assert "exp:b beats exp:a" in e.verdict and "CTR" in e.verdict
    assert e.srm is not None and not e.srm.mismatch
    assert not a.breaches and not b.breaches


# ---- (2) calibration ------------------------------------------------------------------------------


def _clustered_arm(rng: np.random.Generator, n: int, mean_requests: float = 4.0, a: float = 1.0, b: float = 9.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (clicks, requests): requests 1 + Poisson, each unit its own click rate ~ Beta(a, b)."""
    requests = 1 + rng.poisson(mean_requests, n)
    clicks = rng.binomial(requests, rng.beta(a, b, n))
    return clicks.astype(np.float64), requests.astype(np.float64)


def test_a_a_false_positive_rate_is_alpha_for_the_delta_method_and_the_two_proportion_test() -> None:
    rng = np.random.default_rng(7)
    sims, n, alpha = 400, 300, 0.05
    delta_hits = prop_hits = naive_hits = 0
    for _ in range(sims):
        xc, yc = _clustered_arm(rng, n, mean_requests=8, a=0.5, b=4.5)
        xt, yt = _clustered_arm(rng, n, mean_requests=8, a=0.5, b=4.5)
        delta_hits += stats.compare_ratio(xc, yc, xt, yt, alpha).p_value < alpha
        # The naive test that treats requests as independent: too many false positives under clustering.
        naive_hits += stats.compare_proportions(int(xc.sum()), int(yc.sum()), int(xt.sum()), int(yt.sum()), alpha).p_value < alpha
        bc, bt = rng.random(n) < 0.2, rng.random(n) < 0.2
        prop_hits += stats.compare_proportions(int(bc.sum()), n, int(bt.sum()), n, alpha).p_value < alpha
    # Binomial(400, 0.05): mean 20, sd 4.4; [8, 36] is beyond ±2.7 sd.
    assert 0.02 <= delta_hits / sims <= 0.09
    assert 0.02 <= prop_hits / sims <= 0.09
    assert naive_hits / sims > 0.12


def test_bootstrap_revenue_test_is_calibrated_under_a_a() -> None:
    rng = np.random.default_rng(11)
    sims, n, alpha, hits = 120, 300, 0.05, 0
    for s in range(sims):
        arms = []
        for arm in range(2):
            requests = (1 + rng.poisson(3, n)).astype(np.float64)
            revenue = np.where(rng.random(n) < 0.1, rng.lognormal(3, 1.2, n), 0.0)  # heavy tailed
            reps = stats.poisson_bootstrap(revenue, requests, 400, [s, arm])
            arms.append((revenue.sum() / requests.sum(), reps))
        (c, rc), (t, rt) = arms
        hits += stats.compare_bootstrap(c, t, rc, rt, alpha).p_value < alpha
    assert hits / sims <= 0.11  # Binomial(120, 0.05): mean 6, +2.7 sd ≈ 13


# ---- (3) delta method against a brute-force cluster bootstrap ------------------------------------


def test_delta_method_variance_matches_a_cluster_bootstrap() -> None:
    rng = np.random.default_rng(3)
    clicks, requests = _clustered_arm(rng, 600, mean_requests=6, a=0.8, b=5)
    _, delta_var = stats.ratio_variance(clicks, requests)
    picks = rng.integers(0, len(clicks), size=(4000, len(clicks)))
    boot = clicks[picks].sum(axis=1) / requests[picks].sum(axis=1)
    assert delta_var == pytest.approx(boot.var(ddof=1), rel=0.15)
    poisson = stats.poisson_bootstrap(clicks, requests, 4000, 5)
    assert delta_var == pytest.approx(poisson.var(ddof=1), rel=0.15)
    # Clustering matters here: the binomial variance over requests is far too small.
    p = clicks.sum() / requests.sum()
    assert p * (1 - p) / requests.sum() < delta_var / 1.5


def test_ratio_variance_edge_cases() -> None:
    assert np.isnan(stats.ratio_variance(np.zeros(0), np.zeros(0))[0])
    r, v = stats.ratio_variance(np.array([1.0]), np.array([2.0]))
    assert r == 0.5 and np.isnan(v)
    assert np.isnan(stats.ratio_variance(np.zeros(3), np.zeros(3))[0])
    c = stats.compare_ratio(np.ones(5), np.full(5, 2.0), np.ones(5), np.full(5, 2.0), 0.05)
    assert c.abs_diff == 0 and c.p_value == 1.0
    with pytest.raises(ValueError, match="one length"):
        stats.ratio_variance(np.zeros(3), np.zeros(4))


# ---- (4) sample-ratio mismatch ----------------------------------------------------------------------


def _split_log(state: Path, n_a: int, n_b: int) -> None:
    slates = [slate(f"a{u}", f"ua{u}", "exp:a", ["S1", "S2"], ts=T0 + u) for u in range(n_a)]
    slates += [slate(f"b{u}", f"ub{u}", "exp:b", ["S1", "S3"], ts=T0 + u) for u in range(n_b)]
    write_log(state, slates, [])


def test_srm_is_flagged_for_a_55_45_split_at_50_50_and_not_for_an_exact_split(tmp_path: Path) -> None:
    _split_log(tmp_path / "skewed", 2200, 1800)
    _split_log(tmp_path / "exact", 2000, 2000)
    skewed = analyze(tmp_path / "skewed", experiment("a", "b"), replicates=200).experiments[0]
    exact = analyze(tmp_path / "exact", experiment("a", "b"), replicates=200).experiments[0]
    assert skewed.srm is not None and skewed.srm.mismatch and skewed.srm.p_value < 1e-6
    assert skewed.srm.units == [2200, 1800] and skewed.srm.expected_shares == [0.5, 0.5]
    assert "SAMPLE RATIO MISMATCH" in skewed.verdict
    assert exact.srm is not None and not exact.srm.mismatch and exact.srm.p_value == pytest.approx(1.0)
    # Without settings the shares come from the slates (0.5 each), with the same outcome.
    from_slates = analyze(tmp_path / "skewed", replicates=200).experiments[0]
    assert from_slates.srm is not None and from_slates.srm.shares_from == "slates" and from_slates.srm.mismatch


def test_srm_counts_an_arm_that_was_never_served(tmp_path: Path) -> None:
    slates = [slate(f"a{u}", f"ua{u}", "exp:a", ["S1"], ts=T0 + u) for u in range(100)]
    write_log(tmp_path, slates, [])
    (e,) = analyze(tmp_path, experiment("a", "b"), replicates=200).experiments
    assert e.srm is not None and e.srm.arms == ["exp:a", "exp:b"] and e.srm.units == [100, 0] and e.srm.mismatch
    assert "only exp:a was served" in e.verdict


# ---- (5) guardrails ------------------------------------------------------------------------------


def test_guardrails_flag_latency_and_a_significant_ctr_drop(tmp_path: Path) -> None:
    simulate_ab(tmp_path, {"exp:a": 0.12, "exp:b": 0.08}, units_per_arm=1500, took_ms={"exp:b": 70.0})
    result = analyze(tmp_path, experiment("a", "b", guardrails=Guardrails(latency_p99_ms=50.0, max_drop={"ctr": 0.05})))
    b = result.arm("exp:b")
    names = {x.guardrail: x for x in b.breaches}
    assert set(names) == {"latency_p99_ms", "max_drop.ctr"}
    assert names["latency_p99_ms"].value > 70 and names["latency_p99_ms"].limit == 50.0
    assert names["max_drop.ctr"].value < -0.05 and names["max_drop.ctr"].p_value < 0.05
    assert result.arm("exp:a").breaches == []
    assert "Guardrails breached: exp:b" in result.experiments[0].verdict


def test_a_drop_within_tolerance_or_not_significant_is_no_breach(tmp_path: Path) -> None:
    simulate_ab(tmp_path, {"exp:a": 0.10, "exp:b": 0.098}, units_per_arm=300)
    result = analyze(tmp_path, experiment("a", "b", guardrails=Guardrails(max_drop={"ctr": 0.01, "nonsense": 0.1})))
    assert result.arm("exp:b").breaches == []
    assert any("max_drop.nonsense" in n for n in result.notes)


def test_short_and_fallback_rates_are_absolute_limits(tmp_path: Path) -> None:
    slates = [slate(f"r{i}", f"u{i}", "default", ["S1"], ts=T0 + i, count=2 if i % 4 == 0 else 1, fallback="popular" if i % 10 == 0 else "")
              for i in range(100)]  # fmt: skip
    write_log(tmp_path, slates, [])
    arm = analyze(tmp_path, replicates=200).arm("default")
    assert arm.short_rate == 0.25 and arm.fallback_rate == 0.10
    assert {b.guardrail for b in arm.breaches} == {"max_short_rate", "max_fallback_rate"}


# ---- (6) attribution -----------------------------------------------------------------------------


def test_purchases_by_request_id_and_by_last_touch_within_the_window_only(tmp_path: Path) -> None:
    hour = 3600.0
    slates = [
        slate("r1", "u1", "default", ["A", "B"], ts=T0, prices=[10.0, 20.0]),
        slate("r2", "u1", "default", ["C"], ts=T0 + 100, prices=[7.0]),
        slate("r3", "", "default", ["D"], ts=T0 + 200, prices=[3.0], session_id="sess9"),
        slate("r4", "u2", "default", ["A"], ts=T0 + 300, prices=[12.0]),
    ]
    events = [
        ev("e1", "u1", "A", "click", T0 + 5, request_id="r1"),
        ev("e2", "u1", "B", "add_to_cart", T0 + 6, request_id="r1"),
        ev("e3", "u1", "B", "purchase", T0 + 50, request_id="r1"),  # by request id: 20 on r1
        ev("e4", "u1", "A", "purchase", T0 + 2 * hour),  # last touch: r1 (r2 is later but did not show A): 10
        ev("e5", "u1", "C", "purchase", T0 + 100 + 25 * hour),  # r2 showed C, but 25 h before: none
        ev("e6", "u1", "A", "purchase", T0 - 10),  # before any slate: none
        ev("e7", "anon", "D", "purchase", T0 + 400, session_id="sess9"),  # last touch by session id: r3, 3
        ev("e8", "u2", "A", "purchase", T0 + 3 * hour, request_id="unknown-id"),  # unknown id → last touch r4: 12
        ev("e9", "u1", "Z", "click", T0 + 7, request_id="nope"),  # no such slate
        ev("e10", "u2", "X", "purchase", T0 + 310, request_id="r4"),  # credited to r4; X never shown: no price
    ]
    write_log(tmp_path, slates, events)
    logs = read_logs(tmp_path, attribution_s=24 * hour)
    s = logs.slates
    assert s.request_id == ["r1", "r2", "r3", "r4"]
    assert s.purchases.tolist() == [2, 0, 1, 2]
    assert s.revenue.tolist() == [30.0, 0.0, 3.0, 12.0]
    assert s.clicks.tolist() == [1, 0, 0, 0] and s.carts.tolist() == [1, 0, 0, 0]
    a = logs.attribution
    assert (a.purchases_by_request, a.purchases_last_touch, a.purchases_unattributed) == (2, 3, 2)
    assert (a.clicks, a.carts, a.clicks_unmatched, a.unpriced_purchases) == (1, 1, 1, 1)
    # A narrower attribution window loses the 2-hour-later purchase.
    assert read_logs(tmp_path, attribution_s=hour).slates.revenue.tolist() == [20.0, 0.0, 3.0, 0.0]
    # A time window on the slates: only r1, r2; the purchases credited to r3 and r4 fall outside.
    windowed = read_logs(tmp_path, since_ts=T0, until_ts=T0 + 150, attribution_s=24 * hour)
    assert windowed.slates.request_id == ["r1", "r2"] and windowed.slates.revenue.tolist() == [30.0, 0.0]
    assert windowed.attribution.events_outside_window == 3


def test_a_unit_seen_in_two_arms_is_reported_and_left_out(tmp_path: Path) -> None:
    slates = [slate(f"a{u}", f"u{u}", "exp:a", ["S1"], ts=T0 + u) for u in range(50)]
    slates += [slate(f"b{u}", f"u{u + 45}", "exp:b", ["S2"], ts=T0 + u) for u in range(50)]  # u45..u49 in both
    write_log(tmp_path, slates, [])
    result = analyze(tmp_path, experiment("a", "b"), replicates=200)
    (e,) = result.experiments
    assert e.crossover_units == 5
    assert result.arm("exp:a").units == 45 and result.arm("exp:b").units == 45
    assert any("more than one arm" in n for n in result.notes)


# ---- exposure and gini ---------------------------------------------------------------------------


def test_gini_matches_the_mean_absolute_difference_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 50, int(rng.integers(1, 40))).astype(float)
        if x.sum() == 0:
            continue
        brute = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
        assert stats.gini(x) == pytest.approx(brute)
    assert stats.gini(np.full(10, 3)) == 0.0
    assert stats.gini(np.array([0, 0, 0, 5])) == pytest.approx(0.75)
    assert stats.gini(np.zeros(0)) == 0.0 and stats.gini(np.zeros(4)) == 0.0


def test_exposure_of_a_window_counts_unseen_catalog_items(tmp_path: Path) -> None:
    slates = [slate("r1", "u1", "default", ["A", "B"], ts=T0), slate("r2", "u2", "default", ["A", "A"], ts=T0 + 10),
              slate("r3", "u3", "exp:x", ["C"], ts=T0 + 20), slate("r4", "u4", "default", ["D"], ts=T0 + 100)]  # fmt: skip
    write_log(tmp_path, slates, [])
    e = exposure(tmp_path, T0, T0 + 50, n_catalog=10)
    assert (e.slates, e.impressions, e.distinct, e.n_catalog) == (3, 5, 3, 10)
    assert e.coverage == pytest.approx(0.3)
    assert e.gini == pytest.approx(stats.gini(np.array([3, 1, 1] + [0] * 7)))
    assert exposure(tmp_path, n_catalog=10, variant="exp").distinct == 1
    assert exposure(tmp_path, n_catalog=2).n_catalog == 4  # a catalog that grew: at least what was shown


# ---- (7) the command ------------------------------------------------------------------------------


def test_the_command_writes_json_markdown_and_parseable_svgs(tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    simulate_ab(state, {"exp:a": 0.10, "exp:b": 0.12, "exp:c": 0.10}, units_per_arm=400)
    slates = [slate(f"d{i}", f"du{i}", "default", ["S1", "S2"], ts=T0 + i) for i in range(30)]
    slates += [slate(f"h{i}", f"hu{i}", "holdout", ["S1", "S9"], ts=T0 + i) for i in range(30)]
    write_log(state, slates, [])
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text('holdout = 0.1\n[[experiments]]\nname = "exp"\ntraffic = 0.5\n'
                             'variants = [{name = "a"}, {name = "b"}, {name = "c"}]\n')  # fmt: skip
    assert analyze_main(["--state", str(state), "--out", str(out), "--settings", str(settings_file), "--replicates", "300"]) == 0
    analysis = msgspec.json.decode((out / "analysis.json").read_bytes(), type=Analysis)
    assert {a.variant for a in analysis.arms} == {"default", "holdout", "exp:a", "exp:b", "exp:c"}
    assert [e.name for e in analysis.experiments] == ["exp", "holdout"]
    assert analysis.experiments[0].control == "exp:a" and analysis.experiments[1].control == "default"
    assert analysis.traffic_srm is not None and analysis.traffic_srm.arms == ["holdout", "exp", "default"]
    json.loads((out / "analysis.json").read_text())  # strict JSON: no NaN
    report = (out / "report.md").read_text()
    for heading in ("## Verdict", "## Per variant", "## Differences against the control", "## Sample-ratio mismatch", "## Guardrails"):
        assert heading in report
    svgs = sorted(out.glob("*.svg"))
    assert {p.name for p in svgs} >= {"metric_ctr.svg", "metric_revenue_per_request.svg", "differences.svg"}
    for p in svgs:
        root = ET.parse(p).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert f"]({p.name})" in report
        assert "href" not in p.read_text()  # standalone: nothing external


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert analyze_main(["--state", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "expected a state directory" in capsys.readouterr().err
    (tmp_path / "nolog").mkdir()
    assert analyze_main(["--state", str(tmp_path / "nolog"), "--out", str(tmp_path / "o")]) == 2
    assert "expected an event log" in capsys.readouterr().err
    EventLog(tmp_path / "empty").close()
    assert analyze_main(["--state", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no served slates" in capsys.readouterr().err
    write_log(tmp_path / "some", [slate("r1", "u1", "default", ["A"], ts=T0)], [])
    assert analyze_main(["--state", str(tmp_path / "some"), "--since-ts", str(T0 + 1)]) == 2
    assert "none of its 1 slates" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("holdout = 2\n")
    assert analyze_main(["--state", str(tmp_path / "some"), "--settings", str(bad)]) == 2
    assert "holdout" in capsys.readouterr().err
    with pytest.raises(AnalysisError, match="alpha"):
        analyze(tmp_path / "some", alpha=0.7)
    # As a process: a message, no traceback.
    proc = subprocess.run([sys.executable, "-m", "builder.experiments.cli", "--state", str(tmp_path / "empty")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no served slates" in proc.stderr and "Traceback" not in proc.stderr
