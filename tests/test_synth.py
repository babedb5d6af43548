"""The synthetic store: determinism, canonical schema, and the behaviour it is meant to plant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifacts.schema import (
    CATALOG,
    CATEGORY_SEPARATOR,
    EVENT_TYPE_NAMES,
    EVENTS,
    SURFACE_NAMES,
    USERS,
    ColumnType,
    TableSchema,
)
from builder.synth import SCALES, SynthSummary, generate
from builder.synth.identifiers import make_ids, scramble

TABLE_FILES = ("catalog.parquet", "events.parquet", "users.parquet")
TRUTH_FILES = (
    "item_latent.npy",
    "item_quality.npy",
    "item_price_term.npy",
    "user_taste.npy",
    "user_price_sensitivity.npy",
    "position_bias.npy",
    "complements.parquet",
    "category_complements.parquet",
    "store.json",
)


class Store:
    """A generated store loaded as NumPy arrays, with the joins the checks need."""

    def __init__(self, summary: SynthSummary) -> None:
        self.summary = summary
        self.root = summary.out
        self.catalog = pq.read_table(summary.catalog_path)
        self.events = pq.read_table(summary.events_path)
        self.users = pq.read_table(summary.users_path)
        self.info = json.loads((summary.truth_dir / "store.json").read_text())
        ev = {name: self.events.column(name).to_numpy(zero_copy_only=False) for name in self.events.column_names}
        self.ev = ev
        sku = self.catalog.column("sku").to_numpy(zero_copy_only=False).astype(str)
        order = np.argsort(sku)
        self.item_row = order[np.searchsorted(sku[order], ev["sku"].astype(str))]
        user = self.users.column("user_id").to_numpy(zero_copy_only=False).astype(str)
        uorder = np.argsort(user)
        self.user_row = uorder[np.searchsorted(user[uorder], ev["user_id"].astype(str))]
        self.sku = sku

    def col(self, table: str, name: str) -> np.ndarray:
        return getattr(self, table).column(name).to_numpy(zero_copy_only=False)

    def is_type(self, name: str) -> np.ndarray:
        return self.ev["type"] == name


@pytest.fixture(scope="module")
def tiny_summary(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return generate("tiny", seed=7, out=tmp_path_factory.mktemp("synth") / "tiny")


@pytest.fixture(scope="module")
def tiny(tiny_summary: SynthSummary) -> Store:
    return Store(tiny_summary)


# ---- determinism ----------------------------------------------------------------------------


def test_same_scale_and_seed_give_identical_store(tiny_summary: SynthSummary, tmp_path: Path) -> None:
    again = generate("tiny", seed=7, out=tmp_path / "again")
    for name in TABLE_FILES:
        assert pq.read_table(again.out / name).equals(pq.read_table(tiny_summary.out / name)), name
        assert (again.out / name).read_bytes() == (tiny_summary.out / name).read_bytes(), name
    for name in TRUTH_FILES:
        assert (again.truth_dir / name).read_bytes() == (tiny_summary.truth_dir / name).read_bytes(), name
    assert again.events_by_type == tiny_summary.events_by_type


def test_different_seed_gives_different_store(tmp_path: Path) -> None:
    a = generate("micro", seed=7, out=tmp_path / "a")
    b = generate("micro", seed=8, out=tmp_path / "b")
    assert not pq.read_table(a.catalog_path).column("sku").equals(pq.read_table(b.catalog_path).column("sku"))
    assert not np.array_equal(np.load(a.truth_dir / "item_latent.npy"), np.load(b.truth_dir / "item_latent.npy"))
    assert not pq.read_table(a.events_path).column("ts").equals(pq.read_table(b.events_path).column("ts"))


# ---- layout and schema ----------------------------------------------------------------------

_ARROW_TYPES = {
    ColumnType.STRING: lambda t: pa.types.is_string(t),
    ColumnType.INT: lambda t: t == pa.int64(),
    ColumnType.FLOAT: lambda t: pa.types.is_floating(t),
    ColumnType.BOOL: lambda t: pa.types.is_boolean(t),
    ColumnType.TIMESTAMP: lambda t: t == pa.int64(),
    ColumnType.STRING_LIST: lambda t: pa.types.is_list(t) and pa.types.is_string(t.value_type),
    ColumnType.FLOAT_VECTOR: lambda t: pa.types.is_fixed_size_list(t) and t.value_type == pa.float32(),
}


@pytest.mark.parametrize("table, schema", [("catalog", CATALOG), ("events", EVENTS), ("users", USERS)])
def test_tables_follow_the_canonical_schema(tiny: Store, table: str, schema: TableSchema) -> None:
    arrow = getattr(tiny, table).schema
    expected = [c for c in schema.columns if c.required or c.name in arrow.names]
    missing = [c.name for c in schema.columns if c.name not in arrow.names and c.name != "image_embedding"]
    assert missing == []
    for column in expected:
        field = arrow.field(column.name)
        assert _ARROW_TYPES[column.type](field.type), f"{table}.{column.name}: {field.type}"
        assert getattr(tiny, table).column(column.name).null_count == 0, f"{table}.{column.name} has nulls"


def test_enumerated_values_use_schema_names(tiny: Store) -> None:
    assert set(np.unique(tiny.ev["type"])) == set(EVENT_TYPE_NAMES)
    assert set(np.unique(tiny.ev["surface"])) <= set(SURFACE_NAMES)
    assert {"home", "pdp", "cart"} <= set(np.unique(tiny.ev["surface"]))


def test_truth_layout_matches_tables(tiny: Store) -> None:
    truth = tiny.summary.truth_dir
    scale = SCALES["tiny"]
    n_items, n_users = tiny.catalog.num_rows, tiny.users.num_rows
    latent = np.load(truth / "item_latent.npy")
    taste = np.load(truth / "user_taste.npy")
    bias = np.load(truth / "position_bias.npy")
    assert latent.dtype == np.float32 and latent.shape == (n_items, scale.latent_dim)
    assert taste.dtype == np.float32 and taste.shape == (n_users, scale.latent_dim)
    assert bias.dtype == np.float32 and bias.shape == (scale.slate_size,)
    assert np.all(np.diff(bias) < 0) and bias[0] == 1.0
    comp = pq.read_table(truth / "complements.parquet")
    assert comp.column_names == ["sku", "complement_sku"] and comp.num_rows > 0
    skus = set(tiny.sku.tolist())
    assert set(comp.column("sku").to_pylist()) <= skus and set(comp.column("complement_sku").to_pylist()) <= skus
    cats = pq.read_table(truth / "category_complements.parquet")
    assert cats.column_names == ["category_path", "complement_path"]
    paths = set(tiny.col("catalog", "category_path").tolist())
    assert set(cats.column("category_path").to_pylist()) == paths
    assert set(cats.column("complement_path").to_pylist()) <= paths
    assert tiny.info["seed"] == 7 and tiny.info["scale"]["name"] == "tiny"
    assert tiny.info["counts"]["events"] == tiny.events.num_rows


def test_summary_counts_match_files(tiny: Store) -> None:
    s = tiny.summary
    assert (s.items, s.users, s.events) == (tiny.catalog.num_rows, tiny.users.num_rows, tiny.events.num_rows)
    assert s.sessions >= len(np.unique(tiny.ev["session_id"]))
    types, counts = np.unique(tiny.ev["type"], return_counts=True)
    assert s.events_by_type == dict(zip(types.tolist(), counts.tolist()))
    assert 50_000 <= s.events <= 80_000
    assert s.elapsed_s > 0


def test_ids_are_unique(tiny: Store) -> None:
    assert len(np.unique(tiny.ev["event_id"])) == tiny.events.num_rows
    assert len(np.unique(tiny.sku)) == tiny.catalog.num_rows
    assert len(np.unique(tiny.col("users", "user_id"))) == tiny.users.num_rows


# ---- catalog --------------------------------------------------------------------------------


def test_category_paths_have_at_least_three_levels(tiny: Store) -> None:
    depth = np.char.count(tiny.col("catalog", "category_path").astype(str), CATEGORY_SEPARATOR) + 1
    assert depth.min() >= 3
    roots = {p.split(CATEGORY_SEPARATOR)[0] for p in tiny.col("catalog", "category_path").tolist()}
    assert len(roots) >= 3


def test_some_items_are_sold_out(tiny: Store) -> None:
    in_stock = tiny.col("catalog", "in_stock")
    qty = tiny.col("catalog", "stock_qty")
    assert 0.04 <= 1.0 - in_stock.mean() <= 0.09
    assert np.all(qty[~in_stock] == 0) and np.all(qty[in_stock] > 0)


def test_items_arrive_over_time(tiny: Store) -> None:
    created = tiny.col("catalog", "created_at")
    start, end = tiny.summary.horizon_start, tiny.summary.horizon_end
    during = (created >= start).mean()
    assert 0.05 <= during <= 0.3
    assert 0.005 <= (created >= end - 7 * 86_400).mean() <= 0.08
    assert created.max() < end


def test_prices_and_discounts_are_plausible(tiny: Store) -> None:
    price = tiny.col("catalog", "price")
    discount = tiny.col("catalog", "discount")
    assert np.all(price > 0) and np.quantile(price, 0.9) / np.quantile(price, 0.1) > 4
    assert np.all((discount >= 0) & (discount < 1)) and 0.6 <= (discount == 0).mean() <= 0.9


def test_text_embedding_carries_category_signal(tiny: Store) -> None:
    emb = np.stack(tiny.col("catalog", "text_embedding"))
    leaf = tiny.col("catalog", "category_path")
    rng = np.random.default_rng(0)
    a, b = rng.integers(len(emb), size=(2, 20_000))
    cos = (emb[a] * emb[b]).sum(axis=1)
    same = leaf[a] == leaf[b]
    assert cos[same].mean() > cos[~same].mean() + 0.3


# ---- events ---------------------------------------------------------------------------------


def test_events_are_time_ordered_inside_the_horizon(tiny: Store) -> None:
    ts = tiny.ev["ts"]
    assert np.all(np.diff(ts) >= 0)
    assert ts.min() >= tiny.summary.horizon_start and ts.max() < tiny.summary.horizon_end


def test_no_event_before_its_item_is_created(tiny: Store) -> None:
    created = tiny.col("catalog", "created_at")[tiny.item_row]
    assert np.all(tiny.ev["ts"] >= created)


def test_funnel_narrows(tiny: Store) -> None:
    n = {name: int(tiny.is_type(name).sum()) for name in EVENT_TYPE_NAMES}
    assert all(v > 0 for v in n.values())
    assert n["impression"] > n["click"] > n["add_to_cart"] > n["purchase"]
    assert n["dwell"] == n["click"]
    dwell = tiny.ev["dwell_ms"]
    assert np.all(dwell[tiny.is_type("dwell")] > 0) and np.all(dwell[~tiny.is_type("dwell")] == 0)


def test_slates_carry_request_and_position(tiny: Store) -> None:
    imp = tiny.is_type("impression")
    assert np.all(tiny.ev["position"][imp] >= 0) and np.all(tiny.ev["position"][imp] < SCALES["tiny"].slate_size)
    assert np.all(tiny.ev["request_id"][imp] != "")
    not_slate = tiny.ev["position"] < 0
    assert np.all(tiny.ev["request_id"][not_slate] == "")


def test_click_through_rate_falls_with_position(tiny: Store) -> None:
    pos = tiny.ev["position"]
    shown = np.bincount(pos[tiny.is_type("impression")], minlength=10)
    clicked = np.bincount(pos[tiny.is_type("click") & (pos >= 0)], minlength=10)
    ctr = clicked / shown
    assert np.all(np.diff(ctr[:5]) < 0)
    assert ctr[:5].mean() > 2 * ctr[5:].mean()


def test_skips_sit_above_the_first_click(tiny: Store) -> None:
    skip = tiny.is_type("skip")
    click = tiny.is_type("click") & (tiny.ev["position"] >= 0)
    first_click: dict[str, int] = {}
    for req, p in zip(tiny.ev["request_id"][click].tolist(), tiny.ev["position"][click].tolist()):
        first_click[req] = min(p, first_click.get(req, p))
    for req, p in zip(tiny.ev["request_id"][skip].tolist(), tiny.ev["position"][skip].tolist()):
        assert p < first_click[req]


def test_blocked_brands_and_sellers_are_never_shown(tiny: Store) -> None:
    imp = tiny.is_type("impression")
    user = tiny.user_row[imp]
    brand = tiny.col("catalog", "brand")[tiny.item_row[imp]]
    seller = tiny.col("catalog", "seller")[tiny.item_row[imp]]
    blocked_brands = tiny.users.column("blocked_brands").to_pylist()
    blocked_sellers = tiny.users.column("blocked_sellers").to_pylist()
    assert 0.05 <= np.mean([len(b) > 0 for b in blocked_brands]) <= 0.15
    assert 0.02 <= np.mean([len(b) > 0 for b in blocked_sellers]) <= 0.08
    for u, b, s in zip(user.tolist(), brand.tolist(), seller.tolist()):
        assert b not in blocked_brands[u] and s not in blocked_sellers[u]


def test_region_is_constant_per_shopper_and_sessions_belong_to_one_shopper(tiny: Store) -> None:
    region = tiny.col("users", "region")
    assert np.all(tiny.ev["region"] == region[tiny.user_row])
    pairs = {(s, u) for s, u in zip(tiny.ev["session_id"].tolist(), tiny.ev["user_id"].tolist())}
    assert len(pairs) == len(np.unique(tiny.ev["session_id"]))


def test_planted_complements_are_bought_together_far_above_chance(tiny: Store) -> None:
    comp = pq.read_table(tiny.summary.truth_dir / "complements.parquet")
    buy = tiny.is_type("purchase")
    baskets: dict[str, set[str]] = {}
    for session, sku in zip(tiny.ev["session_id"][buy].tolist(), tiny.ev["sku"][buy].tolist()):
        baskets.setdefault(session, set()).add(sku)
    n = len(baskets)
    share: dict[str, float] = {}
    for items in baskets.values():
        for sku in items:
            share[sku] = share.get(sku, 0.0) + 1.0 / n
    pairs = list(zip(comp.column("sku").to_pylist(), comp.column("complement_sku").to_pylist()))
    expected = n * sum(share.get(a, 0.0) * share.get(b, 0.0) for a, b in pairs)
    observed = sum(1 for items in baskets.values() for a, b in pairs if a in items and b in items)
    assert observed >= 20
    assert observed >= 20 * expected


def test_popularity_is_long_tailed(tiny: Store) -> None:
    acted = ~tiny.is_type("impression")
    counts = np.sort(np.bincount(tiny.item_row[acted], minlength=tiny.catalog.num_rows))[::-1]
    assert counts[: len(counts) // 10].sum() >= 0.4 * counts.sum()


# ---- output directory -----------------------------------------------------------------------


def test_refuses_to_overwrite_a_non_empty_directory(tmp_path: Path) -> None:
    out = tmp_path / "store"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate("micro", seed=1, out=out)
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no staging left behind
    summary = generate("micro", seed=1, out=out, overwrite=True)
    assert not (out / "keep.txt").exists() and summary.events_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_writes_into_an_existing_empty_directory(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    summary = generate("micro", seed=3, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["catalog.parquet", "events.parquet", "truth", "users.parquet"]
    assert sorted(p.name for p in summary.truth_dir.iterdir()) == sorted(TRUTH_FILES)


def test_rejects_unknown_scale_and_bad_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scale"):
        generate("huge", seed=1, out=tmp_path / "x")
    with pytest.raises(ValueError, match="seed"):
        generate("micro", seed=-1, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_progress_reports_every_stage(tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    generate("micro", seed=5, out=tmp_path / "p", progress=lambda s, d, t: seen.append((s, d, t)))
    stages = {s for s, _, _ in seen}
    assert {"catalog", "shoppers", "sessions", "write", "events", "publish"} <= stages
    assert all(0 <= d <= t for _, d, t in seen)


def test_scales_are_ordered_by_size() -> None:
    assert list(SCALES)[:4] == ["micro", "tiny", "small", "1m"]
    sizes = [SCALES[n].items for n in ("micro", "tiny", "small", "1m")]
    assert sizes == sorted(sizes) and SCALES["1m"].items == 1_000_000


# ---- identifiers ----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(8, 14), key=st.integers(0, 2**31))
def test_scramble_is_a_bijection(bits: int, key: int) -> None:
    rows = np.arange(2**bits, dtype=np.uint64)
    out = scramble(rows, bits, key)
    assert np.array_equal(np.sort(out), rows)


def test_ids_made_in_chunks_match_ids_made_at_once() -> None:
    whole = make_ids("E-", 1000, 60, 12, key=3)
    parts = [make_ids("E-", 400, 60, 12, key=3), make_ids("E-", 600, 60, 12, key=3, start=400)]
    assert whole.equals(pa.concat_arrays(parts))
    assert all(len(s) == 14 and s.startswith("E-") for s in whole.to_pylist())
