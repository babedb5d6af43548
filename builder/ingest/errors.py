"""Errors raised at the ingest edge, and the log that collects them before raising.

Every problem names the file, the row, the column, what was expected and what was found, so a data
engineer can open the file at that place and fix it. Rows are 1-based data rows (the header is not
a row); for CSV the message also gives the line number (row + 1, for the header line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

# A message with hundreds of problems hides the first one; ten is enough to see a pattern.
MAX_PROBLEMS = 10
_MAX_SHOWN_CHARS = 60


class InputError(ValueError):
    """Input files that cannot be ingested. `problems` holds each problem found (at most ten)."""

    def __init__(self, message: str, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class SensitiveAttributeError(InputError):
    """An input column denotes an attribute (age, gender, …) Aisle must never personalise on."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one input file; `row` is 1-based, None for a file-level problem."""

    file: str
    expected: str
    found: str
    row: int | None = None
    column: str | None = None
    more_rows: int = 0  # other rows with the same problem, after the first
    is_csv: bool = False

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
            if self.is_csv:
                where += f" (line {self.row + 1})"
        if self.column is not None:
            where += f", column {self.column!r}"
        text = f"{where}: expected {self.expected}; got {self.found}"
        if self.more_rows:
            text += f" (and {self.more_rows} more row{'s' if self.more_rows > 1 else ''})"
        return text


def shown(value: object) -> str:
    """A value as it appears in a message: quoted, and cut so one bad cell cannot flood the log."""
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 1] + "…"
    return text


class ProblemLog:
    """Collects problems across all input files so one run reports them together."""

    def __init__(self) -> None:
        self._problems: list[Problem] = []
        self._dropped = 0

    def add(self, problem: Problem) -> None:
        if len(self._problems) < MAX_PROBLEMS:
            self._problems.append(problem)
        else:
            self._dropped += 1

    def __bool__(self) -> bool:
        return bool(self._problems)

    def raise_if_any(self) -> None:
        if not self._problems:
            return
        problems = tuple(self._problems)
        if len(problems) == 1 and not self._dropped:
            raise InputError(str(problems[0]), problems)
        count = len(problems) + self._dropped
        lines = [f"{count} problems in the input files:"]
        lines += [f"  - {p}" for p in problems]
        if self._dropped:
            lines.append(f"  … and {self._dropped} more (fix these first)")
        raise InputError("\n".join(lines), problems)


class FileCheck:
    """Reports problems of one file into a shared log: the first offending row of each check.

    Checks are vectorised: a boolean mask over the rows, true where the rule is broken; the first
    true row is reported with its value, and the others are counted.
    """

    def __init__(self, file_name: str, is_csv: bool, log: ProblemLog) -> None:
        self.file_name = file_name
        self.is_csv = is_csv
        self.log = log

    def rows(
        self,
        column: str,
        bad: pl.Series,
        values: pl.Series,
        expected: str,
        found: Callable[[int], str] | None = None,
    ) -> bool:
        """Log the first row where `bad` is true (nulls in `bad` count as fine); True if any."""
        bad = bad.fill_null(False)
        count = int(bad.sum())
        if count == 0:
            return False
        row = int(bad.arg_max())  # the first true: arg_max returns the first maximum
        self.log.add(
            Problem(
                file=self.file_name,
                row=row + 1,
                column=column,
                expected=expected,
                found=found(row) if found is not None else self.cell(values, row),
                more_rows=count - 1,
                is_csv=self.is_csv,
            )
        )
        return True

    def column(self, column: str | None, expected: str, found: str) -> None:
        """Log a problem of the whole column (or of the file, with column None)."""
        self.log.add(Problem(file=self.file_name, expected=expected, found=found, column=column, is_csv=self.is_csv))

    def cell(self, values: pl.Series, row: int) -> str:
        value = values[row]
        if isinstance(value, pl.Series):  # a list cell
            value = value.to_list()
        if value is None:
            return "an empty cell" if self.is_csv else "null"
        return shown(value)
