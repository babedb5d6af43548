"""The item tower's metadata path as a bundle file: `item_tower.onnx`, run with ONNX Runtime to
embed a NEW SKU (one that arrives over the inventory feed after the build) exactly the way the
builder embedded the catalog's cold items.

In training an item's vector is L2-normalise(MLP(metadata) + id embedding). Items with too few
training interactions have no id embedding; their bundle vector is L2-normalise(MLP(metadata)),
and that metadata-only function is what this file holds. A new SKU has no id embedding either, so
its vector is directly comparable with the bundle's item vectors (and the user tower's output).

File contract (written by `builder.twotower`, read here; both sides import the names below):

    inputs   category  int64   [B]     category node of the item's full path (vocab.json
                                        categories; for a path the bundle does not know, pass its
                                        deepest known ancestor node, or 0)
             cat_top   int64   [B]     the department: depth-1 ancestor node (0 = unknown)
             brand     int64   [B]     code into vocab.json brands (0 = unknown)
             seller    int64   [B]     code into vocab.json sellers (0 = unknown)
             price     float32 [B]     the catalog `price` column as ingested (items/price.npy: the
                                        list price, before `discount`); NaN = unknown
             text      float32 [B, T]  ONLY when the bundle was trained with text embeddings
                                        (aisle.text_dim > 0): the item's text embedding from the
                                        same encoder as the catalog's; NaN/inf entries count as 0,
                                        exactly as missing entries did in training
    output   item_vec  float32 [B, D]  L2-normalised; same space as embeddings/items.npy

B is dynamic; T and D are fixed in the graph. Everything the builder did to the raw fields happens
INSIDE the graph, so a caller that skips this wrapper still gets the training-time vector:
  - price → log-price quantile bucket: the bucket edges are graph constants (as float32 price
    thresholds, chosen so the float32 comparison reproduces the builder's float64 log1p bucketing
    bit for bit); NaN, negative and infinite prices take the "price unknown" bucket;
  - codes outside [0, vocab size) are mapped to 0 ("unknown");
  - non-finite text entries are mapped to 0.
Embedding rows that no catalog item used (hence never trained: e.g. inner category nodes, or
"unknown" when every catalog item had a brand) were replaced at export by the item-weighted mean
of the trained rows (for a category node: of the item categories in its subtree), so an unknown or
unseen code lands on a neutral "typical" value instead of a random one. Catalog items are not
affected: the vectors of cold catalog items are reproduced within 1e-4 (checked at build time).

The model's metadata_props hold `aisle.item_tower.format`, `aisle.dim`, `aisle.text_dim` (0 when
there is no text input), `aisle.n_categories` (category-node vocab, for both category and
cat_top), `aisle.n_brands`, `aisle.n_sellers`.

Imports numpy, onnxruntime and the standard library only (the engine may not import torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artifacts.onnx_session import open_session

INPUT_NAMES: tuple[str, str, str, str, str] = ("category", "cat_top", "brand", "seller", "price")
TEXT_INPUT = "text"
OUTPUT_NAME = "item_vec"
FORMAT_VERSION = 1

META_FORMAT = "aisle.item_tower.format"
META_DIM = "aisle.dim"
META_TEXT_DIM = "aisle.text_dim"
META_N_CATEGORIES = "aisle.n_categories"
META_N_BRANDS = "aisle.n_brands"
META_N_SELLERS = "aisle.n_sellers"

_CODE_INPUTS = INPUT_NAMES[:4]
_EXPECTED_IO = (
    "expected inputs category, cat_top, brand, seller int64[B], price float32[B] and optionally "
    "text float32[B,T], and output item_vec float32[B,D]"
)


class ItemTowerError(Exception):
    """`item_tower.onnx` is missing, unreadable or incompatible, or the inputs are malformed."""


class ItemTower:
    """One ONNX Runtime session over an item tower file.

    `threads` is ORT's intra-op pool size: keep 1 when several engine workers share the cores.
    Attributes: dim, text_dim (0 = no text input), n_categories, n_brands, n_sellers.
    """

    def __init__(self, path: Path | str, threads: int = 1) -> None:
        self.path = Path(path)
        self._session = open_session(self.path, threads, ItemTowerError, "item tower")
        self.dim, self.text_dim = self._check_io()
        self.n_categories, self.n_brands, self.n_sellers = self._read_metadata()
        self._sizes = (self.n_categories, self.n_categories, self.n_brands, self.n_sellers)
        self._output_names = [OUTPUT_NAME]

    # ---- embedding ----------------------------------------------------------------------------

    def embed(
        self,
        category: np.ndarray,
        cat_top: np.ndarray,
        brand: np.ndarray,
        seller: np.ndarray,
        price: np.ndarray,
        text: np.ndarray | None = None,
    ) -> np.ndarray:
        """Vectors for B items: four integer code arrays [B], price float [B] (NaN = unknown) and,
        when the tower has text (`text_dim` > 0), text float32 [B, text_dim] or None (= no text
        embedding: all zeros, as for a catalog item without one) → float32 [B, dim], L2-normalised.
        Codes outside the vocabularies become 0 ("unknown")."""
        codes = [self._codes(name, value) for name, value in zip(_CODE_INPUTS, (category, cat_top, brand, seller))]
        prices = np.asarray(price)
        if prices.ndim != 1 or not np.issubdtype(prices.dtype, np.number):
            raise ItemTowerError(f"price: expected a float array [B], got dtype {prices.dtype} shape {prices.shape}")
        prices = np.ascontiguousarray(prices, dtype=np.float32)
        batch = len(codes[0])
        lengths = [len(c) for c in codes] + [len(prices)]
        if any(n != batch for n in lengths):
            raise ItemTowerError(
                f"item tower inputs must share the batch size B: category, cat_top, brand, seller, price have lengths {lengths}"
            )
        feeds = {name: value for name, value in zip(INPUT_NAMES, (*codes, prices))}
        if self.text_dim:
            feeds[TEXT_INPUT] = self._text(text, batch)
        elif text is not None:
            raise ItemTowerError(
                f"{self.path}: this item tower was trained without text embeddings (aisle.text_dim=0); pass text=None"
            )
        if batch == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._session.run(self._output_names, feeds)[0]

    def embed_one(
        self,
        category: int,
        cat_top: int,
        brand: int,
        seller: int,
        price: float | None,
        text: np.ndarray | None = None,
    ) -> np.ndarray:
        """One item: scalar codes, price (None or NaN = unknown), text float32 [text_dim] or None →
        float32 [dim], L2-normalised."""
        values = []
        for name, value in zip(_CODE_INPUTS, (category, cat_top, brand, seller)):
            if np.ndim(value) != 0:
                raise ItemTowerError(f"{name}: embed_one takes one integer code, got shape {np.shape(value)}")
            values.append(np.asarray(value).reshape(1))
        if price is None:
            price = np.nan
        if np.ndim(price) != 0:
            raise ItemTowerError(f"price: embed_one takes one number, got shape {np.shape(price)}")
        row = None
        if text is not None:
            row = np.asarray(text)
            if row.ndim != 1:
                raise ItemTowerError(f"text: embed_one takes one embedding [text_dim], got shape {row.shape}")
            row = row.reshape(1, -1)
        return self.embed(*values, np.asarray(price).reshape(1), row)[0]

    # ---- input checks -------------------------------------------------------------------------

    def _codes(self, name: str, value: np.ndarray) -> np.ndarray:
        codes = np.asarray(value)
        if codes.ndim != 1:
            raise ItemTowerError(f"{name}: expected an integer code array [B], got shape {codes.shape}")
        if codes.size and not np.issubdtype(codes.dtype, np.integer):
            raise ItemTowerError(f"{name}: expected integer codes, got dtype {codes.dtype}")
        size = self._sizes[_CODE_INPUTS.index(name)]
        if codes.dtype == np.uint64:  # values ≥ 2**63 would wrap negative: they are out of range anyway
            codes = np.where(codes < np.uint64(size), codes, 0)
        codes = np.array(codes, dtype=np.int64, copy=True)
        codes[(codes < 0) | (codes >= size)] = 0
        return codes

    def _text(self, text: np.ndarray | None, batch: int) -> np.ndarray:
        if text is None:
            return np.zeros((batch, self.text_dim), dtype=np.float32)
        text = np.asarray(text)
        if text.shape != (batch, self.text_dim):
            raise ItemTowerError(
                f"text: expected float32 [B, {self.text_dim}] (B = {batch}, the width the bundle was trained with), "
                f"got shape {text.shape}"
            )
        if not (np.issubdtype(text.dtype, np.floating) or np.issubdtype(text.dtype, np.integer)):
            raise ItemTowerError(f"text: expected float32 embeddings, got dtype {text.dtype}")
        text = np.ascontiguousarray(text, dtype=np.float32)
        if not np.isfinite(text).all():  # the graph maps these to 0 too
            text = np.nan_to_num(text, nan=0.0, posinf=0.0, neginf=0.0)
        return text

    # ---- file checks --------------------------------------------------------------------------

    def _check_io(self) -> tuple[int, int]:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}

        def describe() -> str:
            got_in = ", ".join(f"{i.name} {i.type}{list(i.shape)}" for i in inputs.values())
            got_out = ", ".join(f"{o.name} {o.type}{list(o.shape)}" for o in outputs.values())
            return f"item tower incompatible: {_EXPECTED_IO}; got inputs {got_in} and outputs {got_out} in {self.path}"

        names = set(inputs)
        if names not in (set(INPUT_NAMES), set(INPUT_NAMES) | {TEXT_INPUT}) or OUTPUT_NAME not in outputs:
            raise ItemTowerError(describe())
        out = outputs[OUTPUT_NAME]
        ok = all(inputs[n].type == "tensor(int64)" and len(inputs[n].shape) == 1 for n in _CODE_INPUTS)
        ok = ok and inputs["price"].type == "tensor(float)" and len(inputs["price"].shape) == 1
        ok = ok and out.type == "tensor(float)" and len(out.shape) == 2 and isinstance(out.shape[1], int)
        text_dim = 0
        if ok and TEXT_INPUT in inputs:
            text = inputs[TEXT_INPUT]
            ok = text.type == "tensor(float)" and len(text.shape) == 2 and isinstance(text.shape[1], int) and text.shape[1] > 0
            text_dim = text.shape[1] if ok else 0
        if not ok:
            raise ItemTowerError(describe())
        return out.shape[1], text_dim

    def _read_metadata(self) -> tuple[int, int, int]:
        meta = self._session.get_modelmeta().custom_metadata_map
        fmt = meta.get(META_FORMAT)
        if fmt is None:
            raise ItemTowerError(f"{self.path}: no {META_FORMAT} metadata; the file was not written by the Aisle builder")
        if not fmt.isdigit() or int(fmt) > FORMAT_VERSION:
            raise ItemTowerError(
                f"{self.path}: item tower format {fmt!r} is made by a newer builder (this engine reads ≤ {FORMAT_VERSION})"
            )
        try:
            dims = (int(meta[META_DIM]), int(meta[META_TEXT_DIM]))
            sizes = (int(meta[META_N_CATEGORIES]), int(meta[META_N_BRANDS]), int(meta[META_N_SELLERS]))
        except (KeyError, ValueError) as exc:
            raise ItemTowerError(f"{self.path}: item tower metadata incomplete or corrupt: {exc!r}") from exc
        if dims != (self.dim, self.text_dim) or min(sizes) < 1:
            raise ItemTowerError(
                f"{self.path}: item tower metadata (dim, text_dim) = {dims}, vocab sizes {sizes} disagree with the "
                f"graph's (dim, text_dim) = ({self.dim}, {self.text_dim}); corrupt"
            )
        return sizes
