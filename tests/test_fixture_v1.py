"""The frozen v1 bundle (tests/fixtures/bundle-v1) still opens, verifies and serves."""

from __future__ import annotations

from pathlib import Path

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.featurespec import FEATURE_NAMES, N_FEATURES, served_width
from engine.catalog import CatalogView
from engine.schemas import RecommendQuery
from engine.service import Recommender
from tests._settings import unhurried

FIXTURE = Path(__file__).parent / "fixtures" / "bundle-v1"


def test_frozen_v1_bundle_verifies_byte_for_byte() -> None:
    bundle = open_bundle(FIXTURE, verify="full")
    assert bundle.manifest.format_version == 1
    assert bundle.manifest.build_id == "20261121T223031Z-c53cbdab"
    assert bundle.manifest.counts["items"] == 200 == bundle.n_items


def test_frozen_v1_feature_spec_is_a_prefix_of_the_engines() -> None:
    """The spec is append-only: v1 was built before `ctx_region`, and its ranker gets the leading
    columns it was trained on."""
    bundle = open_bundle(FIXTURE, verify="none")
    spec = [f.name for f in bundle.manifest.feature_spec]
    assert len(spec) == bundle.manifest.dims["n_features"] == 34 < N_FEATURES
    assert tuple(spec) == FEATURE_NAMES[: len(spec)] and served_width(spec) == 34
    assert "ctx_region" not in spec
    assert CatalogView(bundle, load_index=False, load_tower=False, load_snapshot=False).n_features == 34


def test_frozen_v1_bundle_serves_every_surface() -> None:
    bundle = open_bundle(FIXTURE, verify="sizes")
    rec = Recommender(bundle, unhurried(), live=None)
    assert rec.load_report.ranker is None and rec.load_report.index is None
    rec.warm()  # as a worker does before it serves: a cold first request pays numba's start-up and misses its deadline
    now = bundle.manifest.dims["end_ts"]
    user = bundle.users.id_of(0)
    anchor = bundle.items.id_of(int(bundle.array(layout.POPULAR_GLOBAL)[0]))
    for query in (
        RecommendQuery("home", user_id=user, count=10),
        RecommendQuery("pdp", user_id=user, item_id=anchor, count=10),
        RecommendQuery("cart", user_id=user, cart=[anchor], count=10),
    ):
        response, ctx = rec.run(query, now=now)
        skus = [i.sku for i in response.items]
        assert len(skus) == 10 and len(set(skus)) == 10 and response.fallback is None
        assert ctx.features.shape[1] == 34 and ctx.relevance is not None  # its ranker ran on its own columns
        assert rec.view.in_stock[bundle.items.rows_of(skus)].all()
        assert anchor not in skus or query.surface == "home"
