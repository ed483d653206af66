"""The perf regression policy (smoke.baseline uses it): a small module of its own because its
defaults are the `perf` command's option defaults, read when the CLI is built, and that must
not import the baseline machinery (docs/performance.md, "CLI start")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Policy:
    """Defaults derived from repeat runs against the sandbox (docs/smoke.md)."""

    p95_increase_pct: float = 50.0
    p95_increase_ms: float = 10.0
    error_rate_increase: float = 0.01
    consecutive: int = 3

    def describe(self) -> str:
        return (
            f"p95 worse by > {self.p95_increase_pct:g} % and > {self.p95_increase_ms:g} ms, or "
            f"error rate up by > {self.error_rate_increase * 100:g} percentage point(s), on "
            f"{self.consecutive} consecutive run(s)"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "p95_increase_pct": self.p95_increase_pct,
            "p95_increase_ms": self.p95_increase_ms,
            "error_rate_increase": self.error_rate_increase,
            "consecutive": self.consecutive,
        }
