"""`aisle eval`: hold out, build the bundle `aisle build` would build from the rest, and score the
served pipeline and its baselines on the held-out shoppers (builder.evaluate.runner).

Automatic choices (the same for every data set; nothing is tuned per data set):
- protocol "auto": `loo-full` when the events carry a `split` column (the leave-one-out data sets
  in ../shared/data), else `temporal`.
- loo-full builds with `ranker.label_window_days = 1`: with the Amazon adapter's end-aligned
  clock, the ranker's labels are then each shopper's last training interaction, and its
  candidates and features come from everything before it (the same leave-one-out, one step back).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import numpy as np

from artifacts import layout
from artifacts.bundle import Bundle, open_bundle
from builder.build import build_store
from builder.config import BuildConfig
from builder.evaluate import runner
from builder.evaluate.protocols import EvalSplit, loo_split, sample_users, temporal_split
from builder.evaluate.published import published_rows
from builder.heads import read_head_reports
from builder.ingest import load_store
from builder.progress import ConsoleProgress, Progress
from builder.store import Store
from engine.settings import Settings

PROTOCOLS = ("auto", "loo-full", "temporal")


class EvalError(RuntimeError):
    """An evaluation that cannot run as asked (the message says why)."""


def choose_protocol(store: Store, protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol != "auto":
        return protocol
    return "loo-full" if "split" in store.report.ignored_columns.get("events.parquet", ()) else "temporal"


def make_split(store: Store, protocol: str, which: str, days: float) -> EvalSplit:
    try:
        return loo_split(store, which) if protocol == "loo-full" else temporal_split(store, days)
    except ValueError as exc:
        raise EvalError(str(exc)) from exc


def eval_build_config(config: BuildConfig, protocol: str) -> BuildConfig:
    if protocol != "loo-full":
        return config
    return msgspec.structs.replace(config, ranker=msgspec.structs.replace(config.ranker, label_window_days=1.0))


def evaluate(
    data_dir: Path,
    config: BuildConfig,
    settings: Settings,
    protocol: str = "auto",
    which: str = "test",
    days: float = 7.0,
    k: int = 20,
    max_users: int | None = None,
    work_dir: Path | None = None,
    ablation: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
    dataset: str | None = None,
    keep_bundle: bool = False,
    bundle_path: Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """The whole evaluation → the result dict `--json` writes (see builder.evaluate.report)."""
    if not 1 <= k <= settings.limits.max_count:
        raise EvalError(f"k must be in [1, {settings.limits.max_count}] (limits.max_count), got {k}")
    console = progress or ConsoleProgress()
    note = getattr(console, "note", lambda message: None)
    seconds: dict[str, float] = {}
    t_all = t0 = time.monotonic()
    data_dir = Path(data_dir)
    store = load_store(data_dir, config.clock, config.bots)  # the same screening as `aisle build`
    protocol = choose_protocol(store, protocol)
    split = sample_users(make_split(store, protocol, which, days), max_users, seed)
    if len(split.holdout.targets) == 0:
        raise EvalError(f"{protocol}: no shopper has a held-out target in {data_dir}")
    seconds["split"] = round(time.monotonic() - t0, 2)
    note(f"{protocol} ({which}): {len(split.holdout.targets):,} held-out shoppers, bundle from {len(split.train.events):,} of {len(store.events):,} events")

    t0 = time.monotonic()
    if bundle_path is not None:
        bundle = _reuse(Path(bundle_path), split)
        keep_bundle = True  # never delete what the caller brought
    else:
        work = Path(work_dir) if work_dir is not None else data_dir.parent / f".aisle-eval-{data_dir.name}"
        built = build_store(split.train, work, eval_build_config(config, protocol), console, publish=False, variant=f"eval:{protocol}:{which}")
        bundle = open_bundle(built.path, verify="sizes")
        note(f"held-out bundle: {built.path}" + (" (kept)" if keep_bundle else ""))
    seconds["build"] = round(time.monotonic() - t0, 2)

    try:
        t0 = time.monotonic()
        to_store_vectors = _store_order(np.asarray(bundle.array(layout.ITEM_VECTORS), np.float32), bundle, split.train)
        popularity = runner.popularity_scores(split.train)
        results: dict[str, runner.VariantResult] = {
            "popularity": runner.popularity_variant("popularity", popularity, split.holdout, k),
        }
        if protocol == "loo-full":
            # The harness check: PopRec as published counts every interaction, held-out ones too.
            results["popularity (all interactions, as published)"] = runner.popularity_variant(
                "popularity (all interactions, as published)", runner.popularity_scores(store), split.holdout, k
            )
        has_heads = bundle.has(layout.HEADS_SPEC)
        for name, variant_settings in runner.pipeline_variants(settings, ablation, heads=has_heads).items():
            results[name] = runner.run_variant(name, bundle, variant_settings, split.train, split, k, console)
            note(f"{name}: HR@10 {runner.m.hit_rate(results[name].ranks, 10):.4f} in {results[name].seconds:.0f}s")
        seconds["evaluate"] = round(time.monotonic() - t0, 2)

        # What a target is worth: its price (the store's; NaN when unknown counts as 0).
        target_value = split.train.items.price[split.holdout.targets].astype(np.float64)
        summaries = {name: runner.summarize(v, k, to_store_vectors, popularity, bootstrap, seed, target_value) for name, v in results.items()}
        masks = runner.segments(split, split.train, popularity, settings.rerank.new_item_days)
        main_names = [n for n in results if not n.startswith("full −")]
        out = {
            "dataset": dataset or data_dir.name,
            "protocol": protocol,
            "split": which,
            "k": k,
            "users": int(len(split.holdout.targets)),
            "metrics": summaries["full"]["metrics"],
            "ci": summaries["full"]["ci"],
            "baselines": {n: summaries[n] for n in main_names if n != "full"},
            "segments": runner.segment_table(masks, {n: results[n] for n in main_names}, k),
            "published": published_rows(dataset or data_dir.name) if protocol == "loo-full" else {},
            "ablation": [{"name": n, "metrics": summaries[n]["metrics"]} for n in results if n == "full" or n.startswith("full −")]
            if ablation
            else [],
            "bundle": {"build_id": bundle.build_id, "eval": bundle.manifest.eval, "stage_seconds": bundle.manifest.stage_seconds},
            # Each ranking head's held-out calibration, log loss, AUC and reliability table (builder/heads.py).
            "heads": msgspec.to_builtins(read_head_reports(bundle.path(layout.HEADS_REPORT))) if bundle.has(layout.HEADS_REPORT) else {},
        }
        truth = data_dir / "truth"
        if (truth / "user_taste.npy").is_file() and (truth / "item_latent.npy").is_file():
            out["correlation"] = _taste_alignment(truth, store, split, results)
    finally:
        if not keep_bundle:
            shutil.rmtree(bundle.root, ignore_errors=True)
    seconds["total"] = round(time.monotonic() - t_all, 2)
    out["run"] = run_info(seconds)
    return out


def _reuse(path: Path, split: EvalSplit) -> Bundle:
    """A held-out bundle from an earlier `--keep-bundle` run, for scoring other engine settings
    without rebuilding; refused unless it was built from exactly this split's events."""
    bundle = open_bundle(path, verify="sizes")
    built_from = int(bundle.manifest.counts.get("events", -1)) if bundle.manifest else -1
    if built_from != len(split.train.events) or bundle.manifest.dims.get("end_ts") != int(split.train.events.ts.max()) + 1:
        raise EvalError(
            f"{path}: this bundle was not built from the {split.protocol} ({split.which}) training events of this store "
            f"({built_from:,} events in the bundle, {len(split.train.events):,} in the split); rebuild without --bundle"
        )
    return bundle


def _store_order(vectors: np.ndarray, bundle: Bundle, store: Store) -> np.ndarray:
    """Item vectors indexed by the store's rows (zeros for an item the bundle lacks)."""
    rows = bundle.items.rows_of(list(store.items.sku))
    out = np.zeros((len(store.items), vectors.shape[1]), np.float32)
    out[rows >= 0] = vectors[rows[rows >= 0]]
    return out


def _taste_alignment(truth: Path, store: Store, split: EvalSplit, results: dict[str, runner.VariantResult]) -> dict[str, float]:
    """The synthetic store's hidden tastes, in store row order (truth files are in the order of
    catalog.parquet and users.parquet; map through the ids)."""
    import pyarrow.parquet as pq

    root = truth.parent
    sku_order = pq.read_table(root / "catalog.parquet", columns=["sku"]).column("sku").to_pylist()
    user_order = pq.read_table(root / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    latent_src, taste_src = np.load(truth / "item_latent.npy"), np.load(truth / "user_taste.npy")
    item_pos = {s: i for i, s in enumerate(sku_order)}
    user_pos = {u: i for i, u in enumerate(user_order)}
    latent = np.zeros((len(store.items), latent_src.shape[1]), np.float32)
    for row, sku in enumerate(store.items.sku):
        if sku in item_pos:
            latent[row] = latent_src[item_pos[sku]]
    taste = np.zeros((len(store.users), taste_src.shape[1]), np.float32)
    for row, uid in enumerate(store.users.user_id):
        if uid in user_pos:
            taste[row] = taste_src[user_pos[uid]]
    return runner.taste_alignment(taste, latent, split, results)


def run_info(seconds: dict[str, float]) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    except OSError:
        commit = ""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "commit": commit or "unknown",
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {cpu}".strip(", "),
        "python": platform.python_version(),
        "seconds": seconds,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
