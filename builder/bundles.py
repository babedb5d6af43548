"""The bundles under a root, as an operator handles them: list them, roll `current` back (or
forward) to one of them, and prune the old ones (`aisle bundles list | use | prune`).

Every nightly build adds a bundle of the catalog's size; without pruning the disk fills. What must
survive a prune: the bundle `current` names, the newest `keep` finished bundles (rollback targets),
and every bundle an engine's settings pin for an experiment arm (`experiments.variants.bundle`),
which the builder cannot know unless it is told (`--settings`, `--protect`). Removing a bundle a
worker still maps is safe on Linux (the mapped files live until unmapped), but a worker starting
on a pruned pin would fail, hence the pins. Directories without a readable manifest are reported,
never removed: they may be someone's, and the builder's own leftovers are the staging dirs, which
`sweep_staging` removes only when no live build holds them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.errors import BundleCorruptError, BundleFormatError, PublishError
from artifacts.manifest import parse
from artifacts.publish import STAGING_PREFIX, current_build_id, fsync_path, is_build_id, set_current, sweep_staging


class BundlesError(ValueError):
    """A bundle root or a bundle an operation cannot use; the message says which and why."""


class BundleInfo(msgspec.Struct, frozen=True, kw_only=True):
    build_id: str
    created_at: str  # ISO-8601 UTC, from the manifest
    items: int
    users: int
    size_bytes: int  # the manifest's files
    current: bool
    pinned: bool  # protected: an experiment arm's bundle, or named by --protect


class Unreadable(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    why: str


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    root: str
    bundles: list[BundleInfo]  # newest first
    unreadable: list[Unreadable]  # directories that are not finished bundles (left alone)
    staging: list[str]  # staging dirs present (a build running, or one that died)


class PruneReport(msgspec.Struct, frozen=True, kw_only=True):
    kept: list[str]
    removed: list[str]
    freed_bytes: int
    staging_removed: list[str]
    dry_run: bool


def _root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise BundlesError(f"{root}: no such bundle root")
    return root


def list_bundles(root: Path, protect: frozenset[str] = frozenset()) -> Listing:
    """Every directory under `root` that is a finished bundle (a manifest whose checksum holds),
    newest first; the rest named with the reason."""
    root = _root(root)
    current = current_build_id(root)
    bundles: list[BundleInfo] = []
    unreadable: list[Unreadable] = []
    staging: list[str] = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(STAGING_PREFIX):
            staging.append(path.name)
            continue
        if not is_build_id(path.name) or path.is_symlink() or not path.is_dir():
            continue
        manifest_path = path / layout.MANIFEST
        try:
            m = parse(manifest_path.read_bytes(), str(manifest_path))
        except FileNotFoundError:
            unreadable.append(Unreadable(name=path.name, why=f"no {layout.MANIFEST}"))
            continue
        except (BundleCorruptError, BundleFormatError) as exc:
            unreadable.append(Unreadable(name=path.name, why=str(exc)))
            continue
        if m.build_id != path.name:
            unreadable.append(Unreadable(name=path.name, why=f"its manifest names build {m.build_id}"))
            continue
        bundles.append(BundleInfo(
            build_id=m.build_id, created_at=m.created_at, items=int(m.counts.get("items", 0)), users=int(m.counts.get("users", 0)),
            size_bytes=sum(e.size for e in m.files.values()), current=m.build_id == current, pinned=m.build_id in protect,
        ))  # fmt: skip
    bundles.sort(key=lambda b: (b.created_at, b.build_id), reverse=True)
    return Listing(root=str(root), bundles=bundles, unreadable=unreadable, staging=staging)


def use_bundle(root: Path, build_id: str) -> str:
    """Point `current` at `build_id` (a rollback, or back to the newest) after verifying every
    file's sha256, so a damaged bundle is refused before any worker maps it. Returns the build
    `current` named before. The evaluation gate is not consulted: choosing an older bundle on
    purpose is what a rollback is."""
    root = _root(root)
    if not is_build_id(build_id):
        raise BundlesError(f"{build_id!r} is not a build id (a directory name under {root})")
    if not (root / build_id).is_dir():
        known = ", ".join(b.build_id for b in list_bundles(root).bundles[:5]) or "none"
        raise BundlesError(f"{root / build_id}: no such bundle (newest: {known})")
    try:
        open_bundle(root / build_id, verify="full")
    except (BundleCorruptError, BundleFormatError) as exc:
        raise BundlesError(f"{build_id} cannot be served: {exc}") from exc
    before = current_build_id(root) or ""
    try:
        set_current(root, build_id)
    except PublishError as exc:
        raise BundlesError(str(exc)) from exc
    return before


def prune_bundles(root: Path, keep: int, protect: frozenset[str] = frozenset(), dry_run: bool = False) -> PruneReport:
    """Remove finished bundles beyond the newest `keep`, never `current` or a protected one, and
    the staging dirs of builds that died. `dry_run` reports what would go and removes nothing."""
    if keep < 0:
        raise BundlesError(f"keep must be ≥ 0, got {keep}")
    listing = list_bundles(root, protect)
    root = Path(listing.root)
    kept: list[str] = []
    doomed: list[tuple[str, int]] = []
    for rank, b in enumerate(listing.bundles):
        if b.current or b.pinned or rank < keep:
            kept.append(b.build_id)
        else:
            doomed.append((b.build_id, b.size_bytes))
    removed: list[str] = []
    freed = 0
    for build_id, size in doomed:
        if dry_run:
            removed.append(build_id)
            freed += size
            continue
        # Re-read `current` right before each removal: a publish may have moved it meanwhile.
        if current_build_id(root) == build_id:
            kept.append(build_id)
            continue
        shutil.rmtree(root / build_id, ignore_errors=True)
        if not (root / build_id).exists():
            removed.append(build_id)
            freed += size
    if removed and not dry_run:
        fsync_path(root)
    staging = [] if dry_run else [p.name for p in sweep_staging(root)]
    return PruneReport(kept=kept, removed=removed, freed_bytes=freed, staging_removed=staging, dry_run=dry_run)


def pinned_by_settings(path: Path) -> frozenset[str]:
    """The bundles an engine's settings file pins for experiment arms."""
    from engine.settings import SettingsError, load

    try:
        settings = load(Path(path))
    except SettingsError as exc:
        raise BundlesError(str(exc)) from exc  # it names the file
    return frozenset(v.bundle for e in settings.experiments for v in e.variants if v.bundle)
