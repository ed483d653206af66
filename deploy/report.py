"""The only module that prints. Rich live stages with timings on a TTY, plain lines otherwise.

Every text passes through the redaction filter before it is shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Protocol

from deploy.redact import Redactor

if TYPE_CHECKING:  # annotations only: the reporter is on the start-up path of every command
    from deploy.model import HostStatus, Outcome


class Reporter(Protocol):
    def stage(self, name: str) -> contextlib.AbstractContextManager[None]: ...
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def command(self, display: str) -> None: ...
    def outcome(self, outcome: Outcome) -> None: ...
    def error(
        self, text: str, evidence: tuple[str, ...] = (), *, exit_code: int | None = None
    ) -> None: ...
    def status(self, status: HostStatus) -> None: ...
    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None: ...
    def finish(self, op: str, exit_code: int) -> None:
        """The command is over; reporters that promise a final record write it if missing."""
        ...


class PlainReporter:
    """Plain lines with elapsed time; what CI logs and pipes get."""

    def __init__(
        self, stream: IO[str] | None = None, redact: Redactor | None = None, verbose: bool = False
    ) -> None:
        self._out = stream or sys.stdout
        self._redact = redact or Redactor()
        self._start = time.monotonic()
        self._verbose = verbose

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:6.1f}s] {self._redact(text)}", file=self._out, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self._line(f"{name} …")
        try:
            yield
        except BaseException:
            self._line(f"{name} failed after {time.monotonic() - started:.1f}s")
            raise
        self._line(f"{name} done in {time.monotonic() - started:.1f}s")

    def info(self, text: str) -> None:
        self._line(f"  {text}")

    def warn(self, text: str) -> None:
        self._line(f"  warning: {text}")

    def command(self, display: str) -> None:
        if self._verbose:
            self._line(f"  $ {display}")

    def error(
        self, text: str, evidence: tuple[str, ...] = (), *, exit_code: int | None = None
    ) -> None:
        print(f"error: {self._redact(text)}", file=sys.stderr, flush=True)
        for line in evidence:
            print(f"  {self._redact(line)}", file=sys.stderr, flush=True)

    def outcome(self, outcome: Outcome) -> None:
        self._line(f"{outcome.op} {outcome.result} (exit {outcome.exit_code}): {outcome.message}")
        for line in outcome.evidence:
            self._line(f"  | {line}")

    def status(self, status: HostStatus) -> None:
        for line in status_lines(status):
            print(self._redact(line), file=self._out, flush=True)

    def finish(self, op: str, exit_code: int) -> None:
        pass

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
        print(self._redact(title), file=self._out)
        for row in [columns, *rows]:
            line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            print(self._redact(line.rstrip()), file=self._out)
        self._out.flush()


class RichReporter(PlainReporter):
    """Live stage spinners with timings for a person at a terminal, drawn by the one
    human-readable renderer of deploy and smoke (smoke.render): the same row styling, narrow
    layout and masking as `smoke`'s output."""

    def __init__(
        self,
        redact: Redactor | None = None,
        verbose: bool = False,
        *,
        stream: IO[str] | None = None,
        width: int | None = None,
    ) -> None:
        super().__init__(stream or sys.stdout, redact, verbose)
        from smoke.render import Renderer

        self._render = Renderer(self._out, self._redact, width=width)

    def _line(self, text: str) -> None:
        self._render.line(text, elapsed=time.monotonic() - self._start)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self._render.stage(name, time.monotonic):
            yield

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        from smoke import render

        self._render.rows(render.Rows(title, render.columns(columns), rows))

    def outcome(self, outcome: Outcome) -> None:
        self._render.outcome(
            outcome.op, outcome.result, outcome.exit_code, outcome.message, outcome.evidence
        )


def status_lines(status: HostStatus) -> list[str]:
    proc = status.process
    lock = status.lock_holder
    lines = [
        f"host        {status.host}",
        f"current     {status.current or '(none)'}",
        f"last good   {status.last_good or '(none)'}",
        "process     "
        + (f"{proc.status}, pids {list(proc.pids)}, restarts {proc.restarts}" if proc else "?"),
        "lock        "
        + (
            f"held by {lock.get('actor', '?')} "
            f"({lock.get('op', '?')} since {lock.get('since', '?')})"
            if lock
            else "free"
        ),
    ]
    if status.schema is not None:
        lines.append(f"schema      {status.schema} (the database, as last journaled)")
    mark = status.needs_human
    if mark is not None:
        lines.append(
            f"NEEDS HUMAN since {mark.since} ({mark.actor}): {mark.reason} Deploys and "
            f"automatic rollbacks are refused until it is cleared; run:"
        )
        lines += [f"  {command}" for command in mark.commands]
    else:
        lines.append("needs human no")
    roles = {}
    if status.slots:
        lines.append("slots")
        for view in status.slots:
            lines.append(f"  {view.line()}")
            if view.release and view.role != "idle":
                roles[view.release] = f"{view.role} in {view.slot.name}"
    lines.append("releases")
    for rid, state in status.releases:
        marks = []
        if rid == status.current:
            marks.append("current")
        if rid == status.last_good:
            marks.append("last good")
        if rid in roles:
            marks.append(roles[rid])
        suffix = f"  <- {', '.join(marks)}" if marks else ""
        lines.append(f"  {rid}  {state}{suffix}")
    return lines


class JsonReporter:
    """One JSON object per line on stdout: events, then one final `outcome` object (also for
    errors). Written by smoke.jsonlines, the one JSON writer of deploy and smoke; the format is
    docs/json-output.md and smoke/output.schema.json. CI parses this."""

    def __init__(self, stream: IO[str] | None = None, redact: Redactor | None = None) -> None:
        from smoke.jsonlines import JsonLines

        self._lines = JsonLines(stream, redact)
        self._error: tuple[str, list[str]] | None = None
        self._outcome: Outcome | None = None

    def finish(self, op: str, exit_code: int) -> None:
        if self._outcome is not None:
            self._emit("outcome", **dataclasses.asdict(self._outcome))
            return
        if not self._lines.ended:
            message, evidence = self._error or ("", [])
            self._lines.outcome(
                op=op,
                result="ok" if exit_code == 0 else "error",
                exit_code=exit_code,
                message=message,
                evidence=evidence,
            )

    def _emit(self, event: str, **fields: object) -> None:
        self._lines.emit(event, **fields)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self._emit("stage", name=name, status="started")
        try:
            yield
        except BaseException:
            self._emit(
                "stage", name=name, status="failed", seconds=round(time.monotonic() - started, 3)
            )
            raise
        self._emit("stage", name=name, status="done", seconds=round(time.monotonic() - started, 3))

    def info(self, text: str) -> None:
        self._emit("info", message=text)

    def warn(self, text: str) -> None:
        self._emit("warning", message=text)

    def command(self, display: str) -> None:
        self._emit("command", display=display)

    def error(
        self, text: str, evidence: tuple[str, ...] = (), *, exit_code: int | None = None
    ) -> None:
        self._emit("error", message=text, evidence=list(evidence))
        if exit_code is not None:
            self._error = (text, list(evidence))

    def outcome(self, outcome: Outcome) -> None:
        # Held back until finish(): the lock is released after the flow decides, and the
        # outcome must stay the last line.
        self._outcome = outcome

    def status(self, status: HostStatus) -> None:
        fields = dataclasses.asdict(status)
        fields["slots"] = [
            {
                "slot": view.slot.name,
                "port": view.slot.port,
                "role": view.role,
                "release": view.release,
                "process": {
                    "status": view.process.status,
                    "pids": list(view.process.pids),
                    "restarts": view.process.restarts,
                }
                if view.process
                else None,
            }
            for view in status.slots
        ]
        self._emit("status", **fields)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self._emit(
            "table",
            title=title,
            columns=columns,
            rows=[dict(zip(columns, row, strict=True)) for row in rows],
        )


class RecordingReporter:
    """Keeps everything for assertions in tests."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.outcomes: list[Outcome] = []
        self.stages: list[str] = []
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self.finished: tuple[str, int] | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.stages.append(name)
        yield

    def info(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.lines.append(f"warning: {text}")

    def command(self, display: str) -> None:
        self.lines.append(f"$ {display}")

    def error(
        self, text: str, evidence: tuple[str, ...] = (), *, exit_code: int | None = None
    ) -> None:
        self.lines.append(f"error: {text}")
        self.lines.extend(evidence)

    def outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def status(self, status: HostStatus) -> None:
        self.lines.extend(status_lines(status))

    def finish(self, op: str, exit_code: int) -> None:
        self.finished = (op, exit_code)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self.lines.append(title)
        self.tables.append((columns, rows))
