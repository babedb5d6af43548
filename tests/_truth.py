"""The synthetic store's hidden truth, read back for tests that check a model against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from builder.store import Store
from builder.synth.sessions import BrowsingModel


def true_attractiveness(store_dir: Path, store: Store, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """float64 [n]: the store's own click logit for (users[i], items[i]) (Store rows), less its
    position term and constant (builder/synth/sessions.py)."""
    truth = store_dir / "truth"
    synth_item = {sku: i for i, sku in enumerate(pl.read_parquet(store_dir / "catalog.parquet")["sku"].to_list())}
    synth_user = {u: i for i, u in enumerate(pl.read_parquet(store_dir / "users.parquet")["user_id"].to_list())}
    i = np.array([synth_item[s] for s in store.items.sku[items]])
    u = np.array([synth_user[x] for x in store.users.user_id[users]])
    taste, latent = np.load(truth / "user_taste.npy"), np.load(truth / "item_latent.npy")
    return ((taste[u] * latent[i]).sum(axis=1) + np.load(truth / "item_quality.npy")[i]
            - np.load(truth / "user_price_sensitivity.npy")[u] * np.load(truth / "item_price_term.npy")[i]
            + BrowsingModel().discount_weight * store.items.discount[items])
