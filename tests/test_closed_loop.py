"""The closed loop end to end: a real server with experiments, simulated shoppers of the synthetic
store posting their events back, `aisle analyze` on the engine's own logs; and drift PSI rising when
the shoppers' tastes move.

One three-arm experiment answers two questions in one run: `personal` (the served pipeline) is
built to be better than `untargeted` (the whole catalog by popularity, no ranker, MMR at λ 0: as
diverse as possible, so hardly targeted at all), so analysis must find it better on CTR;
`personal_copy` is an exact copy of `personal`, an A/A pair that must show no significant
difference. The run is sequential (concurrency 1) and seeded, so the engine sees the same shoppers
in the same order every time. That the tests hold their false-positive rate over many A/A splits
is checked on synthetic logs in tests/test_analyze.py (400 datasets).
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from tests._server import Server

AB_SETTINGS = """
[[experiments]]
name = "ab"
salt = "closed-loop"
variants = [
  {name = "untargeted", home = [{name = "popular", k = 2000}], pdp = [{name = "popular", k = 2000}], cart = [{name = "popular", k = 2000}], ranking_enabled = false, mmr_lambda = 0.0, explore_slots = []},
  {name = "personal"},
  {name = "personal_copy"},
]
"""


def test_a_better_variant_wins_and_an_identical_one_does_not(tiny_store: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from builder.experiments.analyze import analyze
    from builder.simulator.run import simulate
    from builder.simulator.world import World
    from engine.settings import load

    server = Server(tiny_bundle, tmp_path / "state", workers=2, settings_toml=AB_SETTINGS)
    try:
        server.wait_ready(workers=2)
        summary = simulate(World.load(tiny_store), f"http://127.0.0.1:{server.port}", sessions=1500, seed=11, concurrency=1)
    finally:
        server.stop()
    assert summary.http_errors == 0 and sum(summary.violations.values()) == 0, summary.examples
    assert set(summary.variants) == {"ab:untargeted", "ab:personal", "ab:personal_copy"}

    settings = load(tmp_path / "state" / "settings.toml")
    analysis = analyze(tmp_path / "state", settings)
    (experiment,) = [e for e in analysis.experiments if e.name == "ab"]
    assert experiment.control == "ab:untargeted"
    assert experiment.srm is not None and not experiment.srm.mismatch
    # Every slate the shoppers saw was logged, and every slate click they posted was joined to one.
    assert sum(a.requests for a in analysis.arms) == summary.requests
    assert sum(a.clicks for a in analysis.arms) == summary.clicks

    better = analysis.difference("ab:personal", "ctr")
    assert better.significant and better.p_value < 0.01 and better.abs_diff > 0, better
    assert "CTR: ab:personal beats ab:untargeted" in experiment.verdict, experiment.verdict
    # A/A: the copy against the arm it copies. Analysis measures against the first variant of the
    # settings, so the same logs are analysed again with `personal` listed first.
    (ab,) = settings.experiments
    reordered = msgspec.structs.replace(settings, experiments=[msgspec.structs.replace(ab, variants=[ab.variants[1], ab.variants[2], ab.variants[0]])])
    same = analyze(tmp_path / "state", reordered).difference("ab:personal_copy", "ctr")
    assert not same.significant and same.p_value > 0.01, same


def _psi(text: str) -> dict[str, float]:
    found = {m.group(1): float(m.group(2)) for m in re.finditer(r'^aisle_feature_psi\{feature="([^"]+)"\} (\S+)$', text, re.M)}
    return {k: v for k, v in found.items() if v == v}  # NaN: unmonitored or too few rows


# Shopper-level features (history length, event count, device, recent count) are the same for
# every candidate of a request, so over a few hundred requests their PSI mostly says which shoppers
# happened to come; the comparison is over the candidate-level ones (the monitor watches all).
SHOPPER_LEVEL = ("user_log_events", "user_history_len", "ctx_device", "recent_count")


def test_drift_psi_rises_when_shoppers_tastes_shift(tiny_store: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """Two fresh servers on one bundle, the same seed, tastes shifted towards a trend in one.
    Compared with each other rather than with a first phase: the simulator's own events move the
    live counters as a run goes on, which would raise a later window's PSI without any shift."""
    import numpy as np

    from builder.simulator.run import simulate
    from builder.simulator.world import World

    settings = "[drift]\nsample_rate = 1.0\nrows_per_request = 40\nwindow = 100000\nmin_rows = 400\n"
    world = World.load(tiny_store)
    # The trend: the leaf with the dearest items, so following it moves what the engine serves.
    medians = [float(np.median(world.price[world.leaf == k])) if (world.leaf == k).any() else 0.0 for k in range(len(world.category_paths))]
    trend = world.category_paths[int(np.argmax(medians))]
    psi: dict[float, dict[str, float]] = {}
    for shift in (0.0, 1.0):
        server = Server(tiny_bundle, tmp_path / f"state-{shift}", workers=1, settings_toml=settings)
        try:
            server.wait_ready()
            simulate(world, f"http://127.0.0.1:{server.port}", sessions=350, seed=3, concurrency=1, taste_shift=shift, trend_leaf=trend)
            text = server.get("/metrics").body.decode()  # one worker: its own window, fresh
        finally:
            server.stop()
        psi[shift] = _psi(text)
        score = re.search(r"^aisle_ranker_score_psi (\S+)$", text, re.M)
        psi[shift]["ranker_score"] = float(score.group(1)) if score else float("nan")
    before, after = psi[0.0], psi[1.0]
    # Following the trend, shoppers land on and click its items, so what the engine serves them moves
    # away from what it was trained on: most candidate-level PSIs rise, in total too, and so does the
    # ranker score's. (A few fall: price relative to a shopper's history, which the trend's dearer
    # items push the other way, is one.)
    level = sorted(f for f in set(before) - set(SHOPPER_LEVEL) if f != "ranker_score")
    assert len(level) >= 20 and set(level) <= set(after), psi
    table = "; ".join(f"{f} {before[f]:.3f}→{after[f]:.3f}" for f in sorted(before))
    # A move counts when it is at least 0.01 of PSI: a tenth of the conventional "moderate shift"
    # level, and above the wobble of a few hundred requests (counting 0.001 moves made the verdict
    # turn on features whose PSI sits near zero either way).
    rose = sum(after[f] > before[f] + 0.01 for f in level)
    fell = sum(after[f] < before[f] - 0.01 for f in level)
    assert rose >= 2 * fell, f"{rose} rose, {fell} fell: {table}"
    assert sum(after[f] for f in level) > sum(before[f] for f in level), table
    assert after["ranker_score"] > before["ranker_score"], table
