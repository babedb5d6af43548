"""The reliability suite: fuzzing, injected faults, killed workers, abuse.

Every test here is marked `reliability` (so `pytest -m reliability` runs only this suite, and
`-m "not reliability"` skips it). CI runs the short version; `AISLE_SOAK=1 scripts/test
tests/reliability` runs the same tests long (more fuzz examples, more kills, longer soaks): each
test scales its figures with `soak.scale(short, long)`. Figures a test measures (events sent and
stored, kills survived, 5xx seen) go on one `RELIABILITY name key=value ...` line each
(`tests.reliability._soak.report`), so `-s` output gives the closing note's numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability._soak import SOAK, Soak

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def soak() -> Soak:
    return SOAK
