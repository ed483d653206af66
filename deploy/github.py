"""GitHub Actions: a step summary and `::error` annotations for an operation's outcome.

When `GITHUB_ACTIONS=true`, `operations.make_reporter` wraps the usual reporter in an
`ActionsReporter`. It forwards everything to the inner reporter unchanged and remembers the
outcome (or the error that ended the operation). At `finish` it appends a Markdown summary
(op, result, release, live, exit code, failed checks, evidence) to `$GITHUB_STEP_SUMMARY`
and, for a failure, prints `::error` workflow commands — one for the operation and one per
failed check — on stderr, where the runner reads them as well as on stdout, so `--json`
stdout stays JSON lines only. Every text passes the redaction filter first.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from deploy.model import HostStatus, Outcome
from deploy.notify import failed_checks
from deploy.redact import Redactor
from deploy.report import Reporter
from smoke.report import ACTIONS_MAX_ANNOTATIONS, actions_error

# What each exit code tells a CI author (README "Exit codes", docs/ci.md).
EXIT_MEANINGS = {
    0: "success",
    1: "a smoke check failed",
    2: "invalid input or config; nothing contacted",
    3: "the new release failed a gate (rejected, or rolled back); the previous release serves",
    4: "lock held by someone else; nothing changed",
    5: "failed before activation; nothing live changed",
    6: "rollback failed or impossible; a human is needed",
    7: "host key unknown or changed; refused",
    130: "interrupted (SIGINT) after the safe cleanup",
    143: "interrupted (SIGTERM) after the safe cleanup",
}
EVIDENCE_LINES = 40


def under_actions(environ: Mapping[str, str]) -> bool:
    return environ.get("GITHUB_ACTIONS") == "true"


def run_url(environ: Mapping[str, str]) -> str | None:
    """The link to this workflow run, when running under Actions."""
    server = environ.get("GITHUB_SERVER_URL")
    repo = environ.get("GITHUB_REPOSITORY")
    run = environ.get("GITHUB_RUN_ID")
    if not (under_actions(environ) and server and repo and run):
        return None
    return f"{server}/{repo}/actions/runs/{run}"


def defuse(line: str) -> str:
    """A line of remote text (app logs, HTTP bodies) that starts like a workflow command
    would be run by the runner; `: :` keeps it readable and inert."""
    stripped = line.lstrip()
    if stripped.startswith("::"):
        return line[: len(line) - len(stripped)] + ": :" + stripped[2:]
    return line


class ActionsReporter:
    """A Reporter wrapper for runs under GitHub Actions (see the module docstring)."""

    def __init__(
        self,
        inner: Reporter,
        *,
        redact: Redactor,
        summary_path: Path | None,
        env: str = "",
        err: IO[str] | None = None,
    ) -> None:
        self.inner = inner
        self._redact = redact
        self._summary = summary_path
        self._env = env
        self._err = err
        self._outcome: Outcome | None = None
        self._error: tuple[str, tuple[str, ...]] | None = None

    # forwarded --------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self.inner.stage(name):
            yield

    def info(self, text: str) -> None:
        self.inner.info(defuse(text))

    def warn(self, text: str) -> None:
        self.inner.warn(defuse(text))

    def command(self, display: str) -> None:
        self.inner.command(defuse(display))

    def status(self, status: HostStatus) -> None:
        self.inner.status(status)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self.inner.table(title, columns, rows)

    # recorded ---------------------------------------------------------------------------
    def outcome(self, outcome: Outcome) -> None:
        self._outcome = outcome
        self.inner.outcome(outcome)

    def error(
        self, text: str, evidence: tuple[str, ...] = (), *, exit_code: int | None = None
    ) -> None:
        if exit_code is not None:
            self._error = (text, evidence)
        self.inner.error(defuse(text), tuple(defuse(x) for x in evidence), exit_code=exit_code)

    def finish(self, op: str, exit_code: int) -> None:
        self.inner.finish(op, exit_code)
        final = self.final(op, exit_code)
        if final is None:
            return
        if self._summary is not None:
            try:
                with self._summary.open("a", encoding="utf-8") as out:
                    out.write(step_summary(final, self._env, self._redact))
            except OSError as exc:
                self.inner.warn(f"could not append to the step summary {self._summary}: {exc}")
        for line in error_annotations(final, self._env, self._redact):
            print(line, file=self._err or sys.stderr, flush=True)

    def final(self, op: str, exit_code: int) -> Outcome | None:
        """The outcome that ended the operation: the last one reported with this exit code,
        else the error that ended it. None for a quiet success (status, releases, …)."""
        if self._outcome is not None and self._outcome.exit_code == exit_code:
            return self._outcome
        if exit_code == 0:
            return None
        message, evidence = self._error or (f"{op} ended with exit {exit_code}", ())
        return Outcome(
            op=op,
            result="error",
            exit_code=exit_code,
            release=None,
            live=None,
            message=message,
            evidence=evidence,
        )


def _what(outcome: Outcome, env: str) -> str:
    return f"releasegate {outcome.op}{f' {env}' if env else ''}"


def error_annotations(outcome: Outcome, env: str, redact: Redactor) -> list[str]:
    """`::error` lines for a failed operation: one for the operation, one per failed check
    (GitHub shows at most 10 per step)."""
    if outcome.exit_code == 0:
        return []
    lines = [
        actions_error(
            redact(f"{_what(outcome, env)}: {outcome.result} (exit {outcome.exit_code})"),
            redact(outcome.message),
        )
    ]
    for check in failed_checks(outcome.evidence)[: ACTIONS_MAX_ANNOTATIONS - 1]:
        lines.append(actions_error(redact(f"failed check ({_what(outcome, env)})"), redact(check)))
    return lines


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _fence(lines: list[str]) -> str:
    """A code fence longer than any run of backticks inside, so no line can close it."""
    longest = max((len(run) for x in lines for run in re.findall(r"`+", x)), default=0)
    return "`" * max(3, longest + 1)


def step_summary(outcome: Outcome, env: str, redact: Redactor) -> str:
    """Markdown for `$GITHUB_STEP_SUMMARY`."""
    o = outcome
    mark = "✅" if o.exit_code == 0 else ("🚨" if o.exit_code == 6 else "❌")
    meaning = EXIT_MEANINGS.get(o.exit_code, "see the README's exit codes")
    rows = [
        ("operation", o.op),
        ("environment", env or "—"),
        ("result", o.result),
        ("release", f"`{o.release}`" if o.release else "—"),
        ("live", f"`{o.live}`" if o.live else "unknown" if o.exit_code == 6 else "—"),
        ("exit code", f"{o.exit_code} — {meaning}"),
        *((f"slot {r.slot}", f"{r.role} `{r.release or '-'}`") for r in o.slots),
    ]
    out = [
        f"### {mark} {_cell(redact(_what(o, env)))}: {_cell(o.result)} (exit {o.exit_code})",
        "",
        _cell(redact(o.message)),
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {_cell(redact(v))} |" for k, v in rows),
        "",
    ]
    checks = failed_checks(o.evidence)
    if checks:
        out += ["**Failed checks**", ""]
        out += ["- `" + _cell(redact(c)).replace("`", "'") + "`" for c in checks]
        out.append("")
    if o.evidence:
        shown = [redact(x) for x in o.evidence[-EVIDENCE_LINES:]]
        fence = _fence(shown)
        more = f", last {len(shown)}" if len(o.evidence) > len(shown) else ""
        out += [
            f"<details><summary>Evidence ({len(o.evidence)} lines{more})</summary>",
            "",
            f"{fence}text",
            *shown,
            fence,
            "",
            "</details>",
            "",
        ]
    return "\n".join(out) + "\n"
