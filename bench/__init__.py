"""Benchmarks: load generators, micro-benchmarks, profiles."""

import os as _os

# In-process benchmarks measure what a serving worker does, and `aisle serve` runs its workers
# single-threaded (engine/server.py): BLAS and OpenMP pools set before numpy is first imported.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    _os.environ.setdefault(_name, "1")

import artifacts as _artifacts  # noqa: E402,F401  (native load order: see artifacts/__init__.py)
