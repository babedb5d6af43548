"""Per-row seqlocks over the live item state (engine.inventory.state): one writer process, any
number of reader processes, all on one shared memory map.

Protocol, per row r (`version` is uint32 [n_rows], even = stable):

    writer:  version[r] += 1 (odd) ; release fence ; store the fields ; release fence ; version[r] += 1
    reader:  v1 = version[r] ; acquire fence ; load the fields ; acquire fence ; v2 = version[r]
             the read is good iff v1 == v2 and v1 is even; otherwise retry (bounded)

Memory ordering. On x86-64 (TSO) the hardware already makes one core's stores visible to others
in program order and never reorders loads with loads, so what is left is the compiler: without a
barrier LLVM merges the two loads of `version[r]` into one (there is no store in between that it
can see), and the check silently becomes `v1 == v1` — that was checked on the generated assembly.
The fences below are LLVM `fence` instructions: on x86 they emit no instruction and only stop the
compiler from moving or merging memory accesses across them; on aarch64 they become `dmb`
barriers, so the protocol stays correct on a weakly ordered CPU too.

Each row is written whole (all six mutable fields) between its two bumps, in one nogil kernel
call, so a row is odd for nanoseconds, not for a Python-level pause (a GIL switch or a page
fault between two numpy statements would otherwise keep whole batches odd for milliseconds).
Single fields are naturally aligned 1- and 4-byte stores, so no field is ever torn by itself:
`in_stock` alone may be read without the seqlock.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

DEFAULT_RETRIES = 4096  # reader attempts per row before giving up (see gather_offers)


@intrinsic
def _acquire_fence(typingctx):
    def codegen(context, builder, signature, args):
        builder.fence("acquire")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _release_fence(typingctx):
    def codegen(context, builder, signature, args):
        builder.fence("release")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(cache=True, nogil=True)
def gather_offers(
    rows: np.ndarray,
    limit: int,
    version: np.ndarray,
    price: np.ndarray,
    discount: np.ndarray,
    in_stock: np.ndarray,
    retired: np.ndarray,
    out_price: np.ndarray,
    out_discount: np.ndarray,
    out_in_stock: np.ndarray,
    out_retired: np.ndarray,
    out_unsettled: np.ndarray,
    max_retries: int,
) -> int:
    """Read (price, discount, in_stock, retired) of each row consistently. Returns how many rows
    stayed unsettled.

    rows: int32 [n]; limit: rows at or past it (and negative rows) are not visible: they read as
    (0, 0, in_stock 0, retired 1), settled; version uint32, price / discount float32, in_stock /
    retired uint8: the state's columns [n_rows]; out_*: [n] of the same dtypes, written here;
    out_unsettled: uint8 [n], 1 where every one of `max_retries` attempts saw the row odd or
    changing (the writer stalled mid-row): the values are then the last attempt's and may mix
    two updates, so callers treat such a row as unavailable.
    O(n) when no writer interferes.
    """
    unsettled = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0 or r >= limit:
            out_price[i] = 0.0
            out_discount[i] = 0.0
            out_in_stock[i] = 0
            out_retired[i] = 1
            out_unsettled[i] = 0
            continue
        ok = False
        p = price[r]
        d = discount[r]
        s = in_stock[r]
        t = retired[r]
        for _ in range(max_retries):
            v1 = version[r]
            _acquire_fence()
            p = price[r]
            d = discount[r]
            s = in_stock[r]
            t = retired[r]
            _acquire_fence()
            v2 = version[r]
            if v1 == v2 and (v1 & 1) == 0:
                ok = True
                break
        out_price[i] = p
        out_discount[i] = d
        out_in_stock[i] = s
        out_retired[i] = t
        out_unsettled[i] = 0 if ok else 1
        if not ok:
            unsettled += 1
    return unsettled


@njit(cache=True, nogil=True)
def write_rows(
    rows: np.ndarray,
    version: np.ndarray,
    in_stock: np.ndarray,
    stock_qty: np.ndarray,
    price: np.ndarray,
    discount: np.ndarray,
    promo: np.ndarray,
    retired: np.ndarray,
    new_in_stock: np.ndarray,
    new_stock_qty: np.ndarray,
    new_price: np.ndarray,
    new_discount: np.ndarray,
    new_promo: np.ndarray,
    new_retired: np.ndarray,
) -> None:
    """The writer side: store the full mutable record of each row under its seqlock.

    rows: int64 [k], each row at most once, all < len(version); new_*: [k] values with the
    dtypes of the state columns (uint8, int32, float32, float32, uint32, uint8). Only one process
    may call this on a given state (engine.inventory.state holds an exclusive lock for it).
    """
    for i in range(rows.shape[0]):
        r = rows[i]
        version[r] = version[r] + np.uint32(1)
        _release_fence()
        in_stock[r] = new_in_stock[i]
        stock_qty[r] = new_stock_qty[i]
        price[r] = new_price[i]
        discount[r] = new_discount[i]
        promo[r] = new_promo[i]
        retired[r] = new_retired[i]
        _release_fence()
        version[r] = version[r] + np.uint32(1)


@njit(cache=True, nogil=True)
def store_release(cell: np.ndarray, value: int) -> None:
    """cell: int64 [1]. Store `value` after every earlier store of this thread (publishing a count:
    whoever reads the new value also sees what was written before it)."""
    _release_fence()
    cell[0] = value


@njit(cache=True, nogil=True)
def load_acquire(cell: np.ndarray) -> int:
    """cell: int64 [1]. Load it before any later load of this thread (the reader half of
    `store_release`)."""
    value = cell[0]
    _acquire_fence()
    return value


@njit(cache=True, nogil=True)
def settle_odd_rows(version: np.ndarray) -> int:
    """Make every odd version even (a writer that died mid-row left it odd; the next writer calls
    this before it writes anything). Returns how many rows were odd. O(n)."""
    fixed = 0
    for r in range(version.shape[0]):
        if version[r] & 1:
            version[r] = version[r] + np.uint32(1)
            fixed += 1
    return fixed
