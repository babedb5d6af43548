"""Benchmarks: load generators, micro-benchmarks, profiles."""

import artifacts as _artifacts  # noqa: F401  (native load order: see artifacts/__init__.py)
