"""`generate`: one call that builds a whole synthetic store and writes it (see `writer` for layout)."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from artifacts.schema import EVENT_TYPE_NAMES
from builder.synth import catalog as catalog_model
from builder.synth import writer
from builder.synth.catalog import DAY, Catalog, build_catalog
from builder.synth.scales import Scale, resolve_scale
from builder.synth.sessions import (
    SLATE_ORDER_NOISE,
    SLATE_ORDERS,
    BrowsingModel,
    Log,
    position_bias,
    simulate_sessions,
)
from builder.synth.shoppers import Shoppers, build_shoppers
from builder.synth.visits import Visits, horizon, schedule_visits

Progress = Callable[[str, int, int], None]

STORE_FORMAT = "aisle-synthetic-store"
STORE_FORMAT_VERSION = 1
ATTRACTIVENESS = (
    "click_bias + user_taste·item_latent + item_quality - user_price_sensitivity·item_price_term "
    "+ discount_weight·discount (+ complement_boost for a planted complement on the cart slate); "
    "P(click at slot k) = position_bias[k] · sigmoid(attractiveness)"
)


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote. Times are epoch seconds; paths point inside `out`."""

    scale: str
    seed: int
    items: int
    users: int
    sessions: int
    requests: int
    events: int
    events_by_type: dict[str, int]
    horizon_start: int
    horizon_end: int
    out: Path
    catalog_path: Path
    events_path: Path
    users_path: Path
    truth_dir: Path
    elapsed_s: float


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def generate(
    scale: str | Scale = "tiny",
    seed: int = 7,
    out: Path | str = Path("data"),
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
    end: int | None = None,
    purchase_delay_days: float = 0.0,
    slate_order: str = "draw",
) -> SynthSummary:
    """Generate the synthetic store `scale` (a name in SCALES or a Scale) with `seed` into `out`.

    Same (scale, seed, end) → identical tables and truth; a different seed → a different store.
    `end`: epoch seconds the event log ends at, floored to a whole UTC day (default: a fixed date,
    visits.HORIZON_END); `aisle synth --end now` makes a store the simulator can continue.
    `out` must not exist or be empty unless `overwrite=True` (then it is replaced atomically).
    `purchase_delay_days` > 0 (opt-in) makes purchases arrive an exponential delay with that mean
    after checkout, and leaves out those due after `end` (sessions.py; the long-delay store that
    builder.labels is tested on); it is then recorded in truth/store.json as
    `parameters.purchase_delay_days`. The default 0 writes exactly the store it always did.
    `slate_order` other than "draw" (opt-in; sessions.SLATE_ORDERS) lists each slate's items by a
    noisy logging score the model can see ("popularity" or "price") instead of in draw order, so
    the slot confounds the features as under a production ranker (the store position-bias
    correction is tested on); it is then recorded as `parameters.slate_order` (score and noise).
    The default "draw" writes exactly the store it always did.
    `progress(stage, done, total)` is called for stages catalog, shoppers, visits, sessions (done =
    sessions simulated), write (files), events (rows written), publish.
    Raises ValueError for a bad scale, seed, delay or slate order, FileExistsError for a non-empty
    `out`.
    """
    started = time.perf_counter()
    spec = resolve_scale(scale)
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    if not (np.isfinite(purchase_delay_days) and purchase_delay_days >= 0.0):
        raise ValueError(f"purchase_delay_days must be a finite number ≥ 0, got {purchase_delay_days}")
    if slate_order not in SLATE_ORDERS:
        raise ValueError(f"slate_order must be one of {', '.join(SLATE_ORDERS)}, got {slate_order!r}")
    out = Path(out)
    writer.check_destination(out, overwrite)
    report = progress if progress is not None else (lambda stage, done, total: None)
    # A store for the closed-loop simulator ends today (`end`), so the engine's live events follow
    # its history without a gap; the default end keeps stores reproducible byte for byte.
    start, end = horizon(spec.horizon_days, end)

    report("catalog", 0, 1)
    catalog = build_catalog(spec, seed, start, end)
    report("catalog", 1, 1)
    report("shoppers", 0, 1)
    shoppers = build_shoppers(spec.shoppers, catalog, seed, start, end, spec.latent_dim)
    report("shoppers", 1, 1)
    report("visits", 0, 1)
    visits = schedule_visits(shoppers, spec.sessions_per_shopper, start, end, seed)
    report("visits", 1, 1)
    model = BrowsingModel()
    log = simulate_sessions(
        catalog, shoppers, visits, end, spec.slate_size, seed, model, progress, purchase_delay_days, slate_order
    )

    by_type = np.bincount(log.type, minlength=len(EVENT_TYPE_NAMES))
    events_by_type = {name: int(by_type[code]) for code, name in enumerate(EVENT_TYPE_NAMES)}
    ids = writer.Ids(seed, len(catalog), len(shoppers), len(visits), log.n_requests)
    info = _store_info(spec, seed, start, end, catalog, shoppers, visits, log, events_by_type, model)
    if purchase_delay_days > 0.0:
        # Only when asked for: a default store's store.json stays exactly what it was.
        info["parameters"]["purchase_delay_days"] = float(purchase_delay_days)  # type: ignore[index]
    if slate_order != "draw":
        info["parameters"]["slate_order"] = {"score": slate_order, "noise": SLATE_ORDER_NOISE}  # type: ignore[index]
    tmp = writer.staging_dir(out)
    published = False
    try:
        writer.write_store(
            tmp, catalog, shoppers, visits, log, ids, position_bias(model, spec.slate_size), info, progress
        )
        writer.publish(tmp, out, overwrite, progress)
        published = True
    finally:
        if not published:
            shutil.rmtree(tmp, ignore_errors=True)
    return SynthSummary(
        scale=spec.name,
        seed=seed,
        items=len(catalog),
        users=len(shoppers),
        sessions=len(visits),
        requests=log.n_requests,
        events=len(log),
        events_by_type=events_by_type,
        horizon_start=start,
        horizon_end=end,
        out=out,
        catalog_path=out / "catalog.parquet",
        events_path=out / "events.parquet",
        users_path=out / "users.parquet",
        truth_dir=out / "truth",
        elapsed_s=time.perf_counter() - started,
    )


def _store_info(
    spec: Scale,
    seed: int,
    start: int,
    end: int,
    catalog: Catalog,
    shoppers: Shoppers,
    visits: Visits,
    log: Log,
    events_by_type: dict[str, int],
    model: BrowsingModel,
) -> dict[str, object]:
    """The content of truth/store.json: what was generated, from what, with which parameters."""
    counts = {
        "items": len(catalog),
        "users": len(shoppers),
        "sessions": len(visits),
        "requests": log.n_requests,
        "events": len(log),
        "events_by_type": events_by_type,
        "leaf_categories": catalog.tree.n_leaves,
        "brands": len(catalog.brands),
        "sellers": len(catalog.sellers),
        "out_of_stock": int((~catalog.in_stock).sum()),
        "created_during_horizon": int((catalog.created_at >= start).sum()),
        "new_arrivals_last_week": int((catalog.created_at >= end - catalog_model.NEW_ARRIVAL_DAYS * DAY).sum()),
        "planted_pairs": int((catalog.complement >= 0).sum()),
        "users_blocking_brands": int((np.diff(shoppers.blocked_brands_ptr) > 0).sum()),
        "users_blocking_sellers": int((np.diff(shoppers.blocked_sellers_ptr) > 0).sum()),
    }
    return {
        "format": STORE_FORMAT,
        "format_version": STORE_FORMAT_VERSION,
        "scale": msgspec.structs.asdict(spec),
        "seed": seed,
        "horizon": {
            "start": start,
            "end": end,
            "start_iso": _iso(start),
            "end_iso": _iso(end),
            "days": spec.horizon_days,
        },
        "counts": counts,
        "parameters": {
            "browsing_model": model._asdict(),
            "attractiveness": ATTRACTIVENESS,
            "catalog": {
                "out_of_stock_share": catalog_model.OUT_OF_STOCK_SHARE,
                "discounted_share": catalog_model.DISCOUNTED_SHARE,
                "arrived_during_share": catalog_model.ARRIVED_DURING_SHARE,
                "new_arrival_share": catalog_model.NEW_ARRIVAL_SHARE,
                "new_arrival_days": catalog_model.NEW_ARRIVAL_DAYS,
                "paired_share": catalog_model.PAIRED_SHARE,
                "popularity_sigma": catalog_model.POPULARITY_SIGMA,
            },
        },
    }
