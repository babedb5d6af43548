"""The Amazon (S3-Rec) adapter: counts from the data's README, and ingest reads what it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from artifacts.schema import EventType
from builder.adapters.amazon import AMAZON_LAST_DAY, SECONDS_PER_POSITION, convert_amazon
from builder.ingest import load_store

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BEAUTY = SHARED_DATA / "amazon-beauty-s3rec"

@pytest.fixture(scope="module")
def beauty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    if not (BEAUTY / "items.csv").is_file():
        pytest.skip(f"{BEAUTY} is absent (shared evaluation data is not part of the repo)")
    out = tmp_path_factory.mktemp("amazon") / "beauty"
    return out, convert_amazon(src=BEAUTY, out=out)


@pytest.mark.shared_data
def test_beauty_counts_match_its_readme(beauty: tuple[Path, dict[str, int]]) -> None:
    _, summary = beauty
    assert summary["users"] == 22_363
    assert summary["items"] == 12_101
    assert summary["events"] == 198_502
    assert (summary["train"], summary["valid"], summary["test"]) == (153_776, 22_363, 22_363)
    assert summary["items_with_brand"] == 7_474
    assert summary["events_unknown_item"] == 0


@pytest.mark.shared_data
def test_beauty_output_is_canonical_and_loads(beauty: tuple[Path, dict[str, int]]) -> None:
    out, _ = beauty
    assert sorted(p.name for p in out.iterdir()) == ["catalog.parquet", "events.parquet", "users.parquet"]
    store = load_store(out)
    assert (len(store.items), len(store.users), len(store.events)) == (12_101, 22_363, 198_502)
    assert store.report.events_unknown_sku == 0
    assert store.report.ignored_columns["events.parquet"] == ("split",)
    assert np.all(store.events.type == EventType.PURCHASE)
    # One session per user: the user's whole history.
    assert len(np.unique(store.events.session_row)) == 22_363
    assert 434 + 1 == len(store.brands)  # the README's 434 brands, plus "" for unknown


@pytest.mark.shared_data
def test_beauty_items_keep_asin_brand_and_category_path(beauty: tuple[Path, dict[str, int]]) -> None:
    out, _ = beauty
    catalog = pl.read_parquet(out / "catalog.parquet")
    first = catalog.filter(pl.col("sku") == "1").row(0, named=True)
    assert (first["title"], first["brand"], first["category_path"]) == ("B004756YJA", "OPI", "Makeup/Nails/Nail Polish")
    brands = set(catalog["brand"].to_list())
    assert "L'Oreal Paris" in brands and not any("&#39;" in b for b in brands)


@pytest.mark.shared_data
def test_beauty_clock_keeps_each_users_order_and_split(beauty: tuple[Path, dict[str, int]]) -> None:
    out, _ = beauty
    events = pl.read_parquet(out / "events.parquet")
    source = pl.read_csv(BEAUTY / "interactions.csv.gz", schema_overrides={"user_id": pl.String, "item_id": pl.String})
    joined = source.join(events, left_on=["user_id", "item_id"], right_on=["user_id", "sku"], how="inner")
    assert joined.height == source.height
    last_position = joined.group_by("user_id").agg(pl.col("position").max().alias("last"))
    joined = joined.join(last_position, on="user_id")
    assert (joined["ts"] == AMAZON_LAST_DAY - (joined["last"] - joined["position"]) * SECONDS_PER_POSITION).all()
    assert (events["ts"].max(), events.filter(pl.col("split") == "test")["ts"].n_unique()) == (AMAZON_LAST_DAY, 1)
    assert (joined["split"] == joined["split_right"]).all()
    last = events.group_by("user_id").agg(pl.col("split").sort_by("ts").last())
    assert (last["split"] == "test").all()


@pytest.mark.shared_data
def test_existing_output_is_kept_unless_overwrite(beauty: tuple[Path, dict[str, int]]) -> None:
    out, _ = beauty
    with pytest.raises(FileExistsError):
        convert_amazon(src=BEAUTY, out=out)
    summary = convert_amazon(src=BEAUTY, out=out, overwrite=True)
    assert summary["events"] == 198_502
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_uncategorized_items_and_html_entities_in_a_small_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "items.csv").write_text(
        "item_id,asin,brand,categories,attribute_ids,n_interactions\n"
        "1,A1,L&#39;Oreal,Makeup|Eyes,1 2,1\n"
        "2,A2,,,3,1\n"
    )
    (src / "interactions.csv").write_text("user_id,item_id,position,split\n7,2,1,test\n7,1,0,valid\n")
    summary = convert_amazon(src=src, out=tmp_path / "out")
    assert summary == {
        "users": 1, "items": 2, "events": 2, "train": 0, "valid": 1, "test": 1,
        "items_with_brand": 1, "items_uncategorized": 1, "events_unknown_item": 0,
    }
    store = load_store(tmp_path / "out")
    assert store.brands == ("", "L'Oreal")
    assert store.categories.path == ("", "Makeup", "Makeup/Eyes", "Uncategorized")
    assert [store.items.sku[r] for r in store.events.item_row] == ["1", "2"]


def test_chained_sports_paths_keep_the_department_segment(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    top, other = "<unnamed_toplevel_attr_2>", "<unnamed_toplevel_attr_143>"
    (src / "items.csv").write_text(
        "item_id,asin,brand,categories,attribute_ids,n_interactions\n"
        f"1,A1,Ghost,{top}|Hunting & Fishing|Hunting,1,1\n"
        f"2,A2,,Speedo|{top}|Boating & Water Sports|Swimming|{other}|Men|Clothing,2,1\n"
        f"3,A3,,<unnamed_toplevel_attr_23>|{top}|Snow Sports,3,1\n"
        f"4,A4,,{top},4,1\n"
    )
    (src / "interactions.csv").write_text("user_id,item_id,position,split\n1,1,0,train\n1,2,1,train\n1,3,2,valid\n1,4,3,test\n")
    convert_amazon(src=src, out=tmp_path / "out")
    catalog = pl.read_parquet(tmp_path / "out" / "catalog.parquet")
    assert catalog["category_path"].to_list() == [
        "Hunting & Fishing/Hunting",
        "Boating & Water Sports/Swimming",
        "Snow Sports",
        "Uncategorized",
    ]


@pytest.mark.shared_data
def test_sports_counts_match_its_readme(tmp_path: Path) -> None:
    sports = SHARED_DATA / "amazon-sports-s3rec"
    if not (sports / "items.csv").is_file():
        pytest.skip(f"{sports} is absent (shared evaluation data is not part of the repo)")
    summary = convert_amazon(src=sports, out=tmp_path / "sports")
    assert (summary["users"], summary["items"], summary["events"]) == (35_598, 18_357, 296_337)
    store = load_store(tmp_path / "sports")
    assert len(store.events) == 296_337 and store.report.events_unknown_sku == 0
    assert int(store.categories.depth.max()) <= 6  # chained paths are not concatenated
