"""The `aisle` command line: failures are clear, exit non-zero, and leave nothing half written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest


def aisle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], capture_output=True, text=True, timeout=600)


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_build_refuses_a_sensitive_column_and_publishes_nothing(tiny_store: Path, tmp_path: Path) -> None:
    data = copy_store(tiny_store, tmp_path / "data")
    users = pl.read_parquet(data / "users.parquet")
    users.with_columns(pl.lit(33).alias("age")).write_parquet(data / "users.parquet")
    root = tmp_path / "bundles"
    result = aisle("build", "--data", str(data), "--out", str(root))
    assert result.returncode == 1
    assert "users.parquet, column 'age'" in result.stderr
    assert "never uses sensitive attributes" in result.stderr
    assert "Traceback" not in result.stderr
    assert not root.exists() or list(root.iterdir()) == []


def test_build_names_file_row_and_column_of_bad_input(tiny_store: Path, tmp_path: Path) -> None:
    data = copy_store(tiny_store, tmp_path / "data")
    events = pl.read_parquet(data / "events.parquet")
    bad = events.with_columns(
        pl.when(pl.int_range(pl.len()) == 41).then(pl.lit("view")).otherwise(pl.col("type")).alias("type")
    )
    bad.write_parquet(data / "events.parquet")
    root = tmp_path / "bundles"
    result = aisle("build", "--data", str(data), "--out", str(root))
    assert result.returncode == 1
    assert "events.parquet row 42, column 'type'" in result.stderr and "got 'view'" in result.stderr
    assert not root.exists() or list(root.iterdir()) == []


def test_inspect_refuses_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    result = aisle("inspect", str(tmp_path))
    assert result.returncode == 1
    assert "corrupt or unfinished bundle: no manifest.json" in result.stderr


def test_synth_rejects_an_unknown_scale(tmp_path: Path) -> None:
    result = aisle("synth", "--scale", "huge", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "unknown scale 'huge'" in result.stderr


@pytest.mark.slow
def test_synth_then_build_then_inspect_from_the_command_line(tmp_path: Path) -> None:
    data, root = tmp_path / "data", tmp_path / "bundles"
    assert aisle("synth", "--scale", "micro", "--out", str(data)).returncode == 0
    config = Path(__file__).parent / "fixtures" / "bundle-v1.build.toml"
    built = aisle("build", "--data", str(data), "--out", str(root), "--config", str(config))
    assert built.returncode == 0, built.stderr
    assert (root / "current").is_symlink()
    shown = aisle("inspect", str(root / "current"), "--verify")
    assert shown.returncode == 0 and "sha256 verified" in shown.stdout
