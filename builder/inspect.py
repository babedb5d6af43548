"""`aisle inspect`: what is in a bundle, how big each part is, and whether it is intact."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import msgspec

from artifacts.bundle import open_bundle

PART_NAMES = {
    "items": "item table (columns, ids, titles)",
    "users": "shopper id map",
    "embeddings": "item embeddings",
    "index": "ANN index (USearch HNSW)",
    "models": "user tower (ONNX) + ranker (.so, Treelite, LightGBM)",
    "tables": "co-visit / co-purchase / complements / popular & trending lists",
    "lists": "popular and new-arrival lists",
    "features": "shopper feature snapshot (LMDB)",
    "vocab.json": "vocabularies (categories, brands, sellers, regions, devices)",
}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def describe(path: Path, verify: bool = False, as_json: bool = False) -> str:
    bundle = open_bundle(path, verify="full" if verify else "sizes")
    m = bundle.manifest
    if as_json:
        return msgspec.json.format(msgspec.json.encode(m), indent=2).decode()
    parts: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for rel, entry in m.files.items():
        parts[rel.split("/")[0]].append((rel, entry.size))
    total = sum(e.size for e in m.files.values())
    lines = [
        f"bundle      {m.build_id}  ({bundle.root})",
        f"format      {m.magic} v{m.format_version}, builder {m.builder_version}, created {m.created_at}",
        f"integrity   manifest checksum ok; {len(m.files)} files " + ("sha256 verified" if verify else "present with recorded sizes (--verify checks sha256)"),
        "counts      " + ", ".join(f"{k} {v:,}" for k, v in m.counts.items()),
        "dims        " + ", ".join(f"{k} {v}" for k, v in m.dims.items()),
        f"features    {len(m.feature_spec)}: " + ", ".join(f.name for f in m.feature_spec),
        "",
        f"{'part':<12} {'size':>10}  files  what",
    ]
    for part in sorted(parts, key=lambda p: -sum(s for _, s in parts[p])):
        size = sum(s for _, s in parts[part])
        lines.append(f"{part:<12} {_size(size):>10}  {len(parts[part]):>5}  {PART_NAMES.get(part, '')}")
    lines.append(f"{'total':<12} {_size(total):>10}  {len(m.files):>5}")
    lines.append("")
    lines.append("evaluation  " + ", ".join(f"{k} {v:.4g}" for k, v in m.eval.items()))
    lines.append("stages (s)  " + ", ".join(f"{k} {v:.1f}" for k, v in m.stage_seconds.items()))
    for note in m.notes:
        lines.append(f"note        {note}")
    return "\n".join(lines)
