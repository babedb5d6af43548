"""Offline: synth, ingest, training, tables, snapshots, publish, CLI."""

import artifacts as _artifacts  # noqa: F401  (native load order: see artifacts/__init__.py)
