"""The simulated shoppers: who they are, what they like, and how they react to a slate.

The behaviour is the synthetic store's (builder.synth.sessions, parameters from
truth/store.json), applied to the slates the engine serves instead of a logging policy's:

- **examine** (cascade, position bias): slot k is looked at with probability
  `1 / (1 + k) ** exam_decay`; after a click the shopper stops scanning with `stop_after_click`;
- **click**: an examined item is clicked with probability sigmoid(attractiveness),
  `click_bias + taste·latent + quality − price_sensitivity·price_term + discount_weight·discount`
  (+ `complement_boost` for the planted complement of the item just added, on the cart slate),
  where price_term and discount are the **live** ones (the market's);
- **dwell** after a click: log-normal around `dwell_median_s`, longer for better matches;
- **add to cart** after a click: sigmoid(`atc_bias + atc_affinity·taste·latent + 0.5·quality −
  0.5·price_sensitivity·price_term` (+ complement boost)); only an available item can be added;
- **buy** at checkout (`checkout_rate`): each cart item with sigmoid(`purchase_bias +
  purchase_affinity·taste·latent`); a planted complement with `complement_buy` when its anchor is
  bought, else 0.1.

**Taste shift** (`--taste-shift X`, X in [0, 1]): a trend sweeps the store. One leaf category
(`--trend-leaf`, else drawn from the seed) gives the trend: its items' mean latent direction; every shopper's
taste becomes `normalise((1 − X)·taste + X·3·trend·|taste|) · |taste| · (1 + 2X)` (direction moves
towards the trend and the pull grows: a fad is a stronger preference than a settled taste), and price sensitivity becomes `(1 + X)·sensitivity` (shoppers grow more
price-conscious). X = 0 leaves everyone as the store made them. A population-wide move, not a
reshuffle of who likes what: what the engine learned from the log no longer matches what shoppers
do, and the candidates it serves move with their clicks, which is what drift monitoring must see.
(`shift_tastes` without a trend pairs each shopper with another random shopper instead.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from builder.simulator.market import Market
from builder.simulator.world import World
from builder.synth.sessions import BrowsingModel

DEVICES = ("mobile", "desktop", "app")
TREND_STRENGTH = 3.0  # how much stronger than a shopper's own taste a full trend (X = 1) pulls
PREFERRED_DEVICE_SHARE = 0.85  # as builder.synth.visits: most sessions on the shopper's usual device


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def position_bias(model: BrowsingModel, count: int) -> np.ndarray:
    """float64 [count]: P(examine) by 0-based slot (the store's truth/position_bias.npy, extended
    to any slate size by the same formula)."""
    return 1.0 / (1.0 + np.arange(count, dtype=np.float64)) ** model.exam_decay


def shift_tastes(
    taste: np.ndarray, sensitivity: np.ndarray, x: float, rng: np.random.Generator, trend: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [u, d] tastes, float32 [u] price sensitivities) after a taste shift of `x` (module
    docstring): towards `trend` (float [d], any length) for everyone, else each towards another
    random shopper's taste. x = 0 returns copies of the inputs unchanged."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"taste shift must be in [0, 1], got {x}")
    taste = np.asarray(taste, dtype=np.float32)
    sensitivity = np.asarray(sensitivity, dtype=np.float32)
    u = len(taste)
    if x == 0.0 or u < 2:
        return taste.copy(), sensitivity.copy()
    strength = np.linalg.norm(taste, axis=1, keepdims=True)
    if trend is not None:
        direction = np.asarray(trend, dtype=np.float64)
        direction = direction / max(float(np.linalg.norm(direction)), 1e-12)
        # A trend is a strong pull: the shifted share of the taste is TREND_STRENGTH times as strong.
        target = np.broadcast_to(direction * strength * TREND_STRENGTH, taste.shape).astype(np.float32)
    else:
        target = taste[(np.arange(u) + rng.integers(1, u, size=u)) % u]  # another shopper, never oneself
    mixed = (1.0 - x) * taste.astype(np.float64) + x * target.astype(np.float64)
    norm = np.linalg.norm(mixed, axis=1, keepdims=True)
    # Opposite tastes can cancel at x = 0.5: keep the other's direction then.
    mixed = np.where(norm > 1e-9, mixed / np.maximum(norm, 1e-12), target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12))
    if trend is not None:
        strength = strength * (1.0 + x * (TREND_STRENGTH - 1.0))
    return (mixed * strength).astype(np.float32), ((1.0 + x) * sensitivity).astype(np.float32)


@dataclass(frozen=True)
class Shopper:
    """One shopper for one session."""

    row: int  # users.parquet row
    user_id: str
    region: str
    device: str
    taste: np.ndarray  # float32 [d]
    price_sensitivity: float
    blocked_brands: frozenset[int]
    blocked_sellers: frozenset[int]


class Population:
    """The shoppers a run draws from: all of the store's, or `limit` of them (drawn by activity,
    without replacement), with tastes shifted by `taste_shift`. Deterministic in `seed`."""

    def __init__(
        self, world: World, *, taste_shift: float = 0.0, limit: int | None = None, seed: int = 0, trend_leaf: str | None = None
    ) -> None:
        self.world = world
        rng = np.random.default_rng([seed, 101])
        trend = None
        if taste_shift > 0:
            if trend_leaf is not None:
                if trend_leaf not in world.category_paths:
                    raise ValueError(f"trend leaf {trend_leaf!r} is not a leaf category of this store")
                leaf = world.category_paths.index(trend_leaf)
            else:
                leaf = world.leaf[int(rng.integers(len(world.leaf)))]  # a leaf drawn by its size: the trend
            trend = world.latent[world.leaf == leaf].astype(np.float64).mean(axis=0)
        self.taste, self.price_sensitivity = shift_tastes(world.taste, world.price_sensitivity, taste_shift, rng, trend)
        weight = np.asarray(world.activity, dtype=np.float64)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"shoppers must be ≥ 1, got {limit}")
            k = min(limit, world.n_users)
            members = np.sort(rng.choice(world.n_users, size=k, replace=False, p=weight / weight.sum()))
        else:
            members = np.arange(world.n_users)
        self.members = members.astype(np.int64)
        cum = np.cumsum(weight[self.members])
        self._cum = cum / cum[-1]

    def __len__(self) -> int:
        return len(self.members)

    def draw(self, rng: np.random.Generator) -> int:
        """A shopper row, by activity."""
        k = int(np.searchsorted(self._cum, rng.random(), side="right"))
        return int(self.members[min(k, len(self.members) - 1)])

    def shopper(self, row: int, rng: np.random.Generator) -> Shopper:
        w = self.world
        usual = w.device[row] or DEVICES[int(rng.integers(len(DEVICES)))]
        if rng.random() >= PREFERRED_DEVICE_SHARE:
            others = [d for d in DEVICES if d != usual]
            usual = others[int(rng.integers(len(others)))]
        return Shopper(
            row=row,
            user_id=w.user_ids[row],
            region=w.region[row],
            device=usual,
            taste=self.taste[row],
            price_sensitivity=float(self.price_sensitivity[row]),
            blocked_brands=w.blocked_brands[row],
            blocked_sellers=w.blocked_sellers[row],
        )


class Behaviour:
    """The browsing model applied to live slates (module docstring). Stateless apart from its
    parameters; every random choice takes the caller's generator."""

    def __init__(self, model: BrowsingModel, count: int) -> None:
        if count < 1:
            raise ValueError(f"slate size must be ≥ 1, got {count}")
        self.model = model
        self.count = count
        self.exam = position_bias(model, count)

    def affinity(self, shopper: Shopper, market: Market, rows: np.ndarray) -> np.ndarray:
        """float64 [k]: taste·latent of known rows (rows ≥ 0)."""
        return market.latent[rows].astype(np.float64) @ shopper.taste.astype(np.float64)

    def attractiveness(self, shopper: Shopper, market: Market, rows: np.ndarray, planted: int = -1) -> np.ndarray:
        """float64 [k]: the click logit of each slot; -inf for SKUs the market does not know."""
        m = self.model
        known = rows >= 0
        out = np.full(len(rows), -np.inf)
        r = rows[known]
        if len(r):
            out[known] = (
                m.click_bias
                + self.affinity(shopper, market, r)
                + market.quality[r]
                - shopper.price_sensitivity * market.live_price_term(r)
                + m.discount_weight * market.discount[r]
                + np.where(r == planted, m.complement_boost, 0.0)
            )
        return out

    def scan(self, rng: np.random.Generator, logits: np.ndarray) -> tuple[list[int], int]:
        """Cascade over the slate → (clicked slots in order, slots examined)."""
        clicked: list[int] = []
        examined = 0
        exam = self.exam if len(logits) <= len(self.exam) else position_bias(self.model, len(logits))
        for p in range(len(logits)):
            if rng.random() < exam[p]:
                examined = p + 1
                if rng.random() < sigmoid(logits[p]):
                    clicked.append(p)
                    if rng.random() < self.model.stop_after_click:
                        break
        return clicked, examined

    def dwell_ms(self, rng: np.random.Generator, affinity: float) -> int:
        m = self.model
        seconds = math.exp(math.log(m.dwell_median_s) + 0.3 * affinity + m.dwell_sigma * rng.standard_normal())
        return int(min(max(seconds, 2.0), 1200.0) * 1000.0)

    def add_to_cart_probability(self, shopper: Shopper, market: Market, row: int, affinity: float, planted: bool) -> float:
        m = self.model
        logit = m.atc_bias + m.atc_affinity * affinity + 0.5 * float(market.quality[row])
        logit -= 0.5 * shopper.price_sensitivity * float(market.live_price_term(np.asarray([row]))[0])
        if planted:
            logit += m.complement_boost
        return float(sigmoid(logit))

    def buy_probability(self, affinity: float, parent_bought: bool | None) -> float:
        """P(buy a cart item at checkout). parent_bought: None for an ordinary item, else whether
        the anchor this planted complement was added for was bought."""
        m = self.model
        if parent_bought is not None:
            return m.complement_buy if parent_bought else 0.1
        return float(sigmoid(m.purchase_bias + m.purchase_affinity * affinity))

    def landing_item(self, rng: np.random.Generator, shopper: Shopper, market: Market) -> int:
        """A product page reached from outside (a search engine, an ad): the shopper searched for
        what they like, so the page is drawn over the whole available catalog by softmax of
        taste·latent (the store's sessions land inside the shopper's interest leaves, which is
        the same pull). It is how a taste shift reaches the engine first: shoppers arrive on the
        pages of what they now want. -1 if nothing qualifies."""
        n = market.n
        ok = market.in_stock[:n] & ~market.retired[:n]
        if shopper.blocked_brands:
            ok &= ~np.isin(market.brand[:n], np.fromiter(shopper.blocked_brands, dtype=np.int64))
        if shopper.blocked_sellers:
            ok &= ~np.isin(market.seller[:n], np.fromiter(shopper.blocked_sellers, dtype=np.int64))
        rows = np.flatnonzero(ok)
        if len(rows) == 0:
            return -1
        aff = self.affinity(shopper, market, rows)
        weight = np.exp(aff - aff.max())
        return int(rows[rng.choice(len(rows), p=weight / weight.sum())])
