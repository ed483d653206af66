"""Time as a seam: the gate and the flow take a Clock so tests can run them without waiting.

The system clock is smoke.clock's (one clock for both packages); deploy's Clock adds `now()`
for journal and lock timestamps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from smoke.clock import SystemClock as SystemClock


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...
    def now(self) -> datetime: ...
