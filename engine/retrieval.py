"""RetrieveCandidates: run a surface's sources (settings order) and merge them into Candidates."""

from __future__ import annotations

import numpy as np

from artifacts.featurespec import SOURCE_ID, SOURCE_NAMES
from engine.candidates import Candidates
from engine.catalog import CatalogView
from engine.context import RequestContext
from engine.settings import SourceSpec
from engine.sources import CandidateSource
from kernels.merge import merge_candidates


def retrieve(
    view: CatalogView, ctx: RequestContext, plan: list[SourceSpec], sources: dict[str, CandidateSource]
) -> Candidates:
    rows, scores, src, anchors = [], [], [], []
    for spec in plan:
        r, s, a = sources[spec.name].retrieve(view, ctx, spec.k)
        rows.append(r)
        scores.append(s)
        anchors.append(a)
        src.append(np.full(len(r), SOURCE_ID[spec.name], np.uint8))
    uniq, mat, first, anchors_by_source = merge_candidates(
        np.concatenate(rows).astype(np.int32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(src),
        np.concatenate(anchors).astype(np.int32),
        len(SOURCE_NAMES),
        view.slot_of,
    )
    return Candidates(uniq, mat, first, anchors_by_source)
