"""Logged slates as training examples: what was shown, where, and what the shopper did with it.

The ranker's heads (docs/ranking-objectives.md) learn P(click | shown) from impressions, not from
the engine's own retrieval: an item the shopper never saw says nothing about whether they would
click it. A slate is the impressions one page showed: in the canonical store they share the
session, the timestamp and the surface, and carry their 0-based `position`. A click on a slate's
item (same session, item and position, at or after the slate's time) marks that impression
clicked.

Each slate is re-scored through the engine's own code, as the engine would have seen it: the
shopper as of the training cut-off, the page's anchors (the product of a pdp page: the last item
the shopper clicked before the slate; a cart page: the session's carts so far), the slate's items
as given candidates (`engine.retrieval.score_given`: every source scores the items it would have
proposed) and `engine.features.assemble_features`. Training and serving share that code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from artifacts.schema import SURFACE_BY_NAME, EventType
from builder.progress import Progress, silent
from builder.ranker_data import validation_shoppers
from builder.snapshot import shopper_records
from builder.store import Store
from engine.catalog import CatalogView
from engine.context import RequestContext
from engine.features import assemble_features
from engine.resolve import shopper_vector
from engine.retrieval import score_given
from engine.settings import RetrievalSettings
from engine.shopper import Shopper
from engine.sources import default_sources

SURFACE_OF_CODE = {code: name for name, code in SURFACE_BY_NAME.items()}
SERVED_SURFACES = ("home", "pdp", "cart")


@dataclass(frozen=True)
class Slates:
    """Impressions grouped by slate. Slate s holds impressions start[s]:start[s + 1], in position
    order."""

    start: np.ndarray  # int64 [n_slates + 1]
    user_row: np.ndarray  # int32 [n_slates]
    session_row: np.ndarray  # int32 [n_slates]
    ts: np.ndarray  # int64 [n_slates]
    surface: np.ndarray  # int8 [n_slates], artifacts.schema SURFACE code
    item_row: np.ndarray  # int32 [n_impressions]
    position: np.ndarray  # int16 [n_impressions]
    clicked: np.ndarray  # bool [n_impressions]
    click_ts: np.ndarray  # int64 [n_impressions], -1 when not clicked
    region: np.ndarray  # int16 [n_slates], the request's region code as logged (0 = unknown)
    device: np.ndarray  # int8 [n_slates], the request's device code as logged (0 = unknown)

    @property
    def n_slates(self) -> int:
        return len(self.ts)

    def take(self, slates: np.ndarray) -> Slates:
        """These slates (sorted indices), in that order."""
        lo, hi = self.start[slates], self.start[slates + 1]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(slates) else np.zeros(0, np.int64)
        start = np.r_[0, np.cumsum(hi - lo)].astype(np.int64)
        return Slates(start, self.user_row[slates], self.session_row[slates], self.ts[slates], self.surface[slates],
                      self.item_row[rows], self.position[rows], self.clicked[rows], self.click_ts[rows],
                      self.region[slates], self.device[slates])  # fmt: skip


def logged_slates(store: Store, since_ts: int | None = None, until_ts: int | None = None) -> Slates:
    """Every slate of the home, pdp and cart surfaces shown in [since_ts, until_ts), with its
    clicks (vectorised: one sort of the impressions, one join of the clicks)."""
    ev = store.events
    served = np.isin(ev.surface, [SURFACE_BY_NAME[s] for s in SERVED_SURFACES])
    window = np.ones(len(ev), bool)
    if since_ts is not None:
        window &= ev.ts >= since_ts
    if until_ts is not None:
        window &= ev.ts < until_ts
    imp = np.flatnonzero((ev.type == EventType.IMPRESSION) & (ev.position >= 0) & served & window)
    # Slate order: session, time, surface, then position.
    imp = imp[np.lexsort((ev.position[imp], ev.surface[imp], ev.ts[imp], ev.session_row[imp]))]
    key_s, key_t, key_f = ev.session_row[imp], ev.ts[imp], ev.surface[imp]
    new_slate = np.r_[True, (key_s[1:] != key_s[:-1]) | (key_t[1:] != key_t[:-1]) | (key_f[1:] != key_f[:-1])]
    first = np.flatnonzero(new_slate)
    start = np.r_[first, len(imp)].astype(np.int64)

    clicked = np.zeros(len(imp), bool)
    click_ts = np.full(len(imp), -1, np.int64)
    clicks = np.flatnonzero((ev.type == EventType.CLICK) & (ev.position >= 0))
    if len(imp) and len(clicks):
        # Join on (session, item, position): the latest impression at or before the click.
        imp_key = _pack(ev.session_row[imp], ev.item_row[imp], ev.position[imp])
        order = np.lexsort((key_t, imp_key))
        sorted_key, sorted_t = imp_key[order], key_t[order]
        click_key = _pack(ev.session_row[clicks], ev.item_row[clicks], ev.position[clicks])
        lo = np.searchsorted(sorted_key, click_key, side="left")
        hi = np.searchsorted(sorted_key, click_key, side="right")
        click_t = ev.ts[clicks]
        at = np.full(len(clicks), -1, np.int64)
        # Most keys are shown once per session: one candidate impression, checked at once.
        single = np.flatnonzero(hi - lo == 1)
        ok = sorted_t[lo[single]] <= click_t[single]
        at[single[ok]] = order[lo[single[ok]]]
        # The same item in the same slot twice in a session (a page seen again): the latest
        # showing at or before the click. Rare, so a loop over those clicks only.
        for j in np.flatnonzero(hi - lo > 1):
            a, b = lo[j], hi[j]
            k = a + int(np.searchsorted(sorted_t[a:b], click_t[j], side="right")) - 1
            if k >= a:
                at[j] = order[k]
        hit = at >= 0
        clicked[at[hit]] = True
        click_ts[at[hit]] = np.maximum(click_ts[at[hit]], click_t[hit])
    return Slates(
        start=start,
        user_row=ev.user_row[imp[first]].astype(np.int32),
        session_row=key_s[first].astype(np.int32),
        ts=key_t[first].astype(np.int64),
        surface=key_f[first].astype(np.int8),
        item_row=ev.item_row[imp].astype(np.int32),
        position=ev.position[imp].astype(np.int16),
        clicked=clicked,
        click_ts=click_ts,
        region=ev.region[imp[first]].astype(np.int16),
        device=ev.device[imp[first]].astype(np.int8),
    )


def _pack(session: np.ndarray, item: np.ndarray, position: np.ndarray) -> np.ndarray:
    """One int64 per (session, item, position): session < 2^31, item < 2^24, position < 2^8 fit."""
    return (session.astype(np.int64) << 32) | (item.astype(np.int64) << 8) | np.clip(position, 0, 255).astype(np.int64)


def slate_anchors(store: Store, slates: Slates) -> list[np.ndarray]:
    """Each slate's anchors, from the session before the slate: pdp, the last item clicked;
    cart, the items carted so far; home, none."""
    ev = store.events
    acts = np.flatnonzero(np.isin(ev.type, [EventType.CLICK, EventType.ADD_TO_CART]))
    acts = acts[np.lexsort((ev.ts[acts], ev.session_row[acts]))]
    a_sess, a_ts = ev.session_row[acts], ev.ts[acts]
    lo = np.searchsorted(a_sess, slates.session_row, side="left")
    hi = np.searchsorted(a_sess, slates.session_row, side="right")
    out: list[np.ndarray] = []
    none = np.zeros(0, np.int32)
    pdp, cart = SURFACE_BY_NAME["pdp"], SURFACE_BY_NAME["cart"]
    for s in range(slates.n_slates):
        surface = slates.surface[s]
        if surface not in (pdp, cart):
            out.append(none)
            continue
        a, b = lo[s], hi[s]
        # Acts strictly before the slate (a click at the slate's own second opened this page).
        b = a + int(np.searchsorted(a_ts[a:b], slates.ts[s], side="right"))
        before = acts[a:b]
        if surface == pdp:
            viewed = before[ev.type[before] == EventType.CLICK]
            out.append(ev.item_row[viewed[-1:]].astype(np.int32) if len(viewed) else none)
        else:
            carted = before[ev.type[before] == EventType.ADD_TO_CART]
            out.append(np.unique(ev.item_row[carted]).astype(np.int32))
    return out


@dataclass
class SlateExamples:
    """One row per impression: the engine's features for the item in its slate, where it was
    shown and whether it was clicked; split by shopper like the ranker's data."""

    X: dict[str, np.ndarray] = field(default_factory=dict)  # "train"/"valid" -> float32 [n, F]
    clicked: dict[str, np.ndarray] = field(default_factory=dict)  # bool [n]
    click_ts: dict[str, np.ndarray] = field(default_factory=dict)  # int64 [n], -1 when not clicked
    position: dict[str, np.ndarray] = field(default_factory=dict)  # int16 [n]
    item_row: dict[str, np.ndarray] = field(default_factory=dict)  # int32 [n]
    user_row: dict[str, np.ndarray] = field(default_factory=dict)  # int32 [n]
    ts: dict[str, np.ndarray] = field(default_factory=dict)  # int64 [n]: the slate's time
    surface: dict[str, np.ndarray] = field(default_factory=dict)  # int8 [n]
    slates: dict[str, int] = field(default_factory=dict)  # slates per side


def slate_examples(
    store: Store,
    view: CatalogView,
    slates: Slates,
    cutoff: int,
    recent_items: int,
    valid_fraction: float,
    retrieval: RetrievalSettings,
    progress: Progress = silent,
) -> SlateExamples:
    """Features for every impression of `slates`, as the engine computes them (see the module
    docstring). Slates whose items the view does not know are skipped."""
    users = np.unique(slates.user_row)
    records = {u: Shopper.from_record(r) for u, r in shopper_records(store, cutoff, recent_items, 0, only_users=users)}
    sources = default_sources(retrieval.recent_anchors, retrieval.recency_decay)
    anchors = slate_anchors(store, slates)
    valid_side = validation_shoppers(len(store.users), valid_fraction)
    parts: dict[str, dict[str, list]] = {s: {k: [] for k in ("X", "c", "k", "p", "i", "u", "t", "f")} for s in ("train", "valid")}
    counts = {"train": 0, "valid": 0}
    for s in range(slates.n_slates):
        lo, hi = slates.start[s], slates.start[s + 1]
        items = slates.item_row[lo:hi]
        # A page never shows an item twice; if a log does, keep the first showing.
        items, first = np.unique(items, return_index=True)
        keep = np.sort(first)
        rows = lo + keep
        items = slates.item_row[rows]
        user = int(slates.user_row[s])
        shopper = records.get(user) or Shopper.anonymous()
        surface = SURFACE_OF_CODE[int(slates.surface[s])]
        ctx = RequestContext(surface, shopper, int(slates.ts[s]), anchors[s], *shopper.context_codes(int(slates.region[s]), int(slates.device[s])))
        ctx.user_vector = shopper_vector(view, ctx)
        cands = score_given(view, ctx, retrieval.plan(surface), sources, items.astype(np.int32))
        side = "valid" if valid_side[user] else "train"
        p = parts[side]
        p["X"].append(assemble_features(view, ctx, cands))
        p["c"].append(slates.clicked[rows])
        p["k"].append(slates.click_ts[rows])
        p["p"].append(slates.position[rows])
        p["i"].append(items)
        p["u"].append(np.full(len(rows), user, np.int32))
        p["t"].append(np.full(len(rows), slates.ts[s], np.int64))
        p["f"].append(np.full(len(rows), slates.surface[s], np.int8))
        counts[side] += 1
        progress("slate examples", s + 1, slates.n_slates)
    out = SlateExamples(slates=counts)
    for side, p in parts.items():
        if not p["X"]:
            raise ValueError(f"no {side} slates: the log holds no impressions of the served surfaces in the window "
                             f"({slates.n_slates} slates in all); use more data or a longer window")
        out.X[side] = np.ascontiguousarray(np.concatenate(p["X"]), dtype=np.float32)
        out.clicked[side] = np.concatenate(p["c"])
        out.click_ts[side] = np.concatenate(p["k"]).astype(np.int64)
        out.position[side] = np.concatenate(p["p"]).astype(np.int16)
        out.item_row[side] = np.concatenate(p["i"]).astype(np.int32)
        out.user_row[side] = np.concatenate(p["u"])
        out.ts[side] = np.concatenate(p["t"])
        out.surface[side] = np.concatenate(p["f"])
    return out
