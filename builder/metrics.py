"""Ranking metrics over grouped, graded candidate lists (the builder's quick evaluation).

Groups are contiguous: `groups[q]` candidates per query, in the order given, scored by `scores`.
NDCG uses gain 2^grade - 1 and log2(rank + 1) discounts; ties in score keep the given order.
"""

from __future__ import annotations

import numpy as np


def _dcg(grades: np.ndarray, k: int) -> float:
    g = grades[:k].astype(np.float64)
    return float(((2.0**g - 1.0) / np.log2(np.arange(2, len(g) + 2))).sum())


def grouped_metrics(scores: np.ndarray, grades: np.ndarray, groups: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean NDCG@k and hit rate@k (any positive in the top k) over queries."""
    ndcgs, hits = [], []
    start = 0
    for size in groups.tolist():
        s, g = scores[start : start + size], grades[start : start + size]
        start += size
        order = np.argsort(-s, kind="stable")
        ideal = _dcg(np.sort(g)[::-1], k)
        if ideal <= 0:
            continue
        ndcgs.append(_dcg(g[order], k) / ideal)
        hits.append(float((g[order][:k] > 0).any()))
    return {f"ndcg@{k}": float(np.mean(ndcgs)) if ndcgs else 0.0, f"hit@{k}": float(np.mean(hits)) if hits else 0.0}
