"""`aisle eval`: the held-out splits leak nothing, and the harness runs the engine's own pipeline on
a real (tiny) bundle, end to end from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builder.cli import main
from builder.evaluate.protocols import INTERACTIONS, loo_split, sample_users, temporal_split
from tests._stores import make_toy_store
from tests.conftest import TEST_BUILD_TOML


def _interactions(store) -> np.ndarray:
    return np.isin(store.events.type, np.asarray(INTERACTIONS, np.int8))


@pytest.mark.parametrize("which", ["test", "valid"])
def test_loo_split_holds_out_the_last_items_and_trains_on_the_rest(which: str) -> None:
    store = make_toy_store(n_items=120, n_users=40, seed=3)
    split = loo_split(store, which)
    ev, back = store.events, 1 if which == "test" else 2
    inter = _interactions(store)
    for i, user in enumerate(split.holdout.users):
        mine = np.flatnonzero(inter & (ev.user_row == user))
        mine = mine[np.lexsort((mine, ev.ts[mine]))]
        assert split.holdout.targets[i] == ev.item_row[mine[-back]]
        hist = split.holdout.history[split.holdout.history_indptr[i] : split.holdout.history_indptr[i + 1]]
        assert hist.tolist() == ev.item_row[mine[:-back]].tolist()
        assert split.prior[i] == len(mine) - back
    # Exactly the held-out interactions (and, for valid, the test ones after them) are gone.
    assert len(split.train.events) == len(ev) - back * len(split.holdout.users)
    assert split.now > split.train.events.ts.max()


def test_temporal_split_targets_are_new_items_after_the_cutoff() -> None:
    store = make_toy_store(n_items=120, n_users=60, seed=4)
    split = temporal_split(store, days=5)
    ev, inter = store.events, _interactions(store)
    assert (split.train.events.ts < split.now).all() and len(split.holdout.users) > 10
    for i, user in enumerate(split.holdout.users):
        mine = inter & (ev.user_row == user)
        before = set(ev.item_row[mine & (ev.ts < split.now)].tolist())
        after = np.flatnonzero(mine & (ev.ts >= split.now))
        first_new = next(int(ev.item_row[j]) for j in after[np.lexsort((after, ev.ts[after]))] if int(ev.item_row[j]) not in before)
        assert split.holdout.targets[i] == first_new
        assert split.prior[i] == int((mine & (ev.ts < split.now)).sum())
    sampled = sample_users(split, 7, seed=1)
    assert len(sampled.holdout.users) == 7 and set(sampled.holdout.users) <= set(split.holdout.users)


@pytest.mark.slow
def test_aisle_eval_scores_the_pipeline_and_baselines(tiny_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "build.toml"
    config.write_text(TEST_BUILD_TOML)
    out = tmp_path / "eval.json"
    code = main(["eval", "--data", str(tiny_store), "--config", str(config), "--json", str(out), "--workdir", str(tmp_path / "work"), "--bootstrap", "200"])
    assert code == 0
    result = json.loads(out.read_text())
    assert (result["protocol"], result["split"], result["k"]) == ("temporal", "test", 20)
    assert result["users"] > 50
    assert set(result["baselines"]) == {"popularity", "covisit", "ann"}
    for row in [result["metrics"], *(b["metrics"] for b in result["baselines"].values())]:
        assert 0 <= row["HR@5"] <= row["HR@10"] <= row["HR@20"] <= 1
        assert row["NDCG@10"] <= row["HR@10"] and 0 < row["coverage@20"] <= 1
    lo, hi = result["ci"]["HR@10"]
    assert lo <= result["metrics"]["HR@10"] <= hi
    # The pipeline finds the next item far more often than the popularity chart does.
    assert result["metrics"]["HR@20"] > result["baselines"]["popularity"]["metrics"]["HR@20"]
    assert result["segments"]["target:head"]["users"] + result["segments"]["target:tail"]["users"] == result["users"]
    # The synthetic store's hidden tastes: the pipeline's picks sit high in each shopper's true affinity.
    assert result["correlation"]["taste_percentile:full"] > 0.6
    assert not any((tmp_path / "work").glob("2*"))  # the held-out bundle is removed afterwards


def test_aisle_eval_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--data", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err
