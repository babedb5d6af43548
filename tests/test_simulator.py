"""The closed-loop simulator: its behaviour model (no server), its session protocol against a fake
storefront, the store it loads, and one run against the real engine with a live inventory feed."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from builder.simulator.inventory import Churn, InventoryFeed
from builder.simulator.market import Market
from builder.simulator.run import SessionRunner, Simulation, SimulationError, simulate
from builder.simulator.shopper import Behaviour, Population, position_bias, shift_tastes
from builder.simulator.storefront import Answer
from builder.simulator.summary import gini
from builder.simulator.world import World, WorldError
from builder.synth.sessions import BrowsingModel
from engine.inventory import wire
from engine.schemas import EventsResponse, RecommendedItem, RecommendResponse


@pytest.fixture(scope="module")
def world(tiny_store: Path) -> World:
    return World.load(tiny_store)


def _slot_click_rates(behaviour: Behaviour, logit: float, trials: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clicks = np.zeros(behaviour.count)
    logits = np.full(behaviour.count, logit)
    for _ in range(trials):
        clicked, _ = behaviour.scan(rng, logits)
        clicks[clicked] += 1
    return clicks / trials


# --- the behaviour model -----------------------------------------------------------------------


def test_click_rate_falls_with_the_slot_for_equally_attractive_items() -> None:
    behaviour = Behaviour(BrowsingModel(), 10)
    rates = _slot_click_rates(behaviour, 0.0, 20_000, seed=1)
    assert rates[0] > rates[2] > rates[5] > rates[9] > 0
    # Slot 0 is always examined: its click rate is sigmoid(0) = 0.5, within sampling error.
    assert abs(rates[0] - 0.5) < 0.02


def test_position_bias_is_the_stores() -> None:
    model = BrowsingModel(exam_decay=0.8)
    bias = position_bias(model, 10)
    assert bias[0] == 1.0 and np.all(np.diff(bias) < 0)
    np.testing.assert_allclose(bias[3], 1 / 4**0.8)


def test_items_closer_to_the_shoppers_taste_are_clicked_more(world: World) -> None:
    market = Market(world)
    behaviour = Behaviour(world.model, 1)
    rng = np.random.default_rng(3)
    population = Population(world, seed=0)
    shopper = population.shopper(population.draw(rng), rng)
    aff = behaviour.affinity(shopper, market, np.arange(world.n_items))
    order = np.argsort(aff)
    liked, disliked = order[-20:], order[:20]
    logits_liked = behaviour.attractiveness(shopper, market, liked)
    logits_disliked = behaviour.attractiveness(shopper, market, disliked)
    assert logits_liked.mean() > logits_disliked.mean() + 2.0

    def clicks(rows: np.ndarray) -> int:
        return sum(len(behaviour.scan(rng, behaviour.attractiveness(shopper, market, np.asarray([r])))[0]) for r in rows for _ in range(200))

    assert clicks(liked) > 3 * clicks(disliked)


def test_a_higher_live_price_lowers_the_click_logit_by_price_sensitivity_times_its_log(world: World) -> None:
    market = Market(world)
    behaviour = Behaviour(world.model, 5)
    population = Population(world, seed=0)
    shopper = population.shopper(3, np.random.default_rng(4))
    sensitive = replace(shopper, price_sensitivity=shopper.price_sensitivity * 3.0)
    rows = np.arange(5)
    before = behaviour.attractiveness(shopper, market, rows)
    before_sensitive = behaviour.attractiveness(sensitive, market, rows)
    market.set_price(2, float(market.price[2]) * 2.0)
    market.set_discount(4, float(market.discount[4]) + 0.2)
    after = behaviour.attractiveness(shopper, market, rows)
    np.testing.assert_allclose(after[2] - before[2], -shopper.price_sensitivity * np.log(2.0), rtol=1e-5)
    np.testing.assert_allclose(after[4] - before[4], world.model.discount_weight * 0.2, rtol=1e-5)
    np.testing.assert_allclose(after[[0, 1, 3]], before[[0, 1, 3]])
    # A more price-sensitive shopper minds the same price rise more.
    drop_sensitive = behaviour.attractiveness(sensitive, market, rows)[2] - before_sensitive[2]
    assert drop_sensitive < after[2] - before[2] < 0


def test_unknown_skus_are_never_clicked(world: World) -> None:
    market = Market(world)
    behaviour = Behaviour(world.model, 3)
    population = Population(world, seed=0)
    rng = np.random.default_rng(5)
    logits = behaviour.attractiveness(population.shopper(0, rng), market, np.asarray([-1, 0, -1]))
    assert np.isneginf(logits[0]) and np.isneginf(logits[2]) and np.isfinite(logits[1])


def test_taste_shift_zero_keeps_tastes_and_a_shift_moves_them_keeping_their_strength(world: World) -> None:
    taste, sens = world.taste, world.price_sensitivity
    same_t, same_s = shift_tastes(taste, sens, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(same_t, taste)
    np.testing.assert_array_equal(same_s, sens)

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    half_t, half_s = shift_tastes(taste, sens, 0.5, np.random.default_rng(0))
    full_t, full_s = shift_tastes(taste, sens, 1.0, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(half_t, axis=1), np.linalg.norm(taste, axis=1), rtol=1e-4)
    assert cosine(taste, full_t).mean() < cosine(taste, half_t).mean() < 0.99
    np.testing.assert_allclose(half_s, 1.5 * sens, rtol=1e-6)
    np.testing.assert_allclose(full_s, 2.0 * sens, rtol=1e-6)
    again_t, _ = shift_tastes(taste, sens, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(again_t, half_t)  # deterministic in the generator
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        shift_tastes(taste, sens, 1.5, np.random.default_rng(0))


def test_the_population_draws_shoppers_by_activity(world: World) -> None:
    population = Population(world, seed=0)
    rng = np.random.default_rng(6)
    draws = np.bincount([population.draw(rng) for _ in range(20_000)], minlength=world.n_users)
    busy = world.activity >= np.quantile(world.activity, 0.9)
    idle = world.activity <= np.quantile(world.activity, 0.1)
    assert draws[busy].mean() > 3 * draws[idle].mean()
    few = Population(world, limit=25, seed=0)
    assert len(few) == 25 and {few.draw(rng) for _ in range(500)} <= set(few.members.tolist())


def test_gini_is_zero_for_equal_counts_and_near_one_for_a_single_item() -> None:
    assert gini(np.full(100, 7)) == pytest.approx(0.0)
    assert gini(np.r_[np.zeros(99), 50]) == pytest.approx(0.99)
    assert gini(np.zeros(10)) == 0.0


# --- the store and the market ------------------------------------------------------------------


def test_world_loads_the_synthetic_store_with_its_truth_and_parameters(world: World, tiny_store: Path) -> None:
    info = json.loads((tiny_store / "truth" / "store.json").read_text())
    n, u = info["counts"]["items"], info["counts"]["users"]
    assert world.n_items == n and world.n_users == u
    assert world.latent.shape == (n, info["scale"]["latent_dim"]) and world.taste.shape == (u, info["scale"]["latent_dim"])
    assert world.text_embedding.shape == (n, info["scale"]["text_dim"])
    assert world.slate_size == info["scale"]["slate_size"]
    assert world.model._asdict() == info["parameters"]["browsing_model"]
    assert int((~world.in_stock).sum()) == info["counts"]["out_of_stock"]
    assert int((world.complement >= 0).sum()) == info["counts"]["planted_pairs"]
    assert sum(1 for b in world.blocked_brands if b) == info["counts"]["users_blocking_brands"]
    assert sum(1 for s in world.blocked_sellers if s) == info["counts"]["users_blocking_sellers"]
    assert np.all(world.activity > 0) and world.activity.max() > 3 * np.median(world.activity)
    assert set(world.device) <= {"", "mobile", "desktop", "app"}


def test_world_refuses_a_store_without_truth(tmp_path: Path, tiny_store: Path) -> None:
    for name in ("catalog.parquet", "users.parquet"):
        (tmp_path / name).write_bytes((tiny_store / name).read_bytes())
    with pytest.raises(WorldError, match="truth"):
        World.load(tmp_path)


def test_the_market_sells_stock_down_and_knows_since_when_an_item_is_unavailable(world: World) -> None:
    market = Market(world, track_stock=True)
    row = int(np.flatnonzero(world.in_stock & (world.stock_qty >= 2))[0])
    market.qty[row] = 2
    assert market.buy(row) == (True, 1)
    assert market.unavailable_for(row, asked_at=1e12, grace_s=0.5) is None
    assert market.buy(row) == (True, 0)
    assert market.buy(row) == (False, 0)  # sold out: cannot be bought
    since = float(market.unavailable_since[row])
    assert market.unavailable_for(row, since + 0.1, grace_s=0.5) is None  # the feed may not have arrived
    assert market.unavailable_for(row, since + 1.0, grace_s=0.5) == "out_of_stock"
    sold_out_from_start = int(np.flatnonzero(~world.in_stock)[0])
    assert market.unavailable_for(sold_out_from_start, 0.0, grace_s=0.5) == "out_of_stock"
    static = Market(world)  # without a feed, stock is what the catalog says for the whole run
    assert static.buy(row) == (True, int(world.stock_qty[row])) and static.qty[row] == world.stock_qty[row]


def test_a_new_sku_is_a_valid_delta_cloned_into_its_sources_leaf(world: World) -> None:
    market = Market(world, capacity_new=3, track_stock=True)
    feed = InventoryFeed(market, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", seed=1)
    try:
        deltas = [feed.new_sku() for _ in range(4)]
    finally:
        feed.publisher.close()
    assert deltas[3] is None  # the market is full
    made = [d for d in deltas if d is not None]
    checked = wire.check(made)
    assert checked.rejected == 0, checked.errors
    for delta in made:
        row = market.row_of[delta.sku]
        assert row >= world.n_items and market.available(row)
        assert delta.category_path == world.category_paths[int(market.leaf[row])]
        assert delta.text_embedding is not None and len(delta.text_embedding) == world.text_embedding.shape[1]
        assert np.linalg.norm(market.latent[row]) == pytest.approx(1.0, abs=1e-4)
        # Close to some catalog item of its leaf: the clone's source.
        same_leaf = np.flatnonzero(world.leaf == market.leaf[row])
        assert float((world.latent[same_leaf] @ market.latent[row]).max()) > 0.8


# --- the session protocol, against a fake storefront -------------------------------------------


class FakeStorefront:
    """Serves each shopper the items they like best (so they click and buy), records everything."""

    def __init__(self, world: World, market: Market, population: Population) -> None:
        self.world, self.market, self.population = world, market, population
        self.served: dict[str, list[str]] = {}
        self.events: list = []
        self.user_row = {uid: k for k, uid in enumerate(world.user_ids)}

    def recommend(self, params: dict) -> tuple[Answer, RecommendResponse]:
        u = self.user_row[params["user_id"]]
        aff = self.market.latent[: self.market.n] @ self.population.taste[u]
        exclude = set(params.get("cart", "").split(",")) | {params.get("item_id")}
        best = [int(r) for r in np.argsort(-aff) if self.market.available(int(r)) and self.market.skus[int(r)] not in exclude]
        rng = np.random.default_rng(len(self.served))
        skus = [self.market.skus[r] for r in rng.permutation(best[:30])[: params["count"]]]
        request_id = f"R{len(self.served)}"
        self.served[request_id] = skus
        items = [RecommendedItem(sku=s, score=1.0, reason="", source="ann") for s in skus]
        response = RecommendResponse(items, "b1", "arm-a" if u % 2 else "arm-b", None, request_id, 1.0)
        return Answer(200, b"", 0.001, 0, {}), response

    def post_events(self, events: list) -> tuple[Answer, EventsResponse]:
        self.events.extend(events)
        return Answer(202, b"", 0.001, 0, {}), EventsResponse(len(events), 0, 0)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def fake_run(world: World) -> Iterator[tuple[FakeStorefront, SessionRunner]]:
    market = Market(world)
    population = Population(world, seed=0)
    sim = Simulation(world, "http://fake", market, population, Behaviour(world.model, 8), seed=11, run_tag="t",
                     grace_s=0.5, flush_each_page=True, feed=None)  # fmt: skip
    runner = SessionRunner(sim)
    fake = FakeStorefront(world, market, population)
    runner.front = fake  # type: ignore[assignment]
    for index in range(300):
        runner.run(index, 8)
    yield fake, runner


def test_slate_events_name_the_request_and_the_slot_that_showed_the_item(fake_run: tuple[FakeStorefront, SessionRunner]) -> None:
    fake, runner = fake_run
    kinds = defaultdict(int)
    for e in fake.events:
        kinds[e.type] += 1
        if e.request_id:
            assert fake.served[e.request_id][e.position] == e.sku, e
            assert e.surface in ("home", "pdp", "cart")
        else:  # a landing view: not from a slate
            assert e.type in ("click", "dwell", "add_to_cart", "purchase") and e.position == -1 and e.surface == "other"
    assert kinds["impression"] == sum(len(s) for s in fake.served.values())
    assert 0 < kinds["purchase"] <= kinds["add_to_cart"] < kinds["click"] == kinds["dwell"] < kinds["impression"]
    assert len({e.event_id for e in fake.events}) == len(fake.events)
    assert dict(runner.tally.events_by_type) == dict(kinds)


def test_skips_are_the_shown_slots_above_the_first_click(fake_run: tuple[FakeStorefront, SessionRunner]) -> None:
    fake, _ = fake_run
    first_click: dict[str, int] = {}
    skips: dict[str, set[int]] = defaultdict(set)
    for e in fake.events:
        if e.type == "click" and e.request_id:
            first_click.setdefault(e.request_id, e.position)
        elif e.type == "skip":
            skips[e.request_id].add(e.position)
    assert skips
    for request_id, positions in skips.items():
        assert positions == set(range(first_click[request_id]))
    assert all(rid in skips or p == 0 for rid, p in first_click.items())


def test_purchases_carry_the_request_and_slot_the_item_was_added_from(fake_run: tuple[FakeStorefront, SessionRunner]) -> None:
    fake, runner = fake_run
    added = {(e.session_id, e.sku): (e.request_id, e.position, e.surface) for e in fake.events if e.type == "add_to_cart"}
    purchases = [e for e in fake.events if e.type == "purchase"]
    assert purchases
    for e in purchases:
        assert added[(e.session_id, e.sku)] == (e.request_id, e.position, e.surface)
    arms = runner.tally.variants
    assert set(arms) == {"arm-a", "arm-b"}
    assert sum(a.purchases for a in arms.values()) == sum(1 for e in purchases if e.request_id)
    assert sum(a.requests for a in arms.values()) == len(fake.served)


def test_simulate_refuses_a_run_without_an_end(world: World) -> None:
    with pytest.raises(SimulationError, match="sessions, duration_s"):
        simulate(world, "http://127.0.0.1:9")
    with pytest.raises(SimulationError, match="taste shift"):
        simulate(world, "http://127.0.0.1:9", sessions=1, taste_shift=2.0)


# --- against the real engine -------------------------------------------------------------------


@pytest.mark.slow
def test_a_simulated_run_against_the_engine_with_a_live_inventory_feed(world: World, tiny_bundle: Path, tmp_path: Path) -> None:
    from engine.eventlog import EventLog
    from tests._server import Server, free_port

    pub, snap = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    settings = f'[inventory]\nupdates_endpoint = "{pub}"\nsnapshot_endpoint = "{snap}"\nsync_timeout_s = 60.0\n'
    srv = Server(tiny_bundle, tmp_path / "state", workers=2, settings_toml=settings)
    try:
        # The simulator binds the publisher; the engine's workers wait for it before they are ready.
        summary = simulate(world, f"http://127.0.0.1:{srv.port}", sessions=300, seed=5, concurrency=3,
                           inventory=(pub, snap), churn=Churn().scaled(8.0), settle_s=0.5)  # fmt: skip
    finally:
        srv.stop()
    s = summary
    assert s.sessions == 300 and s.requests > 300
    assert s.http_errors == 0 and s.events_unsent == 0, s.http_status
    assert s.violations == {}, s.examples
    posted = sum(s.events_by_type.values())
    assert s.events_accepted == posted and s.events_rejected == 0 and s.events_duplicates == 0
    ev = s.events_by_type
    assert s.clicks <= ev["click"] <= ev["impression"]
    assert 0 < ev["purchase"] <= ev["add_to_cart"] <= ev["click"] == ev["dwell"]
    assert ev["impression"] == sum(v.impressions for v in s.variants.values())
    assert sum(v.requests for v in s.variants.values()) == s.requests == sum(s.bundles.values())
    assert len(s.bundles) == 1 and 0.0 < s.ctr < 0.5 and 0.0 < s.impression_gini < 1.0
    inv = s.inventory
    assert inv is not None and inv.rejected == 0 and inv.new_sku > 0 and inv.price > 0 and inv.stock_out > 0
    assert s.new_sku_impressions > 0  # SKUs listed during the run were served before any rebuild
    log = EventLog(tmp_path / "state", readonly=True)
    try:
        assert log.last_seq() >= posted  # every accepted event is in the durable log
    finally:
        log.close()


def test_a_trend_moves_every_taste_towards_it_and_strengthens_the_pull(world: World) -> None:
    taste, sens = world.taste, world.price_sensitivity
    trend = world.latent[world.leaf == world.leaf[0]].mean(axis=0)
    unit = trend / np.linalg.norm(trend)

    def towards(t: np.ndarray) -> np.ndarray:
        return (t @ unit) / np.linalg.norm(t, axis=1)

    half, _ = shift_tastes(taste, sens, 0.5, np.random.default_rng(0), trend)
    full, full_s = shift_tastes(taste, sens, 1.0, np.random.default_rng(0), trend)
    assert towards(taste).mean() < towards(half).mean() < towards(full).mean()
    np.testing.assert_allclose(towards(full), 1.0, atol=1e-5)  # everyone wants the trend
    assert (np.linalg.norm(full, axis=1) > np.linalg.norm(taste, axis=1)).all()
    np.testing.assert_allclose(full_s, 2.0 * sens, rtol=1e-6)
    population = Population(world, taste_shift=1.0, seed=0, trend_leaf=world.category_paths[world.leaf[0]])
    np.testing.assert_allclose(population.taste, full, rtol=1e-5)
    with pytest.raises(ValueError, match="not a leaf"):
        Population(world, taste_shift=1.0, trend_leaf="No/Such/Leaf")
