"""The engine's durable event log (engine.eventlog) → canonical `events` files the builder reads.

* `export_events(state_dir, out, since_seq)`: the log's events after `since_seq`, in seq order, as
  one canonical `events.parquet` (the artifacts.schema EVENTS columns in schema order, event_id
  included). Seqs are contiguous, so the next incremental export starts at `since_seq + count`.
* `merge_events(store_dir, log_state_dir, out_dir)`: a new canonical store directory holding the
  store's catalog and users files unchanged and, as `events.parquet`, the store's events followed
  by the log's, dropping log events whose event_id the store already holds (so merging the same
  log twice, or into a store that already has some of it, adds each event once).

What the conversion decides:

* ts: the log keeps sub-second epoch seconds; the canonical column is integer seconds, so it is
  floored (order inside a second survives as row order: rows are in seq order).
* type and surface: the log's codes are written as the schema's names.
* Columns of the store's events file that the schema does not know (the Amazon adapter's `split`)
  are kept, null on the log's rows.

Both write atomically: a temporary sibling, fsynced, renamed into place; `out` is either absent,
the previous output, or complete.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from artifacts.publish import fsync_path, write_directory
from artifacts.schema import EVENT_TYPE_NAMES, EVENTS, SURFACE_NAMES
from builder.ingest.errors import InputError, ProblemLog
from builder.ingest.read import InputFile, find_input_files, read_header
from builder.ingest.validate import validate_table
from engine.eventlog import EventLog, StoredEvent

ROW_GROUP = 100_000

# The canonical EVENTS columns (schema order) and their Parquet types.
_ARROW_TYPES = {"ts": pa.int64(), "dwell_ms": pa.int64(), "position": pa.int64()}
EVENTS_ARROW = pa.schema([pa.field(name, _ARROW_TYPES.get(name, pa.string()), nullable=False) for name in EVENTS.names])


def export_events(state_dir: Path, out: Path, since_seq: int = 0) -> int:
    """Write the log's events with seq > `since_seq` to the Parquet file `out`; returns how many.

    Reads up to the newest event at the start (later appends are left for the next export), in row
    groups of ROW_GROUP, so memory stays bounded for any log size. Raises EventLogError if
    `state_dir` holds no event log.
    """
    out = Path(out)
    log = EventLog(Path(state_dir), readonly=True)
    try:
        until = log.last_seq()
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        out.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        try:
            with pq.ParquetWriter(tmp, EVENTS_ARROW) as writer:
                for chunk in _chunks(_until(log.iter_events(since_seq), until), ROW_GROUP):
                    writer.write_table(pa.Table.from_pydict(_columns(chunk), schema=EVENTS_ARROW))
                    count += len(chunk)
                if count == 0:
                    writer.write_table(EVENTS_ARROW.empty_table())
            fsync_path(tmp)
            tmp.rename(out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(out.parent)
        return count
    finally:
        log.close()


def merge_events(store_dir: Path, log_state_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write `out_dir` = the canonical store in `store_dir` with the event log's events added.

    Returns counts: store_events, log_events, log_duplicates (log events whose event_id the store
    already had, left out), events (written). Raises InputError if the store's events file breaks
    the schema (the same checks `aisle build` runs), EventLogError if there is no log. `out_dir` may
    be `store_dir` itself: everything is read before anything is replaced.
    """
    store_dir, out_dir = Path(store_dir), Path(out_dir)
    files = find_input_files(store_dir)
    store_events = _read_store_events(files["events"])
    log_events = _read_log(Path(log_state_dir), out_dir.parent / f".{out_dir.name}.log-{os.getpid()}.parquet")
    known = store_events.filter(pl.col("event_id") != "")["event_id"]
    fresh = log_events.filter(~pl.col("event_id").is_in(known.implode()))
    merged = pl.concat([store_events, fresh], how="diagonal")
    kept = [files[name].path for name in ("catalog", "users") if name in files]
    _publish(out_dir, kept, merged)
    return {
        "store_events": store_events.height,
        "log_events": log_events.height,
        "log_duplicates": log_events.height - fresh.height,
        "events": merged.height,
    }


def _read_store_events(file: InputFile) -> pl.DataFrame:
    log = ProblemLog()
    table = validate_table(file, read_header(file), log)
    log.raise_if_any()
    if table is None:  # validate_table logs whenever it returns None; kept for the type checker
        raise InputError(f"{file.name}: could not be read as canonical events")
    frame = table.frame.with_columns(pl.col("type").cast(pl.String), pl.col("surface").cast(pl.String))
    if table.ignored_columns:
        frame = frame.hstack(_extra_columns(file, list(table.ignored_columns)))
    return frame


def _extra_columns(file: InputFile, names: list[str]) -> pl.DataFrame:
    """Columns the schema does not know, as stored (Parquet types kept; CSV cells as text)."""
    try:
        if file.is_csv:
            return pl.read_csv(file.path, columns=names, infer_schema=False, raise_if_empty=False)
        return pl.read_parquet(file.path, columns=names)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{file.name}: could not read columns {', '.join(map(repr, names))}: {exc}") from exc


def _read_log(state_dir: Path, scratch: Path) -> pl.DataFrame:
    # Through a Parquet file rather than Python lists: columnar memory for any log size.
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_events(state_dir, scratch)
        return pl.read_parquet(scratch)
    finally:
        scratch.unlink(missing_ok=True)


def _columns(rows: list[tuple[int, StoredEvent]]) -> dict[str, list]:
    """The canonical EVENTS columns, in schema order (tests check the order against the schema)."""
    events = [event for _, event in rows]
    columns: dict[str, list] = {
        "ts": [math.floor(e.ts) for e in events],
        "user_id": [e.user_id for e in events],
        "session_id": [e.session_id for e in events],
        "sku": [e.sku for e in events],
        "type": [EVENT_TYPE_NAMES[e.type] for e in events],
        "dwell_ms": [e.dwell_ms for e in events],
        "surface": [SURFACE_NAMES[e.surface] for e in events],
        "request_id": [e.request_id for e in events],
        "position": [e.position for e in events],
        "device": [e.device for e in events],
        "region": [e.region for e in events],
        "event_id": [e.event_id for e in events],
    }
    return columns


def _until(rows: Iterable[tuple[int, StoredEvent]], last_seq: int) -> Iterable[tuple[int, StoredEvent]]:
    for row in rows:
        if row[0] > last_seq:
            return
        yield row


def _chunks(rows: Iterable[tuple[int, StoredEvent]], size: int) -> Iterable[list[tuple[int, StoredEvent]]]:
    chunk: list[tuple[int, StoredEvent]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _publish(out: Path, copies: list[Path], events: pl.DataFrame) -> None:
    """`out` = the `copies` (same names) + events.parquet, all at once (write_directory)."""

    def fill(tmp: Path) -> None:
        for source in copies:
            shutil.copyfile(source, tmp / source.name)
        events.write_parquet(tmp / "events.parquet", statistics=True)

    write_directory(out, fill)
