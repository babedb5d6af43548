"""Two-tower retrieval model: train on the behaviour log, vector the whole catalog, export the user
tower to ONNX (file contract in `artifacts.usertower`) and the item tower's metadata path to ONNX
(`artifacts.itemtower`: how the engine embeds a SKU that arrives after the build).

Item tower: L2-normalise( id embedding + MLP(metadata) ).
  - id embedding: only for items with ≥ `id_min_count` training targets; the rest (cold and new
    items) have none. In training each item's id embedding is zeroed with `id_dropout` (per step,
    without rescaling; candidates of the softmax included) so the metadata path alone learns to
    place items.
  - metadata: embeddings of category node, department (`cat_top`), brand, seller and a log-price
    quantile bucket (NaN price has its own bucket), plus a linear projection of `text_embedding`
    when the store has one; concatenated → Linear → ReLU → Linear.
  - export (`ItemMetadataTower`, item_tower.onnx): L2-normalise(MLP(metadata)), i.e. the vector of
    an item without an id embedding, with the price bucketing and code clamping inside the graph;
    verified against the stored vectors of the catalog's cold items.
User tower (`UserTowerModel`): reads the item tower's OUTPUTS for the L most recent interactions,
newest in the last slot, left-padded (so serving feeds the bundle's item vectors), and [region,
device]. SASRec-style: the item vectors (× √D) go through `blocks` pre-norm transformer blocks of
causal self-attention (`heads` heads, a learned bias per head and slot distance instead of
absolute positions) and a GELU feed-forward layer, with `dropout`; the user vector is
L2-normalise(LayerNorm(state at the newest slot) + Linear(context)). With no history at all the
state is replaced by Linear(context), so a new shopper still gets a vector.

Training data: the positive interactions (click, add to cart, purchase) with ts < until_ts, in each
shopper's time order. Consecutive repeats of the same item by the same shopper (click → cart →
purchase of one SKU) are collapsed to one interaction: the funnel on one SKU says nothing about the
next item, and would otherwise teach the model to retrieve the item just viewed. Every interaction
is a target (the first one of a shopper: of the no-history vector); the newest `max_examples` are
kept. They are cut into windows of L + 1 interactions (`Sequences`), and one forward pass of a
window trains the output at every slot on the next interaction, as in SASRec; since positions are
relative, the output at slot t is exactly what serving computes for that prefix. A step holds
about `batch_size` targets from windows of similar length, trimmed of shared leading padding.

Loss, by size (`uses_full_softmax`), over cosine / temperature, Adam:
  - full softmax: cross-entropy over EVERY catalog item, all item vectors recomputed by the item
    tower at each step (the logits in blocks, never stored: `_CatalogCrossEntropy`), when catalog
    items × targets (the logits of one epoch) is at most `full_softmax_logits`;
  - above that, in-batch sampled softmax over the step's distinct targets, logQ-corrected by each
    item's share of the targets (one column per item, so another row's positive for the same item
    is never a negative); the id embedding table is then sparse (SparseAdam on the rows a step
    touches).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from artifacts import itemtower as item_file
from artifacts.itemtower import ItemTower as OnnxItemTower
from artifacts.schema import EventType
from artifacts.usertower import (
    FORMAT_VERSION,
    INPUT_NAMES,
    META_DIM,
    META_FORMAT,
    META_HISTORY_LEN,
    META_N_DEVICES,
    META_N_REGIONS,
    OUTPUT_NAME,
    UserTower as OnnxUserTower,
)
from builder.config import TwoTowerConfig
from builder.store import Store

Progress = Callable[[str, int, int], None]

ONNX_FILE = "user_tower.onnx"
ITEM_ONNX_FILE = "item_tower.onnx"
ONNX_TOLERANCE = 1e-4  # max abs difference ONNX Runtime vs torch accepted at export
POSITIVE_TYPES = (int(EventType.CLICK), int(EventType.ADD_TO_CART), int(EventType.PURCHASE))
PRICE_BUCKETS = 16  # log-price quantile buckets; bucket PRICE_BUCKETS is "price unknown"
# Additive mask for padding: large but finite, so an all-padding row softmaxes to uniform weights
# over zero vectors instead of NaN (-inf - -inf).
MASK_VALUE = -1e9
CONTEXT_WIDTH = 16  # width of the region and device embeddings each
_ITEM_CHUNK = 65_536  # items per forward pass when vectoring the whole catalog
_LOGIT_BLOCK = (1024, 512)  # users × items per block of the full softmax (2 MB of float32 logits)
_VERIFY_COLD_ITEMS = 8_192  # cold catalog items (a random sample) checked against the exported item tower


class TwoTowerError(Exception):
    """Training or export of the two-tower model cannot produce a usable model."""


@dataclass(frozen=True)
class TwoTowerResult:
    item_vectors: np.ndarray  # float32 [n_items, dim], L2-normalised, every catalog item
    onnx_path: Path
    history_len: int
    dim: int
    n_regions: int  # context vocab sizes the ONNX model was trained with
    n_devices: int
    train_examples: int
    epochs_run: int  # complete passes over the examples
    seconds: float  # whole call: examples, training, item vectors, export, verification
    final_loss: float  # mean loss over the last epoch's batches
    max_abs_diff_onnx_vs_torch: float
    id_items: int = 0  # items that got an id embedding (the rest use metadata alone)
    stopped_by_budget: bool = False  # max_seconds ran out before `epochs`
    train_seconds: float = 0.0
    exporter: str = ""  # "dynamo" or "torchscript"
    item_tower_path: Path | None = None  # out_dir/item_tower.onnx (metadata path, for new SKUs)
    max_abs_diff_item_tower: float = 0.0  # ONNX item tower vs stored cold-item vectors and vs torch
    softmax: str = ""  # "full" (whole catalog) or "sampled" (in-batch, logQ): see uses_full_softmax
    windows: int = 0  # training windows (sequences) per epoch


# ----------------------------------------------------------------------------------------------
# Training examples


@dataclass(frozen=True)
class Interactions:
    """Every shopper's positive interactions before the cut-off, grouped by shopper and in time
    order, consecutive repeats collapsed; `keep` marks the training targets (the newest
    `max_examples`)."""

    item: np.ndarray  # int32 [n] item rows
    start: np.ndarray  # int64 [n] index of the shopper's first interaction
    context: np.ndarray  # int32 [n, 2] region, device codes of the event
    ts: np.ndarray  # int64 [n]
    keep: np.ndarray  # int64 [k] indices of the targets kept, oldest first


def select_interactions(store: Store, until_ts: int, max_examples: int) -> Interactions:
    """Positive interactions before `until_ts` (see the module docstring)."""
    ev = store.events
    picked = np.flatnonzero((ev.ts < until_ts) & np.isin(ev.type, POSITIVE_TYPES))
    # lexsort is stable: ties in (user, ts) keep the log's input order.
    picked = picked[np.lexsort((ev.ts[picked], ev.user_row[picked]))]
    user = ev.user_row[picked]
    item = ev.item_row[picked]
    if len(picked):
        repeat = np.zeros(len(picked), dtype=bool)
        repeat[1:] = (user[1:] == user[:-1]) & (item[1:] == item[:-1])
        picked, user, item = picked[~repeat], user[~repeat], item[~repeat]
    n = len(picked)
    positions = np.arange(n, dtype=np.int64)
    first = np.ones(n, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    start = np.maximum.accumulate(np.where(first, positions, 0)) if n else positions
    ts = ev.ts[picked].astype(np.int64)
    keep = np.argsort(ts, kind="stable")[max(0, n - max_examples) :]  # the newest, oldest first
    context = np.stack([ev.region[picked], ev.device[picked]], axis=1).astype(np.int32)
    return Interactions(item=item.astype(np.int32), start=start, context=context, ts=ts, keep=keep)


@dataclass(frozen=True)
class Examples:
    """One example per training target, oldest first. hist uses -1 for padding; most recent item
    LAST. The per-target view of the training data (the model trains on `Sequences`)."""

    target: np.ndarray  # int32 [N] item rows
    hist: np.ndarray  # int32 [N, L]
    context: np.ndarray  # int64 [N, 2] region, device codes
    ts: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.target)


def build_examples(store: Store, until_ts: int, history_len: int, max_examples: int) -> Examples:
    """One example per positive interaction before `until_ts` (see the module docstring)."""
    inter = select_interactions(store, until_ts, max_examples)
    keep = inter.keep
    source = keep[:, None] + np.arange(-history_len, 0, dtype=np.int64)[None, :]
    valid = source >= inter.start[keep][:, None]
    hist = np.where(valid, inter.item[np.maximum(source, 0)], -1).astype(np.int32)
    return Examples(
        target=inter.item[keep], hist=hist, context=inter.context[keep].astype(np.int64), ts=inter.ts[keep]
    )


@dataclass(frozen=True)
class Sequences:
    """Training windows over the shoppers' interaction sequences, SASRec style. Window w holds
    L + 1 consecutive interactions of one shopper, left-padded with -1: slot t (< L) is input and
    the interaction in slot t + 1 is the target of the output at slot t. A target whose input slot
    is padding is the shopper's first interaction: it trains the no-history (context-only) output.
    Only `counted` targets enter the loss, so every training target is counted exactly once."""

    items: np.ndarray  # int32 [W, L + 1] item rows, -1 = padding; most recent LAST
    counted: np.ndarray  # bool [W, L] target slot t + 1 is a training target of this window
    context: np.ndarray  # int32 [W, L, 2] region, device of the target event of slot t + 1

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_targets(self) -> int:
        return int(self.counted.sum())

    def targets(self) -> np.ndarray:
        """int32 [n_targets] item rows of every counted target (each once)."""
        return self.items[:, 1:][self.counted]


def build_sequences(store: Store, until_ts: int, history_len: int, max_examples: int) -> Sequences:
    """Windows over the same targets as `build_examples` (see `Sequences`).

    A shopper with n interactions gets ceil(n / S) windows ending at n, n - S, n - 2S, …, with
    stride S = max(1, L // 2); the window ending at e counts the targets in [e - S, e), so a target
    in a later window still sees at least L - S + 1 earlier interactions, as it would at serving
    (where the tower reads the newest L). With S = L the early slots of a window would see only the
    window's own items."""
    inter = select_interactions(store, until_ts, max_examples)
    n = len(inter.item)
    length = history_len
    stride = max(1, length // 2)
    is_target = np.zeros(n, dtype=bool)
    is_target[inter.keep] = True
    firsts = np.flatnonzero(inter.start == np.arange(n)) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.append(firsts, n))
    per_user = -(-sizes // stride)
    owner = np.repeat(np.arange(len(firsts)), per_user)
    back = np.arange(len(owner)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    end = sizes[owner] - back * stride  # exclusive end of the window, within the shopper
    within = end[:, None] - length - 1 + np.arange(length + 1)[None, :]  # slot → index within shopper
    valid = within >= 0
    source = firsts[owner][:, None] + np.maximum(within, 0)
    items = np.where(valid, inter.item[source], -1).astype(np.int32)
    counted = valid[:, 1:] & is_target[source[:, 1:]] & (within[:, 1:] >= (end - stride)[:, None])
    used = counted.any(axis=1)
    context = inter.context[source[used][:, 1:]]
    return Sequences(items=items[used], counted=counted[used], context=context)


# ----------------------------------------------------------------------------------------------
# Towers


def price_buckets(price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bucket float32 [n] prices by log-price quantiles → (int32 [n] bucket, float64 edges).

    Buckets are 0..len(edges) for known prices, PRICE_BUCKETS for NaN (and negative) prices."""
    known = np.isfinite(price) & (price >= 0)
    log_price = np.log1p(np.where(known, price, 0.0).astype(np.float64))
    if known.any():
        quantiles = np.linspace(0.0, 1.0, PRICE_BUCKETS + 1)[1:-1]
        edges = np.unique(np.quantile(log_price[known], quantiles))
    else:
        edges = np.zeros(0)
    bucket = np.searchsorted(edges, log_price, side="right").astype(np.int32)
    bucket[~known] = PRICE_BUCKETS
    return bucket, edges


def _normalise(x: torch.Tensor) -> torch.Tensor:
    # rsqrt with an epsilon instead of F.normalize: one plain formula in torch and in the ONNX graph.
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + 1e-12)


def _finite_text(text: np.ndarray) -> np.ndarray:
    """float32 [n, d] text embeddings with missing (NaN / inf) entries as 0, copied only if needed:
    the catalog's embedding matrix can be the largest array of the build."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    chunk = 1 << 18
    if all(np.isfinite(text[start : start + chunk]).all() for start in range(0, len(text), chunk)):
        return text
    return np.nan_to_num(text, nan=0.0, posinf=0.0, neginf=0.0)


class ItemTower(nn.Module):
    """Item rows (int64 [n]) → float32 [n, dim] unit vectors. Item features live in buffers."""

    def __init__(
        self, store: Store, id_slot: np.ndarray, n_id_slots: int, dim: int, hidden: int, sparse_ids: bool = False
    ) -> None:
        super().__init__()
        items = store.items
        n_nodes = max(len(store.categories), int(items.category.max(initial=0)) + 1, int(items.cat_top.max(initial=0)) + 1)
        n_brands = max(len(store.brands), int(items.brand.max(initial=0)) + 1)
        n_sellers = max(len(store.sellers), int(items.seller.max(initial=0)) + 1)
        bucket, _ = price_buckets(items.price)
        field = max(8, hidden // 4)
        # int32 codes: half the memory of int64 for a large catalog; nn.Embedding accepts them.
        for name, codes in (
            ("id_slot", id_slot),
            ("category", items.category),
            ("cat_top", items.cat_top),
            ("brand", items.brand),
            ("seller", items.seller),
            ("price", bucket),
        ):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int32)), persistent=False)
        # slot 0: no id. sparse_ids: a step that touches few rows of a large table updates only
        # those (`_train` gives it SparseAdam) instead of running Adam over every row.
        self.id_embedding = nn.Embedding(n_id_slots + 1, dim, padding_idx=0, sparse=sparse_ids)
        nn.init.normal_(self.id_embedding.weight, std=0.01)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()
        self.category_embedding = nn.Embedding(n_nodes, field)
        self.department_embedding = nn.Embedding(n_nodes, field)
        self.brand_embedding = nn.Embedding(n_brands, field)
        self.seller_embedding = nn.Embedding(n_sellers, field)
        self.price_embedding = nn.Embedding(PRICE_BUCKETS + 1, field)
        n_fields = 5
        self.text_projection: nn.Linear | None = None
        text = items.text_embedding
        if text is not None and text.ndim == 2 and text.shape[1] > 0:
            clean = _finite_text(text)
            self.register_buffer("text", torch.from_numpy(clean), persistent=False)
            self.text_projection = nn.Linear(clean.shape[1], field)
            n_fields += 1
        self.mlp = nn.Sequential(nn.Linear(n_fields * field, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, rows: torch.Tensor, id_keep: torch.Tensor | None = None) -> torch.Tensor:
        """rows int64 [n]; id_keep float32 [n] (1 keeps the id embedding, 0 drops it) or None."""
        fields = [
            self.category_embedding(self.category[rows]),
            self.department_embedding(self.cat_top[rows]),
            self.brand_embedding(self.brand[rows]),
            self.seller_embedding(self.seller[rows]),
            self.price_embedding(self.price[rows]),
        ]
        if self.text_projection is not None:
            fields.append(self.text_projection(self.text[rows]))
        out = self.mlp(torch.cat(fields, dim=-1))
        ids = self.id_embedding(self.id_slot[rows])
        if id_keep is not None:
            ids = ids * id_keep.unsqueeze(-1)
        return _normalise(out + ids)


def _price_thresholds(edges: np.ndarray) -> np.ndarray:
    """float32 [len(edges)] prices t_k such that, for every float32 price p ≥ 0,
    `p >= t_k`  ⇔  `log1p(float64(p)) >= edges[k]`: the bucket of `price_buckets` is then the count
    of thresholds ≤ p, computed in float32 inside the ONNX graph with the builder's exact result."""
    out = np.empty(len(edges), dtype=np.float32)
    for k, edge in enumerate(np.asarray(edges, dtype=np.float64)):
        p = np.float32(min(max(np.expm1(edge), 0.0), np.finfo(np.float32).max))
        lower = np.nextafter(p, np.float32(0))
        while p > 0 and np.log1p(np.float64(lower)) >= edge:
            p, lower = lower, np.nextafter(lower, np.float32(0))
        while np.log1p(np.float64(p)) < edge and np.isfinite(p):
            p = np.nextafter(p, np.float32(np.inf))
        out[k] = p
    return out


def _fill_unused(table: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """Embedding rows that no catalog item uses (never trained) → the item-weighted mean row."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=table.shape[0]).astype(np.float64)
    table = table.detach().clone()
    unused = torch.from_numpy(counts == 0)
    if unused.any() and counts.sum() > 0:
        mean = torch.from_numpy(counts / counts.sum()).to(table.dtype) @ table
        table[unused] = mean
    return table


def _fill_unused_categories(table: torch.Tensor, codes: np.ndarray, parent: np.ndarray) -> torch.Tensor:
    """Category rows no catalog item uses → the item-weighted mean row of the item categories in
    the node's subtree (an inner node stands for its leaves; the root for the whole catalog), or of
    the nearest ancestor that has one."""
    n = table.shape[0]
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=n).astype(np.float64)
    parent = np.asarray(parent, dtype=np.int64)
    up = np.full(n, -1, dtype=np.int64)  # nodes beyond the tree (codes past the vocab) hang off nothing
    up[: min(n, len(parent))] = parent[:n]
    up[(up < 0) | (up >= n)] = -1
    up[np.arange(n) == up] = -1
    weights = table.detach().to(torch.float64).numpy()
    sub_sum = np.zeros_like(weights)
    sub_count = np.zeros(n)
    for node in np.flatnonzero(counts):
        a, steps = int(node), 0
        while a >= 0 and steps <= n:  # steps: a malformed (cyclic) parent array cannot loop forever
            sub_sum[a] += counts[node] * weights[node]
            sub_count[a] += counts[node]
            a, steps = int(up[a]), steps + 1
    total = counts.sum()
    overall = (counts @ weights) / total if total > 0 else np.zeros(weights.shape[1])
    table = table.detach().clone()
    for node in np.flatnonzero(counts == 0):
        a, steps = int(node), 0
        while a >= 0 and sub_count[a] == 0 and steps <= n:
            a, steps = int(up[a]), steps + 1
        row = sub_sum[a] / sub_count[a] if a >= 0 and sub_count[a] > 0 else overall
        table[node] = torch.from_numpy(row).to(table.dtype)
    return table


class ItemMetadataTower(nn.Module):
    """The exported item tower for items WITHOUT an id embedding (cold catalog items, new SKUs):
    (category, cat_top, brand, seller int64 [B], price float32 [B][, text float32 [B, T]]) →
    L2-normalise(MLP(fields)) float32 [B, dim] (file contract: `artifacts.itemtower`).

    A frozen copy of a trained `ItemTower`'s metadata path. Raw fields go in: the graph buckets the
    price (float32 thresholds equivalent to `price_buckets`' edges), maps out-of-range codes to 0 and
    non-finite text to 0. Embedding rows never used by a catalog item are replaced by trained means
    (`_fill_unused`, `_fill_unused_categories`), which leaves every catalog item's vector unchanged.
    Traceable by torch.onnx (no data-dependent Python control flow).
    """

    def __init__(self, items: ItemTower, store: Store) -> None:
        super().__init__()
        cat = store.items
        _, edges = price_buckets(cat.price)

        def frozen(table: torch.Tensor) -> nn.Embedding:
            return nn.Embedding.from_pretrained(table, freeze=True)

        self.category_embedding = frozen(
            _fill_unused_categories(items.category_embedding.weight, cat.category, store.categories.parent)
        )
        self.department_embedding = frozen(_fill_unused(items.department_embedding.weight, cat.cat_top))
        self.brand_embedding = frozen(_fill_unused(items.brand_embedding.weight, cat.brand))
        self.seller_embedding = frozen(_fill_unused(items.seller_embedding.weight, cat.seller))
        self.price_embedding = frozen(_fill_unused(items.price_embedding.weight, items.price.numpy()))
        self.n_categories = self.category_embedding.num_embeddings
        self.n_brands = self.brand_embedding.num_embeddings
        self.n_sellers = self.seller_embedding.num_embeddings
        self.dim = items.id_embedding.embedding_dim
        self.text_dim = 0
        self.text_projection: nn.Linear | None = None
        if items.text_projection is not None:
            self.text_projection = copy.deepcopy(items.text_projection)
            self.text_dim = self.text_projection.in_features
        self.mlp = copy.deepcopy(items.mlp)
        for p in self.parameters():
            p.requires_grad_(False)
        # No known price: one unreachable threshold keeps the graph's reduction non-empty (bucket 0).
        thresholds = _price_thresholds(edges) if len(edges) else np.array([np.inf], dtype=np.float32)
        self.register_buffer("price_thresholds", torch.from_numpy(thresholds))

    @staticmethod
    def _clamp(codes: torch.Tensor, size: int) -> torch.Tensor:
        return torch.where((codes >= 0) & (codes < size), codes, torch.zeros_like(codes))

    def forward(
        self,
        category: torch.Tensor,
        cat_top: torch.Tensor,
        brand: torch.Tensor,
        seller: torch.Tensor,
        price: torch.Tensor,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        bucket = (price.unsqueeze(-1) >= self.price_thresholds).sum(dim=-1)
        known = (price >= 0.0) & (price <= float(np.finfo(np.float32).max))  # False for NaN and inf
        bucket = torch.where(known, bucket, torch.full_like(bucket, PRICE_BUCKETS))
        fields = [
            self.category_embedding(self._clamp(category, self.n_categories)),
            self.department_embedding(self._clamp(cat_top, self.n_categories)),
            self.brand_embedding(self._clamp(brand, self.n_brands)),
            self.seller_embedding(self._clamp(seller, self.n_sellers)),
            self.price_embedding(bucket),
        ]
        if self.text_projection is not None:
            if text is None:
                raise TwoTowerError("this item tower was trained with text embeddings: pass text [B, T]")
            text = torch.where(torch.isfinite(text), text, torch.zeros_like(text))
            fields.append(self.text_projection(text))
        return _normalise(self.mlp(torch.cat(fields, dim=-1)))

    def example_inputs(self, batch: int = 3) -> tuple[torch.Tensor, ...]:
        codes = torch.zeros(batch, dtype=torch.int64)
        inputs = (codes, codes.clone(), codes.clone(), codes.clone(), torch.ones(batch))
        if self.text_projection is not None:
            inputs += (torch.zeros(batch, self.text_dim),)
        return inputs


class _CausalBlock(nn.Module):
    """Pre-norm transformer block: causal multi-head self-attention with a learned bias per head
    and distance (query slot − key slot), then a feed-forward layer; both residual."""

    def __init__(self, dim: int, heads: int, hidden: int, history_len: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)
        self.distance_bias = nn.Parameter(torch.zeros(heads, history_len))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """x [B, W, D] (W ≤ L slots); mask_bias [B, 1, W, W] (0 or MASK_VALUE); distance int64 [W, W]."""
        length, heads, head_dim = x.shape[1], self.heads, self.head_dim
        qkv = self.qkv(self.attention_norm(x)).reshape(-1, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim)) + mask_bias + self.distance_bias[:, distance]
        weights = self.dropout(torch.softmax(logits, dim=-1))
        y = (weights @ v).transpose(1, 2).reshape(-1, length, heads * head_dim)
        x = x + self.dropout(self.attention_out(y))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class UserTowerModel(nn.Module):
    """(hist float32 [B,L,D], hist_mask float32 [B,L], context int64 [B,2]) → float32 [B,D].

    A SASRec-style causal transformer over the history's item vectors; the user vector is read at
    the newest slot (L − 1). Positions enter only as a learned attention bias per (head, distance
    between slots), so the output at a slot depends on the items up to it and their recency, not
    on the slot: training reads every slot of a left-padded window (`sequence` + `readout`) and
    each slot's output is exactly what serving computes when that prefix is the newest history.
    A history that is empty (the newest slot is padding) gives a vector from the context alone.

    The exported graph; it must stay traceable by torch.onnx (no data-dependent Python control flow).
    """

    def __init__(
        self,
        dim: int,
        history_len: int,
        hidden: int,
        n_regions: int,
        n_devices: int,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise TwoTowerError(f"dim {dim} is not a multiple of heads {heads}")
        self.n_regions = n_regions
        self.n_devices = n_devices
        self.history_len = history_len
        self.dim = dim
        # Item vectors are unit length; √D puts their coordinates on the scale of the layers' N(0, 1).
        self.input_scale = math.sqrt(dim)
        slots = torch.arange(history_len)
        offset = slots[:, None] - slots[None, :]
        # Future slots (offset < 0) are masked by `causal`; clamping only keeps their index valid.
        self.register_buffer("distance", offset.clamp(min=0), persistent=False)
        self.register_buffer("causal", torch.where(offset < 0, MASK_VALUE, 0.0).float(), persistent=False)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_CausalBlock(dim, heads, hidden, history_len, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(dim)
        self.region_embedding = nn.Embedding(n_regions, CONTEXT_WIDTH)
        self.device_embedding = nn.Embedding(n_devices, CONTEXT_WIDTH)
        self.context_shift = nn.Linear(2 * CONTEXT_WIDTH, dim)
        self.no_history = nn.Linear(2 * CONTEXT_WIDTH, dim)

    def sequence(self, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        """States float32 [B, W, D] of every slot (zero at padding slots) of hist [B, W, D],
        hist_mask [B, W]. W ≤ L: training drops the leading slots that are padding in the whole
        batch, which changes nothing (positions are relative) and saves their cost."""
        width = hist.shape[1]
        distance = self.distance[:width, :width]
        mask = hist_mask.unsqueeze(-1)
        x = self.input_dropout(hist * mask * self.input_scale)
        # A padding key is never attended to; a padding query (every key masked) softmaxes to finite
        # weights over masked keys and is zeroed below.
        mask_bias = (self.causal[:width, :width] + (1.0 - hist_mask).unsqueeze(1) * MASK_VALUE).unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask_bias, distance) * mask
        return x

    def readout(self, state: torch.Tensor, real: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """state float32 [N, D] of one slot each, real float32 [N] (1 when the slot holds an item),
        context int64 [N, 2] → L2-normalised user vectors float32 [N, D]."""
        region, device = context[:, 0], context[:, 1]
        # Unknown codes → 0 inside the graph too, so a caller that skips the wrapper cannot make
        # ORT's Gather fail on an out-of-range index.
        region = torch.where((region >= 0) & (region < self.n_regions), region, torch.zeros_like(region))
        device = torch.where((device >= 0) & (device < self.n_devices), device, torch.zeros_like(device))
        ctx = torch.cat([self.region_embedding(region), self.device_embedding(device)], dim=-1)
        real = real.unsqueeze(-1)
        out = real * self.final_norm(state) + (1.0 - real) * self.no_history(ctx)
        return _normalise(out + self.context_shift(ctx))

    def forward(self, hist: torch.Tensor, hist_mask: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        states = self.sequence(hist, hist_mask)
        return self.readout(states[:, -1], hist_mask[:, -1], context)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class _Batch:
    """One step's windows, trimmed to the slots any of them uses, flattened to counted targets."""

    inputs: np.ndarray  # int32 [B, W] item rows, -1 = padding (W ≤ L: the newest W slots)
    window: np.ndarray  # int64 [P] window of each counted target
    slot: np.ndarray  # int64 [P] input slot (of W) whose output predicts the target
    target: np.ndarray  # int64 [P] item rows
    context: np.ndarray  # int64 [P, 2]


def _spans(seq: Sequences) -> np.ndarray:
    """int64 [W]: trailing slots each window needs (its real inputs, plus the padding slot of a
    counted first-interaction target)."""
    needed = (seq.items[:, :-1] >= 0) | seq.counted
    return needed.shape[1] - np.argmax(needed, axis=1)


def _take_batch(seq: Sequences, idx: np.ndarray, width: int) -> _Batch:
    skip = seq.items.shape[1] - 1 - width
    items = seq.items[idx, skip:]
    window, slot = np.nonzero(seq.counted[idx, skip:])
    return _Batch(
        inputs=items[:, :-1],
        window=window,
        slot=slot,
        target=items[window, slot + 1].astype(np.int64),
        context=seq.context[idx, skip:][window, slot].astype(np.int64),
    )


def _epoch_batches(spans: np.ndarray, targets: np.ndarray, budget: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Window indices per step, in random order: windows of similar span share a step (so trimming
    saves most padding) and each step holds about `budget` counted targets."""
    order = rng.permutation(len(spans))
    order = order[np.argsort(spans[order], kind="stable")]
    step_of = (np.cumsum(targets[order]) - 1) // max(1, budget)
    cuts = np.flatnonzero(np.diff(step_of)) + 1
    batches = np.split(order, cuts)
    return [batches[i] for i in rng.permutation(len(batches))]


def _user_vectors(users: UserTowerModel, hist_vecs: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """float32 [P, D]: the user vector at the slot of each counted target."""
    real = torch.from_numpy((batch.inputs >= 0).astype(np.float32))
    states = users.sequence(hist_vecs, real)
    window, slot = torch.from_numpy(batch.window), torch.from_numpy(batch.slot)
    return users.readout(states[window, slot], real[window, slot], torch.from_numpy(batch.context))


def _id_keep(rows: np.ndarray, id_known: np.ndarray, rate: float, rng: np.random.Generator) -> torch.Tensor:
    """float32 [n]: 0 drops the row's id embedding this step (id dropout), else 1."""
    drop = id_known[rows] & (rng.random(len(rows)) < rate)
    return torch.from_numpy(np.where(drop, 0.0, 1.0).astype(np.float32))


def _full_softmax_loss(
    items: ItemTower,
    users: UserTowerModel,
    batch: _Batch,
    id_known: np.ndarray,
    config: TwoTowerConfig,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Cross-entropy over the whole catalog: every item goes through the item tower this step."""
    n_items = len(id_known)
    every = np.arange(n_items, dtype=np.int64)
    vectors = items(torch.from_numpy(every), _id_keep(every, id_known, config.id_dropout, rng))
    padded = torch.cat([vectors, vectors.new_zeros(1, vectors.shape[1])])  # row n_items: padding
    rows = np.where(batch.inputs >= 0, batch.inputs, n_items).astype(np.int64)
    user_vecs = _user_vectors(users, padded[torch.from_numpy(rows)], batch)
    return _CatalogCrossEntropy.apply(user_vecs / config.temperature, vectors, torch.from_numpy(batch.target))


class _CatalogCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of users float32 [P, D] · items float32 [N, D]ᵀ against target int64 [P].

    The [P, N] logits (hundreds of MB, and every pass over them bound by memory bandwidth) are never
    stored: the forward pass sums exp(logit − bound) block by block (_LOGIT_BLOCK users × items,
    a block fits in a core's L2 cache) and the backward pass recomputes each block.
    bound_p = |u_p| · max |v| ≥ every logit of row p (Cauchy–Schwarz), so no running maximum is
    needed and nothing overflows. The matrix products run in `_logit_dtype()` (bfloat16 where the
    CPU has native bfloat16 dot products); sums, exponentials and gradients are float32. Together
    about 4× faster than `F.cross_entropy` over the full matrix on this machine."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, users: torch.Tensor, items: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        users, items = users.detach(), items.detach()
        dtype = _logit_dtype()
        low_users, low_items = users.to(dtype), items.to(dtype)
        bound = users.norm(dim=1) * items.norm(dim=1).max()
        total = torch.zeros(len(users))
        rows, cols = _LOGIT_BLOCK
        for r in range(0, len(users), rows):
            block_users, block_bound = low_users[r : r + rows], bound[r : r + rows, None]
            for c in range(0, len(items), cols):
                logits = (block_users @ low_items[c : c + cols].T).float()
                total[r : r + rows] += logits.sub_(block_bound).exp_().sum(dim=1)
        lse = total.log() + bound
        if not torch.isfinite(lse).all():
            # A row far from every item underflowed (only with a very low temperature): exactly, then.
            lse = torch.logsumexp(users @ items.T, dim=1)
        ctx.save_for_backward(users, items, target, lse)
        return (lse - (users * items[target]).sum(dim=1)).mean()

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        users, items, target, lse = ctx.saved_tensors
        scale = grad / len(users)
        dtype = _logit_dtype()
        low_users, low_items = users.to(dtype), items.to(dtype)
        grad_users = torch.zeros_like(users)
        grad_items = torch.zeros_like(items)
        rows, cols = _LOGIT_BLOCK
        for r in range(0, len(users), rows):
            block_users, block_lse = low_users[r : r + rows], lse[r : r + rows, None]
            for c in range(0, len(items), cols):
                part = low_items[c : c + cols]
                prob = (block_users @ part.T).float().sub_(block_lse).exp_().mul_(scale).to(dtype)
                grad_users[r : r + rows] += (prob @ part).float()
                grad_items[c : c + cols] += (block_users.T @ prob).T.float()
        grad_users -= scale * items[target]
        grad_items.index_add_(0, target, -scale * users)
        return grad_users, grad_items, None


def _logit_dtype() -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively (AVX512-BF16 or AMX), else float32 (bfloat16
    emulated in float32 would only lose precision). torch has no public query: a private one,
    guarded, with float32 as the answer when it is missing."""
    try:
        capability = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return torch.float32
    native = capability.get("avx512_bf16") or capability.get("amx_bf16")
    return torch.bfloat16 if native else torch.float32


def _sampled_softmax_loss(
    items: ItemTower,
    users: UserTowerModel,
    batch: _Batch,
    log_q: torch.Tensor,
    id_known: np.ndarray,
    config: TwoTowerConfig,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Softmax over the batch's distinct targets, logQ-corrected by each item's share of the
    targets. A target is one column, so another row's positive for the same item (an accidental
    hit) cannot be a negative."""
    real = batch.inputs >= 0
    candidates, target_col = np.unique(batch.target, return_inverse=True)
    # The item tower runs once over the step's distinct items; candidates and histories gather from it.
    unique, inverse = np.unique(np.concatenate([candidates, batch.inputs[real]]), return_inverse=True)
    vectors = items(torch.from_numpy(unique.astype(np.int64)), _id_keep(unique, id_known, config.id_dropout, rng))
    padded = torch.cat([vectors, vectors.new_zeros(1, vectors.shape[1])])  # last row: padding
    rows = np.full(batch.inputs.shape, len(unique), dtype=np.int64)
    rows[real] = inverse[len(candidates) :]
    user_vecs = _user_vectors(users, padded[torch.from_numpy(rows)], batch)
    candidate_t = torch.from_numpy(candidates.astype(np.int64))
    candidate_vecs = vectors[torch.from_numpy(inverse[: len(candidates)].astype(np.int64))]
    logits = user_vecs @ candidate_vecs.T / config.temperature - log_q[candidate_t].unsqueeze(0)
    return F.cross_entropy(logits, torch.from_numpy(target_col.astype(np.int64)))


def uses_full_softmax(n_items: int, n_targets: int, config: TwoTowerConfig) -> bool:
    """The whole catalog is the softmax when one epoch of it is affordable: its cost (item tower
    over the catalog at every step, plus the logits) grows with items × targets. Amazon Beauty
    (12k items × 176k targets, 2.1e9) and Sports (18k × 261k, 4.8e9) train this way; the
    synthetic `1m` store (1M × ~650k) takes the sampled softmax, whose cost grows with targets only."""
    return n_items * n_targets <= config.full_softmax_logits


def item_vectors(items: ItemTower, n_items: int, progress: Progress | None = None) -> np.ndarray:
    """Every item through the item tower (ids kept) → float32 [n_items, dim], C-contiguous."""
    dim = items.id_embedding.embedding_dim
    out = np.empty((n_items, dim), dtype=np.float32)
    items.eval()
    with torch.no_grad():
        for start in range(0, n_items, _ITEM_CHUNK):
            stop = min(n_items, start + _ITEM_CHUNK)
            out[start:stop] = items(torch.arange(start, stop, dtype=torch.int64)).numpy()
            if progress is not None:
                progress("two_tower: item vectors", stop, n_items)
    return out


def train_two_tower(
    store: Store, config: TwoTowerConfig, until_ts: int, out_dir: Path, progress: Progress | None = None
) -> TwoTowerResult:
    """Train on events with ts < until_ts; write out_dir/user_tower.onnx and out_dir/item_tower.onnx;
    vector every item.

    Deterministic for a given store, config and seed (on one thread and one kind of CPU: torch's
    multi-threaded reductions may differ in the last bits, and the full softmax multiplies in
    bfloat16 only where the CPU does so natively). Raises TwoTowerError when there is nothing to train on
    or an exported graph disagrees with torch (or, for the item tower, with the stored vectors of
    the cold items) by more than ONNX_TOLERANCE.
    """
    started = time.perf_counter()
    n_items = len(store.items)
    if n_items == 0:
        raise TwoTowerError("the catalog is empty: no item vectors to train")
    seq = build_sequences(store, until_ts, config.history_len, config.max_examples)
    targets = seq.targets()
    if len(targets) < 2:
        raise TwoTowerError(
            f"only {len(targets)} click/add_to_cart/purchase events before until_ts={until_ts}; "
            "the two-tower model needs at least 2 (check the cut-off and the event types)"
        )
    target_count = np.bincount(targets, minlength=n_items)
    id_known = target_count >= config.id_min_count
    id_slot = np.zeros(n_items, dtype=np.int64)
    id_slot[id_known] = np.arange(1, int(id_known.sum()) + 1)
    # Codes beyond the vocab (a store whose tuples are shorter than its codes) still need a row.
    n_regions = max(len(store.regions), int(seq.context[..., 0].max()) + 1, 1)
    n_devices = max(len(store.devices), int(seq.context[..., 1].max()) + 1, 1)
    log_q = torch.from_numpy(np.log(np.maximum(target_count, 1) / len(targets)).astype(np.float32))
    full = uses_full_softmax(n_items, len(targets), config)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            # The sampled softmax touches a step's items only: sparse id updates (the full softmax
            # touches every item at every step, where dense Adam is the cheaper one).
            items = ItemTower(store, id_slot, int(id_known.sum()), config.dim, config.hidden, sparse_ids=not full)
            users = UserTowerModel(
                config.dim, config.history_len, config.hidden, n_regions, n_devices,
                config.blocks, config.heads, config.dropout,
            )  # fmt: skip

            def loss_of(batch: _Batch, rng: np.random.Generator) -> torch.Tensor:
                if full:
                    return _full_softmax_loss(items, users, batch, id_known, config, rng)
                return _sampled_softmax_loss(items, users, batch, log_q, id_known, config, rng)

            train_started = time.perf_counter()
            epochs_run, final_loss, stopped = _train(items, users, seq, loss_of, config, progress)
            train_seconds = time.perf_counter() - train_started
            vectors = item_vectors(items, n_items, progress)
            if not np.isfinite(vectors).all():
                raise TwoTowerError("training diverged: non-finite item vectors (lower learning_rate or raise temperature)")
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            onnx_path = out_dir / ONNX_FILE
            users.eval()
            if progress is not None:
                progress("two_tower: export onnx", 0, 1)
            exporter = export_user_tower(users, config.history_len, config.dim, onnx_path)
            if progress is not None:
                progress("two_tower: export onnx", 1, 1)
                progress("two_tower: verify onnx", 0, 1)
            diff = verify_user_tower(users, onnx_path, vectors, seq, config.seed)
            if progress is not None:
                progress("two_tower: verify onnx", 1, 1)
                progress("two_tower: export item tower", 0, 1)
            metadata_tower = ItemMetadataTower(items, store).eval()
            item_onnx_path = out_dir / ITEM_ONNX_FILE
            export_item_tower(metadata_tower, item_onnx_path)
            if progress is not None:
                progress("two_tower: export item tower", 1, 1)
                progress("two_tower: verify item tower", 0, 1)
            item_diff = verify_item_tower(metadata_tower, item_onnx_path, vectors, store, ~id_known, config.seed)
            if progress is not None:
                progress("two_tower: verify item tower", 1, 1)
    finally:
        torch.set_num_threads(previous_threads)
    return TwoTowerResult(
        item_vectors=vectors,
        onnx_path=onnx_path,
        history_len=config.history_len,
        dim=config.dim,
        n_regions=n_regions,
        n_devices=n_devices,
        train_examples=len(targets),
        epochs_run=epochs_run,
        seconds=time.perf_counter() - started,
        final_loss=final_loss,
        max_abs_diff_onnx_vs_torch=diff,
        id_items=int(id_known.sum()),
        stopped_by_budget=stopped,
        train_seconds=train_seconds,
        exporter=exporter,
        item_tower_path=item_onnx_path,
        max_abs_diff_item_tower=item_diff,
        softmax="full" if full else "sampled",
        windows=len(seq),
    )


def _optimisers(items: ItemTower, users: UserTowerModel, learning_rate: float) -> list[torch.optim.Optimizer]:
    """Adam for every parameter; SparseAdam for a sparse id embedding table (rows a step did not
    touch keep their moments: the usual "lazy Adam" of large embedding tables)."""
    ids = items.id_embedding.weight
    sparse = [ids] if items.id_embedding.sparse else []
    dense = [p for p in (*items.parameters(), *users.parameters()) if all(p is not q for q in sparse)]
    out: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=learning_rate)]
    if sparse:
        out.append(torch.optim.SparseAdam(sparse, lr=learning_rate))
    return out


def _train(
    items: ItemTower,
    users: UserTowerModel,
    seq: Sequences,
    loss_of: Callable[[_Batch, np.random.Generator], torch.Tensor],
    config: TwoTowerConfig,
    progress: Progress | None,
) -> tuple[int, float, bool]:
    """Adam over shuffled batches of windows → (complete epochs, mean loss of the last epoch,
    budget hit)."""
    rng = np.random.default_rng(config.seed)
    optimisers = _optimisers(items, users, config.learning_rate)
    spans = _spans(seq)
    per_window = seq.counted.sum(axis=1)
    steps = math.ceil(int(per_window.sum()) / max(1, config.batch_size))  # about; for progress
    deadline = time.perf_counter() + config.max_seconds
    items.train()
    users.train()
    epochs_run, final_loss = 0, float("nan")
    for epoch in range(config.epochs):
        if epoch > 0 and time.perf_counter() > deadline:
            return epochs_run, final_loss, True
        batches = _epoch_batches(spans, per_window, config.batch_size, rng)
        total, count = 0.0, 0
        for step, idx in enumerate(batches):
            loss = loss_of(_take_batch(seq, idx, int(spans[idx].max())), rng)
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            loss.backward()
            for optimiser in optimisers:
                optimiser.step()
            total += float(loss.detach())
            count += 1
            if progress is not None:
                progress("two_tower: train", min(epoch * steps + step + 1, config.epochs * steps), config.epochs * steps)
            # The budget is wall-clock: one epoch over millions of windows may exceed it alone,
            # so stop at the batch boundary, keeping at least one batch of training.
            if step + 1 < len(batches) and time.perf_counter() > deadline:
                return epochs_run, total / max(count, 1), True
        epochs_run += 1
        final_loss = total / max(count, 1)
    return epochs_run, final_loss, False


# ----------------------------------------------------------------------------------------------
# ONNX export and verification


def export_user_tower(users: UserTowerModel, history_len: int, dim: int, path: Path) -> str:
    """Write the user tower as one self-contained ONNX file with a dynamic batch; → exporter used.

    torch 2.13's default (dynamo) exporter is tried first; the TorchScript exporter, deprecated but
    reliable for this plain graph, is the fallback (e.g. when onnxscript is missing)."""
    example = (
        torch.zeros(3, history_len, dim),
        torch.ones(3, history_len),
        torch.zeros(3, 2, dtype=torch.int64),
    )
    path.unlink(missing_ok=True)
    exporter = "dynamo"
    try:
        _export_dynamo(users, example, path)
    except Exception as first:  # the exporter raises many types; the fallback reports both
        exporter = "torchscript"
        try:
            _export_torchscript(users, example, path)
        except Exception as second:
            raise TwoTowerError(f"ONNX export failed: dynamo: {first!r}; torchscript: {second!r}") from second
    meta = {
        META_FORMAT: str(FORMAT_VERSION),
        META_HISTORY_LEN: str(history_len),
        META_DIM: str(dim),
        META_N_REGIONS: str(users.n_regions),
        META_N_DEVICES: str(users.n_devices),
        "aisle.exporter": exporter,
    }
    _finish_onnx(path, meta)
    return exporter


def export_item_tower(tower: ItemMetadataTower, path: Path) -> str:
    """Write the metadata-only item tower as one self-contained ONNX file with a dynamic batch
    (contract: `artifacts.itemtower`); → exporter used (dynamo first, TorchScript as fallback)."""
    example = tower.example_inputs()
    names = list(item_file.INPUT_NAMES) + ([item_file.TEXT_INPUT] if tower.text_projection is not None else [])
    path.unlink(missing_ok=True)
    exporter = "dynamo"
    try:
        _export_dynamo(tower, example, path, names, item_file.OUTPUT_NAME)
    except Exception as first:  # the exporter raises many types; the fallback reports both
        exporter = "torchscript"
        try:
            _export_torchscript(tower, example, path, names, item_file.OUTPUT_NAME)
        except Exception as second:
            raise TwoTowerError(f"item tower ONNX export failed: dynamo: {first!r}; torchscript: {second!r}") from second
    meta = {
        item_file.META_FORMAT: str(item_file.FORMAT_VERSION),
        item_file.META_DIM: str(tower.dim),
        item_file.META_TEXT_DIM: str(tower.text_dim),
        item_file.META_N_CATEGORIES: str(tower.n_categories),
        item_file.META_N_BRANDS: str(tower.n_brands),
        item_file.META_N_SELLERS: str(tower.n_sellers),
        "aisle.price_buckets": str(PRICE_BUCKETS),  # informative: bucketing happens inside the graph
        "aisle.exporter": exporter,
    }
    _finish_onnx(path, meta)
    return exporter


def _finish_onnx(path: Path, meta: dict[str, str]) -> None:
    """Check the exported graph, replace its metadata_props with `meta`, save it as one file."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(path), save_as_external_data=False)
    for stray in path.parent.glob(path.name + ".data"):  # dynamo writes one when weights are large
        stray.unlink()


def _export_dynamo(
    users: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str] | tuple[str, ...] = INPUT_NAMES,
    output_name: str = OUTPUT_NAME,
) -> None:
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # Noise from the exporter itself (renamed shared axis, pytree deprecations), not our model.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        onnx_logger = logging.getLogger("torch.onnx")
        level = onnx_logger.level
        onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" lines
        try:
            torch.onnx.export(
                users,
                example,
                str(path),
                dynamo=True,
                external_data=False,
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_shapes=tuple({0: batch} for _ in example),
                verbose=False,
            )
        finally:
            onnx_logger.setLevel(level)


def _export_torchscript(
    users: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str] | tuple[str, ...] = INPUT_NAMES,
    output_name: str = OUTPUT_NAME,
) -> None:
    axes = {name: {0: "batch"} for name in (*input_names, output_name)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            users,
            example,
            str(path),
            dynamo=False,
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_axes=axes,
            opset_version=17,
        )


def verify_user_tower(
    users: UserTowerModel, path: Path, vectors: np.ndarray, seq: Sequences, seed: int
) -> float:
    """Max abs difference between ONNX Runtime (through the serving wrapper) and torch on random
    inputs (batch 1 and 17, all-padding and out-of-vocabulary rows included) and on 64 real
    training windows built from the final item vectors. Raises TwoTowerError above ONNX_TOLERANCE."""
    tower = OnnxUserTower(path, threads=1)
    if (tower.history_len, tower.dim) != (users.history_len, users.dim):
        raise TwoTowerError(f"{path}: exported [L, D] = {(tower.history_len, tower.dim)}, model {(users.history_len, users.dim)}")
    rng = np.random.default_rng(seed)
    length, dim = tower.history_len, tower.dim
    cases = []
    for b in (1, 17):
        hist = rng.standard_normal((b, length, dim)).astype(np.float32)
        hist /= np.linalg.norm(hist, axis=-1, keepdims=True)
        mask = (rng.random((b, length)) < 0.6).astype(np.float32)
        mask[0] = 0.0  # no history
        hist *= mask[..., None]
        context = np.stack(
            [rng.integers(0, users.n_regions + 2, b), rng.integers(0, users.n_devices + 2, b)], axis=1
        ).astype(np.int64)
        cases.append((hist, mask, context))
    sample = rng.choice(len(seq), min(len(seq), 64), replace=False)
    real_hist = seq.items[sample, 1:]  # the window's newest L items as one serving history
    real_mask = (real_hist >= 0).astype(np.float32)
    real_context = seq.context[sample, -1].astype(np.int64)
    cases.append((vectors[np.maximum(real_hist, 0)] * real_mask[..., None], real_mask, real_context))

    worst = 0.0
    with torch.no_grad():
        for hist, mask, context in cases:
            expected = users(torch.from_numpy(hist), torch.from_numpy(mask), torch.from_numpy(context)).numpy()
            got = tower.encode(hist, mask, context)
            if not np.isfinite(got).all():
                raise TwoTowerError(f"{path}: ONNX user tower gives non-finite vectors")
            worst = max(worst, float(np.abs(got - expected).max()))
    if worst > ONNX_TOLERANCE:
        raise TwoTowerError(f"{path}: ONNX Runtime differs from torch by {worst:.3g} (> {ONNX_TOLERANCE})")
    return worst


def verify_item_tower(
    tower: ItemMetadataTower,
    path: Path,
    vectors: np.ndarray,
    store: Store,
    cold: np.ndarray,
    seed: int,
) -> float:
    """Max abs difference of the ONNX item tower (through the serving wrapper) from
      - the stored vectors of a random sample of ≤ _VERIFY_COLD_ITEMS cold items (bool [n_items]
        `cold`: no id embedding), fed their raw catalog fields, and
      - the torch `ItemMetadataTower` on warm items' fields and on random inputs (batch 1 and 17)
        with out-of-range codes, NaN / negative / infinite prices and non-finite text.
    Raises TwoTowerError above ONNX_TOLERANCE or on non-finite output."""
    onnx_tower = OnnxItemTower(path, threads=1)
    if (onnx_tower.dim, onnx_tower.text_dim) != (tower.dim, tower.text_dim):
        raise TwoTowerError(
            f"{path}: exported (dim, text_dim) = {(onnx_tower.dim, onnx_tower.text_dim)}, model {(tower.dim, tower.text_dim)}"
        )
    items = store.items
    rng = np.random.default_rng(seed)
    has_text = tower.text_projection is not None

    def fields(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        out = (items.category[rows], items.cat_top[rows], items.brand[rows], items.seller[rows], items.price[rows])
        return out + ((items.text_embedding[rows],) if has_text else ())

    def run(inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        got = onnx_tower.embed(*inputs[:5], inputs[5] if has_text else None)
        if not np.isfinite(got).all():
            raise TwoTowerError(f"{path}: ONNX item tower gives non-finite vectors")
        return got

    def torch_vectors(inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        tensors = [torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in inputs[:4]]
        tensors += [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in inputs[4:]]
        with torch.no_grad():
            return tower(*tensors).numpy()

    worst_cold = 0.0
    cold_rows = np.flatnonzero(cold)
    if len(cold_rows) > _VERIFY_COLD_ITEMS:
        cold_rows = np.sort(rng.choice(cold_rows, _VERIFY_COLD_ITEMS, replace=False))
    if len(cold_rows):
        worst_cold = float(np.abs(run(fields(cold_rows)) - vectors[cold_rows]).max())
    if worst_cold > ONNX_TOLERANCE:
        raise TwoTowerError(
            f"{path}: ONNX item tower differs from the stored vectors of cold items by {worst_cold:.3g} (> {ONNX_TOLERANCE})"
        )

    cases = []
    warm_rows = np.flatnonzero(~cold)
    if len(warm_rows):
        cases.append(fields(np.sort(rng.choice(warm_rows, min(len(warm_rows), 256), replace=False))))
    for b in (1, 17):
        rand = (
            rng.integers(-2, tower.n_categories + 3, b),
            rng.integers(-2, tower.n_categories + 3, b),
            rng.integers(-2, tower.n_brands + 3, b),
            rng.integers(-2, tower.n_sellers + 3, b),
            np.exp(rng.normal(3.0, 2.0, b)).astype(np.float32),
        )
        rand[4][rng.random(b) < 0.3] = np.nan
        if b > 3:
            rand[4][:3] = (-1.0, np.inf, 0.0)
        if has_text:
            text = rng.standard_normal((b, tower.text_dim)).astype(np.float32)
            text[0, 0] = np.nan
            rand += (text,)
        cases.append(rand)
    worst = worst_cold
    for inputs in cases:
        worst = max(worst, float(np.abs(run(inputs) - torch_vectors(inputs)).max()))
    if worst > ONNX_TOLERANCE:
        raise TwoTowerError(f"{path}: ONNX item tower differs from torch by {worst:.3g} (> {ONNX_TOLERANCE})")
    return worst
