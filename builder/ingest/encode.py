"""Validated tables → the dense-coded `builder.store.Store`.

Everything here is a sort, a join or an array op over whole columns: the `1m` synthetic store has
1M catalog rows and 10M events, and no loop here runs per row (the one Python loop walks the
distinct category paths, a few thousand). The inputs are already valid, so nothing here fails on
data; the dtypes are the ones `builder.store` states.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from artifacts.schema import CATEGORY_SEPARATOR
from builder.ingest.codes import codes, dense_codes, lookup, vocabulary
from builder.ingest.errors import shown
from builder.ingest.sessions import assign_sessions
from builder.ingest.validate import ValidTable
from builder.store import Categories, Events, IngestReport, Items, Store, Users


def encode_store(
    tables: dict[str, ValidTable], fingerprints: dict[str, str], keep: pl.Series | None = None
) -> Store:
    """The Store of validated `tables` (keys catalog, events and optionally users).

    `keep` (Boolean, one per events-file row) leaves out the events a screen already dropped
    (builder.ingest.screen); of the rest, those naming an unknown SKU are dropped, counted and noted.
    """
    catalog = tables["catalog"].frame.sort("sku")
    events = tables["events"]
    users = tables.get("users")

    categories, category, cat_top = _categories(catalog["category_path"])
    brands = vocabulary([catalog["brand"]])
    sellers = vocabulary([catalog["seller"]])
    regions = vocabulary([events.frame["region"]] + ([users.frame["region"]] if users else []))
    devices = vocabulary([events.frame["device"]])

    items = Items(
        sku=catalog["sku"].to_numpy(),
        title=catalog["title"].to_numpy(),
        category=category,
        cat_top=cat_top,
        brand=codes(catalog["brand"], brands, np.int32),
        seller=codes(catalog["seller"], sellers, np.int32),
        price=catalog["price"].to_numpy().astype(np.float32),
        discount=catalog["discount"].to_numpy().astype(np.float32),
        in_stock=catalog["in_stock"].to_numpy().astype(np.bool_),
        stock_qty=catalog["stock_qty"].to_numpy().astype(np.int32),
        created_at=catalog["created_at"].to_numpy().astype(np.int64),
        text_embedding=_matrix(catalog, "text_embedding"),
        image_embedding=_matrix(catalog, "image_embedding"),
    )

    # Every shopper seen anywhere, even one whose events all name unknown SKUs: the shopper exists.
    n_events = events.rows
    user_ids, user_rows = dense_codes(
        pl.concat([events.frame["user_id"]] + ([users.frame["user_id"]] if users else []))
    )
    encoded_users = _users(user_ids, users, user_rows[n_events:], regions, brands, sellers)
    if keep is None:
        keep = pl.repeat(True, n_events, dtype=pl.Boolean, eager=True)
    encoded_events, unknown = _events(events.frame, catalog["sku"], user_rows[:n_events], keep, regions, devices)
    n_unknown = int(unknown.sum())
    notes: tuple[str, ...] = ()
    if n_unknown:
        first = int(unknown.arg_max())
        where = f"row {first + 1}" + (f" (line {first + 2})" if events.file.is_csv else "")
        notes = (
            f"{events.file.name}: dropped {n_unknown:,} event{'s' * (n_unknown > 1)} naming a sku the catalog does not "
            f"have, the first at {where}: {shown(events.frame['sku'][first])}",
        )

    report = IngestReport(
        rows_read={t.file.name: t.rows for t in tables.values()},
        events_unknown_sku=n_unknown,
        ignored_columns={t.file.name: t.ignored_columns for t in tables.values()},
        fingerprints=fingerprints,
        notes=notes,
    )
    return Store(
        items=items,
        events=encoded_events,
        users=encoded_users,
        categories=categories,
        brands=brands,
        sellers=sellers,
        regions=regions,
        devices=devices,
        report=report,
    )


def _categories(paths: pl.Series) -> tuple[Categories, np.ndarray, np.ndarray]:
    """The flattened tree, and per item its leaf node and depth-1 ancestor (int32 [n] each)."""
    sep = CATEGORY_SEPARATOR
    distinct = paths.unique().to_list()
    nodes = {""}
    for path in distinct:
        parts = path.split(sep)
        nodes.update(sep.join(parts[:k]) for k in range(1, len(parts) + 1))
    # Sorted text order puts every path after its prefixes, so parents precede children.
    ordered = sorted(nodes)
    node_of = {path: i for i, path in enumerate(ordered)}
    parent = np.array([-1] + [node_of[p.rpartition(sep)[0]] for p in ordered[1:]], dtype=np.int32)
    depth = np.array([0] + [p.count(sep) + 1 for p in ordered[1:]], dtype=np.int8)
    leaf = {path: node_of[path] for path in distinct}
    top = {path: node_of[path.partition(sep)[0]] for path in distinct}
    category = paths.replace_strict(leaf, return_dtype=pl.Int32).to_numpy().astype(np.int32)
    cat_top = paths.replace_strict(top, return_dtype=pl.Int32).to_numpy().astype(np.int32)
    return Categories(path=tuple(ordered), parent=parent, depth=depth), category, cat_top


def _matrix(catalog: pl.DataFrame, name: str) -> np.ndarray | None:
    """float32 [n, d]; an item without a vector gets zeros. None when no item has one."""
    if name not in catalog.columns:
        return None
    values = catalog[name]
    present = values.is_not_null()
    if not present.any():
        return None
    dim = int(values.list.len()[int(present.arg_max())])
    out = np.zeros((len(values), dim), dtype=np.float32)
    flat = values.drop_nulls().explode().to_numpy().astype(np.float32, copy=False)
    out[present.to_numpy()] = flat.reshape(-1, dim)
    return out


def _users(
    user_ids: pl.Series,
    users: ValidTable | None,
    file_rows: pl.Series,
    regions: tuple[str, ...],
    brands: tuple[str, ...],
    sellers: tuple[str, ...],
) -> Users:
    """`file_rows` is the user row of each users-file row (Int32); shoppers only seen in events
    keep the defaults: region unknown, signup 0, nothing blocked."""
    n = len(user_ids)
    region = np.zeros(n, dtype=np.int16)
    signup_ts = np.zeros(n, dtype=np.int64)
    brands_indptr, brand_codes = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    sellers_indptr, seller_codes = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    if users is not None:
        rows = file_rows.to_numpy().astype(np.int64)
        region[rows] = codes(users.frame["region"], regions, np.int16)
        signup_ts[rows] = users.frame["signup_ts"].to_numpy()
        brands_indptr, brand_codes = _csr(users.frame["blocked_brands"], rows, n, brands)
        sellers_indptr, seller_codes = _csr(users.frame["blocked_sellers"], rows, n, sellers)
    return Users(
        user_id=user_ids.to_numpy(),
        region=region,
        signup_ts=signup_ts,
        blocked_brands_indptr=brands_indptr,
        blocked_brands=brand_codes,
        blocked_sellers_indptr=sellers_indptr,
        blocked_sellers=seller_codes,
    )


def _csr(lists: pl.Series, rows: np.ndarray, n: int, vocabulary: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """CSR over `n` users (indptr int64 [n + 1], codes int32) of the names in `lists`, whose i-th
    entry belongs to user `rows[i]`; each user's codes sorted and distinct.

    Names outside the vocabulary are dropped: no item carries them, so blocking them blocks nothing.
    """
    pairs = pl.DataFrame({"row": rows, "name": lists}).explode("name").drop_nulls("name")
    pairs = (
        pairs.with_columns(code=lookup(pairs["name"], pl.Series(vocabulary, dtype=pl.String)))
        .filter(pl.col("code") > 0)
        .unique(["row", "code"])
        .sort(["row", "code"])
    )
    counts = np.bincount(pairs["row"].to_numpy(), minlength=n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, pairs["code"].to_numpy().astype(np.int32)


def _events(
    frame: pl.DataFrame,
    skus: pl.Series,
    user_row: pl.Series,
    keep: pl.Series,
    regions: tuple[str, ...],
    devices: tuple[str, ...],
) -> tuple[Events, pl.Series]:
    """The kept events of known SKUs, stably sorted by ts; and which kept rows (Boolean, file
    order) were dropped for naming an unknown SKU."""
    item_row = lookup(frame["sku"], skus)
    known = item_row.is_not_null()
    coded = (
        pl.DataFrame(
            {
                "ts": frame["ts"],
                "user_row": user_row,
                "session_id": frame["session_id"],
                "item_row": item_row,
                "type": frame["type"].to_physical(),
                "dwell_ms": frame["dwell_ms"],
                "surface": frame["surface"].to_physical(),
                "position": frame["position"],
                "device": codes(frame["device"], devices, np.int8),
                "region": codes(frame["region"], regions, np.int16),
            }
        )
        .filter(keep & known)
        .sort("ts", maintain_order=True)  # stable: ties keep input order
    )
    ts = coded["ts"].to_numpy().astype(np.int64)
    user_row = coded["user_row"].to_numpy().astype(np.int32)
    events = Events(
        ts=ts,
        user_row=user_row,
        session_row=assign_sessions(ts, user_row, coded["session_id"]),
        item_row=coded["item_row"].to_numpy().astype(np.int32),
        type=coded["type"].to_numpy().astype(np.int8),
        dwell_ms=coded["dwell_ms"].to_numpy().astype(np.int32),
        surface=coded["surface"].to_numpy().astype(np.int8),
        position=coded["position"].to_numpy().astype(np.int16),
        device=coded["device"].to_numpy().astype(np.int8),
        region=coded["region"].to_numpy().astype(np.int16),
    )
    return events, keep & ~known
