"""Carrying out what deploy/flow.py decided after a failure: reject a release that never took
traffic, or put the last good release back and prove it healthy (one step back, never more)."""

from __future__ import annotations

import contextlib
import signal

from deploy import migrations, verdict
from deploy.commands import Cmd
from deploy.deps import Deps, report_slots
from deploy.errors import (
    AbortedBeforeLive,
    ConnectionLost,
    HumanNeeded,
    Interrupted,
    LockLost,
    NotSwitched,
    ReleasegateError,
    Signalled,
)
from deploy.forensics import Forensics, capture_forensics, record_failure
from deploy.gating import gate_release, gate_through, watch
from deploy.host import HostOps
from deploy.interrupts import reason_of, shielded, signum_of
from deploy.journal import HostState
from deploy.model import Outcome, ReleaseState
from deploy.needs_human import (
    hold_for_human,
    refuse_crossing,
    try_mark_needs_human,
)
from deploy.process.pm2 import activation_notes
from deploy.strategies.base import Strategy


def recover(
    d: Deps,
    host: HostOps,
    failed: str,
    way: Strategy,
    *,
    op: str,
    fallback: str | None,
    exc: BaseException,
    hold: str | None = None,
) -> Outcome:
    """After the point of no return: put the last good release back and prove it healthy —
    one step back, never more. A failed rollback marks the host needs-human."""
    r = d.reporter
    reason = reason_of(exc)
    evidence = exc.evidence if isinstance(exc, ReleasegateError) else ()
    signum = signum_of(exc)
    if isinstance(exc, ConnectionLost):
        raise HumanNeeded(
            f"lost SSH to {host.label} after activating {failed}: {exc.message}. The host may "
            f"be running {failed} unverified and the lock {host.layout.lock} may still be held. "
            f"Reconnect and run `releasegate status {d.inventory.env}`, then "
            f"`releasegate rollback {d.inventory.env}` if {failed} is not healthy.",
            evidence=evidence,
        ) from None
    if not isinstance(exc, ReleasegateError | KeyboardInterrupt | Signalled):
        # A bug of ours must not leave the host on an unverified release: roll back anyway.
        reason = f"internal error {type(exc).__name__}: {exc}"
    r.warn(f"{op} of {failed} failed: {reason}")
    if d.on_failure is not None:
        d.on_failure(failed)
    d.signals.clear()  # this signal is being handled: it must not interrupt the rollback
    # In place the rollback replaces the failed processes, so what they left is read first; in
    # blue/green they keep running in their slot, and the users are switched back first.
    early = not way.gates_before_traffic or hold is not None or fallback is None
    target = way.target(failed)
    with shielded(r):
        forensics = capture_forensics(d, failed, target) if early else Forensics((), {})
        evidence = tuple(evidence) + forensics.lines
        if hold is not None:
            return hold_for_human(
                d,
                host,
                failed,
                op=op,
                why=hold,
                reason=reason,
                evidence=evidence,
                forensics=forensics,
            )
        crossing = d.crossings.get(fallback) if fallback is not None else None
        if crossing is not None and not crossing.compatible:
            if not early:
                forensics = capture_forensics(d, failed, target)
                evidence += forensics.lines
            return refuse_crossing(
                d,
                host,
                way,
                failed,
                crossing,
                op=op,
                reason=reason,
                evidence=evidence,
                forensics=forensics,
            )
        if crossing is not None:
            r.info(f"rolling back across a backward-compatible schema change: {crossing.note()}")
        if fallback is None:
            way.stop(failed)
            record_failure(
                d,
                host,
                op,
                failed,
                ReleaseState.BAD,
                reason=reason,
                evidence=evidence,
                forensics=forensics,
            )
            return report_slots(
                d,
                way,
                Outcome(
                    op=op,
                    result="rollback-impossible",
                    exit_code=6,
                    release=failed,
                    live=None,
                    message=(
                        f"{failed} failed ({reason}) and there is no known-good release to go back "
                        f"to (first deploy?). The app was stopped; `current` still points to "
                        f"{failed}, marked bad. Fix the release and deploy again."
                    ),
                    evidence=evidence,
                ),
            )
        try:
            with r.stage(f"roll back to {fallback}"):
                record = host.journal_cmd(
                    d.clock.now(),
                    "rollback",
                    fallback,
                    ReleaseState.ACTIVE_UNVERIFIED,
                    reason=f"{op} of {failed} failed",
                    automatic=True,
                    after=failed,
                    **({"schema": crossing.journal("backward compatible")} if crossing else {}),
                )
                # the lease guard first: a run whose lock was taken away changes nothing live
                back_evidence = _revert(d, host, way, fallback, [*host.lease_guard(), record])
        except LockLost as lost:
            raise LockLost(
                f"{failed} failed ({reason}), but this run no longer holds the lock "
                f"{host.layout.lock} on {host.label}, so it did not roll back: {failed} is live "
                f"and unverified. Whoever holds the lock now runs next; a deploy or rollback "
                f"gates {failed} first and rolls back to {fallback} if it fails "
                f"(`releasegate status {d.inventory.env}`). ({lost.message})",
                evidence=evidence,
            ) from None
        except Exception as again:
            if not early:
                forensics = capture_forensics(d, failed, target)
                evidence += forensics.lines
            shared = verdict.same_cause(exc, again)
            again_reason = reason_of(again)
            with contextlib.suppress(ReleasegateError):
                host.record(
                    d.clock.now(),
                    op,
                    failed,
                    ReleaseState.BAD,
                    reason=reason,
                    forensics=forensics.journal,
                )
                host.record(
                    d.clock.now(),
                    "rollback",
                    fallback,
                    None,
                    result="failed",
                    reason=again_reason,
                    same_cause=shared,
                )
            plain = verdict.shared_cause_sentence(failed, fallback, shared) if shared else ""
            live, unread = _live_after_revert(d, host, fallback)
            commands, marked = try_mark_needs_human(
                d,
                host,
                live=live,
                failed=failed,
                reason=(
                    f"{failed} failed its gate ({reason}) and the automatic rollback to "
                    f"{fallback} failed too ({again_reason})."
                    + (
                        f" {forensics.port_note}"
                        if forensics.port_note
                        else f" Both failed the same way ({shared}): probably a shared cause."
                        if shared
                        else ""
                    )
                ),
            )
            if plain and not forensics.port_note:
                r.warn(plain)
            return report_slots(
                d,
                way,
                Outcome(
                    op=op,
                    result="rollback-failed",
                    exit_code=6,
                    release=failed,
                    live=live,
                    message=(
                        f"{failed} failed ({reason}) and the rollback to {fallback} failed too "
                        f"({again_reason}). "
                        + (f"{forensics.port_note} " if forensics.port_note else "")
                        + (f"{plain} " if plain and not forensics.port_note else "")
                        + verdict.after_failed_revert(failed, fallback, live, unread)
                        + (
                            " The host is marked needs-human: deploys, automatic rollbacks and "
                            "a plain rollback are refused until you run one of the commands "
                            "below."
                            if marked
                            else " The needs-human mark could not be recorded: do not deploy "
                            "before you have checked the host; the commands below still apply."
                        )
                    ),
                    evidence=evidence
                    + (getattr(again, "evidence", ()) or ())
                    + tuple(f"run: {c}" for c in commands),
                ),
            )
        if not early:
            forensics = capture_forensics(d, failed, target)
            evidence += forensics.lines
        record_failure(
            d,
            host,
            op,
            failed,
            ReleaseState.BAD,
            reason=reason,
            evidence=evidence,
            forensics=forensics,
        )
        host.record(
            d.clock.now(), "rollback", fallback, ReleaseState.GOOD, result="restored", after=failed
        )
        paused = _take_out(d, way, failed, signum=signum)
        way.persist(fallback)
    code = 128 + signum if signum else 3
    return report_slots(
        d,
        way,
        Outcome(
            op=op,
            result="rolled-back",
            exit_code=code,
            release=failed,
            live=fallback,
            message=(
                f"{failed} failed ({reason}); rolled back, {fallback} serves again and is verified"
                + (f"; {paused}" if paused else "")
            ),
            evidence=tuple(evidence) + tuple(f"rollback: {line}" for line in back_evidence[-3:]),
        ),
    )


def _live_after_revert(d: Deps, host: HostOps, fallback: str) -> tuple[str | None, str | None]:
    """After a failed automatic rollback: what `current` really points to (and None with
    why, when the host cannot be read). The fallback's `active-unverified` line went in the
    switch's own batch, first; when the switch did not happen the fallback's verdict is
    journaled again, so the journal never claims it was activated."""
    try:
        live = host.read_state().current
    except ReleasegateError as exc:
        return None, exc.message
    if live != fallback:
        with contextlib.suppress(ReleasegateError):
            host.record(
                d.clock.now(),
                "rollback",
                fallback,
                ReleaseState.GOOD,
                result="not-switched",
                reason=f"the switch back did not happen; `current` points to {live or 'nothing'}",
            )
    return live, None


def _revert(d: Deps, host: HostOps, way: Strategy, fallback: str, records: list[Cmd]) -> list[str]:
    """Traffic back to `fallback`, recorded first in the same round trip. In place: switch and
    reload, then its gate. Blue-green: it still runs in the other slot (the bake's backup), so
    the front door is switched at once — or, if it does not, it is started in the idle slot and
    gated there first — then verified through the front door."""
    evidence: list[str] = []
    before = way.gates_before_traffic
    if before and way.start(fallback) == "started":
        evidence += gate_release(d, host, fallback, way.target(fallback))
    for note in activation_notes(way.send_traffic(fallback, records, keep_previous=False)):
        d.reporter.warn(note)
    if before:
        return evidence + watch(d, way, fallback, bake=False)
    return evidence + gate_through(d, host, fallback, way)


def _take_out(d: Deps, way: Strategy, failed: str, *, signum: int = 0) -> str:
    """After a release was rejected or reverted, nothing sends it traffic: stop it, or with
    strategy.on_failure: pause leave it running for inspection. Says what was done (blue-green)."""
    pause = d.inventory.strategy.on_failure == "pause" and not signum
    try:
        way.take_out(failed, pause=pause)
    except ReleasegateError as exc:
        d.reporter.warn(f"could not take {failed} out of its slot: {exc.message}")
        return f"{failed} may still run without traffic (`releasegate status {d.inventory.env}`)"
    if not way.gates_before_traffic:
        return ""
    if pause:
        return (
            f"{failed} stays paused in its slot without traffic for inspection "
            f"(`releasegate status {d.inventory.env}`); the next deploy or rollback stops it"
        )
    return "its slot was stopped"


def reject(
    d: Deps,
    host: HostOps,
    way: Strategy,
    rid: str,
    *,
    op: str,
    exc: BaseException,
    state: HostState | None,
) -> Outcome:
    """Before traffic (blue-green): `rid` failed in its own slot while the live release kept
    every request. Nothing live changed: take it out, mark it bad, and prove that the live
    release still answers through the front door."""
    r = d.reporter
    reason = reason_of(exc)
    signum = signum_of(exc)
    evidence = tuple(exc.evidence) if isinstance(exc, ReleasegateError) else ()
    live = (state or host.read_state()).current
    if isinstance(exc, ConnectionLost):
        raise AbortedBeforeLive(
            f"lost SSH to {host.label} while starting {rid} in its slot; it never took traffic "
            f"and nothing live changed. The next run stops the slot. ({exc.message})"
        ) from None
    if not isinstance(exc, ReleasegateError | KeyboardInterrupt | Signalled):
        reason = f"internal error {type(exc).__name__}: {exc}"
    r.warn(f"{op} of {rid} failed before it took traffic: {reason}")
    d.signals.clear()
    with shielded(r):
        forensics = Forensics((), {})
        with contextlib.suppress(AssertionError):  # a start that failed leaves no slot
            forensics = capture_forensics(d, rid, way.target(rid))
        evidence += forensics.lines
        taken = _take_out(d, way, rid, signum=signum)
        if signum:
            with contextlib.suppress(ReleasegateError):
                host.record(d.clock.now(), op, rid, None, result="aborted", reason=reason)
            raise Interrupted(
                f"interrupted by {signal.Signals(signum).name} before {rid} took traffic; "
                f"{taken or 'its slot was stopped'}, nothing live changed",
                signum=signum,
            ) from None
        record_failure(
            d,
            host,
            op,
            rid,
            ReleaseState.BAD,
            result="rejected",
            reason=reason,
            evidence=evidence,
            forensics=forensics,
        )
        if live is None:
            return report_slots(
                d,
                way,
                Outcome(
                    op=op,
                    result="rejected",
                    exit_code=6,
                    release=rid,
                    live=None,
                    message=(
                        f"{rid} was rejected before it took traffic ({reason}); {taken}. No "
                        f"release serves yet (first deploy): fix the release and deploy again."
                    ),
                    evidence=evidence,
                ),
            )
        try:
            with r.stage(f"verify {live} through the front door"):
                verified = watch(d, way, live, bake=False)
        except Exception as again:
            return report_slots(
                d,
                way,
                Outcome(
                    op=op,
                    result="rejected",
                    exit_code=6,
                    release=rid,
                    live=live,
                    message=(
                        f"{rid} was rejected before it took traffic ({reason}); {taken}. But "
                        f"the live release {live} does not answer through the front door "
                        f"({reason_of(again)}): nothing releasegate did changed it — check the "
                        f"app and nginx (`releasegate status {d.inventory.env}`)."
                    ),
                    evidence=evidence + tuple(getattr(again, "evidence", ()) or ()),
                ),
            )
    return report_slots(
        d,
        way,
        Outcome(
            op=op,
            result="rejected",
            exit_code=3,
            release=rid,
            live=live,
            message=(
                f"{rid} was rejected before it took traffic ({reason}); {taken}. {live} kept "
                f"every request and answers through the front door, verified"
                + migrations.stays_note(d.crossings.get(live))
            ),
            evidence=evidence + tuple(f"live: {line}" for line in verified[-3:]),
        ),
    )


def not_switched(
    d: Deps, host: HostOps, way: Strategy, rid: str, *, op: str, exc: NotSwitched
) -> Outcome:
    """nginx refused the switch and the previous upstream is back: `rid` passed its gate but
    never took traffic. Not its fault, so not bad: it is `ready` again and its slot stopped."""
    with shielded(d.reporter):
        with contextlib.suppress(ReleasegateError):
            host.record(
                d.clock.now(),
                op,
                rid,
                ReleaseState.READY,
                result="not-switched",
                reason=exc.reason,
                detail=exc.message,
            )
        taken = _take_out(d, way, rid)
    raise NotSwitched(
        f"{exc.message} {rid} passed its gate but never took traffic; {taken}. Fix nginx "
        f"(as root: nginx -t) and deploy again.",
        reason=exc.reason,
    )
