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


def test_training_rows_carry_the_logged_requests_context_not_the_shoppers_usual_one(store, slates, tiny_bundle: Path) -> None:
    from builder.ranker_data import sample_queries

    ev = store.events
    imp = np.flatnonzero((ev.type == EventType.IMPRESSION) & (ev.position == 0) & np.isin(ev.surface, list(SURFACE_BY_NAME.values())))
    # Each slate's device and region are those its impressions were logged with.
    logged = {(int(ev.session_row[i]), int(ev.ts[i]), int(ev.surface[i])): (int(ev.device[i]), int(ev.region[i])) for i in imp}
    for s in range(0, slates.n_slates, max(1, slates.n_slates // 200)):
        key = (int(slates.session_row[s]), int(slates.ts[s]), int(slates.surface[s]))
        assert (int(slates.device[s]), int(slates.region[s])) == logged[key]
    # The synthetic shoppers use another device in about 15% of sessions: the rows must see that.
    usual = np.zeros(len(store.users), np.int64)
    for u in np.unique(slates.user_row):
        usual[u] = np.bincount(ev.device[ev.user_row == u]).argmax()
    assert 0.05 < float((slates.device != usual[slates.user_row]).mean()) < 0.4
    # ... and the features of every impression carry its slate's device.
    bundle = open_bundle(tiny_bundle / "current")
    view = CatalogView(bundle, load_snapshot=False)
    some = slates.take(np.arange(0, slates.n_slates, max(1, slates.n_slates // 300)))
    assert (some.device > 0).all()
    data = slate_examples(store, view, some, int(bundle.manifest.dims["end_ts"]), 50, 0.5, RetrievalSettings())
    served = np.concatenate([data.X["train"], data.X["valid"]])[:, FEATURE_INDEX["ctx_device"]].astype(np.int64)
    per_impression = np.repeat(some.device, np.diff(some.start)).astype(np.int64)
    assert np.array_equal(np.bincount(served, minlength=8), np.bincount(per_impression, minlength=8))
    # The ranker's queries: asked at a logged event, with that event's time, device and region.
    cutoff = int(np.quantile(ev.ts, 0.8))
    queries = sample_queries(store, cutoff, int(ev.ts.max()) + 1, 400, seed=3)
    at = {(int(ev.user_row[i]), int(ev.ts[i])): (int(ev.device[i]), int(ev.region[i])) for i in np.flatnonzero(ev.ts >= cutoff)}
    assert {q.surface for q in queries} == {"home", "pdp", "cart"}
    assert all((q.device, q.region) == at[(q.user_row, q.now)] for q in queries)
    assert len({q.now for q in queries if q.surface == "home"}) > 10  # not all asked at the cut-off


def test_the_request_context_wins_and_the_shopper_fills_what_it_leaves_out() -> None:
    from engine.shopper import Shopper

    shopper = Shopper(known=True, region=3, device=2)
    assert shopper.context_codes(5, 1) == (5, 1)
    assert shopper.context_codes(0, 1) == (3, 1) and shopper.context_codes(5, 0) == (5, 2)
    assert Shopper.anonymous().context_codes(0, 0) == (0, 0)
