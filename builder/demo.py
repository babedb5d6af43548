"""`aisle demo`: the README's main command. Synthesises a store (once), builds and publishes a
bundle (once, or with --rebuild), prints what is in it and the recommendations it serves for a
sample shopper on each surface.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.publish import current_build_id
from artifacts.ranker import CompiledRanker
from builder.build import build
from builder.config import load_build_config
from builder.inspect import describe
from builder.progress import ConsoleProgress
from builder.synth import generate
from engine.catalog import CatalogView
from engine.pipeline import Pipeline


def _show(pipeline: Pipeline, title: str, surface: str, user_id: str | None, anchors: np.ndarray, now: int) -> None:
    ctx = pipeline.resolve(surface, user_id, anchors, now=now)
    recs = pipeline.recommend(ctx, count=8)
    print(f"\n{title}")
    for rank, rec in enumerate(recs, 1):
        print(f"  {rank:>2}. {rec.sku:<14} {pipeline.view.bundle.title(rec.row)[:44]:<44} {rec.score:+.3f}  {rec.reason[:60]}")


def run_demo(scale: str, workdir: Path, seed: int = 7, rebuild: bool = False) -> int:
    data = workdir / "data" / f"{scale}-{seed}"
    root = workdir / "bundles" / f"{scale}-{seed}"
    progress = ConsoleProgress()
    if not (data / "catalog.parquet").exists():
        progress.note(f"synthesising the '{scale}' store into {data}")
        generate(scale=scale, seed=seed, out=data, progress=progress, overwrite=True)
    if rebuild or current_build_id(root) is None:
        progress.note(f"building a bundle into {root}")
        build(data, root, load_build_config(None), progress=progress)
    print(describe(root / "current"))

    bundle = open_bundle(root / "current", verify="sizes")
    view = CatalogView(bundle)
    ranker = CompiledRanker(bundle.path(layout.RANKER_LIB), n_features=bundle.manifest.dims["n_features"])
    pipeline = Pipeline(view, ranker)
    now = int(bundle.manifest.dims["end_ts"])
    # A returning shopper with some history makes the most telling example.
    users = bundle.users
    shopper_id = None
    for row in range(0, len(users), max(1, len(users) // 200)):
        record = view.snapshot.get(users.id_of(row)) if view.snapshot else None
        if record is not None and len(record.recent_items) >= 5:
            shopper_id = users.id_of(row)
            break
    record = view.snapshot.get(shopper_id) if (shopper_id and view.snapshot) else None
    last = np.asarray(record.recent_items[-1:] if record else bundle.array(layout.POPULAR_GLOBAL)[:1], np.int32)
    print(f"\nShopper {shopper_id}: recently viewed " + "; ".join(bundle.title(int(r))[:30] for r in (record.recent_items[-3:] if record else [])))
    _show(pipeline, f"home — Top picks for {shopper_id}", "home", shopper_id, np.zeros(0, np.int32), now)
    _show(pipeline, f"pdp — Similar to {bundle.items.id_of(int(last[0]))} ({bundle.title(int(last[0]))[:40]})", "pdp", shopper_id, last, now)
    _show(pipeline, f"cart — Frequently bought with {bundle.items.id_of(int(last[0]))}", "cart", shopper_id, last, now)
    _show(pipeline, "home — a new, anonymous shopper", "home", None, np.zeros(0, np.int32), now)
    print(f"\nBundle: {root / 'current'} → {bundle.manifest.build_id}", file=sys.stderr)
    return 0
