"""Dense codes for string columns: distinct values in text order, each value's code, repeats.

At the `1m` scale (10M events, 1M SKUs and shoppers) string hashing, joins and sorts dominate
ingest, so these work on 64-bit hashes and touch the strings only where hashes cannot decide.
Identity is decided by two independently seeded 64-bit hashes: values are joined on the first and
a match is accepted only if the second agrees too. Two different strings would have to collide in
both (probability about n² / 2^129) to be confused; a collision in the first alone is detected and
handled on the exact, slower string path. Inputs must hold no nulls (ingest fills them first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

_SEED, _CHECK_SEED = 0, 0x5EED


def vocabulary(columns: Sequence[pl.Series]) -> tuple[str, ...]:
    """Code 0 is "" (unknown), then every other value of the columns in ascending text order."""
    keys, _ = dense_codes(pl.concat([c.fill_null("").alias("v") for c in columns]))
    return ("",) + tuple(v for v in keys.to_list() if v)


def codes(values: pl.Series, vocabulary: tuple[str, ...], dtype: type[np.integer]) -> np.ndarray:
    """Codes of `values` (null read as "") in a vocabulary holding every one of them, as `dtype`."""
    found = lookup(values.fill_null(""), pl.Series(vocabulary, dtype=pl.String))
    return found.to_numpy().astype(dtype)


def lookup(values: pl.Series, keys: pl.Series) -> pl.Series:
    """Position of each value in `keys` (distinct), Int32 [len(values)], null where absent. O(n + k)."""
    key_hash = keys.hash(_SEED)
    if key_hash.n_unique() < len(keys):
        return _string_lookup(values, keys)  # two keys share a first hash: decide on the text
    table = pl.DataFrame(
        {
            "h": key_hash,
            "code": pl.int_range(len(keys), dtype=pl.Int32, eager=True),
            "check": keys.hash(_CHECK_SEED),
        }
    )
    probe = pl.DataFrame({"h": values.hash(_SEED), "value_check": values.hash(_CHECK_SEED)})
    joined = probe.join(table, on="h", how="left", maintain_order="left")
    # A value that shares the first hash with a key but not the second is another string: absent.
    return joined.select(pl.when(pl.col("check") == pl.col("value_check")).then(pl.col("code"))).to_series()


def dense_codes(values: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(keys, codes): the distinct values in ascending text order, and each value's position in
    keys (Int32 [len(values)]). Sorts only the distinct values, not every row."""
    keys = values.gather(values.hash(_SEED).arg_unique()).sort()
    found = lookup(values, keys)
    if found.null_count():
        # Two different values shared a first hash, so one is missing from `keys`: redo exactly.
        keys = values.unique().sort()
        found = _string_lookup(values, keys)
    return keys, found


def repeats(values: pl.Series) -> pl.Series:
    """Boolean [len(values)]: true where the value already occurred in an earlier row."""
    hashes = values.hash(_SEED)
    if hashes.n_unique() == len(values):
        return pl.repeat(False, len(values), dtype=pl.Boolean, eager=True)  # distinct hashes: distinct values
    # Only rows whose hash occurs more than once can repeat; settle those on the text.
    candidates = hashes.is_duplicated()
    rows = candidates.arg_true()
    repeated = ~values.gather(rows).is_first_distinct()
    return pl.repeat(False, len(values), dtype=pl.Boolean, eager=True).scatter(rows.filter(repeated), True)


def _string_lookup(values: pl.Series, keys: pl.Series) -> pl.Series:
    table = pl.DataFrame({"v": keys, "code": pl.int_range(len(keys), dtype=pl.Int32, eager=True)})
    return pl.DataFrame({"v": values}).join(table, on="v", how="left", maintain_order="left")["code"]
