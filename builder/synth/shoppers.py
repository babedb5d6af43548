"""Shoppers of the synthetic store: hidden tastes, interests, region, device, blocks, activity.

A shopper has one to three category interests (leaves; the second and third are often in the
first one's department), a favourite style, and a hidden taste vector: the weighted interest
directions plus the style direction plus noise, scaled by how strongly taste drives them. Price
sensitivity, a home region (fixed), a preferred device, a sign-up time (some sign up during the
horizon: new shoppers) and a log-normal activity (a few shoppers are very active) complete them.
About 10% block one to three brands and 5% block one or two marketplace sellers, drawn from what
their interests would show them, so the blocks bite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from builder.synth.catalog import DAY, Catalog

REGIONS: tuple[str, ...] = ("us-east", "us-west", "eu-west", "eu-north", "apac", "latam")
REGION_WEIGHTS = np.array([0.27, 0.18, 0.2, 0.1, 0.15, 0.1])
DEVICES: tuple[str, ...] = ("mobile", "desktop", "app")
DEVICE_WEIGHTS = np.array([0.55, 0.3, 0.15])
MAX_INTERESTS = 3
BLOCKS_BRANDS_SHARE = 0.10
BLOCKS_SELLERS_SHARE = 0.05
SIGNED_UP_DURING_SHARE = 0.2
ACTIVITY_SIGMA = 1.0


@dataclass(frozen=True)
class Shoppers:
    """Shoppers in users.parquet row order. u = shoppers, d = latent_dim."""

    region: np.ndarray  # int8 [u], index into REGIONS
    device: np.ndarray  # int8 [u], preferred device, index into DEVICES
    signup_ts: np.ndarray  # int64 [u], epoch seconds
    activity: np.ndarray  # float64 [u], log-normal with mean 1: relative visit rate
    interest_leaf: np.ndarray  # int32 [u, 3], -1 = none; interest 0 always present
    interest_cum: np.ndarray  # float64 [u, 3], cumulative interest weights (last present = 1)
    taste: np.ndarray  # float32 [u, d] (truth)
    price_sensitivity: np.ndarray  # float32 [u] > 0 (truth)
    blocked_brands_ptr: np.ndarray  # int64 [u + 1], CSR over blocked_brands
    blocked_brands: np.ndarray  # int32, brand codes
    blocked_sellers_ptr: np.ndarray  # int64 [u + 1]
    blocked_sellers: np.ndarray  # int32, seller codes (never the first-party seller 0)

    def __len__(self) -> int:
        return len(self.region)


def _blocks(
    chooser: np.ndarray, candidates: np.ndarray, counts: np.ndarray, exclude: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr int64 [u + 1], values int32) keeping, per chooser, up to counts[k] distinct
    candidates[k] (excluding `exclude`)."""
    n_users = len(counts)
    ptr = np.zeros(n_users + 1, dtype=np.int64)
    values: list[int] = []
    for u, row in zip(chooser.tolist(), candidates.tolist()):
        kept: list[int] = []
        for v in row:
            if v != exclude and v not in kept and len(kept) < counts[u]:
                kept.append(v)
        values.extend(kept)
        ptr[u + 1] = len(kept)
    return np.cumsum(ptr), np.asarray(values, dtype=np.int32)


def _exact_share(n: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """int64 [round(share * n)]: sorted random rows. Exact rather than Bernoulli so that even the
    100-shopper fixture has its 10 brand blockers."""
    return np.sort(rng.permutation(n)[: int(round(share * n))])


def build_shoppers(
    n: int, catalog: Catalog, seed: int, horizon_start: int, horizon_end: int, latent_dim: int
) -> Shoppers:
    """`n` shoppers whose interests and blocks refer to `catalog`; deterministic in `seed`."""
    rng = np.random.default_rng([seed, 2])
    tree = catalog.tree
    region = rng.choice(len(REGIONS), size=n, p=REGION_WEIGHTS).astype(np.int8)
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_WEIGHTS).astype(np.int8)
    during = rng.random(n) < SIGNED_UP_DURING_SHARE
    before = horizon_start - np.minimum(rng.exponential(365.0 * DAY, size=n), 6 * 365 * DAY)
    signup_ts = np.where(during, rng.uniform(horizon_start, horizon_end - DAY, size=n), before).astype(np.int64)
    activity = rng.lognormal(-0.5 * ACTIVITY_SIGMA**2, ACTIVITY_SIGMA, size=n)

    # Interests favour big, popular leaves; later interests often stay in the first's department.
    leaf_pop = np.add.reduceat(catalog.popularity, catalog.leaf_start[:-1])
    w = leaf_pop**0.7
    n_leaves = tree.n_leaves
    k = rng.choice(np.arange(1, MAX_INTERESTS + 1), size=n, p=[0.35, 0.4, 0.25])
    interest = np.full((n, MAX_INTERESTS), -1, dtype=np.int32)
    interest[:, 0] = rng.choice(n_leaves, size=n, p=w / w.sum())
    dep_first = np.searchsorted(tree.leaf_department, np.arange(len(tree.department_name)))
    dep_size = np.bincount(tree.leaf_department, minlength=len(tree.department_name))
    home_dep = tree.leaf_department[interest[:, 0]]
    for j in range(1, MAX_INTERESTS):
        near = dep_first[home_dep] + np.floor(rng.random(n) * dep_size[home_dep]).astype(np.int64)
        far = rng.choice(n_leaves, size=n, p=w / w.sum())
        pick = np.where(rng.random(n) < 0.5, near, far).astype(np.int32)
        interest[:, j] = np.where(k > j, pick, -1)
    weights = rng.dirichlet(np.ones(MAX_INTERESTS), size=n) * (interest >= 0)
    interest_cum = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)  # float64 [u, 3]
    interest_cum[interest < 0] = 1.0

    d = latent_dim
    share = weights / weights.sum(axis=1, keepdims=True)
    direction = np.einsum("uk,ukd->ud", share, catalog.leaf_vector[np.maximum(interest, 0)])
    style = rng.integers(len(catalog.style_vector), size=n)
    direction = direction + 0.5 * catalog.style_vector[style] + 0.35 * rng.standard_normal((n, d)) / np.sqrt(d)
    strength = rng.lognormal(np.log(2.5), 0.25, size=n)
    taste = (direction / np.linalg.norm(direction, axis=1, keepdims=True) * strength[:, None]).astype(np.float32)
    price_sensitivity = rng.lognormal(np.log(0.8), 0.5, size=n).astype(np.float32)

    # Blocks: brands/sellers of random items in the shopper's first interest leaf.
    def items_in_first_interest(users: np.ndarray, draws: int) -> np.ndarray:
        leaf = interest[users, 0]
        start = catalog.leaf_start[leaf]
        size = catalog.leaf_start[leaf + 1] - start
        return start[:, None] + np.floor(rng.random((len(users), draws)) * size[:, None]).astype(np.int64)

    brand_blockers = _exact_share(n, BLOCKS_BRANDS_SHARE, rng)
    brand_counts = np.zeros(n, dtype=np.int64)
    brand_counts[brand_blockers] = rng.choice([1, 2, 3], size=len(brand_blockers), p=[0.6, 0.3, 0.1])
    bb_ptr, bb = _blocks(
        brand_blockers, catalog.brand[items_in_first_interest(brand_blockers, 6)], brand_counts, None
    )
    seller_blockers = _exact_share(n, BLOCKS_SELLERS_SHARE, rng)
    seller_counts = np.zeros(n, dtype=np.int64)
    seller_counts[seller_blockers] = rng.choice([1, 2], size=len(seller_blockers), p=[0.75, 0.25])
    bs_ptr, bs = _blocks(
        seller_blockers, catalog.seller[items_in_first_interest(seller_blockers, 8)], seller_counts, 0
    )
    return Shoppers(
        region=region,
        device=device,
        signup_ts=signup_ts,
        activity=activity,
        interest_leaf=interest,
        interest_cum=interest_cum,
        taste=taste,
        price_sensitivity=price_sensitivity,
        blocked_brands_ptr=bb_ptr,
        blocked_brands=bb,
        blocked_sellers_ptr=bs_ptr,
        blocked_sellers=bs,
    )
