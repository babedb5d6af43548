"""Candidates as a struct of arrays: the unit every stage after retrieval works on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Candidates:
    rows: np.ndarray  # int32 [n] item rows, unique
    source_scores: np.ndarray  # float32 [n, n_sources]; 0 = not proposed by that source
    source: np.ndarray  # uint8 [n] the first source (in plan order) that proposed the item
    anchors: np.ndarray  # int32 [n, n_sources] item row that explains each proposal, -1 if none

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def take(self, positions: np.ndarray) -> Candidates:
        return Candidates(self.rows[positions], self.source_scores[positions], self.source[positions], self.anchors[positions])
