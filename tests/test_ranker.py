"""The ranker: LightGBM training, TL2cgen compilation, and the engine-side loader (artifacts.ranker).

Synthetic store: 300 training queries × 30 candidates × 12 features, graded by a known relevance
function of four of them; the rest are noise. Small enough that each train + compile is ~1 s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
import tl2cgen
import treelite

import builder.ranker as ranker_module
from artifacts.ranker import CompiledRanker, RankerLoadError
from builder.config import RankerConfig
from builder.ranker import RankerBuildError, RankerResult, train_ranker

N_FEATURES = 12
CANDIDATES = 30
FEATURE_NAMES = [f"f{i}" for i in range(N_FEATURES)]
# Features 0..3 carry the signal; 4 never has a NaN in training (LightGBM: missing_type None, so a
# NaN at prediction time is treated as 0.0); the others get NaNs (missing_type NaN).
NAN_FREE_FEATURE = 4


class Split:
    def __init__(self, X: np.ndarray, y: np.ndarray, group: np.ndarray) -> None:
        self.X, self.y, self.group = X, y, group


def make_split(n_queries: int, rng: np.random.Generator, nan_share: float = 0.05) -> Split:
    """Queries of CANDIDATES rows; grade 3 for the top 2 by a hidden score, 2 next 3, 1 next 5."""
    n = n_queries * CANDIDATES
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    hidden = X[:, 0] + 0.6 * X[:, 1] * X[:, 2] - 0.7 * np.abs(X[:, 3]) + 0.3 * rng.normal(size=n)
    y = np.zeros(n, dtype=np.int32)
    for q in range(n_queries):
        rows = slice(q * CANDIDATES, (q + 1) * CANDIDATES)
        rank = np.argsort(np.argsort(-hidden[rows]))
        y[rows] = np.select([rank < 2, rank < 5, rank < 10], [3, 2, 1], 0)
    nan_mask = rng.random(X.shape) < nan_share
    nan_mask[:, NAN_FREE_FEATURE] = False
    X[nan_mask] = np.nan
    return Split(X, y, np.full(n_queries, CANDIDATES, dtype=np.int32))


def ndcg_at_10(scores: np.ndarray, y: np.ndarray, group: np.ndarray) -> float:
    """Mean NDCG@10 with LightGBM's gains (2^grade − 1) and log2 discounts."""
    discounts = 1.0 / np.log2(np.arange(2, 12))
    total, start = 0.0, 0
    for size in group:
        labels, s = y[start : start + size], scores[start : start + size]
        start += size
        gains = 2.0 ** labels[np.argsort(-s, kind="stable")][:10] - 1
        ideal = 2.0 ** np.sort(labels)[::-1][:10] - 1
        total += float(gains @ discounts[: len(gains)]) / float(ideal @ discounts[: len(ideal)])
    return total / len(group)


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    rng = np.random.default_rng(7)
    return make_split(300, rng), make_split(100, rng)


class Trained:
    def __init__(self, result: RankerResult, out_dir: Path) -> None:
        self.result, self.out_dir = result, out_dir
        self.library = out_dir / result.files["library"]
        self.booster = lgb.Booster(model_file=str(out_dir / result.files["lightgbm"]))


def train(data: tuple[Split, Split], out_dir: Path, **config: object) -> Trained:
    train_split, valid_split = data
    settings = {"trees": 50, "parallel_comp": 2, "threads": 2, **config}
    result = train_ranker(
        train_split.X, train_split.y, train_split.group,
        valid_split.X, valid_split.y, valid_split.group,
        FEATURE_NAMES, RankerConfig(**settings), out_dir,
    )
    return Trained(result, out_dir)


@pytest.fixture(scope="module")
def quantized(data: tuple[Split, Split], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train(data, tmp_path_factory.mktemp("ranker-quantized"), quantize=True)


@pytest.fixture(scope="module")
def plain(data: tuple[Split, Split], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train(data, tmp_path_factory.mktemp("ranker-plain"), quantize=False)


@pytest.fixture(params=["quantized", "plain"])
def trained(request: pytest.FixtureRequest) -> Trained:
    """Each parity test runs against both TL2cgen code paths (quantize=1 and quantize=0)."""
    return request.getfixturevalue(request.param)


# --- parity with LightGBM -----------------------------------------------------------------------


def test_compiled_scores_match_lightgbm(trained: Trained, data: tuple[Split, Split]) -> None:
    _, valid = data
    ranker = CompiledRanker(trained.library, n_features=N_FEATURES)
    expected = trained.booster.predict(valid.X, raw_score=True)
    got = ranker.predict(valid.X)
    assert got.dtype == np.float32 and got.shape == (valid.X.shape[0],)
    assert np.max(np.abs(got - expected)) <= 1e-5
    assert trained.result.max_abs_diff_vs_lightgbm <= 1e-5


def test_missing_values_follow_lightgbm(trained: Trained) -> None:
    rng = np.random.default_rng(11)
    X = (rng.normal(size=(3000, N_FEATURES)) * 2).astype(np.float32)
    X[rng.random(X.shape) < 0.25] = np.nan
    X[:, NAN_FREE_FEATURE][rng.random(3000) < 0.5] = np.nan  # unseen-missing feature: NaN means 0
    X[0] = np.nan
    X[1] = 0.0
    X[2] = np.inf
    X[3] = -np.inf
    X[4] = 1e-36  # LightGBM's zero threshold is 1e-35: values this small sit on the split boundary
    ranker = CompiledRanker(trained.library, n_features=N_FEATURES)
    expected = trained.booster.predict(X, raw_score=True)
    assert np.max(np.abs(ranker.predict(X) - expected)) <= 1e-5


def test_model_learns_the_relevance_function(trained: Trained, data: tuple[Split, Split]) -> None:
    _, valid = data
    rng = np.random.default_rng(3)
    random_ndcg = np.mean([ndcg_at_10(rng.random(len(valid.y)), valid.y, valid.group) for _ in range(5)])
    compiled_ndcg = ndcg_at_10(CompiledRanker(trained.library, N_FEATURES).predict(valid.X), valid.y, valid.group)
    assert trained.result.valid_ndcg_at_10 > random_ndcg + 0.25
    assert compiled_ndcg == pytest.approx(trained.result.valid_ndcg_at_10, abs=0.01)


def test_training_is_deterministic(quantized: Trained, plain: Trained) -> None:
    text_q = (quantized.out_dir / "ranker.lgb.txt").read_text()
    text_p = (plain.out_dir / "ranker.lgb.txt").read_text()
    assert text_q == text_p


def test_build_writes_the_three_files_trimmed_to_the_best_iteration(trained: Trained) -> None:
    result = trained.result
    assert set(result.files) == {"lightgbm", "treelite", "library"}
    for name in result.files.values():
        assert (trained.out_dir / name).stat().st_size > 0
    assert not list(trained.out_dir.glob("*.tmp"))
    assert 1 <= result.best_iteration <= 50
    assert result.n_trees == result.best_iteration == trained.booster.num_trees()
    checkpoint = treelite.Model.deserialize(str(trained.out_dir / result.files["treelite"]))
    assert checkpoint.num_tree == result.n_trees and checkpoint.num_feature == N_FEATURES
    assert (result.lightgbm_version, result.treelite_version, result.tl2cgen_version) == (
        lgb.__version__, treelite.__version__, tl2cgen.__version__,
    )
    assert result.n_features == N_FEATURES and result.c_result_type in ("float", "double")


def test_library_exports_only_the_aisle_abi(trained: Trained) -> None:
    listing = subprocess.run(
        ["nm", "-D", "--defined-only", str(trained.library)], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    assert exported == {"aisle_ranker_abi_version", "aisle_num_feature", "aisle_predict_batch"}


def test_batch_entry_point_refuses_a_wrong_column_count(quantized: Trained) -> None:
    lib = ctypes.CDLL(str(quantized.library))
    lib.aisle_predict_batch.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.aisle_predict_batch.restype = ctypes.c_int32
    X = np.zeros((2, N_FEATURES + 1), dtype=np.float32)
    out = np.zeros(2, dtype=np.float32)
    assert lib.aisle_predict_batch(X.ctypes.data, 2, N_FEATURES + 1, out.ctypes.data) == 1
    assert lib.aisle_predict_batch(X.ctypes.data, -1, N_FEATURES, out.ctypes.data) == 2


# --- the build's own checks ---------------------------------------------------------------------


def test_version_skew_warning_is_silenced_and_recorded(
    data: tuple[Split, Split], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    result = train(data, tmp_path, trees=5).result
    captured = capfd.readouterr()
    assert "newer Treelite version" not in captured.err
    assert "Parallel compilation" not in captured.out  # tl2cgen's info log goes to logging instead
    if result.tl2cgen_treelite_runtime:
        assert result.tl2cgen_treelite_runtime != treelite.__version__


def test_skew_filter_keeps_other_native_messages() -> None:
    text = (
        "[22:16:02] /x/serializer.cc:202: The model you are loading originated from a newer Treelite version; "
        "some functionalities may be unavailable.\n"
        "Currently running Treelite version 4.1.2\n"
        "The model checkpoint was generated from Treelite version 4.8.1\n"
        "[22:16:03] something else went wrong\n"
    )
    rest, runtime = ranker_module._drop_version_skew_warning(text)
    assert rest == "[22:16:03] something else went wrong\n"
    assert runtime == "4.1.2"
    assert ranker_module._drop_version_skew_warning("Currently running Treelite version 9\n")[0] != ""


def test_parity_failure_fails_the_build(
    data: tuple[Split, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranker_module, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(RankerBuildError, match="disagrees with LightGBM"):
        train(data, tmp_path, trees=5)
    assert not (tmp_path / "ranker.so").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t, v: (t.X.astype(np.float64), t.y, t.group, v), "X_train must be a float32"),
        (lambda t, v: (t.X, t.y + 1, t.group, v), "grades must be in 0..3"),
        (lambda t, v: (t.X, t.y, t.group[:-1], v), "group_train sums to"),
        (lambda t, v: (t.X[:, :5], t.y, t.group, v), "X_train has 5 columns"),
        (lambda t, v: (t.X, t.y, t.group, Split(v.X[:0], v.y[:0], v.group[:0])), "X_valid has no rows"),
    ],
)
def test_malformed_training_inputs_are_refused(
    data: tuple[Split, Split], tmp_path: Path, change: object, message: str
) -> None:
    X, y, group, valid = change(*data)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        train_ranker(X, y, group, valid.X, valid.y, valid.group, FEATURE_NAMES, RankerConfig(trees=5), tmp_path)


# --- the loader ---------------------------------------------------------------------------------


def test_loader_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RankerLoadError, match="ranker library not found"):
        CompiledRanker(tmp_path / "ranker.so", n_features=N_FEATURES)


def test_loader_refuses_a_file_that_is_not_a_library(tmp_path: Path) -> None:
    fake = tmp_path / "ranker.so"
    fake.write_text("not an ELF file")
    with pytest.raises(RankerLoadError, match="cannot load as a shared library"):
        CompiledRanker(fake, n_features=N_FEATURES)


def test_loader_refuses_a_library_that_is_not_ours(tmp_path: Path) -> None:
    source = tmp_path / "dummy.c"
    source.write_text("int predict(void) { return 42; }\nint get_num_feature(void) { return 12; }\n")
    library = tmp_path / "dummy.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    with pytest.raises(RankerLoadError, match="not an Aisle ranker library"):
        CompiledRanker(library, n_features=N_FEATURES)


def test_loader_refuses_libc() -> None:
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no libc found by ctypes.util")
    path = next((p for p in (Path("/lib/x86_64-linux-gnu") / libc, Path("/usr/lib") / libc) if p.is_file()), None)
    if path is None:
        pytest.skip(f"{libc} not at a known path")
    with pytest.raises(RankerLoadError, match="not an Aisle ranker library"):
        CompiledRanker(path, n_features=N_FEATURES)


def test_loader_refuses_a_feature_count_mismatch(quantized: Trained) -> None:
    with pytest.raises(RankerLoadError, match="trained on 12 features, the feature spec gives 13"):
        CompiledRanker(quantized.library, n_features=N_FEATURES + 1)


def test_loader_follows_a_symlinked_bundle_path(quantized: Trained, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(quantized.out_dir, target_is_directory=True)
    ranker = CompiledRanker(link / "ranker.so", n_features=N_FEATURES)
    X = np.zeros((3, N_FEATURES), dtype=np.float32)
    np.testing.assert_allclose(ranker.predict(X), quantized.booster.predict(X, raw_score=True), atol=1e-5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: np.zeros((4, N_FEATURES), dtype=np.float64), "must be float32"),
        (lambda: np.zeros(N_FEATURES, dtype=np.float32), r"must have shape \(n, 12\)"),
        (lambda: np.zeros((4, N_FEATURES + 1), dtype=np.float32), r"must have shape \(n, 12\)"),
        (lambda: np.zeros((4, N_FEATURES), dtype=np.float32, order="F"), "C-contiguous"),
        (lambda: np.zeros((8, N_FEATURES), dtype=np.float32)[::2], "C-contiguous"),
        (lambda: [[0.0] * N_FEATURES], "numpy.ndarray"),
    ],
)
def test_predict_refuses_malformed_input(quantized: Trained, make: object, message: str) -> None:
    ranker = CompiledRanker(quantized.library, n_features=N_FEATURES)
    with pytest.raises(ValueError, match=message):
        ranker.predict(make())  # type: ignore[operator]


def test_predict_on_no_rows_returns_an_empty_array(quantized: Trained) -> None:
    ranker = CompiledRanker(quantized.library, n_features=N_FEATURES)
    scores = ranker.predict(np.empty((0, N_FEATURES), dtype=np.float32))
    assert scores.shape == (0,) and scores.dtype == np.float32


def test_loader_imports_no_training_library() -> None:
    code = (
        "import sys, artifacts.ranker\n"
        "bad = [m for m in ('tl2cgen', 'treelite', 'lightgbm', 'builder') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
