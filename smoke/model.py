"""Runtime values of the smoke package: packs and checks as loaded, answers, and results.

Frozen dataclasses, no I/O. `smoke.pack` builds these from YAML files, `smoke.audit` builds the
readiness audit pack in code; `smoke.runner` turns a Pack into a PackResult.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol, runtime_checkable

import httpx

Mode = Literal["enforce", "warn"]
Outcome = Literal["pass", "fail", "error"]
TRANSIENT_STATUSES = frozenset({502, 503, 504})
NOT_JSON = object()


@dataclass(frozen=True)
class Answer:
    """What one request got back, as the expectations see it."""

    status: int
    headers: httpx.Headers
    text: str
    elapsed_ms: float
    scheme: str = "http"
    redact: Callable[[str], str] = field(default=str, repr=False, compare=False)

    @cached_property
    def json(self) -> Any:
        """The body parsed as JSON, or NOT_JSON."""
        try:
            return json.loads(self.text)
        except (ValueError, RecursionError):  # nested deeper than Python's stack: not usable JSON
            return NOT_JSON

    def show(self, value: str, limit: int = 120) -> str:
        """A value from the answer as it may appear in a detail line: secrets masked first,
        then clipped to one short line (clipping first could cut a secret in half)."""
        flat = printable(" ".join(self.redact(value).split()))
        return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# C0 and C1 controls, DEL, and the bidi overrides: what a terminal would obey rather than show.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Control characters from a server shown as escapes (`\\x1b`): a hostile answer must
    not drive the terminal that shows it (clear a line, overwrite a FAIL with a fake PASS)."""
    return _CONTROL.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


class Expectation(Protocol):
    """One thing a check expects of an answer."""

    def check(self, answer: Answer) -> str | None:
        """None when met; otherwise one line `expected … got …` a person can act on."""
        ...


@runtime_checkable
class Noting(Protocol):
    """An expectation that may add a note to a passing result (e.g. "not applicable here"),
    so a pass never claims more than was checked."""

    def note(self, answer: Answer) -> str | None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Tries per check (1 = no retry); the wait before a retry starts at `backoff` and
    doubles each time, up to `max_backoff`."""

    attempts: int = 3
    backoff: float = 0.25
    max_backoff: float = 2.0

    def delay(self, failed_attempts: int) -> float:
        return float(min(self.backoff * (2 ** (failed_attempts - 1)), self.max_backoff))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    # Header and query values may hold resolved secrets: kept out of repr().
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    json_body: Any = None
    has_json: bool = False
    content: bytes | None = None
    follow_redirects: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Check:
    name: str
    request: Request
    status: Expectation  # judged first: a wrong status makes the other expectations noise
    expectations: tuple[Expectation, ...] = ()
    mode: Mode = "enforce"
    timeout: float = 5.0
    retry: RetryPolicy = RetryPolicy()


@dataclass(frozen=True)
class Thresholds:
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_rate: float = 0.01


@dataclass(frozen=True)
class HotEndpoint:
    check: Check
    thresholds: Thresholds


@dataclass(frozen=True)
class PerfPlan:
    """N requests per hot endpoint at concurrency C (after a few unmeasured warm-up requests)."""

    endpoints: tuple[HotEndpoint, ...]
    requests: int = 100
    concurrency: int = 4
    warmup: int = 3


@dataclass(frozen=True)
class Pack:
    name: str
    checks: tuple[Check, ...]
    source: str = ""
    description: str = ""
    perf: PerfPlan | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value resolved into this pack, to seed a redaction filter with."""
        return self.secrets


@dataclass(frozen=True)
class CheckResult:
    pack: str
    name: str
    mode: Mode
    outcome: Outcome
    attempts: int
    duration_ms: float
    detail: str
    method: str
    path: str
    status: int | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def verdict(self) -> str:
        """PASS, FAIL, ERROR (no answer), or WARN (a warn-mode check that did not pass)."""
        if self.passed:
            return "PASS"
        if self.mode == "warn":
            return "WARN"
        return "FAIL" if self.outcome == "fail" else "ERROR"

    def line(self) -> str:
        line = f"{self.verdict:5} {self.name}  {self.method} {self.path}  {self.detail}"
        if self.attempts > 1:
            line += f"  ({self.attempts} attempts in {self.duration_ms:.0f} ms)"
        return line


@dataclass(frozen=True)
class PackResult:
    packs: tuple[str, ...]
    base_url: str
    checks: tuple[CheckResult, ...]
    duration_ms: float
    secret_values: tuple[str, ...] = field(default=(), repr=False)
    # what the output calls the target: `smoke ENV` names the environment, not the URL of
    # its SSH tunnel's random local port ("" : the base URL)
    label: str = ""

    @property
    def target(self) -> str:
        return self.label or self.base_url

    @property
    def failed_enforced(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed and c.mode == "enforce")

    @property
    def warned(self) -> tuple[CheckResult, ...]:
        """Warn-mode checks that did not pass: shown and recorded, never blocking."""
        return tuple(c for c in self.checks if not c.passed and c.mode == "warn")

    @property
    def passed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.passed)

    @property
    def ok(self) -> bool:
        return not self.failed_enforced

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        packs = ", ".join(self.packs)
        parts = [f"{len(self.passed)}/{len(self.checks)} passed"]
        if self.failed_enforced:
            parts.append(f"{len(self.failed_enforced)} failed")
        if self.warned:
            parts.append(f"{len(self.warned)} warned")
        return f"smoke {packs}: {', '.join(parts)} in {self.duration_ms:.0f} ms"

    def lines(self, *, all_checks: bool = False) -> tuple[str, ...]:
        """Evidence lines for deploy output and errors: the summary, then the failing and
        warned checks (every check with all_checks=True), each with expected vs got."""
        shown = self.checks if all_checks else self.failed_enforced + self.warned
        return (self.summary(), *(c.line() for c in shown))

    def journal_detail(self) -> dict[str, Any]:
        """A small JSON-able record for the deploy journal."""
        return {
            "packs": list(self.packs),
            "total": len(self.checks),
            "passed": len(self.passed),
            "failed": [{"check": c.name, "detail": c.detail} for c in self.failed_enforced],
            "warned": [{"check": c.name, "detail": c.detail} for c in self.warned],
            "duration_ms": round(self.duration_ms),
        }


def all_secrets(packs: Iterable[Pack]) -> tuple[str, ...]:
    return tuple(sorted({s for p in packs for s in p.secret_values()}))
