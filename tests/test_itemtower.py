"""The exported item tower (metadata path, `item_tower.onnx`) and its serving wrapper: new SKUs get
the vector the builder gave cold items, on the toy store with and without text embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import artifacts  # noqa: F401  (onnxruntime before anything that may import usearch)
from artifacts.itemtower import INPUT_NAMES, OUTPUT_NAME, TEXT_INPUT, ItemTower, ItemTowerError
from builder.config import TwoTowerConfig
from builder.twotower import (
    ITEM_ONNX_FILE,
    ONNX_TOLERANCE,
    PRICE_BUCKETS,
    TwoTowerResult,
    _price_thresholds,
    build_examples,
    price_buckets,
    train_two_tower,
)
from tests._stores import make_toy_store

CONFIG = TwoTowerConfig(dim=32, history_len=8, hidden=64, epochs=2, batch_size=256, threads=1, seed=5)
TEXT_DIM = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _train(text_dim: int, out: Path):
    # cold_share 0.2: enough cold catalog items (no id embedding) to compare against.
    store = make_toy_store(n_items=300, n_users=200, seed=0, text_dim=text_dim, cold_share=0.2)
    if text_dim:
        store.items.text_embedding[:4] = np.nan  # items whose text embedding is missing
    until_ts = int(np.quantile(store.events.ts, 0.8))
    result = train_two_tower(store, CONFIG, until_ts, out)
    examples = build_examples(store, until_ts, CONFIG.history_len, CONFIG.max_examples)
    cold = np.bincount(examples.target, minlength=len(store.items)) < CONFIG.id_min_count
    return store, result, cold


@pytest.fixture(scope="module")
def _trainings(tmp_path_factory):
    """text_dim → (store, result, cold); each store is trained once per module."""
    cache: dict[int, tuple] = {}

    def get(text_dim: int):
        if text_dim not in cache:
            cache[text_dim] = _train(text_dim, tmp_path_factory.mktemp(f"item_tower_{text_dim}"))
        return cache[text_dim]

    return get


@pytest.fixture(scope="module", params=[0, TEXT_DIM], ids=["no_text", "text"])
def trained(request, _trainings):
    """(store, result, cold bool [n_items]) for a store without and with text embeddings."""
    return _trainings(request.param)


@pytest.fixture(scope="module")
def plain(_trainings):
    return _trainings(0)


@pytest.fixture(scope="module")
def plain_tower(plain) -> ItemTower:
    return ItemTower(plain[1].item_tower_path)


def _fields(store, rows):
    items = store.items
    text = items.text_embedding[rows] if items.text_embedding is not None else None
    return items.category[rows], items.cat_top[rows], items.brand[rows], items.seller[rows], items.price[rows], text


def _unit(vectors: np.ndarray) -> None:
    assert vectors.dtype == np.float32 and np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)


# ---- the build writes and verifies the file ---------------------------------------------------


def test_training_writes_a_verified_self_contained_item_tower(trained):
    store, result, _ = trained
    assert result.item_tower_path == result.onnx_path.parent / ITEM_ONNX_FILE
    assert result.item_tower_path.is_file()
    assert not list(result.item_tower_path.parent.glob("*.data")), "the ONNX file must be self-contained"
    assert 0.0 <= result.max_abs_diff_item_tower <= ONNX_TOLERANCE
    tower = ItemTower(result.item_tower_path)
    text_dim = 0 if store.items.text_embedding is None else TEXT_DIM
    assert (tower.dim, tower.text_dim) == (CONFIG.dim, text_dim)
    assert tower.n_categories == len(store.categories)
    assert (tower.n_brands, tower.n_sellers) == (len(store.brands), len(store.sellers))


def test_onnx_file_has_the_documented_io_contract(trained):
    import onnx

    store, result, _ = trained
    model = onnx.load(str(result.item_tower_path))
    inputs = {i.name: i for i in model.graph.input}
    has_text = store.items.text_embedding is not None
    assert tuple(inputs) == INPUT_NAMES + ((TEXT_INPUT,) if has_text else ())
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    i64, f32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    for name in INPUT_NAMES:
        assert inputs[name].type.tensor_type.elem_type == (f32 if name == "price" else i64)
        assert len(shape(inputs[name])) == 1 and isinstance(shape(inputs[name])[0], str), "dynamic batch"
    if has_text:
        assert shape(inputs[TEXT_INPUT])[1:] == [TEXT_DIM]
    assert shape(model.graph.output[0])[1:] == [CONFIG.dim]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["aisle.item_tower.format"] == "1" and meta["aisle.dim"] == str(CONFIG.dim)
    assert meta["aisle.text_dim"] == str(TEXT_DIM if has_text else 0)


def test_old_callers_can_build_a_result_without_the_item_tower_fields(tmp_path):
    old = TwoTowerResult(np.zeros((1, 2), np.float32), tmp_path / "u.onnx", 8, 2, 1, 1, 10, 1, 1.0, 0.5, 0.0)
    assert old.item_tower_path is None and old.max_abs_diff_item_tower == 0.0


# ---- new SKUs land where the builder put cold items -------------------------------------------


def test_onnx_reproduces_the_training_vectors_of_every_cold_item(trained):
    store, result, cold = trained
    tower = ItemTower(result.item_tower_path)
    rows = np.flatnonzero(cold)
    assert len(rows) >= 30, "the toy store plants cold items"
    got = tower.embed(*_fields(store, rows))
    _unit(got)
    np.testing.assert_allclose(got, result.item_vectors[rows], atol=1e-4, rtol=0)
    # Items with an id embedding differ: the metadata path is only part of their vector.
    warm = np.flatnonzero(~cold)
    warm_diff = np.abs(tower.embed(*_fields(store, warm)) - result.item_vectors[warm]).max(axis=1)
    assert np.median(warm_diff) > 1e-3


def test_a_new_sku_with_a_cold_items_metadata_gets_that_items_vector(trained):
    store, result, cold = trained
    tower = ItemTower(result.item_tower_path)
    items = store.items
    for row in np.flatnonzero(cold)[:5]:
        text = None if items.text_embedding is None else items.text_embedding[row].astype(np.float64)  # any float dtype
        price = float(items.price[row])  # a Python float, as parsed from the feed
        vec = tower.embed_one(int(items.category[row]), int(items.cat_top[row]), int(items.brand[row]), int(items.seller[row]), price, text)
        assert vec.shape == (CONFIG.dim,)
        _unit(vec)
        np.testing.assert_allclose(vec, result.item_vectors[row], atol=1e-4, rtol=0)


def test_a_new_sku_lands_nearest_its_own_category(trained):
    store, result, _ = trained
    tower = ItemTower(result.item_tower_path)
    items, vectors = store.items, result.item_vectors
    leaves = np.unique(items.category)
    for use_brand in (True, False):
        margins = []
        for leaf in leaves:
            mine = items.category == leaf
            row = int(np.flatnonzero(mine)[0])
            brand = int(np.bincount(items.brand[mine]).argmax()) if use_brand else 0  # 0: brand unknown
            vec = tower.embed_one(int(leaf), int(items.cat_top[row]), brand, 1, float(np.nanmedian(items.price[mine])))
            margins.append(float(np.mean(vectors[mine] @ vec)) - float(np.mean(vectors[~mine] @ vec)))
        # Mean cosine to the own leaf's items minus to the other leaves'. Measured: 0.32–0.51 with
        # the leaf's usual brand; 0.05–0.48 (mean ≈ 0.3) with category, department and price alone.
        if use_brand:
            assert min(margins) > 0.15, margins
        else:
            assert min(margins) > 0.0 and np.mean(margins) > 0.15, margins


def test_an_inner_category_node_stands_for_its_subtree(trained):
    """A new SKU filed under a department only (its leaf is not in the bundle) lands among that
    department's items: inner nodes were never trained, the export gives them their leaves' mean.
    Measured margins 0.09–0.20 (with the untrained rows instead: 0.03–0.17)."""
    store, result, _ = trained
    tower = ItemTower(result.item_tower_path)
    items, vectors = store.items, result.item_vectors
    for department in np.unique(items.cat_top):
        mine = items.cat_top == department
        vec = tower.embed_one(int(department), int(department), 0, 0, None)
        _unit(vec)
        assert float(np.mean(vectors[mine] @ vec)) > float(np.mean(vectors[~mine] @ vec)) + 0.05


def test_rows_no_catalog_item_uses_become_trained_means():
    from builder.twotower import ItemMetadataTower, ItemTower as TorchItemTower

    store = make_toy_store(n_items=120, n_users=20, seed=2)
    store.items.brand[store.items.brand == 0] = 1  # nobody has an unknown brand: row 0 is untrained
    torch.manual_seed(0)
    items = TorchItemTower(store, np.zeros(len(store.items), np.int64), 0, 16, 32)
    tower = ItemMetadataTower(items, store)
    cat = store.items

    def weighted_mean(table, codes):
        counts = np.bincount(codes, minlength=table.shape[0]).astype(np.float64)
        return counts @ table.detach().double().numpy() / counts.sum()

    got, trained = tower.category_embedding.weight, items.category_embedding.weight
    leaves = np.unique(cat.category)
    torch.testing.assert_close(got[leaves], trained[leaves])  # catalog rows untouched
    for department in np.unique(cat.cat_top):
        inside = cat.cat_top == department
        np.testing.assert_allclose(got[department].numpy(), weighted_mean(trained, cat.category[inside]), atol=1e-6)
    np.testing.assert_allclose(got[0].numpy(), weighted_mean(trained, cat.category), atol=1e-6)  # root: everything
    brands, used = tower.brand_embedding.weight, np.unique(cat.brand)
    unused = np.setdiff1d(np.arange(len(brands)), used)
    assert 0 in unused
    mean = weighted_mean(items.brand_embedding.weight, cat.brand)
    np.testing.assert_allclose(brands[unused].numpy(), np.broadcast_to(mean, (len(unused), len(mean))), atol=1e-6)
    torch.testing.assert_close(brands[used], items.brand_embedding.weight[used])


# ---- unknowns ---------------------------------------------------------------------------------


def test_unknown_codes_map_to_zero_and_bad_prices_to_the_unknown_bucket(plain_tower):
    t = plain_tower
    unknown = t.embed_one(0, 0, 0, 0, 12.5)
    _unit(unknown)
    for codes in ((t.n_categories, 0, 0, 0), (-1, -7, 0, 0), (0, 0, t.n_brands + 5, -2), (0, 10**12, 0, t.n_sellers)):
        np.testing.assert_array_equal(t.embed_one(*codes, 12.5), unknown)
    no_price = t.embed_one(3, 1, 2, 1, None)
    _unit(no_price)
    for price in (float("nan"), -1.0, float("inf"), float("-inf")):
        np.testing.assert_array_equal(t.embed_one(3, 1, 2, 1, price), no_price)
    assert not np.allclose(t.embed_one(3, 1, 2, 1, 12.5), no_price)
    big = np.array([2**63 + 5], dtype=np.uint64)  # would wrap negative as int64
    np.testing.assert_array_equal(t.embed(big, [0], [0], [0], [12.5])[0], unknown)


def test_the_graph_itself_clamps_codes_and_buckets_prices(plain_tower):
    """A caller that skips the wrapper (raw ORT session) gets the same vectors."""
    import onnxruntime as ort

    t = plain_tower
    session = ort.InferenceSession(str(t.path), providers=["CPUExecutionProvider"])
    codes = np.array([-3, 0, 5, 999_999], dtype=np.int64)
    price = np.array([np.nan, -2.0, 7.5, np.inf], dtype=np.float32)
    feeds = {"category": codes, "cat_top": codes[::-1].copy(), "brand": codes, "seller": codes, "price": price}
    raw = session.run([OUTPUT_NAME], feeds)[0]
    np.testing.assert_allclose(raw, t.embed(codes, codes[::-1], codes, codes, price), atol=1e-6)
    _unit(raw)


def test_graph_price_thresholds_reproduce_price_buckets_exactly():
    rng = np.random.default_rng(1)
    catalog = np.exp(rng.normal(3.0, 2.0, 5_000)).astype(np.float32)
    _, edges = price_buckets(catalog)
    thresholds = _price_thresholds(edges)
    near = [np.nextafter(t, np.float32(d)) for t in thresholds for d in (0, np.inf)]
    probe = np.concatenate([catalog, np.exp(rng.normal(3.0, 3.0, 100_000)), thresholds, near, [0.0]]).astype(np.float32)
    expected = np.searchsorted(edges, np.log1p(probe.astype(np.float64)), side="right")
    np.testing.assert_array_equal((probe[:, None] >= thresholds[None, :]).sum(axis=1), expected)
    assert price_buckets(np.array([np.nan, -1.0], np.float32))[0].tolist() == [PRICE_BUCKETS, PRICE_BUCKETS]


def test_text_none_nan_and_zeros_agree(trained):
    store, result, _ = trained
    tower = ItemTower(result.item_tower_path)
    if tower.text_dim == 0:
        with pytest.raises(ItemTowerError, match="without text"):
            tower.embed_one(1, 1, 1, 1, 9.0, np.zeros(TEXT_DIM, np.float32))
        return
    zeros = tower.embed_one(5, 1, 3, 2, 9.0, np.zeros(TEXT_DIM, np.float32))
    np.testing.assert_array_equal(tower.embed_one(5, 1, 3, 2, 9.0, None), zeros)
    np.testing.assert_array_equal(tower.embed_one(5, 1, 3, 2, 9.0, np.full(TEXT_DIM, np.nan, np.float32)), zeros)
    text = store.items.text_embedding[10].copy()
    assert not np.allclose(tower.embed_one(5, 1, 3, 2, 9.0, text), zeros)
    with pytest.raises(ItemTowerError, match=f"text: expected float32 \\[B, {TEXT_DIM}\\]"):
        tower.embed_one(5, 1, 3, 2, 9.0, np.zeros(TEXT_DIM + 1, np.float32))
    with pytest.raises(ItemTowerError, match="text"):
        tower.embed([5], [1], [3], [2], [9.0], np.zeros((2, TEXT_DIM), np.float32))


# ---- the wrapper ------------------------------------------------------------------------------


def test_batch_and_single_agree_and_an_empty_batch_is_fine(plain, plain_tower):
    store, _, _ = plain
    rows = np.arange(17)
    batch = plain_tower.embed(*_fields(store, rows))
    single = np.stack([plain_tower.embed(*(None if a is None else a[i : i + 1] for a in _fields(store, rows)))[0] for i in rows])
    np.testing.assert_allclose(batch, single, atol=1e-6)
    empty = plain_tower.embed(np.zeros(0, np.int64), [], [], [], np.zeros(0, np.float32))
    assert empty.shape == (0, CONFIG.dim) and empty.dtype == np.float32


def test_malformed_inputs_are_clear_errors(plain_tower):
    t = plain_tower
    with pytest.raises(ItemTowerError, match="share the batch size"):
        t.embed([1, 2], [1, 2], [1], [1, 2], [3.0, 4.0])
    with pytest.raises(ItemTowerError, match="category: expected integer codes"):
        t.embed([1.5], [1], [1], [1], [3.0])
    with pytest.raises(ItemTowerError, match="brand: expected an integer code array"):
        t.embed([1], [1], [[1]], [1], [3.0])
    with pytest.raises(ItemTowerError, match="price"):
        t.embed([1], [1], [1], [1], ["cheap"])
    with pytest.raises(ItemTowerError, match="seller: embed_one takes one integer code"):
        t.embed_one(1, 1, 1, [1, 2], 3.0)


def test_missing_corrupt_and_foreign_files_are_clear_errors(tmp_path, plain):
    with pytest.raises(ItemTowerError, match="not found"):
        ItemTower(tmp_path / "item_tower.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ItemTowerError, match="corrupt"):
        ItemTower(corrupt)
    with pytest.raises(ItemTowerError, match="item tower incompatible: expected inputs category"):
        ItemTower(plain[1].onnx_path)  # the user tower is not an item tower


def test_a_graph_without_aisle_metadata_is_rejected(tmp_path, plain):
    import onnx

    model = onnx.load(str(plain[1].item_tower_path))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ItemTowerError, match="not written by the Aisle builder"):
        ItemTower(path)
    entry = model.metadata_props.add()
    entry.key, entry.value = "aisle.item_tower.format", "2"
    onnx.save(model, str(path))
    with pytest.raises(ItemTowerError, match="newer builder"):
        ItemTower(path)
