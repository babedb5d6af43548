"""Calibration maps: each ranking head's raw score → a real probability, as a bundle part.

The builder fits one map per head (builder/calibration.py: isotonic or Platt, chosen on a
held-out slice) on scores the head did not train on; the engine reads the file once per bundle,
turns each map into a `Calibrator` (contiguous knot arrays) and applies it to the head's scores
with kernels/calibrate.py.

Format (JSON object, version 1):

    magic           "AISLE-CALIBRATION"
    format_version  1
    heads           head name -> map, e.g. {"click": {…}, "cart": {…}, "purchase": {…}}

A map (`CalibrationMap`):

    kind            "isotonic" or "platt"
    x, y            isotonic: 2 … MAX_KNOTS knots, x strictly ascending and finite (the head's score
                    scale), y non-decreasing in [0, 1]; linear between knots, flat outside them.
                    platt: both empty.
    a, b            platt: p = 1 / (1 + exp(−(a·s + b))), a ≥ 0 (a map must not invert the
                    head's order), both finite. isotonic: both 0.
    rows            rows the map was fitted on (after dropping zero weights)
    weight          their total weight; positive_weight: the part with label 1
    max_error       isotonic: the largest |Δp| between these knots and the uncompressed fit
                    (builder/calibration.py compresses the fit to a few hundred knots); platt: 0

The provenance fields (rows … max_error) are for people reading the file; the engine uses
kind, x, y, a, b only. Schema evolution as for the manifest: new fields get defaults and go
last; a change old readers would misread bumps FORMAT_VERSION.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

from artifacts.errors import BundleCorruptError
from artifacts.manifest import check_header
from kernels.calibrate import apply_isotonic, apply_platt

MAGIC = "AISLE-CALIBRATION"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
MIN_KNOTS = 2  # one knot cannot say where a piecewise-linear map starts and ends
MAX_KNOTS = 4096  # the builder writes a few hundred; far more is a damaged or hand-made file
HEAD_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class CalibrationMap(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["isotonic", "platt"]
    x: list[float] = []
    y: list[float] = []
    a: float = 0.0
    b: float = 0.0
    rows: int = 0
    weight: float = 0.0
    positive_weight: float = 0.0
    max_error: float = 0.0


class CalibrationFile(msgspec.Struct, frozen=True, kw_only=True):
    magic: str = MAGIC
    format_version: int = FORMAT_VERSION
    heads: dict[str, CalibrationMap]


class Calibrator:
    """One map ready for the hot path: its knots as contiguous float64 arrays, made once per
    bundle so a request only pays the kernel."""

    __slots__ = ("kind", "x", "y", "a", "b")

    def __init__(self, cmap: CalibrationMap) -> None:
        self.kind = cmap.kind
        self.x = np.ascontiguousarray(cmap.x, dtype=np.float64)
        self.y = np.ascontiguousarray(cmap.y, dtype=np.float64)
        self.a = float(cmap.a)
        self.b = float(cmap.b)

    def apply(self, scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of `scores` (float32 or float64 [n], 1-D): into `out` (float32 or float64
        [n], may be `scores` itself to calibrate in place) or a new float64 [n] array; returns
        the array written. NaN score → NaN (kernels/calibrate.py)."""
        if out is None and scores.ndim == 1:
            out = np.empty(scores.shape[0], dtype=np.float64)
        if scores.ndim != 1 or out is None or out.shape != scores.shape:
            got = "none" if out is None else out.shape
            raise ValueError(f"calibration needs 1-D scores and an output of the same shape, got {scores.shape} and {got}")
        if self.kind == "isotonic":
            apply_isotonic(scores, self.x, self.y, out)
        else:
            apply_platt(scores, self.a, self.b, out)
        return out


def calibrators(maps: Mapping[str, CalibrationMap]) -> dict[str, Calibrator]:
    """head name -> Calibrator, for every map (checked maps: from `read_calibration`)."""
    return {name: Calibrator(cmap) for name, cmap in maps.items()}


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CalibrationFile)


def encode_calibration(maps: Mapping[str, CalibrationMap]) -> bytes:
    """The file's bytes (indented: people read it), after the same checks the reader makes."""
    check_maps(maps, "calibration maps (not written)")
    body = _encoder.encode(CalibrationFile(heads=dict(maps)))
    return msgspec.json.format(body, indent=1) + b"\n"


def write_calibration(path: Path, maps: Mapping[str, CalibrationMap]) -> None:
    raw = encode_calibration(maps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)


def parse_calibration(raw: bytes, where: str) -> dict[str, CalibrationMap]:
    """Decode and check calibration maps. Raises BundleFormatError (made by a newer builder) or
    BundleCorruptError (anything else wrong), naming `where`."""
    check_header(raw, where, what="calibration maps", magic=MAGIC, supported=SUPPORTED_FORMAT_VERSIONS,
                 not_ours="corrupt calibration maps", use="serve")  # fmt: skip
    try:
        decoded = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleCorruptError(f"{where}: corrupt calibration maps: {exc}") from exc
    check_maps(decoded.heads, where)
    return dict(decoded.heads)


def read_calibration(path: Path) -> dict[str, CalibrationMap]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise BundleCorruptError(f"{path}: missing calibration maps") from exc
    return parse_calibration(raw, str(path))


def check_maps(maps: Mapping[str, CalibrationMap], where: str) -> None:
    """Raise BundleCorruptError unless there is at least one head, every name is plain and every
    map is well formed (`map_problems`); the kernels then run without further checks."""
    problems: list[str] = []
    if not maps:
        problems.append("no heads (expected at least one map)")
    for name, cmap in maps.items():
        if not isinstance(name, str) or not HEAD_NAME.fullmatch(name):
            problems.append(f"head name {name!r} is not 1-64 characters of letters, digits, '_', '.', ':', '-'")
        problems += [f"head {name!r}: {p}" for p in map_problems(cmap)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BundleCorruptError(f"{where}: corrupt calibration maps: {shown}")


def map_problems(cmap: CalibrationMap) -> list[str]:
    """What is wrong with one map (empty when nothing is)."""
    problems: list[str] = []
    provenance = (cmap.weight, cmap.positive_weight, cmap.max_error)
    if cmap.rows < 0 or not all(math.isfinite(v) and v >= 0 for v in provenance) or cmap.positive_weight > cmap.weight:
        problems.append(f"provenance is not counts (rows {cmap.rows}, weight {cmap.weight}, "
                        f"positive_weight {cmap.positive_weight}, max_error {cmap.max_error})")  # fmt: skip
    if cmap.kind == "platt":
        if cmap.x or cmap.y:
            problems.append(f"a platt map carries {len(cmap.x)} x and {len(cmap.y)} y knots (expected none)")
        if not (math.isfinite(cmap.a) and math.isfinite(cmap.b)):
            problems.append(f"platt parameters are not finite (a {cmap.a}, b {cmap.b})")
        elif cmap.a < 0:
            problems.append(f"platt slope a = {cmap.a} is negative: the map would invert the head's order (expected a ≥ 0)")
        return problems
    if cmap.a != 0.0 or cmap.b != 0.0:
        problems.append(f"an isotonic map carries platt parameters (a {cmap.a}, b {cmap.b}; expected 0)")
    x, y = cmap.x, cmap.y
    if len(x) != len(y):
        problems.append(f"{len(x)} x knots but {len(y)} y knots (expected the same number)")
        return problems
    if not MIN_KNOTS <= len(x) <= MAX_KNOTS:
        problems.append(f"{len(x)} knots (expected {MIN_KNOTS} to {MAX_KNOTS})")
        return problems
    if not all(math.isfinite(v) for v in (*x, *y)):
        problems.append("a knot is not finite")
        return problems
    if any(b <= a for a, b in zip(x, x[1:])):
        problems.append("x knots are not strictly ascending")
    if any(b < a for a, b in zip(y, y[1:])):
        problems.append("y knots decrease: the map is not monotone")
    if min(y) < 0.0 or max(y) > 1.0:
        problems.append(f"y knots leave [0, 1] (min {min(y)!r}, max {max(y)!r})")
    return problems
