"""The typed request context that flows through the pipeline's stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from artifacts.schema import SURFACE_BY_NAME
from engine.shopper import Shopper


@dataclass(slots=True)
class RequestContext:
    surface: str  # home | pdp | cart
    shopper: Shopper
    now: int  # epoch seconds of the request
    anchors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32: pdp item / cart items
    region: int = 0  # request region code, else the shopper's
    device: int = 0
    user_vector: np.ndarray | None = None  # float32 [dim], set by ResolveShopper when the tower runs

    @property
    def surface_code(self) -> int:
        return SURFACE_BY_NAME[self.surface]
