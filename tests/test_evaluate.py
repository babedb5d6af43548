"""Evaluation metrics against hand-computed cases, and the harness check: the published PopRec
row on Amazon Beauty (skipped without ../shared/data)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from builder.evaluate.baselines import popularity_scores
from builder.evaluate.metrics import (
    NOT_RANKED,
    bootstrap_ci,
    coverage,
    intra_list_diversity,
    novelty,
    popularity_bias,
    ranking_metrics,
    revenue_ndcg,
)
from builder.evaluate.protocols import leave_one_out, rank_with_global_scores
from tests.conftest import SHARED_DATA

BEAUTY = SHARED_DATA / "amazon-beauty-s3rec"


def test_ranking_metrics_by_hand() -> None:
    ranks = np.asarray([0, 1, 9, 10, NOT_RANKED], np.int64)
    m = ranking_metrics(ranks, ks=(1, 10))
    assert m["HR@1"] == pytest.approx(1 / 5)
    assert m["HR@10"] == pytest.approx(3 / 5)
    assert m["NDCG@1"] == pytest.approx(1 / 5)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11) / 5)


def test_revenue_weighted_ndcg_by_hand() -> None:
    ranks = np.asarray([0, 3, NOT_RANKED, 12], np.int64)
    price = np.asarray([10.0, 30.0, 60.0, np.nan])  # an unknown price is worth nothing
    expected = (10.0 * 1.0 + 30.0 / math.log2(5)) / 100.0
    assert revenue_ndcg(ranks, price, 10) == pytest.approx(expected)
    # Equal values give plain NDCG; finding only the cheap target scores below finding the dear one.
    assert revenue_ndcg(ranks[:3], np.ones(3), 10) == pytest.approx(ranking_metrics(ranks[:3], ks=(10,))["NDCG@10"])
    assert revenue_ndcg(np.asarray([0, NOT_RANKED]), np.asarray([1.0, 9.0]), 10) < revenue_ndcg(np.asarray([NOT_RANKED, 0]), np.asarray([1.0, 9.0]), 10)
    assert revenue_ndcg(ranks, np.zeros(4), 10) == 0.0


def test_slate_metrics_by_hand() -> None:
    slates = np.asarray([[0, 1, -1], [1, 2, -1]])
    assert coverage(slates, n_items=6) == pytest.approx(3 / 6)
    vectors = np.asarray([[1, 0], [1, 0], [0, 1]], np.float32)
    # slate 1: identical vectors (cosine 1) → 0; slate 2: orthogonal → 1
    assert intra_list_diversity(slates, vectors) == pytest.approx(0.5)
    popularity = np.asarray([97, 1, 0, 0, 0, 2], np.float64)  # total 100, 6 items → p = (c+1)/106
    expected = np.mean([-math.log2(98 / 106), -math.log2(2 / 106), -math.log2(2 / 106), -math.log2(1 / 106)])
    assert novelty(slates, popularity) == pytest.approx(expected)
    assert popularity_bias(slates, popularity, head_share=1 / 6) == pytest.approx(1 / 4)  # only item 0 is head


def test_global_ranking_masks_history_and_breaks_ties_by_row() -> None:
    from builder.evaluate.protocols import Holdout

    scores = np.asarray([5.0, 9.0, 5.0, 1.0, 7.0])
    # target 2 (score 5): above it 1 (9), 4 (7) and 0 (5, lower row); history masks item 1
    holdout = Holdout(np.asarray([0]), np.asarray([2]), np.asarray([0, 1]), np.asarray([1]))
    assert rank_with_global_scores(scores, holdout).tolist() == [2]


def test_bootstrap_interval_brackets_the_mean() -> None:
    values = (np.random.default_rng(0).random(2000) < 0.3).astype(np.float64)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.06


@pytest.mark.shared_data
def test_poprec_reproduces_the_published_beauty_row(tmp_path: Path) -> None:
    if not (BEAUTY / "interactions.csv.gz").exists():
        pytest.skip("../shared/data is absent")
    from builder.adapters.amazon import convert_amazon
    from builder.ingest import load_store

    convert_amazon(src=BEAUTY, out=tmp_path / "beauty")
    store = load_store(tmp_path / "beauty")
    test = leave_one_out(store, "test")
    assert len(test.targets) == 22_363
    leaky = ranking_metrics(rank_with_global_scores(popularity_scores(store), test))
    # S3-Rec paper, full ranking, PopRec: HR@5 0.0080, NDCG@5 0.0044, HR@10 0.0152, NDCG@10 0.0068,
    # HR@20 0.0217, NDCG@20 0.0084 (../shared/data/amazon-beauty-s3rec/README.md)
    for key, published in (("HR@5", 0.0080), ("NDCG@5", 0.0044), ("HR@10", 0.0152), ("NDCG@10", 0.0068), ("HR@20", 0.0217), ("NDCG@20", 0.0084)):
        assert round(leaky[key], 4) == published, key
    clean = ranking_metrics(rank_with_global_scores(popularity_scores(store, exclude=test), test))
    assert round(clean["HR@10"], 4) == 0.0135 and round(clean["NDCG@10"], 4) == 0.0061  # the README's leak-free rerun
