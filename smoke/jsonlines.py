"""`--json`: the one output format of every releasegate command (deploy's and smoke's).

One JSON object per line on stdout, each with `event` and `t` (seconds since the command
started); the last line is always one `outcome` object, for successes and errors alike.
docs/json-output.md describes every event and result; `output.schema.json` (next to this
file, shipped in the package) is its JSON Schema, which the tests validate every command's
output against. deploy.report.JsonReporter and smoke.report both write through JsonLines, so
the two packages cannot drift apart. Lives in smoke/ because smoke/ never imports deploy/.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from smoke.clock import Clock, SystemClock
from smoke.secrets import Redactor

SCHEMA = Path(__file__).with_name("output.schema.json")


class JsonLines:
    """Writes events and the final outcome; every value passes the redaction filter."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        redact: Redactor | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._out = stream
        self.redact = redact or Redactor()
        self._clock = clock or SystemClock()
        self._start = self._clock.monotonic()
        self.ended = False

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "t": round(self._clock.monotonic() - self._start, 3), **fields}
        # masked value by value (JSON escaping cannot hide a secret), then the text again
        text = json.dumps(self.redact.deep(record), default=str, ensure_ascii=False)
        print(self.redact(text), file=self._out or sys.stdout, flush=True)
        self.ended = self.ended or event == "outcome"

    def error(self, message: str, evidence: Iterable[str] = ()) -> None:
        self.emit("error", message=message, evidence=list(evidence))

    def outcome(
        self,
        *,
        op: str,
        result: str,
        exit_code: int,
        message: str = "",
        evidence: Iterable[str] = (),
        release: str | None = None,
        live: str | None = None,
        **extra: Any,
    ) -> None:
        """The last line. `extra` holds the op's own fields (`slots`, `smoke`, `perf`, …)."""
        self.emit(
            "outcome",
            op=op,
            result=result,
            exit_code=exit_code,
            release=release,
            live=live,
            message=message,
            evidence=list(evidence),
            **extra,
        )


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return loaded
