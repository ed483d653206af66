"""The sticky needs-human mark: set it (with the commands to run), refuse while it stands,
and `releasegate resolve` to clear it."""

from __future__ import annotations

import contextlib

from deploy import migrations, verdict
from deploy.deps import Deps, host_ops, report, report_slots
from deploy.errors import ConfigError, ReleasegateError
from deploy.forensics import Forensics, record_failure
from deploy.host import HostOps
from deploy.journal import NEEDS_HUMAN, RESOLVE, HostState
from deploy.locking import locked
from deploy.model import NeedsHuman, Outcome, ReleaseState, check_release_id
from deploy.strategies.base import Strategy


def refuse_while_marked(d: Deps, host: HostOps, op: str, mark: NeedsHuman) -> Outcome:
    """While the needs-human mark stands: refuse, change nothing, say what to run."""
    commands = mark.commands or verdict.mark_commands(d.inventory.env, live=mark.live, others=[])
    what = "this deploy" if op == "deploy" else "a plain rollback"
    return report(
        d,
        Outcome(
            op=op,
            result="needs-human",
            exit_code=6,
            release=None,
            live=mark.live,
            message=verdict.refusal(mark, what=what, host=host.label),
            evidence=tuple(f"run: {c}" for c in commands),
        ),
    )


def resolve(d: Deps, *, mark_good: str | None = None, reason: str | None = None) -> Outcome:
    """`releasegate resolve`: an operator clears the needs-human mark, optionally giving the
    verdict the tool could not (`--mark-good ID`). Journaled with the actor and reason."""
    check_release_id(mark_good, d.inventory.env, option="--mark-good")
    host = host_ops(d)
    with locked(d, host, "resolve"):
        state = host.state_at_lock or host.read_state()
        mark = state.needs_human()
        if mark_good is not None and mark_good not in state.release_dirs:
            known = ", ".join(sorted(state.release_dirs, reverse=True)) or "none"
            raise ConfigError(
                f"release {mark_good} does not exist on {host.label}; releases there: {known}"
            )
        if mark is None and mark_good is None:
            return report(
                d,
                Outcome(
                    op="resolve",
                    result="not-needed",
                    exit_code=0,
                    release=None,
                    live=state.current,
                    message=f"{host.label} has no needs-human mark; nothing was changed",
                ),
            )
        if mark_good is not None and state.state_of(mark_good) == ReleaseState.BAD:
            d.reporter.warn(f"{mark_good} was recorded bad; recording it good on your word")
        host.record(
            d.clock.now(),
            RESOLVE,
            mark_good,
            ReleaseState.GOOD if mark_good else None,
            reason=reason or "",
            cleared=mark.since if mark else None,
            live=state.current,
        )
        done = [f"cleared the needs-human mark of {mark.since}"] if mark else []
        if mark_good:
            done.append(f"recorded {mark_good} good")
        return report(
            d,
            Outcome(
                op="resolve",
                result="resolved",
                exit_code=0,
                release=mark_good,
                live=state.current,
                message=f"{' and '.join(done)} on {host.label}; {_what_next(state, mark_good)}",
            ),
        )


def _what_next(state: HostState, marked_good: str | None) -> str:
    """What the next run will do with the live release, once the mark is cleared."""
    current = state.current
    if current is None:
        return "nothing is live"
    verdict_now = ReleaseState.GOOD if current == marked_good else state.state_of(current)
    if verdict_now != ReleaseState.ACTIVE_UNVERIFIED:
        return f"{current} is live ({verdict_now or 'unknown to the journal'})"
    if state.automatic_fallback(current):
        then = "marks the host again if it fails (it never walks further back)"
    else:
        then = "rolls back to the last good release if it fails"
    return (
        f"{current} is live but unverified: the next deploy or rollback gates it first and {then}"
    )


def hold_for_human(
    d: Deps,
    host: HostOps,
    failed: str,
    *,
    op: str,
    why: str,
    reason: str,
    evidence: tuple[str, ...],
    forensics: Forensics,
) -> Outcome:
    """A release that is already the one step back failed its gate: no further automatic
    step. It stays live, its verdict is left to a human (not bad: the cause may well be
    shared), and the host is marked needs-human."""
    with contextlib.suppress(ReleasegateError):
        record_failure(
            d,
            host,
            op,
            failed,
            None,
            result="gate-failed",
            reason=reason,
            evidence=evidence,
            forensics=forensics,
        )
    commands = mark_needs_human(
        d,
        host,
        live=failed,
        failed=failed,
        reason=f"{failed} failed its gate ({reason}); it was {why}.",
    )
    return report(
        d,
        Outcome(
            op=op,
            result="needs-human",
            exit_code=6,
            release=failed,
            live=failed,
            message=(
                f"{failed} failed its gate ({reason}). It was {why}, so releasegate does not "
                f"roll back any further: older releases would most likely fail the same way if "
                f"the cause is shared (a database, the disk, a file under shared/). {failed} "
                f"stays live, unverified and not marked bad. The host is marked needs-human: "
                f"deploys, automatic rollbacks and a plain rollback are refused until you run "
                f"one of the commands below."
            ),
            evidence=evidence + tuple(f"run: {c}" for c in commands),
        ),
    )


def mark_needs_human(
    d: Deps,
    host: HostOps,
    *,
    live: str | None,
    failed: str | None,
    reason: str,
    commands: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """Record the sticky needs-human mark with the exact commands to run; returns them.
    (If the journal cannot be written, the commands are still shown.)"""
    return try_mark_needs_human(
        d, host, live=live, failed=failed, reason=reason, commands=commands
    )[0]


def try_mark_needs_human(
    d: Deps,
    host: HostOps,
    *,
    live: str | None,
    failed: str | None,
    reason: str,
    commands: tuple[str, ...] = (),
) -> tuple[tuple[str, ...], bool]:
    """mark_needs_human, and whether the mark was recorded."""
    others: list[str] = []
    with contextlib.suppress(ReleasegateError):
        state = host.read_state()
        others = [r for r in state.good_releases() if r not in (live, failed)]
    commands = commands or verdict.mark_commands(d.inventory.env, live=live, others=others)
    try:
        host.record(
            d.clock.now(),
            NEEDS_HUMAN,
            live,
            None,
            reason=reason,
            live=live,
            failed=failed,
            commands=list(commands),
        )
    except ReleasegateError as exc:
        d.reporter.error(
            f"could not record the needs-human mark in {host.layout.journal} on {host.label}: "
            f"{exc.message}. Do not deploy before you have checked the host."
        )
        return commands, False
    return commands, True


def refuse_crossing(
    d: Deps,
    host: HostOps,
    way: Strategy,
    failed: str,
    crossing: migrations.Crossing,
    *,
    op: str,
    reason: str,
    evidence: tuple[str, ...],
    forensics: Forensics,
) -> Outcome:
    """The automatic rollback would cross a schema change not declared backward compatible:
    refused. `failed` stays live (unverified, not marked bad), and the host is marked
    needs-human with the choices: the down migration then `rollback --to … --across-schema`,
    or roll forward."""
    with contextlib.suppress(ReleasegateError):
        record_failure(
            d,
            host,
            op,
            failed,
            None,
            result="gate-failed",
            reason=reason,
            evidence=evidence,
            forensics=forensics,
            rollback_refused=crossing.journal("refused"),
        )
    refusal = migrations.refusal(crossing, what="the automatic rollback")
    choices = migrations.choices(d.inventory, crossing, root=str(host.layout.root), live=failed)
    why = f"{failed} failed its gate ({reason}); {refusal}"
    commands = mark_needs_human(d, host, live=failed, failed=failed, reason=why, commands=choices)
    outcome = migrations.refused_automatic(op, failed, reason, refusal, evidence, commands)
    return report_slots(d, way, outcome)
