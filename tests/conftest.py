"""Shared fixtures: one synthetic store and one bundle per test session (building is the slow
part; every test that reads a bundle shares this one)."""

from __future__ import annotations

from pathlib import Path

import pytest

import artifacts  # noqa: F401  (loads onnxruntime before usearch: see artifacts/__init__.py)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A faster build than the defaults (fewer epochs, trees and queries); the defaults are exercised by
# `aisle build` in the README and measured in the closing notes.
TEST_BUILD_TOML = """
[two_tower]
epochs = 2
threads = 1
[ranker]
trees = 60
max_queries = 3000
parallel_comp = 2
threads = 1
[index]
threads = 1
[heads]
# The ranking heads have their own tests on a store with enough traffic (test_heads_bundle.py);
# the tiny store's week after the cut-off is too thin for them anyway.
enabled = false
"""


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from builder.synth import generate

    out = tmp_path_factory.mktemp("store") / "tiny"
    generate(scale="tiny", seed=7, out=out)
    return out


@pytest.fixture(scope="session")
def test_build_config(tmp_path_factory: pytest.TempPathFactory):
    from builder.config import load_build_config

    path = tmp_path_factory.mktemp("config") / "build.toml"
    path.write_text(TEST_BUILD_TOML)
    return load_build_config(path)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_store: Path, test_build_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT with a published tiny bundle (ROOT/current)."""
    from builder.build import build
    from builder.progress import silent

    root = tmp_path_factory.mktemp("bundles")
    build(tiny_store, root, test_build_config, progress=silent)
    return root
