"""`aisle build`: canonical store → verified, published bundle (DESIGN.md §3–§4).

Stages, in order (each a module of builder/):
 1. ingest + id maps            builder.ingest          → items/, users/, vocab.json
 2. two-tower + ONNX            builder.twotower        → models/user_tower.onnx, embeddings/items.npy
 3. ANN index                   builder.index           → index/items.usearch
 4. tables as of the cut-off    builder.tables          → (training view only)
 5. ranker                      builder.ranker_data + builder.ranker → models/ranker.*
    ranking heads               builder.impressions + builder.heads  → models/heads*, models/calibration.json
 6. tables as of now            builder.tables          → tables/, lists/, item statistics
 7. shopper snapshot            builder.snapshot        → features/shoppers.lmdb
 8. manifest, publish           artifacts.publish       → <root>/<build_id>/, <root>/current

Leakage: the two-tower model and the ranker's candidates/features use only behaviour before the
cut-off (end − ranker.label_window_days); the ranker's labels come from the window after it, and so
do the heads' examples (the slates logged after the cut-off, scored as of the cut-off). The
served tables and snapshot are then rebuilt on everything, so serving is as fresh as the data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import numpy as np

from artifacts import layout
from artifacts.bundle import Vocab, open_bundle, open_staging, write_vocab
from artifacts.drift import write_reference
from artifacts.featurespec import FEATURE_NAMES, FEATURES, check_spec
from artifacts.idmap import encode_ids
from artifacts.manifest import FeatureEntry, Manifest
from artifacts.publish import current_build_id, finalize, inventory, release_staging, save_array, set_current, staging_dir, sweep_staging
from artifacts.ranker import CompiledRanker
from builder import gate
from builder.config import BuildConfig
from builder.drift import drift_reference
from builder.heads import HeadsError, train_heads, write_heads
from builder.impressions import logged_slates, slate_examples
from builder.index import build_index
from builder.ingest import load_store
from builder.metrics import grouped_metrics
from builder.progress import ConsoleProgress, Progress
from builder.ranker import train_ranker
from builder.ranker_data import build_training_set, sample_queries
from builder.snapshot import write_snapshot
from builder.store import IngestReport, Store
from builder.tables import DAY, TYPE_WEIGHT, build_tables
from builder.twotower import train_two_tower
from engine.catalog import CatalogView
from engine.settings import RetrievalSettings

BUILDER_VERSION = "0.1.0"
# Linked (not copied) from the bundle into the ranker's training view: the parts that do not
# depend on the cut-off.
SHARED_PARTS = (layout.VOCAB, layout.ITEM_SKU, layout.ITEM_VECTORS, layout.ITEM_INDEX, layout.USER_TOWER)


@dataclass(frozen=True)
class BuildResult:
    build_id: str
    path: Path
    manifest: Manifest
    seconds: float


class BuildError(RuntimeError):
    """A build that cannot produce a bundle (the message says why); nothing was published."""


def _build_id(store: Store, config: BuildConfig, when: datetime, variant: str = "") -> str:
    digest = hashlib.sha256(msgspec.json.encode(config))
    for name, sha in sorted(store.report.fingerprints.items()):
        digest.update(f"{name}={sha}".encode())
    # Evaluation builds several bundles from one input (held-out splits): the variant tells them apart.
    digest.update(variant.encode())
    return f"{when:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"


def _cutoff(store: Store, window_days: float) -> tuple[int, int]:
    """(cut-off, end): end is just after the last event; the cut-off leaves the label window after
    it, or the last 20% of interactions when the window would swallow more than half the data."""
    ev = store.events
    inter = ev.ts[TYPE_WEIGHT[ev.type] > 0]
    if len(inter) < 10:
        raise BuildError(f"only {len(inter)} interactions (click, add_to_cart, purchase) in the events: too few to build on")
    end = int(ev.ts.max()) + 1
    cutoff = end - int(window_days * DAY)
    after = float((inter >= cutoff).mean())
    if after > 0.5 or after == 0.0:
        cutoff = int(np.quantile(inter, 0.8))
    return cutoff, end


def _write_item_table(store: Store, out: Path) -> None:
    items = store.items
    save_array(out, layout.ITEM_SKU, encode_ids(items.sku))
    for name in ("category", "cat_top", "brand", "seller", "price", "discount", "stock_qty", "created_at"):
        save_array(out, layout.item_column(name), getattr(items, name).astype(layout.ITEM_COLUMNS[name]))
    save_array(out, layout.item_column("in_stock"), items.in_stock.astype(np.uint8))
    encoded = [str(t).encode("utf-8") for t in items.title]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    save_array(out, layout.ITEM_TITLE_OFFSETS, offsets)
    save_array(out, layout.ITEM_TITLE_BYTES, np.frombuffer(b"".join(encoded), dtype=np.uint8))
    write_vocab(
        out / layout.VOCAB,
        Vocab(
            category_path=store.categories.path,
            category_parent=store.categories.parent,
            category_depth=store.categories.depth,
            brands=store.brands,
            sellers=store.sellers,
            regions=store.regions,
            devices=store.devices,
        ),
    )


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem: copy
        shutil.copyfile(src, dst)


def dropped_counts(report: IngestReport) -> dict[str, int]:
    """The manifest's counts of what ingest read and left out (builder.ingest.screen)."""
    return {
        "events_read": sum(n for name, n in report.rows_read.items() if name.startswith("events.")),
        "events_future": report.events_future,
        "events_too_old": report.events_too_old,
        "events_unknown_sku": report.events_unknown_sku,
        "bot_shoppers": len(report.bot_user_ids),
        "bot_events": report.bot_events,
    }


def screening_summary(counts: dict[str, int]) -> str:
    """One line on what a bundle learned from and what was left out, from its manifest counts."""
    dropped = [
        f"{counts.get('events_future', 0):,} dated in the future",
        f"{counts.get('events_too_old', 0):,} too old",
        f"{counts.get('events_unknown_sku', 0):,} for unknown SKUs",
        f"{counts.get('bot_events', 0):,} of {counts.get('bot_shoppers', 0):,} bots",
    ]
    return f"events: {counts.get('events', 0):,} learned from of {counts.get('events_read', 0):,} read; dropped " + ", ".join(dropped)


def _finite(evaluation: dict[str, float], note) -> dict[str, float]:
    """The manifest's evaluation entries; a non-finite one (an undefined metric on a degenerate
    validation set) is left out and named, since JSON has no NaN and the manifest must read back."""
    kept = {k: float(v) for k, v in evaluation.items() if np.isfinite(v)}
    for k in sorted(set(evaluation) - set(kept)):
        note(f"eval: {k} is undefined on this data ({evaluation[k]}); left out of the manifest")
    return kept


def _ranking_heads(
    store: Store, view: CatalogView, cutoff: int, end: int, config: BuildConfig, retrieval: RetrievalSettings,
    staging: Path, console: Progress, evaluation: dict[str, float],
) -> dict[str, int]:
    """Train, calibrate and compile the ranking heads on the slates logged after the cut-off, into
    the staging bundle; adds their held-out metrics to `evaluation`, returns the manifest counts.
    Raises HeadsError when the log has too few slates or conversions."""
    note = getattr(console, "note", lambda message: None)
    hc = config.heads
    slates = logged_slates(store, since_ts=cutoff)
    if slates.n_slates < 100:
        raise HeadsError(f"{slates.n_slates} logged slates (impressions with positions) after the cut-off; need at least 100")
    if slates.n_slates > hc.max_slates:
        rng = np.random.default_rng(hc.seed)
        slates = slates.take(np.sort(rng.choice(slates.n_slates, hc.max_slates, replace=False)))
    try:
        data = slate_examples(store, view, slates, cutoff, config.recent_items, hc.valid_fraction, retrieval, console)
    except ValueError as exc:
        raise HeadsError(str(exc)) from exc
    heads = train_heads(store, data, hc, end - 1)
    for name, head in heads.items():
        m = head.calibrated
        note(f"head {name}: {head.train_rows:,} rows, {head.train_positives:,} positives; held out: ECE {m.ece:.4f} "
             f"(noise floor {m.ece_floor:.4f}, uncalibrated {head.raw.ece:.4f}), log loss {m.log_loss:.4f}, AUC {m.auc:.3f} ({head.calibration_kind})")
    evaluation |= write_heads(heads, data, staging, config.ranker, note)
    counts = {"heads_slates_train": data.slates["train"], "heads_slates_valid": data.slates["valid"]}
    counts |= {f"head_{name}_rows": head.train_rows for name, head in heads.items()}
    return counts


def build(
    data_dir: Path,
    out_root: Path,
    config: BuildConfig,
    progress: Progress | None = None,
    publish: bool = True,
    allow_worse: bool = False,
) -> BuildResult:
    """Build, verify and (by default) publish a bundle. Nothing under out_root changes unless the
    whole build succeeds: input that cannot be ingested fails before anything is written, and a
    later failure removes its staging directories and, if it came after the bundle was renamed into
    place, the bundle too (builder.gate's refusal alone keeps it, unpublished). Events screened out
    at ingest (clock, unknown SKUs, bots) are counted in the manifest (`dropped_counts`)."""
    t0 = time.monotonic()
    store = load_store(Path(data_dir), config.clock, config.bots)
    return build_store(store, out_root, config, progress, publish, ingest_seconds=time.monotonic() - t0, allow_worse=allow_worse)


def build_store(
    store: Store,
    out_root: Path,
    config: BuildConfig,
    progress: Progress | None = None,
    publish: bool = True,
    variant: str = "",
    ingest_seconds: float = 0.0,
    allow_worse: bool = False,
) -> BuildResult:
    """`build` from an already loaded (possibly held-out) store; `variant` names it in the build id.

    Publishing passes the evaluation gate first (builder.gate): a bundle worse than the current one
    by more than config.gate.margin stays built under out_root but `current` is not moved, and
    GateRefused says why, unless `allow_worse`."""
    console = progress or ConsoleProgress()
    note = getattr(console, "note", lambda message: None)
    t_start = time.monotonic() - ingest_seconds
    stage_seconds: dict[str, float] = {"ingest": round(ingest_seconds, 3)}

    def timed(name: str, t0: float) -> None:
        stage_seconds[name] = round(time.monotonic() - t0, 3)
        note(f"{name}: {stage_seconds[name]:.1f}s")

    check_spec(FEATURE_NAMES)
    when = datetime.now(timezone.utc)
    build_id = _build_id(store, config, when, variant)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    if (out_root / build_id).exists():
        raise BuildError(f"{out_root / build_id} already exists (same inputs and config built this second)")
    for stale in sweep_staging(out_root):
        note(f"removed {stale.name}: the staging directory of a build that died before cleaning up")
    staging = staging_dir(out_root, build_id)
    train_dir = staging_dir(out_root, f"train-{build_id}")
    try:
        cutoff, end = _cutoff(store, config.ranker.label_window_days)
        note(f"build {build_id}: {len(store.items):,} items, {len(store.users):,} shoppers, {len(store.events):,} events; "
             f"cut-off {datetime.fromtimestamp(cutoff, timezone.utc):%Y-%m-%d %H:%M}Z")
        for line in store.report.notes:
            note(line)

        t0 = time.monotonic()
        _write_item_table(store, staging)
        save_array(staging, layout.USER_IDS, encode_ids(store.users.user_id))
        timed("id_maps", t0)

        t0 = time.monotonic()
        (staging / "models").mkdir(parents=True, exist_ok=True)
        tower = train_two_tower(store, config.two_tower, until_ts=cutoff, out_dir=staging / "models", progress=console)
        save_array(staging, layout.ITEM_VECTORS, tower.item_vectors.astype(np.float32))
        timed("two_tower", t0)

        t0 = time.monotonic()
        (staging / layout.ITEM_INDEX).parent.mkdir(parents=True, exist_ok=True)
        index_info = build_index(tower.item_vectors, config.index, staging / layout.ITEM_INDEX)
        timed("index", t0)

        t0 = time.monotonic()
        _write_item_table(store, train_dir)
        for rel in SHARED_PARTS:
            _link(staging / rel, train_dir / rel)
        build_tables(store, cutoff, config.tables, train_dir)
        timed("tables_cutoff", t0)

        t0 = time.monotonic()
        retrieval = RetrievalSettings()
        train_view = CatalogView(open_staging(train_dir), load_snapshot=False, expansion_search=config.index.expansion_search)
        window_end = cutoff + int(config.ranker.label_window_days * DAY)
        queries = sample_queries(store, cutoff, max(window_end, end), config.ranker.max_queries, config.ranker.seed)
        data = build_training_set(
            store, train_view, queries, cutoff, config.recent_items, config.ranker.valid_fraction, retrieval, console
        )
        timed("ranker_data", t0)

        t0 = time.monotonic()
        ranker = train_ranker(
            data.X["train"], data.y["train"], data.groups["train"],
            data.X["valid"], data.y["valid"], data.groups["valid"],
            list(FEATURE_NAMES), config.ranker, staging / "models", progress=note,
            early_stopping_rounds=config.ranker.early_stopping_rounds,
        )
        compiled = CompiledRanker(staging / layout.RANKER_LIB, n_features=len(FEATURE_NAMES))
        scores = compiled.predict(data.X["valid"])
        # The drift monitor's reference: feature and raw-score histograms (builder/drift.py says which rows).
        write_reference(staging / layout.DRIFT_REFERENCE, drift_reference(data, scores))
        retrieval_order = -np.concatenate([np.arange(g, dtype=np.float32) for g in data.groups["valid"]])
        evaluation = {f"ranker_{k}": v for k, v in grouped_metrics(scores, data.y["valid"], data.groups["valid"]).items()}
        evaluation |= {f"retrieval_{k}": v for k, v in grouped_metrics(retrieval_order, data.y["valid"], data.groups["valid"]).items()}
        evaluation |= {f"recall_{s}": v for s, v in data.recall.items()}
        evaluation |= {
            "ranker_valid_ndcg@10_lightgbm": float(ranker.valid_ndcg_at_10),
            "ranker_parity_max_abs_diff": float(ranker.max_abs_diff_vs_lightgbm),
            "user_tower_onnx_max_abs_diff": float(tower.max_abs_diff_onnx_vs_torch),
            "item_tower_onnx_max_abs_diff": float(tower.max_abs_diff_item_tower),
            "index_self_hit_rate": float(index_info.self_hit_rate),
            "candidates_per_query": float(data.candidates_mean),
        }
        del compiled
        timed("ranker", t0)

        head_counts: dict[str, int] = {}
        if config.heads.enabled:
            t0 = time.monotonic()
            try:
                head_counts = _ranking_heads(store, train_view, cutoff, end, config, retrieval, staging, console, evaluation)
            except HeadsError as exc:
                note(f"no ranking heads in this bundle (the engine's legacy objective only): {exc}")
            timed("heads", t0)
        del train_view

        backtest_result = None
        if config.gate.enabled:
            t0 = time.monotonic()
            # The bundle's "as of the cut-off" twin, servable: its own snapshot and the new ranker.
            write_snapshot(store, cutoff, config.recent_items, config.purchased_items, train_dir / layout.SHOPPER_SNAPSHOT)
            _link(staging / layout.RANKER_LIB, train_dir / layout.RANKER_LIB)
            backtest_result = gate.backtest(store, open_staging(train_dir), cutoff, config.ranker.valid_fraction, config.gate)
            evaluation |= gate.eval_entries(backtest_result)
            timed("backtest", t0)

        t0 = time.monotonic()
        table_stats = build_tables(store, end, config.tables, staging)
        timed("tables", t0)

        t0 = time.monotonic()
        n_records, map_size = write_snapshot(store, end, config.recent_items, config.purchased_items, staging / layout.SHOPPER_SNAPSHOT)
        timed("snapshot", t0)

        t0 = time.monotonic()
        files, arrays = inventory(staging)
        manifest = Manifest(
            build_id=build_id,
            created_at=when.isoformat(timespec="seconds").replace("+00:00", "Z"),
            builder_version=BUILDER_VERSION,
            inputs=dict(store.report.fingerprints),
            config=msgspec.to_builtins(config),
            counts={
                "items": len(store.items),
                "users": len(store.users),
                "events": len(store.events),
                **dropped_counts(store.report),
                "categories": len(store.categories),
                "brands": len(store.brands),
                "sellers": len(store.sellers),
                "snapshot_records": n_records,
                "two_tower_examples": tower.train_examples,
                "ranker_queries_train": len(data.groups["train"]),
                "ranker_queries_valid": len(data.groups["valid"]),
                "ranker_trees": ranker.n_trees,
                "covisit_nnz": table_stats.covisit_nnz,
                "copurchase_nnz": table_stats.copurchase_nnz,
                "new_arrivals": table_stats.new_arrivals,
                **head_counts,
            },
            dims={
                "embedding": int(tower.item_vectors.shape[1]),
                "history_len": tower.history_len,
                "n_features": len(FEATURE_NAMES),
                "snapshot_map_size": map_size,
                "cutoff_ts": cutoff,
                "end_ts": end,
            },
            vocab_sizes={
                "categories": len(store.categories),
                "brands": len(store.brands),
                "sellers": len(store.sellers),
                "regions": len(store.regions),
                "devices": len(store.devices),
            },
            arrays=arrays,
            files=files,
            feature_spec=[FeatureEntry(f.name, f.group, f.doc) for f in FEATURES],
            eval=_finite(evaluation, note),
            stage_seconds=stage_seconds,
            notes=[f"{name}: ignored columns {', '.join(cols)}" for name, cols in store.report.ignored_columns.items() if cols]
            + list(store.report.notes),
        )
        final = finalize(staging, manifest)
        open_bundle(final, verify="full")  # read back what we wrote, as the engine will
        timed("manifest", t0)
        if publish and backtest_result is not None:
            ok, why = gate.verdict(backtest_result, out_root, cutoff, config.gate)
            note(why)
            if not ok and not allow_worse:
                raise gate.GateRefused(
                    f"{why}: bundle {build_id} is worse than the current one by more than gate.margin and was not "
                    f"published (it stays in {final}); publish it anyway with `aisle build --allow-worse`"
                )
            if not ok:
                note("gate: publishing anyway (--allow-worse)")
        if publish:
            set_current(out_root, build_id)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        # Past finalize the bundle sits under out_root with a manifest, where a later
        # `set_current` or a person could take it for a good one: remove it (the build id was
        # checked absent above, so a directory by that name is this build's). Only the gate's
        # refusal keeps it (sound, merely worse, and the message says where it stays); `current`
        # naming it means the swap happened and the bundle is live.
        if not isinstance(exc, gate.GateRefused) and current_build_id(out_root) != build_id:
            shutil.rmtree(out_root / build_id, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(train_dir, ignore_errors=True)
        release_staging(train_dir)
        release_staging(staging)
    seconds = time.monotonic() - t_start
    note(f"built {build_id} in {seconds:.1f}s" + (f"; {out_root / 'current'} → {build_id}" if publish else " (not published)"))
    return BuildResult(build_id, final, manifest, seconds)
