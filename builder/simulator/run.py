"""The driver: simulated shoppers browse the real engine over HTTP and post what they do.

A session (builder.simulator.shopper for the behaviour, builder.synth.sessions for the model it
mirrors):

1. a shopper is drawn by activity; the session starts on `home` (probability `home_start`) or
   lands on a product page from outside (a view with no slate: `click` + `dwell` with surface
   `other`, request_id "" and position -1, maybe `add_to_cart`);
2. each page asks `GET /v1/recommendations` (surface, user_id, session_id, device, region,
   count, and item_id for `pdp` or the cart's SKUs for `cart`), checks the slate against the hard
   rules (stock with a grace period for the feed, the shopper's blocked brands and sellers, no
   duplicates), and logs an `impression` per served slot;
3. the shopper scans it (cascade with position bias); the shown slots above the first click are
   logged as `skip`; each click gets `click` + `dwell` (request_id and position of the slot) and
   maybe `add_to_cart`;
4. next page: the cart slate after an add (`cart_after_add`), else the clicked item's page
   (`continue_after_click`), else another home slate (`continue_without_click`), else leave;
5. at the end the cart is checked out (`checkout_rate`); each bought item is a `purchase` with the
   request_id, position and surface of the slate it was added from (the storefront carries them
   through the cart), if it is still in stock.

Events go to `POST /v1/events` in batches: by default the page's events just before the next page
is asked for (as a storefront sends them), so the engine's live history sees a click before the
next slate; 503s are retried after Retry-After. Each session draws from its own generator seeded
by (seed, session number), so the choices depend only on the seed and the engine's answers, not
on how sessions are spread over threads (with the inventory feed on, the market also moves with
wall time).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from builder.simulator.inventory import Churn, InventoryFeed
from builder.simulator.market import Market
from builder.simulator.shopper import Behaviour, Population, Shopper
from builder.simulator.storefront import Answer, Storefront, wait_ready
from builder.simulator.summary import SimulationSummary, Tally
from builder.simulator.world import World
from builder.synth.sessions import MAX_CART
from engine.schemas import Event, RecommendResponse

Progress = Callable[[str, int, int], None]
MAX_EVENTS_PER_BATCH = 1000  # = the engine's default limits.max_events_per_batch
SESSION_STREAM = 7  # generator stream of per-session choices


class SimulationError(RuntimeError):
    """A simulation that cannot run (bad options, engine not reachable)."""


@dataclass
class CartLine:
    row: int
    sku: str
    surface: str  # where it was added from ("other" for a landing view)
    request_id: str  # "" when not from a slate
    position: int  # -1 when not from a slate
    variant: str | None  # arm of the slate it came from (None: not from a slate)
    parent: int  # cart index of the anchor this planted complement was added with, -1 otherwise
    affinity: float


@dataclass
class Page:
    """The slate just shown, as far as the clicks need it."""

    surface: str
    rows: np.ndarray  # int64 [k], -1 = unknown SKU
    skus: list[str]
    request_id: str
    variant: str | None
    planted: int  # the planted complement's row on a cart slate, else -1


class Simulation:
    """Shared, read-mostly state of one run; one `SessionRunner` per thread uses it."""

    def __init__(
        self,
        world: World,
        url: str,
        market: Market,
        population: Population,
        behaviour: Behaviour,
        *,
        seed: int,
        run_tag: str,
        grace_s: float,
        flush_each_page: bool,
        feed: InventoryFeed | None,
    ) -> None:
        self.world, self.url, self.market = world, url, market
        self.population, self.behaviour = population, behaviour
        self.seed, self.run_tag, self.grace_s = seed, run_tag, grace_s
        self.flush_each_page = flush_each_page
        self.feed = feed


class SessionRunner:
    """Runs sessions on one keep-alive connection and counts into its own Tally."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.front = Storefront(sim.url)
        self.tally = Tally()
        self.pending: list[Event] = []
        self._event_no = 0

    # --- HTTP ------------------------------------------------------------------------------------

    def _count(self, answer: Answer) -> None:
        self.tally.http_status[answer.label] += 1
        self.tally.retries += answer.retries
        if answer.problem:
            self.tally.note(answer.problem)

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MAX_EVENTS_PER_BATCH], self.pending[MAX_EVENTS_PER_BATCH:]
            answer, result = self.front.post_events(batch)
            self._count(answer)
            self.tally.event_batches += 1
            self.tally.event_latency_s.append(answer.seconds)
            if result is None:
                self.tally.events_unsent += len(batch)
                continue
            self.tally.events_accepted += result.accepted
            self.tally.events_duplicates += result.duplicates
            self.tally.events_rejected += result.rejected
            for r in result.rejections[:3]:
                self.tally.note(f"event {r.event_id} rejected: {r.reason}")

    def emit(self, shopper: Shopper, session_id: str, sku: str, kind: str, *, surface: str, request_id: str = "",
             position: int = -1, dwell_ms: int = 0) -> None:  # fmt: skip
        self._event_no += 1
        self.pending.append(
            Event(
                event_id=f"{session_id}-e{self._event_no}",
                user_id=shopper.user_id,
                sku=sku,
                type=kind,  # type: ignore[arg-type]
                ts=time.time(),
                session_id=session_id,
                surface=surface,
                request_id=request_id,
                position=position,
                dwell_ms=dwell_ms,
                device=shopper.device,
                region=shopper.region,
            )
        )
        self.tally.events_by_type[kind] += 1

    def slate(self, shopper: Shopper, session_id: str, surface: str, anchor_sku: str, cart: list[CartLine],
              count: int) -> tuple[Answer, RecommendResponse | None, float]:  # fmt: skip
        params: dict[str, object] = {
            "surface": surface,
            "user_id": shopper.user_id,
            "session_id": session_id,
            "device": shopper.device,
            "region": shopper.region,
            "count": count,
        }
        if surface == "pdp":
            params["item_id"] = anchor_sku
        elif surface == "cart":
            params["cart"] = ",".join(line.sku for line in cart)
        asked_at = time.monotonic()
        answer, response = self.front.recommend(params)
        self._count(answer)
        if response is not None:
            self.tally.latency_s.append(answer.seconds)
        return answer, response, asked_at

    # --- one session -----------------------------------------------------------------------------

    def check(self, shopper: Shopper, page: Page, asked_at: float) -> None:
        """Hard rules on a served slate; every breach is counted."""
        m, t = self.sim.market, self.tally
        seen: set[str] = set()
        for sku, row in zip(page.skus, page.rows.tolist()):
            if sku in seen:
                t.violation("duplicate_sku", f"{sku} twice in {page.request_id}")
            seen.add(sku)
            if row < 0:
                t.unknown_skus += 1
                continue
            t.impressions_by_row[row] += 1
            if row >= m.n_base:
                t.new_sku_impressions += 1
            why = m.unavailable_for(row, asked_at, self.sim.grace_s)
            if why is not None:
                t.violation(why, f"{sku} on {page.surface} ({page.request_id})")
            if int(m.brand[row]) in shopper.blocked_brands:
                t.violation("blocked_brand", f"{sku} of {m.brand_names[int(m.brand[row])]} to {shopper.user_id} ({page.request_id})")
            if int(m.seller[row]) in shopper.blocked_sellers:
                t.violation("blocked_seller", f"{sku} of {m.seller_names[int(m.seller[row])]} to {shopper.user_id} ({page.request_id})")

    def run(self, index: int, count: int) -> None:
        sim, t = self.sim, self.tally
        m, b, model = sim.market, sim.behaviour, sim.behaviour.model
        rng = np.random.default_rng([sim.seed, SESSION_STREAM, index])
        shopper = sim.population.shopper(sim.population.draw(rng), rng)
        session_id = f"sim-{sim.run_tag}-{index}"
        self._event_no = 0
        t.sessions += 1
        t.shoppers.add(shopper.row)
        cart: list[CartLine] = []
        surface, anchor, anchor_cart = "home", -1, -1
        landing = False
        if rng.random() >= model.home_start:
            anchor = b.landing_item(rng, shopper, m)
            if anchor >= 0:
                landing, surface = True, "pdp"
        page_no = 0
        while page_no < model.max_pages:
            page_no += 1
            t.pages += 1
            if landing:
                # A product page reached from outside: the view itself is the "click".
                page = Page("other", np.asarray([anchor], dtype=np.int64), [m.skus[anchor]], "", None, -1)
                clicked = [0]
                landing = False
            else:
                if sim.flush_each_page:
                    self.flush()
                anchor_sku = m.skus[anchor] if anchor >= 0 else ""
                answer, response, asked_at = self.slate(shopper, session_id, surface, anchor_sku, cart, count)
                if response is None:
                    if answer.status == 404:  # e.g. the page of a new SKU the engine has no vector for
                        t.not_found += 1
                        t.note(f"404 on {surface}: {answer.body[:160].decode(errors='replace')}")
                        if rng.random() < model.continue_without_click:
                            surface, anchor, anchor_cart = "home", -1, -1
                            continue
                    break
                t.requests_by_surface[surface] += 1
                t.bundles[response.bundle] += 1
                t.fallbacks[response.fallback or "none"] += 1
                skus = [item.sku for item in response.items]
                t.sources.update(item.source for item in response.items)
                planted = int(m.complement[anchor]) if surface == "cart" and anchor >= 0 else -1
                page = Page(surface, m.rows_of(skus), skus, response.request_id, response.variant, planted)
                self.check(shopper, page, asked_at)
                arm = t.variant(response.variant)
                arm.requests += 1
                arm.impressions += len(skus)
                for p, sku in enumerate(skus):
                    self.emit(shopper, session_id, sku, "impression", surface=surface, request_id=page.request_id, position=p)
                clicked, _ = b.scan(rng, b.attractiveness(shopper, m, page.rows, planted))
                if not clicked:
                    if rng.random() < model.continue_without_click:
                        surface, anchor, anchor_cart = "home", -1, -1
                        continue
                    break
                for p in range(clicked[0]):
                    self.emit(shopper, session_id, skus[p], "skip", surface=surface, request_id=page.request_id, position=p)
            added, last_click = -1, -1
            for p in clicked:
                row = int(page.rows[p])
                sku = page.skus[p]
                from_slate = page.request_id != ""
                position = p if from_slate else -1
                aff = float(b.affinity(shopper, m, np.asarray([row]))[0])
                self.emit(shopper, session_id, sku, "click", surface=page.surface, request_id=page.request_id, position=position)
                self.emit(shopper, session_id, sku, "dwell", surface=page.surface, request_id=page.request_id,
                          position=position, dwell_ms=b.dwell_ms(rng, aff))  # fmt: skip
                if page.variant is not None:
                    t.variant(page.variant).clicks += 1
                last_click = row
                is_planted = row == page.planted
                p_add = b.add_to_cart_probability(shopper, m, row, aff, is_planted)
                in_cart = any(line.row == row for line in cart)
                if not in_cart and len(cart) < MAX_CART and rng.random() < p_add and m.available(row):
                    self.emit(shopper, session_id, sku, "add_to_cart", surface=page.surface, request_id=page.request_id, position=position)
                    if page.variant is not None:
                        t.variant(page.variant).add_to_cart += 1
                    cart.append(CartLine(row, sku, page.surface, page.request_id, position, page.variant,
                                         anchor_cart if is_planted else -1, aff))  # fmt: skip
                    added = len(cart) - 1
            # Where next (builder.synth.sessions' order of choices).
            if added >= 0 and rng.random() < model.cart_after_add:
                surface, anchor, anchor_cart = "cart", cart[added].row, added
            elif last_click >= 0 and rng.random() < model.continue_after_click:
                surface, anchor, anchor_cart = "pdp", last_click, -1
            elif rng.random() < model.continue_without_click:
                surface, anchor, anchor_cart = "home", -1, -1
            else:
                break
        if cart and rng.random() < model.checkout_rate:
            self.checkout(rng, shopper, session_id, cart)
        self.flush()

    def checkout(self, rng: np.random.Generator, shopper: Shopper, session_id: str, cart: list[CartLine]) -> None:
        sim, t = self.sim, self.tally
        bought = [False] * len(cart)
        for k, line in enumerate(cart):
            parent = bought[line.parent] if line.parent >= 0 else None
            if rng.random() >= sim.behaviour.buy_probability(line.affinity, parent):
                continue
            price = sim.market.paid_price(line.row)
            ok, left = sim.market.buy(line.row)
            if not ok:
                t.purchases_sold_out += 1
                continue
            bought[k] = True
            if sim.feed is not None:
                sim.feed.sold(line.row, left)
            self.emit(shopper, session_id, line.sku, "purchase", surface=line.surface, request_id=line.request_id, position=line.position)
            t.revenue += price
            if line.variant is not None:
                arm = t.variant(line.variant)
                arm.purchases += 1
                arm.revenue += price


def simulate(
    world: World,
    url: str,
    *,
    sessions: int | None = None,
    seed: int = 0,
    concurrency: int = 2,
    taste_shift: float = 0.0,
    trend_leaf: str | None = None,
    inventory: tuple[str, str] | None = None,
    count: int | None = None,
    shoppers: int | None = None,
    duration_s: float | None = None,
    churn: Churn = Churn(),
    grace_s: float = 0.5,
    flush_each_page: bool = True,
    ready_timeout_s: float = 120.0,
    settle_s: float = 1.5,
    keep_item_counts: bool = False,
    run_tag: str | None = None,
    progress: Progress | None = None,
) -> SimulationSummary:
    """Drive the engine at `url` with simulated shoppers of `world` (module docstring).

    sessions / duration_s: stop after that many sessions and/or when that many seconds have passed
    (sessions in flight finish); at least one must be given. concurrency: threads, each with its
    own keep-alive connection. trend_leaf: the leaf category a taste shift moves tastes towards
    (default: one drawn from the seed). inventory: (PUB endpoint, snapshot endpoint) to bind a publisher on
    (the engine's [inventory] settings must name them): live stock, prices and new SKUs while the
    run lasts. count: slate size (default: the store's). shoppers: draw sessions from only this
    many shoppers. grace_s: how long after a stock-out an item may still be served without counting
    as a violation. run_tag: part of every session id (default: random), so repeated runs with one
    seed are distinct sessions to the engine. Raises SimulationError.
    """
    if sessions is None and duration_s is None:
        raise SimulationError("give sessions, duration_s or both: the run needs an end")
    if sessions is not None and sessions < 0:
        raise SimulationError(f"sessions must be ≥ 0, got {sessions}")
    if duration_s is not None and duration_s <= 0:
        raise SimulationError(f"duration must be > 0 seconds, got {duration_s}")
    if not 1 <= concurrency <= 64:
        raise SimulationError(f"concurrency must be in [1, 64], got {concurrency}")
    if not 0.0 <= taste_shift <= 1.0:
        raise SimulationError(f"taste shift must be in [0, 1], got {taste_shift}")
    count = world.slate_size if count is None else count
    if not 1 <= count <= 100:
        raise SimulationError(f"count must be in [1, 100], got {count}")
    run_tag = run_tag or f"{seed}-{uuid.uuid4().hex[:8]}"

    market = Market(world, track_stock=inventory is not None)
    try:
        population = Population(world, taste_shift=taste_shift, limit=shoppers, seed=seed, trend_leaf=trend_leaf)
    except ValueError as exc:
        raise SimulationError(str(exc)) from exc
    behaviour = Behaviour(world.model, count)
    feed: InventoryFeed | None = None
    if inventory is not None:
        feed = InventoryFeed(market, inventory[0], inventory[1], churn=churn, seed=seed)
    try:
        if feed is not None:
            feed.start()
            feed.publisher.heartbeat()  # an engine following an older publisher on these endpoints resyncs now
        try:
            wait_ready(url, timeout_s=ready_timeout_s, need_inventory=feed is not None)
        except Exception as exc:
            raise SimulationError(str(exc)) from exc
        if feed is not None and settle_s > 0:
            time.sleep(settle_s)  # the heartbeat above, a resync, and the snapshot: about a second
        sim = Simulation(world, url, market, population, behaviour, seed=seed, run_tag=run_tag, grace_s=grace_s,
                         flush_each_page=flush_each_page, feed=feed)  # fmt: skip
        tally, wall = _run_threads(sim, sessions, duration_s, concurrency, count, progress)
    finally:
        if feed is not None:
            feed.stop()
    return tally.summary(
        url=url,
        seed=seed,
        taste_shift=taste_shift,
        concurrency=concurrency,
        count=count,
        catalog_items=world.n_items,
        skus=market.skus,
        wall_s=wall,
        inventory=feed.tally if feed is not None else None,
        keep_item_counts=keep_item_counts,
    )


def _run_threads(
    sim: Simulation, sessions: int | None, duration_s: float | None, concurrency: int, count: int, progress: Progress | None
) -> tuple[Tally, float]:
    numbers = itertools.count()  # next() on it is atomic under the GIL: each session runs once
    started = time.monotonic()
    deadline = started + duration_s if duration_s is not None else None
    runners = [SessionRunner(sim) for _ in range(concurrency)]
    failures: list[BaseException] = []
    done = itertools.count(1)
    total = sessions if sessions is not None else 0

    def work(runner: SessionRunner) -> None:
        try:
            while not failures:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                index = next(numbers)
                if sessions is not None and index >= sessions:
                    return
                runner.run(index, count)
                finished = next(done)
                if progress is not None and finished % 50 == 0:
                    progress("sessions", finished, total)
        except BaseException as exc:  # surfaced after join: a thread must not die unnoticed
            failures.append(exc)
        finally:
            try:
                runner.flush()
            finally:
                runner.front.close()

    threads = [threading.Thread(target=work, args=(r,), name=f"shopper-{k}", daemon=True) for k, r in enumerate(runners)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - started
    if failures:
        raise failures[0]
    tally = Tally()
    for r in runners:
        tally.merge(r.tally)
    if progress is not None:
        progress("sessions", tally.sessions, total or tally.sessions)
    return tally, wall
