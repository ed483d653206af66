"""Time as a seam: the runner's backoff and timings, the deploy gate and the flow take a Clock
so tests can run them without waiting. The one system clock of releasegate lives here (smoke/
never imports deploy/); deploy.clock re-exports it. The protocol is structural, so the tests'
fake clocks fit."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def now(self) -> datetime:
        return datetime.now(UTC)
