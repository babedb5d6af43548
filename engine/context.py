"""The typed request context that flows through the pipeline's stages.

Each stage reads what earlier stages left and writes its own fields; nothing else is shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from artifacts.schema import SURFACE_BY_NAME
from engine.candidates import Candidates
from engine.shopper import Shopper


@dataclass(slots=True)
class RequestFilters:
    """Request-level filters, already resolved to bundle codes/rows."""

    exclude_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    blocked_brands: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    blocked_sellers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    category_nodes: np.ndarray | None = None  # int32 allowed category nodes; None = any
    price_min: float | None = None
    price_max: float | None = None


@dataclass(slots=True)
class RequestContext:
    surface: str  # home | pdp | cart
    shopper: Shopper
    now: int  # epoch seconds of the request
    anchors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32: pdp item / cart items
    region: int = 0  # request region code, else the shopper's
    device: int = 0
    user_vector: np.ndarray | None = None  # float32 [dim], set by ResolveShopper when the tower runs
    # --- set by the serving pipeline -------------------------------------------------------
    count: int = 20
    offset: int = 0  # cursor position: items already shown on earlier pages
    filters: RequestFilters = field(default_factory=RequestFilters)
    candidates: Candidates | None = None
    features: np.ndarray | None = None  # float32 [n, n_features]
    scores: np.ndarray | None = None  # float32 [n] final blended scores
    selected: np.ndarray | None = None  # int32 positions into candidates, final order
    explored: np.ndarray | None = None  # uint8 [len(selected)] 0 exploit, 1 new-item exploration, 2 under-exposed (engine.stages)
    fallback: str | None = None  # the first degradation step taken, if any
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    filtered: int = 0  # candidates removed by filters
    rules: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # FilterCandidates' per-request bitmaps
    started: float = 0.0  # perf_counter at decode
    given: np.ndarray | None = None  # int32 rows to rank instead of retrieving (re-ranking request)
    unranked: list[str] = field(default_factory=list)  # given SKUs the bundle does not know
    variant: str = "default"  # experiment arm: "default", "holdout" or "experiment:variant"
    relevance: np.ndarray | None = None  # float32 [n] the ranker's raw scores (margin), None when it did not run
    value: np.ndarray | None = None  # float32 [n] the heads objective's expected value, None when it did not run
    unit: str = ""  # the assignment unit: user id, else session id, else ""
    arm_share: float = 1.0  # the arm's expected share of its experiment's units (1.0 outside one)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1e3 if self.started else 0.0

    @property
    def surface_code(self) -> int:
        return SURFACE_BY_NAME[self.surface]

    def degrade(self, step: str) -> None:
        if self.fallback is None:
            self.fallback = step
