"""Turning a column as read (CSV text, or whatever type a Parquet writer chose) into its logical type.

| logical type  | result dtype    | accepted input                                                      |
|---------------|-----------------|---------------------------------------------------------------------|
| STRING        | String          | strings, categoricals, integers (written as decimal text)           |
| INT           | Int64           | integers, integral floats, integer text                             |
| FLOAT         | Float64         | numbers, decimals, number text ("nan" = unknown)                    |
| BOOL          | Boolean         | booleans, 0/1, text true/false/t/f/yes/no/y/n/1/0 (any case)        |
| TIMESTAMP     | Int64 (epoch s) | integer epoch seconds, Parquet timestamp/date, ISO-8601 text        |
| STRING_LIST   | List(String)    | list<string>; text joined with '|' (LIST_SEPARATOR)                 |
| FLOAT_VECTOR  | List(Float32)   | list/array of numbers; text of floats separated by spaces or commas |

Nulls stay null (whether a column may hold them is `validate`'s business); an empty string counts
as null, because CSV cannot tell the two apart and Parquet files should not mean different things.
A value that cannot be converted is reported at its first row; a Parquet column of a type that can
never hold the logical type (a boolean price) is reported once for the column. Either way the
result is None and the table is not encoded.
"""

from __future__ import annotations

import polars as pl

from artifacts.schema import LIST_SEPARATOR, Column, ColumnType
from builder.ingest.errors import FileCheck

# Epoch seconds outside [0, 1e10) (1970 to 2286) are almost always milliseconds or microseconds.
TIMESTAMP_MAX = 10_000_000_000

_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")
_BOOL_TEXT = {**{w: True for w in _TRUE}, **{w: False for w in _FALSE}}

# ISO-8601 shapes tried in order, after 'Z' becomes '+00:00' and a ' ' between date and time 'T'.
# A time without an offset is taken as UTC.
_ISO_WITH_OFFSET = ("%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%:z")
_ISO_NAIVE = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")

_EXPECTED = {
    ColumnType.STRING: "text",
    ColumnType.INT: "an integer",
    ColumnType.FLOAT: "a number",
    ColumnType.BOOL: "true or false",
    ColumnType.TIMESTAMP: "epoch seconds (an integer) or an ISO-8601 date-time",
    ColumnType.STRING_LIST: f"a list of strings ('{LIST_SEPARATOR}'-joined in CSV)",
    ColumnType.FLOAT_VECTOR: "a list of floats (space-separated in CSV)",
}


def coerce(values: pl.Series, column: Column, check: FileCheck) -> pl.Series | None:
    """`values` as the column's logical type (dtype per the table above), or None if it cannot be."""
    if values.dtype == pl.Null:
        return values.cast(_result_dtype(column.type))
    if values.dtype == pl.String:
        values = values.replace("", None) if column.type is not ColumnType.STRING else values
    match column.type:
        case ColumnType.STRING:
            return _string(values, column, check)
        case ColumnType.INT:
            return _integer(values, column, check)
        case ColumnType.FLOAT:
            return _float(values, column, check)
        case ColumnType.BOOL:
            return _boolean(values, column, check)
        case ColumnType.TIMESTAMP:
            return _timestamp(values, column, check)
        case ColumnType.STRING_LIST:
            return _string_list(values, column, check)
        case ColumnType.FLOAT_VECTOR:
            return _float_vector(values, column, check)
    return _wrong_type(values, column, check)  # a ColumnType added to the schema but not here yet


def _result_dtype(kind: ColumnType) -> pl.DataType:
    return {
        ColumnType.STRING: pl.String(),
        ColumnType.INT: pl.Int64(),
        ColumnType.FLOAT: pl.Float64(),
        ColumnType.BOOL: pl.Boolean(),
        ColumnType.TIMESTAMP: pl.Int64(),
        ColumnType.STRING_LIST: pl.List(pl.String()),
        ColumnType.FLOAT_VECTOR: pl.List(pl.Float32()),
    }[kind]


def _wrong_type(values: pl.Series, column: Column, check: FileCheck) -> None:
    check.column(column.name, f"{_EXPECTED[column.type]} in every row", f"a column of type {values.dtype}")
    return None


def _unparsed(original: pl.Series, parsed: pl.Series) -> pl.Series:
    """Rows that held a value the conversion turned into null."""
    return original.is_not_null() & parsed.is_null()


def _string(values: pl.Series, column: Column, check: FileCheck) -> pl.Series | None:
    dtype = values.dtype
    if dtype == pl.String:
        return values
    if isinstance(dtype, (pl.Categorical, pl.Enum)) or dtype.is_integer():
        return values.cast(pl.String)
    return _wrong_type(values, column, check)


def _integer(values: pl.Series, column: Column, check: FileCheck) -> pl.Series | None:
    dtype = values.dtype
    if dtype.is_integer():
        result = values.cast(pl.Int64, strict=False)  # only UInt64 beyond 2^63 fails
    elif dtype.is_float():
        return _integral_floats(values, column, check, "an integer")
    elif dtype == pl.String:
        result = values.str.strip_chars().cast(pl.Int64, strict=False)
    else:
        return _wrong_type(values, column, check)
    if check.rows(column.name, _unparsed(values, result), values, "an integer"):
        return None
    return result


def _integral_floats(values: pl.Series, column: Column, check: FileCheck, expected: str) -> pl.Series | None:
    # pandas writes an integer column with gaps as float64 with NaN: accept it when every value is whole.
    values = values.fill_nan(None)
    whole = values.is_finite() & (values == values.floor())
    result = values.cast(pl.Int64, strict=False)
    if check.rows(column.name, values.is_not_null() & (~whole | result.is_null()), values, expected):
        return None
    return result


def _float(values: pl.Series, column: Column, check: FileCheck) -> pl.Series | None:
    dtype = values.dtype
    if dtype.is_numeric():  # integers, floats, decimals
        return values.cast(pl.Float64)
    if dtype != pl.String:
        return _wrong_type(values, column, check)
    result = values.str.strip_chars().cast(pl.Float64, strict=False)
    if check.rows(column.name, _unparsed(values, result), values, "a number"):
        return None
    return result


def _boolean(values: pl.Series, column: Column, check: FileCheck) -> pl.Series | None:
    dtype = values.dtype
    if dtype == pl.Boolean:
        return values
    if dtype.is_integer():
        if check.rows(column.name, ~values.is_in([0, 1]), values, "true or false (1 or 0)"):
            return None
        return values == 1
    if dtype != pl.String:
        return _wrong_type(values, column, check)
    result = values.str.strip_chars().str.to_lowercase().replace_strict(_BOOL_TEXT, default=None, return_dtype=pl.Boolean)
    if check.rows(column.name, _unparsed(values, result), values, "true or false"):
        return None
    return result


def _timestamp(values: pl.Series, column: Column, check: FileCheck) -> pl.Series | None:
    dtype = values.dtype
    expected = _EXPECTED[ColumnType.TIMESTAMP]
    if dtype.is_integer():
        result = values.cast(pl.Int64, strict=False)
    elif dtype.is_float():
        result = _integral_floats(values, column, check, expected)
        if result is None:
            return None
    elif isinstance(dtype, pl.Datetime):
        result = values.dt.epoch("s")
    elif dtype == pl.Date:
        result = values.cast(pl.Datetime("ms")).dt.epoch("s")
    elif dtype == pl.String:
        result = _parse_timestamp_text(values)
    else:
        return _wrong_type(values, column, check)
    if check.rows(column.name, _unparsed(values, result), values, expected):
        return None
    out_of_range = (result < 0) | (result >= TIMESTAMP_MAX)
    if check.rows(
        column.name,
        out_of_range,
        values,
        f"epoch seconds in [0, {TIMESTAMP_MAX}) (1970 to 2286)",
        lambda row: f"{result[row]} (milliseconds?)" if (result[row] or 0) >= TIMESTAMP_MAX else str(result[row]),
    ):
        return None
    return result


def _parse_timestamp_text(values: pl.Series) -> pl.Series:
    text = values.str.strip_chars()
    result = text.cast(pl.Int64, strict=False)
    pending = text.is_not_null() & result.is_null()
    if not pending.any():
        return result
    iso = text.str.replace(r"[zZ]$", "+00:00").str.replace(r"^(\d{4}-\d{2}-\d{2})[ tT]", "${1}T")
    # Only rows still unparsed are tried with the next shape, so a file in one ISO shape costs one pass.
    for fmt in _ISO_WITH_OFFSET + _ISO_NAIVE:
        rows = pending.arg_true()
        zone = "UTC" if "z" in fmt else None
        parsed = iso.gather(rows).str.to_datetime(fmt, strict=False, time_zone=zone, time_unit="us")
        result = result.scatter(rows, parsed.dt.epoch("s"))
        pending = text.is_not_null() & result.is_null()
        if not pending.any():
            break
    return result


def _string_list(values: pl.Series, column: Column, check: FileCheck) -> pl.Series | None:
    dtype = values.dtype
    if dtype == pl.String:
        values = values.str.split(LIST_SEPARATOR)
    elif not isinstance(dtype, (pl.List, pl.Array)):
        return _wrong_type(values, column, check)
    else:
        inner = dtype.inner
        if not (inner == pl.String or inner == pl.Null or isinstance(inner, (pl.Categorical, pl.Enum))):
            return _wrong_type(values, column, check)
        values = values.cast(pl.List(pl.String))
    # Blank names cannot match a brand or seller, and "a||b" is a typo, not an intent.
    return values.list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))


def _float_vector(values: pl.Series, column: Column, check: FileCheck) -> pl.Series | None:
    dtype = values.dtype
    if dtype == pl.String:
        text = values.str.strip_chars("[] \t\r\n").str.replace_all(r"[,\s]+", " ")
        result = text.str.split(" ").cast(pl.List(pl.Float32), strict=False)
        expected = "floats separated by spaces"
    elif isinstance(dtype, (pl.List, pl.Array)) and (dtype.inner.is_numeric() or dtype.inner == pl.String):
        result = values.cast(pl.List(pl.Float32), strict=False)
        expected = "a list of numbers"
    else:
        return _wrong_type(values, column, check)
    holes = result.is_not_null() & (result.list.drop_nulls().list.len() != result.list.len())
    if check.rows(column.name, _unparsed(values, result) | holes, values, expected):
        return None
    return result
