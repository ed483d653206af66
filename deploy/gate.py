"""Gates that decide promotion. They take their inputs as functions (probe, process snapshot),
so they know nothing about SSH or PM2, and a fake clock runs them without waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import httpx

from deploy.clock import Clock
from deploy.errors import GateFailed
from deploy.model import Probe, ProcessSnapshot


@dataclass(frozen=True)
class ReadyPolicy:
    deadline: float
    interval: float
    successes: int
    max_restarts: int


def probe_http(client: httpx.Client, path: str, headers: dict[str, str]) -> tuple[str, str]:
    """One readiness probe: ("ok"|"fail"|"error", detail). The client carries the timeout."""
    started = time.perf_counter()
    try:
        response = client.get(path, headers=headers)
    except httpx.TimeoutException:
        return "error", f"no answer: timed out after {time.perf_counter() - started:.1f}s"
    except httpx.HTTPError as exc:
        return "error", f"no answer: {type(exc).__name__} {str(exc)[:120]}".rstrip()
    ms = (time.perf_counter() - started) * 1000
    if 200 <= response.status_code < 300:
        return "ok", f"{response.status_code} in {ms:.0f} ms"
    body = response.text.strip().replace("\n", " ")[:120]
    return "fail", f"{response.status_code} in {ms:.0f} ms {body}".rstrip()


def wait_ready(
    probe: Callable[[], tuple[str, str]],
    process: Callable[[], ProcessSnapshot] | None,
    policy: ReadyPolicy,
    clock: Clock,
    on_probe: Callable[[Probe], None] | None = None,
) -> tuple[list[Probe], ProcessSnapshot | None]:
    """Promote after `successes` consecutive ok probes within the deadline.

    Fails fast — without waiting out the deadline — when the process manager reports the
    process errored/stopped/missing or restarting more than `max_restarts` times. The process
    is asked at the start, after every probe that was not ok, and once at the end (its final
    answer is returned for the identity check): a healthy gate costs two round trips.
    """
    start = clock.monotonic()
    history: list[Probe] = []
    baseline: int | None = None

    def look() -> ProcessSnapshot | None:
        nonlocal baseline
        if process is None:
            return None
        snap = process()
        if baseline is None:
            baseline = snap.restarts
        restarts = snap.restarts - baseline
        if snap.status in {"errored", "stopped", "missing"} or restarts > policy.max_restarts:
            why = (
                f"the process is {snap.status}"
                if snap.status in {"errored", "stopped", "missing"}
                else f"the process restarted {restarts} times during the gate"
            )
            history.append(
                Probe(at=clock.monotonic() - start, outcome="error", detail=f"process: {why}")
            )
            raise GateFailed("ready", f"{why} (fail fast)", evidence=_lines(history))
        return snap

    look()
    streak = 0
    while True:
        outcome, detail = probe()
        item = Probe(at=clock.monotonic() - start, outcome=outcome, detail=detail)
        history.append(item)
        if on_probe is not None:
            on_probe(item)
        streak = streak + 1 if outcome == "ok" else 0
        if streak >= policy.successes:
            return history, look()
        if outcome != "ok":
            look()
        if clock.monotonic() - start + policy.interval > policy.deadline:
            fails = sum(1 for p in history if p.outcome == "fail")
            errors = sum(1 for p in history if p.outcome == "error")
            raise GateFailed(
                "ready",
                f"no {policy.successes} consecutive successes within {policy.deadline:g}s "
                f"({len(history)} probes: {fails} fail, {errors} error; last: {detail})",
                evidence=_lines(history),
            )
        clock.sleep(policy.interval)


def check_identity(snapshot: ProcessSnapshot, cwds: dict[int, str], expected: PurePosixPath) -> str:
    """The running processes really run `expected` (catches PM2 keeping the old code)."""
    if not snapshot.pids:
        raise GateFailed("identity", f"no running process (status {snapshot.status})")
    wrong = {pid: cwd for pid, cwd in cwds.items() if cwd != str(expected)}
    missing = [pid for pid in snapshot.pids if pid not in cwds]
    if wrong or missing:
        shown = ", ".join(f"pid {pid} runs in {cwd}" for pid, cwd in sorted(wrong.items()))
        raise GateFailed(
            "identity",
            f"expected every process to run in {expected}, but {shown or 'cwd unreadable'}"
            + (f"; no cwd for pids {missing}" if missing else ""),
        )
    return f"{len(snapshot.pids)} process(es) run in {expected}"


def _lines(history: list[Probe], first: int = 5, last: int = 15) -> tuple[str, ...]:
    """The start and the end of the probe history: how it began and how it ended."""
    if len(history) <= first + last:
        return tuple(p.line() for p in history)
    skipped = len(history) - first - last
    return (
        *(p.line() for p in history[:first]),
        f"… {skipped} more probes …",
        *(p.line() for p in history[-last:]),
    )
