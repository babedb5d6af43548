"""The frozen v1 bundle (tests/fixtures/bundle-v1) still opens, verifies and serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.featurespec import FEATURE_NAMES
from artifacts.ranker import CompiledRanker
from engine.catalog import CatalogView
from engine.pipeline import Pipeline

FIXTURE = Path(__file__).parent / "fixtures" / "bundle-v1"


def test_frozen_v1_bundle_verifies_byte_for_byte() -> None:
    bundle = open_bundle(FIXTURE, verify="full")
    assert bundle.manifest.format_version == 1
    assert bundle.manifest.build_id == "20261121T223031Z-c53cbdab"
    assert bundle.manifest.counts["items"] == 200 == bundle.n_items


def test_frozen_v1_feature_spec_is_the_engines() -> None:
    spec = [f.name for f in open_bundle(FIXTURE, verify="none").manifest.feature_spec]
    assert tuple(spec) == FEATURE_NAMES


def test_frozen_v1_bundle_serves_every_surface() -> None:
    bundle = open_bundle(FIXTURE, verify="sizes")
    view = CatalogView(bundle)
    pipeline = Pipeline(view, CompiledRanker(bundle.path(layout.RANKER_LIB), n_features=len(FEATURE_NAMES)))
    now = bundle.manifest.dims["end_ts"]
    user = bundle.users.id_of(0)
    anchor = np.asarray([int(bundle.array(layout.POPULAR_GLOBAL)[0])], np.int32)
    for surface, anchors in (("home", np.zeros(0, np.int32)), ("pdp", anchor), ("cart", anchor)):
        recs = pipeline.recommend(pipeline.resolve(surface, user, anchors, now=now), count=10)
        rows = [r.row for r in recs]
        assert len(recs) == 10 and len(set(rows)) == 10
        assert view.in_stock[rows].all()
        assert int(anchor[0]) not in rows or surface == "home"
