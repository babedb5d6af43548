"""Amazon review sequences (the S3-Rec preprocessing in ../shared/data) → the canonical schema.

Source folder (see its README.md): `items.csv` (item_id, asin, brand, categories '|'-joined, …) and
`interactions.csv.gz` (user_id, item_id, position, split), one row per review, `position` the
0-based order of the review in the user's history, `split` the standard leave-one-out
(last = test, second-to-last = valid, the rest = train).

What the conversion decides, because the data has no such fields:

* sku = the integer `item_id` as text, title = the ASIN (the only name an item has here).
* category_path = the category labels joined with '/' (the top-level "Beauty" is already absent);
  an item with none is "Uncategorized". brand is HTML-unescaped ("L&#39;Oreal" → "L'Oreal"); the
  literal brands "Unknown" and "Generic" are kept as the source has them. seller is empty, price
  unknown (null), every item in stock, created_at 0.
* Every review is a `purchase` on surface `other`.
* **Synthetic clock.** The source keeps only each user's order, so every history is laid out one
  day per review and ENDS on the same day: ts = `AMAZON_LAST_DAY` − (n_reviews − 1 − position) ×
  one day. Within a user the order is exact; across users only "k reviews before the end" is
  shared. Aligning the ends (not the starts) makes recency mean what it means in a live store
  (popularity and trending decay from everyone's latest activity) and makes a one-day label window
  before the end exactly "each shopper's last item": the leave-one-out split. Evaluate with the
  `split`, not a global time cut.
* session_id = user_id: each user's history is one sequence.
* events carry an extra column `split` (train / valid / test); ingest ignores it and the evaluator
  reads it from `events.parquet`.

Output: `out/catalog.parquet`, `out/events.parquet`, `out/users.parquet`, written into a
temporary sibling directory and renamed into place, so `out` is either absent, the old output, or
complete.
"""

from __future__ import annotations

import html
from pathlib import Path

import polars as pl

from artifacts.publish import write_directory
from artifacts.schema import CATEGORY_SEPARATOR, LIST_SEPARATOR
from builder.ingest.errors import InputError

# 2014-07-01T00:00:00Z, the day of every shopper's last review: the reviews were crawled in 2014,
# and any fixed instant would do.
AMAZON_LAST_DAY = 1_404_172_800
SECONDS_PER_POSITION = 86_400
UNCATEGORIZED = "Uncategorized"
_UNNAMED_TOP_LEVEL = "<unnamed_toplevel_attr_"
_INTERACTION_FILES = ("interactions.csv.gz", "interactions.csv")


def convert_amazon(src: Path, out: Path, overwrite: bool = False) -> dict[str, int]:
    """Convert one S3-Rec Amazon folder `src` into canonical Parquet files in `out`.

    Returns counts: users, items, events, train/valid/test events, items_with_brand,
    items_uncategorized, events_unknown_item (reviews of an item missing from items.csv; ingest
    would drop them). Raises FileExistsError if `out` exists and `overwrite` is false, and
    InputError if `src` lacks a file or column.
    """
    src, out = Path(src), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass overwrite=True to replace it")
    catalog = _catalog(src)
    events = _events(src)
    users = events.select(pl.col("user_id").unique(maintain_order=True))

    known = events["sku"].is_in(catalog["sku"].implode())
    summary = {
        "users": users.height,
        "items": catalog.height,
        "events": events.height,
        **{name: int((events["split"] == name).sum()) for name in ("train", "valid", "test")},
        "items_with_brand": int((catalog["brand"] != "").sum()),
        "items_uncategorized": int((catalog["category_path"] == UNCATEGORIZED).sum()),
        "events_unknown_item": int((~known).sum()),
    }
    _publish({"catalog": catalog, "events": events, "users": users}, out)
    return summary


def _read_csv(path: Path, columns: list[str]) -> pl.DataFrame:
    if not path.is_file():
        raise InputError(f"{path}: expected an S3-Rec Amazon file here; got no such file")
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path.name}: not a readable CSV file: {exc}") from exc
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise InputError(f"{path.name}: expected columns {', '.join(columns)}; got {', '.join(frame.columns)}")
    return frame.select(columns)


def _catalog(src: Path) -> pl.DataFrame:
    items = _read_csv(src / "items.csv", ["item_id", "asin", "brand", "categories"])
    brands = items["brand"].fill_null("")
    # A few hundred distinct brands: unescape each once rather than per item.
    unescaped = {b: html.unescape(b).strip() for b in brands.unique().to_list()}
    path = _category_paths(items["categories"])
    n = items.height
    return pl.DataFrame(
        {
            "sku": items["item_id"].str.strip_chars(),
            "title": items["asin"],
            "category_path": path.replace("", UNCATEGORIZED),
            "brand": brands.replace_strict(unescaped, return_dtype=pl.String),
            "seller": pl.repeat("", n, dtype=pl.String, eager=True),
            "price": pl.repeat(None, n, dtype=pl.Float64, eager=True),
            "discount": pl.repeat(0.0, n, dtype=pl.Float64, eager=True),
            "in_stock": pl.repeat(True, n, dtype=pl.Boolean, eager=True),
            "stock_qty": pl.repeat(-1, n, dtype=pl.Int64, eager=True),
            "created_at": pl.repeat(0, n, dtype=pl.Int64, eager=True),
        }
    ).sort("sku")


def _category_paths(categories: pl.Series) -> pl.Series:
    """'/'-joined category path per item ("" for none) from the '|'-joined labels.

    Sports chains several paths of one item, each led by a top-level label whose name was lost
    (`<unnamed_toplevel_attr_N>`), sometimes after a brand that S3-Rec did not recognise as one:
    `Speedo|<…_2>|Boating & Water Sports|Swimming|Goggles|<…_143>|…`. When one such label is in
    every item, it is the data set's own department ("Sports & Outdoors"): the path is the segment
    it leads, without it, as S3-Rec already dropped "Beauty" from Beauty. Otherwise the path is the
    first segment with named labels. Beauty has no such labels: its path is the whole list.
    A plain Python pass: these data sets have some 10^4 items.
    """
    lists = [_labels(text) for text in categories.fill_null("").to_list()]
    markers = [{label for label in labels if label.startswith(_UNNAMED_TOP_LEVEL)} for labels in lists]
    everywhere = set.intersection(*markers) if markers else set()
    department = min(everywhere) if everywhere else None
    return pl.Series([CATEGORY_SEPARATOR.join(_first_path(labels, department)) for labels in lists], dtype=pl.String)


def _labels(text: str) -> list[str]:
    # A '/' inside a label would split it into two levels of the path.
    labels = (label.strip().replace(CATEGORY_SEPARATOR, "-") for label in text.split(LIST_SEPARATOR))
    return [label for label in labels if label]


def _first_path(labels: list[str], department: str | None) -> list[str]:
    segments: list[list[str]] = [[]]
    for label in labels:
        if label.startswith(_UNNAMED_TOP_LEVEL):
            segments.append([label])
        else:
            segments[-1].append(label)
    if department is not None:
        for segment in segments:
            if segment and segment[0] == department:
                return segment[1:]
    named = ([label for label in segment if not label.startswith(_UNNAMED_TOP_LEVEL)] for segment in segments)
    return next((segment for segment in named if segment), [])


def _events(src: Path) -> pl.DataFrame:
    path = next((src / name for name in _INTERACTION_FILES if (src / name).is_file()), src / _INTERACTION_FILES[0])
    raw = _read_csv(path, ["user_id", "item_id", "position", "split"])
    try:
        typed = raw.with_columns(
            pl.col("user_id").str.strip_chars(),
            pl.col("item_id").str.strip_chars(),
            pl.col("position").cast(pl.Int64),
        )
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{path.name}: expected an integer in column 'position': {exc}") from exc
    user = typed["user_id"].cast(pl.Int64, strict=False)
    order = typed.with_columns(user_order=user).sort(["user_order", "user_id", "position"], maintain_order=True)
    last_position = pl.col("position").max().over("user_id")
    return order.select(
        ts=pl.lit(AMAZON_LAST_DAY, dtype=pl.Int64) - (last_position - pl.col("position")) * SECONDS_PER_POSITION,
        user_id=pl.col("user_id"),
        session_id=pl.col("user_id"),
        sku=pl.col("item_id"),
        type=pl.lit("purchase"),
        surface=pl.lit("other"),
        split=pl.col("split"),
    )


def _publish(frames: dict[str, pl.DataFrame], out: Path) -> None:
    """Write every frame to `out/NAME.parquet` all at once (artifacts.publish.write_directory)."""

    def fill(tmp: Path) -> None:
        for name, frame in frames.items():
            frame.write_parquet(tmp / f"{name}.parquet", statistics=True)

    write_directory(out, fill)
