"""The builder end to end on the tiny synthetic store: every part is there, readable by the
serving-side loaders, and says what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.errors import BundleCorruptError
from artifacts.featurespec import N_FEATURES
from artifacts.ranker import CompiledRanker
from artifacts.snapshot import ShopperSnapshot
from artifacts.usertower import UserTower
from artifacts.vectors import VectorIndex
from engine.schemas import RecommendQuery
from engine.service import Recommender
from tests._settings import unhurried

pytestmark = pytest.mark.slow


def test_build_publishes_a_verified_bundle_with_every_part(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current", verify="full")
    m = bundle.manifest
    for rel in (
        layout.VOCAB, layout.ITEM_SKU, layout.ITEM_VECTORS, layout.ITEM_INDEX, layout.USER_TOWER, layout.ITEM_TOWER, layout.RANKER_LIB,
        layout.RANKER_TREELITE, layout.RANKER_LIGHTGBM, layout.SHOPPER_SNAPSHOT, layout.POPULAR_GLOBAL, layout.NEW_ARRIVALS,
        *layout.csr(layout.COVISIT), *layout.csr(layout.COPURCHASE), *layout.csr(layout.COMPLEMENT_CATEGORIES),
    ):
        assert rel in m.files, rel
    assert not any(p.name.startswith(".staging") for p in tiny_bundle.iterdir())
    assert m.counts["items"] == bundle.n_items
    assert len(m.feature_spec) == N_FEATURES
    # the compiled ranker and the ONNX tower were checked during the build
    assert m.eval["ranker_parity_max_abs_diff"] <= 1e-5
    assert m.eval["user_tower_onnx_max_abs_diff"] <= 1e-4
    assert m.eval["item_tower_onnx_max_abs_diff"] <= 1e-4
    # the ranker orders the validation candidates better than retrieval order does
    assert m.eval["ranker_ndcg@10"] > m.eval["retrieval_ndcg@10"]


def test_compiled_ranker_agrees_with_lightgbm(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current")
    booster = lgb.Booster(model_file=str(bundle.path(layout.RANKER_LIGHTGBM)))
    ranker = CompiledRanker(bundle.path(layout.RANKER_LIB), n_features=N_FEATURES)
    rng = np.random.default_rng(0)
    X = rng.normal(0, 2, size=(400, N_FEATURES)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    np.testing.assert_allclose(ranker.predict(X), booster.predict(X, raw_score=True), atol=1e-5, rtol=0)


def test_index_returns_each_items_own_vector_first(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current")
    vectors = np.asarray(bundle.array(layout.ITEM_VECTORS))
    index = VectorIndex.open(bundle.path(layout.ITEM_INDEX), ndim=vectors.shape[1], expansion_search=256)
    rows = np.random.default_rng(1).choice(len(vectors), 200, replace=False)
    first = []
    for row in rows:
        found, scores = index.search(vectors[row], 5)
        # identical vectors (cold items with the same metadata) may tie for first place
        first.append(found[0] == row or np.allclose(vectors[found[0]], vectors[row], atol=1e-3))
    assert np.mean(first) >= 0.99


def test_user_tower_in_the_bundle_gives_unit_vectors(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current")
    tower = UserTower(bundle.path(layout.USER_TOWER))
    vectors = np.asarray(bundle.array(layout.ITEM_VECTORS))
    for n in (0, 1, 50):
        v = tower.encode_one(vectors[:n], region=1, device=1)
        assert v.shape == (vectors.shape[1],) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-4


def test_copurchase_table_recovers_planted_complements(tiny_bundle: Path, tiny_store: Path) -> None:
    """Of the planted pairs the log shows bought together at least once, nearly all must rank in
    the anchor's top 5 co-purchases (anchors have up to 50 neighbours)."""
    bundle = open_bundle(tiny_bundle / "current")
    events = pl.read_parquet(tiny_store / "events.parquet")
    baskets = events.filter(pl.col("type").is_in(["add_to_cart", "purchase"])).select("session_id", "sku").unique()
    together = baskets.join(baskets, on="session_id").filter(pl.col("sku") != pl.col("sku_right"))
    seen = set(zip(together["sku"].to_list(), together["sku_right"].to_list()))
    planted = pl.read_parquet(tiny_store / "truth" / "complements.parquet")
    table, items = bundle.csr(layout.COPURCHASE), bundle.items
    ranks = []
    for sku, comp in zip(planted["sku"].to_list(), planted["complement_sku"].to_list()):
        if (sku, comp) not in seen:
            continue  # never bought together in the log: nothing to recover
        neighbours = table.row(items.row_of(sku))[0]
        hit = np.flatnonzero(neighbours == items.row_of(comp))
        ranks.append(int(hit[0]) if len(hit) else 99)
    ranks_arr = np.asarray(ranks)
    assert len(ranks_arr) >= 20
    assert (ranks_arr < 5).mean() >= 0.9, np.bincount(np.minimum(ranks_arr, 10))
    assert (ranks_arr == 0).mean() >= 0.4


def test_covisit_neighbours_share_the_anchors_category_far_above_chance(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current")
    category = np.asarray(bundle.item_column("category"))
    table = bundle.csr(layout.COVISIT)
    same, total = 0, 0
    for row in range(table.n_rows):
        nbrs = table.row(row)[0][:5]
        same += int((category[nbrs] == category[row]).sum())
        total += len(nbrs)
    chance = float((np.bincount(category) ** 2).sum()) / len(category) ** 2
    assert total > 0 and same / total > 5 * chance


def test_snapshot_holds_every_shopper_with_blocks(tiny_bundle: Path, tiny_store: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current")
    snap = ShopperSnapshot(bundle.path(layout.SHOPPER_SNAPSHOT), map_size=bundle.manifest.dims["snapshot_map_size"])
    assert len(snap) == bundle.manifest.counts["users"]
    users = pl.read_parquet(tiny_store / "users.parquet")
    blocked = users.filter(pl.col("blocked_brands").list.len() > 0).row(0, named=True)
    record = snap.get(blocked["user_id"])
    brands = bundle.vocab.brands
    assert sorted(brands[c] for c in record.blocked_brands) == sorted(
        b for b in blocked["blocked_brands"] if b in brands
    )
    assert snap.get("no-such-shopper") is None


def test_pipeline_serves_in_stock_unblocked_items_from_the_bundle(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current")
    rec = Recommender(bundle, unhurried(), live=None)
    view = rec.view
    now = bundle.manifest.dims["end_ts"]
    for row in range(0, len(bundle.users), 25):
        response, ctx = rec.run(RecommendQuery("home", user_id=bundle.users.id_of(row), count=20), now=now)
        rows = bundle.items.rows_of([i.sku for i in response.items])
        assert response.fallback is None
        assert len(rows) == 20 and len(set(rows.tolist())) == 20
        assert view.in_stock[rows].all()
        assert not np.isin(view.brand[rows], ctx.shopper.blocked_brands).any()
        assert not np.isin(view.seller[rows], ctx.shopper.blocked_sellers).any()
        assert all(i.reason for i in response.items)


def test_cli_inspect_shows_every_part(tiny_bundle: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "builder.cli", "inspect", str(tiny_bundle / "current"), "--verify"],
        capture_output=True, text=True, check=True, env={**os.environ},
    ).stdout
    for part in ("items", "embeddings", "index", "models", "tables", "lists", "features", "vocab.json", "sha256 verified"):
        assert part in out


def test_a_corrupted_copy_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    src = open_bundle(tiny_bundle / "current").root
    copy = tmp_path / src.name
    shutil.copytree(src, copy)
    target = copy / layout.ITEM_VECTORS
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(BundleCorruptError, match="embeddings/items.npy: sha256 mismatch"):
        open_bundle(copy, verify="full")
