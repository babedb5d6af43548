"""Opening a bundle: verify it against its manifest, then memory-map its parts on demand.

`open_bundle(path)` accepts a bundle directory or a `current` symlink. Verification levels:
- "full": sizes and sha256 of every file (detects a flipped byte; what `aisle inspect --verify`,
  the publisher and a hot swap use);
- "sizes": presence and size of every file (cheap; catches truncation and missing parts);
- "none": only the manifest itself (its checksum is always checked).

Arrays come back as read-only memory maps (`np.load(mmap_mode="r")`), so every worker process
shares the same page-cache pages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from artifacts import layout
from artifacts.errors import BundleCorruptError
from artifacts.idmap import IdMap
from artifacts.manifest import Manifest, parse
from artifacts.publish import sha256_file

Verify = Literal["none", "sizes", "full"]


@dataclass(frozen=True, slots=True)
class Csr:
    """A compressed-sparse-row table: the neighbours of row r are
    `indices[indptr[r]:indptr[r+1]]` with `weights[...]` (descending weight within a row)."""

    indptr: np.ndarray  # int64 [n_rows + 1]
    indices: np.ndarray  # int32 [nnz]
    weights: np.ndarray  # float32 [nnz]

    @property
    def n_rows(self) -> int:
        return int(self.indptr.shape[0]) - 1

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= r < self.n_rows:
            return self.indices[:0], self.weights[:0]
        start, end = int(self.indptr[r]), int(self.indptr[r + 1])
        return self.indices[start:end], self.weights[start:end]


@dataclass(frozen=True, slots=True)
class Vocab:
    category_path: tuple[str, ...]
    category_parent: np.ndarray  # int32 [n_categories]
    category_depth: np.ndarray  # int8 [n_categories]
    brands: tuple[str, ...]
    sellers: tuple[str, ...]
    regions: tuple[str, ...]
    devices: tuple[str, ...]


def write_vocab(path: Path, vocab: Vocab) -> None:
    doc = {
        "categories": {
            "path": list(vocab.category_path),
            "parent": vocab.category_parent.astype(int).tolist(),
            "depth": vocab.category_depth.astype(int).tolist(),
        },
        "brands": list(vocab.brands),
        "sellers": list(vocab.sellers),
        "regions": list(vocab.regions),
        "devices": list(vocab.devices),
    }
    path.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def _read_vocab(path: Path) -> Vocab:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        cats = doc["categories"]
        return Vocab(
            category_path=tuple(cats["path"]),
            category_parent=np.asarray(cats["parent"], dtype=np.int32),
            category_depth=np.asarray(cats["depth"], dtype=np.int8),
            brands=tuple(doc["brands"]),
            sellers=tuple(doc["sellers"]),
            regions=tuple(doc["regions"]),
            devices=tuple(doc["devices"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleCorruptError(f"{path}: corrupt vocabulary file: {exc}") from exc


class Bundle:
    """A verified, read-only bundle directory. Parts are mapped lazily and cached."""

    def __init__(self, root: Path, manifest: Manifest | None) -> None:
        self.root = root
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}
        self._vocab: Vocab | None = None

    @property
    def build_id(self) -> str:
        return self.manifest.build_id if self.manifest else f"staging:{self.root.name}"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def has(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def array(self, rel: str) -> np.ndarray:
        """The `.npy` at `rel`, memory-mapped read-only; dtype and shape checked against the manifest."""
        cached = self._arrays.get(rel)
        if cached is not None:
            return cached
        path = self.root / rel
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError as exc:
            raise BundleCorruptError(f"{path}: missing bundle part") from exc
        except ValueError as exc:
            raise BundleCorruptError(f"{path}: corrupt array file: {exc}") from exc
        if self.manifest is not None:
            entry = self.manifest.arrays.get(rel)
            if entry is None or entry.dtype != arr.dtype.str or list(arr.shape) != entry.shape:
                raise BundleCorruptError(
                    f"{path}: corrupt: array is {arr.dtype.str}{list(arr.shape)}, manifest says "
                    f"{(entry.dtype + str(entry.shape)) if entry else 'nothing'}"
                )
        # A plain ndarray over the same mapping (its .base keeps the mmap alive): np.memmap's
        # Python-level __getitem__/__array_finalize__ cost ~8 µs per indexing, ~45 times a request.
        arr = np.asarray(arr)
        self._arrays[rel] = arr
        return arr

    def item_column(self, name: str) -> np.ndarray:
        return self.array(layout.item_column(name))

    def csr(self, name: str) -> Csr:
        p_indptr, p_indices, p_weights = layout.csr(name)
        return Csr(self.array(p_indptr), self.array(p_indices), self.array(p_weights))

    @property
    def vocab(self) -> Vocab:
        if self._vocab is None:
            self._vocab = _read_vocab(self.root / layout.VOCAB)
        return self._vocab

    @property
    def items(self) -> IdMap:
        return IdMap(self.array(layout.ITEM_SKU))

    @property
    def users(self) -> IdMap:
        return IdMap(self.array(layout.USER_IDS))

    @property
    def n_items(self) -> int:
        return len(self.array(layout.ITEM_SKU))

    def title(self, row: int) -> str:
        offsets = self.array(layout.ITEM_TITLE_OFFSETS)
        raw = self.array(layout.ITEM_TITLE_BYTES)[int(offsets[row]) : int(offsets[row + 1])]
        return bytes(raw).decode("utf-8", errors="replace")


def resolve(path: Path) -> Path:
    """A bundle dir from a bundle dir, a `current` symlink, or a root holding `current`."""
    path = Path(path)
    if (path / "current").is_symlink() and not (path / layout.MANIFEST).exists():
        path = path / "current"
    return path.resolve()


def open_bundle(path: Path, verify: Verify = "full") -> Bundle:
    """Open and verify a finished bundle. Raises BundleFormatError or BundleCorruptError."""
    root = resolve(path)
    manifest_path = root / layout.MANIFEST
    if not root.is_dir():
        raise BundleCorruptError(f"{root}: no such bundle directory")
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleCorruptError(f"{root}: corrupt or unfinished bundle: no {layout.MANIFEST}") from exc
    manifest = parse(raw, str(manifest_path))
    if verify != "none":
        verify_files(root, manifest, full=(verify == "full"))
    return Bundle(root, manifest)


def open_staging(path: Path) -> Bundle:
    """A bundle directory still being built (no manifest yet): the builder uses the engine's own
    readers on its intermediate output, so training sees exactly what serving will see."""
    return Bundle(Path(path), None)


def verify_files(root: Path, manifest: Manifest, full: bool) -> None:
    problems: list[str] = []
    for rel, entry in manifest.files.items():
        path = root / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if size != entry.size:
            problems.append(f"{rel}: size {size}, manifest says {entry.size} (truncated or replaced)")
        elif full and sha256_file(path) != entry.sha256:
            problems.append(f"{rel}: sha256 mismatch (content changed after the build)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BundleCorruptError(f"{root}: corrupt bundle: {shown}")
