"""What a failing release left behind (its last log lines, its process state), masked."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from deploy.deps import Deps
from deploy.errors import ReleasegateError
from deploy.host import HostOps
from deploy.model import ReleaseState
from deploy.strategies.base import GateTarget

LOG_LINE = 1000  # characters of one log line kept in the output and the journal


@dataclass(frozen=True)
class Forensics:
    lines: tuple[str, ...]  # for the output (evidence)
    journal: dict[str, object]  # for the bad release's journal entry
    port_note: str = ""  # something outside the process manager holds the app's port


def capture_forensics(d: Deps, failed: str, target: GateTarget, log_lines: int = 40) -> Forensics:
    """What the failing release left behind: its last log lines and the process state,
    captured before anything restarts it. Secrets are masked first."""
    if d.dry_run:
        return Forensics((), {})
    try:
        logs, state = target.forensics(log_lines)
    except ReleasegateError as exc:
        return Forensics((f"forensics unavailable: {exc.message}",), {"error": exc.message})
    try:
        port = d.redact(target.port_note()) if target.port_note is not None else ""
    except ReleasegateError:
        port = ""
    logs, state = d.redact(logs), d.redact(state)
    logs = "\n".join(line[:LOG_LINE] for line in logs.splitlines())  # a release's megabyte line
    shown = [line for line in logs.splitlines() if line.strip()][-15:]
    return Forensics(
        (
            f"process: {state}",
            *((f"port: {port}",) if port else ()),
            *(f"log: {line}" for line in shown),
        ),
        {"process": state, "logs": logs[-4000:], **({"port": port} if port else {})},
        port_note=port,
    )


def record_failure(
    d: Deps,
    host: HostOps,
    op: str,
    release: str,
    state: ReleaseState | None,
    *,
    reason: str,
    evidence: Iterable[str],
    forensics: Forensics,
    **detail: object,
) -> None:
    """Journal a release's failed gate with its evidence (the last 20 lines) and forensics."""
    host.record(
        d.clock.now(),
        op,
        release,
        state,
        reason=reason,
        evidence=list(evidence)[-20:],
        forensics=forensics.journal,
        **detail,
    )
