"""The ranking heads: P(click | shown), P(add-to-cart | click), P(purchase | click), each from
logged slates, calibrated, compiled (docs/ranking-objectives.md).

Position bias (§2). A slate's top slots are looked at far more than its lower ones, and the
logging policy put its best guesses on top, so a model of clicks on features alone learns "was
shown high" as much as "is attractive". Here the slot is a feature of the training rows only
(`position="feature"`): the model learns P(click | item, shopper, slot), and the engine asks it
for slot 0, the same for every candidate, so the ranking it gives is the attractiveness the slot
no longer confounds. A monotone constraint keeps the learnt effect of the slot non-increasing (a
lower slot never helps). `position="none"` is the uncorrected baseline.

Conversions after the click (§3). The cart and purchase heads learn from clicked impressions: a
click converts when the shopper carts (buys) the item within `attribution_days` after it
(builder/labels.py). A click whose window is still open at the log's end is a negative of weight
F(elapsed), the share of conversions that arrive that soon (`labels="weighted"`); `exclude` drops
open windows, `naive` counts them as negatives (biased low, kept for comparison). The held-out
metrics weigh rows as training does: the examples come from the days after the ranker's cut-off,
so with the default windows nearly every click's window is still open at the log's end, and the
weighted labels are the estimate of the truth the heads have (builder/labels.py bounds its bias).

Calibration (builder/calibration.py) maps each head's raw margin to a probability, fitted on the
validation shoppers' rows (never the trees' training rows); its reported error is cross-fitted
(`_fit`), so out of sample for both the trees and the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import msgspec
import numpy as np

from artifacts import layout
from artifacts.calibration import CalibrationMap, write_calibration
from artifacts.heads import HEAD_NAMES, HeadSpec, write_heads_spec
from artifacts.schema import EventType
from builder.calibration import HeadMetrics, apply_map, choose, evaluate_head
from builder.config import HeadsConfig, RankerConfig
from builder.impressions import SlateExamples
from builder.labels import LabelError, attribute_conversions, click_conversions, delay_cdf
from builder.ranker import compile_model
from builder.store import Store

HeadConfig = HeadsConfig  # the name the first tests used
OUTCOME = {"cart": EventType.ADD_TO_CART, "purchase": EventType.PURCHASE}


class HeadsError(ValueError):
    """Too little logged data to train a head; the bundle then ships without heads."""


@dataclass
class Head:
    name: str
    position: str  # "feature" (slot column, served at 0) or "none"
    booster: lgb.Booster
    calibration: CalibrationMap
    calibration_kind: str
    raw: HeadMetrics  # the sigmoid of the raw margin, on the judging half
    calibrated: HeadMetrics  # after the calibration map, on the judging half
    train_rows: int
    train_positives: int
    label_strategy: str = ""  # conversion heads: how open windows were labelled

    @property
    def slot_column(self) -> bool:
        return self.position == "feature"

    def margin_at_top(self, X: np.ndarray) -> np.ndarray:
        """float64 raw margins as the engine would ask: every candidate in slot 0."""
        return self.booster.predict(design(X, np.zeros(len(X), np.int16), self.position), raw_score=True,
                                    num_iteration=self.booster.best_iteration or None)

    def probability_at_top(self, X: np.ndarray) -> np.ndarray:
        return apply_map(self.calibration, self.margin_at_top(X))


ClickHead = Head


def design(X: np.ndarray, position: np.ndarray, method: str) -> np.ndarray:
    """The training matrix of a head: the engine's features, plus the slot when it is a feature."""
    if method == "none":
        return X
    return np.ascontiguousarray(np.column_stack([X, position.astype(np.float32)]), dtype=np.float32)


def _params(config: HeadsConfig, n_features: int, slot_column: bool) -> dict:
    params = {
        "objective": "binary",
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.9,
        "bagging_freq": 1,
        "num_threads": config.threads,
        "seed": config.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
    if slot_column:
        params["monotone_constraints"] = [0] * n_features + [-1]
    return params


def _halves(users: np.ndarray) -> np.ndarray:
    """bool [n]: one of two halves of the validation rows, by shopper (no shopper on both sides)."""
    half = (np.unique(users, return_inverse=True)[1] % 2) == 0
    if half.all() or not half.any():
        raise HeadsError(f"the validation slates come from {len(np.unique(users))} shopper(s); need at least two to fit and judge the calibration")
    return half


def _fit(
    name: str,
    Xt: np.ndarray, yt: np.ndarray, wt: np.ndarray,
    Xv: np.ndarray, yv: np.ndarray, wv: np.ndarray, users_v: np.ndarray,
    config: HeadsConfig, n_features: int, slot_column: bool, min_positives: int,
) -> tuple[lgb.Booster, CalibrationMap, str, HeadMetrics, HeadMetrics]:
    """Trees on the training shoppers (early stopping on the validation shoppers); the shipped
    calibration map on every validation row. The calibrated metrics are cross-fitted: a map fitted
    on one half of the validation shoppers judges the other half and the other way round, so every
    judged probability comes from trees and a map that never saw its row."""
    used = wt > 0
    positives = int(yt[used].sum())
    if positives < min_positives or positives == int(used.sum()):
        raise HeadsError(f"{name} head: {positives:,} positives among {int(used.sum()):,} training rows; "
                         f"need at least {min_positives} and some negatives")
    half = _halves(users_v)
    train = lgb.Dataset(Xt, yt, weight=wt, free_raw_data=False)
    stop = lgb.Dataset(Xv, yv, weight=wv, reference=train)
    booster = lgb.train(_params(config, n_features, slot_column), train, num_boost_round=config.trees, valid_sets=[stop],
                        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)])
    margin = booster.predict(Xv, raw_score=True, num_iteration=booster.best_iteration)
    judged = wv > 0
    y64, w64 = yv.astype(np.float64), wv.astype(np.float64)
    if yv[judged].min(initial=1) == yv[judged].max(initial=0):
        raise HeadsError(f"{name} head: the validation rows have only one label")
    probs = np.full(len(yv), np.nan)
    for fit in (half, ~half):
        rows, other = fit & judged, ~fit & judged
        if yv[rows].min(initial=1) == yv[rows].max(initial=0):
            raise HeadsError(f"{name} head: half of the validation shoppers show only one label")
        cmap = choose(margin[rows], y64[rows], w64[rows], seed=config.seed, groups=users_v[rows]).map
        probs[other] = apply_map(cmap, margin[other])
    choice = choose(margin[judged], y64[judged], w64[judged], seed=config.seed, groups=users_v[judged])
    raw = evaluate_head(1.0 / (1.0 + np.exp(-margin[judged])), yv[judged], w64[judged])
    calibrated = evaluate_head(probs[judged], yv[judged], w64[judged])
    return booster, choice.map, choice.chosen, raw, calibrated


def train_click_head(data: SlateExamples, config: HeadsConfig = HeadsConfig(), method: str = "feature") -> Head:
    """P(click | shown) on every impression; `method` is the position handling (module docstring)."""
    n_features = data.X["train"].shape[1]
    slot = method == "feature"
    Xt = design(data.X["train"], data.position["train"], method)
    Xv = design(data.X["valid"], data.position["valid"], method)
    yt, yv = data.clicked["train"].astype(np.float32), data.clicked["valid"].astype(np.float32)
    if yt.min() == yt.max():
        raise HeadsError("the training impressions are all clicked or all not clicked: nothing to learn a click model from")
    ones_t, ones_v = np.ones(len(yt), np.float32), np.ones(len(yv), np.float32)
    booster, cmap, kind, raw, cal = _fit("click", Xt, yt, ones_t, Xv, yv, ones_v, data.user_row["valid"],
                                         config, n_features, slot, 1)
    return Head("click", method, booster, cmap, kind, raw, cal, len(yt), int(yt.sum()))


@dataclass(frozen=True)
class ConversionLabels:
    """Labels of one side's clicked impressions for one outcome."""

    rows: np.ndarray  # int64 [m]: the clicked impressions among the side's rows
    label: np.ndarray  # float32 [m], 0/1: converted within the window (as far as the log shows)
    weight: np.ndarray  # float32 [m]: training weight under the strategy
    closed: np.ndarray  # bool [m]: the window closed before the log's end


def conversion_labels(
    store: Store, data: SlateExamples, outcome: str, attribution_days: float, data_end: int, strategy: str,
) -> dict[str, ConversionLabels]:
    """Per side, the clicked impressions labelled by `outcome` ("cart" | "purchase") of the same
    item by the same shopper within the window after the click; open windows by `strategy`
    (builder/labels.py). F, the delay CDF, comes from every click of the log, not just the
    slates'."""
    ev = store.events
    kind = OUTCOME[outcome]
    seen = ev.ts <= data_end
    out_rows = np.flatnonzero(seen & (ev.type == kind))
    attribution_s = int(round(attribution_days * 86_400))
    cdf = None
    if strategy == "weighted":
        try:
            cdf = delay_cdf(click_conversions(store, attribution_days, data_end, outcome=kind))
        except LabelError:
            strategy = "exclude"  # nothing says how long conversions take: drop open windows instead
    result: dict[str, ConversionLabels] = {}
    for side in ("train", "valid"):
        rows = np.flatnonzero(data.clicked[side] & (data.click_ts[side] >= 0))
        t = data.click_ts[side][rows]
        converted, _ = attribute_conversions(
            data.user_row[side][rows], data.item_row[side][rows], t,
            ev.user_row[out_rows], ev.item_row[out_rows], ev.ts[out_rows], attribution_s,
        )  # fmt: skip
        open_ = t + attribution_s > data_end
        if strategy == "naive":
            weight = np.ones(len(rows))
        elif strategy == "exclude" or cdf is None:
            weight = np.where(open_, 0.0, 1.0)
        else:
            weight = np.where(open_ & ~converted, cdf(data_end - t), 1.0)
        result[side] = ConversionLabels(rows.astype(np.int64), converted.astype(np.float32), weight.astype(np.float32), ~open_)
    return result


def train_conversion_head(
    data: SlateExamples, labels: dict[str, ConversionLabels], outcome: str, config: HeadsConfig = HeadsConfig(),
) -> Head:
    """P(outcome | click) on the clicked impressions. No slot column: once the shopper has clicked,
    where the item was shown hardly matters for what they do on its page."""
    n_features = data.X["train"].shape[1]
    t, v = labels["train"], labels["valid"]
    Xt, Xv = data.X["train"][t.rows], data.X["valid"][v.rows]
    booster, cmap, kind, raw, cal = _fit(
        outcome, Xt, t.label, t.weight, Xv, v.label, v.weight, data.user_row["valid"][v.rows], config, n_features, False, config.min_positives,
    )  # fmt: skip
    return Head(outcome, "none", booster, cmap, kind, raw, cal, int((t.weight > 0).sum()), int(t.label[t.weight > 0].sum()),
                config.labels)


def train_heads(store: Store, data: SlateExamples, config: HeadsConfig, data_end: int) -> dict[str, Head]:
    """The three heads, in HEAD_NAMES order. Raises HeadsError when the log is too thin for any."""
    heads = {"click": train_click_head(data, config, config.position)}
    for outcome in ("cart", "purchase"):
        labels = conversion_labels(store, data, outcome, config.attribution_days, data_end, config.labels)
        heads[outcome] = train_conversion_head(data, labels, outcome, config)
    return heads


class HeadReport(msgspec.Struct, frozen=True, kw_only=True):
    """One head's held-out evaluation, as `eval/heads.json` keeps it for `aisle eval`."""

    calibrated: HeadMetrics  # cross-fitted: the map and the trees never saw the judged rows
    uncalibrated: HeadMetrics  # the sigmoid of the raw margin on the same rows
    calibration: str  # isotonic | platt
    position: str  # feature | none
    labels: str  # conversion heads: weighted | exclude | naive; "" for click
    train_rows: int
    train_positives: int


def head_report(head: Head) -> HeadReport:
    return HeadReport(calibrated=head.calibrated, uncalibrated=head.raw, calibration=head.calibration_kind,
                      position=head.position, labels=head.label_strategy, train_rows=head.train_rows,
                      train_positives=head.train_positives)


def read_head_reports(path: Path) -> dict[str, HeadReport]:
    return msgspec.json.decode(Path(path).read_bytes(), type=dict[str, HeadReport])


def write_heads(heads: dict[str, Head], data: SlateExamples, bundle_dir: Path, compile_config: RankerConfig,
                report=lambda message: None) -> dict[str, float]:
    """Compile every head into `<bundle>/models/heads/<name>.so` (parity-checked against LightGBM
    on its validation rows), write the heads spec and the calibration maps; returns the manifest's
    evaluation entries for them."""
    out_dir = Path(bundle_dir) / layout.HEADS_DIR
    n_features = data.X["valid"].shape[1]
    specs: dict[str, HeadSpec] = {}
    entries: dict[str, float] = {}
    for name in HEAD_NAMES:
        head = heads[name]
        X_check = design(data.X["valid"], data.position["valid"], head.position)
        cols = n_features + (1 if head.slot_column else 0)
        compiled = compile_model(head.booster, head.booster.best_iteration or head.booster.current_iteration(),
                                 X_check, cols, compile_config, out_dir, name, report)
        specs[name] = HeadSpec(library=layout.head_library(name), n_features=cols, slot_column=head.slot_column,
                               trees=compiled.n_trees, calibration=name)
        m = head.calibrated
        entries |= {
            f"head_{name}_ece": m.ece, f"head_{name}_ece_floor": m.ece_floor, f"head_{name}_log_loss": m.log_loss, f"head_{name}_auc": m.auc,
            f"head_{name}_ece_uncalibrated": head.raw.ece, f"head_{name}_positive_rate": m.positive_rate,
            f"head_{name}_parity_max_abs_diff": compiled.max_abs_diff,
        }
    write_heads_spec(Path(bundle_dir) / layout.HEADS_SPEC, specs)
    report_path = Path(bundle_dir) / layout.HEADS_REPORT
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_bytes(msgspec.json.format(msgspec.json.encode({name: head_report(heads[name]) for name in HEAD_NAMES}), indent=1))
    write_calibration(Path(bundle_dir) / layout.CALIBRATION, {name: heads[name].calibration for name in HEAD_NAMES})
    return entries
