"""Vector search when much of the catalog is out of stock (engine/nearest.py): every path returns
only in-stock rows, the exact path is exact, and the slate still fills with near items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from artifacts.bundle import open_bundle
from engine.catalog import CatalogView
from engine.nearest import NearestInStock

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def view(tiny_bundle: Path) -> CatalogView:
    return CatalogView(open_bundle(tiny_bundle / "current"), load_tower=False, load_snapshot=False)


def _truth(view: CatalogView, query: np.ndarray, stock: np.ndarray, k: int) -> set[int]:
    rows = np.flatnonzero(stock)
    scores = np.asarray(view.vectors[rows], dtype=np.float32) @ query
    return set(rows[np.argsort(-scores, kind="stable")[:k]].tolist())


@pytest.mark.parametrize("share, exact_max_rows", [(0.01, 10**9), (0.2, 10**9), (0.2, 0), (0.5, 0), (0.0, 10**9)])
def test_returns_only_in_stock_items_near_the_query(view: CatalogView, share: float, exact_max_rows: int) -> None:
    rng = np.random.default_rng(int(share * 100) + exact_max_rows % 7)
    search = NearestInStock(view.index, view.vectors, exact_max_rows=exact_max_rows, max_oversample=view.n_items)
    stock = (rng.random(view.n_items) < share).astype(np.uint8)
    k = 20
    overlap = []
    for row in rng.choice(view.n_items, 20, replace=False):
        query = np.asarray(view.vectors[row], dtype=np.float32)
        rows, scores = search.search(query, k, stock)
        assert stock[rows].all() and len(set(rows.tolist())) == len(rows)
        assert np.all(np.diff(scores) <= 1e-6)  # best first
        truth = _truth(view, query, stock, k)
        assert len(rows) == min(k, len(truth))  # full whenever enough items are in stock
        overlap.append(len(truth & set(rows.tolist())) / len(truth) if truth else 1.0)
    if exact_max_rows > 0:
        assert min(overlap) == 1.0  # the exact path is exact
    else:
        assert np.mean(overlap) >= 0.8  # HNSW, oversampled by 1/share


def test_the_in_stock_rows_follow_the_stock_generation(view: CatalogView) -> None:
    search = NearestInStock(view.index, view.vectors, exact_max_rows=10**9, max_oversample=1000)
    stock = np.zeros(view.n_items, np.uint8)
    stock[:50] = 1
    query = np.asarray(view.vectors[0], dtype=np.float32)
    assert set(search.search(query, 10, stock, generation=1)[0].tolist()) <= set(range(50))
    stock[:50], stock[50:100] = 0, 1  # the live feed changed the flags and moved the counter
    assert set(search.search(query, 10, stock, generation=2)[0].tolist()) <= set(range(50, 100))


def test_shoppers_without_history_get_their_exact_neighbours_from_the_context_cache(view: CatalogView) -> None:
    from engine.nearest import ContextNearest

    cache = ContextNearest(view.vectors, depth=200)
    rng = np.random.default_rng(3)
    query = rng.normal(size=view.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    stock = (rng.random(view.n_items) < 0.5).astype(np.uint8)
    rows, _ = cache.search(query, 20, stock)
    assert set(rows.tolist()) == _truth(view, query, stock, 20) and len(cache.cache) == 1
    cache.search(query, 20, stock)
    assert len(cache.cache) == 1  # the same context vector is served from the cache
    assert cache.search(query, 20, np.zeros(view.n_items, np.uint8)) is None  # too few in stock: the caller falls back
