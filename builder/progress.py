"""Progress display for long build work: one line per stage on a terminal (rewritten in place),
plain timestamped lines otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...


class ConsoleProgress:
    def __init__(self, stream: TextIO = sys.stderr, min_interval: float = 0.5) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._stage = ""
        self._t0 = time.monotonic()
        self._stage_t0 = self._t0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self._stage:
            if self._stage and self.tty:
                self.stream.write("\n")
            self._stage, self._stage_t0, self._last = stage, now, 0.0
        finished = total > 0 and done >= total
        if not finished and now - self._last < self.min_interval:
            return
        self._last = now
        pct = f"{100.0 * done / total:5.1f}%" if total > 0 else ""
        line = f"[{now - self._t0:7.1f}s] {stage:<22} {done:>10,}/{total:<10,} {pct} ({now - self._stage_t0:.1f}s)"
        if self.tty:
            self.stream.write("\r" + line)
            if finished:
                self.stream.write("\n")
                self._stage = ""
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        if self.tty and self._stage:
            self.stream.write("\n")
            self._stage = ""
        self.stream.write(f"[{time.monotonic() - self._t0:7.1f}s] {message}\n")
        self.stream.flush()


def silent(stage: str, done: int, total: int) -> None:
    return None
