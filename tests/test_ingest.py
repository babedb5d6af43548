"""Ingest: canonical CSV/Parquet files → validated Store, and the errors at the edge."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifacts.schema import EventType
from builder.ingest import InputError, SensitiveAttributeError, load_store
from builder.ingest.codes import dense_codes, lookup, repeats
from builder.ingest.sessions import SESSION_GAP_SECONDS
from builder.store import Store

CATALOG_CSV = """\
sku,title,category_path,brand,seller,price,discount,in_stock,stock_qty,created_at,text_embedding
b,Bee,Home/Kitchen/Cookware,Acme,s1,10.5,0.1,true,3,2024-01-01T00:00:00Z,1 2 3
a,Ay,Home / Garden,,s2,,,,,,0.5 0.5 0.5
c,Cee,Toys,Zed,,3,0,false,0,1700000000,
"""
EVENTS_CSV = """\
ts,user_id,session_id,sku,type,surface,device,region,event_id,dwell_ms,position
100,u2,,a,click,home,mobile,EU,e1,,3
50,u1,s9,b,impression,pdp,desktop,,e2,,
100,u1,,zz,purchase,,,,,,
5000,u2,,c,add_to_cart,cart,mobile,US,,1200,
100,u2,,b,click,home,mobile,EU,e3,,
"""
USERS_CSV = """\
user_id,region,signup_ts,blocked_brands,blocked_sellers
u1,EU,10,Zed|Nope,s1
u3,,,,
"""


def write(directory: Path, files: dict[str, str | bytes | pl.DataFrame]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        if isinstance(content, pl.DataFrame):
            content.write_parquet(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return directory


def error_of(directory: Path, kind: type[InputError] = InputError) -> str:
    with pytest.raises(kind) as info:
        load_store(directory)
    return str(info.value)


def minimal(**overrides: str | bytes | pl.DataFrame) -> dict[str, str | bytes | pl.DataFrame]:
    files: dict[str, str | bytes | pl.DataFrame] = {
        "catalog.csv": "sku,category_path,price\na,X,1\nb,X/Y,2\n",
        "events.csv": "ts,user_id,sku,type\n1,u,a,click\n2,u,b,purchase\n",
    }
    files.update(overrides)
    return files


# --- errors: each names file, row (and CSV line), column, expected and found -----------------------


def test_missing_required_column_names_file_column_and_found_columns(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"catalog.csv": "sku,price\na,1\n"}))
    assert error_of(tmp_path) == "catalog.csv: expected a column 'category_path'; got columns 'sku', 'price'"


def test_string_in_price_reports_row_line_and_value(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"catalog.csv": "sku,category_path,price\na,X,1\nb,X,cheap\n"}))
    assert error_of(tmp_path) == "catalog.csv row 2 (line 3), column 'price': expected a number; got 'cheap'"


def test_unknown_event_type_lists_the_allowed_names(tmp_path: Path) -> None:
    events = "ts,user_id,sku,type\n1,u,a,click\n2,u,b,view\n3,u,b,view\n"
    write(tmp_path, minimal(**{"events.csv": events}))
    assert error_of(tmp_path) == (
        "events.csv row 2 (line 3), column 'type': expected one of impression, click, add_to_cart, "
        "purchase, skip, dwell; got 'view' (and 1 more row)"
    )


def test_unknown_surface_is_reported(tmp_path: Path) -> None:
    events = "ts,user_id,sku,type,surface\n1,u,a,click,homepage\n"
    write(tmp_path, minimal(**{"events.csv": events}))
    assert error_of(tmp_path) == (
        "events.csv row 1 (line 2), column 'surface': expected one of home, pdp, cart, search, other; got 'homepage'"
    )


def test_negative_price_is_reported(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"catalog.csv": "sku,category_path,price\na,X,1\nb,X,-2.5\n"}))
    assert error_of(tmp_path) == (
        "catalog.csv row 2 (line 3), column 'price': expected a price ≥ 0 (empty or NaN for unknown); got -2.5"
    )


def test_discount_of_one_is_reported(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"catalog.csv": "sku,category_path,discount\na,X,0.5\nb,X,1\n"}))
    assert error_of(tmp_path) == "catalog.csv row 2 (line 3), column 'discount': expected a fraction in [0, 1); got 1.0"


def test_duplicate_sku_names_the_first_occurrence(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"catalog.csv": "sku,category_path\na,X\nb,X\na,Y\n"}))
    assert error_of(tmp_path) == (
        "catalog.csv row 3 (line 4), column 'sku': expected a unique sku; got 'a' again (first in row 1)"
    )


def test_duplicate_event_id_is_an_error_but_empty_ids_may_repeat(tmp_path: Path) -> None:
    events = "ts,user_id,sku,type,event_id\n1,u,a,click,\n2,u,a,click,\n3,u,b,click,e7\n4,u,b,click,e7\n"
    write(tmp_path, minimal(**{"events.csv": events}))
    assert error_of(tmp_path) == (
        "events.csv row 4 (line 5), column 'event_id': expected a unique event_id; got 'e7' again (first in row 3)"
    )


def test_duplicate_user_id_in_users_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"users.csv": "user_id\nu\nu\n"}))
    assert "users.csv row 2 (line 3), column 'user_id': expected a unique user_id" in error_of(tmp_path)


def test_sku_longer_than_64_characters_is_reported(tmp_path: Path) -> None:
    long_sku = "x" * 65
    write(tmp_path, minimal(**{"catalog.csv": f"sku,category_path\na,X\n{long_sku},X\n"}))
    assert error_of(tmp_path) == (
        f"catalog.csv row 2 (line 3), column 'sku': expected 1 to 64 characters; got '{'x' * 58}… (65 characters)"
    )


def test_empty_user_id_is_a_null_in_a_required_column(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"events.csv": "ts,user_id,sku,type\n1,,a,click\n"}))
    assert error_of(tmp_path) == "events.csv row 1 (line 2), column 'user_id': expected a value in every row; got an empty cell"


def test_category_path_with_empty_element_is_reported(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"catalog.csv": "sku,category_path\na,Home//Kitchen\n"}))
    assert error_of(tmp_path) == (
        "catalog.csv row 1 (line 2), column 'category_path': expected a '/'-separated path with no empty "
        "elements, e.g. 'Home/Kitchen/Cookware'; got 'Home//Kitchen'"
    )


def test_unparseable_and_millisecond_timestamps_are_reported(tmp_path: Path) -> None:
    write(tmp_path / "text", minimal(**{"events.csv": "ts,user_id,sku,type\n1,u,a,click\nyesterday,u,a,click\n"}))
    assert error_of(tmp_path / "text") == (
        "events.csv row 2 (line 3), column 'ts': expected epoch seconds (an integer) or an ISO-8601 date-time; "
        "got 'yesterday'"
    )
    write(tmp_path / "ms", minimal(**{"events.csv": "ts,user_id,sku,type\n1700000000000,u,a,click\n"}))
    assert error_of(tmp_path / "ms") == (
        "events.csv row 1 (line 2), column 'ts': expected epoch seconds in [0, 10000000000) (1970 to 2286); "
        "got 1700000000000 (milliseconds?)"
    )


def test_inconsistent_and_non_finite_embeddings_are_reported(tmp_path: Path) -> None:
    write(tmp_path / "len", minimal(**{"catalog.csv": "sku,category_path,text_embedding\na,X,1 2\nb,X,1 2 3\n"}))
    assert error_of(tmp_path / "len") == (
        "catalog.csv row 2 (line 3), column 'text_embedding': expected 2 floats (the length in row 1); got 3 floats"
    )
    write(tmp_path / "nan", minimal(**{"catalog.csv": "sku,category_path,text_embedding\na,X,1 2\nb,X,1 nan\n"}))
    assert error_of(tmp_path / "nan") == (
        "catalog.csv row 2 (line 3), column 'text_embedding': expected finite floats (no NaN or infinity); got [1.0, nan]"
    )


def test_parquet_wrong_type_and_rows_without_line_numbers(tmp_path: Path) -> None:
    files = minimal()
    del files["catalog.csv"]
    catalog = pl.DataFrame({"sku": ["a", "b"], "category_path": ["X", "X"], "price": [True, False]})
    write(tmp_path / "type", {**files, "catalog.parquet": catalog})
    assert error_of(tmp_path / "type") == (
        "catalog.parquet, column 'price': expected a number in every row; got a column of type Boolean"
    )
    catalog = pl.DataFrame({"sku": ["a", "b"], "category_path": ["X", "X"], "price": ["1.5", "cheap"]})
    write(tmp_path / "text", {**files, "catalog.parquet": catalog})
    assert error_of(tmp_path / "text") == "catalog.parquet row 2, column 'price': expected a number; got 'cheap'"


def test_truncated_parquet_is_not_readable(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pl.DataFrame({"sku": ["a"], "category_path": ["X"]}).write_parquet(whole)
    files = minimal()
    del files["catalog.csv"]
    write(tmp_path / "data", {**files, "catalog.parquet": whole.read_bytes()[:-20]})
    assert error_of(tmp_path / "data").startswith("catalog.parquet: not a readable Parquet file: ")


def test_both_csv_and_parquet_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"events.parquet": pl.DataFrame({"ts": [1]})}))
    assert error_of(tmp_path) == (
        f"{tmp_path}: expected one events file; got both events.parquet and events.csv "
        "(remove one so it is clear which is meant)"
    )


def test_missing_events_file_is_an_error(tmp_path: Path) -> None:
    files = minimal()
    del files["events.csv"]
    write(tmp_path, files)
    assert error_of(tmp_path) == f"{tmp_path}: expected events.parquet or events.csv; got neither"


def test_problems_of_several_files_are_reported_together(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "catalog.csv": "sku,category_path,price\na,X,-1\n",
            "events.csv": "ts,user_id,sku,type\n1,u,a,view\n",
        },
    )
    message = error_of(tmp_path)
    assert message.splitlines() == [
        "2 problems in the input files:",
        "  - catalog.csv row 1 (line 2), column 'price': expected a price ≥ 0 (empty or NaN for unknown); got -1.0",
        "  - events.csv row 1 (line 2), column 'type': expected one of impression, click, add_to_cart, purchase, "
        "skip, dwell; got 'view'",
    ]


# --- sensitive attributes ------------------------------------------------------------------------


def test_age_in_users_is_refused(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"users.csv": "user_id,age\nu,42\n"}))
    message = error_of(tmp_path, SensitiveAttributeError)
    assert message.splitlines()[0] == "users.csv, column 'age': expected no sensitive attributes; got a column that denotes 'age'"
    assert "Aisle never uses sensitive attributes" in message
    assert "remove these columns from the input files" in message


def test_target_gender_in_catalog_parquet_is_refused(tmp_path: Path) -> None:
    files = minimal()
    del files["catalog.csv"]
    catalog = pl.DataFrame({"sku": ["a"], "category_path": ["X"], "target_gender": ["f"]})
    write(tmp_path, {**files, "catalog.parquet": catalog})
    message = error_of(tmp_path, SensitiveAttributeError)
    assert message.startswith(
        "catalog.parquet, column 'target_gender': expected no sensitive attributes; got a column that denotes 'gender'"
    )


def test_sensitive_column_is_refused_before_other_problems(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"events.csv": "ts,user_id,sku,type,Customer-Age\nnever,u,a,view,30\n"}))
    assert "column 'Customer-Age'" in error_of(tmp_path, SensitiveAttributeError)


def test_page_views_is_not_sensitive_and_is_ignored(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"users.csv": "user_id,page_views,stage\nu,4,b\n"}))
    store = load_store(tmp_path)
    assert store.report.ignored_columns["users.csv"] == ("page_views", "stage")


# --- a valid store -------------------------------------------------------------------------------


def sample_files(fmt: str) -> dict[str, str | bytes | pl.DataFrame]:
    files: dict[str, str | bytes | pl.DataFrame] = {
        "catalog.csv": CATALOG_CSV,
        "events.csv": EVENTS_CSV,
        "users.csv": USERS_CSV,
    }
    if fmt == "csv":
        return files
    catalog = pl.DataFrame(
        {
            "sku": ["b", "a", "c"],
            "title": ["Bee", "Ay", "Cee"],
            "category_path": ["Home/Kitchen/Cookware", "Home / Garden", "Toys"],
            "brand": ["Acme", None, "Zed"],
            "seller": ["s1", "s2", None],
            "price": [10.5, None, 3.0],
            "discount": [0.1, None, 0.0],
            "in_stock": [True, None, False],
            "stock_qty": [3, None, 0],
            "created_at": [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), None, dt.datetime.fromtimestamp(1700000000, dt.timezone.utc)],
            "text_embedding": [[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], None],
        }
    )
    events = pl.read_csv(EVENTS_CSV.encode(), infer_schema=False).with_columns(
        pl.col("ts").cast(pl.Int64), pl.col("dwell_ms").cast(pl.Int32), pl.col("position").cast(pl.Int16)
    )
    users = pl.DataFrame(
        {
            "user_id": ["u1", "u3"],
            "region": ["EU", None],
            "signup_ts": [10, None],
            "blocked_brands": [["Zed", "Nope"], None],
            "blocked_sellers": [["s1"], []],
        }
    )
    return {"catalog.parquet": catalog, "events.parquet": events, "users.parquet": users}


STORE_DTYPES = {
    "items": {
        "sku": np.object_, "title": np.object_, "category": np.int32, "cat_top": np.int32, "brand": np.int32,
        "seller": np.int32, "price": np.float32, "discount": np.float32, "in_stock": np.bool_,
        "stock_qty": np.int32, "created_at": np.int64, "text_embedding": np.float32,
    },
    "events": {
        "ts": np.int64, "user_row": np.int32, "session_row": np.int32, "item_row": np.int32, "type": np.int8,
        "dwell_ms": np.int32, "surface": np.int8, "position": np.int16, "device": np.int8, "region": np.int16,
    },
    "users": {
        "user_id": np.object_, "region": np.int16, "signup_ts": np.int64, "blocked_brands_indptr": np.int64,
        "blocked_brands": np.int32, "blocked_sellers_indptr": np.int64, "blocked_sellers": np.int32,
    },
}


@pytest.fixture(params=["csv", "parquet"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return load_store(write(tmp_path, sample_files(request.param)))


def test_dtypes_are_the_ones_the_store_states(store: Store) -> None:
    for part, dtypes in STORE_DTYPES.items():
        for name, dtype in dtypes.items():
            assert getattr(getattr(store, part), name).dtype == dtype, (part, name)
    assert store.categories.parent.dtype == np.int32 and store.categories.depth.dtype == np.int8


def test_items_are_sorted_by_sku_and_round_trip(store: Store) -> None:
    items = store.items
    assert items.sku.tolist() == ["a", "b", "c"]
    row_of = {sku: row for row, sku in enumerate(items.sku)}
    assert [items.sku[row_of[s]] for s in ("b", "a", "c")] == ["b", "a", "c"]
    assert items.title.tolist() == ["Ay", "Bee", "Cee"]
    np.testing.assert_array_equal(items.price, np.array([np.nan, 10.5, 3.0], dtype=np.float32))
    np.testing.assert_array_equal(items.discount, np.array([0.0, 0.1, 0.0], dtype=np.float32))
    assert items.in_stock.tolist() == [True, True, False]
    assert items.stock_qty.tolist() == [-1, 3, 0]
    assert items.created_at.tolist() == [0, 1704067200, 1700000000]
    assert items.text_embedding is not None
    np.testing.assert_array_equal(items.text_embedding, [[0.5, 0.5, 0.5], [1, 2, 3], [0, 0, 0]])
    assert items.image_embedding is None


def test_categories_form_a_tree_with_every_prefix(store: Store) -> None:
    cats = store.categories
    assert cats.path == ("", "Home", "Home/Garden", "Home/Kitchen", "Home/Kitchen/Cookware", "Toys")
    assert cats.parent.tolist() == [-1, 0, 1, 1, 3, 0]
    assert cats.depth.tolist() == [0, 1, 2, 2, 3, 1]
    node = {p: i for i, p in enumerate(cats.path)}
    assert store.items.category.tolist() == [node["Home/Garden"], node["Home/Kitchen/Cookware"], node["Toys"]]
    assert store.items.cat_top.tolist() == [node["Home"], node["Home"], node["Toys"]]


def test_vocabularies_start_with_unknown_then_sorted(store: Store) -> None:
    assert store.brands == ("", "Acme", "Zed")
    assert store.sellers == ("", "s1", "s2")
    assert store.regions == ("", "EU", "US")
    assert store.devices == ("", "desktop", "mobile")
    assert store.items.brand.tolist() == [0, 1, 2]
    assert store.items.seller.tolist() == [2, 1, 0]


def test_users_include_event_only_shoppers_with_defaults(store: Store) -> None:
    users = store.users
    assert users.user_id.tolist() == ["u1", "u2", "u3"]
    assert users.region.tolist() == [1, 0, 0]
    assert users.signup_ts.tolist() == [10, 0, 0]
    # "Nope" is no brand in the catalog, so it cannot block anything and is dropped.
    assert users.blocked_brands_indptr.tolist() == [0, 1, 1, 1]
    assert [store.brands[c] for c in users.blocked_brands] == ["Zed"]
    assert users.blocked_sellers_indptr.tolist() == [0, 1, 1, 1]
    assert [store.sellers[c] for c in users.blocked_sellers] == ["s1"]


def test_events_are_sorted_by_time_keeping_input_order_and_drop_unknown_skus(store: Store) -> None:
    ev = store.events
    assert ev.ts.tolist() == [50, 100, 100, 5000]
    assert [store.items.sku[r] for r in ev.item_row] == ["b", "a", "b", "c"]  # the two at ts 100 in file order
    assert [store.users.user_id[r] for r in ev.user_row] == ["u1", "u2", "u2", "u2"]
    assert ev.type.tolist() == [EventType.IMPRESSION, EventType.CLICK, EventType.CLICK, EventType.ADD_TO_CART]
    assert ev.surface.tolist() == [1, 0, 0, 2]
    assert ev.device.tolist() == [1, 2, 2, 2]
    assert ev.region.tolist() == [0, 1, 1, 2]
    assert ev.dwell_ms.tolist() == [0, 0, 0, 1200]
    assert ev.position.tolist() == [-1, 3, -1, -1]
    assert store.report.events_unknown_sku == 1


def test_sessions_follow_ids_then_a_30_minute_gap(store: Store) -> None:
    # u1's named session s9; u2's id-less events at 100, 100 and 5000 (> 30 min later): two sessions.
    assert store.events.session_row.tolist() == [0, 1, 1, 2]
    assert SESSION_GAP_SECONDS == 1800


def test_report_counts_rows_and_fingerprints_files(store: Store, tmp_path: Path) -> None:
    report = store.report
    assert sorted(report.rows_read.values()) == [2, 3, 5]
    assert all(len(h) == 64 for h in report.fingerprints.values())
    assert set(report.fingerprints) == set(report.rows_read)


def test_csv_and_parquet_give_the_same_store(tmp_path: Path) -> None:
    a = load_store(write(tmp_path / "csv", sample_files("csv")))
    b = load_store(write(tmp_path / "parquet", sample_files("parquet")))
    for part, dtypes in STORE_DTYPES.items():
        for name in dtypes:
            np.testing.assert_array_equal(getattr(getattr(a, part), name), getattr(getattr(b, part), name))
    assert a.categories.path == b.categories.path and a.brands == b.brands and a.regions == b.regions


def test_without_users_file_every_shopper_gets_defaults(tmp_path: Path) -> None:
    store = load_store(write(tmp_path, minimal()))
    assert store.users.user_id.tolist() == ["u"]
    assert store.users.blocked_brands_indptr.tolist() == [0, 0]
    assert store.regions == ("",)


def test_timestamps_in_every_accepted_form_agree(tmp_path: Path) -> None:
    events = (
        "ts,user_id,sku,type\n"
        "1704067200,u,a,click\n"
        "2024-01-01T00:00:00Z,u,a,click\n"
        "2024-01-01 01:00:00+01:00,u,a,click\n"
        "2024-01-01T00:00:00.000,u,a,click\n"
        "2024-01-01,u,a,click\n"
    )
    store = load_store(write(tmp_path, minimal(**{"events.csv": events})))
    assert store.events.ts.tolist() == [1704067200] * 5


def test_ingest_writes_nothing(tmp_path: Path) -> None:
    write(tmp_path, sample_files("csv"))
    before = sorted(p.name for p in tmp_path.iterdir())
    load_store(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


sku_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=",\"\r\n"), min_size=1, max_size=64).filter(
    lambda s: s.strip() == s and s != ""
)


@settings(max_examples=25, deadline=None)
@given(skus=st.sets(sku_text, min_size=1, max_size=30), users=st.sets(sku_text, min_size=1, max_size=10))
def test_id_maps_round_trip_for_random_ids(skus: set[str], users: set[str]) -> None:
    sku_list, user_list = sorted(skus), sorted(users)
    catalog = pl.DataFrame({"sku": sku_list[::-1], "category_path": ["X"] * len(sku_list)})
    events = pl.DataFrame(
        {
            "ts": list(range(len(sku_list))),
            "user_id": [user_list[i % len(user_list)] for i in range(len(sku_list))],
            "sku": sku_list,
            "type": ["click"] * len(sku_list),
        }
    )
    with tempfile.TemporaryDirectory() as directory:
        store = load_store(write(Path(directory), {"catalog.parquet": catalog, "events.parquet": events}))
    assert store.items.sku.tolist() == sku_list  # row = position in ascending sku order
    assert [store.items.sku[r] for r in store.events.item_row] == sku_list
    expected_users = sorted(set(events["user_id"].to_list()))
    assert store.users.user_id.tolist() == expected_users
    assert [store.users.user_id[r] for r in store.events.user_row] == events["user_id"].to_list()


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.sampled_from(["", "a", "b", "é", "a b", "zz", "b|c", "0"]), max_size=40),
    keys=st.sets(st.sampled_from(["a", "b", "é", "q", "0", ""]), max_size=6),
)
def test_dense_codes_lookup_and_repeats_match_a_python_reference(values: list[str], keys: set[str]) -> None:
    series = pl.Series(values, dtype=pl.String)
    distinct, found = dense_codes(series)
    assert distinct.to_list() == sorted(set(values))
    assert [distinct[c] for c in found.to_list()] == values
    key_list = sorted(keys)
    position = {k: i for i, k in enumerate(key_list)}
    assert lookup(series, pl.Series(key_list, dtype=pl.String)).to_list() == [position.get(v) for v in values]
    assert repeats(series).to_list() == [v in values[:i] for i, v in enumerate(values)]


def test_same_session_id_under_two_users_is_two_sessions(tmp_path: Path) -> None:
    events = "ts,user_id,session_id,sku,type\n1,u1,s,a,click\n2,u2,s,a,click\n3,u1,s,b,click\n4,u1,,b,click\n"
    store = load_store(write(tmp_path, minimal(**{"events.csv": events})))
    assert store.events.session_row.tolist() == [0, 2, 0, 1]


def test_pandas_style_float_integers_and_bom_crlf_csv_are_read(tmp_path: Path) -> None:
    catalog = pl.DataFrame({"sku": ["a", "b"], "category_path": ["X", "X"], "stock_qty": [3.0, float("nan")]})
    files = minimal()
    del files["catalog.csv"]
    files["events.csv"] = "\ufeffts,user_id,sku,type\r\n1,u,a,click\r\n"
    store = load_store(write(tmp_path, {**files, "catalog.parquet": catalog}))
    assert store.items.stock_qty.tolist() == [3, -1]
    assert store.events.ts.tolist() == [1]


def test_fractional_stock_qty_is_reported(tmp_path: Path) -> None:
    catalog = pl.DataFrame({"sku": ["a", "b"], "category_path": ["X", "X"], "stock_qty": [3.0, 2.5]})
    files = minimal()
    del files["catalog.csv"]
    write(tmp_path, {**files, "catalog.parquet": catalog})
    assert error_of(tmp_path) == "catalog.parquet row 2, column 'stock_qty': expected an integer; got 2.5"


def test_empty_catalog_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, minimal(**{"catalog.csv": "sku,category_path\n"}))
    assert error_of(tmp_path) == "catalog.csv: expected at least one item; got no data rows"
