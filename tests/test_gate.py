"""The evaluation gate: a bundle worse than the current one is built but not published, with a
clear message; --allow-worse publishes it anyway; the verdict rule itself, by hand."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import polars as pl
import pytest

from builder.cli import main
from builder.config import GateConfig
from builder.gate import EVAL_PREFIX, Backtest, verdict
from tests.conftest import TEST_BUILD_TOML

def _gate_config(path: Path) -> Path:
    """The suite's fast build config with more shoppers on the ranker's held-out side (so the tiny
    store's backtest has a few dozen of them) and a 10% gate margin."""
    path.write_text(TEST_BUILD_TOML.replace("[ranker]\n", "[ranker]\nvalid_fraction = 0.5\n") + "[gate]\nmargin = 0.1\n")
    return path


def _sold_out_copy(store: Path, out: Path) -> Path:
    """The same store with every SKU out of stock (a broken stock feed): the engine may recommend
    nothing, so its backtest is exactly zero."""
    shutil.copytree(store, out)
    catalog = pl.read_parquet(out / "catalog.parquet").with_columns(pl.lit(False).alias("in_stock"))
    catalog.write_parquet(out / "catalog.parquet")
    return out


@pytest.mark.slow
def test_gate_refuses_a_worse_bundle_and_allow_worse_overrides(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _gate_config(tmp_path / "build.toml")
    root = tmp_path / "bundles"
    assert main(["build", "--data", str(tiny_store), "--out", str(root), "--config", str(config)]) == 0
    good = os.readlink(root / "current")
    manifest = msgspec.json.decode((root / good / "manifest.json").read_bytes())
    assert manifest["eval"][f"{EVAL_PREFIX}users"] >= 20
    assert manifest["eval"][f"{EVAL_PREFIX}NDCG@10"] > 0  # the good bundle finds some targets

    sold_out = _sold_out_copy(tiny_store, tmp_path / "sold-out")
    capsys.readouterr()
    assert main(["build", "--data", str(sold_out), "--out", str(root), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "worse than the current one" in err and "--allow-worse" in err and "NDCG@10 0.0000" in err
    assert os.readlink(root / "current") == good  # not published
    refused = [p.name for p in root.iterdir() if p.is_dir() and p.name not in (good, "current") and not p.name.startswith(".")]
    assert len(refused) == 1  # built and kept for inspection

    assert main(["build", "--data", str(sold_out), "--out", str(root), "--config", str(config), "--allow-worse"]) == 0
    assert os.readlink(root / "current") not in (good, refused[0])


def test_verdict_rule_against_the_recorded_figure(tiny_bundle: Path) -> None:
    manifest = msgspec.json.decode((tiny_bundle / "current" / "manifest.json").read_bytes())
    recorded = manifest["eval"].get(f"{EVAL_PREFIX}NDCG@10")
    if not recorded:
        pytest.skip("the tiny bundle's backtest found no target (nothing to compare with)")
    config = GateConfig(margin=0.1)
    far_future = 2**40  # the current bundle has seen this window: compare with its recorded figure
    worse = Backtest(100, {"NDCG@10": recorded * 0.85}, {}, None)
    ok, why = verdict(worse, tiny_bundle, far_future, config)
    assert not ok and "recorded backtest" in why and f"{recorded:.4f}" in why
    close = Backtest(100, {"NDCG@10": recorded * 0.95}, {}, None)
    assert verdict(close, tiny_bundle, far_future, config)[0]
    assert verdict(worse, tiny_bundle, far_future, GateConfig(margin=0.2))[0]


def test_verdict_without_a_current_bundle_or_figure(tmp_path: Path) -> None:
    ok, why = verdict(Backtest(10, {"NDCG@10": 0.0}, {}, None), tmp_path, 0, GateConfig())
    assert ok and "no current bundle" in why
    ok, why = verdict(Backtest(0, {}, {}, None), tmp_path, 0, GateConfig())
    assert ok and "nothing to compare" in why
