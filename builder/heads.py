"""The ranker's click head: P(click | shown), from logged slates, corrected for position, calibrated.

Position bias (docs/ranking-objectives.md §2). A slate's top slots are looked at far more than
its lower ones, and the logging policy put its best guesses on top, so a model of clicks on
features alone learns "was shown high" as much as "is attractive". Here the slot is a feature of
the training rows only (`method="feature"`): the model learns P(click | item, shopper, slot), and
the engine asks it for slot 0, the same for every candidate, so the ranking it gives is the
attractiveness the slot no longer confounds. A monotone constraint keeps the learnt effect of the
slot non-increasing (a lower slot never helps). `method="none"` is the uncorrected baseline.

Calibration (builder/calibration.py) maps the model's raw margin to a probability. It is fitted
on half of the validation shoppers and judged on the other half, so the reported error is out of
sample for both the trees and the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import lightgbm as lgb
import numpy as np

from artifacts.calibration import CalibrationMap
from builder.calibration import HeadMetrics, apply_map, choose, evaluate_head
from builder.impressions import SlateExamples

Method = Literal["feature", "none"]


@dataclass(frozen=True)
class HeadConfig:
    trees: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    early_stopping_rounds: int = 30
    threads: int = 1
    seed: int = 7


@dataclass
class ClickHead:
    method: Method
    booster: lgb.Booster
    calibration: CalibrationMap
    calibration_kind: str
    raw: HeadMetrics  # the sigmoid of the raw margin, on the judging half
    calibrated: HeadMetrics  # after the calibration map, on the judging half

    def margin_at_top(self, X: np.ndarray) -> np.ndarray:
        """float64 raw margins as the engine would ask: every candidate in slot 0."""
        return self.booster.predict(design(X, np.zeros(len(X), np.int16), self.method), raw_score=True)

    def probability_at_top(self, X: np.ndarray) -> np.ndarray:
        return apply_map(self.calibration, self.margin_at_top(X))


def design(X: np.ndarray, position: np.ndarray, method: Method) -> np.ndarray:
    """The training matrix of a head: the engine's features, plus the slot when it is a feature."""
    if method == "none":
        return X
    return np.column_stack([X, position.astype(np.float32)])


def _params(config: HeadConfig, n_features: int, method: Method) -> dict:
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
        "verbosity": -1,
    }
    if method == "feature":
        params["monotone_constraints"] = [0] * n_features + [-1]
    return params


def train_click_head(data: SlateExamples, config: HeadConfig = HeadConfig(), method: Method = "feature") -> ClickHead:
    """Trees on the training shoppers' impressions (early stopping on half of the validation
    shoppers, which also fit the calibration map); metrics on the other half."""
    users = data.user_row["valid"]
    fit_half = (np.unique(users, return_inverse=True)[1] % 2) == 0  # by shopper: no shopper on both sides
    if fit_half.all() or not fit_half.any():
        raise ValueError(f"the validation slates come from {len(np.unique(users))} shopper(s); need at least two to fit and judge the calibration")
    Xt = design(data.X["train"], data.position["train"], method)
    Xv = design(data.X["valid"], data.position["valid"], method)
    yt, yv = data.clicked["train"].astype(np.float32), data.clicked["valid"].astype(np.float32)
    if yt.min() == yt.max():
        raise ValueError("the training impressions are all clicked or all not clicked: nothing to learn a click model from")
    params = _params(config, data.X["train"].shape[1], method)
    train = lgb.Dataset(Xt, yt, free_raw_data=False)
    stop = lgb.Dataset(Xv[fit_half], yv[fit_half], reference=train)
    booster = lgb.train(params, train, num_boost_round=config.trees, valid_sets=[stop],
                        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)])
    margin = booster.predict(Xv, raw_score=True, num_iteration=booster.best_iteration)
    choice = choose(margin[fit_half], yv[fit_half].astype(np.float64), seed=config.seed, groups=users[fit_half])
    judge = ~fit_half
    raw = evaluate_head(1.0 / (1.0 + np.exp(-margin[judge])), yv[judge])
    calibrated = evaluate_head(apply_map(choice.map, margin[judge]), yv[judge])
    return ClickHead(method, booster, choice.map, choice.chosen, raw, calibrated)
