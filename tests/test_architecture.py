"""The import arrows of DESIGN.md §3, checked by reading every module's imports (including
imports inside functions, which a runtime check would miss)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"engine", "kernels", "artifacts", "builder", "bench", "tests"}
TRAINING = {"torch", "lightgbm", "tl2cgen", "onnx", "onnxscript", "polars", "pyarrow", "pandas", "sklearn", "matplotlib"}
STDLIB = set(sys.stdlib_module_names)


def imports_of(package: str) -> dict[str, set[str]]:
    """module path -> top-level names it imports (absolute imports; relative ones are ours)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add(package if node.level else (node.module or "").split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", ["engine", "artifacts", "kernels"])
def test_serving_packages_never_import_builder_or_training_libraries(package: str) -> None:
    offences = {mod: sorted(names & ({"builder", "bench", "tests"} | TRAINING)) for mod, names in imports_of(package).items()}
    assert {m: o for m, o in offences.items() if o} == {}


def test_artifacts_imports_no_engine() -> None:
    offences = {mod: sorted(names & {"engine"}) for mod, names in imports_of("artifacts").items()}
    assert {m: o for m, o in offences.items() if o} == {}


def test_kernels_import_only_numpy_numba_and_themselves() -> None:
    allowed = {"numpy", "numba", "kernels", "__future__"} | STDLIB
    offences = {mod: sorted(names - allowed) for mod, names in imports_of("kernels").items()}
    assert {m: o for m, o in offences.items() if o} == {}


def test_the_check_sees_a_forbidden_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "engine"
    pkg.mkdir()
    (pkg / "bad.py").write_text("def f():\n    import torch\n    from builder import build\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imports_of("engine") == {"engine/bad.py": {"torch", "builder"}}
