"""The session simulator: what a logging policy showed and what shoppers did, event by event.

A session starts on the home page (personal slate) or lands on a product page from outside. Each
page is a slate of `slate_size` items with a request id and positions, built by a simple logging
policy that respects the shopper's blocked brands and sellers, never shows an item before its
`created_at` or after it sold out, and samples inside contiguous catalog ranges by popularity
(binary search over cumulative weights: no per-session scoring of the catalog):

- home: the shopper's interest leaves and their categories, global best sellers, new arrivals;
- pdp (anchor item): neighbours of the anchor inside its leaf (similar latent, see `catalog`),
  its leaf and category by popularity, its complementary leaves;
- cart (anchor just added): the anchor's planted complement near the top, complementary leaves.

The shopper scans the slate top-down (cascade): slot k is examined with probability
`position_bias[k]`, an examined item is clicked with probability sigmoid(attractiveness), and
after a click the shopper usually stops scanning. Attractiveness is
`click_bias + taste·latent + quality − price_sensitivity·price_term + discount_weight·discount`
(+ `complement_boost` for a planted complement on the cart slate). Shown items above the first
click are logged as `skip`; every click is followed by a `dwell` (longer for better matches) and
maybe an `add_to_cart`; after an add the next page is usually the cart slate, after a click the
clicked item's page. At the end of the session the cart is checked out with probability
`checkout_rate`; each cart item is bought with a probability rising with affinity, and a planted
complement added after its anchor is bought with `complement_buy` when the anchor is.

Delayed purchases (opt-in, `purchase_delay_days > 0`; default 0 keeps every store byte for byte as
before): the shopper decides at checkout as above, but pays when they come back, an exponential
delay with that mean later (one delay per checkout, drawn after the purchase decisions so the same
items are bought as without a delay). A purchase that would land at or after the horizon's end is
not logged — it has not happened yet when the log ends — rather than clamped like in-session events:
that right-censoring is what delayed-label handling (builder.labels) has to correct.

Confounded slate order (opt-in, `slate_order` other than "draw"; the default keeps every store
byte for byte as before): the policy draws a slate's items as above, then lists them by a logging
score the ranker's features can see, highest first, instead of in draw order: "popularity" (log
of the sampling weight; the model sees it through the log's counts) or "price" (log of the
effective price, as a revenue-first ranker would). The score is standardised over the catalog and
gets `SLATE_ORDER_NOISE` · N(0, 1) per showing, so an item is not always at the same rank; a cart
slate's planted complement keeps its near-top slot. Neither score is the attractiveness, so the
slot is then correlated with the features, as under a production ranker: a click model that
ignores the slot learns "was listed high" as part of the features' effect, in order and not only
in level (what position-bias correction, builder.heads, is tested on).

The kernel is `numba.njit`. Each session reseeds NumPy's generator inside the kernel from a
per-session seed drawn up front, so results depend only on (scale, seed), not on how the session
list is chunked or on the output buffer's growth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from artifacts.schema import SURFACE_BY_NAME, EventType
from builder.synth.catalog import DAY, Catalog
from builder.synth.shoppers import Shoppers
from builder.synth.visits import Visits

HOME = SURFACE_BY_NAME["home"]
PDP = SURFACE_BY_NAME["pdp"]
CART = SURFACE_BY_NAME["cart"]
OTHER = SURFACE_BY_NAME["other"]
IMPRESSION = int(EventType.IMPRESSION)
CLICK = int(EventType.CLICK)
ADD_TO_CART = int(EventType.ADD_TO_CART)
PURCHASE = int(EventType.PURCHASE)
SKIP = int(EventType.SKIP)
DWELL = int(EventType.DWELL)

# Columns of the int32 event record (the timestamp is kept apart as int64).
R_SESSION, R_ITEM, R_TYPE, R_DWELL_MS, R_SURFACE, R_REQUEST, R_POSITION = range(7)
N_RECORD = 7
MAX_CART = 24
# How a slate's drawn items are listed (`simulate_sessions(slate_order=...)`): "draw" is the store's
# own order; the others sort by a noisy logging score, like a production ranker would.
SLATE_ORDERS = ("draw", "popularity", "price")
SLATE_ORDER_NOISE = 0.5  # standard deviation of the per-showing noise, in units of the score's spread
CHUNK_SESSIONS = 25_000  # sessions per kernel call (progress granularity)


class BrowsingModel(NamedTuple):
    """How shoppers browse and buy; the same for every scale. Recorded in truth/store.json."""

    exam_decay: float = 0.8  # position bias: P(examine slot k) = 1 / (1 + k) ** exam_decay
    click_bias: float = -3.0  # intercept of the click logit
    discount_weight: float = 2.5  # logit per unit of discount (0.2 off → +0.5)
    stop_after_click: float = 0.7  # cascade: P(stop scanning the slate after a click)
    atc_bias: float = -3.0  # add-to-cart logit intercept, after a click
    atc_affinity: float = 0.9  # add-to-cart logit per unit of taste·latent
    purchase_bias: float = -0.3  # purchase logit intercept, per cart item at checkout
    purchase_affinity: float = 0.8
    checkout_rate: float = 0.75  # P(a session with a cart reaches checkout)
    complement_show: float = 0.9  # P(the cart slate shows the anchor's planted complement)
    complement_boost: float = 3.0  # logit boost of the planted complement on the cart slate
    complement_buy: float = 0.9  # P(buy the complement | its anchor is bought in the session)
    cart_after_add: float = 0.75  # P(the page after an add-to-cart is the cart slate)
    continue_after_click: float = 0.8  # P(go on to the clicked item's page)
    continue_without_click: float = 0.35  # P(another home slate after a slate with no click)
    home_start: float = 0.6  # P(a session starts on home; else lands on a product page)
    max_pages: int = 16
    neighbour_window: int = 25  # rows either side of the anchor counted as "similar"
    new_arrival_days: float = 14.0
    dwell_median_s: float = 30.0
    dwell_sigma: float = 0.8


def position_bias(model: BrowsingModel, slate_size: int) -> np.ndarray:
    """float32 [slate_size]: examination probability by 0-based slot."""
    return (1.0 / (1.0 + np.arange(slate_size, dtype=np.float64)) ** model.exam_decay).astype(np.float32)


@dataclass(frozen=True)
class Log:
    """Simulated events in session order (not yet sorted by time). m = events."""

    ts: np.ndarray  # int64 [m], epoch seconds
    session: np.ndarray  # int32 [m], row into Visits
    item: np.ndarray  # int32 [m], catalog row
    type: np.ndarray  # int8 [m], artifacts.schema.EventType
    dwell_ms: np.ndarray  # int32 [m], > 0 on dwell events only
    surface: np.ndarray  # int8 [m], artifacts.schema.SURFACE_NAMES code
    request: np.ndarray  # int32 [m], request (slate) number, -1 = not from a slate
    position: np.ndarray  # int8 [m], 0-based slot, -1 = not from a slate
    n_requests: int

    def __len__(self) -> int:
        return len(self.ts)


@numba.njit(cache=True)
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


@numba.njit(cache=True)
def _draw(cum: np.ndarray, s: int, e: int) -> int:
    """A row in [s, e) with probability proportional to its popularity."""
    lo = cum[s - 1] if s > 0 else 0.0
    r = lo + np.random.random() * (cum[e - 1] - lo)
    j = s + np.searchsorted(cum[s:e], r, side="right")
    return j if j < e else e - 1


@numba.njit(cache=True)
def _allowed(
    i: int,
    t: int,
    u: int,
    anchor: int,
    slate: np.ndarray,
    n_slate: int,
    created_at: np.ndarray,
    listed_until: np.ndarray,
    brand: np.ndarray,
    seller: np.ndarray,
    bb_ptr: np.ndarray,
    bb: np.ndarray,
    bs_ptr: np.ndarray,
    bs: np.ndarray,
) -> bool:
    if i < 0 or i == anchor or created_at[i] > t or t >= listed_until[i]:
        return False
    for k in range(n_slate):
        if slate[k] == i:
            return False
    for k in range(bb_ptr[u], bb_ptr[u + 1]):
        if bb[k] == brand[i]:
            return False
    for k in range(bs_ptr[u], bs_ptr[u + 1]):
        if bs[k] == seller[i]:
            return False
    return True


@numba.njit(cache=True)
def _affinity(taste: np.ndarray, latent: np.ndarray, u: int, i: int) -> float:
    acc = 0.0
    for k in range(latent.shape[1]):
        acc += taste[u, k] * latent[i, k]
    return acc


@numba.njit(cache=True)
def _emit(
    ts_out: np.ndarray,
    rec: np.ndarray,
    n: int,
    ts: int,
    end: int,
    session: int,
    item: int,
    kind: int,
    dwell_ms: int,
    surface: int,
    request: int,
    position: int,
) -> int:
    # Sessions that run past the horizon's end are cut there; clamping keeps per-session order.
    ts_out[n] = ts if ts < end else end - 1
    rec[n, R_SESSION] = session
    rec[n, R_ITEM] = item
    rec[n, R_TYPE] = kind
    rec[n, R_DWELL_MS] = dwell_ms
    rec[n, R_SURFACE] = surface
    rec[n, R_REQUEST] = request
    rec[n, R_POSITION] = position
    return n + 1


@numba.njit(cache=True)
def _simulate(
    s_begin: int,
    s_end: int,
    n: int,
    n_requests: int,
    ts_out: np.ndarray,
    rec: np.ndarray,
    session_seed: np.ndarray,
    session_user: np.ndarray,
    session_start: np.ndarray,
    horizon_end: int,
    # items (catalog rows)
    latent: np.ndarray,
    quality: np.ndarray,
    price_term: np.ndarray,
    discount: np.ndarray,
    created_at: np.ndarray,
    listed_until: np.ndarray,
    brand: np.ndarray,
    seller: np.ndarray,
    leaf: np.ndarray,
    complement: np.ndarray,
    pop_cum: np.ndarray,
    leaf_start: np.ndarray,
    leaf_category: np.ndarray,
    category_item_start: np.ndarray,
    leaf_complements: np.ndarray,
    by_created: np.ndarray,
    created_sorted: np.ndarray,
    # shoppers
    taste: np.ndarray,
    price_sensitivity: np.ndarray,
    interest_leaf: np.ndarray,
    interest_cum: np.ndarray,
    bb_ptr: np.ndarray,
    bb: np.ndarray,
    bs_ptr: np.ndarray,
    bs: np.ndarray,
    exam: np.ndarray,
    m: BrowsingModel,
    purchase_delay_s: float,
    order_key: np.ndarray,
    order_noise: float,
) -> tuple[int, int, int]:
    """Simulate sessions [s_begin, s_end) appending at event row `n`.

    `purchase_delay_s` > 0: mean of the exponential delay between checkout and payment (seconds).
    `order_key` float64 [n_items] (empty: draw order): the logging score a slate's drawn items are
    listed by, highest first, after adding `order_noise` · N(0, 1) per item and slate.

    Stops early, at a session boundary, when the buffers might overflow. Returns
    (events written so far, requests so far, next session to simulate).
    """
    cap = ts_out.shape[0]
    slate_size = exam.shape[0]
    n_items = latent.shape[0]
    per_session_bound = m.max_pages * (4 * slate_size + 4) + 2 * MAX_CART + 8
    slate = np.empty(slate_size, dtype=np.int64)
    slate_key = np.empty(slate_size, dtype=np.float64)
    ordered = order_key.shape[0] > 0
    clicked = np.empty(slate_size, dtype=np.int64)
    cart_item = np.empty(MAX_CART, dtype=np.int64)
    cart_req = np.empty(MAX_CART, dtype=np.int64)
    cart_pos = np.empty(MAX_CART, dtype=np.int64)
    cart_surface = np.empty(MAX_CART, dtype=np.int64)
    cart_parent = np.empty(MAX_CART, dtype=np.int64)
    cart_aff = np.empty(MAX_CART, dtype=np.float64)
    bought = np.empty(MAX_CART, dtype=np.bool_)
    new_window = int(m.new_arrival_days * DAY)

    for s in range(s_begin, s_end):
        if n + per_session_bound > cap:
            return n, n_requests, s
        np.random.seed(session_seed[s])
        u = session_user[s]
        t = session_start[s]
        n_cart = 0
        anchor = -1
        anchor_cart = -1  # cart slot of the anchor when on the cart surface
        surface = HOME
        if np.random.random() >= m.home_start:
            # Landing on a product page from outside (search engine, ad): a view not from a slate.
            r = np.random.random()
            k = 0
            while k < 2 and interest_leaf[u, k + 1] >= 0 and r > interest_cum[u, k]:
                k += 1
            lf = interest_leaf[u, k]
            for _ in range(10):
                c = _draw(pop_cum, leaf_start[lf], leaf_start[lf + 1])
                if _allowed(c, t, u, -1, slate, 0, created_at, listed_until, brand, seller, bb_ptr, bb, bs_ptr, bs):
                    anchor = c
                    break
            if anchor >= 0:
                surface = PDP
        page = 0
        landing = anchor >= 0
        while page < m.max_pages and t < horizon_end:
            # ---- the page's slate (or the landing view, which has none) ----
            n_slate = 0
            planted = -1
            req = -1
            if landing:
                slate[0] = anchor
                clicked[0] = 0
                n_clicks = 1
            else:
                if surface == CART and complement[anchor] >= 0 and np.random.random() < m.complement_show:
                    c = complement[anchor]
                    if _allowed(
                        c, t, u, anchor, slate, 0, created_at, listed_until, brand, seller, bb_ptr, bb, bs_ptr, bs
                    ):
                        slate[0] = c
                        n_slate = 1
                        planted = c
                for _slot in range(slate_size - n_slate):
                    for _try in range(10):
                        r = np.random.random()
                        c = -1
                        if surface == HOME:
                            rk = np.random.random()
                            k = 0
                            while k < 2 and interest_leaf[u, k + 1] >= 0 and rk > interest_cum[u, k]:
                                k += 1
                            lf = interest_leaf[u, k]
                            if r < 0.5:
                                c = _draw(pop_cum, leaf_start[lf], leaf_start[lf + 1])
                            elif r < 0.65:
                                cat = leaf_category[lf]
                                c = _draw(pop_cum, category_item_start[cat], category_item_start[cat + 1])
                            elif r < 0.88:
                                c = _draw(pop_cum, 0, n_items)
                            else:
                                lo = np.searchsorted(created_sorted, t - new_window, side="left")
                                hi = np.searchsorted(created_sorted, t, side="right")
                                if hi > lo:
                                    c = by_created[lo + np.random.randint(0, hi - lo)]
                        else:
                            la = leaf[anchor]
                            s0 = leaf_start[la]
                            e0 = leaf_start[la + 1]
                            n_comp = 1 if leaf_complements[la, 1] < 0 else 2
                            cl = leaf_complements[la, np.random.randint(0, n_comp)]
                            if surface == PDP:
                                if r < 0.4:
                                    lo = max(s0, anchor - m.neighbour_window)
                                    hi = min(e0, anchor + m.neighbour_window + 1)
                                    c = lo + np.random.randint(0, hi - lo)
                                elif r < 0.65:
                                    c = _draw(pop_cum, s0, e0)
                                elif r < 0.82:
                                    cat = leaf_category[la]
                                    c = _draw(pop_cum, category_item_start[cat], category_item_start[cat + 1])
                                elif r < 0.92 and cl >= 0:
                                    c = _draw(pop_cum, leaf_start[cl], leaf_start[cl + 1])
                                else:
                                    lf = interest_leaf[u, 0]
                                    c = _draw(pop_cum, leaf_start[lf], leaf_start[lf + 1])
                            else:  # CART: cross-sell
                                if r < 0.55 and cl >= 0:
                                    c = _draw(pop_cum, leaf_start[cl], leaf_start[cl + 1])
                                elif r < 0.75:
                                    cat = leaf_category[la]
                                    c = _draw(pop_cum, category_item_start[cat], category_item_start[cat + 1])
                                else:
                                    c = _draw(pop_cum, 0, n_items)
                        if _allowed(
                            c, t, u, anchor, slate, n_slate, created_at, listed_until,
                            brand, seller, bb_ptr, bb, bs_ptr, bs,
                        ):  # fmt: skip
                            slate[n_slate] = c
                            n_slate += 1
                            break
                if n_slate == 0:
                    break
                first = 1 if planted >= 0 else 0
                if ordered:
                    # A confounded logging policy: the drawn items listed by a noisy logging score
                    # (insertion sort, highest first; a slate is at most 50 items).
                    for p in range(first, n_slate):
                        item = slate[p]
                        key = order_key[item] + order_noise * np.random.standard_normal()
                        q = p
                        while q > first and slate_key[q - 1] < key:
                            slate[q] = slate[q - 1]
                            slate_key[q] = slate_key[q - 1]
                            q -= 1
                        slate[q] = item
                        slate_key[q] = key
                if planted >= 0:
                    # The "bought together" slot sits near the top, not always first.
                    p0 = np.random.randint(0, min(3, n_slate))
                    if ordered:
                        # Moved there, keeping the other items' order.
                        for q in range(p0):
                            slate[q] = slate[q + 1]
                    else:
                        slate[0] = slate[p0]
                    slate[p0] = planted
                req = n_requests
                n_requests += 1
                for p in range(n_slate):
                    n = _emit(ts_out, rec, n, t, horizon_end, s, slate[p], IMPRESSION, 0, surface, req, p)
                # ---- cascade scan ----
                n_clicks = 0
                for p in range(n_slate):
                    if np.random.random() < exam[p]:
                        i = slate[p]
                        logit = (
                            m.click_bias
                            + _affinity(taste, latent, u, i)
                            + quality[i]
                            - price_sensitivity[u] * price_term[i]
                            + m.discount_weight * discount[i]
                        )
                        if i == planted:
                            logit += m.complement_boost
                        if np.random.random() < _sigmoid(logit):
                            clicked[n_clicks] = p
                            n_clicks += 1
                            if np.random.random() < m.stop_after_click:
                                break
                if n_clicks == 0:
                    t += 5 + int(np.random.exponential(20.0))
                    page += 1
                    if np.random.random() < m.continue_without_click:
                        surface = HOME
                        anchor = -1
                        continue
                    break
            # ---- clicks: skip above the first, then click, dwell, maybe add to cart ----
            tc = t + 2 + int(np.random.exponential(6.0))
            view_surface = OTHER if landing else surface
            if not landing:
                for p in range(clicked[0]):
                    n = _emit(ts_out, rec, n, tc, horizon_end, s, slate[p], SKIP, 0, surface, req, p)
            added = -1
            last_click = -1
            for q in range(n_clicks):
                p = clicked[q]
                i = slate[p]
                pos = -1 if landing else p
                aff = _affinity(taste, latent, u, i)
                n = _emit(ts_out, rec, n, tc, horizon_end, s, i, CLICK, 0, view_surface, req, pos)
                dwell_s = np.exp(np.log(m.dwell_median_s) + 0.3 * aff + m.dwell_sigma * np.random.standard_normal())
                dwell_s = min(max(dwell_s, 2.0), 1200.0)
                t_leave = tc + int(dwell_s)
                dwell_ms = int(dwell_s * 1000.0)
                n = _emit(ts_out, rec, n, t_leave, horizon_end, s, i, DWELL, dwell_ms, view_surface, req, pos)
                last_click = i
                logit = m.atc_bias + m.atc_affinity * aff + 0.5 * quality[i]
                logit -= 0.5 * price_sensitivity[u] * price_term[i]
                if i == planted:
                    logit += m.complement_boost
                in_cart = False
                for k in range(n_cart):
                    if cart_item[k] == i:
                        in_cart = True
                if not in_cart and n_cart < MAX_CART and np.random.random() < _sigmoid(logit):
                    n = _emit(ts_out, rec, n, t_leave, horizon_end, s, i, ADD_TO_CART, 0, view_surface, req, pos)
                    cart_item[n_cart] = i
                    cart_req[n_cart] = req
                    cart_pos[n_cart] = pos
                    cart_surface[n_cart] = view_surface
                    cart_parent[n_cart] = anchor_cart if i == planted else -1
                    cart_aff[n_cart] = aff
                    added = n_cart
                    n_cart += 1
                tc = t_leave + 2
            t = tc + 2 + int(np.random.exponential(5.0))
            page += 1
            landing = False
            # ---- where next ----
            if added >= 0 and np.random.random() < m.cart_after_add:
                surface = CART
                anchor = cart_item[added]
                anchor_cart = added
            elif last_click >= 0 and np.random.random() < m.continue_after_click:
                surface = PDP
                anchor = last_click
                anchor_cart = -1
            elif np.random.random() < m.continue_without_click:
                surface = HOME
                anchor = -1
                anchor_cart = -1
            else:
                break
        # ---- checkout ----
        if n_cart > 0 and np.random.random() < m.checkout_rate:
            t += 20 + int(np.random.exponential(90.0))
            for k in range(n_cart):
                parent = cart_parent[k]
                if parent >= 0:
                    p_buy = m.complement_buy if bought[parent] else 0.1
                else:
                    p_buy = _sigmoid(m.purchase_bias + m.purchase_affinity * cart_aff[k])
                bought[k] = np.random.random() < p_buy
            delayed = purchase_delay_s > 0.0
            if delayed:
                # Drawn after the decisions (and only when asked for), so the session's other draws,
                # and so every other event, match the store without delays.
                t += int(np.random.exponential(purchase_delay_s))
            for k in range(n_cart):
                if not bought[k]:
                    continue
                if delayed and t >= horizon_end:
                    break  # censored: paid after the log ends
                n = _emit(
                    ts_out, rec, n, t, horizon_end, s, cart_item[k], PURCHASE, 0,
                    cart_surface[k], cart_req[k], cart_pos[k],
                )  # fmt: skip
                t += 1
    return n, n_requests, s_end


def logging_score(catalog: Catalog, slate_order: str) -> np.ndarray:
    """float64 [n_items]: the score the logging policy lists a slate's items by, standardised to
    mean 0 and standard deviation 1 over the catalog; empty for "draw" (draw order).

    "popularity": log of the item's popularity (the sampling weight; the model sees it through the
    log's counts: `item_log_popularity`, `item_ctr`). "price": log of the effective price
    (`item_log_price`), as a ranker that puts revenue first would. Neither is the attractiveness:
    popularity is only correlated with quality, and price-sensitive shoppers prefer cheaper items.
    """
    if slate_order not in SLATE_ORDERS:
        raise ValueError(f"slate_order must be one of {', '.join(SLATE_ORDERS)}, got {slate_order!r}")
    if slate_order == "draw":
        return np.zeros(0, dtype=np.float64)
    if slate_order == "popularity":
        key = np.log(catalog.popularity)
    else:
        key = np.log(catalog.price * (1.0 - catalog.discount))
    key = np.asarray(key, dtype=np.float64)
    sd = float(key.std())
    return (key - key.mean()) / (sd if sd > 0.0 else 1.0)


def simulate_sessions(
    catalog: Catalog,
    shoppers: Shoppers,
    visits: Visits,
    horizon_end: int,
    slate_size: int,
    seed: int,
    model: BrowsingModel = BrowsingModel(),
    progress: Callable[[str, int, int], None] | None = None,
    purchase_delay_days: float = 0.0,
    slate_order: str = "draw",
) -> Log:
    """Every session in `visits`, deterministic in `seed`; events in session order.

    `purchase_delay_days` > 0 delays each checkout's purchases by an exponential delay with that
    mean (days) and leaves out those falling at or after `horizon_end` (see the module docstring);
    0 keeps the in-session checkout. `slate_order` (one of SLATE_ORDERS) lists each slate's drawn
    items in draw order ("draw", the default) or by a noisy logging score (`logging_score`).
    Raises ValueError for a negative or non-finite delay or an unknown order.
    """
    if not (np.isfinite(purchase_delay_days) and purchase_delay_days >= 0.0):
        raise ValueError(f"purchase_delay_days must be a finite number ≥ 0, got {purchase_delay_days}")
    order_key = logging_score(catalog, slate_order)
    rng = np.random.default_rng([seed, 4])
    n_sessions = len(visits)
    session_seed = rng.integers(0, 2**32, size=n_sessions, dtype=np.uint64).astype(np.int64)
    tree = catalog.tree
    category_item_start = catalog.leaf_start[tree.category_start].astype(np.int64)
    by_created = np.argsort(catalog.created_at, kind="stable").astype(np.int64)
    created_sorted = catalog.created_at[by_created]
    exam = position_bias(model, slate_size).astype(np.float64)
    pop_cum = np.cumsum(catalog.popularity)
    discount = catalog.discount.astype(np.float32)

    cap = max(4_096, int(n_sessions * 48))
    ts_out = np.empty(cap, dtype=np.int64)
    rec = np.empty((cap, N_RECORD), dtype=np.int32)
    n, n_requests, s = 0, 0, 0
    while s < n_sessions:
        stop = min(s + CHUNK_SESSIONS, n_sessions)
        n, n_requests, s = _simulate(
            s, stop, n, n_requests, ts_out, rec, session_seed, visits.user, visits.start, horizon_end,
            catalog.latent, catalog.quality, catalog.price_term, discount,
            catalog.created_at, catalog.listed_until, catalog.brand, catalog.seller, catalog.leaf,
            catalog.complement, pop_cum, catalog.leaf_start, tree.leaf_category, category_item_start,
            tree.leaf_complements, by_created, created_sorted,
            shoppers.taste, shoppers.price_sensitivity, shoppers.interest_leaf, shoppers.interest_cum,
            shoppers.blocked_brands_ptr, shoppers.blocked_brands, shoppers.blocked_sellers_ptr,
            shoppers.blocked_sellers, exam, model, float(purchase_delay_days) * DAY,
            order_key, SLATE_ORDER_NOISE,
        )  # fmt: skip
        if s < stop:
            grow = max(cap // 2, 4_096)
            ts_out = np.concatenate((ts_out, np.empty(grow, dtype=np.int64)))
            rec = np.concatenate((rec, np.empty((grow, N_RECORD), dtype=np.int32)))
            cap += grow
        if progress is not None:
            progress("sessions", s, n_sessions)
    return Log(
        ts=ts_out[:n].copy(),
        session=rec[:n, R_SESSION].copy(),
        item=rec[:n, R_ITEM].copy(),
        type=rec[:n, R_TYPE].astype(np.int8),
        dwell_ms=rec[:n, R_DWELL_MS].copy(),
        surface=rec[:n, R_SURFACE].astype(np.int8),
        request=rec[:n, R_REQUEST].copy(),
        position=rec[:n, R_POSITION].astype(np.int8),
        n_requests=n_requests,
    )
