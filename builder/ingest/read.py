"""Finding and reading the input files: CSV or Parquet in, an untyped-or-typed polars frame out.

Nothing here judges values; `coerce` and `validate` do. This module only makes sure each table has
exactly one readable file and turns its bytes into columns, without ever reading a column the
schema does not know (unknown columns are listed, not loaded).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from artifacts.schema import TABLES, ColumnType, TableSchema
from builder.ingest.errors import InputError

_REQUIRED_TABLES = ("catalog", "events")
_FORMATS = ("parquet", "csv")

# Types polars can parse straight from CSV text. A file that parses this way takes the fast path;
# one that does not (an ISO timestamp, "yes" in a boolean, a typo in a number) is read again as
# text so that `coerce` can point at the offending row.
_CSV_FAST_TYPES: dict[ColumnType, pl.DataType] = {
    ColumnType.INT: pl.Int64(),
    ColumnType.FLOAT: pl.Float64(),
    ColumnType.TIMESTAMP: pl.Int64(),
}

# A corrupt file can make the Parquet decoder panic rather than raise; PanicException derives from
# BaseException, not Exception, so it is named here.
_PARQUET_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One table's file in the data directory."""

    table: TableSchema
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_csv(self) -> bool:
        return self.path.suffix == ".csv"


def find_input_files(data_dir: Path) -> dict[str, InputFile]:
    """The file of each table present in `data_dir`, keyed by table name (catalog, events, users).

    Exactly one of `NAME.parquet` / `NAME.csv` per table; catalog and events are required.
    """
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: expected a directory holding catalog and events files; got no such directory")
    found: dict[str, InputFile] = {}
    for name, table in TABLES.items():
        paths = [data_dir / f"{name}.{fmt}" for fmt in _FORMATS if (data_dir / f"{name}.{fmt}").is_file()]
        if len(paths) > 1:
            raise InputError(
                f"{data_dir}: expected one {name} file; got both {paths[0].name} and {paths[1].name} "
                "(remove one so it is clear which is meant)"
            )
        if paths:
            found[name] = InputFile(table, paths[0])
        elif name in _REQUIRED_TABLES:
            raise InputError(f"{data_dir}: expected {name}.parquet or {name}.csv; got neither")
    return found


def read_header(file: InputFile) -> tuple[str, ...]:
    """The file's column names, in file order, without reading its data."""
    if file.is_csv:
        try:
            with file.path.open(newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), None)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"{file.name}: not a readable CSV file: {exc}") from exc
        if not header:
            raise InputError(f"{file.name}: expected a header row naming the columns; got an empty file")
        names = tuple(header)
    else:
        try:
            names = tuple(pl.read_parquet_schema(file.path))
        except _PARQUET_ERRORS as exc:
            raise InputError(f"{file.name}: not a readable Parquet file: {_first_line(exc)}") from exc
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"{file.name}: expected unique column names; got {', '.join(map(repr, duplicated))} more than once")
    return names


def read_frame(file: InputFile, columns: Sequence[str]) -> pl.DataFrame:
    """The named columns of the file, in that order.

    Parquet columns keep their stored types. CSV columns are parsed as numbers where the schema
    says so and the text allows it, and otherwise kept as text (empty cells are null).
    """
    if file.is_csv:
        return _read_csv(file, columns)
    try:
        return pl.read_parquet(file.path, columns=list(columns))
    except _PARQUET_ERRORS as exc:
        raise InputError(f"{file.name}: not a readable Parquet file: {_first_line(exc)}") from exc


def _read_csv(file: InputFile, columns: Sequence[str]) -> pl.DataFrame:
    fast = {c: _CSV_FAST_TYPES[t] for c in columns if (t := file.table.column(c).type) in _CSV_FAST_TYPES}
    try:
        if fast:
            try:
                return _polars_csv(file.path, columns, fast)
            except pl.exceptions.ComputeError:
                pass  # a cell that is not a plain number: read it as text and let coerce find it
        return _polars_csv(file.path, columns, {})
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{file.name}: not a readable CSV file: {_first_line(exc)}") from exc


def _polars_csv(path: Path, columns: Sequence[str], types: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.read_csv(path, columns=list(columns), infer_schema=False, schema_overrides=types, raise_if_empty=False)


def fingerprint(path: Path) -> str:
    """sha256 hex of the file's bytes (recorded in the bundle manifest as an input fingerprint)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
