"""Item vector index: build + verification (builder.index) and the serving view (artifacts.vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from artifacts.vectors import VectorIndex, VectorIndexError
from builder.config import IndexConfig
from builder.index import IndexBuildError, build_index, metric_for

DIM = 32


def _unit_vectors(n: int, dim: int = DIM, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """float32 [n, dim] unit vectors around `clusters` centres (like trained item vectors)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _unit_vectors(3_000)


@pytest.fixture(scope="module", params=["f32", "f16", "i8"])
def built(request, vectors, tmp_path_factory) -> tuple[Path, object, str]:
    config = IndexConfig(dtype=request.param, threads=1)
    path = tmp_path_factory.mktemp("idx") / "index.usearch"
    return path, build_index(vectors, config, path), request.param


def test_build_reports_what_it_built(built, vectors):
    path, info, dtype = built
    assert path.is_file() and info.file_bytes == path.stat().st_size
    assert (info.size, info.ndim, info.dtype, info.connectivity) == (len(vectors), DIM, dtype, 16)
    assert info.metric == metric_for(dtype)
    assert info.sample == 1_000
    assert info.self_hit_rate >= 0.99
    assert info.seconds > 0


def test_every_item_finds_itself_first(built, vectors):
    path, _, _ = built
    index = VectorIndex.open(path, ndim=DIM, expansion_search=64)
    sample = np.random.default_rng(1).choice(len(vectors), 300, replace=False)
    first = [index.search(vectors[row], 5)[0][0] for row in sample]
    assert np.mean(np.array(first) == sample) >= 0.99


def test_search_returns_rows_and_decreasing_inner_products(built, vectors):
    path, _, dtype = built
    index = VectorIndex.open(path, ndim=DIM, expansion_search=128)
    query = vectors[42]
    rows, scores = index.search(query, 50)
    assert rows.dtype == np.int32 and scores.dtype == np.float32
    assert len(rows) == 50 and len(np.unique(rows)) == 50
    assert np.all(np.diff(scores) <= 1e-6)
    exact = vectors[rows] @ query
    tolerance = {"f32": 1e-5, "f16": 2e-3, "i8": 3e-2}[dtype]
    np.testing.assert_allclose(scores, exact, atol=tolerance)
    # Approximate search still finds most of the exact top 50 on this small index.
    truth = np.argsort(-(vectors @ query))[:50]
    assert len(np.intersect1d(rows, truth)) >= 45


def test_k_larger_than_the_index_returns_only_real_rows(tmp_path):
    small = _unit_vectors(30, seed=4)
    path = tmp_path / "small.usearch"
    build_index(small, IndexConfig(dtype="f32", threads=1), path)
    index = VectorIndex.open(path, ndim=DIM, expansion_search=16)
    rows, scores = index.search(small[0], 100)
    assert sorted(rows.tolist()) == list(range(30))
    assert np.all(np.isfinite(scores))
    batch_rows, batch_scores, counts = index.search_batch(small[:3], 40)
    assert batch_rows.shape == (3, 40) and counts.tolist() == [30, 30, 30]
    assert np.all(batch_rows[:, 30:] == -1) and np.all(np.isfinite(batch_scores))
    assert np.all(batch_scores[:, 30:] < -1e30)
    assert np.all(batch_rows[:, 0] == np.arange(3))


def test_batch_search_agrees_with_single_queries(built, vectors):
    path, _, _ = built
    index = VectorIndex.open(path, ndim=DIM, expansion_search=64)
    rows, scores, counts = index.search_batch(vectors[:5], 10)
    assert counts.tolist() == [10] * 5
    for q in range(5):
        single_rows, single_scores = index.search(vectors[q], 10)
        np.testing.assert_array_equal(rows[q], single_rows)
        np.testing.assert_allclose(scores[q], single_scores, atol=1e-6)
    one_rows, _, one_count = index.search_batch(vectors[:1], 10)
    assert one_count.tolist() == [10] and one_rows[0, 0] == 0


def test_duplicate_vectors_count_as_self_hits(tmp_path):
    # Cold items with identical metadata get identical vectors: either copy first is correct.
    base = _unit_vectors(500, seed=2)
    vectors = np.concatenate([base, np.repeat(base[:5], 30, axis=0)])
    info = build_index(vectors, IndexConfig(dtype="f16", threads=1), tmp_path / "dup.usearch")
    assert info.self_hit_rate >= 0.99


def test_view_is_shared_read_only_memory(built):
    path, _, _ = built
    index = VectorIndex.open(path, ndim=DIM, expansion_search=64)
    with pytest.raises(RuntimeError):
        index._index.add(np.array([10**6], dtype=np.uint64), np.zeros((1, DIM), np.float32))


def test_bad_vectors_are_refused(tmp_path):
    config = IndexConfig(dtype="f32", threads=1)
    with pytest.raises(IndexBuildError, match="float32"):
        build_index(np.zeros((10, DIM), np.float64), config, tmp_path / "a.usearch")
    broken = _unit_vectors(10)
    broken[3, 0] = np.nan
    with pytest.raises(IndexBuildError, match="NaN"):
        build_index(broken, config, tmp_path / "b.usearch")
    with pytest.raises(IndexBuildError, match="nothing to index"):
        build_index(np.zeros((0, DIM), np.float32), config, tmp_path / "c.usearch")


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(VectorIndexError, match="not found"):
        VectorIndex.open(tmp_path / "index.usearch", ndim=DIM, expansion_search=64)


def test_garbage_and_truncated_files_are_reported_corrupt(tmp_path, vectors):
    garbage = tmp_path / "garbage.usearch"
    garbage.write_bytes(b"not an index" * 100)
    with pytest.raises(VectorIndexError, match="corrupt"):
        VectorIndex.open(garbage, ndim=DIM, expansion_search=64)
    whole = tmp_path / "whole.usearch"
    build_index(vectors[:500], IndexConfig(dtype="f32", threads=1), whole)
    truncated = tmp_path / "truncated.usearch"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(VectorIndexError, match="corrupt"):
        VectorIndex.open(truncated, ndim=DIM, expansion_search=64)


def test_wrong_width_is_reported(built):
    path, _, _ = built
    with pytest.raises(VectorIndexError, match="ndim"):
        VectorIndex.open(path, ndim=DIM * 2, expansion_search=64)
    index = VectorIndex.open(path, ndim=DIM, expansion_search=64)
    with pytest.raises(VectorIndexError, match="query"):
        index.search(np.zeros(DIM + 1, np.float32), 5)


def test_serving_module_imports_only_numpy_and_usearch():
    source = (Path(__file__).resolve().parents[1] / "artifacts" / "vectors.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "pathlib", "numpy", "usearch"}
