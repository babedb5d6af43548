"""Bundle housekeeping: a killed build's staging directory is swept (by the next build and by
`aisle bundles prune`) while a live build's is left alone; `aisle bundles list | use | prune`
on real bundles: rollback verifies before it moves `current`, prune keeps `current`, the newest
`--keep` and every pinned bundle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.manifest import seal
from artifacts.publish import STAGING_PREFIX, current_build_id, release_staging, set_current, staging_dir, sweep_staging
from builder.bundles import BundlesError, list_bundles, pinned_by_settings, prune_bundles, use_bundle
from builder.cli import main

ROOT = Path(__file__).resolve().parents[1]
OLD = time.time() - 3600  # past the sweep's grace period


def _hold(root: Path, name: str, then: str) -> subprocess.Popen[str]:
    """A process that takes a staging dir the way a build does, says so, then `then`s."""
    code = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from artifacts.publish import staging_dir\n"
        f"p = staging_dir(Path({str(root)!r}), {name!r})\n"
        "(p / 'part.npy').write_bytes(b'x' * 1000)\n"
        "print('held', flush=True)\n"
        + ("os.kill(os.getpid(), signal.SIGKILL)\n" if then == "die" else "time.sleep(120)\n")
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _age(path: Path) -> None:
    os.utime(path, (OLD, OLD))


def test_a_killed_builds_staging_dir_is_swept_and_a_live_ones_is_not(tmp_path: Path) -> None:
    dead = _hold(tmp_path, "dead", "die")
    assert dead.wait(timeout=30) == -signal.SIGKILL
    live = _hold(tmp_path, "live", "sleep")
    try:
        young = tmp_path / f"{STAGING_PREFIX}young"  # unheld but just made: its build may not have locked it yet
        young.mkdir()
        for name in ("dead", "live"):
            _age(tmp_path / f"{STAGING_PREFIX}{name}")
        (tmp_path / "20260101T000000Z-aaaa").mkdir()  # not staging: never touched
        assert sweep_staging(tmp_path) == [tmp_path / f"{STAGING_PREFIX}dead"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{STAGING_PREFIX}live", f"{STAGING_PREFIX}young", "20260101T000000Z-aaaa"]
        assert (tmp_path / f"{STAGING_PREFIX}live" / "part.npy").stat().st_size == 1000  # the live build's work is intact
    finally:
        live.kill()
        live.wait(timeout=30)
    assert sweep_staging(tmp_path) == [tmp_path / f"{STAGING_PREFIX}live"]  # its builder died: now it goes
    _age(young)
    assert sweep_staging(tmp_path) == [young]
    assert sweep_staging(tmp_path / "missing") == []


def test_this_process_keeps_its_own_staging_dir_until_it_lets_go(tmp_path: Path) -> None:
    own = staging_dir(tmp_path, "own")
    _age(own)
    try:
        assert sweep_staging(tmp_path) == [] and own.is_dir()
    finally:
        release_staging(own)
    assert sweep_staging(tmp_path) == [own]
    release_staging(own)  # twice, or for a dir never held: nothing happens


@pytest.fixture(scope="module")
def root(tiny_store: Path, test_build_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with a real build in it, built after a killed build left its staging dir behind;
    then three older copies of that bundle under other build ids (hard links: same bytes)."""
    from builder.build import build
    from builder.progress import silent

    root = tmp_path_factory.mktemp("bundles")
    dead = _hold(root, "20250101T000000Z-dead", "die")
    assert dead.wait(timeout=30) == -signal.SIGKILL
    _age(root / f"{STAGING_PREFIX}20250101T000000Z-dead")
    built = build(tiny_store, root, test_build_config, progress=silent)
    assert not [p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX)]  # the build swept the dead one
    manifest = built.manifest
    for day in (1, 2, 3):
        build_id = f"2026010{day}T000000Z-old{day}"
        shutil.copytree(built.path, root / build_id, copy_function=os.link, ignore=shutil.ignore_patterns(layout.MANIFEST))
        older = msgspec.structs.replace(manifest, build_id=build_id, created_at=f"2026-01-0{day}T00:00:00+00:00")
        (root / build_id / layout.MANIFEST).write_bytes(seal(older))
    return root


def test_list_names_every_bundle_newest_first_and_what_is_not_one(root: Path) -> None:
    (root / "notes").mkdir(exist_ok=True)
    try:
        listing = list_bundles(root, protect=frozenset({"20260102T000000Z-old2"}))
    finally:
        (root / "notes").rmdir()
    current = current_build_id(root)
    assert [b.build_id for b in listing.bundles] == [current, "20260103T000000Z-old3", "20260102T000000Z-old2", "20260101T000000Z-old1"]
    assert [(b.current, b.pinned) for b in listing.bundles] == [(True, False), (False, False), (False, True), (False, False)]
    assert listing.bundles[0].items > 0 and listing.bundles[0].size_bytes > 0
    assert [(u.name, u.why) for u in listing.unreadable] == [("notes", f"no {layout.MANIFEST}")]


def test_use_rolls_back_after_verifying_and_refuses_a_damaged_or_unknown_bundle(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newest = current_build_id(root)
    assert newest is not None
    try:
        assert main(["bundles", "use", "--root", str(root), "20260103T000000Z-old3"]) == 0
        assert current_build_id(root) == "20260103T000000Z-old3"
        assert open_bundle(root / "current").manifest.build_id == "20260103T000000Z-old3"
        assert f"(was {newest})" in capsys.readouterr().out
        # A damaged bundle is refused before `current` moves. Break a copy, not a hard link's shared bytes.
        victim = root / "20260101T000000Z-old1" / layout.ITEM_VECTORS
        data = bytearray(victim.read_bytes())
        victim.unlink()
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
        with pytest.raises(BundlesError, match="20260101T000000Z-old1 cannot be served"):
            use_bundle(root, "20260101T000000Z-old1")
        assert current_build_id(root) == "20260103T000000Z-old3"
        for bad, message in (("nope", "no such bundle"), ("../x", "not a build id"), ("current", "not a build id"), (".staging-x", "not a build id")):
            assert main(["bundles", "use", "--root", str(root), bad]) != 0
            assert message in capsys.readouterr().err
        assert current_build_id(root) == "20260103T000000Z-old3"
    finally:
        set_current(root, newest)


def test_prune_keeps_current_the_newest_and_the_pinned(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newest = current_build_id(root)
    before = sorted(p.name for p in root.iterdir())
    assert main(["bundles", "prune", "--root", str(root), "--keep", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 20260102T000000Z-old2" in out and "would remove 20260101T000000Z-old1" in out
    assert sorted(p.name for p in root.iterdir()) == before  # a dry run removes nothing

    set_current(root, "20260102T000000Z-old2")  # a rollback is live: current is an older bundle
    settings = tmp_path / "engine.toml"
    settings.write_text('[[experiments]]\nname = "x"\nsalt = "x"\nvariants = [{name = "a"}, {name = "b", bundle = "20260101T000000Z-old1"}]\n')
    assert pinned_by_settings(settings) == {"20260101T000000Z-old1"}
    dead = _hold(root, "20250101T000000Z-dead", "die")
    assert dead.wait(timeout=30) == -signal.SIGKILL
    _age(root / f"{STAGING_PREFIX}20250101T000000Z-dead")
    try:
        report = prune_bundles(root, keep=1, protect=pinned_by_settings(settings))
        assert report.removed == ["20260103T000000Z-old3"] and report.freed_bytes > 0
        assert sorted(report.kept) == sorted([newest, "20260102T000000Z-old2", "20260101T000000Z-old1"])
        assert report.staging_removed == [f"{STAGING_PREFIX}20250101T000000Z-dead"]
        assert sorted(p.name for p in root.iterdir()) == sorted([newest, "20260102T000000Z-old2", "20260101T000000Z-old1", "current"])
        assert open_bundle(root / "current", verify="full").manifest.build_id == "20260102T000000Z-old2"  # untouched by the prune
    finally:
        set_current(root, newest)
    with pytest.raises(BundlesError, match="keep must be"):
        prune_bundles(root, keep=-1)
    assert main(["bundles", "list", "--root", str(tmp_path / "missing")]) != 0
    assert "no such bundle root" in capsys.readouterr().err
    settings.write_text("[[experiments]]\nname = 3\n")
    assert main(["bundles", "prune", "--root", str(root), "--settings", str(settings)]) != 0
    assert str(settings) in capsys.readouterr().err
