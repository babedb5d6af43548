"""Baselines computed in the same run and on the same split as the pipeline."""

from __future__ import annotations

import numpy as np

from builder.evaluate.protocols import Holdout, sequences
from builder.store import Store


def popularity_scores(store: Store, exclude: Holdout | None = None) -> np.ndarray:
    """float64 [n_items] interaction counts. With `exclude`, the held-out targets are not counted
    (leak-free); without, every interaction counts (the published PopRec row does this)."""
    _, _, items = sequences(store)
    counts = np.bincount(items, minlength=len(store.items)).astype(np.float64)
    if exclude is not None:
        counts -= np.bincount(exclude.targets, minlength=len(store.items))
    return counts
