"""`releasegate rollback`: choose the target (the previous good release, or --to), refuse a
schema crossing, then activate and gate it through deploy/flow.py; its journal verdicts."""

from __future__ import annotations

from deploy import migrations
from deploy.commands import Cmd
from deploy.deps import Deps, host_ops, report, strategy_for
from deploy.errors import ConfigError, HumanNeeded
from deploy.flow import activate_and_gate, refuse_broken_layout, resolve_interrupted
from deploy.gating import load_stored_packs
from deploy.host import HostOps
from deploy.journal import RESOLVE, HostState
from deploy.locking import locked
from deploy.model import NeedsHuman, Outcome, ReleaseState, check_release_id
from deploy.needs_human import refuse_while_marked


def rollback(d: Deps, to: str | None = None) -> Outcome:
    check_release_id(to, d.inventory.env)
    host = host_ops(d)
    with locked(d, host, "rollback"):
        return rollback_locked(d, host, to, last=True)


def rollback_locked(d: Deps, host: HostOps, to: str | None, *, last: bool = False) -> Outcome:
    """rollback() once the host's lock is held (deploy.fleet holds every host's lock);
    `last`: nothing follows on this host under its lock."""
    state = host.state_at_lock or host.read_state()
    refuse_broken_layout(d, host, state)
    mark = state.needs_human()
    if mark is not None and to is None:
        return refuse_while_marked(d, host, "rollback", mark)
    if mark is None:
        state, verified = resolve_interrupted(d, host, state)
        if verified is not None and verified.exit_code == 3 and to is None:
            return report(d, _already_rolled_back(verified))
    current = state.current
    if to is not None:
        target = _explicit_target(d, host, state, to, mark)
    else:
        target = _previous_good(d, host, state)
    if target == current:
        d.reporter.info(f"{target} is already current; activating and gating it again")
    crossing = migrations.crossing(state.journal, target) if target != current else None
    if crossing is not None and not crossing.compatible and not d.across_schema:
        return report(
            d,
            migrations.refused_rollback(
                d.inventory, crossing, root=str(host.layout.root), live=current
            ),
        )
    fallback = current if current and state.state_of(current) == ReleaseState.GOOD else None
    if fallback == target or mark is not None:
        fallback = None  # while marked, an operator's rollback is never followed by another
    load_stored_packs(d, state, [target, fallback])
    # the point of no return is inside: the activation, or the front door's switch
    return activate_and_gate(
        d,
        host,
        target,
        strategy_for(d, host, state),
        op="rollback",
        fallback=fallback,
        hold="an operator's rollback while the host needs a human" if mark else None,
        on_success=lambda: (
            _rollback_verdicts(d, host, state, target, mark) + _crossed(d, host, target, crossing)
        ),
        last=last,
    )


def _crossed(
    d: Deps, host: HostOps, target: str, crossing: migrations.Crossing | None
) -> list[Cmd]:
    """A rollback that crossed schema changes says so in the journal: allowed because each was
    declared backward compatible (the database stays at the new version), or on the operator's
    --across-schema (the database matches `target` again: later rollbacks start from here)."""
    if crossing is None:
        return []
    how = migrations.ACROSS if d.across_schema else "backward compatible"
    return [
        host.journal_cmd(d.clock.now(), migrations.SCHEMA, target, None, **crossing.journal(how))
    ]


def _already_rolled_back(verified: Outcome) -> Outcome:
    """The unverified current failed its gate and the host is back on the last good release:
    that is the one step back a plain rollback asked for, so it goes no further."""
    return Outcome(
        op="rollback",
        result="rolled-back",
        exit_code=0,
        release=verified.live,
        live=verified.live,
        message=(
            f"{verified.release} (left unverified by an interrupted run) failed its gate and "
            f"{verified.live} serves again, verified; no further rollback was made"
        ),
        evidence=verified.evidence,
    )


def _previous_good(d: Deps, host: HostOps, state: HostState) -> str:
    """A plain rollback's target: the newest good release other than `current` — never one
    a manual rollback left (`rolled-back`)."""
    current = state.current
    found = state.last_good(exclude=[current] if current else [])
    if found is not None:
        return found
    left = state.rolled_back_releases()
    hint = (
        f". {', '.join(left)} {'was' if len(left) == 1 else 'were'} left by a manual rollback, "
        f"and a plain rollback never returns there: `releasegate rollback {d.inventory.env} "
        f"--to {left[0]}` does"
        if left
        else ""
    )
    raise HumanNeeded(
        f"no good release other than the current one ({current or 'none'}) exists on "
        f"{host.label}; nothing was changed{hint}"
    )


def _rollback_verdicts(
    d: Deps, host: HostOps, state: HostState, target: str, mark: NeedsHuman | None
) -> list[Cmd]:
    """After a rollback's target passed its gate: the release left behind is `rolled-back`
    (a plain rollback never returns to it; a bad verdict stays bad), and an explicit
    rollback while the host needs a human clears the mark."""
    now = d.clock.now()
    left = state.current
    steps = []
    if (
        left
        and left != target
        and state.state_of(left) in (ReleaseState.GOOD, ReleaseState.ACTIVE_UNVERIFIED)
    ):
        steps.append(host.journal_cmd(now, "rollback", left, ReleaseState.ROLLED_BACK, to=target))
    if mark is not None:
        steps.append(
            host.journal_cmd(
                now,
                RESOLVE,
                target,
                None,
                via=f"rollback --to {target}",
                cleared=mark.since,
                reason=f"{target} passed its gate",
            )
        )
    return steps


def _explicit_target(
    d: Deps, host: HostOps, state: HostState, to: str, mark: NeedsHuman | None
) -> str:
    """`rollback --to`: a good release, one a manual rollback left, or — while the host
    needs a human — the live release itself (gated again once the cause is fixed)."""
    targets = [*state.good_releases(), *state.rolled_back_releases()]
    known = ", ".join(targets) or "none"
    if to in state.incomplete_dirs:
        raise ConfigError(
            f"release {to} on {host.label} is incomplete: releases/{to} has no .release.json "
            f"(releasegate writes it last, so that directory was cut short or changed by hand) "
            f"and cannot be activated; nothing was changed. Releases rollback can go to: {known}"
        )
    if to not in state.release_dirs:
        raise ConfigError(
            f"release {to} does not exist on {host.label}; releases rollback can go to: {known}"
        )
    allowed = state.state_of(to) in (ReleaseState.GOOD, ReleaseState.ROLLED_BACK)
    if mark is not None and to == state.current:
        allowed = True
    if not allowed:
        hint = (
            f"; if you know it is good, `releasegate resolve {d.inventory.env} --mark-good {to}`"
            if mark is not None
            else ""
        )
        raise ConfigError(
            f"release {to} is {state.state_of(to) or 'unknown to the journal'}, not good; "
            f"rollback only goes to good or rolled-back releases ({known}){hint}"
        )
    return to
