"""Ranking metrics from the target's 0-based rank (one target per shopper, so HR@K = Recall@K),
and slate-level metrics (coverage, diversity, novelty, popularity bias), with bootstrap
confidence intervals. Conventions follow the published full-ranking protocol in
../shared/data/*/README.md: NDCG@K = 1/log2(rank + 2) when rank < K, else 0; MRR = 1/(rank + 1)
over the full ranking.
"""

from __future__ import annotations

import numpy as np

NOT_RANKED = np.iinfo(np.int64).max  # the target was not in the ranked list at all


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """ranks int64 [n]: share of targets ranked in the top k."""
    return float((ranks < k).mean()) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    if len(ranks) == 0:
        return 0.0
    inside = ranks < k
    gains = np.zeros(len(ranks), np.float64)
    gains[inside] = 1.0 / np.log2(ranks[inside].astype(np.float64) + 2.0)
    return float(gains.mean())


def revenue_ndcg(ranks: np.ndarray, value: np.ndarray, k: int) -> float:
    """Revenue-weighted NDCG@k: each shopper's NDCG@k weighted by what their target is worth
    (value float [n], e.g. its price), Σ value·NDCG / Σ value. A ranker that finds the cheap targets
    and misses the dear ones scores lower here than on NDCG. 0 when no target has a value."""
    value = np.nan_to_num(np.asarray(value, np.float64), nan=0.0)
    total = float(value.sum())
    if len(ranks) == 0 or total <= 0:
        return 0.0
    inside = ranks < k
    gains = np.zeros(len(ranks), np.float64)
    gains[inside] = 1.0 / np.log2(ranks[inside].astype(np.float64) + 2.0)
    return float((gains * value).sum() / total)


def mrr(ranks: np.ndarray) -> float:
    if len(ranks) == 0:
        return 0.0
    found = ranks != NOT_RANKED
    recip = np.zeros(len(ranks), np.float64)
    recip[found] = 1.0 / (ranks[found].astype(np.float64) + 1.0)
    return float(recip.mean())


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = hit_rate(ranks, k)
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    out["MRR"] = mrr(ranks)
    return out


def bootstrap_ci(values: np.ndarray, samples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-shopper values (e.g. hit indicators)."""
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def coverage(slates: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one slate. slates int [n, k], -1 = empty."""
    shown = np.unique(slates[slates >= 0])
    return float(len(shown) / n_items) if n_items else 0.0


def intra_list_diversity(slates: np.ndarray, vectors: np.ndarray) -> float:
    """Mean over slates of 1 - mean pairwise cosine of the slate's (L2-normalised) item vectors."""
    values = []
    for slate in slates:
        rows = slate[slate >= 0]
        if len(rows) < 2:
            continue
        v = vectors[rows].astype(np.float64)
        sim = v @ v.T
        m = len(rows)
        values.append(1.0 - (sim.sum() - np.trace(sim)) / (m * (m - 1)))
    return float(np.mean(values)) if values else 0.0


def novelty(slates: np.ndarray, popularity: np.ndarray) -> float:
    """Mean self-information -log2 p(item) of recommended items, p from interaction counts."""
    p = (popularity.astype(np.float64) + 1.0) / (popularity.sum() + len(popularity))
    rows = slates[slates >= 0]
    return float((-np.log2(p[rows])).mean()) if len(rows) else 0.0


def popularity_bias(slates: np.ndarray, popularity: np.ndarray, head_share: float = 0.2) -> float:
    """Share of recommended items that belong to the head: the most popular items that together
    make up `head_share` of the catalog."""
    n_head = max(1, int(round(len(popularity) * head_share)))
    head = np.zeros(len(popularity), bool)
    head[np.argsort(-popularity, kind="stable")[:n_head]] = True
    rows = slates[slates >= 0]
    return float(head[rows].mean()) if len(rows) else 0.0
