"""`manifest.json`: the bundle's table of contents and its integrity record (DESIGN.md §4).

Written last by the builder. Readers check, in order: it decodes as JSON with the right `magic`;
its `format_version` is one this code reads (else "made by a newer builder"); its own `checksum`
(sha256 over the manifest encoded with an empty checksum) matches; then every listed file has the
recorded size and, when asked, the recorded sha256.

Schema evolution: new fields get defaults and go last; a field is never retyped; a change that old
readers would misread bumps FORMAT_VERSION.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from artifacts.errors import BundleCorruptError, BundleFormatError

MAGIC = "AISLE-BUNDLE"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})


class FileEntry(msgspec.Struct, frozen=True):
    size: int
    sha256: str


class ArrayEntry(msgspec.Struct, frozen=True):
    dtype: str
    shape: list[int]


class FeatureEntry(msgspec.Struct, frozen=True):
    name: str
    group: str
    doc: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    magic: str = MAGIC
    format_version: int = FORMAT_VERSION
    build_id: str
    created_at: str  # ISO-8601 UTC
    builder_version: str
    inputs: dict[str, str]  # input file name -> sha256
    config: dict[str, Any]  # the BuildConfig, as plain data
    counts: dict[str, int]  # items, users, events, categories, brands, ...
    dims: dict[str, int]  # embedding dim, history_len, n_features, ...
    vocab_sizes: dict[str, int]
    arrays: dict[str, ArrayEntry]  # relative path of each .npy -> dtype, shape
    files: dict[str, FileEntry]  # relative path of every file -> size, sha256
    feature_spec: list[FeatureEntry]
    eval: dict[str, float]
    stage_seconds: dict[str, float]
    notes: list[str] = []
    checksum: str = ""


_encoder = msgspec.json.Encoder(order="sorted")


def _digest(manifest: Manifest) -> str:
    body = _encoder.encode(msgspec.structs.replace(manifest, checksum=""))
    return hashlib.sha256(body).hexdigest()


def seal(manifest: Manifest) -> bytes:
    """The manifest's final bytes, with its checksum filled in (pretty-printed: people read it)."""
    sealed = msgspec.structs.replace(manifest, checksum=_digest(manifest))
    return msgspec.json.format(_encoder.encode(sealed), indent=2) + b"\n"


class _Probe(msgspec.Struct):
    magic: str = ""
    format_version: int = -1


def check_header(raw: bytes, where: str, *, what: str, magic: str, supported: frozenset[int] | set[int], not_ours: str, use: str) -> None:
    """The two fields every versioned JSON file of a bundle opens with (the manifest, the drift
    reference): `magic` must match and `format_version` be one this code reads. Raises
    BundleFormatError for a newer version ("made by a newer builder … upgrade Aisle to `use` it"),
    BundleCorruptError for anything else, `not_ours` prefixing a wrong magic."""
    try:
        probe = msgspec.json.decode(raw, type=_Probe)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleCorruptError(f"{where}: corrupt {what}: not a JSON object ({exc})") from exc
    if probe.magic != magic:
        raise BundleCorruptError(f"{where}: {not_ours}: magic is {probe.magic!r}, expected {magic!r}")
    if probe.format_version not in supported:
        if probe.format_version > max(supported):
            raise BundleFormatError(
                f"{where}: made by a newer builder: {what} format_version {probe.format_version}, this Aisle reads "
                f"{sorted(supported)}; upgrade Aisle to {use} it"
            )
        raise BundleCorruptError(f"{where}: corrupt {what}: format_version {probe.format_version} is not valid")


def parse(raw: bytes, where: str) -> Manifest:
    """Decode and check a manifest. Raises BundleFormatError (newer) or BundleCorruptError."""
    check_header(raw, where, what="manifest", magic=MAGIC, supported=SUPPORTED_FORMAT_VERSIONS,
                 not_ours="corrupt or not an Aisle bundle", use="serve")  # fmt: skip
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except msgspec.ValidationError as exc:
        raise BundleCorruptError(f"{where}: corrupt manifest: {exc}") from exc
    if manifest.checksum != _digest(manifest):
        raise BundleCorruptError(f"{where}: corrupt manifest: its checksum does not match its content")
    return manifest
