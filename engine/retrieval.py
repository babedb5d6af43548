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


# Sources backed by the vector index: for given candidates the index is not searched; the score it
# would approximate (cosine to the shopper's vector, or to the best anchor) is computed exactly.
VECTOR_SOURCES = frozenset({"ann", "similar"})


def score_given(
    view: CatalogView, ctx: RequestContext, plan: list[SourceSpec], sources: dict[str, CandidateSource], given: np.ndarray
) -> Candidates:
    """Re-ranking: the given rows (int32, unique) as the candidates, with the source scores the
    ranker was trained on. The plan's other sources run as usual and contribute their score for
    any given item they propose; vector sources score every given item exactly. An item no source
    proposes keeps zeros, as a retrieved item would for the sources that missed it."""
    n = len(given)
    n_sources = len(SOURCE_NAMES)
    mat = np.zeros((n, n_sources), np.float32)
    anchors = np.full((n, n_sources), -1, np.int32)
    first = np.full(n, 255, np.uint8)  # 255: no source yet
    if n == 0:
        return Candidates(given, mat, np.zeros(0, np.uint8), anchors)
    vecs = None
    others = [spec for spec in plan if spec.name not in VECTOR_SOURCES]
    if others:
        found = retrieve(view, ctx, others, sources)
        slot = view.slot_of  # catalog-sized scratch, all -1 between uses
        slot[given] = np.arange(n, dtype=np.int32)
        try:
            pos = slot[found.rows]
        finally:
            slot[given] = -1
        hit = pos >= 0
        mat[pos[hit]] = found.source_scores[hit]
        anchors[pos[hit]] = found.anchors[hit]
        first[pos[hit]] = found.source[hit]
    for spec in plan:
        if spec.name not in VECTOR_SOURCES:
            continue
        sid = SOURCE_ID[spec.name]
        if vecs is None:
            vecs = np.asarray(view.vectors[given], dtype=np.float32)
        if spec.name == "ann" and ctx.user_vector is not None:
            mat[:, sid] = vecs @ ctx.user_vector + 1.0  # the ANN source's score: cosine + 1
        elif spec.name == "similar":
            valid = ctx.anchors[(ctx.anchors >= 0) & (ctx.anchors < view.n_items)]
            if len(valid) == 0:
                continue
            sims = vecs @ np.asarray(view.vectors[valid], dtype=np.float32).T
            best = sims.argmax(axis=1)
            mat[:, sid] = sims[np.arange(n), best] + 1.0
            anchors[:, sid] = valid[best]
            mat[np.isin(given, valid), sid] = 0.0  # an anchor is not similar to itself
        else:
            continue
        first[(first == 255) & (mat[:, sid] > 0)] = sid
    first[first == 255] = SOURCE_ID["popular"]
    return Candidates(given, mat, first, anchors)
