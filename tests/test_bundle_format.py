"""The bundle as a file format: manifest integrity, format versions, checksums, atomic publish,
id maps. Uses a hand-made two-file bundle, so it runs without the builder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifacts.bundle import open_bundle
from artifacts.errors import BundleCorruptError, BundleFormatError, PublishError
from artifacts.idmap import IdMap, encode_ids
from artifacts.manifest import FORMAT_VERSION, Manifest, parse, seal
from artifacts.publish import current_build_id, finalize, inventory, save_array, set_current, staging_dir


def make_bundle(root: Path, build_id: str = "b1") -> Path:
    staging = staging_dir(root, build_id)
    save_array(staging, "items/sku.npy", encode_ids(["a", "b", "c"]))
    save_array(staging, "items/price.npy", np.array([1.0, 2.0, 3.0], np.float32))
    files, arrays = inventory(staging)
    manifest = Manifest(
        build_id=build_id, created_at="2026-01-01T00:00:00Z", builder_version="test", inputs={}, config={},
        counts={"items": 3}, dims={}, vocab_sizes={}, arrays=arrays, files=files, feature_spec=[], eval={}, stage_seconds={},
    )
    return finalize(staging, manifest)


def test_a_finished_bundle_opens_and_maps_its_arrays(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    bundle = open_bundle(path)
    assert bundle.build_id == "b1"
    np.testing.assert_array_equal(bundle.array("items/price.npy"), [1.0, 2.0, 3.0])
    arr = bundle.array("items/price.npy")
    # a plain ndarray view over the read-only mapping (no copy, no np.memmap indexing overhead)
    assert type(arr) is np.ndarray and isinstance(arr.base, np.memmap) and not arr.flags.writeable
    assert bundle.items.row_of("b") == 1


def test_a_flipped_byte_is_detected_by_checksum(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    target = path / "items/price.npy"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0x01
    target.write_bytes(bytes(raw))
    open_bundle(path, verify="sizes")  # same size: only the checksum can tell
    with pytest.raises(BundleCorruptError, match=r"items/price.npy: sha256 mismatch"):
        open_bundle(path, verify="full")


def test_truncated_or_missing_parts_are_corrupt(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    with open(path / "items/price.npy", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(BundleCorruptError, match="truncated"):
        open_bundle(path, verify="sizes")
    (path / "items/sku.npy").unlink()
    with pytest.raises(BundleCorruptError, match="items/sku.npy: missing"):
        open_bundle(path, verify="sizes")


def test_an_edited_manifest_fails_its_own_checksum(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    doc = json.loads((path / "manifest.json").read_text())
    doc["counts"]["items"] = 4
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleCorruptError, match="checksum does not match"):
        open_bundle(path, verify="none")


def test_a_newer_format_version_says_newer_builder(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    doc = json.loads((path / "manifest.json").read_text())
    doc["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleFormatError, match="made by a newer builder"):
        open_bundle(path)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "not a JSON object"),
        (b"{garbage", "not a JSON object"),
        (b'{"magic": "SOMETHING-ELSE", "format_version": 1}', "not an Aisle bundle"),
        (b'{"magic": "AISLE-BUNDLE", "format_version": 0}', "format_version 0 is not valid"),
        (b'{"magic": "AISLE-BUNDLE", "format_version": 1}', "corrupt manifest"),
    ],
)
def test_malformed_manifests_say_corrupt(raw: bytes, message: str) -> None:
    with pytest.raises(BundleCorruptError, match=message):
        parse(raw, "m.json")


def test_no_manifest_means_unfinished(tmp_path: Path) -> None:
    staging = staging_dir(tmp_path, "x")
    with pytest.raises(BundleCorruptError, match="no manifest.json"):
        open_bundle(staging)


def test_current_moves_atomically_and_only_to_finished_bundles(tmp_path: Path) -> None:
    make_bundle(tmp_path, "b1")
    make_bundle(tmp_path, "b2")
    set_current(tmp_path, "b1")
    assert current_build_id(tmp_path) == "b1"
    assert open_bundle(tmp_path / "current").build_id == "b1"
    set_current(tmp_path, "b2")
    assert open_bundle(tmp_path).build_id == "b2"  # a root resolves through current
    staging_dir(tmp_path, "b3")
    with pytest.raises(PublishError, match="not a finished bundle"):
        set_current(tmp_path, ".staging-b3")
    assert current_build_id(tmp_path) == "b2"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".current")]


def test_seal_then_parse_round_trips() -> None:
    m = Manifest(
        build_id="x", created_at="t", builder_version="v", inputs={"a": "b"}, config={"k": 1}, counts={}, dims={},
        vocab_sizes={}, arrays={}, files={}, feature_spec=[], eval={"ndcg": 0.5}, stage_seconds={},
    )
    back = parse(seal(m), "m")
    assert back.eval == {"ndcg": 0.5} and back.checksum


@settings(max_examples=60, deadline=None)
@given(st.sets(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12), max_size=50))
def test_id_maps_round_trip(ids: set[str]) -> None:
    ordered = sorted(i for i in ids if 0 < len(i.encode()) <= 64)
    idmap = IdMap(encode_ids(ordered))
    for row, external in enumerate(ordered):
        assert idmap.row_of(external) == row
        assert idmap.id_of(row) == external
    assert idmap.row_of("\x01never-an-id\x01") == -1 or "\x01never-an-id\x01" in ordered


def test_encode_ids_refuses_unsorted_duplicates_and_nul() -> None:
    with pytest.raises(ValueError, match="sorted ascending"):
        encode_ids(["b", "a"])
    with pytest.raises(ValueError, match="sorted ascending"):
        encode_ids(["a", "a"])
    with pytest.raises(ValueError, match="without NUL"):
        encode_ids(["a\x00"])
