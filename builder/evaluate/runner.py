"""`aisle eval`'s engine room: score a bundle's served pipeline, and baselines, on a held-out split.

Every variant but the global popularity rows runs the engine's own `Recommender` in process (the
stages `aisle serve` runs, over the bundle it would load): the evaluator only chooses the settings.
A variant's slate for a shopper is the first page of `home` (count = k) asked at the split's
moment; the target's rank is its position in the slate, or "not ranked" when absent, so HR@K and
NDCG@K for K ≤ k are exactly the full-ranking metrics of the published protocol, and MRR is MRR@k.

Settings every variant shares: the deadline budget is lifted (the evaluator measures quality;
a request that loses the ranker to a noisy machine would measure the machine) and the first page
never takes SKUs that arrived after the build (there are none offline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np

from artifacts.bundle import Bundle
from builder.evaluate import metrics as m
from builder.evaluate.baselines import popularity_scores
from builder.evaluate.protocols import EvalSplit, Holdout, rank_with_global_scores
from builder.store import Store
from engine.schemas import RecommendQuery
from engine.service import Recommender
from engine.settings import BlendWeights, DeadlineSettings, RankingSettings, RerankSettings, RetrievalSettings, Settings, SourceSpec

KS = (5, 10, 20)
CI_METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
HEAD_SHARE = 0.2  # the most popular items making up this share of the catalog are the "head"
NEW_SHOPPER_MAX_PRIOR = 0  # prior interactions of a "new" shopper
SHORT_HISTORY_MAX = 4  # a returning shopper with at most this many prior interactions is "light"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class VariantResult:
    name: str
    ranks: np.ndarray  # int64 [n]; metrics.NOT_RANKED when the target is not in the slate
    slates: np.ndarray  # int32 [n, k] item rows (the store's), -1 = empty slot
    seconds: float
    fallbacks: dict[str, int]  # degradation steps taken, with counts (should be empty)


def neutral_rerank() -> RerankSettings:
    """Relevance order: no MMR, no caps, no exploration slots, no new-item boost."""
    return RerankSettings(
        mmr_lambda=1.0, max_per_brand=0, max_per_seller=0, max_per_category=0, explore_slots=[], new_item_boost=0.0, fresh_slots=0
    )


def eval_settings(base: Settings) -> Settings:
    return msgspec.structs.replace(base, deadlines=DeadlineSettings(budget_ms=1e9))


def single_source(base: Settings, source: str, k: int = 400) -> Settings:
    """A baseline that is one retrieval source in its own order (no ranker, no re-ranking)."""
    retrieval = msgspec.structs.replace(base.retrieval, home=[SourceSpec(source, k)])
    return msgspec.structs.replace(
        eval_settings(base), retrieval=retrieval, ranking=RankingSettings(enabled=False), rerank=neutral_rerank()
    )


def without_sources(base: Settings, names: tuple[str, ...]) -> Settings:
    plan = [s for s in base.retrieval.home if s.name not in names] or RetrievalSettings().home
    return msgspec.structs.replace(eval_settings(base), retrieval=msgspec.structs.replace(base.retrieval, home=plan))


# The heads objective's two blends compared by `aisle eval` (and the simulated A/B study): clicks
# alone, and clicks plus expected revenue (a click worth 1 currency unit, a purchase its price).
HEAD_BLENDS = {"click": BlendWeights(click=1.0), "revenue": BlendWeights(click=1.0, revenue=1.0)}


def with_objective(base: Settings, objective: str, blend: BlendWeights | None = None) -> Settings:
    ranking = msgspec.structs.replace(base.ranking, objective=objective)
    if blend is not None:
        ranking = msgspec.structs.replace(ranking, blend=blend, blend_by_surface={})
    return msgspec.structs.replace(eval_settings(base), ranking=ranking)


def pipeline_variants(base: Settings, ablation: bool, heads: bool = False) -> dict[str, Settings]:
    """name → settings. "full" is the served configuration; the rest are baselines, with `heads`
    (the bundle has ranking heads) the full pipeline ranked by the legacy ranker and by each heads
    blend, and with `ablation` the full pipeline with one ingredient taken out at a time."""
    variants = {
        "full": eval_settings(base),
        "covisit": single_source(base, "covisit"),
        "ann": single_source(base, "ann"),
    }
    if heads:
        if base.ranking.objective != "legacy":
            variants["full (legacy ranker)"] = with_objective(base, "legacy")
        variants |= {f"full (heads: {name})": with_objective(base, "heads", blend) for name, blend in HEAD_BLENDS.items()}
    if ablation:
        variants |= {
            "full − ranker": msgspec.structs.replace(eval_settings(base), ranking=msgspec.structs.replace(base.ranking, enabled=False)),
            "full − re-ranking": msgspec.structs.replace(eval_settings(base), rerank=neutral_rerank()),
            "full − ann": without_sources(base, ("ann",)),
            "full − co-occurrence": without_sources(base, ("covisit", "copurchase")),
            "full − popularity lists": without_sources(base, ("trending", "category_popular", "popular", "new")),
        }
    return variants


def run_variant(
    name: str, bundle: Bundle, settings: Settings, store: Store, split: EvalSplit, k: int, progress: Progress | None = None
) -> VariantResult:
    """Ask the engine for every held-out shopper's home slate and locate the target in it."""
    started = time.perf_counter()
    rec = Recommender(bundle, settings, live=None)
    try:
        # Store rows → bundle rows through the SKU, and back: the evaluator never assumes the two agree.
        to_store = np.full(len(bundle.items), -1, np.int64)
        bundle_rows = bundle.items.rows_of(list(store.items.sku))
        known = bundle_rows >= 0
        to_store[bundle_rows[known]] = np.flatnonzero(known)
        h = split.holdout
        n = len(h.targets)
        ranks = np.full(n, m.NOT_RANKED, np.int64)
        slates = np.full((n, k), -1, np.int32)
        fallbacks: dict[str, int] = {}
        for i in range(n):
            query = RecommendQuery(surface="home", user_id=str(store.users.user_id[h.users[i]]), count=k)
            _, ctx = rec.run(query, request_id="eval", now=split.now)
            rows = to_store[ctx.candidates.rows[ctx.selected]] if ctx.selected is not None and len(ctx.selected) else np.zeros(0, np.int64)
            slates[i, : len(rows)] = rows[:k]
            hit = np.flatnonzero(rows[:k] == h.targets[i])
            if len(hit):
                ranks[i] = int(hit[0])
            if ctx.fallback:
                fallbacks[ctx.fallback] = fallbacks.get(ctx.fallback, 0) + 1
            if progress is not None and (i % 500 == 0 or i + 1 == n):
                progress(f"eval {name}", i + 1, n)
    finally:
        rec.close()
    return VariantResult(name, ranks, slates, time.perf_counter() - started, fallbacks)


def popularity_variant(name: str, counts: np.ndarray, holdout: Holdout, k: int) -> VariantResult:
    """Everyone gets the same full ranking by `counts` (history masked): the PopRec of the papers."""
    started = time.perf_counter()
    ranks = rank_with_global_scores(counts, holdout)
    order = np.lexsort((np.arange(len(counts)), -counts))
    slates = np.full((len(holdout.targets), k), -1, np.int32)
    for i in range(len(holdout.targets)):
        hist = holdout.history[holdout.history_indptr[i] : holdout.history_indptr[i + 1]]
        head = order[: k + len(hist)]
        slate = head[~np.isin(head, hist)][:k]
        slates[i, : len(slate)] = slate
    ranks = np.where(ranks < k, ranks, m.NOT_RANKED)  # MRR@k, like the pipeline's
    return VariantResult(name, ranks, slates, time.perf_counter() - started, {})


def summarize(
    v: VariantResult, k: int, vectors: np.ndarray, popularity: np.ndarray, bootstrap: int, seed: int, target_value: np.ndarray | None = None
) -> dict:
    """Ranking metrics, slate metrics and bootstrap CIs of one variant; with `target_value` (what
    each shopper's target is worth, e.g. its price) the revenue-weighted NDCG too."""
    out = {key: val for key, val in m.ranking_metrics(v.ranks, tuple(x for x in KS if x <= k)).items() if key != "MRR"}
    if target_value is not None:
        out |= {f"revenue_NDCG@{x}": m.revenue_ndcg(v.ranks, target_value, x) for x in (10, 20) if x <= k}
    out[f"MRR@{k}"] = m.mrr(v.ranks)
    out[f"coverage@{k}"] = m.coverage(v.slates, len(popularity))
    out[f"ILD@{k}"] = m.intra_list_diversity(v.slates, vectors)
    out[f"novelty@{k}"] = m.novelty(v.slates, popularity)
    out[f"head_share@{k}"] = m.popularity_bias(v.slates, popularity, HEAD_SHARE)
    ci = {}
    for name in CI_METRICS:
        cut = int(name.split("@")[1])
        if cut > k:
            continue
        per_user = _per_user(v.ranks, name.split("@")[0], cut)
        ci[name] = list(m.bootstrap_ci(per_user, samples=bootstrap, seed=seed))
    return {"metrics": out, "ci": ci, "seconds": round(v.seconds, 2), "fallbacks": v.fallbacks}


def _per_user(ranks: np.ndarray, metric: str, cut: int) -> np.ndarray:
    inside = ranks < cut
    if metric == "HR":
        return inside.astype(np.float64)
    gains = np.zeros(len(ranks), np.float64)
    gains[inside] = 1.0 / np.log2(ranks[inside].astype(np.float64) + 2.0)
    return gains


def segments(split: EvalSplit, store: Store, popularity: np.ndarray, new_item_days: float) -> dict[str, np.ndarray]:
    """segment name → bool mask over the held-out shoppers."""
    h = split.holdout
    n_head = max(1, int(round(len(popularity) * HEAD_SHARE)))
    head = np.zeros(len(popularity), bool)
    head[np.argsort(-popularity, kind="stable")[:n_head]] = True
    created = store.items.created_at[h.targets]
    new_item = (popularity[h.targets] == 0) | ((created > 0) & (created >= split.now - new_item_days * 86_400))
    return {
        "shopper:new": split.prior <= NEW_SHOPPER_MAX_PRIOR,
        f"shopper:light (1–{SHORT_HISTORY_MAX})": (split.prior > NEW_SHOPPER_MAX_PRIOR) & (split.prior <= SHORT_HISTORY_MAX),
        f"shopper:returning ({SHORT_HISTORY_MAX + 1}+)": split.prior > SHORT_HISTORY_MAX,
        "target:head": head[h.targets],
        "target:tail": ~head[h.targets],
        "target:new item": new_item,
    }


def segment_table(masks: dict[str, np.ndarray], variants: dict[str, VariantResult], k: int) -> dict:
    table = {}
    for seg, mask in masks.items():
        if not mask.any():
            continue
        per = {}
        for name, v in variants.items():
            r = v.ranks[mask]
            per[name] = {key: val for key, val in m.ranking_metrics(r, tuple(x for x in (10, 20) if x <= k)).items() if key != "MRR"}
        table[seg] = {"users": int(mask.sum()), "metrics": per}
    return table


def taste_alignment(truth_taste: np.ndarray, truth_latent: np.ndarray, split: EvalSplit, variants: dict[str, VariantResult]) -> dict[str, float]:
    """Synthetic store only: for each variant, the mean percentile of its recommended items in the
    shopper's true affinity (hidden taste · item latent) over the whole catalog (0.5 = random)."""
    users = split.holdout.users
    out = {}
    rng = np.random.default_rng(0)
    pick = rng.choice(len(users), size=min(len(users), 2000), replace=False)
    affinity = truth_taste[users[pick]] @ truth_latent.T  # [p, n_items]
    sorted_aff = np.sort(affinity, axis=1)
    for name, v in variants.items():
        pct = []
        for j, i in enumerate(pick):
            rows = v.slates[i][v.slates[i] >= 0]
            if len(rows):
                pct.append(np.searchsorted(sorted_aff[j], affinity[j, rows]).mean() / affinity.shape[1])
        out[f"taste_percentile:{name}"] = float(np.mean(pct)) if pct else 0.0
    return out
