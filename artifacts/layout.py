"""Where each part lives inside a bundle directory. One place, so builder and engine agree.

All paths are relative to the bundle root and use '/' separators. `.npy` files are memory-mapped
by every worker; the index is opened as a USearch view; LMDB is opened read-only.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
VOCAB = "vocab.json"  # categories (path, parent, depth), brands, sellers, regions, devices

# Item table: one row per SKU, ascending sku order (artifacts.idmap).
ITEM_SKU = "items/sku.npy"  # S<w>
ITEM_TITLE_BYTES = "items/title_bytes.npy"  # uint8, UTF-8 titles back to back
ITEM_TITLE_OFFSETS = "items/title_offsets.npy"  # int64 [n+1]
ITEM_COLUMNS = {  # name -> dtype of items/<name>.npy, each shape [n]
    "category": "int32",
    "cat_top": "int32",
    "brand": "int32",
    "seller": "int32",
    "price": "float32",
    "discount": "float32",
    "in_stock": "uint8",
    "stock_qty": "int32",
    "created_at": "int64",
    # behaviour statistics at build time (decayed counts; artifacts.featurespec documents them)
    "popularity": "float32",
    "trend": "float32",
    "views": "float32",
    "clicks": "float32",
    "carts": "float32",
    "purchases": "float32",
    "impressions": "float32",
}


def item_column(name: str) -> str:
    return f"items/{name}.npy"


USER_IDS = "users/user_id.npy"  # S<w>, ascending

ITEM_VECTORS = "embeddings/items.npy"  # float32 [n, dim], L2-normalised
ITEM_INDEX = "index/items.usearch"  # USearch HNSW over ITEM_VECTORS, keys = rows
USER_TOWER = "models/user_tower.onnx"
ITEM_TOWER = "models/item_tower.onnx"  # metadata → vector, for SKUs that arrive between builds (optional part)
RANKER_LIB = "models/ranker.so"
RANKER_TREELITE = "models/ranker.treelite"
RANKER_LIGHTGBM = "models/ranker.lgb.txt"
# Ranking heads (optional part; artifacts/heads.py): P(click | shown), P(add-to-cart | click),
# P(purchase | click), each a compiled GBDT like the ranker, with its calibration map.
HEADS_SPEC = "models/heads.json"
HEADS_DIR = "models/heads"  # <name>.so, <name>.lgb.txt, <name>.treelite per head
CALIBRATION = "models/calibration.json"  # artifacts/calibration.py


def head_library(name: str) -> str:
    return f"{HEADS_DIR}/{name}.so"


SHOPPER_SNAPSHOT = "features/shoppers.lmdb"  # single-file LMDB (subdir=False), read-only


def csr(name: str) -> tuple[str, str, str]:
    """(indptr int64 [n+1], indices int32, weights float32) of a CSR table under tables/."""
    return (f"tables/{name}.indptr.npy", f"tables/{name}.indices.npy", f"tables/{name}.weights.npy")


# CSR tables: item -> items, category -> categories / items, region -> items.
COVISIT = "covisit"  # item row -> co-viewed item rows (session window)
COPURCHASE = "copurchase"  # item row -> items bought/carted in the same session
COMPLEMENT_CATEGORIES = "complement_categories"  # category node -> complementary category nodes (lift)
POPULAR_BY_CATEGORY = "popular_by_category"  # category node (every level) -> item rows
POPULAR_BY_REGION = "popular_by_region"  # region code -> item rows
TRENDING_BY_REGION = "trending_by_region"  # region code -> item rows
TRENDING_BY_TOP = "trending_by_top"  # department node -> item rows
POPULAR_GLOBAL = "lists/popular.npy"  # int32 item rows, most popular first
NEW_ARRIVALS = "lists/new_arrivals.npy"  # int32 item rows, newest first

EVAL_REPORT = "eval/report.json"
HEADS_REPORT = "eval/heads.json"  # the heads' held-out calibration, log loss, AUC, reliability tables (builder.heads)
DRIFT_REFERENCE = "monitor/drift.json"  # training histograms for drift monitoring (artifacts.drift; optional part)
