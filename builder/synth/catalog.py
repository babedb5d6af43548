"""The synthetic catalog: items with hidden latents, prices, stock, arrival times and complements.

Generative story, per item: a leaf category (leaf sizes are log-normal), a brand active in the
leaf's department (Zipf-like, with a per-category affinity), a seller (the store itself or a
marketplace seller of the department), a style adjective (mostly one of the brand's), a log-normal
price around the leaf's median times the brand's premium, a discount (most items none), stock (a
few percent sold out), an arrival time (most before the event horizon, some during it, a few in its
last days), a Zipf-like popularity and a quality correlated with it.

The hidden latent is leaf + style + brand directions plus noise, so items of a leaf, and of a leaf
and style, are close. The public `text_embedding` is a noisy projection of that latent plus leaf
and brand components: a content signal that is informative but not the truth.

Items are sorted by (leaf, style, brand), so each leaf and each level-2 category is a contiguous
row range and neighbouring rows inside a leaf have similar latents; the session simulator relies
on both (range sampling, "similar items" as a window around the anchor row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from builder.synth.brands import Brands, brands_of_department, build_brands
from builder.synth.scales import Scale
from builder.synth.sellers import FIRST_PARTY_SHARE, Sellers, build_sellers, sellers_of_department
from builder.synth.taxonomy import STYLES, Tree, build_tree

DAY = 86_400
OUT_OF_STOCK_SHARE = 0.065
DISCOUNTED_SHARE = 0.22
DISCOUNT_LEVELS = np.array([0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50])
DISCOUNT_WEIGHTS = np.array([0.14, 0.24, 0.16, 0.16, 0.10, 0.10, 0.06, 0.04])
ARRIVED_DURING_SHARE = 0.11  # listed inside the horizon, before its last week
NEW_ARRIVAL_SHARE = 0.03  # listed in the horizon's last week
NEW_ARRIVAL_DAYS = 7
PAIRED_SHARE = 0.30  # items that get a planted "bought together" complement
POPULARITY_SIGMA = 1.5  # log-normal spread of popularity: the long tail


@dataclass(frozen=True)
class Catalog:
    """Items in catalog row order (sorted by leaf, style, brand). n = items, d = latent_dim."""

    tree: Tree
    brands: Brands
    sellers: Sellers
    leaf_start: np.ndarray  # int64 [n_leaves + 1]: row range of each leaf
    leaf: np.ndarray  # int32 [n]
    brand: np.ndarray  # int32 [n]
    seller: np.ndarray  # int32 [n]
    style: np.ndarray  # int32 [n], index into taxonomy.STYLES
    price: np.ndarray  # float64 [n], list price, USD
    price_term: np.ndarray  # float32 [n], log(price / leaf median): what price-sensitive shoppers feel
    discount: np.ndarray  # float64 [n], fraction off, in [0, 1)
    in_stock: np.ndarray  # bool [n], at the horizon's end
    stock_qty: np.ndarray  # int64 [n], 0 when sold out
    created_at: np.ndarray  # int64 [n], epoch seconds
    listed_until: np.ndarray  # int64 [n]: the logging policy shows the item only before this (sell-out time)
    popularity: np.ndarray  # float64 [n] > 0: sampling weight of the logging policy
    quality: np.ndarray  # float32 [n]: attractiveness offset (truth)
    latent: np.ndarray  # float32 [n, d], unit rows (truth)
    text_embedding: np.ndarray  # float32 [n, text_dim], unit rows
    complement: np.ndarray  # int32 [n]: planted complement row, -1 = none (truth)
    leaf_vector: np.ndarray  # float32 [n_leaves, d]: leaf directions (shoppers' interests use them)
    style_vector: np.ndarray  # float32 [n_styles, d]

    def __len__(self) -> int:
        return len(self.leaf)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _gauss(rng: np.random.Generator, shape: tuple[int, ...], dim: int) -> np.ndarray:
    """float32 noise with expected row norm 1 (per-component variance 1/dim)."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(dim))


def _leaf_sizes(n_items: int, n_leaves: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n_leaves] ≥ 1 summing to n_items: log-normal shares, largest-remainder rounding."""
    if n_items < n_leaves:
        raise ValueError(f"a scale needs at least one item per leaf: {n_items} items for {n_leaves} leaves")
    share = rng.lognormal(0.0, 0.6, size=n_leaves)
    share /= share.sum()
    spare = n_items - n_leaves
    exact = share * spare
    sizes = np.floor(exact).astype(np.int64)
    short = spare - int(sizes.sum())
    sizes[np.argsort(-(exact - sizes), kind="stable")[:short]] += 1
    return sizes + 1


def _assign_brands(tree: Tree, brands: Brands, leaf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    brand = np.empty(len(leaf), dtype=np.int32)
    item_cat = tree.leaf_category[leaf]
    for c in range(len(tree.category_path)):
        rows = np.flatnonzero(item_cat == c)
        dep = int(tree.leaf_department[tree.category_start[c]])
        codes = brands_of_department(brands, dep)
        if len(codes) == 0:
            codes = np.arange(len(brands), dtype=np.int32)
        # A brand is strong in some categories of its department and marginal in others.
        w = brands.weight[codes] * rng.lognormal(0.0, 1.0, size=len(codes))
        brand[rows] = rng.choice(codes, size=len(rows), p=w / w.sum())
    return brand


def _assign_sellers(tree: Tree, sellers: Sellers, leaf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    seller = np.zeros(len(leaf), dtype=np.int32)
    item_dep = tree.leaf_department[leaf]
    marketplace = rng.random(len(leaf)) >= FIRST_PARTY_SHARE
    for d in range(len(tree.department_name)):
        rows = np.flatnonzero((item_dep == d) & marketplace)
        codes = sellers_of_department(sellers, d)
        if len(codes) == 0 or len(rows) == 0:
            continue
        w = sellers.weight[codes]
        seller[rows] = rng.choice(codes, size=len(rows), p=w / w.sum())
    return seller


def _arrival_times(n: int, horizon_start: int, horizon_end: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n]: most items long listed, some listed during the horizon, a few in its last week."""
    long_listed = 1.0 - ARRIVED_DURING_SHARE - NEW_ARRIVAL_SHARE
    kind = rng.choice(3, size=n, p=[long_listed, ARRIVED_DURING_SHARE, NEW_ARRIVAL_SHARE])
    age = np.minimum(rng.exponential(400.0 * DAY, size=n), 5 * 365 * DAY) + rng.integers(0, DAY, size=n)
    before = horizon_start - age
    late = horizon_end - NEW_ARRIVAL_DAYS * DAY
    during = rng.uniform(horizon_start, late, size=n)
    fresh = rng.uniform(late, horizon_end - 3_600, size=n)
    return np.select([kind == 0, kind == 1], [before, during], fresh).astype(np.int64)


def _prices(
    tree: Tree, brands: Brands, leaf: np.ndarray, brand: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    leaf_median = tree.leaf_base_price * rng.lognormal(0.0, 0.6, size=tree.n_leaves)
    raw = leaf_median[leaf] * brands.premium[brand] * rng.lognormal(0.0, 0.4, size=len(leaf))
    # Retail price points: x.99 above a couple of dollars, cents below.
    price = np.where(raw >= 2.0, np.floor(raw) + 0.99, np.maximum(np.round(raw, 2), 0.49))
    price_term = np.log(price / leaf_median[leaf]).astype(np.float32)
    return price, price_term


@numba.njit(cache=True)
def _plant_complements(
    seed: int,
    share: float,
    leaf: np.ndarray,
    brand: np.ndarray,
    latent: np.ndarray,
    popularity_cum: np.ndarray,
    leaf_start: np.ndarray,
    leaf_complements: np.ndarray,
) -> np.ndarray:
    """int32 [n]: for about `share` of items, one item of a complementary leaf, else -1.

    The partner is the same brand's item with the closest latent when the brand sells in that
    leaf (a matching case for a phone), otherwise the closest of 16 popularity-weighted draws.
    """
    np.random.seed(seed)
    n = leaf.shape[0]
    d = latent.shape[1]
    out = np.full(n, -1, dtype=np.int32)
    for i in range(n):
        if np.random.random() >= share:
            continue
        li = leaf[i]
        k = 1 if leaf_complements[li, 1] >= 0 and np.random.random() < 0.35 else 0
        cl = leaf_complements[li, k]
        if cl < 0:
            continue
        s = leaf_start[cl]
        e = leaf_start[cl + 1]
        best = -1
        best_score = -1e30
        for j in range(s, e):
            if brand[j] == brand[i]:
                score = 0.0
                for t in range(d):
                    score += latent[i, t] * latent[j, t]
                if score > best_score:
                    best_score = score
                    best = j
        if best < 0:
            lo = popularity_cum[s - 1] if s > 0 else 0.0
            hi = popularity_cum[e - 1]
            for _ in range(16):
                r = lo + np.random.random() * (hi - lo)
                j = s + np.searchsorted(popularity_cum[s:e], r, side="right")
                if j >= e:
                    j = e - 1
                score = 0.0
                for t in range(d):
                    score += latent[i, t] * latent[j, t]
                if score > best_score:
                    best_score = score
                    best = j
        out[i] = best
    return out


def build_catalog(scale: Scale, seed: int, horizon_start: int, horizon_end: int) -> Catalog:
    """The whole catalog for `scale`, deterministic in (scale, seed)."""
    rng = np.random.default_rng([seed, 1])
    tree = build_tree(
        scale.departments, scale.categories_per_department, scale.leaves_per_category, scale.leaf_variants, rng
    )
    n_dep, n_leaves = len(tree.department_name), tree.n_leaves
    brands = build_brands(scale.brands, n_dep, len(STYLES), rng)
    sellers = build_sellers(scale.sellers, n_dep, rng)

    sizes = _leaf_sizes(scale.items, n_leaves, rng)
    leaf = np.repeat(np.arange(n_leaves, dtype=np.int32), sizes)
    n = len(leaf)
    brand = _assign_brands(tree, brands, leaf, rng)
    seller = _assign_sellers(tree, sellers, leaf, rng)
    own_style = brands.styles[brand, rng.integers(3, size=n)]
    style = np.where(rng.random(n) < 0.7, own_style, rng.integers(len(STYLES), size=n)).astype(np.int32)

    order = np.lexsort((rng.random(n), brand, style, leaf))
    brand, seller, style = brand[order], seller[order], style[order]
    leaf_start = np.zeros(n_leaves + 1, dtype=np.int64)
    leaf_start[1:] = np.cumsum(sizes)

    d = scale.latent_dim
    dep_vec = _unit(rng.standard_normal((n_dep, d)))
    cat_dep = tree.leaf_department[tree.category_start[:-1]]
    cat_vec = _unit(dep_vec[cat_dep] + 0.8 * _gauss(rng, (len(tree.category_path), d), d))
    leaf_vec = _unit(cat_vec[tree.leaf_category] + 0.6 * _gauss(rng, (n_leaves, d), d))
    style_vec = _unit(rng.standard_normal((len(STYLES), d)))
    brand_vec = _unit(rng.standard_normal((len(brands), d)))
    latent = _unit(leaf_vec[leaf] + 0.5 * style_vec[style] + 0.3 * brand_vec[brand] + 0.35 * _gauss(rng, (n, d), d))

    z = rng.standard_normal(n)
    popularity = np.exp(POPULARITY_SIGMA * z)
    quality = (0.35 * z + brands.quality[brand] + 0.3 * rng.standard_normal(n)).astype(np.float32)

    price, price_term = _prices(tree, brands, leaf, brand, rng)
    discount = np.where(
        rng.random(n) < DISCOUNTED_SHARE, rng.choice(DISCOUNT_LEVELS, size=n, p=DISCOUNT_WEIGHTS), 0.0
    )
    created_at = _arrival_times(n, horizon_start, horizon_end, rng)

    in_stock = rng.random(n) >= OUT_OF_STOCK_SHARE
    stock_qty = np.where(in_stock, np.ceil(rng.lognormal(np.log(25.0), 1.0, size=n)), 0).astype(np.int64)
    sold_out_at = horizon_end - rng.integers(0, 14 * DAY, size=n)
    listed_until = np.where(in_stock, np.iinfo(np.int64).max, np.maximum(sold_out_at, created_at + DAY))

    t = scale.text_dim
    projection = rng.standard_normal((d, t)).astype(np.float32) / np.float32(np.sqrt(d))
    leaf_text = _unit(rng.standard_normal((n_leaves, t)))
    brand_text = _unit(rng.standard_normal((len(brands), t)))
    # A fixed-order sum rather than `latent @ projection`: BLAS may split the work differently with
    # another thread count and change the last bits, and the store must be identical everywhere.
    text = 0.6 * leaf_text[leaf] + 0.3 * brand_text[brand] + 0.45 * _gauss(rng, (n, t), t)
    for k in range(d):
        text += latent[:, k : k + 1] * projection[k]
    text_embedding = _unit(text)

    complement = _plant_complements(
        int(rng.integers(2**31)),
        PAIRED_SHARE,
        leaf,
        brand,
        latent,
        np.cumsum(popularity),
        leaf_start,
        tree.leaf_complements,
    )
    return Catalog(
        tree=tree,
        brands=brands,
        sellers=sellers,
        leaf_start=leaf_start,
        leaf=leaf,
        brand=brand,
        seller=seller,
        style=style,
        price=price,
        price_term=price_term,
        discount=discount,
        in_stock=in_stock,
        stock_qty=stock_qty,
        created_at=created_at,
        listed_until=listed_until.astype(np.int64),
        popularity=popularity,
        quality=quality,
        latent=latent,
        text_embedding=text_embedding,
        complement=complement,
        leaf_vector=leaf_vec,
        style_vector=style_vec,
    )
