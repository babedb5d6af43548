"""Evaluation protocols: which interactions train and which are held out.

`loo-full` (the published protocol of ../shared/data): per shopper, the last interaction is the
test target, the one before it the validation target, the rest train; the target is ranked
against every item with the shopper's earlier items (`items[:-1]`) masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifacts.schema import EventType
from builder.store import Store

INTERACTIONS = (EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE)


@dataclass(frozen=True)
class Holdout:
    """One held-out target per shopper. `history` is CSR over users: the items the shopper had
    before the target (masked from the ranking), oldest first."""

    users: np.ndarray  # int32 [n] user rows
    targets: np.ndarray  # int32 [n] item rows
    history_indptr: np.ndarray  # int64 [n + 1]
    history: np.ndarray  # int32


def sequences(store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user rows, indptr, items) of every shopper's interactions in time order (stable)."""
    ev = store.events
    keep = np.isin(ev.type, np.asarray(INTERACTIONS, dtype=np.int8))
    users, items, ts = ev.user_row[keep], ev.item_row[keep], ev.ts[keep]
    order = np.lexsort((np.arange(len(users)), ts, users))
    users, items = users[order], items[order]
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1, len(users)]
    return users[starts[:-1]].astype(np.int32), starts.astype(np.int64), items.astype(np.int32)


def leave_one_out(store: Store, which: str = "test") -> Holdout:
    """which = "test" (last item; history = all before it) or "valid" (second to last)."""
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    users, indptr, items = sequences(store)
    back = 1 if which == "test" else 2
    lengths = np.diff(indptr)
    ok = lengths >= back + 1  # a target needs at least one earlier item
    tgt_pos = indptr[1:] - back
    hist_ptr = np.zeros(int(ok.sum()) + 1, np.int64)
    hist_ptr[1:] = np.cumsum(lengths[ok] - back)
    history = np.concatenate([items[s : s + n - back] for s, n in zip(indptr[:-1][ok], lengths[ok])]) if ok.any() else np.zeros(0, np.int32)
    return Holdout(users[ok], items[tgt_pos[ok]], hist_ptr, history.astype(np.int32))


def rank_with_global_scores(scores: np.ndarray, holdout: Holdout) -> np.ndarray:
    """0-based rank of each target when every shopper gets the same item scores (popularity),
    history masked, ties broken by item row (a stable sort on -score): the order the published
    reruns used, and the one that reproduces both of their popularity rows."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    position = np.empty(len(scores), np.int64)
    position[order] = np.arange(len(scores))
    ranks = np.empty(len(holdout.targets), np.int64)
    for i, target in enumerate(holdout.targets):
        hist = holdout.history[holdout.history_indptr[i] : holdout.history_indptr[i + 1]]
        hist = np.unique(hist[hist != target])
        ranks[i] = position[target] - int((position[hist] < position[target]).sum())
    return ranks


@dataclass(frozen=True)
class EvalSplit:
    """What a protocol hands the evaluator: the store a bundle is built from (held-out behaviour
    removed), the held-out targets, and the moment the requests are asked at.

    `holdout.history` is what every variant masks: the shopper's earlier interactions (loo-full,
    as published) or earlier purchases (temporal: what the engine's already-purchased filter
    removes). `prior` counts the shopper's interactions in `train` (0 = a new shopper)."""

    protocol: str  # "loo-full" | "temporal"
    which: str  # "test" | "valid"
    train: Store
    holdout: Holdout
    prior: np.ndarray  # int32 [n] interactions of each held-out shopper in `train`
    now: int  # epoch seconds


def _interaction_order(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """(event positions of every interaction sorted by (shopper, ts, log order), start of each
    shopper's run incl. the end)."""
    ev = store.events
    idx = np.flatnonzero(np.isin(ev.type, np.asarray(INTERACTIONS, dtype=np.int8)))
    idx = idx[np.lexsort((idx, ev.ts[idx], ev.user_row[idx]))]
    users = ev.user_row[idx]
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1, len(idx)].astype(np.int64)
    return idx, starts


def loo_split(store: Store, which: str = "test") -> EvalSplit:
    """loo-full: per shopper with ≥ 2 (test) or ≥ 3 (valid) interactions, the last (test) or the
    second-to-last (valid) is the target; the bundle is built without the target and everything
    after it, so nothing held out is ever trained on."""
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    back = 1 if which == "test" else 2
    ev = store.events
    idx, starts = _interaction_order(store)
    lengths = np.diff(starts)
    ok = lengths >= back + 1
    ends = starts[1:]
    target_at = idx[ends[ok] - back]
    dropped = np.zeros(len(ev), bool)
    for b in range(1, back + 1):
        dropped[idx[ends[lengths >= b] - b]] = True
    history = [ev.item_row[idx[s : e - back]] for s, e in zip(starts[:-1][ok], ends[ok])]
    holdout = _holdout(ev.user_row[target_at], ev.item_row[target_at], history)
    train = store.with_events(~dropped)
    now = int(train.events.ts.max()) + 1 if len(train.events) else 0
    return EvalSplit("loo-full", which, train, holdout, (lengths[ok] - back).astype(np.int32), now)


def temporal_split(store: Store, days: float = 7.0, cutoff: int | None = None, shoppers: np.ndarray | None = None) -> EvalSplit:
    """temporal: the bundle is built from behaviour before the cut-off (end − days, unless given);
    each shopper active after it (among `shoppers`, a bool mask over user rows, when given) is
    asked at the cut-off, and the target is the first item they interact with after it that they
    had not interacted with before (the discovery a recommendation is for)."""
    ev = store.events
    if len(ev) == 0:
        raise ValueError("the store has no events to split")
    if cutoff is None:
        cutoff = int(ev.ts.max()) + 1 - int(days * 86_400)
    before = ev.ts < cutoff
    if not before.any() or before.all():
        raise ValueError(f"a {days}-day hold-out leaves nothing on one side of the cut-off; choose another --days")
    idx, starts = _interaction_order(store)
    users_out, targets, history, prior = [], [], [], []
    purchase = np.int8(EventType.PURCHASE)
    for s, e in zip(starts[:-1], starts[1:]):
        run = idx[s:e]
        if shoppers is not None and not shoppers[ev.user_row[run[0]]]:
            continue
        early = run[ev.ts[run] < cutoff]
        late = run[ev.ts[run] >= cutoff]
        fresh = late[~np.isin(ev.item_row[late], ev.item_row[early])]
        if len(fresh) == 0:
            continue
        users_out.append(ev.user_row[fresh[0]])
        targets.append(ev.item_row[fresh[0]])
        history.append(ev.item_row[early[ev.type[early] == purchase]])
        prior.append(len(early))
    holdout = _holdout(np.asarray(users_out, np.int32), np.asarray(targets, np.int32), history)
    return EvalSplit("temporal", "test", store.with_events(before), holdout, np.asarray(prior, np.int32), cutoff)


def sample_users(split: EvalSplit, max_users: int | None, seed: int) -> EvalSplit:
    """At most `max_users` held-out shoppers, a seeded uniform sample (order kept)."""
    h = split.holdout
    if max_users is None or len(h.targets) <= max_users:
        return split
    pick = np.sort(np.random.default_rng(seed).choice(len(h.targets), size=max_users, replace=False))
    history = [h.history[h.history_indptr[i] : h.history_indptr[i + 1]] for i in pick]
    indptr = np.zeros(len(pick) + 1, np.int64)
    indptr[1:] = np.cumsum([len(x) for x in history])
    flat = np.concatenate(history).astype(np.int32) if history else np.zeros(0, np.int32)
    holdout = Holdout(h.users[pick], h.targets[pick], indptr, flat)
    return EvalSplit(split.protocol, split.which, split.train, holdout, split.prior[pick], split.now)


def _holdout(users: np.ndarray, targets: np.ndarray, history: list[np.ndarray]) -> Holdout:
    indptr = np.zeros(len(history) + 1, np.int64)
    indptr[1:] = np.cumsum([len(h) for h in history])
    flat = np.concatenate(history).astype(np.int32) if history else np.zeros(0, np.int32)
    return Holdout(users.astype(np.int32), targets.astype(np.int32), indptr, flat)
