"""Logged slates as training examples (builder/impressions.py): slates rebuilt from the store's
impressions, every slate click joined to its impression, anchors inferred from the session, and
features computed through the engine's own re-scoring path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from artifacts.bundle import open_bundle
from artifacts.featurespec import FEATURE_INDEX, N_FEATURES
from artifacts.schema import SURFACE_BY_NAME, EventType
from builder.impressions import logged_slates, slate_anchors, slate_examples
from builder.ingest import load_store
from engine.catalog import CatalogView
from engine.settings import RetrievalSettings


@pytest.fixture(scope="module")
def store(tiny_store: Path):
    return load_store(tiny_store)


@pytest.fixture(scope="module")
def slates(store):
    return logged_slates(store)


def test_every_slate_click_is_joined_to_the_impression_it_clicked(store, slates) -> None:
    ev = store.events
    slate_clicks = int(((ev.type == EventType.CLICK) & (ev.position >= 0)).sum())
    assert slate_clicks > 0 and int(slates.clicked.sum()) == slate_clicks
    clicked = np.flatnonzero(slates.clicked)
    slate_of = np.searchsorted(slates.start, clicked, side="right") - 1
    assert (slates.click_ts[clicked] >= slates.ts[slate_of]).all()  # a click follows its slate
    assert (slates.click_ts[~slates.clicked] == -1).all()


def test_slates_hold_positions_in_order_from_zero(slates) -> None:
    sizes = np.diff(slates.start)
    assert (sizes > 0).all()
    expected = np.concatenate([np.arange(n) for n in sizes])
    assert np.array_equal(slates.position, expected)
    assert set(np.unique(slates.surface)) <= {SURFACE_BY_NAME[s] for s in ("home", "pdp", "cart")}


def test_clicks_fall_with_position_as_the_logs_show(slates) -> None:
    ctr = np.array([slates.clicked[slates.position == k].mean() for k in range(5)])
    assert (np.diff(ctr) < 0).all(), ctr


def test_pdp_slates_are_anchored_on_the_last_click_and_home_slates_on_nothing(store, slates) -> None:
    anchors = slate_anchors(store, slates)
    home, pdp = SURFACE_BY_NAME["home"], SURFACE_BY_NAME["pdp"]
    assert all(len(a) == 0 for a, f in zip(anchors, slates.surface) if f == home)
    pdp_anchors = [a for a, f in zip(anchors, slates.surface) if f == pdp]
    assert pdp_anchors and np.mean([len(a) == 1 for a in pdp_anchors]) > 0.95


def test_examples_are_the_engines_features_for_each_impression(store, slates, tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle / "current")
    view = CatalogView(bundle, load_snapshot=False)
    some = slates.take(np.arange(0, slates.n_slates, max(1, slates.n_slates // 300)))
    data = slate_examples(store, view, some, int(bundle.manifest.dims["end_ts"]), 50, 0.5, RetrievalSettings())
    n = sum(len(x) for x in data.X.values())
    assert n == len(some.item_row) and all(x.shape[1] == N_FEATURES for x in data.X.values())
    X = np.concatenate([data.X["train"], data.X["valid"]])
    surface = np.concatenate([data.surface["train"], data.surface["valid"]])
    code = {SURFACE_BY_NAME["home"]: 0, SURFACE_BY_NAME["pdp"]: 1, SURFACE_BY_NAME["cart"]: 2}
    assert np.array_equal(X[:, FEATURE_INDEX["ctx_surface"]], np.vectorize(code.get)(surface).astype(np.float32))
    assert (X[:, FEATURE_INDEX["n_sources"]] > 0).mean() > 0.5  # the sources re-score what was shown
    pdp = surface == SURFACE_BY_NAME["pdp"]
    assert np.isfinite(X[pdp, FEATURE_INDEX["anchor_sim"]]).mean() > 0.9
    clicked = np.concatenate([data.clicked["train"], data.clicked["valid"]])
    assert 0 < clicked.sum() < len(clicked)
    # Shoppers are on one side only.
    assert not set(data.user_row["train"]) & set(data.user_row["valid"])
