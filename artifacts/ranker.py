"""The compiled ranker (`models/ranker.so`): loading it and scoring candidates with it.

The library is the LightGBM ranker compiled by TL2cgen plus Aisle's batch entry point
(`artifacts/ranker_batch.c`, which documents the C ABI). This module needs only NumPy, ctypes and
the standard library: the engine never imports tl2cgen, treelite or lightgbm.

A library is opened once per worker and then shared by every request in that worker. Calls do not
touch Python objects, and ctypes drops the GIL around them.

Never overwrite a loaded `.so` in place: the dynamic loader maps the file, so new bytes under a
live mapping crash the process. Bundles are immutable directories; a new model is a new bundle.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from artifacts.errors import BundleError

# The ABI versions this loader can call; see AISLE_RANKER_ABI_VERSION in ranker_batch.c.
SUPPORTED_ABI_VERSIONS = frozenset({1})

# Return codes of aisle_predict_batch (ranker_batch.c).
_BATCH_ERRORS = {
    1: "column count differs from the model's feature count",
    2: "negative row count",
    3: "out of memory for the feature buffer",
    4: "null input or output pointer",
}

_REQUIRED_SYMBOLS = ("aisle_ranker_abi_version", "aisle_num_feature", "aisle_predict_batch")


class RankerLoadError(BundleError):
    """A ranker library that cannot be used: missing, not ours, too new, or for other features."""


class CompiledRanker:
    """Scores candidate rows with a compiled Aisle ranker library.

    `n_features` is what the caller's feature spec produces; the library must have been trained on
    exactly that many columns, else RankerLoadError.
    """

    __slots__ = ("path", "n_features", "abi_version", "_lib", "_predict_batch")

    def __init__(self, path: str | Path, n_features: int) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RankerLoadError(
                f"{self.path}: ranker library not found; the bundle is incomplete: rebuild or re-copy it"
            )
        try:
            # Absolute path: a bare name would make dlopen search the library path instead.
            lib = ctypes.CDLL(str(self.path.resolve()))
        except OSError as exc:
            raise RankerLoadError(
                f"{self.path}: cannot load as a shared library ({exc}); "
                "expected an Aisle ranker .so built for this platform: rebuild the bundle"
            ) from exc
        missing = [name for name in _REQUIRED_SYMBOLS if not hasattr(lib, name)]
        if missing:
            raise RankerLoadError(
                f"{self.path}: not an Aisle ranker library (missing symbol {', '.join(missing)})"
            )

        lib.aisle_ranker_abi_version.argtypes = []
        lib.aisle_ranker_abi_version.restype = ctypes.c_int32
        abi_version = int(lib.aisle_ranker_abi_version())
        if abi_version not in SUPPORTED_ABI_VERSIONS:
            newest = max(SUPPORTED_ABI_VERSIONS)
            if abi_version > newest:
                hint = "made by a newer builder: upgrade Aisle to load it"
            else:
                hint = "made by an older, unsupported builder (or corrupt): rebuild the bundle"
            raise RankerLoadError(
                f"{self.path}: ranker ABI version {abi_version}, this engine reads "
                f"{sorted(SUPPORTED_ABI_VERSIONS)}; {hint}"
            )

        lib.aisle_num_feature.argtypes = []
        lib.aisle_num_feature.restype = ctypes.c_int32
        lib_features = int(lib.aisle_num_feature())
        if lib_features != n_features:
            raise RankerLoadError(
                f"{self.path}: ranker was trained on {lib_features} features, the feature spec "
                f"gives {n_features}; the model and the feature spec come from different builds: "
                "rebuild the bundle"
            )

        predict_batch = lib.aisle_predict_batch
        # Raw addresses (c_void_p) instead of np.ctypeslib.ndpointer: predict() validates the
        # array itself, and ndpointer's per-call checks would repeat that work on the hot path.
        predict_batch.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        predict_batch.restype = ctypes.c_int32

        self.n_features = n_features
        self.abi_version = abi_version
        self._lib = lib  # keeps the library mapped as long as this object lives
        self._predict_batch = predict_batch

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Raw margin scores (LightGBM `raw_score=True`), one per row; higher ranks first.

        X: float32 [n, n_features], C-contiguous; NaN marks a missing feature (it follows the
        split's learned default direction, exactly as LightGBM does). Returns float32 [n].
        O(n × trees × depth), single-threaded; n = 0 returns an empty array.
        """
        if self._predict_batch is None:
            raise ValueError(f"{self.path}: ranker library was closed")
        if not isinstance(X, np.ndarray):
            raise ValueError(f"ranker input must be a numpy.ndarray, got {type(X).__name__}")
        if X.dtype != np.float32:
            raise ValueError(f"ranker input must be float32, got {X.dtype}; convert with X.astype(np.float32)")
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"ranker input must have shape (n, {self.n_features}), got {X.shape}"
            )
        if not X.flags.c_contiguous:
            raise ValueError(
                "ranker input must be C-contiguous (row-major); use np.ascontiguousarray(X)"
            )
        n_rows = X.shape[0]
        out = np.empty(n_rows, dtype=np.float32)
        if n_rows == 0:
            return out
        code = self._predict_batch(X.ctypes.data, n_rows, self.n_features, out.ctypes.data)
        if code != 0:
            reason = _BATCH_ERRORS.get(code, "unknown error")
            raise RuntimeError(f"{self.path}: aisle_predict_batch failed with code {code}: {reason}")
        return out

    def close(self) -> None:
        """Unload the library (after a bundle swap, so the old bundle's file is released). The
        object must not be used afterwards; predict then raises ValueError."""
        lib = self._lib
        if lib is None:
            return
        self._lib = None
        self._predict_batch = None
        import _ctypes  # stdlib; dlclose is not part of the public ctypes API

        _ctypes.dlclose(lib._handle)

    def __repr__(self) -> str:
        return f"CompiledRanker({str(self.path)!r}, n_features={self.n_features})"
