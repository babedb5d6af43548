"""Two-tower training, its ONNX user tower and the serving wrapper, on the toy store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from artifacts.schema import EventType
from artifacts.usertower import INPUT_NAMES, OUTPUT_NAME, UserTower, UserTowerError
from builder.config import TwoTowerConfig
from builder.twotower import (
    ONNX_TOLERANCE,
    TwoTowerError,
    TwoTowerResult,
    UserTowerModel,
    build_examples,
    build_sequences,
    train_two_tower,
)
from tests._stores import make_toy_store

CONFIG = TwoTowerConfig(dim=32, history_len=8, hidden=64, epochs=2, batch_size=256, threads=1, seed=5)
POSITIVES = (EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def store():
    return make_toy_store(n_items=300, n_users=200, seed=0)


@pytest.fixture(scope="module")
def until_ts(store) -> int:
    return int(np.quantile(store.events.ts, 0.8))


@pytest.fixture(scope="module")
def trained(store, until_ts, tmp_path_factory) -> TwoTowerResult:
    return train_two_tower(store, CONFIG, until_ts, tmp_path_factory.mktemp("tt"))


@pytest.fixture(scope="module")
def tower(trained) -> UserTower:
    return UserTower(trained.onnx_path, threads=1)


def _random_inputs(rng: np.random.Generator, b: int, length: int, dim: int) -> tuple[np.ndarray, ...]:
    hist = rng.standard_normal((b, length, dim)).astype(np.float32)
    hist /= np.linalg.norm(hist, axis=-1, keepdims=True)
    mask = (rng.random((b, length)) < 0.5).astype(np.float32)
    mask[0] = 0.0
    hist *= mask[..., None]
    context = np.stack([rng.integers(0, 4, b), rng.integers(0, 4, b)], axis=1).astype(np.int64)
    return hist, mask, context


# ---- training result ------------------------------------------------------------------------


def test_result_describes_the_model(trained, store):
    assert trained.onnx_path.name == "user_tower.onnx"
    assert trained.onnx_path.is_file()
    assert not list(trained.onnx_path.parent.glob("*.data")), "the ONNX file must be self-contained"
    assert (trained.history_len, trained.dim) == (CONFIG.history_len, CONFIG.dim)
    assert (trained.n_regions, trained.n_devices) == (len(store.regions), len(store.devices))
    assert trained.epochs_run == CONFIG.epochs and not trained.stopped_by_budget
    assert trained.train_examples > 1000
    assert trained.softmax == "full", "a 300-item catalog trains with the softmax over every item"
    assert np.isfinite(trained.final_loss)
    assert trained.max_abs_diff_onnx_vs_torch <= ONNX_TOLERANCE


def test_item_vectors_cover_the_catalog_and_are_unit_length(trained, store):
    vectors = trained.item_vectors
    assert vectors.dtype == np.float32 and vectors.shape == (len(store.items), CONFIG.dim)
    assert vectors.flags.c_contiguous
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_examples_ignore_impressions_and_skips_and_respect_the_cutoff(store, until_ts):
    ex = build_examples(store, until_ts, history_len=8, max_examples=10**9)
    ev = store.events
    positive_before = np.isin(ev.type, POSITIVES) & (ev.ts < until_ts)
    assert len(ex) <= int(positive_before.sum())
    assert ex.ts.max() < until_ts
    assert np.all(np.diff(ex.ts) >= 0), "examples are oldest first"
    # Every history item is one the same shopper interacted with (positives only), before the target.
    assert set(np.unique(ex.hist[ex.hist >= 0])) <= set(np.unique(ev.item_row[positive_before]))
    # Left padding: once a slot is real, every later slot is real.
    real = ex.hist >= 0
    assert np.all(real[:, 1:] >= real[:, :-1])
    assert (~real).all(axis=1).any(), "first interactions (empty history) are examples too"


def test_max_examples_keeps_the_newest(store, until_ts):
    every = build_examples(store, until_ts, history_len=8, max_examples=10**9)
    newest = build_examples(store, until_ts, history_len=8, max_examples=500)
    assert len(newest) == 500
    assert newest.ts.min() >= np.sort(every.ts)[-500]


def test_sequences_count_every_training_target_once_with_its_serving_history(store, until_ts):
    length = 8
    examples = build_examples(store, until_ts, history_len=length, max_examples=10**9)
    seq = build_sequences(store, until_ts, history_len=length, max_examples=10**9)
    assert seq.items.shape == (len(seq), length + 1) and seq.counted.shape == (len(seq), length)
    np.testing.assert_array_equal(np.sort(seq.targets()), np.sort(examples.target))
    real = seq.items >= 0
    assert np.all(real[:, 1:] >= real[:, :-1]), "left-padded, newest last"
    # A counted target at slot t sees the window's items up to slot t: the newest part of that
    # interaction's serving history (its previous ≤ L items), at least its newest L - L//2 + 1.
    histories: dict[int, list[np.ndarray]] = {}
    for target, hist in zip(examples.target, examples.hist):
        histories.setdefault(int(target), []).append(hist[hist >= 0])
    least = length - length // 2 + 1

    def explained(seen: np.ndarray, history: np.ndarray) -> bool:
        newest = history[len(history) - len(seen) :]
        return len(seen) >= min(least, len(history)) and np.array_equal(newest, seen)

    for w, t in zip(*np.nonzero(seq.counted)):
        seen = seq.items[w, : t + 1]
        seen = seen[seen >= 0]
        assert any(explained(seen, h) for h in histories[int(seq.items[w, t + 1])])


def test_sequences_keep_only_the_newest_targets(store, until_ts):
    newest = build_examples(store, until_ts, history_len=8, max_examples=500)
    seq = build_sequences(store, until_ts, history_len=8, max_examples=500)
    assert seq.n_targets == 500
    np.testing.assert_array_equal(np.sort(seq.targets()), np.sort(newest.target))


def _model(dim: int = 16, length: int = 6, seed: int = 0) -> UserTowerModel:
    torch.manual_seed(seed)
    model = UserTowerModel(dim, length, 32, n_regions=3, n_devices=3, blocks=2, heads=2, dropout=0.3).eval()
    with torch.no_grad():  # untrained biases are zero: make the distance bias matter
        for block in model.blocks:
            block.distance_bias.normal_()
    return model


def test_the_output_at_each_slot_is_what_serving_computes_for_that_prefix():
    """Training reads every slot of a window; serving right-aligns the history. Positions are
    relative, so both see the same thing (the premise of SASRec-style training here)."""
    model = _model()
    rng = np.random.default_rng(1)
    length, dim = 6, 16
    hist = torch.from_numpy(rng.standard_normal((1, length, dim)).astype(np.float32))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    context = torch.tensor([[1, 2]])
    with torch.no_grad():
        states = model.sequence(hist * mask.unsqueeze(-1), mask)
        for slot in range(length):
            trained = model.readout(states[:, slot], mask[:, slot], context)
            prefix_len = int(mask[0, : slot + 1].sum())
            served_hist = torch.zeros(1, length, dim)
            served_mask = torch.zeros(1, length)
            if prefix_len:
                served_hist[0, -prefix_len:] = hist[0, slot + 1 - prefix_len : slot + 1]
                served_mask[0, -prefix_len:] = 1.0
            served = model(served_hist, served_mask, context)
            torch.testing.assert_close(trained, served, atol=1e-5, rtol=0)


def test_trimming_shared_leading_padding_changes_no_state():
    model = _model()
    rng = np.random.default_rng(2)
    hist = torch.from_numpy(rng.standard_normal((3, 6, 16)).astype(np.float32))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.float32)
    with torch.no_grad():
        full = model.sequence(hist, mask)
        trimmed = model.sequence(hist[:, 3:], mask[:, 3:])
    torch.testing.assert_close(full[:, 3:], trimmed, atol=1e-5, rtol=0)
    assert torch.all(full[:, :3] == 0)


def test_a_shopper_without_history_gets_a_context_vector():
    model = _model()
    empty = torch.zeros(2, 6, 16), torch.zeros(2, 6)
    with torch.no_grad():
        vectors = model(*empty, torch.tensor([[0, 0], [2, 1]]))
    assert torch.all(torch.isfinite(vectors))
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))
    assert not torch.allclose(vectors[0], vectors[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_catalog_cross_entropy_matches_the_dense_loss_and_gradients(monkeypatch, dtype):
    from builder import twotower

    monkeypatch.setattr(twotower, "_logit_dtype", lambda: dtype)
    monkeypatch.setattr(twotower, "_LOGIT_BLOCK", (7, 5))  # many ragged blocks
    gen = torch.Generator().manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(23, 8, generator=gen), dim=1) / 0.07
    items = torch.nn.functional.normalize(torch.randn(31, 8, generator=gen), dim=1)
    target = torch.randint(0, 31, (23,), generator=gen)
    target[:3] = 4  # repeated targets accumulate into one item's gradient
    dense = lambda u, v: torch.nn.functional.cross_entropy(u @ v.T, target)  # noqa: E731
    blocked = lambda u, v: twotower._CatalogCrossEntropy.apply(u, v, target)  # noqa: E731
    grads = []
    for loss_fn in (dense, blocked):
        u, v = users.clone().requires_grad_(), items.clone().requires_grad_()
        loss = loss_fn(u, v)
        loss.backward()
        grads.append((loss.detach(), u.grad, v.grad))
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for expected, got in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, expected, atol=tolerance * max(1.0, float(expected.abs().max())), rtol=0)


def test_large_catalogs_train_with_the_sampled_softmax(store, until_ts, tmp_path):
    config = TwoTowerConfig(dim=16, history_len=4, hidden=32, epochs=1, batch_size=128, threads=1, full_softmax_logits=0)
    result = train_two_tower(store, config, until_ts, tmp_path)
    assert result.softmax == "sampled"
    assert np.isfinite(result.final_loss) and np.all(np.isfinite(result.item_vectors))
    assert result.max_abs_diff_onnx_vs_torch <= ONNX_TOLERANCE


def test_training_is_deterministic_for_a_seed(store, until_ts, trained, tmp_path):
    again = train_two_tower(store, CONFIG, until_ts, tmp_path)
    np.testing.assert_array_equal(again.item_vectors, trained.item_vectors)
    assert again.final_loss == trained.final_loss


def test_time_budget_stops_training_at_a_batch_boundary_and_text_gaps_are_harmless(tmp_path):
    small = make_toy_store(n_items=120, n_users=80, seed=3, text_dim=8)
    small.items.text_embedding[:5] = np.nan  # items whose text embedding is missing
    cutoff = int(np.quantile(small.events.ts, 0.9))
    config = TwoTowerConfig(dim=16, history_len=4, hidden=32, epochs=50, batch_size=64, max_seconds=0.0, threads=1)
    result = train_two_tower(small, config, cutoff, tmp_path)
    assert result.stopped_by_budget and result.epochs_run == 0
    assert np.isfinite(result.final_loss)  # the one batch that ran
    assert result.onnx_path.is_file() and np.all(np.isfinite(result.item_vectors))


def test_no_interactions_before_the_cutoff_is_a_clear_error(store, tmp_path):
    with pytest.raises(TwoTowerError, match="until_ts"):
        train_two_tower(store, CONFIG, int(store.events.ts.min()), tmp_path)


# ---- retrieval quality (planted structure) -------------------------------------------------


def _next_item_cases(store, until_ts: int, history_len: int):
    """Per shopper: (history rows before the cut-off, deduplicated like training, newest last;
    first later item that differs from the newest history item; its region, device)."""
    ev = store.events
    positive = np.isin(ev.type, POSITIVES)
    for user in range(len(store.users)):
        before = np.flatnonzero(positive & (ev.user_row == user) & (ev.ts < until_ts))
        after = np.flatnonzero(positive & (ev.user_row == user) & (ev.ts >= until_ts))
        if len(before) == 0 or len(after) == 0:
            continue
        history = ev.item_row[before]
        history = history[np.concatenate([[True], history[1:] != history[:-1]])]
        later = [j for j in after if ev.item_row[j] != history[-1]]
        if later:
            j = later[0]
            yield history[-history_len:], int(ev.item_row[j]), int(ev.region[j]), int(ev.device[j])


def test_user_vectors_retrieve_the_next_item_far_better_than_popularity(trained, tower, store, until_ts):
    ev = store.events
    train = np.isin(ev.type, POSITIVES) & (ev.ts < until_ts)
    popular = np.argsort(-np.bincount(ev.item_row[train], minlength=len(store.items)), kind="stable")[:20]
    model_hits, popular_hits, same_category, cases = 0, 0, 0.0, 0
    for history, target, region, device in _next_item_cases(store, until_ts, CONFIG.history_len):
        user = tower.encode_one(trained.item_vectors[history], region, device)
        top = np.argsort(-(trained.item_vectors @ user), kind="stable")[:20]
        model_hits += target in top
        popular_hits += target in popular
        same_category += float(np.mean(store.items.category[top] == store.items.category[target]))
        cases += 1
    assert cases > 150
    recall, baseline, chance = model_hits / cases, popular_hits / cases, 20 / len(store.items)
    # Measured on this store: recall@20 ≈ 0.5, popularity ≈ 0.24, chance 0.067.
    assert recall >= baseline + 0.15, (recall, baseline)
    assert recall >= 4 * chance, (recall, chance)
    # 12 leaf categories: a random top-20 shares the target's leaf ~1/12 of the time.
    assert same_category / cases > 0.4


def test_cold_items_get_useful_vectors_from_metadata(trained, store, until_ts):
    ev = store.events
    seen = np.zeros(len(store.items), dtype=bool)
    seen[ev.item_row[np.isin(ev.type, POSITIVES) & (ev.ts < until_ts)]] = True
    cold = np.flatnonzero(~seen)
    assert len(cold) >= 10, "the toy store plants cold items"
    vectors = trained.item_vectors
    assert np.all(np.abs(vectors[cold]).sum(axis=1) > 0.5)
    categories = np.unique(store.items.category)
    centroids = np.stack([vectors[seen & (store.items.category == c)].mean(axis=0) for c in categories])
    nearest = categories[np.argmax(vectors[cold] @ centroids.T, axis=1)]
    assert np.mean(nearest == store.items.category[cold]) >= 0.9


# ---- ONNX user tower vs torch ---------------------------------------------------------------


def test_onnx_user_tower_matches_torch_on_random_and_real_inputs(store, until_ts, tmp_path):
    from builder.twotower import ItemTower, export_user_tower, item_vectors

    torch.manual_seed(0)
    id_slot = np.zeros(len(store.items), dtype=np.int64)
    items = ItemTower(store, id_slot, 0, CONFIG.dim, CONFIG.hidden)
    users = UserTowerModel(
        CONFIG.dim, CONFIG.history_len, CONFIG.hidden, len(store.regions), len(store.devices), blocks=2, heads=2
    ).eval()
    with torch.no_grad():  # untrained biases are zero: make the distance bias part of the check
        for block in users.blocks:
            block.distance_bias.normal_()
    path = tmp_path / "user_tower.onnx"
    export_user_tower(users, CONFIG.history_len, CONFIG.dim, path)
    tower = UserTower(path)
    rng = np.random.default_rng(3)
    vectors = item_vectors(items, len(store.items))
    ex = build_examples(store, until_ts, CONFIG.history_len, 10**9)
    real_hist = ex.hist[-17:]
    real_mask = (real_hist >= 0).astype(np.float32)
    cases = [_random_inputs(rng, b, CONFIG.history_len, CONFIG.dim) for b in (1, 17)]
    cases.append((vectors[np.maximum(real_hist, 0)] * real_mask[..., None], real_mask, ex.context[-17:]))
    cases.append((np.zeros((17, CONFIG.history_len, CONFIG.dim), np.float32), np.zeros((17, CONFIG.history_len), np.float32), ex.context[-17:]))
    for hist, mask, context in cases:
        with torch.no_grad():
            expected = users(torch.from_numpy(hist), torch.from_numpy(mask), torch.from_numpy(context)).numpy()
        got = tower.encode(hist, mask, context)
        assert got.shape == (len(hist), CONFIG.dim) and got.dtype == np.float32
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, atol=ONNX_TOLERANCE, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_onnx_file_has_the_documented_io_contract(trained):
    import onnx

    model = onnx.load(str(trained.onnx_path))
    graph = model.graph

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in graph.input}
    assert tuple(inputs) == INPUT_NAMES
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert [inputs[n].type.tensor_type.elem_type for n in INPUT_NAMES] == [f32, f32, i64]
    batch = shape(inputs["hist"])[0]
    assert isinstance(batch, str) and batch, "the batch axis is dynamic"
    assert shape(inputs["hist"])[1:] == [CONFIG.history_len, CONFIG.dim]
    assert shape(inputs["hist_mask"])[1:] == [CONFIG.history_len]
    assert shape(inputs["context"])[1:] == [2]
    assert shape(graph.output[0])[1:] == [CONFIG.dim]


# ---- serving wrapper ------------------------------------------------------------------------


def test_encode_one_handles_empty_single_and_long_histories(trained, tower):
    vectors = trained.item_vectors
    empty = tower.encode_one(np.zeros((0, CONFIG.dim), np.float32), 1, 1)
    one = tower.encode_one(vectors[:1], 1, 1)
    long_history = vectors[:CONFIG.history_len + 5]
    long = tower.encode_one(long_history, 1, 1)
    newest_only = tower.encode_one(long_history[-CONFIG.history_len:], 1, 1)
    for vec in (empty, one, long):
        assert vec.shape == (CONFIG.dim,) and vec.dtype == np.float32
        assert np.all(np.isfinite(vec))
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    np.testing.assert_array_equal(long, newest_only)  # the newest history_len items are used
    assert not np.allclose(empty, one)


def test_encode_one_matches_a_padded_batch(trained, tower):
    vectors = trained.item_vectors[10:13]
    hist = np.zeros((1, CONFIG.history_len, CONFIG.dim), np.float32)
    hist[0, -3:] = vectors
    mask = np.zeros((1, CONFIG.history_len), np.float32)
    mask[0, -3:] = 1
    batch = tower.encode(hist, mask, np.array([[2, 3]], np.int64))[0]
    np.testing.assert_array_equal(tower.encode_one(vectors, 2, 3), batch)


def test_unknown_context_codes_fall_back_to_unknown(trained, tower):
    vectors = trained.item_vectors[:4]
    unknown = tower.encode_one(vectors, 0, 0)
    np.testing.assert_array_equal(tower.encode_one(vectors, 999, 0), unknown)
    np.testing.assert_array_equal(tower.encode_one(vectors, 0, 77), unknown)
    np.testing.assert_array_equal(tower.encode_one(vectors, -3, -1), unknown)


def test_batch_1_and_17_agree_row_by_row(tower):
    hist, mask, context = _random_inputs(np.random.default_rng(9), 17, CONFIG.history_len, CONFIG.dim)
    batch = tower.encode(hist, mask, context)
    single = np.concatenate([tower.encode(hist[i : i + 1], mask[i : i + 1], context[i : i + 1]) for i in range(17)])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_wrong_input_shapes_are_rejected(tower):
    with pytest.raises(UserTowerError, match="hist"):
        tower.encode(np.zeros((1, 3, CONFIG.dim), np.float32), np.zeros((1, 3), np.float32), np.zeros((1, 2), np.int64))
    with pytest.raises(UserTowerError, match="history_vectors"):
        tower.encode_one(np.zeros((2, CONFIG.dim + 1), np.float32), 0, 0)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserTowerError, match="not found"):
        UserTower(tmp_path / "user_tower.onnx")


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "user_tower.onnx"
    path.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(UserTowerError, match="corrupt"):
        UserTower(path)


def test_a_model_with_other_inputs_is_incompatible(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("user_vec", TensorProto.FLOAT, ["B", 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["user_vec"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    path = tmp_path / "other.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserTowerError, match="user tower incompatible: expected inputs hist"):
        UserTower(path)


def test_serving_modules_load_without_torch_or_builder():
    root = Path(__file__).resolve().parents[1]
    probe = (
        "import sys, artifacts.usertower, artifacts.itemtower, artifacts.vectors; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'builder', 'onnx'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
