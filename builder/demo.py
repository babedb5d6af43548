"""`aisle demo`: the README's main command. Synthesises a store (once), builds and publishes a
bundle (once, or with --rebuild), prints what is in it and the recommendations it serves for a
sample shopper on each surface.
"""

from __future__ import annotations

import sys
from pathlib import Path

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.publish import current_build_id
from builder.build import build
from builder.config import load_build_config
from builder.inspect import describe
from builder.progress import ConsoleProgress
from builder.synth import generate
from engine.schemas import RecommendQuery
from engine.service import Recommender
from engine.settings import Settings


def _show(rec: Recommender, title: str, query: RecommendQuery, now: int) -> None:
    response, _ = rec.run(query, now=now)
    bundle = rec.view.bundle
    print(f"\n{title}" + (f"  [fallback: {response.fallback}]" if response.fallback else ""))
    for rank, item in enumerate(response.items, 1):
        name = bundle.title(bundle.items.row_of(item.sku))
        print(f"  {rank:>2}. {item.sku:<14} {name[:42]:<42} {item.score:+.3f}  {item.reason[:60]}")


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
    rec = Recommender(bundle, Settings(bundles=str(root)), live=None)
    now = int(bundle.manifest.dims["end_ts"])
    snapshot = rec.view.snapshot
    # A returning shopper with some history makes the most telling example.
    users = bundle.users
    shopper_id, record = None, None
    for row in range(0, len(users), max(1, len(users) // 200)):
        candidate = snapshot.get(users.id_of(row)) if snapshot else None
        if candidate is not None and len(candidate.recent_items) >= 5:
            shopper_id, record = users.id_of(row), candidate
            break
    last_row = int(record.recent_items[-1]) if record else int(bundle.array(layout.POPULAR_GLOBAL)[0])
    last = bundle.items.id_of(last_row)
    if record:
        print(f"\nShopper {shopper_id} recently viewed: " + "; ".join(bundle.title(int(r))[:32] for r in record.recent_items[-3:]))
    _show(rec, f"home: Top picks for {shopper_id}", RecommendQuery("home", user_id=shopper_id, count=8), now)
    _show(rec, f"pdp: Similar to {last} ({bundle.title(last_row)[:40]})", RecommendQuery("pdp", user_id=shopper_id, item_id=last, count=8), now)
    _show(rec, f"cart: Frequently bought with {last}", RecommendQuery("cart", user_id=shopper_id, cart=[last], count=8), now)
    _show(rec, "home: a new, anonymous shopper", RecommendQuery("home", count=8), now)
    print(
        f"\nServe it over HTTP:  .venv/bin/aisle serve --bundles {root} --workers 2 --port 8000\n"
        f"  curl 'http://127.0.0.1:8000/v1/recommendations?surface=home&user_id={shopper_id}&count=10'\n"
        f"  curl 'http://127.0.0.1:8000/v1/recommendations?surface=pdp&item_id={last}'\n"
        f"  curl 'http://127.0.0.1:8000/v1/recommendations?surface=cart&cart={last}'",
    )
    print(f"\nBundle: {root / 'current'} → {bundle.manifest.build_id}", file=sys.stderr)
    return 0
