"""`load_store`: a data directory of canonical files → a validated, dense-coded `Store`."""

from __future__ import annotations

from pathlib import Path

from builder.ingest.encode import encode_store
from builder.ingest.errors import ProblemLog
from builder.ingest.read import find_input_files, fingerprint, read_header
from builder.ingest.validate import ValidTable, check_across_tables, check_sensitive, validate_table
from builder.store import Store


def load_store(data_dir: Path) -> Store:
    """Read, validate and encode the store in `data_dir`.

    `data_dir` holds `catalog` and `events`, and optionally `users`, each as exactly one of
    `NAME.parquet` or `NAME.csv` in the canonical schema (artifacts.schema). Raises
    `SensitiveAttributeError` if any file has a sensitive column (checked first, on the headers),
    and `InputError` listing up to ten problems (file, row, column, expected, found) if any file
    breaks the schema. Every file is checked in full before anything is encoded, and nothing is
    ever written. Events naming an unknown SKU are dropped and counted in `store.report`.
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
    return encode_store(tables, fingerprints)
