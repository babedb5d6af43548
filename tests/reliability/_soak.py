"""Scale and figures for the reliability suite (see conftest.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Soak:
    long: bool

    def scale(self, short: int, long: int) -> int:
        return long if self.long else short


SOAK = Soak(long=os.environ.get("AISLE_SOAK", "") not in ("", "0"))


def report(name: str, **figures: object) -> None:
    """One line a reader (or the closing note) can grep: RELIABILITY name key=value ..."""
    print(f"\nRELIABILITY {name} " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def stored_event_ids(state: Path) -> tuple[list[str], int]:
    """Every event id the server's event log holds, in sequence order, and its last seq (read
    only, after the server stopped)."""
    from engine.eventlog import EventLog

    log = EventLog(state, readonly=True)
    try:
        return [event.event_id for _, event in log.iter_events()], log.last_seq()
    finally:
        log.close()
