"""The ranker's training set: candidates from the engine's own retrieval, labelled by what the
shopper did next.

A training query is a moment the engine could have been asked (shopper, surface, anchors, time).
Its candidates come from `engine.retrieval.retrieve` over a leak-free view of the bundle (tables
as of the cut-off), its features from `engine.features.assemble_features`, and its labels from
behaviour after the moment: purchase 3 > add-to-cart 2 > click 1 > shown or not touched 0.

- home: a shopper with interactions in the label window [cut-off, cut-off + window), asked at
  their first one (its time, device and region), state as of the cut-off; labels = the window's
  interactions.
- pdp: a click in the label window; anchor = the clicked item; labels = later interactions in the
  same session.
- cart: an add-to-cart in the label window; anchors = the session's cart so far; labels = later
  carts and purchases in the same session.

A query's context (hour, day of week, device, region) is the logged event's, with the serving
rule for what a request leaves out (`Shopper.context_codes`: the shopper's own), so the trees see
the context a request carries rather than a constant.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from artifacts.schema import EventType
from builder.progress import Progress, silent
from builder.snapshot import shopper_records
from builder.store import Store
from engine.catalog import CatalogView
from engine.context import RequestContext
from engine.features import assemble_features
from engine.resolve import shopper_vector
from engine.retrieval import retrieve
from engine.settings import RetrievalSettings
from engine.shopper import Shopper
from engine.sources import default_sources

GRADE = np.zeros(len(EventType), dtype=np.int32)
GRADE[EventType.CLICK] = 1
GRADE[EventType.ADD_TO_CART] = 2
GRADE[EventType.PURCHASE] = 3

SURFACE_SHARE = {"home": 0.5, "pdp": 0.3, "cart": 0.2}


@dataclass(frozen=True)
class Query:
    surface: str
    user_row: int
    now: int
    anchors: np.ndarray  # int32
    label_rows: np.ndarray  # int32 items with a positive grade
    label_grades: np.ndarray  # int32 grades, aligned
    region: int = 0  # the logged request's region code (0 = unknown: the shopper's is used)
    device: int = 0  # likewise the device


@dataclass
class TrainingSet:
    X: dict[str, np.ndarray] = field(default_factory=dict)  # "train" / "valid" -> float32 [n, F]
    y: dict[str, np.ndarray] = field(default_factory=dict)  # int32 grades
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # int32 query sizes
    surfaces: dict[str, np.ndarray] = field(default_factory=dict)  # surface per query
    recall: dict[str, float] = field(default_factory=dict)  # share of label items retrieved, per surface
    queries: dict[str, int] = field(default_factory=dict)  # queries with ≥ 1 retrieved positive, per surface
    candidates_mean: float = 0.0


def _max_grade(rows: np.ndarray, grades: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(rows) == 0:
        return rows.astype(np.int32), grades.astype(np.int32)
    order = np.lexsort((-grades, rows))
    rows, grades = rows[order], grades[order]
    first = np.r_[True, rows[1:] != rows[:-1]]
    return rows[first].astype(np.int32), grades[first].astype(np.int32)


def validation_shoppers(n_users: int, valid_fraction: float) -> np.ndarray:
    """bool [n_users]: the shoppers whose queries validate the ranker rather than train it (a hash
    of the row, so the choice is stable and the same for every stage that needs it)."""
    threshold = int(valid_fraction * 1000)
    return np.fromiter((zlib.crc32(u.to_bytes(8, "little")) % 1000 < threshold for u in range(n_users)), bool, n_users)


def sample_queries(store: Store, cutoff: int, window_end: int, max_queries: int, seed: int) -> list[Query]:
    ev = store.events
    rng = np.random.default_rng(seed)
    in_window = (ev.ts >= cutoff) & (ev.ts < window_end) & (GRADE[ev.type] > 0)
    idx = np.flatnonzero(in_window)
    queries: list[Query] = []

    # home: one query per shopper active in the window
    users = np.unique(ev.user_row[idx])
    rng.shuffle(users)
    users = users[: int(max_queries * SURFACE_SHARE["home"])]
    by_user_order = idx[np.argsort(ev.user_row[idx], kind="stable")]
    u_sorted = ev.user_row[by_user_order]
    for user in users:
        lo, hi = np.searchsorted(u_sorted, [user, user + 1])
        sel = by_user_order[lo:hi]
        rows, grades = _max_grade(ev.item_row[sel], GRADE[ev.type[sel]])
        first = sel[np.argmin(ev.ts[sel])]  # the shopper arrives: the moment the home page is asked for
        queries.append(Query("home", int(user), int(ev.ts[first]), np.zeros(0, np.int32), rows, grades,
                             int(ev.region[first]), int(ev.device[first])))

    # pdp and cart: moments inside sessions, labelled by the rest of the session
    order = idx[np.lexsort((ev.ts[idx], ev.session_row[idx]))]
    sess = ev.session_row[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sess)) + 1, len(order)]
    pdp_moments: list[tuple[int, int, int]] = []  # (start, pos, end) in `order`
    cart_moments: list[tuple[int, int, int]] = []
    for s, e in zip(starts[:-1], starts[1:]):
        for p in range(s, e - 1):
            t = ev.type[order[p]]
            if t == EventType.CLICK:
                pdp_moments.append((s, p, e))
            elif t == EventType.ADD_TO_CART:
                cart_moments.append((s, p, e))
    for surface, moments in (("pdp", pdp_moments), ("cart", cart_moments)):
        want = int(max_queries * SURFACE_SHARE[surface])
        if len(moments) > want:
            pick = rng.choice(len(moments), size=want, replace=False)
            moments = [moments[i] for i in np.sort(pick)]
        for s, p, e in moments:
            here = order[p]
            if surface == "pdp":
                anchors = np.asarray([ev.item_row[here]], np.int32)
            else:
                upto = order[s : p + 1]
                carted = ev.item_row[upto][ev.type[upto] == EventType.ADD_TO_CART]
                anchors = np.unique(carted).astype(np.int32)
            later = order[p + 1 : e]
            rows, grades = _max_grade(ev.item_row[later], GRADE[ev.type[later]])
            keep = ~np.isin(rows, anchors)
            if surface == "cart":
                keep &= grades >= 2  # cross-sell is judged on carts and purchases
            if keep.any():
                queries.append(Query(surface, int(ev.user_row[here]), int(ev.ts[here]), anchors, rows[keep], grades[keep],
                                     int(ev.region[here]), int(ev.device[here])))
    return queries


def build_training_set(
    store: Store,
    view: CatalogView,
    queries: list[Query],
    cutoff: int,
    recent_items: int,
    valid_fraction: float,
    retrieval: RetrievalSettings,
    progress: Progress = silent,
) -> TrainingSet:
    """Run retrieval + features for every query (engine code), label, and split train/valid by
    shopper (a shopper's queries all land on one side, so validation measures new shoppers' moments
    rather than memorised ones)."""
    users = np.unique(np.fromiter((q.user_row for q in queries), dtype=np.int64, count=len(queries)))
    records = {u: Shopper.from_record(r) for u, r in shopper_records(store, cutoff, recent_items, 0, only_users=users)}
    sources = default_sources(retrieval.recent_anchors, retrieval.recency_decay)
    parts: dict[str, dict[str, list]] = {s: {"X": [], "y": [], "g": [], "surf": []} for s in ("train", "valid")}
    hits: dict[str, list[float]] = {"home": [], "pdp": [], "cart": []}
    kept: dict[str, int] = {"home": 0, "pdp": 0, "cart": 0}
    n_cands = 0
    valid_side = validation_shoppers(len(store.users), valid_fraction)
    for i, q in enumerate(queries):
        shopper = records.get(q.user_row) or Shopper.anonymous()
        ctx = RequestContext(q.surface, shopper, q.now, q.anchors, *shopper.context_codes(q.region, q.device))
        ctx.user_vector = shopper_vector(view, ctx)
        cands = retrieve(view, ctx, retrieval.plan(q.surface), sources)
        if len(q.anchors):
            cands = cands.take(np.flatnonzero(~np.isin(cands.rows, q.anchors)))
        grade = np.zeros(len(cands), np.int32)
        pos = np.searchsorted(q.label_rows, cands.rows)
        pos = np.minimum(pos, max(len(q.label_rows) - 1, 0))
        if len(q.label_rows):
            match = q.label_rows[pos] == cands.rows
            grade[match] = q.label_grades[pos[match]]
        hits[q.surface].append(float((grade > 0).sum()) / max(len(q.label_rows), 1))
        if (grade > 0).any() and (grade == 0).any():
            side = "valid" if valid_side[q.user_row] else "train"
            parts[side]["X"].append(assemble_features(view, ctx, cands))
            parts[side]["y"].append(grade)
            parts[side]["g"].append(len(cands))
            parts[side]["surf"].append(q.surface)
            kept[q.surface] += 1
            n_cands += len(cands)
        progress("ranker candidates", i + 1, len(queries))
    ts = TrainingSet()
    for side, p in parts.items():
        if not p["X"]:
            raise ValueError(
                f"no usable {side} queries for the ranker: the label window holds too little behaviour "
                f"(queries tried: {len(queries)}); use more data or a longer ranker.label_window_days"
            )
        ts.X[side] = np.ascontiguousarray(np.concatenate(p["X"]), dtype=np.float32)
        ts.y[side] = np.concatenate(p["y"]).astype(np.int32)
        ts.groups[side] = np.asarray(p["g"], np.int32)
        ts.surfaces[side] = np.asarray(p["surf"])
    ts.recall = {s: float(np.mean(v)) if v else 0.0 for s, v in hits.items()}
    ts.queries = kept
    ts.candidates_mean = n_cands / max(sum(kept.values()), 1)
    return ts
