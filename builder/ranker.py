"""Train the candidate ranker (LightGBM lambdarank) and compile it into `ranker.so`.

Pipeline (STACK-NOTES §3):

1. LightGBM `lambdarank` on graded labels 0..3, NDCG@10 on the validation queries, early stopping;
   the model is trimmed to its best iteration and saved as `ranker.lgb.txt`.
2. `treelite.frontend.from_lightgbm` on the trimmed booster; the Treelite checkpoint is kept as
   `ranker.treelite` (for inspection and re-compilation without retraining).
3. `tl2cgen.generate_c_code` writes C for the trees; Aisle's batch entry point
   (`artifacts/ranker_batch.c`, the C ABI the engine calls) is added and gcc links everything into
   one self-contained `ranker.so` (needs only libc and libm).
4. Parity: the compiled library, loaded exactly as the engine loads it (`artifacts.ranker`), must
   reproduce LightGBM's raw scores on the validation rows, and on a slice of them with NaNs
   injected, within PARITY_TOLERANCE; otherwise the build fails.

Output names are the basenames of `artifacts.layout`'s RANKER_* paths, so `out_dir` is normally
`<bundle>/models`.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import lightgbm as lgb
import msgspec
import numpy as np
import tl2cgen
import treelite

from artifacts import layout
from artifacts.ranker import CompiledRanker, RankerLoadError
from builder.config import RankerConfig

log = logging.getLogger(__name__)

LIGHTGBM_FILE = PurePosixPath(layout.RANKER_LIGHTGBM).name
TREELITE_FILE = PurePosixPath(layout.RANKER_TREELITE).name
LIBRARY_FILE = PurePosixPath(layout.RANKER_LIB).name

MAX_GRADE = 3
# The compiled scores are float32 (what the engine uses); LightGBM's are float64. Rounding alone
# is about 6e-8 × |score|, so anything near this bound means a real disagreement.
PARITY_TOLERANCE = 1e-5
# Rows of the validation set re-checked with NaNs injected, and the share of cells made NaN.
NAN_PARITY_ROWS = 2_000
NAN_PARITY_SHARE = 0.1

COMPILER = "gcc"
# -O2, not tl2cgen's -O3: same speed on these trees (STACK-NOTES pitfall 2) and less gcc time.
# Hidden visibility: only the aisle_* entry points are exported, so the generated `predict`,
# `quantize`, ... can neither clash with nor be interposed by another library's symbols.
CFLAGS = ("-O2", "-fPIC", "-std=c99", "-fvisibility=hidden")
# The batch file is ours: turn the mistakes that would silently corrupt scores into errors.
BATCH_CFLAGS = (
    "-Werror=incompatible-pointer-types",
    "-Werror=implicit-function-declaration",
    "-Werror=int-conversion",
)
LDFLAGS = ("-shared", "-Wl,-z,defs", "-lm")
BATCH_SOURCE = "aisle_batch"  # name of ranker_batch.c inside the generated directory

ProgressFn = Callable[[str], None]


class RankerBuildError(RuntimeError):
    """Training, compiling or the parity check of the ranker failed.

    ranker.so is then not written; ranker.lgb.txt and ranker.treelite may be, for diagnosis, so a
    failed out_dir must not be published (the bundle writer discards its temporary directory).
    """


class RankerResult(msgspec.Struct, frozen=True, kw_only=True):
    """What `train_ranker` produced; plain data, so it can go into the manifest as is."""

    files: dict[str, str]  # role ("lightgbm", "treelite", "library") -> file name inside out_dir
    n_features: int
    n_trees: int  # trees in the trimmed model (= best_iteration for a single-output ranker)
    best_iteration: int  # 1-based LightGBM iteration with the best validation NDCG@10
    valid_ndcg_at_10: float  # LightGBM's eval on the validation queries at best_iteration
    train_seconds: float
    compile_seconds: float  # Treelite import + C generation + gcc
    max_abs_diff_vs_lightgbm: float  # compiled vs Booster.predict(raw_score=True), incl. NaN slice
    parity_rows: int  # rows compared (validation rows + NaN-injected rows)
    quantize: bool
    parallel_comp: int
    c_value_type: str  # type of `union Entry.fvalue` in the generated code ("double" for LightGBM)
    c_result_type: str  # element type of predict()'s result argument
    lightgbm_version: str
    treelite_version: str
    tl2cgen_version: str
    tl2cgen_treelite_runtime: str  # Treelite runtime embedded in tl2cgen; "" if it did not say


def train_ranker(
    X_train: np.ndarray,
    y_train: np.ndarray,
    group_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    group_valid: np.ndarray,
    feature_names: list[str],
    config: RankerConfig,
    out_dir: Path,
    progress: ProgressFn | None = None,
    *,
    early_stopping_rounds: int = 30,
) -> RankerResult:
    """Train, trim, export, compile and parity-check the ranker; write its three files to out_dir.

    X_*: float32 [n, F], NaN = missing. y_*: integer [n], graded relevance 0..3. group_*: integer
    [q], candidates per query, queries contiguous in X (sum(group) == n). feature_names: F names
    (LightGBM rejects JSON special characters in them).

    Writes out_dir/ranker.lgb.txt, out_dir/ranker.treelite and out_dir/ranker.so. Raises ValueError
    for malformed inputs and RankerBuildError when compiling or the parity check fails.
    """
    n_features = _check_inputs(X_train, y_train, group_train, X_valid, y_valid, group_valid, feature_names)
    if early_stopping_rounds < 1:
        raise ValueError(f"early_stopping_rounds must be ≥ 1, got {early_stopping_rounds}")
    report = progress or (lambda _message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    report(
        f"ranker: training LightGBM lambdarank on {len(y_train):,} rows / {len(group_train):,} queries, "
        f"validating on {len(y_valid):,} rows / {len(group_valid):,} queries"
    )
    started = time.perf_counter()
    booster = _train_lightgbm(
        X_train, y_train, group_train, X_valid, y_valid, group_valid, feature_names, config,
        early_stopping_rounds, report,
    )
    train_seconds = time.perf_counter() - started
    best_iteration = booster.best_iteration or booster.current_iteration()
    valid_ndcg = float(booster.best_score["valid"]["ndcg@10"])
    report(f"ranker: best iteration {best_iteration} (limit {config.trees}), valid NDCG@10 {valid_ndcg:.4f}")

    compiled = compile_model(booster, best_iteration, X_valid, n_features, config, out_dir, "ranker", report)

    return RankerResult(
        files={"lightgbm": LIGHTGBM_FILE, "treelite": TREELITE_FILE, "library": LIBRARY_FILE},
        n_features=n_features,
        n_trees=compiled.n_trees,
        best_iteration=int(best_iteration),
        valid_ndcg_at_10=valid_ndcg,
        train_seconds=train_seconds,
        compile_seconds=compiled.compile_seconds,
        max_abs_diff_vs_lightgbm=compiled.max_abs_diff,
        parity_rows=compiled.parity_rows,
        quantize=config.quantize,
        parallel_comp=config.parallel_comp,
        c_value_type=compiled.c_value_type,
        c_result_type=compiled.c_result_type,
        lightgbm_version=lgb.__version__,
        treelite_version=treelite.__version__,
        tl2cgen_version=tl2cgen.__version__,
        tl2cgen_treelite_runtime=compiled.runtime_version,
    )


class CompiledModel(msgspec.Struct, frozen=True, kw_only=True):
    """What `compile_model` wrote: `<stem>.lgb.txt`, `<stem>.treelite`, `<stem>.so` in out_dir."""

    n_trees: int
    compile_seconds: float
    max_abs_diff: float  # compiled vs LightGBM raw scores, incl. the NaN slice
    parity_rows: int
    c_value_type: str
    c_result_type: str
    runtime_version: str


def compile_model(
    booster: lgb.Booster,
    best_iteration: int,
    X_check: np.ndarray,
    n_features: int,
    config: RankerConfig,
    out_dir: Path,
    stem: str,
    report: ProgressFn,
) -> CompiledModel:
    """Trim `booster` to `best_iteration`, export it through Treelite, compile it with TL2cgen
    and Aisle's batch entry point, and check the library against LightGBM on X_check (float32
    [n, n_features]) and a NaN-injected slice of it. Used by the ranker and the ranking heads
    (builder/heads.py); any LightGBM objective whose raw score is a single column works."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    library_file = f"{stem}.so"
    lightgbm_path = out_dir / f"{stem}.lgb.txt"
    booster.save_model(str(lightgbm_path), num_iteration=best_iteration)
    # Re-load from the saved text so Treelite sees exactly the trimmed model that ships.
    trimmed = lgb.Booster(model_file=str(lightgbm_path))

    started = time.perf_counter()
    model = treelite.frontend.from_lightgbm(trimmed)
    model.serialize(str(out_dir / f"{stem}.treelite"))
    with tempfile.TemporaryDirectory(prefix=f"aisle-{stem}-") as tmp:
        source_dir = Path(tmp) / "src"
        report(
            f"{stem}: generating C for {model.num_tree} trees "
            f"(parallel_comp={config.parallel_comp}, quantize={config.quantize})"
        )
        runtime_version = _generate_c_code(model, source_dir, config)
        value_type, result_type = _read_generated_types(source_dir / "header.h")
        report(f"{stem}: compiling {library_file} with {COMPILER} ({max(1, config.threads)} jobs)")
        built = _compile_library(source_dir, result_type, jobs=max(1, config.threads))
        compile_seconds = time.perf_counter() - started

        # Load from the unique temporary path: dlopen hands back an already-loaded library for a
        # path it has seen, so re-using out_dir's name in one process could check a stale model.
        try:
            compiled = CompiledRanker(built, n_features=n_features)
        except RankerLoadError as exc:
            raise RankerBuildError(f"the freshly compiled {stem} does not load: {exc}") from exc
        max_diff, parity_rows = _check_parity(compiled, booster, best_iteration, X_check, config)
        compiled.close()
        report(f"{stem}: compiled scores match LightGBM on {parity_rows:,} rows (max abs diff {max_diff:.2e})")

        library_path = out_dir / library_file
        staging = out_dir / (library_file + ".tmp")
        shutil.copyfile(built, staging)
        # A rename gives the file a new inode: a process that still maps an older library at this
        # path keeps its pages intact instead of seeing them rewritten under it.
        os.replace(staging, library_path)
    return CompiledModel(
        n_trees=int(model.num_tree),
        compile_seconds=compile_seconds,
        max_abs_diff=max_diff,
        parity_rows=parity_rows,
        c_value_type=value_type,
        c_result_type=result_type,
        runtime_version=runtime_version,
    )


# --- inputs -------------------------------------------------------------------------------------


def _check_inputs(
    X_train: np.ndarray,
    y_train: np.ndarray,
    group_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    group_valid: np.ndarray,
    feature_names: list[str],
) -> int:
    """Validate shapes, dtypes, labels and groups of both splits; return the feature count F."""
    n_features = len(feature_names)
    if n_features == 0:
        raise ValueError("feature_names is empty: the ranker needs at least one feature")
    if len(set(feature_names)) != n_features:
        raise ValueError("feature_names has duplicates; each column needs its own name")
    for split, X, y, group in (("train", X_train, y_train, group_train), ("valid", X_valid, y_valid, group_valid)):
        if not isinstance(X, np.ndarray) or X.dtype != np.float32 or X.ndim != 2:
            raise ValueError(f"X_{split} must be a float32 ndarray of shape (n, {n_features}), got {_describe(X)}")
        if X.shape[1] != n_features:
            raise ValueError(f"X_{split} has {X.shape[1]} columns, feature_names has {n_features}")
        if X.shape[0] == 0:
            raise ValueError(f"X_{split} has no rows")
        if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y_{split} must be a 1-D integer ndarray of grades, got {_describe(y)}")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"y_{split} has {y.shape[0]} labels for {X.shape[0]} rows of X_{split}")
        if y.min() < 0 or y.max() > MAX_GRADE:
            raise ValueError(f"y_{split} grades must be in 0..{MAX_GRADE}, got {y.min()}..{y.max()}")
        if not isinstance(group, np.ndarray) or group.ndim != 1 or not np.issubdtype(group.dtype, np.integer):
            raise ValueError(f"group_{split} must be a 1-D integer ndarray of query sizes, got {_describe(group)}")
        if group.size == 0 or group.min() < 1:
            raise ValueError(f"group_{split} must hold at least one query, each with ≥ 1 row")
        if group.sum(dtype=np.int64) != X.shape[0]:
            total = int(group.sum(dtype=np.int64))
            raise ValueError(f"group_{split} sums to {total}, X_{split} has {X.shape[0]} rows")
    return n_features


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {value.shape}"
    return type(value).__name__


# --- LightGBM -----------------------------------------------------------------------------------


def _train_lightgbm(
    X_train: np.ndarray,
    y_train: np.ndarray,
    group_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    group_valid: np.ndarray,
    feature_names: list[str],
    config: RankerConfig,
    early_stopping_rounds: int,
    report: ProgressFn,
) -> lgb.Booster:
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "num_leaves": config.leaves,
        "learning_rate": config.learning_rate,
        "min_data_in_leaf": config.min_data_in_leaf,
        "num_threads": config.threads,
        "seed": config.seed,
        "deterministic": True,
        # LightGBM's docs: `deterministic` needs the histogram layout fixed too, not auto-chosen.
        "force_col_wise": True,
        "verbosity": -1,
    }
    train_set = lgb.Dataset(X_train, y_train, group=group_train, feature_name=feature_names, free_raw_data=True)
    valid_set = lgb.Dataset(X_valid, y_valid, group=group_valid, reference=train_set, free_raw_data=True)
    every = max(1, config.trees // 10)

    def report_every(env: lgb.callback.CallbackEnv) -> None:
        iteration = env.iteration + 1
        if iteration % every == 0 and env.evaluation_result_list:
            _, metric, value, _ = env.evaluation_result_list[0][:4]
            report(f"ranker: iteration {iteration}/{config.trees}, valid {metric} {value:.4f}")

    try:
        return lgb.train(
            params,
            train_set,
            num_boost_round=config.trees,
            valid_sets=[valid_set],
            valid_names=["valid"],
            callbacks=[
                lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False),
                report_every,
            ],
        )
    except lgb.basic.LightGBMError as exc:
        raise RankerBuildError(f"LightGBM training failed: {exc}") from exc


# --- Treelite → C → .so -------------------------------------------------------------------------

# tl2cgen 1.0.0 embeds a Treelite 4.1.2 runtime and reads our 4.8.1 checkpoint with this warning
# (STACK-NOTES pitfall 1). Its native code writes it straight to fd 2, bypassing `warnings`.
_SKEW_WARNING = "originated from a newer Treelite version"
_SKEW_DETAIL = re.compile(
    r"^(Currently running Treelite version (?P<runtime>\S+)"
    r"|The model checkpoint was generated from Treelite version \S+)\s*$"
)


def _generate_c_code(model: treelite.Model, source_dir: Path, config: RankerConfig) -> str:
    """tl2cgen.generate_c_code with only the version-skew warning silenced.

    Returns the Treelite runtime version tl2cgen reports in that warning ("" if it did not warn).
    Other native stderr output is passed on as a log warning; tl2cgen's info lines (it print()s
    them) go to the debug log.
    """
    params = {"parallel_comp": config.parallel_comp, "quantize": 1 if config.quantize else 0}
    info = io.StringIO()
    with _captured_native_stderr() as captured, contextlib.redirect_stdout(info):
        tl2cgen.generate_c_code(model, source_dir, params=params)
    for line in info.getvalue().splitlines():
        if line.strip():
            log.debug("tl2cgen: %s", line.strip())
    remaining, runtime_version = _drop_version_skew_warning(captured.getvalue())
    if remaining.strip():
        log.warning("tl2cgen (native stderr): %s", remaining.strip())
    return runtime_version


@contextlib.contextmanager
def _captured_native_stderr() -> Iterator[io.StringIO]:
    """Redirect file descriptor 2 (what C++ std::cerr writes to) into a buffer for the block.

    Process-wide while it lasts, so another thread's stderr in that window lands here too; it is
    passed on by the caller, not lost.
    """
    buffer = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield buffer
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                buffer.write(sink.read().decode("utf-8", errors="replace"))
    finally:
        os.close(saved)


def _drop_version_skew_warning(text: str) -> tuple[str, str]:
    """Remove the tl2cgen/Treelite version-skew warning block; return (rest, runtime version)."""
    kept: list[str] = []
    runtime_version = ""
    in_block = False
    for line in text.splitlines(keepends=True):
        if _SKEW_WARNING in line:
            in_block = True
            continue
        detail = _SKEW_DETAIL.match(line) if in_block else None
        if detail:
            runtime_version = detail.group("runtime") or runtime_version
            continue
        in_block = False
        kept.append(line)
    return "".join(kept), runtime_version


_UNION_VALUE = re.compile(r"union\s+Entry\s*\{[^}]*?\b(float|double)\s+fvalue\s*;", re.S)
_PREDICT = re.compile(
    r"\bvoid\s+predict\s*\(\s*union\s+Entry\s*\*\s*\w+\s*,\s*int\s+\w+\s*,\s*(float|double)\s*\*\s*\w+\s*\)\s*;"
)


def _read_generated_types(header: Path) -> tuple[str, str]:
    """(fvalue type, result element type) declared in tl2cgen's header.h.

    The batch entry point is compiled against whatever these are; a header that no longer matches
    means tl2cgen changed its ABI, and the batch file must be reviewed before trusting it.
    """
    text = header.read_text(encoding="utf-8")
    value = _UNION_VALUE.search(text)
    predict = _PREDICT.search(text)
    if value is None or predict is None:
        raise RankerBuildError(
            f"{header}: tl2cgen {tl2cgen.__version__} generated an unexpected header (looked for "
            "'union Entry { ... float|double fvalue; ... }' and "
            "'void predict(union Entry*, int, float|double*)'); review artifacts/ranker_batch.c"
        )
    return value.group(1), predict.group(1)


def _compile_library(source_dir: Path, result_type: str, *, jobs: int) -> Path:
    """Compile the generated sources plus the batch entry point into source_dir/ranker.so.

    Runs up to `jobs` gcc processes at once (one per translation unit, largest first); returns the
    library's path. Raises RankerBuildError with gcc's output on failure.
    """
    recipe = msgspec.json.decode((source_dir / "recipe.json").read_bytes())
    sources = sorted(recipe["sources"], key=lambda source: -int(source.get("length", 0)))
    batch_source = importlib.resources.files("artifacts").joinpath("ranker_batch.c")
    (source_dir / f"{BATCH_SOURCE}.c").write_bytes(batch_source.read_bytes())

    commands = [[COMPILER, "-c", *CFLAGS, "-o", f"{s['name']}.o", f"{s['name']}.c"] for s in sources]
    commands.append(
        [COMPILER, "-c", *CFLAGS, *BATCH_CFLAGS, f"-DAISLE_RESULT_T={result_type}",
         "-o", f"{BATCH_SOURCE}.o", f"{BATCH_SOURCE}.c"]
    )
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for result in pool.map(lambda command: _run(command, source_dir), commands):
            result.check()

    objects = [f"{s['name']}.o" for s in sources] + [f"{BATCH_SOURCE}.o"]
    library = source_dir / LIBRARY_FILE
    _run([COMPILER, "-o", library.name, *objects, *LDFLAGS], source_dir).check()
    return library


class _CompilerRun(msgspec.Struct, frozen=True):
    command: list[str]
    returncode: int
    output: str

    def check(self) -> None:
        if self.returncode != 0:
            raise RankerBuildError(
                f"compiling the ranker failed ({' '.join(self.command)}, exit {self.returncode}):\n"
                + self.output[-4000:]
            )


def _run(command: list[str], cwd: Path) -> _CompilerRun:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise RankerBuildError(
            f"C compiler {COMPILER!r} not found; the builder needs gcc to compile the ranker"
        ) from exc
    return _CompilerRun(command, done.returncode, done.stdout + done.stderr)


# --- parity -------------------------------------------------------------------------------------


def _check_parity(
    compiled: CompiledRanker,
    booster: lgb.Booster,
    best_iteration: int,
    X_valid: np.ndarray,
    config: RankerConfig,
) -> tuple[float, int]:
    """Max |compiled − LightGBM| over X_valid and a NaN-injected slice of it; (max diff, rows).

    The slice exercises the missing-value path (default directions, NaN-as-zero for features that
    had no NaN in training) even when the validation features have none. Raises RankerBuildError
    above PARITY_TOLERANCE or on any non-finite disagreement.
    """
    rng = np.random.default_rng(config.seed)
    with_nans = np.array(X_valid[:NAN_PARITY_ROWS], dtype=np.float32, order="C", copy=True)
    with_nans[rng.random(with_nans.shape) < NAN_PARITY_SHARE] = np.nan

    max_diff = 0.0
    rows = 0
    for name, X in (("validation rows", np.ascontiguousarray(X_valid)), ("validation rows with NaNs", with_nans)):
        expected = booster.predict(X, raw_score=True, num_iteration=best_iteration, num_threads=config.threads)
        got = compiled.predict(X)
        diff = np.abs(got.astype(np.float64) - expected)
        worst = float(np.max(diff)) if diff.size else 0.0
        if not worst <= PARITY_TOLERANCE:  # also catches NaN
            bad = ~(diff <= PARITY_TOLERANCE)
            row = int(np.argmax(bad & np.isnan(diff))) if np.isnan(diff).any() else int(np.argmax(diff))
            raise RankerBuildError(
                f"compiled ranker disagrees with LightGBM on the {name}: max abs diff {worst:.3g} > "
                f"{PARITY_TOLERANCE:g} (row {row}: compiled {got[row]!r}, LightGBM {expected[row]!r}); "
                f"tl2cgen {tl2cgen.__version__} / treelite {treelite.__version__} may have drifted"
            )
        max_diff = max(max_diff, worst)
        rows += X.shape[0]
    return max_diff, rows
