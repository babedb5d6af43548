"""The synthetic store as the simulator sees it: public tables plus the hidden truth, as arrays.

`World.load(store_dir)` reads a store written by `aisle synth` (layout in builder.synth.writer):

- catalog.parquet → SKUs, leaf paths, brand and seller codes, list prices, discounts, stock, text
  embeddings (for cloning new SKUs);
- users.parquet → user ids, regions, blocked brands and sellers (as the same brand/seller codes);
- events.parquet → how active each shopper was (sessions in the log) and their usual device, since
  the store keeps neither the activity nor the device preference as truth;
- truth/ → item latents, qualities and price terms, shopper tastes and price sensitivities, the
  planted complements, and the browsing model's parameters (store.json), so the simulated
  shoppers behave like the ones that produced the log.

Nothing here changes after loading; what moves during a run (prices, stock, new SKUs) lives in
`builder.simulator.market.Market`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from builder.synth.sessions import BrowsingModel


class WorldError(ValueError):
    """The store cannot drive a simulation (missing file, no truth, inconsistent shapes)."""


def browsing_model(info: dict) -> BrowsingModel:
    """The store's browsing model from truth/store.json (parameters it lacks take the defaults;
    ones this code does not know are ignored, so an older or newer store still loads)."""
    raw = info.get("parameters", {}).get("browsing_model", {})
    if not isinstance(raw, dict):
        raise WorldError("truth/store.json: parameters.browsing_model must be an object")
    defaults = BrowsingModel()
    try:
        known = {k: type(getattr(defaults, k))(v) for k, v in raw.items() if k in BrowsingModel._fields}
    except (TypeError, ValueError) as exc:
        raise WorldError(f"truth/store.json: a browsing model parameter is not a number: {exc}") from exc
    return BrowsingModel(**known)


@dataclass(frozen=True)
class World:
    """A synthetic store in arrays. n = catalog items (catalog.parquet row order), u = shoppers
    (users.parquet row order), d = latent width, t = text embedding width."""

    store_dir: Path
    info: dict  # truth/store.json
    model: BrowsingModel
    slate_size: int  # items per slate in the store's log (the default --count)
    # items
    skus: tuple[str, ...]  # [n]
    titles: tuple[str, ...]  # [n]
    leaf: np.ndarray  # int32 [n], index into category_paths
    category_paths: tuple[str, ...]
    brand: np.ndarray  # int32 [n], index into brands
    brands: tuple[str, ...]  # catalog brands, then brands only shoppers' block lists name
    seller: np.ndarray  # int32 [n], index into sellers
    sellers: tuple[str, ...]
    price: np.ndarray  # float64 [n], list price
    discount: np.ndarray  # float64 [n], fraction off
    in_stock: np.ndarray  # bool [n]
    stock_qty: np.ndarray  # int64 [n]
    text_embedding: np.ndarray  # float32 [n, t] (t = 0 when the catalog has none)
    latent: np.ndarray  # float32 [n, d] (truth)
    quality: np.ndarray  # float32 [n] (truth)
    price_term: np.ndarray  # float32 [n]: log(list price / leaf median) (truth)
    complement: np.ndarray  # int32 [n]: planted "bought together" row, -1 none (truth)
    # shoppers
    user_ids: tuple[str, ...]  # [u]
    region: tuple[str, ...]  # [u]
    device: tuple[str, ...]  # [u], the device of most of their sessions in the log ("" unknown)
    activity: np.ndarray  # float64 [u] > 0: relative session rate (sessions in the log + a prior)
    taste: np.ndarray  # float32 [u, d] (truth)
    price_sensitivity: np.ndarray  # float32 [u] (truth)
    blocked_brands: tuple[frozenset[int], ...]  # [u], brand codes
    blocked_sellers: tuple[frozenset[int], ...]  # [u], seller codes

    @property
    def n_items(self) -> int:
        return len(self.skus)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @classmethod
    def load(cls, store_dir: Path | str) -> World:
        """Read a synthetic store (see the module docstring). Raises WorldError with what is
        missing, e.g. for a store imported from a public dataset, which has no truth/."""
        store = Path(store_dir)
        truth = store / "truth"
        for path in (store / "catalog.parquet", store / "users.parquet", truth / "store.json"):
            if not path.is_file():
                hint = " (the simulator needs a synthetic store from `aisle synth`, with its truth/)" if "truth" in path.parts else ""
                raise WorldError(f"{path} not found{hint}")
        info = json.loads((truth / "store.json").read_text(encoding="utf-8"))
        model = browsing_model(info)
        slate_size = int(info.get("scale", {}).get("slate_size", 10))

        cat = pq.read_table(store / "catalog.parquet")
        n = cat.num_rows
        skus = tuple(cat.column("sku").to_pylist())
        paths = cat.column("category_path").to_pylist()
        category_paths = tuple(sorted(set(paths)))
        path_code = {p: k for k, p in enumerate(category_paths)}
        brand_names = cat.column("brand").to_pylist()
        seller_names = cat.column("seller").to_pylist()
        users = pq.read_table(store / "users.parquet")
        blocked_b = users.column("blocked_brands").to_pylist() if "blocked_brands" in users.column_names else [[]] * users.num_rows
        blocked_s = users.column("blocked_sellers").to_pylist() if "blocked_sellers" in users.column_names else [[]] * users.num_rows
        brands = _vocabulary(brand_names, blocked_b)
        sellers = _vocabulary(seller_names, blocked_s)
        brand_code = {b: k for k, b in enumerate(brands)}
        seller_code = {s: k for k, s in enumerate(sellers)}
        if "text_embedding" in cat.column_names:
            emb = cat.column("text_embedding").combine_chunks()
            width = emb.type.list_size
            text = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, width)
        else:
            text = np.zeros((n, 0), dtype=np.float32)

        latent = _npy(truth / "item_latent.npy", np.float32, n)
        quality = _npy(truth / "item_quality.npy", np.float32, n)
        price_term = _npy(truth / "item_price_term.npy", np.float32, n)
        u = users.num_rows
        taste = _npy(truth / "user_taste.npy", np.float32, u)
        sensitivity = _npy(truth / "user_price_sensitivity.npy", np.float32, u)
        if latent.ndim != 2 or taste.ndim != 2 or latent.shape[1] != taste.shape[1]:
            raise WorldError(f"{truth}: item latents {latent.shape} and shopper tastes {taste.shape} must share a width")

        row_of = {s: i for i, s in enumerate(skus)}
        complement = np.full(n, -1, dtype=np.int32)
        comp_path = truth / "complements.parquet"
        if comp_path.is_file():
            comp = pq.read_table(comp_path)
            for a, b in zip(comp.column("sku").to_pylist(), comp.column("complement_sku").to_pylist()):
                if a in row_of and b in row_of:
                    complement[row_of[a]] = row_of[b]

        user_ids = tuple(users.column("user_id").to_pylist())
        activity, device = _activity(store / "events.parquet", user_ids)
        return cls(
            store_dir=store,
            info=info,
            model=model,
            slate_size=slate_size,
            skus=skus,
            titles=tuple(cat.column("title").to_pylist()) if "title" in cat.column_names else skus,
            leaf=np.asarray([path_code[p] for p in paths], dtype=np.int32),
            category_paths=category_paths,
            brand=np.asarray([brand_code[b] for b in brand_names], dtype=np.int32),
            brands=brands,
            seller=np.asarray([seller_code[s] for s in seller_names], dtype=np.int32),
            sellers=sellers,
            price=cat.column("price").to_numpy().astype(np.float64),
            discount=np.nan_to_num(cat.column("discount").to_numpy(zero_copy_only=False).astype(np.float64)),
            in_stock=cat.column("in_stock").to_numpy(zero_copy_only=False).astype(bool),
            stock_qty=cat.column("stock_qty").to_numpy(zero_copy_only=False).astype(np.int64),
            text_embedding=text,
            latent=latent,
            quality=quality,
            price_term=price_term,
            complement=complement,
            user_ids=user_ids,
            region=tuple(r or "" for r in users.column("region").to_pylist()) if "region" in users.column_names else ("",) * u,
            device=device,
            activity=activity,
            taste=taste,
            price_sensitivity=sensitivity,
            blocked_brands=tuple(frozenset(brand_code[b] for b in (row or [])) for row in blocked_b),
            blocked_sellers=tuple(frozenset(seller_code[s] for s in (row or [])) for row in blocked_s),
        )


def _vocabulary(names: list[str], blocked: list[list[str] | None]) -> tuple[str, ...]:
    """Catalog names (first-seen order), then names that only block lists mention."""
    seen = dict.fromkeys(names)
    for row in blocked:
        for name in row or ():
            seen.setdefault(name)
    return tuple(seen)


def _npy(path: Path, dtype: type, rows: int) -> np.ndarray:
    if not path.is_file():
        raise WorldError(f"{path} not found (the simulator needs a synthetic store's truth/)")
    array = np.load(path)
    if len(array) != rows:
        raise WorldError(f"{path}: {len(array)} rows, but the table it describes has {rows}")
    return np.ascontiguousarray(array, dtype=dtype)


# Sessions a shopper with no session in the log counts as: new shoppers visit too, just rarely.
ACTIVITY_PRIOR = 0.25


def _activity(events_path: Path, user_ids: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(float64 [u] sessions per shopper in the log + ACTIVITY_PRIOR, the device of most of their
    sessions). A store without events gives every shopper the same activity."""
    activity = np.full(len(user_ids), ACTIVITY_PRIOR, dtype=np.float64)
    device = [""] * len(user_ids)
    if not events_path.is_file():
        return activity, tuple(device)
    per_user = (
        pl.scan_parquet(events_path)
        .select("user_id", "session_id", "device")
        .unique(["user_id", "session_id"])
        .group_by("user_id")
        .agg(pl.len().alias("sessions"), pl.col("device").mode().sort().first().alias("device"))
        .collect()
    )
    index = {uid: k for k, uid in enumerate(user_ids)}
    for uid, sessions, dev in per_user.iter_rows():
        k = index.get(uid)
        if k is not None:
            activity[k] += sessions
            device[k] = dev or ""
    return activity, tuple(device)
