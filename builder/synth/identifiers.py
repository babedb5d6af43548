"""External ids of the synthetic store (SKUs, shoppers, sessions, requests, events), vectorised.

An id is a prefix plus a fixed-width Crockford base-32 rendering of a keyed bijection of the
row number on [0, 2**bits): unique by construction, unrelated to row order (so nothing downstream
can lean on id order meaning catalog or time order), and different for every seed. Strings are
assembled as one uint8 matrix and handed to Arrow as buffers: no Python loop per id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_ALPHABET = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)
_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_MAX_BYTES = 2**31 - 1  # a pa.string() array's offsets are int32


def scramble(rows: np.ndarray, bits: int, key: int) -> np.ndarray:
    """uint64 [n]: a bijection of `rows` (each < 2**bits) onto [0, 2**bits), keyed by `key`."""
    if not 8 <= bits <= 64:
        raise ValueError(f"bits must be in [8, 64], got {bits}")
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    x = rows.astype(np.uint64)
    if len(x) and int(x.max()) > int(mask):
        raise ValueError(f"{int(x.max())} does not fit in {bits} bits")
    keys = np.random.default_rng([key, bits]).integers(0, 2**63, size=3, dtype=np.uint64)
    shift = np.uint64(max(bits // 2, 1))
    with np.errstate(over="ignore"):
        for k, mult in zip(keys, _MULTIPLIERS):
            # Each step is invertible modulo 2**bits: add, multiply by an odd number, xor-shift right.
            x = (x + k) & mask
            x = (x * np.uint64(mult)) & mask
            x ^= x >> shift
    return x


def id_strings(prefix: str, codes: np.ndarray, width: int) -> pa.Array:
    """pa.string() [n]: `prefix` + `codes` (uint64 < 32**width) in `width` base-32 digits."""
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    row_bytes = len(head) + width
    n = len(codes)
    if n * row_bytes > _MAX_BYTES:
        raise ValueError(f"{n} ids of {row_bytes} bytes exceed one Arrow string array")
    buf = np.empty((n, row_bytes), dtype=np.uint8)
    buf[:, : len(head)] = head
    x = codes.astype(np.uint64)
    for col in range(row_bytes - 1, len(head) - 1, -1):
        buf[:, col] = _ALPHABET[(x & np.uint64(31)).astype(np.intp)]
        x = x >> np.uint64(5)
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(row_bytes)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf))


def make_ids(prefix: str, n: int, bits: int, width: int, key: int, start: int = 0) -> pa.Array:
    """pa.string() [n]: unique ids for rows start..start+n-1, e.g. make_ids("SKU-", n, 40, 8, key).

    Ids of the same (prefix, bits, width, key) never collide across calls with disjoint rows, so
    a long column can be made in chunks.
    """
    if start < 0 or start + n > 2**bits:
        raise ValueError(f"cannot make ids for rows [{start}, {start + n}) from {bits} bits")
    if 5 * width < bits:
        raise ValueError(f"{width} base-32 digits cannot hold {bits} bits")
    rows = np.arange(start, start + n, dtype=np.uint64)
    return id_strings(prefix, scramble(rows, bits, key), width)
