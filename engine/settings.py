"""Engine settings: one frozen object, validated before the socket opens.

Every key has a default and a comment; `docs/settings.example.toml` lists them all. The only
environment variable the engine reads is AISLE_SETTINGS_FILE (here, in `from_environment`), which
`aisle serve` sets so that Granian's worker processes load exactly the settings it validated.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec

from artifacts.featurespec import SOURCE_ID
from artifacts.publish import is_build_id

SETTINGS_ENV = "AISLE_SETTINGS_FILE"


class SettingsError(ValueError):
    """Settings that cannot be used."""


class SourceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str  # one of artifacts.featurespec.SOURCE_NAMES
    k: int  # candidates requested from this source


def _plan(*pairs: tuple[str, int]) -> list[SourceSpec]:
    return [SourceSpec(name, k) for name, k in pairs]


class RetrievalSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    home: list[SourceSpec] = msgspec.field(
        default_factory=lambda: _plan(
            ("ann", 150), ("covisit", 100), ("copurchase", 40), ("trending", 40), ("category_popular", 40), ("popular", 30), ("new", 20)
        )
    )
    pdp: list[SourceSpec] = msgspec.field(
        default_factory=lambda: _plan(("coview", 100), ("similar", 100), ("copurchase", 40), ("category_popular", 40), ("popular", 20))
    )
    cart: list[SourceSpec] = msgspec.field(
        default_factory=lambda: _plan(("copurchase", 100), ("complements", 80), ("coview", 50), ("similar", 40), ("popular", 20))
    )
    recent_anchors: int = 10  # recent items used as anchors by item-to-item sources
    recency_decay: float = 0.85  # weight of the i-th most recent anchor: decay**i
    backfill: int = 200  # popular items added when filters leave fewer than `count` candidates
    # Vector sources when much of the catalog is out of stock (engine/nearest.py): an exact scan
    # of the in-stock rows when they are at most this many, else HNSW oversampled by 1/share up to
    # ann_max_oversample neighbours.
    ann_exact_max_rows: int = 50_000
    ann_max_oversample: int = 2_000

    def plan(self, surface: str) -> list[SourceSpec]:
        return {"home": self.home, "pdp": self.pdp, "cart": self.cart}[surface]


class DeadlineSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The engine's own share of the storefront's 180 ms budget. Optional work is skipped once the
    # request has used its share: the ranker (retrieval order instead) and MMR (score order).
    budget_ms: float = 40.0
    rank_share: float = 0.5  # skip the ranker if this share of the budget is gone before it starts
    rerank_share: float = 0.8  # skip MMR diversity past this share


class BlendWeights(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `heads` objective's value of showing an item (docs/ranking-objectives.md §4):
    P(click) · (click + cart · P(add-to-cart | click) + revenue · P(purchase | click) · price · margin).
    Weights are in currency units per event; margin is 1 (the catalog has no margin column)."""

    click: float = 1.0
    cart: float = 0.0
    revenue: float = 0.0


OBJECTIVES = ("legacy", "heads")


class RankingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True  # false: serve retrieval order (the ranker-down path, on purpose)
    max_candidates: int = 400  # candidates scored by the ranker (best by retrieval order first)
    # legacy: the lambdarank ranker blended by weight_* below. heads: the calibrated heads'
    # expected value (blend); a bundle without heads serves legacy (fallback "heads_unavailable").
    objective: str = "legacy"
    # Final legacy score = relevance·z(ranker) + conversion·z(log buy rate) + price·z(log price):
    # z() standardises over the request's candidates, so weights are comparable across terms.
    weight_relevance: float = 1.0
    weight_conversion: float = 0.15
    weight_price: float = 0.0
    blend: BlendWeights = BlendWeights()  # heads objective, every surface without its own below
    blend_by_surface: dict[str, BlendWeights] = {}  # "home" | "pdp" | "cart" -> its weights

    def blend_for(self, surface: str) -> BlendWeights:
        return self.blend_by_surface.get(surface, self.blend)


class RerankSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Defaults chosen with `aisle eval` on the synthetic store (docs/evaluation.md): the category cap,
    # not MMR, is what costs relevance; ≤ 8 per category and λ 0.9 keep slates varied at +30% HR@10 over 4 / 0.75.
    mmr_lambda: float = 0.9  # 1 = pure relevance, lower = more diverse (MMR over item vectors)
    mmr_pool: int = 100  # best-scored candidates MMR chooses from
    max_per_brand: int = 4  # per slate; 0 = no cap (unknown brand is never capped)
    max_per_seller: int = 6
    max_per_category: int = 8
    explore_slots: list[int] = msgspec.field(default_factory=lambda: [4, 11])  # 0-based positions for exploration
    explore_prior: tuple[float, float] = (1.0, 20.0)  # Beta prior (clicks, non-clicks) for an explored item's CTR
    # Exploration slots go to new items, and with N > 0 also to well-scored older candidates (the
    # best max(mmr_pool, count) by score) shown fewer than N times (the bundle's impressions plus
    # today's), so items the last bundle's slates never showed get seen again and the next build
    # can learn about them: without it the feedback loop narrows the catalog (bench/README.md).
    explore_underexposed: int = 0
    new_item_days: float = 14.0  # an item younger than this is "new" (boost, exploration)
    new_item_boost: float = 0.3  # added to the standardised score of a brand-new item, decaying with age
    fresh_slots: int = 1  # exploration slots that SKUs arrived since the build (inventory feed) may take
    fresh_min_similarity_anchor: float = 0.5  # pdp/cart: cosine to the anchor a fresh SKU needs for a slot
    fresh_min_similarity_home: float = -1.0  # home: cosine to the shopper's vector a fresh SKU needs (-1: any; best first)


class LimitSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    default_count: int = 20
    max_count: int = 100
    max_cursor_offset: int = 400  # deepest page a cursor may ask for
    max_cart_items: int = 50
    max_recent_items: int = 50
    max_filter_items: int = 100  # exclude list, blocked brands/sellers in a request
    max_rank_items: int = 1000  # given candidates in one re-ranking request (and its count)
    max_id_bytes: int = 64
    max_query_bytes: int = 16_384
    max_body_bytes: int = 1_048_576
    max_events_per_batch: int = 1000
    # Overload (engine/overload.py): a request that finds its worker's event loop this far behind
    # (it waited at least this long in the queue) is answered 503 + Retry-After at once instead of
    # served late; so is one that would make more than max_in_flight requests in progress in the
    # worker (those waiting on a body or an event commit). 0 turns either check off.
    max_queue_delay_ms: float = 250.0
    max_in_flight: int = 128
    overload_retry_after_s: int = 1


class EventSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    half_life_s: float = 21_600.0  # decay of the live per-item counters (fixed when the log is created)
    recent_limit: int = 50  # interactions kept per shopper in the live ring
    retry_after_s: int = 5  # Retry-After on a 503 when the log cannot store a batch (disk or map full)
    # Size of the event log's memory map, i.e. the most the log file may grow to. When it is full,
    # event batches are answered 503 + Retry-After (never 202) until the log is archived. At most
    # the default: every reader (aisle export, merge) opens the log with the default, and an LMDB
    # reader needs a map at least as large as the writer's (STACK-NOTES pitfall 4).
    map_size_mib: int = 65_536
    # Every served slate (request id, shopper, variant, items, scores, sources, prices, bundle) is
    # logged in the event log's `slates` database with the next group commit, so `aisle analyze`
    # can join it with the clicks, carts and purchases that follow. The answer never waits for it.
    log_slates: bool = True
    slate_queue_limit: int = 20_000  # slates waiting for a commit; beyond it new ones are dropped (and counted)


class InventorySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Live stock and prices over ZeroMQ (docs/inventory-wire.md). Empty endpoints: serve the
    # bundle's stock flags and prices as built.
    updates_endpoint: str = ""  # the publisher's PUB socket, e.g. tcp://127.0.0.1:5556
    snapshot_endpoint: str = ""  # the publisher's ROUTER socket (snapshots for resync), e.g. tcp://127.0.0.1:5557
    capacity: int = 65_536  # new-SKU rows per state file
    text_dim: int = 0  # width of new SKUs' text embeddings kept (0: none)
    sync_timeout_s: float = 30.0  # how long a worker waits for a synced state before serving without it

    @property
    def enabled(self) -> bool:
        return bool(self.updates_endpoint and self.snapshot_endpoint)


class DriftSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Served features and ranker scores compared with the bundle's training histograms (PSI).
    sample_rate: float = 0.05  # share of ranked requests whose candidates' features are sampled
    rows_per_request: int = 8  # candidate rows taken from a sampled request
    window: int = 20_000  # most recent sampled rows the PSI is computed over (per worker)
    min_rows: int = 500  # below this many sampled rows no PSI is reported
    threshold: float = 0.2  # PSI above this marks a feature as drifted (0.1 watch, 0.2 act: the usual rule)


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2  # Granian worker processes; one per core
    loop: str = "uvloop"  # asyncio | uvloop (rloop if installed)
    runtime_mode: str = "auto"  # Granian's Rust I/O runtime per worker: auto | st (single-threaded) | mt
    http: str = "auto"  # auto | 1 (HTTP/1.1 only: no HTTP/2 preface detection) | 2
    backlog: int = 1024
    # Connections Granian hands one worker at once (each carries one request at a time); more wait
    # in the kernel's accept queue, unseen by the overload check, until one closes. Keep it above
    # the connections a load balancer or proxy pool opens: the overload check (limits) then sees
    # every waiting request, and refuses the ones that waited too long.
    backpressure: int = 1024


class SecuritySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # API keys (engine/auth.py), sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`; each at
    # least 16 printable ASCII characters without spaces, no key listed twice. Keys are compared
    # in constant time and never logged or echoed.
    api_keys: list[str] = []  # may write events and read /status (and /metrics); empty: writes open (local use; `aisle serve` warns)
    read_keys: list[str] = []  # non-empty: recommendations need one of these or of api_keys; empty: reads open
    protect_metrics: bool = False  # true: /metrics needs one of api_keys too (/healthz, /readyz, /openapi.json stay open)
    # Per-key rate limits (engine/ratelimit.py), for the whole server (all workers together), over
    # a sliding window of rate_window_s: requests per second a key may make on the endpoints that
    # need it. Beyond: 429 + Retry-After. 0 = no limit. `rate_limits` sets it per key (the key
    # itself as the name), overriding `rate_limit_per_s`. Open endpoints are not limited per key.
    rate_limit_per_s: float = 0.0
    rate_limits: dict[str, float] = {}
    rate_window_s: float = 1.0


class VariantSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One arm of an experiment: a name, its share of the experiment's traffic, and the pipeline
    knobs it changes (unset = the served settings)."""

    name: str
    weight: float = 1.0  # relative share of the experiment's shoppers
    mmr_lambda: float | None = None
    explore_slots: list[int] | None = None  # [] = no exploration
    explore_underexposed: int | None = None
    max_per_brand: int | None = None
    max_per_category: int | None = None
    ranking_enabled: bool | None = None
    weight_relevance: float | None = None
    weight_conversion: float | None = None
    weight_price: float | None = None
    objective: str | None = None  # "legacy" | "heads"
    blend: BlendWeights | None = None  # for every surface (replaces the served per-surface blends)
    home: list[SourceSpec] | None = None  # the surface's sources
    pdp: list[SourceSpec] | None = None
    cart: list[SourceSpec] | None = None
    # Another bundle for this arm: a build id, i.e. a directory name under `bundles`
    # ("20261122T061026Z-b0a64b33"). None = the bundle `current` points at. A named bundle is
    # pinned: it keeps serving this arm when `current` moves, and `aisle serve` refuses to start
    # if it does not open. Each worker maps it once (pages shared through the page cache).
    bundle: str | None = None


class Guardrails(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits a variant must stay within; `aisle analyze` flags a variant that breaches one."""

    latency_p99_ms: float = 50.0  # engine time (took_ms) at the 99th percentile
    max_short_rate: float = 0.05  # share of slates with fewer items than asked for
    max_fallback_rate: float = 0.05  # share of slates served by a degradation step
    # Tolerated relative drop against the control, per metric: breached when the drop is larger
    # than this and significant.
    max_drop: dict[str, float] = msgspec.field(
        default_factory=lambda: {"ctr": 0.05, "add_to_cart_rate": 0.05, "revenue_per_request": 0.10}
    )


class ExperimentSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A controlled experiment: `traffic` of all shoppers (after the holdout) enter it; each is put
    in a variant by a hash of (salt, user id), so the same shopper always sees the same arm."""

    name: str
    variants: list[VariantSettings]
    traffic: float = 1.0  # share of all shoppers; experiments take consecutive, disjoint slices
    salt: str = ""  # default: the name. A new salt reshuffles shoppers between the variants
    guardrails: Guardrails = Guardrails()  # the first variant is the control they are measured against


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bundles: str = "bundles"  # bundle root holding `current`
    state_dir: str = "state"  # live store (recent events), metrics shared memory
    expansion_search: int = 256  # HNSW ef at query time for shopper vectors
    # HNSW ef for item-anchored queries (similar items): item vectors come from the graph's own
    # distribution, so a narrower search finds them (recall@41 0.95 at 128 vs 0.96 at 256, half the time).
    expansion_search_items: int = 128
    verify_at_start: str = "full"  # none | sizes | full: what `aisle serve` checks before starting workers
    verify_on_open: str = "sizes"  # none | sizes | full: what each worker checks when it maps the bundle
    verify_on_swap: str = "full"  # none | sizes | full: what a worker checks before switching to a new `current`
    swap_check_seconds: float = 1.0  # how often each worker looks at where `current` points
    server: ServerSettings = ServerSettings()
    limits: LimitSettings = LimitSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    ranking: RankingSettings = RankingSettings()
    rerank: RerankSettings = RerankSettings()
    deadlines: DeadlineSettings = DeadlineSettings()
    events: EventSettings = EventSettings()
    inventory: InventorySettings = InventorySettings()
    drift: DriftSettings = DriftSettings()
    security: SecuritySettings = SecuritySettings()
    holdout: float = 0.0  # share of shoppers kept out of every experiment (served the settings above)
    experiments: list[ExperimentSettings] = []


def _blend_problems(b: BlendWeights, where: str) -> list[str]:
    values = (b.click, b.cart, b.revenue)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        return [f"{where}: click, cart and revenue must be finite and ≥ 0, got {b.click}, {b.cart}, {b.revenue}"]
    if not any(values):
        return [f"{where}: at least one of click, cart, revenue must be > 0 (all 0 would rank nothing)"]
    return []


def _ranking_problems(rk: RankingSettings) -> list[str]:
    problems: list[str] = []
    if rk.objective not in OBJECTIVES:
        problems.append(f"ranking.objective must be one of {', '.join(OBJECTIVES)}, got {rk.objective!r}")
    problems += _blend_problems(rk.blend, "ranking.blend")
    for surface, blend in rk.blend_by_surface.items():
        if surface not in ("home", "pdp", "cart"):
            problems.append(f"ranking.blend_by_surface: unknown surface {surface!r}; known: home, pdp, cart")
        problems += _blend_problems(blend, f"ranking.blend_by_surface.{surface}")
    return problems


def validate(settings: Settings) -> Settings:
    problems: list[str] = []
    r = settings.retrieval
    for surface in ("home", "pdp", "cart"):
        plan = r.plan(surface)
        if not plan:
            problems.append(f"retrieval.{surface}: at least one source is needed")
        for spec in plan:
            if spec.name not in SOURCE_ID:
                problems.append(f"retrieval.{surface}: unknown source {spec.name!r}; known: {', '.join(SOURCE_ID)}")
            elif not 1 <= spec.k <= 5000:
                problems.append(f"retrieval.{surface}.{spec.name}: k must be in [1, 5000], got {spec.k}")
    if not 0 < r.recency_decay <= 1:
        problems.append("retrieval.recency_decay must be in (0, 1]")
    problems += _ranking_problems(settings.ranking)
    if not 0 <= settings.rerank.mmr_lambda <= 1:
        problems.append(f"rerank.mmr_lambda must be in [0, 1], got {settings.rerank.mmr_lambda}")
    if any(s < 0 for s in settings.rerank.explore_slots):
        problems.append("rerank.explore_slots must be ≥ 0")
    if settings.rerank.explore_underexposed < 0:
        problems.append(f"rerank.explore_underexposed must be ≥ 0, got {settings.rerank.explore_underexposed}")
    lim = settings.limits
    if not 1 <= lim.default_count <= lim.max_count:
        problems.append("limits.default_count must be in [1, limits.max_count]")
    problems += _experiment_problems(settings)
    problems += _security_problems(settings.security)
    d = settings.drift
    if not 0 <= d.sample_rate <= 1:
        problems.append("drift.sample_rate must be in [0, 1]")
    if not (1 <= d.rows_per_request <= 1000 and 1 <= d.min_rows <= d.window <= 10_000_000):
        problems.append("drift: need 1 ≤ rows_per_request ≤ 1000 and 1 ≤ min_rows ≤ window")
    if not d.threshold > 0:
        problems.append("drift.threshold must be > 0")
    if not 1 <= settings.events.map_size_mib <= 65_536:
        problems.append("events.map_size_mib must be in [1, 65536] (64 GiB, the size every reader of the log opens it with)")
    if not 1 <= settings.server.backpressure <= 65_536:
        problems.append("server.backpressure must be in [1, 65536]")
    if lim.max_queue_delay_ms < 0 or lim.max_in_flight < 0 or not 1 <= lim.overload_retry_after_s <= 3600:
        problems.append("limits: max_queue_delay_ms and max_in_flight must be ≥ 0 (0 = off), overload_retry_after_s in [1, 3600]")
    if settings.events.slate_queue_limit < 1:
        problems.append("events.slate_queue_limit must be ≥ 1")
    for name in ("expansion_search", "expansion_search_items"):
        if not 1 <= getattr(settings, name) <= 10_000:
            problems.append(f"{name} must be in [1, 10000]")
    if not 0.05 <= settings.swap_check_seconds <= 3600:
        problems.append("swap_check_seconds must be in [0.05, 3600]")
    for key in ("verify_at_start", "verify_on_open", "verify_on_swap"):
        if getattr(settings, key) not in ("none", "sizes", "full"):
            problems.append(f"{key} must be none, sizes or full")
    if not 1 <= settings.server.workers <= 64:
        problems.append("server.workers must be in [1, 64]")
    if not 0 <= settings.server.port <= 65535:
        problems.append("server.port must be in [0, 65535]")
    if settings.server.loop not in ("asyncio", "uvloop", "rloop", "auto"):
        problems.append("server.loop must be asyncio, uvloop, rloop or auto")
    if settings.server.runtime_mode not in ("auto", "st", "mt"):
        problems.append("server.runtime_mode must be auto, st or mt")
    if settings.server.http not in ("auto", "1", "2"):
        problems.append("server.http must be auto, 1 or 2")
    if problems:
        raise SettingsError("invalid settings: " + "; ".join(problems))
    return settings


def load(path: Path | None, **overrides: object) -> Settings:
    """Settings from a TOML file (missing keys take defaults), then top-level overrides
    (e.g. bundles=...), validated."""
    if path is None:
        settings = Settings()
    else:
        try:
            settings = msgspec.toml.decode(Path(path).read_bytes(), type=Settings)
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read settings: {exc.strerror}") from exc
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SettingsError(f"{path}: {exc}") from exc
    if overrides:
        settings = msgspec.structs.replace(settings, **overrides)
    return validate(settings)


def with_server(settings: Settings, **changes: object) -> Settings:
    return validate(msgspec.structs.replace(settings, server=msgspec.structs.replace(settings.server, **changes)))


def dump(settings: Settings, path: Path) -> None:
    """Write settings as JSON for worker processes (`from_environment`)."""
    path.write_bytes(msgspec.json.encode(settings))


def from_environment() -> Settings:
    """The settings `aisle serve` validated and handed to this worker process, else defaults."""
    file = os.environ.get(SETTINGS_ENV)
    if not file:
        return validate(Settings())
    try:
        return validate(msgspec.json.decode(Path(file).read_bytes(), type=Settings))
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SettingsError(f"{file} (from {SETTINGS_ENV}): {exc}") from exc


def uses_heads(settings: Settings) -> bool:
    """Whether the served settings or any experiment arm rank by the heads objective."""
    return settings.ranking.objective == "heads" or any(v.objective == "heads" for e in settings.experiments for v in e.variants)


def with_variant(settings: Settings, v: VariantSettings) -> Settings:
    """The served settings with one experiment variant's knobs applied."""
    rr, rk, rt = settings.rerank, settings.ranking, settings.retrieval
    rerank = {k: getattr(v, k) for k in ("mmr_lambda", "explore_slots", "explore_underexposed", "max_per_brand", "max_per_category") if getattr(v, k) is not None}
    ranking = {k: getattr(v, k) for k in ("weight_relevance", "weight_conversion", "weight_price", "objective") if getattr(v, k) is not None}
    if v.blend is not None:
        ranking |= {"blend": v.blend, "blend_by_surface": {}}
    if v.ranking_enabled is not None:
        ranking["enabled"] = v.ranking_enabled
    retrieval = {k: getattr(v, k) for k in ("home", "pdp", "cart") if getattr(v, k) is not None}
    return msgspec.structs.replace(
        settings,
        rerank=msgspec.structs.replace(rr, **rerank),
        ranking=msgspec.structs.replace(rk, **ranking),
        retrieval=msgspec.structs.replace(rt, **retrieval),
        experiments=[],
        holdout=0.0,
    )


def _experiment_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    if not 0 <= settings.holdout < 1:
        problems.append(f"holdout must be in [0, 1), got {settings.holdout}")
    names = [e.name for e in settings.experiments]
    if len(set(names)) != len(names):
        problems.append("experiments: names must be unique")
    total = settings.holdout + sum(e.traffic for e in settings.experiments)
    if total > 1 + 1e-9:
        problems.append(f"holdout + experiments' traffic is {total:.3f}; it must be at most 1")
    for e in settings.experiments:
        where = f"experiments.{e.name}"
        if not e.name or ":" in e.name:
            problems.append(f"{where}: a name is needed, without ':'")
        if not 0 < e.traffic <= 1:
            problems.append(f"{where}.traffic must be in (0, 1], got {e.traffic}")
        if len(e.variants) < 2:
            problems.append(f"{where}: at least two variants are needed (one is the control)")
        if len({v.name for v in e.variants}) != len(e.variants) or any(not v.name or ":" in v.name for v in e.variants):
            problems.append(f"{where}: variant names must be unique, non-empty, without ':'")
        for v in e.variants:
            if v.objective is not None and v.objective not in OBJECTIVES:
                problems.append(f"{where}.{v.name}.objective must be one of {', '.join(OBJECTIVES)}, got {v.objective!r}")
            if v.blend is not None:
                problems += _blend_problems(v.blend, f"{where}.{v.name}.blend")
            if not v.weight > 0:
                problems.append(f"{where}.{v.name}.weight must be > 0, got {v.weight}")
            if v.bundle is not None and not is_build_id(v.bundle):
                problems.append(
                    f"{where}.{v.name}.bundle must be a build id (a directory name under `bundles`, "
                    f"without '/', not hidden, not 'current'), got {v.bundle!r}; leave it out to serve `current`"
                )
            try:
                validate(with_variant(settings, v))
            except SettingsError as exc:
                problems.append(f"{where}.{v.name}: {exc}")
    return problems


MIN_KEY_LENGTH = 16


def _security_problems(sec: SecuritySettings) -> list[str]:
    """Problems with the API keys, naming a key by its list and position, never by its value
    (settings errors end up in logs)."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for name, keys in (("api_keys", sec.api_keys), ("read_keys", sec.read_keys)):
        for i, key in enumerate(keys):
            where = f"security.{name}[{i}]"
            if len(key) < MIN_KEY_LENGTH:
                problems.append(f"{where} has {len(key)} characters; a key needs at least {MIN_KEY_LENGTH}")
            if not all("!" <= c <= "~" for c in key):
                problems.append(f"{where} must be printable ASCII without spaces")
            if key in seen:
                problems.append(f"{where} repeats {seen[key]}; list each key once")
            else:
                seen[key] = where
    if sec.protect_metrics and not sec.api_keys:
        problems.append("security.protect_metrics needs at least one key in security.api_keys")
    if not (math.isfinite(sec.rate_limit_per_s) and sec.rate_limit_per_s >= 0):
        problems.append("security.rate_limit_per_s must be ≥ 0 (0: no limit)")
    if not (math.isfinite(sec.rate_window_s) and 0.1 <= sec.rate_window_s <= 3600):
        problems.append("security.rate_window_s must be in [0.1, 3600] seconds")
    for i, (key, rate) in enumerate(sec.rate_limits.items()):
        if key not in seen:
            problems.append(f"security.rate_limits entry {i + 1} names a key that is in neither api_keys nor read_keys")
        if not (math.isfinite(rate) and rate >= 0):
            problems.append(f"security.rate_limits entry {i + 1} must be ≥ 0 requests per second (0: no limit)")
    return problems

