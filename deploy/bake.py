"""The bake window of a blue/green switch: the new release serves real traffic through the front
door while the previous slot stays in nginx's upstream as `backup`; any of these ends it early
and the flow switches back:

- readiness through the front door answers anything but 2xx (or nothing);
- the new slot's processes restart, change pid, or are not all online;
- the access log shows an attempt the new slot did not answer (refused, reset, timed out:
  nginx passed that request to the backup — users saw nothing, but the new release is dying;
  nginx then sends the next requests straight to the backup for a while, so the first failed
  attempt is the signal, and answers of the old slot alone prove nothing: requests nginx's
  previous workers were still finishing after the switch are logged with it too);
- the new slot's share of 5xx answers is above `max_error_ratio` (judged as soon as it served
  `min_requests` requests, and once more at the end over whatever it served);
- where `bake.metrics` is configured, the same ratio by the app's own request counter
  (deploy/metrics.py), read on the new slot's port: the difference since the start of the
  bake, a counter that went backwards (a restart) or cannot be read being a failure too.

Like deploy.gate, it takes its inputs as functions (probe, process snapshot, access-log reader),
so it knows nothing about SSH, nginx or PM2, and a fake clock runs it without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deploy.clock import Clock
from deploy.errors import GateFailed
from deploy.metrics import MetricsWatch
from deploy.model import ProcessSnapshot
from deploy.proxy import TrafficSample


@dataclass(frozen=True)
class BakePolicy:
    seconds: float  # how long the new release serves with the backup kept
    interval: float  # between two rounds of checks
    max_error_ratio: float  # 5xx answers per request of the new slot
    min_requests: int  # the ratio is judged early once the new slot served this many


@dataclass
class Traffic:
    """What the front door served since the switch, added up over the log reads."""

    live_port: int
    backup_port: int | None
    requests: int = 0  # all requests logged since the switch
    answered: int = 0  # answers of the new slot
    server_errors: int = 0  # its 5xx answers
    failed: int = 0  # attempts it did not answer
    backup_answered: int = 0  # the old slot's answers (old workers finishing, or the backup)
    notes: list[str] = field(default_factory=list)

    def add(self, sample: TrafficSample) -> None:
        if sample.problem is not None:
            note = f"the access log is {sample.problem}: the bake cannot count 5xx answers"
            if note not in self.notes:
                self.notes.append(note)
            return
        live = sample.of_port(self.live_port)
        self.requests += sample.requests
        self.answered += live.answered
        self.server_errors += live.server_errors
        self.failed += live.failed
        if self.backup_port is not None:
            self.backup_answered += sample.of_port(self.backup_port).answered

    @property
    def error_ratio(self) -> float:
        return self.server_errors / self.answered if self.answered else 0.0

    def line(self) -> str:
        backup = f", backup answered {self.backup_answered}" if self.backup_port is not None else ""
        return (
            f"traffic since the switch: {self.requests} requests, the new slot answered "
            f"{self.answered} ({self.server_errors} 5xx, ratio {self.error_ratio:.3f}), "
            f"{self.failed} attempts it did not answer{backup}"
        )


def watch(
    probe: Callable[[], tuple[str, str]],
    snapshot: Callable[[], ProcessSnapshot],
    traffic: Callable[[], TrafficSample],
    policy: BakePolicy,
    clock: Clock,
    tally: Traffic,
    *,
    instances: int,
    on_event: Callable[[str], None] | None = None,
    metrics: MetricsWatch | None = None,
) -> list[str]:
    """Run the bake; its evidence lines when it passes, GateFailed("bake", …) when not."""
    start = clock.monotonic()
    lines: list[str] = []

    def elapsed() -> float:
        return clock.monotonic() - start

    def event(text: str) -> None:
        line = f"+{elapsed():5.1f}s bake  {text}"
        lines.append(line)
        if on_event is not None:
            on_event(line)

    def fail(why: str) -> GateFailed:
        event(f"FAIL {why}")
        return GateFailed("bake", why, evidence=tuple(lines[-20:]))

    baseline = snapshot()
    if not baseline.all_up(instances):
        raise fail(f"the new slot is not all online: {baseline.describe()}")
    if metrics is not None and (why := metrics.begin()) is not None:
        raise fail(why)
    rounds = 0
    while True:
        rounds += 1
        outcome, detail = probe()
        if outcome != "ok":
            raise fail(f"readiness through the front door: {outcome} {detail}")
        snap = snapshot()
        if snap.fingerprint() != baseline.fingerprint() or not snap.all_up(instances):
            raise fail(
                f"the new slot's processes changed: {baseline.describe()} -> {snap.describe()}"
            )
        tally.add(traffic())
        if tally.failed:
            raise fail(
                f"the new slot left {tally.failed} attempt(s) unanswered (nginx passed them to "
                f"the backup): {tally.line()}"
            )
        done = elapsed() >= policy.seconds
        judged = done or tally.answered >= policy.min_requests
        if judged and tally.answered and tally.error_ratio > policy.max_error_ratio:
            raise fail(
                f"5xx ratio {tally.error_ratio:.3f} above {policy.max_error_ratio:g}: "
                f"{tally.line()}"
            )
        if metrics is not None and (why := metrics.check(done=done)) is not None:
            raise fail(why)
        if done:
            event(f"ok after {rounds} rounds: {tally.line()}")
            if metrics is not None:
                event(f"ok {metrics.line()}")
            return [*lines, *(f"bake: {n}" for n in tally.notes)]
        clock.sleep(min(policy.interval, max(0.0, policy.seconds - elapsed())))
