"""Experiments: deterministic assignment, splits within tolerance, variants that really change the
pipeline, and settings that refuse an impossible design."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from artifacts.bundle import open_bundle
from engine.experiments import HOLDOUT, Assigner, unit
from engine.schemas import RecommendQuery
from engine.errors import Invalid
from engine.service import Recommender, decode_body, decode_query
from engine.settings import ExperimentSettings, Settings, SettingsError, VariantSettings, validate


def _settings(**kw: object) -> Settings:
    return validate(msgspec.structs.replace(Settings(), **kw))


def _ab(traffic: float = 1.0, weights: tuple[float, float] = (1.0, 1.0), **b: object) -> ExperimentSettings:
    return ExperimentSettings("ab", [VariantSettings("a", weights[0]), VariantSettings("b", weights[1], **b)], traffic=traffic)


def test_assignment_is_deterministic_and_independent_of_the_process() -> None:
    s = _settings(holdout=0.1, experiments=[_ab(0.6)])
    users = [f"user-{i}" for i in range(2000)]
    first = [Assigner(s).assign(u).label for u in users]
    assert first == [Assigner(s).assign(u).label for u in users]  # a new assigner (another worker) agrees
    assert Assigner(s).assign(None).label == "default"  # no user id: no experiment


def test_splits_follow_holdout_traffic_and_weights_within_tolerance() -> None:
    s = _settings(holdout=0.1, experiments=[_ab(0.6, (3.0, 1.0)), ExperimentSettings("other", [VariantSettings("x"), VariantSettings("y")], traffic=0.2)])
    n = 40_000
    labels = [Assigner(s).assign(f"shopper-{i}").label for i in range(n)]
    share = {k: labels.count(k) / n for k in set(labels)}
    expected = {HOLDOUT: 0.1, "ab:a": 0.45, "ab:b": 0.15, "other:x": 0.1, "other:y": 0.1, "default": 0.1}
    assert set(share) == set(expected)
    for label, p in expected.items():
        assert abs(share[label] - p) < 4 * np.sqrt(p * (1 - p) / n), (label, share[label], p)  # within 4 sigma


def test_a_new_salt_reshuffles_arms_without_moving_shoppers_between_experiments() -> None:
    a = _settings(experiments=[_ab(0.5)])
    b = _settings(experiments=[msgspec.structs.replace(_ab(0.5), salt="round-2")])
    users = [f"u{i}" for i in range(4000)]
    la, lb = [Assigner(a).assign(u).label for u in users], [Assigner(b).assign(u).label for u in users]
    assert [x == "default" for x in la] == [x == "default" for x in lb]  # the same shoppers are in the experiment
    moved = np.mean([x != y for x, y in zip(la, lb) if x != "default"])
    assert 0.4 < moved < 0.6  # independent hashes: about half change arm
    assert 0 <= unit("s", "k") < 1


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"holdout": 0.5, "experiments": [_ab(0.6)]}, "at most 1"),
        ({"experiments": [ExperimentSettings("solo", [VariantSettings("only")])]}, "at least two variants"),
        ({"experiments": [_ab(), _ab()]}, "unique"),
        ({"experiments": [_ab(mmr_lambda=1.5)]}, "mmr_lambda"),
        ({"experiments": [_ab(weights=(1.0, 0.0))]}, "weight must be > 0"),
    ],
)
def test_impossible_designs_are_refused_with_the_reason(kw: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        _settings(**kw)


@pytest.mark.slow
def test_a_variant_changes_what_its_shoppers_are_served(tiny_bundle: Path) -> None:
    s = _settings(experiments=[_ab(ranking_enabled=False, explore_slots=[])])
    rec = Recommender(open_bundle(tiny_bundle / "current"), s, live=None)
    users = rec.view.bundle.users
    now = rec.view.bundle.manifest.dims["end_ts"]
    seen = {}
    for row in range(60):
        response, _ = rec.run(RecommendQuery("home", user_id=users.id_of(row), count=10), now=now)
        seen.setdefault(response.variant, set()).add(response.fallback)
    assert seen == {"ab:a": {None}, "ab:b": {"ranker_unavailable"}}  # the arm without a ranker says so


def test_a_session_is_the_unit_when_there_is_no_user_id() -> None:
    s = _settings(holdout=0.1, experiments=[_ab(0.6, (3.0, 1.0))])
    sessions = [f"session-{i}" for i in range(20_000)]
    arms = [Assigner(s).assign(None, sid) for sid in sessions]
    assert [a.label for a in arms] == [Assigner(s).assign(None, sid).label for sid in sessions]  # deterministic
    assert {a.unit for a in arms} == set(sessions)
    n = len(sessions)
    share = {k: sum(a.label == k for a in arms) / n for k in (HOLDOUT, "ab:a", "ab:b", "default")}
    for label, p in {HOLDOUT: 0.1, "ab:a": 0.45, "ab:b": 0.15, "default": 0.3}.items():
        assert abs(share[label] - p) < 4 * np.sqrt(p * (1 - p) / n), (label, share[label], p)
    # the arm's expected share of its experiment: weight / Σ weights; 1.0 outside an experiment
    assert {(a.label, a.arm_share) for a in arms} == {(HOLDOUT, 1.0), ("default", 1.0), ("ab:a", 0.75), ("ab:b", 0.25)}


def test_the_user_id_wins_over_the_session_and_neither_means_default() -> None:
    s = _settings(experiments=[_ab()])
    a = Assigner(s)
    for i in range(200):
        user, session = f"user-{i}", f"session-{i}"
        both = a.assign(user, session)
        assert (both.label, both.unit) == (a.assign(user).label, user)
        assert a.assign(None, session).label == a.assign(session).label  # the same hash, keyed by the session
    none = a.assign(None, None)
    assert (none.label, none.unit, none.arm_share) == ("default", "", 1.0)
    assert Assigner(_settings()).assign(None, "s-1").unit == "s-1"  # no experiment: still the unit the slate logs


def test_session_id_is_a_query_parameter_for_get_and_post() -> None:
    s = Settings()
    assert decode_query("surface=home&session_id=s-42", s).session_id == "s-42"
    assert decode_body(b'{"surface": "home", "session_id": "s-42"}', s).session_id == "s-42"
    assert decode_query("surface=home", s).session_id is None
    for raw in ("surface=home&session_id=", "surface=home&session_id=" + "x" * 129):
        with pytest.raises(Invalid, match="session_id"):
            decode_query(raw, s)
    with pytest.raises(Invalid, match="session_id"):
        decode_body(('{"surface": "home", "session_id": "' + "é" * 65 + '"}').encode(), s)  # 130 bytes


@pytest.mark.slow
def test_an_anonymous_shoppers_session_keeps_its_arm(tiny_bundle: Path) -> None:
    rec = Recommender(open_bundle(tiny_bundle / "current"), _settings(experiments=[_ab()]), live=None)
    now = rec.view.bundle.manifest.dims["end_ts"]
    seen = {}
    for i in range(40):
        for _ in range(2):
            response, ctx = rec.run(RecommendQuery("home", count=5, session_id=f"anon-{i}"), now=now)
            seen.setdefault(f"anon-{i}", set()).add(response.variant)
            assert (ctx.unit, ctx.arm_share) == (f"anon-{i}", 0.5)
    assert all(len(v) == 1 for v in seen.values())
    assert set().union(*seen.values()) == {"ab:a", "ab:b"}
