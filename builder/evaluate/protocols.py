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
