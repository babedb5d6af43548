"""Privacy (issue 8, Security): no request reads another shopper's history through the API, other
than that shopper's own recommendations; reasons never expose another shopper's data; sensitive
attributes are refused end to end (builder, bundle, serving).

Against a real `aisle serve` (Granian, 2 workers) over the session's tiny bundle, with API keys
and an experiment configured (so assignment by session id is exercised too):

* Cross-shopper isolation. Shoppers post distinctive histories (clicks, carts, purchases of SKUs
  nobody else touches, in their own sessions); then every surface (home GET and POST, page 2,
  pdp, cart, re-ranking) is asked for every shopper, warm (snapshot + live) and cold, with and
  without another shopper's session id. Every reason must be one of the documented sentences; a
  reason that claims history ("Because you viewed X", "Frequently bought with X", "Similar to X")
  must cite an item of the asking shopper's own history or of the request itself (its pdp item,
  cart, `recent`); a "Trending in / Popular in" reason names a region or a category, never a
  shopper; no body or header carries another shopper's id, session id or an API key. A positive
  control proves the histories are strong enough to show up: each shopper's own slates do cite
  their own items. Population signals (co-visitation, co-purchase, popularity, trending, live
  counters) are aggregates and may move any item anywhere; only the citations are checked.
* Session ids. The engine uses `session_id` only as the experiment unit of a request without a
  user id and to log the served slate: the live history is keyed by user id alone. A shopper
  presenting someone else's session id gets a slate identical to the one without it (in process,
  same clock) and, over HTTP, no history-claiming reason at all when it has no history.
* No endpoint returns event history: the routes in engine/app.py are enumerated from its source
  and must be exactly the known seven; `/v1/events` answers only POST, with counts (and its own
  batch's rejections); /metrics, /status, /readyz, /healthz, /openapi.json carry no shopper id,
  session id, history SKU or key; unknown paths are 404.
* Errors echo only their own request: many concurrent bad requests, each with its own marker, get
  bodies that name at most their own marker, never another's and never a key; 401 never echoes
  the key presented.
* Sensitive attributes: `aisle build` refuses a users file with `gender` and `birth_year` (naming
  both), a Parquet catalog with `target_gender`, the same through `--events-log`, and `aisle eval`
  too, publishing nothing and leaving `current` where it was; a recommendation request or an event
  carrying `gender`/`age`/… (every attribute of artifacts.schema.SENSITIVE_ATTRIBUTES, bare and as
  `user_…`/`…_code`) is refused with 400 naming the parameter, and the event is not stored; the
  bundle's feature names (manifest feature spec, the LightGBM model's `feature_names`, the drift
  reference, the ONNX towers' inputs and outputs, the shopper snapshot's record fields, the
  bundle's array names, the build config's keys) match no sensitive attribute (the builder's own
  matcher, artifacts.schema.sensitive_match).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import polars as pl
import pytest

from artifacts.bundle import Bundle, open_bundle
from artifacts.schema import SENSITIVE_ATTRIBUTES, sensitive_match
from artifacts.snapshot import ShopperRecord, ShopperSnapshot
from tests._server import REPO, Reply, Server
from tests.conftest import TEST_BUILD_TOML
from tests.reliability._soak import Soak, report

WRITE_KEY = "privacy-write-key-0123456789"
READ_KEY = "privacy-read-key-storefront-01"
WRONG_KEY_PREFIX = "privacy-wrong-key-NEVER-ECHOED-"
KEYS = (WRITE_KEY, READ_KEY)

SETTINGS = f"""
[security]
api_keys = ["{WRITE_KEY}"]
read_keys = ["{READ_KEY}"]
protect_metrics = true

[[experiments]]
name = "privacy"
traffic = 1.0
salt = "privacy-salt"
variants = [{{name = "control", weight = 1.0}}, {{name = "diverse", weight = 1.0, mmr_lambda = 0.7}}]
"""

# Every route engine/app.py answers (`path == "..."` in App._http). A new route must be added here
# deliberately, after checking it returns no shopper's history.
ROUTES = {
    "/v1/recommendations": {"GET", "POST"},
    "/v1/events": {"POST"},
    "/healthz": {"GET"},
    "/readyz": {"GET"},
    "/metrics": {"GET"},
    "/status": {"GET"},
    "/openapi.json": {"GET"},
}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

# The documented reasons (README "Reasons"). The three that cite an item claim the shopper's own
# history or the request's own items; the two with a place name a region or a category.
CITING = re.compile(r"^(Because you viewed|Frequently bought with|Similar to) (.+)$")
PLACED = re.compile(r"^(Trending in|Popular in) (.+)$")
FIXED = {"Picked for you", "New arrival", "Goes with your cart", "Popular"}
SOURCES = {"ann", "covisit", "coview", "copurchase", "similar", "trending", "popular", "category_popular", "new", "complements"}
RESPONSE_KEYS = {"items", "bundle", "variant", "fallback", "request_id", "took_ms", "next_cursor", "unranked"}
ITEM_KEYS = {"sku", "score", "reason", "source"}
EVENTS_RESPONSE_KEYS = {"accepted", "duplicates", "rejected", "rejections"}


# -- the catalog and the shoppers ------------------------------------------------------------------
class Shop:
    """What the test needs to know about the bundle: SKUs, titles, neighbour tables, snapshot."""

    def __init__(self, root: Path) -> None:
        self.bundle: Bundle = open_bundle(root / "current")
        b = self.bundle
        self.n = b.n_items
        self.skus = [s.decode() for s in b.items.ids.tolist()]
        self.titles = [b.title(i) for i in range(self.n)]
        counts = Counter(self.titles)
        self.unique_title = np.asarray([counts[t] == 1 and t != "" for t in self.titles])
        self.rows_of_title: dict[str, set[int]] = {}
        for row, title in enumerate(self.titles):
            self.rows_of_title.setdefault(title, set()).add(row)
        self.covisit_degree = np.diff(b.csr("covisit").indptr)
        self.copurchase_degree = np.diff(b.csr("copurchase").indptr)
        self.in_stock = np.asarray(b.item_column("in_stock")).astype(bool)
        vocab = b.vocab
        self.places = {name for name in vocab.regions if name} | {p.split("/")[-1] for p in vocab.category_path if p}
        self.snapshot = ShopperSnapshot(b.path("features/shoppers.lmdb"), int(b.manifest.dims["snapshot_map_size"]))
        self.user_ids = [u.decode() for u in b.users.ids.tolist()]

    def record(self, user_id: str) -> ShopperRecord | None:
        return self.snapshot.get(user_id)

    def warm_users(self, n: int) -> list[tuple[str, ShopperRecord]]:
        """Known shoppers with a recent history in the snapshot."""
        found = []
        for uid in self.user_ids:
            rec = self.record(uid)
            if rec is not None and len(rec.recent_items) >= 3:
                found.append((uid, rec))
                if len(found) == n:
                    break
        return found

    def close(self) -> None:
        self.snapshot.close()


@dataclass
class Shopper:
    """One identity the test speaks for. `own` = every item row its history holds (snapshot and
    posted events): the only items a history-claiming reason may cite for it."""

    label: str
    user_id: str | None
    session_id: str | None
    own: set[int] = field(default_factory=set)
    posted: dict[str, list[int]] = field(default_factory=dict)  # event type → rows, as posted
    secrets: set[str] = field(default_factory=set)  # strings that are this shopper's alone

    @property
    def interacted(self) -> set[int]:
        return {r for t in ("click", "add_to_cart", "purchase") for r in self.posted.get(t, [])}


class Pool:
    """Item rows handed out once each: distinct title (so a citation names exactly one item), in
    stock, with enough co-visitation neighbours to show up in reasons."""

    def __init__(self, shop: Shop, taken: set[int]) -> None:
        self.shop = shop
        self.taken = set(taken)

    def take(self, n: int, *, min_covisit: int = 3, min_copurchase: int = 0) -> list[int]:
        s = self.shop
        ok = s.unique_title & s.in_stock & (s.covisit_degree >= min_covisit) & (s.copurchase_degree >= min_copurchase)
        # Spread over the catalog rather than always the densest items: stride through the order.
        rows = [int(r) for r in np.flatnonzero(ok) if int(r) not in self.taken]
        if len(rows) < n:
            rows = [int(r) for r in np.flatnonzero(s.unique_title & s.in_stock) if int(r) not in self.taken]
        assert len(rows) >= n, "the tiny catalog ran out of distinct items for the test's shoppers"
        stride = max(1, len(rows) // (4 * n))
        picked = rows[::stride][:n]
        if len(picked) < n:
            picked += [r for r in rows if r not in picked][: n - len(picked)]
        self.taken.update(picked)
        return picked


# -- HTTP with keys ------------------------------------------------------------------------------
class Client:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.requests = 0
        self.replies: list[tuple[str, Reply]] = []  # (what was asked, reply): every one is checked for keys
        self._lock = threading.Lock()

    def call(self, method: str, path: str, *, params: dict | None = None, doc: object = None, key: str | None = None,
             headers: dict[str, str] | None = None, body: bytes | None = None) -> Reply:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["authorization"] = f"Bearer {key}"
        if doc is not None:
            body = json.dumps(doc).encode()
            hdrs.setdefault("content-type", "application/json")
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        reply = self.server.request(method, path + (f"?{query}" if query else ""), body, hdrs)
        with self._lock:
            self.requests += 1
            self.replies.append((f"{method} {path}", reply))
        return reply

    def take_count(self) -> int:
        with self._lock:
            n, self.requests = self.requests, 0
        return n

    def recommend(self, params: dict) -> Reply:
        return self.call("GET", "/v1/recommendations", params=params, key=READ_KEY)

    def recommend_post(self, doc: dict) -> Reply:
        return self.call("POST", "/v1/recommendations", doc=doc, key=READ_KEY)

    def events(self, events: list[dict]) -> Reply:
        return self.call("POST", "/v1/events", doc={"events": events}, key=WRITE_KEY)


def post_history(client: Client, shop: Shop, who: Shopper, plan: dict[str, list[int]]) -> None:
    """Post `plan` (event type → rows) for `who`, in its session, and record it as its own."""
    events = []
    for etype, rows in plan.items():
        for row in rows:
            events.append({
                "event_id": f"{who.label}-{etype}-{row}-{uuid.uuid4().hex[:8]}", "user_id": who.user_id, "sku": shop.skus[row],
                "type": etype, "session_id": who.session_id or "", "surface": "pdp", "device": "mobile",
            })
            who.posted.setdefault(etype, []).append(row)
    reply = client.events(events)
    assert reply.status == 202, reply.body
    assert set(reply.json()) == EVENTS_RESPONSE_KEYS
    assert reply.json()["accepted"] == len(events) and reply.json()["rejected"] == 0, reply.body
    who.own |= {r for rows in plan.values() for r in rows}


# -- checking one answer --------------------------------------------------------------------------
@dataclass
class Audit:
    """What checking answers found: leaks (must stay empty) and citations of the asker's own
    history (the positive control). One per answer, merged with `+=`."""

    leaks: list[str] = field(default_factory=list)
    own_citations: Counter = field(default_factory=Counter)  # shopper label → citations of its own history
    items: int = 0
    answers: int = 0

    def __iadd__(self, other: Audit) -> Audit:
        self.leaks += other.leaks
        self.own_citations.update(other.own_citations)
        self.items += other.items
        self.answers += other.answers
        return self


def audit_slate(shop: Shop, who: Shopper, reply: Reply, *, request_items: set[int], others: list[Shopper], what: str) -> tuple[dict, Audit]:
    """Check one 200 recommendation answer for `who` (see the module docstring)."""
    assert reply.status == 200, f"{what} for {who.label}: {reply.status} {reply.body[:300]!r}"
    audit = Audit(answers=1)
    doc = reply.json()
    assert set(doc) == RESPONSE_KEYS, f"{what}: unexpected fields {sorted(set(doc) - RESPONSE_KEYS)}"
    text = reply.body.decode()
    header_text = " ".join(f"{k}: {v}" for k, v in reply.headers.items())
    for other in others:
        for secret in other.secrets:
            if secret in text or secret in header_text:
                audit.leaks.append(f"{what}: the answer for {who.label} carries {other.label}'s {secret!r}")
    allowed = who.own | request_items
    foreign = {r for o in others for r in o.own} - allowed  # items only another shopper's history holds
    foreign_titles = {shop.titles[r] for r in foreign}
    for item in doc["items"]:
        audit.items += 1
        assert set(item) == ITEM_KEYS, f"{what}: unexpected item fields {sorted(set(item) - ITEM_KEYS)}"
        assert item["source"] in SOURCES, f"{what}: unknown source {item['source']!r}"
        reason = item["reason"]
        cited = CITING.match(reason)
        placed = PLACED.match(reason)
        if cited:
            rows = shop.rows_of_title.get(cited.group(2), set())
            if not rows:
                audit.leaks.append(f"{what}: {who.label} got {reason!r}, which names no item of the catalog")
            elif not rows & allowed:
                owners = [o.label for o in others if rows & o.own]
                audit.leaks.append(f"{what}: {who.label} got {reason!r} for {item['sku']}, citing an item outside its own history "
                                   f"and request" + (f" (in the history of {', '.join(owners)})" if owners else ""))
            elif rows & who.own and not rows & request_items:
                audit.own_citations[who.label] += 1
        elif placed:
            if placed.group(2) not in shop.places:
                audit.leaks.append(f"{what}: {who.label} got {reason!r}: not a region or category")
        elif reason not in FIXED:
            audit.leaks.append(f"{what}: {who.label} got the undocumented reason {reason!r}")
        if not cited:  # a reason that cites no item names none, least of all another shopper's
            for title in foreign_titles:
                if title in reason:
                    audit.leaks.append(f"{what}: {who.label}'s reason {reason!r} names {title!r}, from another shopper's history")
    return doc, audit


def history_claims(doc: dict) -> list[str]:
    """Reasons of a slate that claim the shopper's history (with no request anchors, all citing ones do)."""
    return [i["reason"] for i in doc["items"] if CITING.match(i["reason"])]


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def figures() -> Iterator[dict]:
    figs = {"shoppers": 0, "requests": 0, "leaks": 0, "sensitive_refusals": 0, "echo_checks": 0, "own_citations": 0}
    yield figs
    report("privacy", **figs)


@pytest.fixture(scope="module")
def shop(tiny_bundle: Path) -> Iterator[Shop]:
    s = Shop(tiny_bundle)
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tiny_bundle, tmp_path_factory.mktemp("privacy-state"), workers=2, settings_toml=SETTINGS)
    try:
        s.wait_ready(workers=2)
        yield s
    finally:
        s.stop()


@dataclass
class World:
    """The shoppers and their posted histories."""

    client: Client
    shoppers: list[Shopper]
    history_owners: list[Shopper]  # those with a distinctive posted history
    neutral: list[int]  # item rows in nobody's history: pdp and cart anchors

    def get(self, label: str) -> Shopper:
        return next(s for s in self.shoppers if s.label == label)


@pytest.fixture(scope="module")
def world(server: Server, shop: Shop, soak: Soak, figures: dict) -> World:
    client = Client(server)
    warm = shop.warm_users(2)
    assert len(warm) == 2, "the tiny bundle has known shoppers with a history"
    snapshot_rows = {r for _, rec in warm for r in (*rec.recent_items, *rec.purchased)}
    pool = Pool(shop, snapshot_rows)
    tag = uuid.uuid4().hex[:8]

    # B: a new shopper (no snapshot record) whose whole history is live, in one session.
    b = Shopper("B", f"privacy-B-{tag}", f"sess-B-{tag}")
    # More shoppers like B, each with a history of its own (disjoint items, distinct titles).
    crowd = [Shopper(f"S{i}", f"privacy-S{i}-{tag}", f"sess-S{i}-{tag}") for i in range(soak.scale(5, 40))]
    # A: warm (snapshot + live clicks), warm from the snapshot alone, cold (a user id nobody has
    # used), anonymous.
    a_warm = Shopper("A-warm", warm[0][0], f"sess-Awarm-{tag}", own={*warm[0][1].recent_items, *warm[0][1].purchased})
    a_snap = Shopper("A-snapshot", warm[1][0], None, own={*warm[1][1].recent_items, *warm[1][1].purchased})
    a_cold = Shopper("A-cold", f"privacy-A-cold-{tag}", None)
    anon = Shopper("anonymous", None, None)

    plans = [
        (b, {"click": pool.take(4, min_covisit=8), "add_to_cart": pool.take(2, min_copurchase=2), "purchase": pool.take(2, min_copurchase=2)}),
        (a_warm, {"click": pool.take(2, min_covisit=8)}),
        *((s, {"click": pool.take(3, min_covisit=5), "add_to_cart": pool.take(1, min_copurchase=1)}) for s in crowd),
    ]
    neutral = pool.take(6, min_covisit=5)
    with ThreadPoolExecutor(4) as ex:  # both workers take events at once
        list(ex.map(lambda plan: post_history(client, shop, *plan), plans))

    everyone = [b, *crowd, a_warm, a_snap, a_cold, anon]
    for s in everyone:
        s.secrets |= {x for x in (s.user_id, s.session_id) if x}
    figures["shoppers"] = len(everyone)
    return World(client, everyone, [b, *crowd, a_warm], neutral)


# -- 1. cross-shopper isolation ------------------------------------------------------------------
def surfaces(shop: Shop, world: World, who: Shopper, session: str | None) -> Iterator[tuple[str, str, dict, set[int]]]:
    """(label, method, query, the request's own items) for every surface and form."""
    n0, n1, n2 = world.neutral[:3]
    ids = {k: v for k, v in (("user_id", who.user_id), ("session_id", session)) if v is not None}
    yield "home", "GET", {"surface": "home", "count": 40, **ids}, set()
    yield "home/POST", "POST", {"surface": "home", "count": 40, **ids}, set()
    yield "home/page2", "GET", {"surface": "home", "count": 20, "cursor": "c1.20", **ids}, set()
    # The request's own context: items the storefront says were just viewed may be cited.
    n3, n4 = world.neutral[3:5]
    yield "home/recent", "GET", {"surface": "home", "count": 40, "recent": f"{shop.skus[n3]},{shop.skus[n4]}", **ids}, {n3, n4}
    yield "pdp", "GET", {"surface": "pdp", "item_id": shop.skus[n0], "count": 30, **ids}, {n0}
    yield "cart", "GET", {"surface": "cart", "cart": f"{shop.skus[n1]},{shop.skus[n2]}", "count": 30, **ids}, {n1, n2}
    # Re-ranking the other shoppers' items and their co-visitation neighbours: if another
    # shopper's history were in play, these are the items it would explain.
    others = sorted({r for o in world.history_owners if o is not who for r in o.interacted})
    cov = shop.bundle.csr("covisit")
    neighbours = {int(n) for r in others[:30] for n in cov.row(r)[0][:5]}
    given = [shop.skus[r] for r in sorted(set(others) | neighbours)][:400]
    yield "rerank", "POST", {"surface": "home", "candidates": given, **ids}, set()


def ask(world: World, shop: Shop, who: Shopper, session: str | None, note: str = "") -> tuple[list[dict], Audit]:
    """Every surface for `who` (presenting `session`), each answer audited."""
    docs, audit = [], Audit()
    others = [o for o in world.shoppers if o is not who]
    for label, method, query, request_items in surfaces(shop, world, who, session):
        reply = world.client.recommend(query) if method == "GET" else world.client.recommend_post(query)
        doc, found = audit_slate(shop, who, reply, request_items=request_items, others=others, what=label + note)
        docs.append(doc)
        audit += found
    return docs, audit


def test_no_shopper_sees_another_shoppers_history_in_any_surface(world: World, shop: Shop, figures: dict) -> None:
    audit = Audit()
    # Every shopper, on its own, several at once (both workers): reasons cite only its own
    # history or its request.
    with ThreadPoolExecutor(4) as ex:
        for _, found in ex.map(lambda who: ask(world, shop, who, who.session_id), world.shoppers):
            audit += found
    figures["requests"] += world.client.take_count()
    figures["leaks"] += len(audit.leaks)
    figures["own_citations"] += sum(audit.own_citations.values())
    assert audit.leaks == [], "\n".join(audit.leaks[:20])
    # The positive control: B's live history is strong enough to be cited in B's own slates (so
    # its absence from everybody else's means something), and so are most of the others'.
    b = world.get("B")
    assert audit.own_citations[b.label] > 0, f"B's own slates never cite B's history: {dict(audit.own_citations)}"
    cited = [s.label for s in world.history_owners if audit.own_citations[s.label] > 0]
    assert len(cited) * 2 >= len(world.history_owners), f"too few shoppers see their own history: {dict(audit.own_citations)}"
    assert audit.own_citations[world.get("A-snapshot").label] > 0, "a known shopper's snapshot history is cited (control)"


def test_another_shoppers_session_id_reveals_nothing(world: World, shop: Shop, figures: dict) -> None:
    """A session id is a bearer-like token, but the engine keys no history by it: presenting B's
    session (with another user id, or none) gets the asker's own slate, never B's history."""
    b = world.get("B")
    audit = Audit()
    for label in ("A-warm", "A-snapshot", "A-cold", "anonymous", "S0"):
        who = world.get(label)
        docs, found = ask(world, shop, who, b.session_id, note=f" as {label} with B's session id")
        audit += found
        if label in ("A-cold", "anonymous"):
            # No history of its own: no slate without request items may claim one.
            for doc in docs[:3] + docs[6:]:
                assert history_claims(doc) == [], (label, history_claims(doc))
    figures["requests"] += world.client.take_count()
    figures["leaks"] += len(audit.leaks)
    assert audit.leaks == [], "\n".join(audit.leaks[:20])


def test_session_id_does_not_select_history_in_process(tiny_bundle: Path, tmp_path: Path, figures: dict) -> None:
    """The same with the clock held still: the pipeline's answer for a shopper (anonymous, cold,
    known) is identical with B's session id, another session id or none, while the live log
    holds B's history under that session. Real bundle, real event log, real Recommender; no
    experiments configured, so the session id is not even an assignment unit here."""
    from engine.eventlog import EventLog
    from engine.schemas import Event, RecommendQuery
    from engine.service import Recommender
    from engine.settings import DeadlineSettings, Settings

    bundle = open_bundle(tiny_bundle / "current")
    log = EventLog(tmp_path / "state")
    rec = None
    try:
        now = float(int(bundle.manifest.dims["end_ts"]) + 3600)
        covisit = np.diff(bundle.csr("covisit").indptr)
        skus = [bundle.items.id_of(int(r)) for r in np.flatnonzero(covisit >= 5)[::7][:8]]
        events = [Event(event_id=f"b-{i}", user_id="B-inproc", sku=sku, type=t, ts=now - 60 + i, session_id="sess-B-inproc")
                  for i, (sku, t) in enumerate(zip(skus, ["click", "click", "add_to_cart", "purchase"] * 2))]
        assert log.append(events, now=now).response().accepted == len(events)
        # No deadline: the answer must not depend on how fast this machine is.
        rec = Recommender(bundle, Settings(deadlines=DeadlineSettings(budget_ms=1e9)), log)
        titles = {bundle.title(bundle.items.row_of(sku)) for sku in skus}
        b_home, _ = rec.run(RecommendQuery(surface="home", user_id="B-inproc", count=30), request_id="r", now=now)
        assert any((m := CITING.match(i.reason)) and m.group(2) in titles for i in b_home.items), "B's own slate cites B's history (control)"
        known = next(u.decode() for u in bundle.users.ids.tolist() if (r := rec.view.snapshot.get(u.decode())) and r.recent_items)
        for user in (None, "A-inproc", known):
            for surface, extra in (("home", {}), ("cart", {"cart": skus[-1:]})):
                answers = [
                    rec.run(RecommendQuery(surface=surface, user_id=user, session_id=session, count=30, **extra), request_id="r", now=now)[0]
                    for session in (None, "sess-B-inproc", "sess-someone-else")
                ]
                assert answers[0].items == answers[1].items == answers[2].items, (user, surface)
                assert answers[0].variant == answers[1].variant == "default"
                if user != known:
                    assert not any(CITING.match(i.reason) and surface == "home" for i in answers[1].items)
                figures["requests"] += len(answers)
    finally:
        if rec is not None:
            rec.close()
        log.close()


def test_no_route_returns_event_history(world: World, server: Server, shop: Shop, figures: dict) -> None:
    # The routes: read from engine/app.py itself, so a new route fails here until it is reviewed.
    source = (REPO / "engine" / "app.py").read_text()
    routes = set(re.findall(r'\bpath == "([^"]+)"', source))
    assert routes == set(ROUTES), f"engine/app.py routes changed: {sorted(routes ^ set(ROUTES))}; review them for history leaks"
    doc = json.loads(server.get("/openapi.json").body)
    for path, ops in doc["paths"].items():
        assert path in ROUTES, path
        assert {m.upper() for m in ops} <= ROUTES[path], (path, sorted(ops))
    assert set(doc["paths"]["/v1/events"]) == {"post"}
    assert set(doc["components"]["schemas"]["EventsResponse"]["properties"]) == EVENTS_RESPONSE_KEYS

    client = world.client
    b = world.shoppers[0]
    history_skus = {shop.skus[r] for s in world.history_owners for r in s.own}
    secrets = {x for s in world.shoppers for x in s.secrets}
    query = {"user_id": b.user_id, "session_id": b.session_id, "sku": shop.skus[b.posted["click"][0]], "since": "0"}
    for path, allowed in ROUTES.items():
        for method in METHODS:
            for key in (None, WRITE_KEY):
                reply = client.call(method, path, params=query, key=key)
                if method not in allowed:
                    assert reply.status == 405, (method, path, reply.status)
                    continue
                if path in ("/v1/recommendations", "/v1/events"):
                    continue  # below
                assert reply.status in (200, 401), (method, path, reply.status)
                text = reply.body.decode(errors="replace")
                for secret in secrets:
                    assert secret not in text, f"{method} {path} shows {secret!r}"
                for sku in history_skus:
                    assert sku not in text, f"{method} {path} shows the history SKU {sku!r}"
    # With read keys set, nobody without one (a browser, a scraper) can ask for a shopper's slate,
    # whose reasons cite that shopper's history: the user id is trusted, the key is the guard.
    for key in (None, f"{WRONG_KEY_PREFIX}0000"):
        reply = client.call("GET", "/v1/recommendations", params={"surface": "home", "user_id": b.user_id}, key=key)
        assert reply.status == 401 and reply.json()["error"] == "unauthorized", reply.body
        reply = client.call("POST", "/v1/recommendations", doc={"surface": "home", "user_id": b.user_id}, key=key)
        assert reply.status == 401 and reply.json()["error"] == "unauthorized", reply.body
    # The events route: a GET (with a shopper's id) is refused; a POST answers counts of its own
    # batch only, and its rejections name only that batch's events.
    for method in ("GET", "HEAD", "OPTIONS"):
        assert client.call(method, "/v1/events", params={"user_id": b.user_id}, key=WRITE_KEY).status == 405
    mine = [
        {"event_id": f"probe-{uuid.uuid4().hex}", "user_id": "privacy-probe", "sku": shop.skus[world.neutral[0]], "type": "click"},
        {"event_id": f"probe-{uuid.uuid4().hex}", "user_id": "privacy-probe", "sku": "SKU-X", "type": "click", "ts": 4e10},
    ]
    reply = client.events(mine)
    assert reply.status == 202
    body = reply.json()
    assert set(body) == EVENTS_RESPONSE_KEYS and (body["accepted"], body["duplicates"], body["rejected"]) == (1, 0, 1)
    assert [r["event_id"] for r in body["rejections"]] == [mine[1]["event_id"]]
    assert set(body["rejections"][0]) == {"index", "event_id", "reason"}
    for secret in secrets:
        assert secret not in reply.body.decode()
    # Paths that would hold history if there were such an endpoint do not exist.
    for path in (f"/v1/events/{b.user_id}", f"/v1/users/{b.user_id}", "/v1/history", f"/v1/sessions/{b.session_id}",
                 "/v1/events/", "/v1/recommendations/", "/V1/events"):
        reply = client.call("GET", path, key=WRITE_KEY)
        assert reply.status == 404, (path, reply.status)
        assert b.user_id not in reply.body.decode().replace(path, "")  # only the asked path is echoed
    figures["requests"] += client.take_count()


# -- 2. headers and errors ----------------------------------------------------------------------
def test_errors_and_headers_echo_only_their_own_request(world: World, server: Server, shop: Shop, soak: Soak, figures: dict) -> None:
    client = world.client
    per_thread = soak.scale(12, 80)
    markers = [f"mk{uuid.uuid4().hex[:12]}" for _ in range(8)]
    pdp_anchor = shop.skus[world.neutral[0]]

    def bad_requests(marker: str) -> list[tuple[str, Reply]]:
        out = []
        for i in range(per_thread):
            kind = i % 6
            rid = f"{marker}-rid-{i}"
            if kind == 0:  # an unknown cursor: echoed in the detail
                r = client.call("GET", "/v1/recommendations", params={"surface": "home", "user_id": f"{marker}-user", "cursor": f"bad-{marker}"},
                                key=READ_KEY, headers={"x-request-id": rid})
            elif kind == 1:  # an unknown pdp item: echoed
                r = client.call("GET", "/v1/recommendations", params={"surface": "pdp", "item_id": f"SKU-{marker}"}, key=READ_KEY,
                                headers={"x-request-id": rid})
            elif kind == 2:  # a bad event type in a batch carrying the marker as user id
                r = client.call("POST", "/v1/events", doc={"events": [{"event_id": f"{marker}-{i}", "user_id": f"{marker}-user", "sku": pdp_anchor,
                                                                        "type": f"{marker}-type"}]}, key=WRITE_KEY, headers={"x-request-id": rid})
            elif kind == 3:  # a malformed JSON body
                r = client.call("POST", "/v1/recommendations", body=f'{{"surface": "home", "user_id": "{marker}-user", '.encode(), key=READ_KEY,
                                headers={"content-type": "application/json", "x-request-id": rid})
            elif kind == 4:  # a wrong key: never echoed
                r = client.call("GET", "/v1/recommendations", params={"surface": "home", "user_id": f"{marker}-user"},
                                key=f"{WRONG_KEY_PREFIX}{marker}", headers={"x-request-id": rid})
                assert r.status == 401 and r.headers.get("www-authenticate", "").lower().startswith("bearer")
            else:  # a wrong type in a POSTed query
                r = client.call("POST", "/v1/recommendations", doc={"surface": "home", "user_id": f"{marker}-user", "count": f"{marker}-count"},
                                key=READ_KEY, headers={"x-request-id": rid})
            assert 400 <= r.status < 500, (kind, r.status, r.body)
            assert r.headers.get("x-request-id") == rid  # the caller's own id, nobody else's
            out.append((marker, r))
        return out

    with ThreadPoolExecutor(len(markers)) as ex:
        results = [x for batch in ex.map(bad_requests, markers) for x in batch]
    secrets = {x for s in world.shoppers for x in s.secrets}
    checks = 0
    for marker, reply in results:
        body = reply.body.decode(errors="replace")
        assert set(json.loads(body)) == {"error", "detail"}, body
        header_text = " ".join(f"{k}: {v}" for k, v in reply.headers.items())
        for other in markers:
            if other != marker:
                assert other not in body and other not in header_text, f"an error for {marker} echoes {other}'s request: {body}"
        for secret in secrets:
            assert secret not in body and secret not in header_text
        assert WRONG_KEY_PREFIX not in body and WRONG_KEY_PREFIX not in header_text
        checks += 1
    # Every answer this test module got (successes and errors alike): no key in any header or body.
    for what, reply in client.replies:
        blob = reply.body.decode(errors="replace") + " ".join(f"{k}: {v}" for k, v in reply.headers.items())
        for key in KEYS:
            assert key not in blob, f"{what} echoes an API key"
        assert WRONG_KEY_PREFIX not in blob, f"{what} echoes a presented key"
        checks += 1
    # ... nor in the server's log.
    server.log.flush()
    log_text = (server.state / "server.log").read_text(errors="replace")
    for key in KEYS:
        assert key not in log_text
    assert WRONG_KEY_PREFIX not in log_text
    figures["echo_checks"] += checks
    figures["requests"] += client.take_count()


# -- 3. sensitive attributes ------------------------------------------------------------------------
def sensitive_names() -> list[str]:
    names = sorted(SENSITIVE_ATTRIBUTES)
    return names + [f"user_{a}" for a in names[:4]] + [f"{a}_code" for a in names[4:8]] + ["Customer-Gender"]


def test_a_recommendation_or_event_with_a_sensitive_attribute_is_refused(world: World, shop: Shop, figures: dict) -> None:
    client = world.client
    who = world.get("A-warm")
    probe = f"privacy-sensitive-probe-{uuid.uuid4().hex[:8]}"  # events go here, not into a test shopper's history
    refusals = 0
    for name in sensitive_names():
        get = client.recommend({"surface": "home", "user_id": who.user_id, name: "f"})
        post = client.recommend_post({"surface": "home", "user_id": who.user_id, name: 30})
        for how, reply in (("GET", get), ("POST", post)):
            assert reply.status == 400, (how, name, reply.status, reply.body)
            assert reply.json()["error"] == "bad_request"
            assert f"unknown parameter `{name}`" in reply.json()["detail"], (how, name, reply.body)
            refusals += 1
        event_id = f"sensitive-{name}-{uuid.uuid4().hex[:8]}"
        event = {"event_id": event_id, "user_id": probe, "sku": shop.skus[world.neutral[0]], "type": "click"}
        reply = client.events([{**event, name: "x"}])
        assert reply.status == 400 and f"unknown field `{name}`" in reply.json()["detail"], (name, reply.body)
        refusals += 1
        # Nothing of the refused batch was stored: the same event without the attribute is new.
        again = client.events([event])
        assert again.status == 202 and again.json()["accepted"] == 1 and again.json()["duplicates"] == 0, again.body
    # The API's documented parameters and event fields name no sensitive attribute.
    doc = json.loads(client.call("GET", "/openapi.json").body)
    names = [p["name"] for op in doc["paths"]["/v1/recommendations"].values() for p in op.get("parameters", [])]
    names += list(doc["components"]["schemas"]["RecommendQuery"]["properties"])
    names += list(doc["components"]["schemas"]["Event"]["properties"])
    assert names and [n for n in names if sensitive_match(n)] == []
    figures["sensitive_refusals"] += refusals
    figures["requests"] += client.take_count()


def _names_in(value: object) -> Iterator[str]:
    """Every key, and every string value, of a nested JSON-like value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _names_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _names_in(v)
    elif isinstance(value, str):
        yield value


def test_the_bundle_names_no_sensitive_feature(tiny_bundle: Path) -> None:
    import onnxruntime

    from artifacts.featurespec import FEATURE_NAMES

    root = (tiny_bundle / "current").resolve()
    manifest = json.loads((root / "manifest.json").read_text())
    spec = [f["name"] for f in manifest["feature_spec"]]
    assert spec == list(FEATURE_NAMES)
    lgb = (root / "models" / "ranker.lgb.txt").read_text()
    ranker_names = re.search(r"^feature_names=(.*)$", lgb, re.M).group(1).split()  # type: ignore[union-attr]
    assert ranker_names == spec and int(manifest["dims"]["n_features"]) == len(spec)
    drift = json.loads((root / "monitor" / "drift.json").read_text())
    onnx_names = []
    for model in ("user_tower.onnx", "item_tower.onnx"):
        session = onnxruntime.InferenceSession(str(root / "models" / model), providers=["CPUExecutionProvider"])
        onnx_names += [x.name for x in (*session.get_inputs(), *session.get_outputs())]
    arrays = [Path(p).stem.split(".")[0] for p in manifest["files"]] if isinstance(manifest["files"], dict) else []
    named = {
        "feature spec": spec,
        "ranker model": ranker_names,
        "drift reference": list(_names_in(drift)),
        "ONNX towers": onnx_names,
        "shopper snapshot record": list(ShopperRecord.__struct_fields__),
        "bundle files": arrays,
        "build config": list(_names_in(manifest["config"])),
        "vocab": list(json.loads((root / "vocab.json").read_text())),
        "inputs": [Path(p).stem for p in manifest["inputs"]],
    }
    found = {where: [n for n in names if sensitive_match(n)] for where, names in named.items()}
    assert all(names for names in named.values()), {k: len(v) for k, v in named.items()}
    assert {k: v for k, v in found.items() if v} == {}


def _aisle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], capture_output=True, text=True, timeout=600, cwd=REPO)


def _tree(root: Path) -> dict[str, str]:
    """Every entry under `root` (symlinks by target), to show a failed build changed nothing."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = f"-> {p.readlink()}" if p.is_symlink() else ("dir" if p.is_dir() else str(p.stat().st_size))
    return out


@pytest.fixture
def published_root(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the session's bundle root: `current` points at a published bundle."""
    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root, symlinks=True)
    assert (root / "current").is_symlink()
    return root


def _refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    for line in expected:
        assert line in result.stderr, result.stderr[-2000:]
    assert "never uses sensitive attributes" in result.stderr
    assert "Traceback" not in result.stderr


def test_build_refuses_sensitive_user_columns_and_current_stays(tiny_store: Path, published_root: Path, tmp_path: Path, figures: dict) -> None:
    """Goes further than tests/test_cli.py (an empty root, one column): two columns both named,
    into a root with a published bundle whose `current` must not move, also through
    `--events-log` (the merged store keeps the users file), and `aisle eval` refuses it too."""
    data = tmp_path / "data"
    shutil.copytree(tiny_store, data)
    users = pl.read_parquet(data / "users.parquet")
    users.with_columns(pl.lit("f").alias("gender"), pl.lit(1990).alias("birth_year")).write_parquet(data / "users.parquet")
    config = tmp_path / "build.toml"
    config.write_text(TEST_BUILD_TOML)
    before = _tree(published_root)
    target = (published_root / "current").readlink()

    expected = (
        "users.parquet, column 'gender': expected no sensitive attributes; got a column that denotes 'gender'",
        "users.parquet, column 'birth_year': expected no sensitive attributes; got a column that denotes 'birth_year'",
    )
    _refused(_aisle("build", "--data", str(data), "--out", str(published_root), "--config", str(config)), *expected)
    assert _tree(published_root) == before and (published_root / "current").readlink() == target

    # Through the live event log: the merged store keeps the users file, so the refusal stands.
    from engine.eventlog import EventLog
    from engine.schemas import Event

    state = tmp_path / "state"
    with EventLog(state) as log:
        sku = pl.read_parquet(data / "catalog.parquet", columns=["sku"])["sku"][0]
        log.append([Event(event_id="live-1", user_id=str(users["user_id"][0]), sku=sku, type="click")])
    _refused(_aisle("build", "--data", str(data), "--out", str(published_root), "--config", str(config), "--events-log", str(state)), *expected)
    assert _tree(published_root) == before and (published_root / "current").readlink() == target

    # `aisle eval` reads the store the same way and refuses before building anything.
    _refused(_aisle("eval", "--data", str(data), "--config", str(config), "--workdir", str(tmp_path / "eval")), *expected)
    figures["sensitive_refusals"] += 3


def test_build_refuses_a_sensitive_catalog_column_in_parquet(tiny_store: Path, published_root: Path, tmp_path: Path, figures: dict) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_store, data)
    catalog = pl.read_parquet(data / "catalog.parquet")
    catalog.with_columns(pl.lit("female").alias("target_gender")).write_parquet(data / "catalog.parquet")
    events = pl.read_parquet(data / "events.parquet")
    events.with_columns(pl.lit(30).alias("Customer-Age")).write_parquet(data / "events.parquet")
    before = _tree(published_root)
    result = _aisle("build", "--data", str(data), "--out", str(published_root))
    _refused(
        result,
        "catalog.parquet, column 'target_gender': expected no sensitive attributes; got a column that denotes 'gender'",
        "events.parquet, column 'Customer-Age': expected no sensitive attributes; got a column that denotes 'age'",
    )
    assert _tree(published_root) == before
    figures["sensitive_refusals"] += 1
