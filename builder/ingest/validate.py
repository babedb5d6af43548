"""The rules every input table must meet before anything is encoded (artifacts.schema, DESIGN.md §5).

`check_sensitive` runs on the headers alone and stops at once: a sensitive column is a policy
breach, not a data glitch, and no other problem should bury it. `validate_table` then reads and
checks one file completely, logging problems instead of raising, so one run reports every broken
file; `check_across_tables` checks what only the tables together can tell. Only when the log is
empty does anything get encoded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from artifacts.schema import (
    CATEGORY_SEPARATOR,
    EVENT_TYPE_NAMES,
    SURFACE_NAMES,
    Column,
    ColumnType,
    sensitive_match,
)
from builder.ingest.codes import repeats
from builder.ingest.coerce import coerce
from builder.ingest.errors import FileCheck, ProblemLog, SensitiveAttributeError, shown
from builder.ingest.read import InputFile, read_frame

MAX_ID_CHARS = 64
# Category depth is stored as int8 (builder.store.Categories).
MAX_CATEGORY_DEPTH = 127
# Codes are stored as int8 (devices) and int16 (regions); code 0 is the empty "unknown" value.
MAX_DEVICES = np.iinfo(np.int8).max
MAX_REGIONS = np.iinfo(np.int16).max
_ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("events", "type"): EVENT_TYPE_NAMES,
    ("events", "surface"): SURFACE_NAMES,
}


@dataclass(frozen=True)
class ValidTable:
    """One input file, checked. `frame` holds every schema column in schema order with its logical
    dtype (see `coerce`); nulls are replaced by the column default, except in list and vector
    columns, where null means "none" (an empty list, a zero vector) and is left for `encode`.
    Embedding columns absent from the file are absent from `frame`. `category_path` is normalised:
    no blanks around separators. Enumerated columns are polars Enums over the schema's names.
    """

    file: InputFile
    frame: pl.DataFrame
    ignored_columns: tuple[str, ...]

    @property
    def rows(self) -> int:
        return self.frame.height


def check_sensitive(headers: dict[InputFile, tuple[str, ...]]) -> None:
    """Raise SensitiveAttributeError if any column of any file names a sensitive attribute."""
    found = [(file, name, attr) for file, names in headers.items() for name in names if (attr := sensitive_match(name))]
    if not found:
        return
    lines = [
        f"{file.name}, column {name!r}: expected no sensitive attributes; got a column that denotes '{attr}'"
        for file, name, attr in found
    ]
    lines.append(
        "Aisle never uses sensitive attributes (age, gender, ethnicity and the like) for personalisation; "
        "remove these columns from the input files and run again."
    )
    raise SensitiveAttributeError("\n".join(lines))


def validate_table(file: InputFile, header: tuple[str, ...], log: ProblemLog) -> ValidTable | None:
    """Read and check one file; problems go to `log`. None when the file cannot be used."""
    schema = file.table
    check = FileCheck(file.name, file.is_csv, log)
    present = [c for c in schema.columns if c.name in header]
    ignored = tuple(name for name in header if name not in schema.names)
    missing = [c for c in schema.columns if c.required and c.name not in header]
    for column in missing:
        near = [name for name in header if name.lower() == column.name.lower()]
        hint = f" ({near[0]!r} differs only in case)" if near else ""
        check.column(None, f"a column {column.name!r}{hint}", "columns " + ", ".join(map(repr, header)))
    raw = read_frame(file, [c.name for c in present])
    height = raw.height
    if height == 0 and schema.name == "catalog":
        check.column(None, "at least one item", "no data rows")  # nothing could ever be recommended
    # Every column is checked even after one fails, so one run shows all that is wrong in the file.
    columns: dict[str, pl.Series] = {}
    broken = bool(missing) or (height == 0 and schema.name == "catalog")
    for column in schema.columns:
        if column.name not in raw.columns:
            if not column.required and column.type is not ColumnType.FLOAT_VECTOR:
                default = _default_column(column, height)
                enum = _ENUMS.get((schema.name, column.name))
                columns[column.name] = default.cast(pl.Enum(enum)) if enum else default
            continue
        typed = coerce(raw.get_column(column.name), column, check)
        checked = _check_value(file, column, typed, check) if typed is not None else None
        if checked is None:
            broken = True
        else:
            columns[column.name] = checked.alias(column.name)
    del raw
    broken |= not _check_keys(file, columns, check)
    if broken:
        return None
    frame = pl.DataFrame([columns[c.name] for c in schema.columns if c.name in columns])
    return ValidTable(file, frame, ignored)


def check_across_tables(tables: dict[str, ValidTable], log: ProblemLog) -> None:
    """Vocabulary sizes that only the union of the tables determines."""
    events = tables["events"]
    devices = events.frame["device"].unique()
    n_devices = int((devices != "").sum())
    if n_devices > MAX_DEVICES - 1:
        FileCheck(events.file.name, events.file.is_csv, log).column(
            "device", f"at most {MAX_DEVICES - 1} distinct devices (stored as int8)", f"{n_devices}"
        )
    regions = [events.frame["region"]]
    if "users" in tables:
        regions.append(tables["users"].frame["region"])
    n_regions = int((pl.concat(regions).unique() != "").sum())
    if n_regions > MAX_REGIONS - 1:
        FileCheck(events.file.name, events.file.is_csv, log).column(
            "region", f"at most {MAX_REGIONS - 1} distinct regions across events and users (stored as int16)", f"{n_regions}"
        )


def _default_column(column: Column, height: int) -> pl.Series:
    dtype = {
        ColumnType.STRING: pl.String(),
        ColumnType.INT: pl.Int64(),
        ColumnType.FLOAT: pl.Float64(),
        ColumnType.BOOL: pl.Boolean(),
        ColumnType.TIMESTAMP: pl.Int64(),
        ColumnType.STRING_LIST: pl.List(pl.String()),
    }[column.type]
    value = None if column.type is ColumnType.STRING_LIST else column.default  # null list = none
    return pl.repeat(value, height, dtype=dtype, eager=True).alias(column.name)


def _check_value(file: InputFile, column: Column, values: pl.Series, check: FileCheck) -> pl.Series | None:
    """The column's value rules; returns it with nulls filled by the default, or None if broken."""
    key = (file.table.name, column.name)
    enum = _ENUMS.get(key)
    if enum is not None:
        values = values.replace("", None)  # an empty cell is a missing value, not a bad name
    if not column.nullable and check.rows(column.name, values.is_null(), values, "a value in every row"):
        return None
    if enum is not None:
        return _enumerated(values, column, enum, check)
    rule = _RULES.get(key)
    if rule is not None:
        checked = rule(values, column.name, check)
        if checked is None:
            return None
        values = checked
    elif column.type is ColumnType.FLOAT_VECTOR:
        return _vector(values, column.name, check)
    if column.default is None or column.type is ColumnType.STRING_LIST:
        return values  # nulls in lists mean "none"; encode reads them as empty
    return values.fill_null(column.default)


Rule = Callable[[pl.Series, str, FileCheck], "pl.Series | None"]


def _enumerated(values: pl.Series, column: Column, names: tuple[str, ...], check: FileCheck) -> pl.Series | None:
    if column.default is not None:
        values = values.fill_null(column.default)
    coded = values.cast(pl.Enum(names), strict=False)
    if check.rows(column.name, coded.is_null() & values.is_not_null(), values, "one of " + ", ".join(names)):
        return None
    return coded


def _identifier(values: pl.Series, name: str, check: FileCheck) -> pl.Series | None:
    length = values.str.len_chars()
    if check.rows(
        name,
        (length < 1) | (length > MAX_ID_CHARS),
        values,
        f"1 to {MAX_ID_CHARS} characters",
        lambda row: f"{shown(values[row])} ({length[row]} characters)",
    ):
        return None
    return values


def _event_sku(values: pl.Series, name: str, check: FileCheck) -> pl.Series | None:
    # No length limit: a sku the catalog cannot hold is merely unknown (counted and dropped).
    if check.rows(name, values == "", values, "a non-empty sku"):
        return None
    return values


def _price(values: pl.Series, name: str, check: FileCheck) -> pl.Series | None:
    # NaN, like null, means "unknown"; infinity is nobody's price.
    if check.rows(name, values.is_infinite() | (values < 0), values, "a price ≥ 0 (empty or NaN for unknown)"):
        return None
    return values


def _discount(values: pl.Series, name: str, check: FileCheck) -> pl.Series | None:
    values = values.fill_nan(None)  # pandas writes a missing float as NaN: no discount
    if check.rows(name, (values < 0) | (values >= 1), values, "a fraction in [0, 1)"):
        return None
    return values


def _within(low: int, high: int, meaning: str) -> Rule:
    def rule(values: pl.Series, name: str, check: FileCheck) -> pl.Series | None:
        if check.rows(name, (values < low) | (values > high), values, f"{meaning}, in [{low}, {high}]"):
            return None
        return values

    return rule


def _category_path(values: pl.Series, name: str, check: FileCheck) -> pl.Series | None:
    sep = CATEGORY_SEPARATOR
    # "Home / Kitchen" and "Home/Kitchen" are the same category; blanks are kept inside names only.
    norm = values.str.replace_all(rf"\s*{re.escape(sep)}\s*", sep).str.strip_chars()
    blank = (norm == "") | norm.str.starts_with(sep) | norm.str.ends_with(sep) | norm.str.contains(sep + sep, literal=True)
    example = f"'Home{sep}Kitchen{sep}Cookware'"
    if check.rows(name, blank, values, f"a '{sep}'-separated path with no empty elements, e.g. {example}"):
        return None
    depth = norm.str.count_matches(sep, literal=True) + 1
    if check.rows(
        name, depth > MAX_CATEGORY_DEPTH, values, f"at most {MAX_CATEGORY_DEPTH} levels",
        lambda row: f"{depth[row]} levels",
    ):
        return None
    return norm


def _vector(values: pl.Series, name: str, check: FileCheck) -> pl.Series | None:
    lengths = values.list.len()
    present = lengths.filter(values.is_not_null())
    if present.len() == 0:
        return values
    first_row = int(values.is_not_null().arg_max())
    dim = int(lengths[first_row])
    if dim == 0:
        check.rows(name, lengths == 0, values, "at least one float")
        return None
    if check.rows(
        name, lengths != dim, values, f"{dim} floats (the length in row {first_row + 1})",
        lambda row: f"{lengths[row]} floats",
    ):
        return None
    finite = values.list.eval(pl.element().is_finite()).list.all()
    if check.rows(name, ~finite, values, "finite floats (no NaN or infinity)"):
        return None
    return values


def _check_keys(file: InputFile, columns: dict[str, pl.Series], check: FileCheck) -> bool:
    # Events have no key; a non-empty `event_id` is an idempotency key and must be unique.
    keys = ("event_id",) if file.table.name == "events" else file.table.key
    ok = True
    for key in keys:
        values = columns.get(key)
        if values is None:
            continue  # absent or already reported broken
        repeated = repeats(values)
        if key == "event_id":
            repeated &= values != ""

        def again(row: int, values: pl.Series = values) -> str:
            first = int((values == values[row]).arg_max())
            return f"{shown(values[row])} again (first in row {first + 1})"

        ok &= not check.rows(key, repeated, values, f"a unique {key}", again)
    return ok


# Value rules beyond the logical type, by (table, column). Integer bounds are the Store's dtypes.
_RULES: dict[tuple[str, str], Rule] = {
    ("catalog", "sku"): _identifier,
    ("catalog", "category_path"): _category_path,
    ("catalog", "price"): _price,
    ("catalog", "discount"): _discount,
    ("catalog", "stock_qty"): _within(-1, np.iinfo(np.int32).max, "units ≥ 0, or -1 for unknown"),
    ("events", "user_id"): _identifier,
    ("events", "sku"): _event_sku,
    ("events", "dwell_ms"): _within(0, np.iinfo(np.int32).max, "milliseconds ≥ 0"),
    ("events", "position"): _within(-1, np.iinfo(np.int16).max, "a 0-based slot, or -1 for not from a slate"),
    ("users", "user_id"): _identifier,
}
