"""Writing a bundle atomically and moving `current` (DESIGN.md §4).

A build writes into `<root>/.staging-<build_id>/`; `finalize` fsyncs every file, writes the
manifest last, fsyncs, and renames the directory to `<root>/<build_id>/`; `set_current` swaps the
`current` symlink with a rename, so a reader sees the old bundle or the new one, never a mix.

A staging directory is held by an exclusive flock on the directory itself for as long as its
build runs (`staging_dir` takes it, `release_staging` drops it). The kernel drops it when the
process dies however it dies, so `sweep_staging` can tell a killed build's leftovers (lock free:
removed) from a live build's (lock held: left alone), with no pid files to go stale.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from artifacts import layout
from artifacts.errors import PublishError
from artifacts.manifest import ArrayEntry, FileEntry, Manifest, seal

CURRENT = "current"
STAGING_PREFIX = ".staging-"


STAGING_GRACE_S = 60.0  # a staging dir younger than this is never swept: its build may not hold the lock yet

_held: dict[Path, int] = {}  # staging dir -> the descriptor whose flock holds it


def staging_dir(root: Path, build_id: str) -> Path:
    """A fresh `<root>/.staging-<build_id>/`, held by this process until `release_staging`."""
    path = Path(root) / f"{STAGING_PREFIX}{build_id}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise PublishError(f"cannot hold {path}: {exc.strerror}") from exc
    _held[path] = fd
    return path


def release_staging(path: Path) -> None:
    """Drop this process's hold on a staging dir (whether or not it still exists, renamed or not)."""
    fd = _held.pop(Path(path), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file releases its flock


def sweep_staging(root: Path, grace_s: float = STAGING_GRACE_S) -> list[Path]:
    """Remove the staging dirs under `root` that no live build holds (their builds were killed
    before they could clean up: `kill -9`, OOM, power loss) and that are older than `grace_s`;
    return them. A live build's dir, this process's own, and anything not a plain directory are
    left alone."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for path in sorted(root.iterdir()):
        if not path.name.startswith(STAGING_PREFIX) or path.is_symlink() or not path.is_dir() or path in _held:
            continue
        try:
            if now - path.stat().st_mtime < grace_s:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # its build finished or cleaned up meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live build holds it
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
        finally:
            os.close(fd)
    if removed:
        fsync_path(root)
    return removed


def save_array(bundle_dir: Path, rel: str, array: np.ndarray) -> None:
    """Write one `.npy` (C order, no pickle) under the bundle dir."""
    target = bundle_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, np.ascontiguousarray(array), allow_pickle=False)


def save_csr(bundle_dir: Path, name: str, indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray) -> None:
    p_indptr, p_indices, p_weights = layout.csr(name)
    save_array(bundle_dir, p_indptr, indptr.astype(np.int64, copy=False))
    save_array(bundle_dir, p_indices, indices.astype(np.int32, copy=False))
    save_array(bundle_dir, p_weights, weights.astype(np.float32, copy=False))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entry list is what makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_directory(out: Path, fill: Callable[[Path], None]) -> None:
    """Make `out` exactly what `fill(tmp)` writes into a fresh temporary sibling, all at once:
    fsync every file and the directory, rename over `out` (the old one is removed only after the
    new one is in place; on failure the old one is put back), fsync the parent."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        for path in tmp.rglob("*"):
            fsync_path(path)
        fsync_path(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)  # put the previous output back rather than leave nothing
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_path(out.parent)


def inventory(bundle_dir: Path) -> tuple[dict[str, FileEntry], dict[str, ArrayEntry]]:
    """Size + sha256 of every file (fsyncing each), and dtype + shape of every `.npy`."""
    files: dict[str, FileEntry] = {}
    arrays: dict[str, ArrayEntry] = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel == layout.MANIFEST:
            continue
        fsync_path(path)
        files[rel] = FileEntry(size=path.stat().st_size, sha256=sha256_file(path))
        if rel.endswith(".npy"):
            header = np.load(path, mmap_mode="r", allow_pickle=False)
            arrays[rel] = ArrayEntry(dtype=header.dtype.str, shape=list(header.shape))
    for directory in {p.parent for p in bundle_dir.rglob("*")} | {bundle_dir}:
        fsync_path(directory)
    return files, arrays


def finalize(staging: Path, manifest: Manifest) -> Path:
    """Write the manifest last, then rename the staging dir to `<root>/<build_id>`."""
    final = staging.parent / manifest.build_id
    if final.exists():
        raise PublishError(f"{final} already exists: build ids must be unique")
    manifest_path = staging / layout.MANIFEST
    manifest_path.write_bytes(seal(manifest))
    fsync_path(manifest_path)
    fsync_path(staging)
    os.rename(staging, final)
    fsync_path(staging.parent)
    return final


def set_current(root: Path, build_id: str) -> Path:
    """Point `<root>/current` at `build_id` atomically (a relative symlink swapped by rename)."""
    root = Path(root)
    if not (root / build_id / layout.MANIFEST).is_file():
        raise PublishError(f"cannot publish {build_id}: {root / build_id} is not a finished bundle")
    tmp = root / f".{CURRENT}-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(build_id, tmp)
    try:
        os.replace(tmp, root / CURRENT)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PublishError(f"cannot move {root / CURRENT}: {exc.strerror}") from exc
    fsync_path(root)
    return root / CURRENT


def is_build_id(name: str) -> bool:
    """A plain directory name under the bundle root: no path (so no escape from the root), not
    '.', '..' or a hidden staging directory, not the `current` pointer."""
    return bool(name) and "/" not in name and "\x00" not in name and not name.startswith(".") and name != CURRENT


def current_build_id(root: Path) -> str | None:
    link = Path(root) / CURRENT
    if not link.is_symlink():
        return None
    return os.readlink(link).rstrip("/").split("/")[-1]
