"""Writes the synthetic store: canonical Parquet tables, the hidden truth, and an atomic publish.

Layout of a store directory (DATA/):

    catalog.parquet   artifacts.schema.CATALOG (text_embedding: fixed_size_list<float32>[text_dim])
    events.parquet    artifacts.schema.EVENTS, sorted by ts (ties: session order), unique event_id
    users.parquet     artifacts.schema.USERS (blocked_*: list<string>)
    truth/
      item_latent.npy            float32 [n_items, latent_dim], catalog row order
      item_quality.npy           float32 [n_items]: attractiveness offset
      item_price_term.npy        float32 [n_items]: log(price / leaf median price)
      user_taste.npy             float32 [n_users, latent_dim], users.parquet row order
      user_price_sensitivity.npy float32 [n_users]
      position_bias.npy          float32 [slate_size]: P(examine) by 0-based slot
      complements.parquet        sku, complement_sku: planted "bought together" pairs
      category_complements.parquet  category_path, complement_path (leaf paths)
      store.json                 scale, seed, horizon, counts, model parameters

Everything is written into a hidden sibling directory, fsynced, then renamed into place, so a
reader never sees half a store.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from artifacts.publish import fsync_path
from artifacts.schema import EVENT_TYPE_NAMES, SURFACE_NAMES
from builder.synth.catalog import Catalog
from builder.synth.identifiers import make_ids
from builder.synth.sessions import Log
from builder.synth.shoppers import DEVICES, REGIONS, Shoppers
from builder.synth.taxonomy import STYLES
from builder.synth.visits import Visits

Progress = Callable[[str, int, int], None]

PARQUET_COMPRESSION = "zstd"

# Id widths: bits of the keyed bijection and base-32 digits (5 bits each).
SKU_BITS, SKU_DIGITS = 40, 8
USER_BITS, USER_DIGITS = 40, 8
SESSION_BITS, SESSION_DIGITS = 50, 10
REQUEST_BITS, REQUEST_DIGITS = 50, 10
EVENT_BITS, EVENT_DIGITS = 60, 12


class Ids:
    """The store's external ids, all pa.string(): skus [n_items], users [n_users],
    sessions [n_sessions], requests [n_requests + 1] (the last is "" for "not from a slate")."""

    def __init__(self, seed: int, n_items: int, n_users: int, n_sessions: int, n_requests: int) -> None:
        self.seed = seed
        self.sku = make_ids("SKU-", n_items, SKU_BITS, SKU_DIGITS, seed * 8 + 1)
        self.user = make_ids("U-", n_users, USER_BITS, USER_DIGITS, seed * 8 + 2)
        self.session = make_ids("S-", n_sessions, SESSION_BITS, SESSION_DIGITS, seed * 8 + 3)
        requests = make_ids("R-", n_requests, REQUEST_BITS, REQUEST_DIGITS, seed * 8 + 4)
        self.request = pa.concat_arrays([requests, pa.array([""], type=pa.string())])

    def events(self, start: int, n: int) -> pa.Array:
        """Ids of events start..start+n-1 (rows of events.parquet)."""
        return make_ids("E-", n, EVENT_BITS, EVENT_DIGITS, self.seed * 8 + 5, start)


def _strings(values: Iterable[str]) -> pa.Array:
    return pa.array(list(values), type=pa.string())


def catalog_table(catalog: Catalog, ids: Ids) -> pa.Table:
    """artifacts.schema.CATALOG columns, catalog row order."""
    tree = catalog.tree
    brand_names = _strings(catalog.brands.name)
    title = pc.binary_join_element_wise(
        brand_names.take(catalog.brand),
        _strings(STYLES).take(catalog.style),
        _strings(tree.leaf_noun).take(catalog.leaf),
        " ",
    )
    emb = catalog.text_embedding
    text_embedding = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), emb.shape[1])
    return pa.table(
        {
            "sku": ids.sku,
            "title": title,
            "category_path": _strings(tree.leaf_path).take(catalog.leaf),
            "brand": brand_names.take(catalog.brand),
            "seller": _strings(catalog.sellers.name).take(catalog.seller),
            "price": pa.array(catalog.price, type=pa.float64()),
            "discount": pa.array(catalog.discount, type=pa.float64()),
            "in_stock": pa.array(catalog.in_stock, type=pa.bool_()),
            "stock_qty": pa.array(catalog.stock_qty, type=pa.int64()),
            "created_at": pa.array(catalog.created_at, type=pa.int64()),
            "text_embedding": text_embedding,
        }
    )


def users_table(catalog: Catalog, shoppers: Shoppers, ids: Ids) -> pa.Table:
    """artifacts.schema.USERS columns, shopper row order."""

    def names(ptr: np.ndarray, codes: np.ndarray, vocab: tuple[str, ...]) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(ptr.astype(np.int32)), _strings(vocab).take(codes))

    return pa.table(
        {
            "user_id": ids.user,
            "region": _strings(REGIONS).take(shoppers.region),
            "signup_ts": pa.array(shoppers.signup_ts, type=pa.int64()),
            "blocked_brands": names(shoppers.blocked_brands_ptr, shoppers.blocked_brands, catalog.brands.name),
            "blocked_sellers": names(shoppers.blocked_sellers_ptr, shoppers.blocked_sellers, catalog.sellers.name),
        }
    )


# The Arrow schema of events.parquet (artifacts.schema.EVENTS + event_id, INT as int64).
EVENTS_ARROW_SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("user_id", pa.string()),
        ("session_id", pa.string()),
        ("sku", pa.string()),
        ("type", pa.string()),
        ("dwell_ms", pa.int64()),
        ("surface", pa.string()),
        ("request_id", pa.string()),
        ("position", pa.int64()),
        ("device", pa.string()),
        ("region", pa.string()),
        ("event_id", pa.string()),
    ]
)
EVENT_CHUNK_ROWS = 1 << 20  # rows per events.parquet row group; bounds the writer's memory


def _events_chunk(
    log: Log, order: np.ndarray, start: int, visits: Visits, shoppers: Shoppers, ids: Ids
) -> pa.Table:
    session = log.session[order]
    user = visits.user[session]
    request = log.request[order]
    request = np.where(request < 0, len(ids.request) - 1, request)
    return pa.table(
        {
            "ts": pa.array(log.ts[order], type=pa.int64()),
            "user_id": ids.user.take(user),
            "session_id": ids.session.take(session),
            "sku": ids.sku.take(log.item[order]),
            "type": _strings(EVENT_TYPE_NAMES).take(log.type[order]),
            "dwell_ms": pa.array(log.dwell_ms[order].astype(np.int64), type=pa.int64()),
            "surface": _strings(SURFACE_NAMES).take(log.surface[order]),
            "request_id": ids.request.take(request),
            "position": pa.array(log.position[order].astype(np.int64), type=pa.int64()),
            "device": _strings(DEVICES).take(visits.device[session]),
            "region": _strings(REGIONS).take(shoppers.region[user]),
            "event_id": ids.events(start, len(order)),
        },
        schema=EVENTS_ARROW_SCHEMA,
    )


def write_events(
    log: Log, visits: Visits, shoppers: Shoppers, ids: Ids, path: Path, progress: Progress | None = None
) -> None:
    """events.parquet: artifacts.schema.EVENTS plus a unique event_id, sorted by ts (ties keep
    session order), written one row group at a time."""
    order = np.argsort(log.ts, kind="stable")
    with pq.ParquetWriter(path, EVENTS_ARROW_SCHEMA, compression=PARQUET_COMPRESSION) as out:
        for start in range(0, len(order), EVENT_CHUNK_ROWS):
            chunk = order[start : start + EVENT_CHUNK_ROWS]
            out.write_table(_events_chunk(log, chunk, start, visits, shoppers, ids))
            if progress is not None:
                progress("events", start + len(chunk), len(order))


def complements_table(catalog: Catalog, ids: Ids) -> pa.Table:
    rows = np.flatnonzero(catalog.complement >= 0)
    return pa.table({"sku": ids.sku.take(rows), "complement_sku": ids.sku.take(catalog.complement[rows])})


def category_complements_table(catalog: Catalog) -> pa.Table:
    comp = catalog.tree.leaf_complements
    leaf, k = np.nonzero(comp >= 0)
    paths = _strings(catalog.tree.leaf_path)
    return pa.table({"category_path": paths.take(leaf), "complement_path": paths.take(comp[leaf, k])})


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression=PARQUET_COMPRESSION)


def write_json(obj: object, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_store(
    root: Path,
    catalog: Catalog,
    shoppers: Shoppers,
    visits: Visits,
    log: Log,
    ids: Ids,
    position_bias: np.ndarray,
    info: dict[str, object],
    progress: Progress | None = None,
) -> None:
    """Every file of the layout above into the empty directory `root` (`info` → truth/store.json)."""
    truth = root / "truth"
    truth.mkdir()
    arrays = {
        "item_latent.npy": catalog.latent,
        "item_quality.npy": catalog.quality,
        "item_price_term.npy": catalog.price_term,
        "user_taste.npy": shoppers.taste,
        "user_price_sensitivity.npy": shoppers.price_sensitivity,
        "position_bias.npy": position_bias,
    }
    steps = 6 + len(arrays)
    report = progress if progress is not None else (lambda stage, done, total: None)
    report("write", 0, steps)
    write_parquet(catalog_table(catalog, ids), root / "catalog.parquet")
    report("write", 1, steps)
    write_parquet(users_table(catalog, shoppers, ids), root / "users.parquet")
    report("write", 2, steps)
    write_events(log, visits, shoppers, ids, root / "events.parquet", progress)
    report("write", 3, steps)
    for done, (name, array) in enumerate(arrays.items(), start=4):
        np.save(truth / name, array)
        report("write", done, steps)
    write_parquet(complements_table(catalog, ids), truth / "complements.parquet")
    write_parquet(category_complements_table(catalog), truth / "category_complements.parquet")
    report("write", steps - 1, steps)
    write_json(info, truth / "store.json")
    report("write", steps, steps)


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse early: `out` must be absent, an empty directory, or replaceable (`overwrite`)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another output path")
    if any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it, or choose another path")


def staging_dir(out: Path) -> Path:
    """A fresh hidden sibling of `out` to write into (same file system, so rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: Path, overwrite: bool, progress: Progress | None = None) -> None:
    """fsync everything under `tmp`, then move it to `out` (replacing `out` only if allowed)."""
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))
    check_destination(out, overwrite)  # again: someone may have written there meanwhile
    old: Path | None = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        else:
            out.rmdir()
    tmp.rename(out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old)
    if progress is not None:
        progress("publish", 1, 1)
