"""Micro-benchmark: the compiled ranker (artifacts.ranker) vs LightGBM's own predict, one thread.

Trains one synthetic lambdarank model through the real builder path (builder.ranker.train_ranker),
once per TL2cgen variant (quantize on / off; training is deterministic, so the trees are the same),
then times `CompiledRanker.predict` and `Booster.predict(raw_score=True, num_threads=1)` on batches
of 100 / 300 / 500 candidate rows, in the same process, and prints a table with the machine it ran
on. Ratios are against LightGBM measured in the same run.

    .venv/bin/python -m bench.ranker_micro                 # 300 trees × 31 leaves, 40 features
    .venv/bin/python -m bench.ranker_micro --trees 100 --rows 150,500 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np

from artifacts.ranker import CompiledRanker
from builder.config import RankerConfig
from builder.ranker import LIGHTGBM_FILE, RankerResult, train_ranker

CANDIDATES = 100


def synthetic_store(n_queries: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X float32 [q·100, F] (5% NaN), grades int32 0..3, group int32 [q]; needs F ≥ 14.

    The hidden relevance is a linear part plus several feature interactions with little noise, so
    validation NDCG keeps improving for a few hundred trees and the benchmarked model has the
    asked-for size rather than whatever early stopping leaves of an overfitted one.
    """
    rng = np.random.default_rng(seed)
    n = n_queries * CANDIDATES
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    weights = np.random.default_rng(0).normal(size=n_features) / np.sqrt(n_features)
    hidden = X @ weights
    for k in range(0, 12, 2):
        hidden += 0.4 * np.sin(1.5 * X[:, k]) * X[:, k + 1]
    hidden += 0.3 * X[:, 12] ** 2 - 0.3 * np.abs(X[:, 13]) + 0.05 * rng.normal(size=n)
    rank = np.argsort(np.argsort(-hidden.reshape(n_queries, CANDIDATES), axis=1), axis=1).ravel()
    y = np.select([rank < 3, rank < 8, rank < 20], [3, 2, 1], 0).astype(np.int32)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X, y, np.full(n_queries, CANDIDATES, dtype=np.int32)


def time_calls(
    call: Callable[[np.ndarray], object], batches: list[np.ndarray], repeats: int, max_seconds: float
) -> np.ndarray:
    """Wall time in ms of each call, cycling over batches; bounded by a count and a time limit."""
    for batch in batches[:3]:
        call(batch)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for i in range(repeats):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        call(batch)
        times.append((time.perf_counter() - start) * 1e3)
        if time.perf_counter() > deadline:
            break
    return np.asarray(times)


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "none (no commit yet)"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "load_1m": f"{os.getloadavg()[0]:.2f}",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "commit": commit,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--leaves", type=int, default=31)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--queries", type=int, default=800, help="training queries of 100 candidates")
    parser.add_argument("--rows", default="100,300,500", help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=5.0, help="time limit per measurement")
    parser.add_argument("--parallel-comp", type=int, default=RankerConfig().parallel_comp)
    parser.add_argument("--threads", type=int, default=2, help="LightGBM training threads and gcc jobs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.features < 14:
        parser.error("--features must be ≥ 14 (the synthetic relevance function reads 14 columns)")
    row_counts = [int(r) for r in args.rows.split(",")]

    X_train, y_train, g_train = synthetic_store(args.queries, args.features, seed=1)
    X_valid, y_valid, g_valid = synthetic_store(max(50, args.queries // 4), args.features, seed=2)
    X_pool, _, _ = synthetic_store(50, args.features, seed=3)  # unseen candidates to score
    names = [f"f{i}" for i in range(args.features)]

    variants: dict[str, tuple[RankerResult, CompiledRanker]] = {}
    with tempfile.TemporaryDirectory(prefix="aisle-bench-ranker-") as tmp:
        for label, quantize in (("quantized", True), ("plain", False)):
            config = RankerConfig(
                trees=args.trees, leaves=args.leaves, learning_rate=0.05, quantize=quantize,
                parallel_comp=args.parallel_comp, threads=args.threads,
            )
            out_dir = Path(tmp) / label
            # Patience = all trees: the bench wants the full model unless validation NDCG peaks early.
            result = train_ranker(
                X_train, y_train, g_train, X_valid, y_valid, g_valid, names, config, out_dir,
                early_stopping_rounds=args.trees,
            )
            variants[label] = (result, CompiledRanker(out_dir / result.files["library"], args.features))
        # Same trees in both variants (deterministic training): one LightGBM baseline serves both.
        booster = lgb.Booster(model_file=str(Path(tmp) / "quantized" / LIGHTGBM_FILE))

        model = booster.dump_model()
        leaves = np.mean([tree["num_leaves"] for tree in model["tree_info"]])
        rng = np.random.default_rng(4)
        rows_out: list[dict[str, object]] = []
        for n_rows in row_counts:
            batches = [np.ascontiguousarray(X_pool[rng.choice(len(X_pool), n_rows, replace=False)]) for _ in range(16)]
            lgb_ms = time_calls(
                lambda X: booster.predict(X, raw_score=True, num_threads=1), batches, args.repeats, args.max_seconds
            )
            rows_out.append(summary("LightGBM Booster.predict", n_rows, lgb_ms, lgb_ms))
            for label, (_, ranker) in variants.items():
                ms = time_calls(ranker.predict, batches, args.repeats, args.max_seconds)
                rows_out.append(summary(f"CompiledRanker ({label})", n_rows, ms, lgb_ms))

    info = machine_info()
    first = next(iter(variants.values()))[0]
    print("# ranker micro-benchmark: predict, 1 thread")
    for key, value in info.items():
        print(f"#   {key:8s} {value}")
    print(f"#   versions lightgbm {first.lightgbm_version}, treelite {first.treelite_version}, "
          f"tl2cgen {first.tl2cgen_version} (runtime treelite {first.tl2cgen_treelite_runtime or '?'})")
    print(f"#   model    {first.n_trees} trees (asked {args.trees}), mean {leaves:.1f} leaves/tree, "
          f"{args.features} features, parallel_comp {args.parallel_comp}")
    for label, (result, _) in variants.items():
        print(f"#   build    {label}: train {result.train_seconds:.1f} s, compile {result.compile_seconds:.1f} s, "
              f"max |diff| vs LightGBM {result.max_abs_diff_vs_lightgbm:.1e}")
    print()
    print(
        f"{'predictor':34s} {'rows':>5s} {'median ms':>10s} {'p99 ms':>8s} {'µs/row':>7s} "
        f"{'vs LightGBM':>12s} {'n':>5s}"
    )
    for row in rows_out:
        print(f"{row['predictor']:34s} {row['rows']:5d} {row['median_ms']:10.3f} {row['p99_ms']:8.3f} "
              f"{row['us_per_row']:7.1f} {row['speedup_vs_lightgbm']:11.2f}x {row['n']:5d}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": rows_out}, indent=2))


def summary(predictor: str, n_rows: int, ms: np.ndarray, baseline_ms: np.ndarray) -> dict[str, object]:
    median = float(np.median(ms))
    return {
        "predictor": predictor,
        "rows": n_rows,
        "median_ms": median,
        "p99_ms": float(np.percentile(ms, 99)),
        "us_per_row": median * 1e3 / n_rows,
        "speedup_vs_lightgbm": float(np.median(baseline_ms)) / median,
        "n": int(ms.size),
    }


if __name__ == "__main__":
    main()
