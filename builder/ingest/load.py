"""`load_store`: a data directory of canonical files → a validated, screened, dense-coded `Store`."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from builder.config import BotConfig, ClockConfig
from builder.ingest.encode import encode_store
from builder.ingest.errors import ProblemLog
from builder.ingest.read import find_input_files, fingerprint, read_header
from builder.ingest.screen import bot_notes, find_bots, refuse_mostly_bots, screen_clock
from builder.ingest.validate import ValidTable, check_across_tables, check_sensitive, validate_table
from builder.store import Store


def load_store(
    data_dir: Path,
    clock: ClockConfig = ClockConfig(),
    bots: BotConfig = BotConfig(),
    now: float | None = None,
) -> Store:
    """Read, validate, encode and screen the store in `data_dir`.

    `data_dir` holds `catalog` and `events`, and optionally `users`, each as exactly one of
    `NAME.parquet` or `NAME.csv` in the canonical schema (artifacts.schema). Raises
    `SensitiveAttributeError` if any file has a sensitive column (checked first, on the headers),
    and `InputError` listing up to ten problems (file, row, column, expected, found) if any file
    breaks the schema. Every file is checked in full before anything is encoded, and nothing is
    ever written.

    Events valid by the schema but unfit to learn from are dropped, counted and noted in
    `store.report` (builder.ingest.screen): dated after `now` (the build's clock, default this
    machine's) + `clock.future_tolerance_minutes` or more than `clock.max_age_days` before the newest
    event; naming an unknown SKU; every event of a shopper with an inhuman action rate (`bots`).
    Such shoppers stay in `store.users`, with no events.
    """
    files = find_input_files(Path(data_dir))
    headers = {file: read_header(file) for file in files.values()}
    check_sensitive(headers)
    log = ProblemLog()
    tables: dict[str, ValidTable] = {}
    for name, file in files.items():
        table = validate_table(file, headers[file], log)
        if table is not None:
            tables[name] = table
    if not log:
        check_across_tables(tables, log)
    log.raise_if_any()
    fingerprints = {file.name: fingerprint(file.path) for file in files.values()}
    events = tables["events"]
    screened = screen_clock(events, time.time() if now is None else now, clock)
    store = encode_store(tables, fingerprints, keep=screened.keep)
    found = find_bots(store.events, len(store.users), bots)
    refuse_mostly_bots(found, events, store.users.user_id, len(store.events), bots)
    notes = bot_notes(found, events, store.users.user_id, bots)
    if found.shoppers:
        store = store.with_events(~found.is_bot[store.events.user_row])
    report = replace(
        store.report,
        events_future=screened.future,
        events_too_old=screened.too_old,
        bot_events=found.events,
        bot_user_ids=tuple(str(u) for u in store.users.user_id[found.is_bot]),
        notes=screened.notes + store.report.notes + notes,
    )
    return replace(store, report=report)
