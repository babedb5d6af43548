"""Ingest: the builder's edge. Canonical input files in, a validated dense-coded `Store` out.

    from builder.ingest import load_store, InputError, SensitiveAttributeError
    store = load_store(Path("DATA"))

Modules: `read` (find files, CSV/Parquet → columns), `coerce` (columns → logical types), `validate`
(the schema's rules), `encode` (→ `builder.store.Store`), `sessions` (session assignment),
`errors` (the error types and the problem log).
"""

from builder.ingest.errors import InputError, SensitiveAttributeError
from builder.ingest.load import load_store

__all__ = ["InputError", "SensitiveAttributeError", "load_store"]
