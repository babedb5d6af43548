"""scripts/audit_report.py: how a pip-audit report is judged (the CI step that fails on known
vulnerabilities in the pinned dependencies)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def judge(tmp_path: Path, deps: list[dict], required: bool = False) -> subprocess.CompletedProcess:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"dependencies": deps, "fixes": []}))
    env = {k: v for k, v in os.environ.items() if k != "AISLE_AUDIT_REQUIRED"}
    if required:
        env["AISLE_AUDIT_REQUIRED"] = "1"
    return subprocess.run([sys.executable, str(REPO / "scripts" / "audit_report.py"), str(report), "1"],
                          capture_output=True, text=True, env=env)


def test_a_known_vulnerability_fails_and_is_named(tmp_path: Path) -> None:
    result = judge(tmp_path, [
        {"name": "numpy", "version": "2.3.0", "vulns": []},
        {"name": "urllib3", "version": "2.0.0", "vulns": [{"id": "GHSA-xxxx-yyyy-zzzz", "fix_versions": ["2.0.7"], "aliases": []}]},
    ])
    assert result.returncode == 1
    assert "VULNERABLE urllib3 2.0.0: GHSA-xxxx-yyyy-zzzz (fixed in 2.0.7)" in result.stderr


def test_audited_and_clean_passes(tmp_path: Path) -> None:
    result = judge(tmp_path, [{"name": "numpy", "version": "2.3.0", "vulns": []}, {"name": "aisle", "skip_reason": "editable"}])
    assert result.returncode == 0 and "1 packages audited, no known vulnerabilities" in result.stderr


@pytest.mark.parametrize("required", [False, True])
def test_nothing_audited_warns_and_fails_only_when_required(tmp_path: Path, required: bool) -> None:
    result = judge(tmp_path, [{"name": "numpy", "skip_reason": "Dependency not found on PyPI and could not be audited"}], required)
    assert "NOT AUDITED (1 of 1)" in result.stderr and "WARNING: no package could be audited" in result.stderr
    assert result.returncode == (1 if required else 0)


def test_every_dependency_is_pinned_exactly() -> None:
    lines = [l for l in (REPO / "scripts" / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert lines and all("==" in l for l in lines)
    names = {l.split("==")[0].lower().replace("_", "-") for l in lines}
    for required in ("numpy", "numba", "usearch", "onnxruntime", "msgspec", "granian", "lmdb", "treelite", "pyzmq", "lightgbm", "tl2cgen", "torch"):
        assert required in names, required
