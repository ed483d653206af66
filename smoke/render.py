"""The one human-readable renderer of releasegate, deploy's and smoke's alike: stage marks,
lines, outcome lines and rows of results (preflight checks, releases, journal entries, smoke
checks, perf endpoints) for a person at a terminal, every text through the redaction filter.

Rows are a table on a wide terminal. Below NARROW columns a table would squeeze its free-text
columns (a check's expected-vs-got, a preflight fix) into slivers, so each row becomes one
line and its detail is wrapped on the lines under it. What differs between commands is data:
the columns (`Column`: a verdict, a number, free text, detail) and the rows. Lives in smoke/
because smoke/ never imports deploy/ (like the JSON writer, the clock and the redaction filter).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from smoke.secrets import Redactor

# Below this many columns, rows with detail are lines with the detail under them.
NARROW = 100
# A verdict's colour, whichever command gave it (smoke PASS/FAIL, preflight ok/FAIL, perf OK/…).
VERDICT_STYLES = {
    "PASS": "green",
    "OK": "green",
    "FAIL": "bold red",
    "ERROR": "bold red",
    "BREACH": "bold red",
    "WARN": "yellow",
}
VERDICT_WIDTH = 5
Kind = Literal["text", "verdict", "number", "detail"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind = "text"
    unit: str = ""  # after the value on a narrow terminal's row line ("3x", "12 ms")


# How deploy's tables (which name their columns) are laid out: the same kinds smoke uses.
KNOWN_COLUMNS = {
    "result": Column("result", "verdict"),
    "detail": Column("detail", "detail"),
    "fix": Column("fix", "detail"),
    "limits": Column("limits", "detail"),
}


def columns(names: Iterable[str]) -> tuple[Column, ...]:
    return tuple(KNOWN_COLUMNS.get(name, Column(name)) for name in names)


@dataclass(frozen=True)
class Rows:
    """A titled set of rows, and the summary line under them (red when `failed`)."""

    title: str
    columns: tuple[Column, ...]
    rows: Sequence[Sequence[str]]
    summary: str = ""
    failed: bool = False


def outcome_style(exit_code: int) -> str:
    return "green" if exit_code == 0 else "yellow" if exit_code == 3 else "red"


class Renderer:
    """Writes to a terminal (or any stream, as if it were one, `width` columns wide)."""

    def __init__(
        self,
        out: IO[str] | None = None,
        redact: Redactor | None = None,
        *,
        width: int | None = None,
    ) -> None:
        self.console = Console(
            file=out or sys.stdout, highlight=False, force_terminal=True, width=width
        )
        self.redact = redact or Redactor()

    @property
    def narrow(self) -> bool:
        return self.console.width < NARROW

    def line(self, text: str, style: str = "", *, elapsed: float | None = None) -> None:
        shown = Text()
        if elapsed is not None:
            shown.append(f"{elapsed:6.1f}s ", style="dim")
        shown.append(self.redact(text), style=style)
        self.console.print(shown, overflow="fold")

    @contextlib.contextmanager
    def stage(self, name: str, clock: Callable[[], float]) -> Iterator[None]:
        """A spinner while the stage runs, then ✓ or ✗ with its duration (`clock`: monotonic
        seconds)."""
        started = clock()
        with self.console.status(Text(f"{self.redact(name)} …", style="bold")):
            try:
                yield
            except BaseException:
                self._mark(False, name, clock() - started)
                raise
        self._mark(True, name, clock() - started)

    def _mark(self, ok: bool, name: str, seconds: float) -> None:
        mark = Text("✓ ", style="green") if ok else Text("✗ ", style="red")
        mark.append(self.redact(name))
        mark.append(f" {seconds:.1f}s", style="dim")
        self.console.print(mark, overflow="fold")

    def outcome(
        self, op: str, result: str, exit_code: int, message: str, evidence: Iterable[str] = ()
    ) -> None:
        line = Text()
        line.append(f"{op} {result}", style=f"bold {outcome_style(exit_code)}")
        line.append(f" (exit {exit_code}): {self.redact(message)}")
        self.console.print(line, overflow="fold")
        for item in evidence:
            self.console.print(Text("  | ", style="dim") + Text(self.redact(item)), overflow="fold")

    def rows(self, rows: Rows) -> None:
        details = [c.kind == "detail" for c in rows.columns]
        if self.narrow and any(details):
            self._lines(rows)
        else:
            self._table(rows)
        if rows.summary:
            style = "bold red" if rows.failed else "green"
            self.console.print(Text(self.redact(rows.summary), style=style), overflow="fold")

    def _cell(self, column: Column, value: str) -> Text:
        if column.kind == "verdict":
            return Text(value, style=VERDICT_STYLES.get(value.strip().upper(), ""))
        return Text(self.redact(value))

    def _table(self, rows: Rows) -> None:
        table = Table(title=Text(self.redact(rows.title)), title_justify="left")
        for c in rows.columns:
            if c.kind == "verdict":
                table.add_column(c.name, no_wrap=True)
            elif c.kind == "number":
                table.add_column(c.name, justify="right")
            else:
                table.add_column(c.name, overflow="fold")
        for row in rows.rows:
            table.add_row(*(self._cell(c, v) for c, v in zip(rows.columns, row, strict=True)))
        self.console.print(table)

    def _lines(self, rows: Rows) -> None:
        """One line per row (verdict first, padded), each detail on the lines under it."""
        self.console.print(Text(self.redact(rows.title), style="bold"), overflow="fold")
        verdicts = [i for i, c in enumerate(rows.columns) if c.kind == "verdict"]
        # at least as wide as ERROR, so every command's rows start their text in one column
        pad = max((len(row[i]) for row in rows.rows for i in verdicts), default=0)
        pad = max(pad, VERDICT_WIDTH) if verdicts else 0
        indent = pad + 1 if verdicts else 2
        for row in rows.rows:
            line = Text()
            parts = []
            for c, value in zip(rows.columns, row, strict=True):
                if c.kind == "verdict":
                    line.append_text(self._cell(c, value.ljust(pad)))
                    line.append(" ")
                elif c.kind != "detail" and value:
                    parts.append(f"{value}{c.unit}")
            line.append(self.redact("  ".join(parts)))
            self.console.print(line, overflow="fold")
            for c, value in zip(rows.columns, row, strict=True):
                if c.kind == "detail" and value:
                    text = value if c.name == "detail" else f"{c.name}: {value}"
                    self.console.print(
                        Padding(Text(self.redact(text)), (0, 0, 0, indent)), overflow="fold"
                    )
