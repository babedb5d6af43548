"""Sessions: which events of a shopper belong to one visit.

An event with a `session_id` belongs to the session (user, session_id): a storefront's session id
is trusted, and the same id under two users is two sessions. Events without one are split per user
by inactivity: a shopper's consecutive id-less events share a session until more than
`SESSION_GAP_SECONDS` (30 minutes, the usual web-analytics convention) pass between two of them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from builder.ingest.codes import dense_codes

SESSION_GAP_SECONDS = 30 * 60


def assign_sessions(ts: np.ndarray, user_row: np.ndarray, session_id: pl.Series) -> np.ndarray:
    """Dense session rows, int32 [m], for events sorted by `ts` (int64 [m], epoch seconds).

    `user_row` is int32 [m]; `session_id` is a String series of length m, "" for none. Sessions are
    numbered in order of (user_row, then session_id in text order, then id-less sessions in time
    order), so one shopper's sessions are contiguous. O(m log m).
    """
    m = len(ts)
    if m == 0:
        return np.zeros(0, dtype=np.int32)
    explicit = (session_id != "").to_numpy()
    # A per-user session key: the id's text rank for named sessions ("" ranks first and is
    # overwritten below), then numbers past every rank for inactivity sessions.
    local = dense_codes(session_id)[1].to_numpy().astype(np.int64)
    implicit = np.flatnonzero(~explicit)
    if len(implicit):
        # Stable by user over time-sorted events: each user's id-less events, in time order.
        order = implicit[np.argsort(user_row[implicit], kind="stable")]
        users, times = user_row[order], ts[order]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = (users[1:] != users[:-1]) | (times[1:] - times[:-1] > SESSION_GAP_SECONDS)
        local[order] = int(local.max()) + np.cumsum(starts)
    if int(local.max()) < 2**32:
        # Both parts in one int64 (user_row < 2^31): an integer rank, far cheaper than a struct one.
        key = pl.Series((user_row.astype(np.int64) << 32) | local)
        rank = key.rank("dense")
    else:
        keys = pl.DataFrame({"user": user_row, "local": local}, schema={"user": pl.Int32, "local": pl.Int64})
        rank = keys.select(pl.struct("user", "local").rank("dense")).to_series()
    return (rank.to_numpy() - 1).astype(np.int32)
