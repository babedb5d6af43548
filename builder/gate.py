"""The evaluation gate: a new bundle is published only if it is not worse than the current one.

The figure is a backtest through the evaluation harness (builder.evaluate.runner): the build's
"as of the cut-off" twin of the new bundle (two-tower, index and tables from behaviour before the
cut-off, a shopper snapshot as of the cut-off, the new ranker) serves `home` to the shoppers the
ranker did NOT train on (its validation side) who came back after the cut-off, and is scored on the
first new item each of them interacted with. Nothing it is scored on was trained on.

The comparison: when the current bundle's data ends at or before the cut-off (it cannot have seen
the window either), the current bundle is scored on the same shoppers in the same run, the fair
comparison; otherwise against the backtest figure recorded in its manifest (another window, noted
as such in the verdict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifacts import layout
from artifacts.bundle import Bundle, open_bundle
from artifacts.errors import BundleError
from builder.config import GateConfig
from builder.evaluate import runner
from builder.evaluate.protocols import EvalSplit, sample_users, temporal_split
from builder.progress import Progress
from builder.ranker_data import validation_shoppers
from builder.store import Store
from engine.settings import Settings

EVAL_PREFIX = "gate_"  # manifest eval keys written by the gate


class GateRefused(RuntimeError):
    """The new bundle is worse than the current one by more than the margin; it was not published."""


@dataclass(frozen=True)
class Backtest:
    users: int
    metrics: dict[str, float]  # HR@10, NDCG@10, HR@20, NDCG@20 of the new bundle's twin
    popularity: dict[str, float]  # the same shoppers, popularity order (context for the figure)
    split: EvalSplit | None


def backtest(store: Store, twin: Bundle, cutoff: int, valid_fraction: float, config: GateConfig, progress: Progress | None = None) -> Backtest:
    held_out = validation_shoppers(len(store.users), valid_fraction)
    try:
        split = temporal_split(store, cutoff=cutoff, shoppers=held_out)
    except ValueError:
        return Backtest(0, {}, {}, None)
    split = sample_users(split, config.max_users, config.seed)
    if len(split.holdout.targets) == 0:
        return Backtest(0, {}, {}, None)
    result = runner.run_variant("gate", twin, runner.eval_settings(Settings()), split.train, split, 20, progress)
    popularity = runner.popularity_variant("popularity", runner.popularity_scores(split.train), split.holdout, 20)
    return Backtest(len(split.holdout.targets), _figures(result.ranks), _figures(popularity.ranks), split)


def _figures(ranks: np.ndarray) -> dict[str, float]:
    metrics = runner.m.ranking_metrics(ranks, (10, 20))
    return {k: v for k, v in metrics.items() if k != "MRR"}


def eval_entries(bt: Backtest) -> dict[str, float]:
    """What the manifest records of a backtest (read back by the next build's gate)."""
    out = {f"{EVAL_PREFIX}users": float(bt.users)}
    out |= {f"{EVAL_PREFIX}{k}": v for k, v in bt.metrics.items()}
    out |= {f"{EVAL_PREFIX}popularity_{k}": v for k, v in bt.popularity.items()}
    return out


def current_bundle(out_root: Path) -> Bundle | None:
    if not (Path(out_root) / "current").exists():
        return None
    try:
        return open_bundle(Path(out_root) / "current", verify="sizes")
    except BundleError:
        return None  # a broken current bundle is no reason to refuse a good new one


def verdict(new: Backtest, out_root: Path, cutoff: int, config: GateConfig, progress: Progress | None = None) -> tuple[bool, str]:
    """(publish?, why). Never refuses when there is nothing to compare with."""
    metric = config.metric
    if metric not in new.metrics:
        return True, f"gate: no backtest figure ({new.users} held-out shoppers came back after the cut-off); nothing to compare"
    current = current_bundle(out_root)
    if current is None or current.manifest is None:
        return True, f"gate: no current bundle; backtest {metric} {new.metrics[metric]:.4f} on {new.users} shoppers"
    old_value, how = None, ""
    end_ts = int(current.manifest.dims.get("end_ts", 0))
    if new.split is not None and 0 < end_ts <= cutoff and current.has(layout.RANKER_LIB):
        # The current bundle has not seen the window either: score it on the same shoppers.
        scored = runner.run_variant("gate-current", current, runner.eval_settings(Settings()), new.split.train, new.split, 20, progress)
        old_value, how = _figures(scored.ranks)[metric], "scored on the same shoppers"
    elif f"{EVAL_PREFIX}{metric}" in current.manifest.eval:
        old_value, how = float(current.manifest.eval[f"{EVAL_PREFIX}{metric}"]), "its recorded backtest (another window)"
    if old_value is None:
        return True, f"gate: current bundle {current.build_id} has no backtest figure; publishing"
    floor = old_value * (1.0 - config.margin)
    new_value = new.metrics[metric]
    line = (f"gate: {metric} {new_value:.4f} (new, {new.users} shoppers) vs {old_value:.4f} "
            f"(current {current.build_id}, {how}); floor {floor:.4f} at margin {config.margin:.0%}")
    return new_value >= floor, line
