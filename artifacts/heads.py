"""The ranking heads (`models/heads.json`, `models/heads/<name>.so`, `models/calibration.json`):
loading them and turning a candidate feature matrix into calibrated probabilities.

Three heads (docs/ranking-objectives.md), each a LightGBM binary model compiled like the ranker
(builder/ranker.compile_model, same C ABI, artifacts/ranker.CompiledRanker loads it):

    click      P(click | shown)            trained on logged impressions, corrected for position
    cart       P(add-to-cart | click)      trained on clicked impressions
    purchase   P(purchase | click)         clicked impressions, delayed conversions weighted

A head trained with the slot as a feature (`slot_column`) takes one more column than the feature
spec: the engine asks it for slot 0 (the top, always looked at), so every candidate is scored as if
shown in the same place and the slot no longer confounds the order.

`models/heads.json` (JSON object, version 1):

    magic           "AISLE-HEADS"
    format_version  1
    heads           name -> {library, n_features, slot_column, trees, calibration}

`calibration` names the head's map in `models/calibration.json` (artifacts/calibration.py). The
part is optional: a bundle without it serves with the ranker (the `legacy` objective).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

from artifacts import layout
from artifacts.bundle import Bundle
from artifacts.calibration import Calibrator, read_calibration
from artifacts.errors import BundleCorruptError
from artifacts.manifest import check_header
from artifacts.ranker import CompiledRanker

MAGIC = "AISLE-HEADS"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
HEAD_NAMES = ("click", "cart", "purchase")


class HeadSpec(msgspec.Struct, frozen=True, kw_only=True):
    library: str  # bundle-relative path of the compiled head
    n_features: int  # columns the library takes: the feature spec's, plus one with a slot column
    slot_column: bool = False  # the last column is the slot (0-based); the engine passes 0
    trees: int = 0
    calibration: str = ""  # the map's name in models/calibration.json ("" = the head's name)


class HeadsFile(msgspec.Struct, frozen=True, kw_only=True):
    magic: str = MAGIC
    format_version: int = FORMAT_VERSION
    heads: dict[str, HeadSpec]


_encoder = msgspec.json.Encoder()


def write_heads_spec(path: Path, heads: dict[str, HeadSpec]) -> None:
    missing = [name for name in HEAD_NAMES if name not in heads]
    if missing:
        raise ValueError(f"heads spec without {', '.join(missing)}: the engine blends all of {', '.join(HEAD_NAMES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(_encoder.encode(HeadsFile(heads=heads)), indent=1) + b"\n")


def read_heads_spec(path: Path) -> HeadsFile:
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BundleCorruptError(f"{where}: cannot read the heads spec ({exc.strerror or exc})") from exc
    check_header(raw, where, what="heads spec", magic=MAGIC, supported=SUPPORTED_FORMAT_VERSIONS,
                 not_ours="not an Aisle heads spec", use="serve its ranking heads")
    try:
        spec = msgspec.json.decode(raw, type=HeadsFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleCorruptError(f"{where}: not a valid heads spec ({exc})") from exc
    missing = [name for name in HEAD_NAMES if name not in spec.heads]
    if missing:
        raise BundleCorruptError(f"{where}: no {', '.join(missing)} head; the file names {', '.join(spec.heads) or 'none'}")
    return spec


class HeadScores(msgspec.Struct, frozen=True):
    """Calibrated probabilities, float32 [n] each, for n candidates."""

    click: np.ndarray  # P(click | shown at the top)
    cart: np.ndarray  # P(add-to-cart | click)
    purchase: np.ndarray  # P(purchase | click)


class RankingHeads:
    """The three compiled heads and their calibrators, opened once per bundle per worker."""

    __slots__ = ("_libs", "_slot", "_calibrators", "n_features")

    def __init__(self, bundle: Bundle, n_features: int) -> None:
        spec = read_heads_spec(bundle.path(layout.HEADS_SPEC))
        maps = read_calibration(bundle.path(layout.CALIBRATION))
        self.n_features = n_features
        self._libs: dict[str, CompiledRanker] = {}
        self._slot: dict[str, bool] = {}
        self._calibrators: dict[str, Calibrator] = {}
        try:
            for name in HEAD_NAMES:
                h = spec.heads[name]
                expected = n_features + (1 if h.slot_column else 0)
                if h.n_features != expected:
                    raise BundleCorruptError(
                        f"{bundle.path(layout.HEADS_SPEC)}: head {name!r} takes {h.n_features} columns, the feature spec "
                        f"gives {n_features}{' plus the slot' if h.slot_column else ''}: rebuild the bundle"
                    )
                cal = h.calibration or name
                if cal not in maps:
                    raise BundleCorruptError(f"{bundle.path(layout.CALIBRATION)}: no calibration map {cal!r} for head {name!r}")
                self._libs[name] = CompiledRanker(bundle.path(h.library), n_features=h.n_features)
                self._slot[name] = h.slot_column
                self._calibrators[name] = Calibrator(maps[cal])
        except BaseException:
            self.close()
            raise

    def predict(self, X: np.ndarray) -> HeadScores:
        """X: float32 [n, n_features], C-contiguous (the engine's feature matrix). Raises
        ValueError on a malformed X or closed heads; a head's library error is a RuntimeError."""
        if not self._libs:
            raise ValueError("the ranking heads were closed (their bundle was swapped out)")
        with_slot: np.ndarray | None = None
        out: dict[str, np.ndarray] = {}
        for name, lib in self._libs.items():
            if self._slot[name]:
                if with_slot is None:
                    # One copy per request (400 × 40 floats ≈ 64 KB): the slot column is 0, the top.
                    with_slot = np.zeros((X.shape[0], X.shape[1] + 1), dtype=np.float32)
                    with_slot[:, : X.shape[1]] = X
                margin = lib.predict(with_slot)
            else:
                margin = lib.predict(X)
            out[name] = self._calibrators[name].apply(margin, margin)  # in place: float32
        return HeadScores(out["click"], out["cart"], out["purchase"])

    def close(self) -> None:
        for lib in self._libs.values():
            lib.close()
        self._libs = {}


def load_heads(bundle: Bundle, n_features: int) -> RankingHeads | None:
    """The bundle's heads, or None when it has none (built before them, or without logged
    impressions to train them on)."""
    if not bundle.has(layout.HEADS_SPEC):
        return None
    return RankingHeads(bundle, n_features)
