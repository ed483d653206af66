"""deploy() and the activation every operation goes through: the flow of docs/design.md §2.

    lock → ship → start → [gate] ─┬─ send traffic → gate / watch → promote → retire → unlock
                                  │                │ any failure or signal after this line
    failure before the switch ────┘                └→ back to the last good → verify → mark bad
    (ship: abort, exit 5; blue-green's gate in the idle slot: reject, exit 3 — nothing live)

The strategy (deploy/strategies/: in-place, blue-green) decides how a release starts, takes
traffic, is reverted and retired; this module keeps the order, the point of no return and the
journal. Steps (deploy.host, deploy.gating, the strategies) raise; only this module decides
between abort, reject and rollback (deploy/recovery.py carries out a rejection or a rollback;
deploy/rollback.py is the operator's rollback, activated through here).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass

from deploy import artifact as artifacts
from deploy import commands, migrations, proxy, prune
from deploy.commands import Cmd
from deploy.deps import Deps, GatePacks, host_ops, report, report_slots, strategy_for
from deploy.errors import (
    AbortedBeforeLive,
    ConfigError,
    ConnectionLost,
    HostKeyRefused,
    HumanNeeded,
    Interrupted,
    LockHeld,
    LockLost,
    NotSwitched,
    PreflightFailed,
    ReleasegateError,
    out_of_space_hint,
)
from deploy.gating import collect_packs, gate_release, gate_through, load_stored_packs, watch
from deploy.host import HostOps
from deploy.interrupts import reason_of, shielded, signum_of
from deploy.journal import HostState
from deploy.locking import locked
from deploy.model import SMOKE_BUNDLE, Outcome, ReleaseState
from deploy.needs_human import refuse_while_marked
from deploy.preflight import Check, judge_host
from deploy.process import Systemd
from deploy.process.pm2 import activation_notes
from deploy.recovery import not_switched, recover, reject
from deploy.release_packs import Bundle
from deploy.strategies.base import Strategy
from deploy.strategies.blue_green import BlueGreen

# ---------------------------------------------------------------------------- deploy


def deploy(d: Deps, source: artifacts.Source) -> Outcome:
    art, bundle = build_release(d, source)
    host = host_ops(d)
    with d.reporter.stage("preflight"):
        run_preflight(d, host, art.size)
    with locked(d, host, "deploy"):
        plan = plan_deploy(d, host, art.release_id)
        if isinstance(plan, Outcome):
            return plan
        ship_release(d, host, plan, art, bundle)
        failed = migrate_release(d, host, plan)
        if failed is not None:
            return failed
        # in-place: the point of no return is the activation; blue-green: the front door's
        # switch, after the release passed its gate in the idle slot (see activate_and_gate)
        return activate_release(d, host, plan, last=True)


@dataclass(frozen=True)
class DeployPlan:
    """What a deploy decided on one host once it held the lock (deploy.fleet runs one per
    host): the release, the host state read at the lock, where a failure goes back to."""

    rid: str
    state: HostState
    previous_good: str | None
    way: Strategy


def build_release(d: Deps, source: artifacts.Source) -> tuple[artifacts.Artifact, Bundle]:
    """The artifact (built once, shipped to every host) and the smoke packs it carries."""
    r = d.reporter
    if d.dry_run:
        source, dirty = artifacts.for_preview(source)
        if dirty:
            r.warn(dirty)
    with r.stage("build artifact"):
        sha = artifacts.resolve(source)
        bundle, packs = collect_packs(d, source, sha)
        art = artifacts.build(
            source, d.workdir, d.clock.now(), sha=sha, extra={SMOKE_BUNDLE: bundle.to_json()}
        )
        d.gate_packs[art.release_id] = GatePacks(packs)
        declaration = (
            migrations.read_declaration(d.inventory, source, sha)
            if d.inventory.migrations.enabled
            else None
        )
        r.info(
            f"release {art.release_id} from {art.revision[:12]}: {art.members} files, "
            f"{art.size / 1024:.0f} KiB, sha256 {art.sha256[:12]}…"
        )
    if declaration is not None:
        d.declarations[art.release_id] = declaration
    return art, bundle


def plan_deploy(d: Deps, host: HostOps, rid: str) -> DeployPlan | Outcome:
    """Under the lock, before anything changes: refuse while the host needs a human (the
    outcome), settle what an interrupted run left, choose the fallback."""
    state = host.state_at_lock or host.read_state()
    refuse_broken_layout(d, host, state)
    mark = state.needs_human()
    if mark is not None:
        return refuse_while_marked(d, host, "deploy", mark)
    state, _verified = resolve_interrupted(d, host, state)
    if rid in state.release_dirs:
        raise AbortedBeforeLive(f"release {rid} already exists on {host.label}; retry in a second")
    previous_good = state.last_good(exclude=[rid])
    way = strategy_for(d, host, state)
    load_stored_packs(d, state, [previous_good])
    return DeployPlan(rid=rid, state=state, previous_good=previous_good, way=way)


def refuse_broken_layout(d: Deps, host: HostOps, state: HostState) -> None:
    problem = state.layout_problem(d.inventory.host.root, host.label)
    if problem is not None:
        raise AbortedBeforeLive(problem)


def ship_release(
    d: Deps, host: HostOps, plan: DeployPlan, art: artifacts.Artifact, bundle: Bundle
) -> None:
    """Ship; a failure aborts (the partial release removed, nothing live changed, exit 5)."""
    try:
        with d.reporter.stage(f"ship {plan.rid}"):
            _ship(
                d,
                host,
                plan.state,
                art,
                bundle,
                reuse_from=plan.previous_good,
                declaration=d.declarations.get(plan.rid),
            )
    except BaseException as exc:
        _abort(d, host, plan.rid, exc)
        raise AssertionError("unreachable") from exc


def migrate_release(d: Deps, host: HostOps, plan: DeployPlan) -> Outcome | None:
    """After the ship, before the release starts or takes traffic: its migration. A failed
    one is the deploy's outcome (the release never activated); otherwise None, and an
    automatic rollback now knows the schema changes it would cross."""
    migrated = _migrate(d, host, plan.rid, d.declarations.get(plan.rid))
    if migrated is not None and not migrated.ok:
        live = plan.state.current
        return report(
            d, migrations.failed_outcome(migrated, live=live, label=host.label, env=d.inventory.env)
        )
    if plan.previous_good is not None:
        d.crossings[plan.previous_good] = migrations.crossing(
            plan.state.journal, plan.previous_good, migrated
        )
    return None


def activate_release(d: Deps, host: HostOps, plan: DeployPlan, *, last: bool = False) -> Outcome:
    """Activate and gate the shipped release; after its point of no return a failure rolls
    this host back to `plan.previous_good` (exit 3). `last`: nothing follows on this host
    under its lock (a single-host deploy; deploy.fleet may still roll a host back)."""
    return activate_and_gate(
        d,
        host,
        plan.rid,
        plan.way,
        op="deploy",
        fallback=plan.previous_good,
        state=plan.state,
        last=last,
    )


def _ship(
    d: Deps,
    host: HostOps,
    state: HostState,
    art: artifacts.Artifact,
    bundle: Bundle,
    *,
    reuse_from: str | None,
    declaration: migrations.Declaration | None = None,
) -> None:
    """Uploads (a command's stdin each), then every host step of the phase in one round
    trip. Everything is written inside the new release: nothing live changes before the
    switch."""
    rid = art.release_id
    now = d.clock.now()
    upload = host.upload_artifact(art)
    env_upload = host.upload_env_file(d.env_file, d.workdir) if d.env_file is not None else None
    steps = [
        host.journal_cmd(
            now, "deploy", rid, ReleaseState.PARTIAL, revision=art.revision, sha256=art.sha256
        ),
        commands.clean_uploads(host.layout, host.uploads),
    ]
    if state.partial_dirs:
        d.reporter.info(
            f"removing leftovers of an interrupted deploy: {', '.join(sorted(state.partial_dirs))}"
        )
        steps.append(commands.prune_releases(host.layout, sorted(state.partial_dirs)))
    # Dependencies are only ever reused from a good release (never a bad or unverified one).
    source = None if d.clean_install else reuse_from
    steps += host.ship_steps(
        art,
        upload,
        now,
        reuse_from=source,
        env_upload=env_upload,
        smoke=bundle,
        migration=declaration.as_manifest() if declaration is not None else None,
    )
    steps.append(host.journal_cmd(now, "deploy", rid, ReleaseState.READY))
    res = host.run_batch("ship", steps, f"ship {rid}")
    host.uploads.clear()  # consumed by the ship: extracted, moved into the release
    for line in res.stdout.splitlines():
        if line.startswith(commands.DEPS_REUSED):
            app = d.inventory.app
            how = (
                f"nothing to install, as for {source}"
                if line.endswith("none")
                else f"{app.deps_dir} copied from {source}"
            )
            d.reporter.info(
                f"{how} (same dependency key: {app.deps_lockfile}, {app.deps_manifest}, the "
                f"install command, {', '.join(app.deps_runtimes) or 'no runtime'} version on the "
                f"host): install skipped (--clean-install forces it)"
            )


def _migrate(
    d: Deps, host: HostOps, rid: str, declaration: migrations.Declaration | None
) -> migrations.Migration | None:
    """After the ship, before `rid` starts or takes traffic: its migration, in its directory
    with its env snapshot (deploy/migrations.py), then its journal line and manifest."""
    cfg = d.inventory.migrations
    if declaration is None:
        return None
    if d.dry_run:
        d.reporter.info(f"would run the migration `{cfg.command}` in {rid} before it starts")
        return None
    with d.reporter.stage(f"migrate the database for {rid}"):
        try:
            done = migrations.run(host, rid, cfg, declaration)
        except BaseException as exc:
            d.signals.clear()
            with shielded(d.reporter), contextlib.suppress(ReleasegateError):
                if not isinstance(exc, ConnectionLost):
                    host.record(
                        d.clock.now(),
                        migrations.MIGRATE,
                        rid,
                        ReleaseState.BAD,
                        result="interrupted",
                        reason=reason_of(exc),
                    )
            why = migrations.interrupted(rid, cfg, reason_of(exc))
            if signum_of(exc):
                raise Interrupted(why, signum=signum_of(exc)) from None
            raise HumanNeeded(why) from None
        steps = migrations.record_steps(host, d.clock.now(), done)
        host.run_batch("migrate.record", steps, f"record the migration of {rid}")
    for line in done.evidence() if done.ok else ():
        d.reporter.info(line)
    return done


def _abort(d: Deps, host: HostOps, rid: str, exc: BaseException) -> None:
    """Before the point of no return: remove the partial release; nothing live changed."""
    d.signals.clear()
    with shielded(d.reporter):
        if not isinstance(exc, ConnectionLost):
            with contextlib.suppress(ReleasegateError):
                # this run's uploads too (the artifact, the secrets): the ship did not take
                # them; a run that cannot clean up leaves them to the next one's ship
                host.remove_uploads()
                host.remove_partials(frozenset({f"{rid}.partial"}))
                host.record(
                    d.clock.now(), "deploy", rid, None, result="aborted", reason=reason_of(exc)
                )
    signum = signum_of(exc)
    if signum:
        raise Interrupted(
            f"interrupted by {signal.Signals(signum).name} before activation; the partial "
            f"release was removed and nothing live changed",
            signum=signum,
        ) from None
    if isinstance(exc, AbortedBeforeLive | ConfigError | LockHeld | HostKeyRefused):
        raise exc
    if isinstance(exc, ConnectionLost):
        raise AbortedBeforeLive(
            f"lost SSH to {host.label} while shipping {rid}; nothing live changed. The partial "
            f"release is removed by the next deploy; the lock {host.layout.lock} may still be "
            f"held — check `releasegate status {d.inventory.env}`. ({exc.message})"
        ) from None
    if isinstance(exc, ReleasegateError):
        raise AbortedBeforeLive(
            f"deploy of {rid} failed before activation, nothing live changed: {exc.message}"
            + out_of_space_hint(exc.message, str(host.layout.root), d.inventory.env),
            evidence=exc.evidence,
        ) from None
    raise exc


def run_preflight(d: Deps, host: HostOps, artifact_size: int) -> list[Check]:
    """The catalogue (deploy.preflight): local checks made by the caller, then one read-only
    probe of the host. Any failure stops here: exit 5, nothing on the host changed."""
    checks = list(d.local_checks) + preflight_checks(d, host, artifact_size)
    failed = [c for c in checks if not c.ok]
    for check in checks:
        (d.reporter.warn if not check.ok else d.reporter.info)(check.line())
    if failed:
        raise PreflightFailed(
            f"preflight: {len(failed)} of {len(checks)} checks failed on {host.label}; nothing "
            f"on the host was changed",
            evidence=tuple(c.line() for c in failed),
        )
    return checks


def preflight_checks(d: Deps, host: HostOps, artifact_size: int) -> list[Check]:
    """The host's checks, and the strategy's (blue-green: nginx, the allowlist, the site,
    the slot ports), from one read-only round trip."""
    way = strategy_for(d, host, None)
    facts, stdout = host.preflight_round_trip(way.preflight_probe())
    return judge_host(d.inventory, facts, artifact_size, d.clock.now()) + way.preflight_checks(
        stdout
    )


def setup_front_door(d: Deps, host: HostOps) -> str:
    """`releasegate setup` for blue-green: write the first upstream file (the blue slot) unless
    one exists, and show what root installs once: the site config and the sudo allowlist.
    Returns a summary for the outcome ("" in place)."""
    way = strategy_for(d, host, None)
    if not isinstance(way, BlueGreen):
        return ""
    res = host.run_batch("setup", way.setup_steps(), f"write {way.paths.upstream}")
    written = "@@written" in res.stdout
    user = d.inventory.host.user
    site = proxy.site_config(way.paths, public_port=d.inventory.strategy.public_port)
    d.reporter.info(
        f"as root, install this site config as {way.paths.site} (mode 0644), then "
        f"`nginx -t && systemctl reload nginx`:\n{site}"
    )
    d.reporter.info(
        "as root, put these lines in /etc/sudoers.d/releasegate-nginx (mode 0440, check with "
        "`visudo -cf /etc/sudoers.d/releasegate-nginx`), and let the deploy user read nginx's "
        f"logs (`usermod -aG adm {user}`):\n" + "\n".join(proxy.sudoers_lines(user))
    )
    if isinstance(host.manager, Systemd) and host.manager.sudoers():
        d.reporter.info(
            f"as root, put these lines in /etc/sudoers.d/releasegate-{d.inventory.app.name} "
            "(mode 0440, check with `visudo -cf`): the systemd slots' allowlist "
            "(docs/systemd.md):\n" + "\n".join(host.manager.sudoers())
        )
    if (note := way.cluster_note()) is not None:
        d.reporter.info(note)
    return (
        f"{'wrote' if written else 'kept the existing'} {way.paths.upstream}"
        + (f" (slot blue, 127.0.0.1:{way.slots.blue.port})" if written else "")
        + f"; install the site config and the sudoers lines shown above as root, then "
        f"`releasegate preflight {d.inventory.env}`"
    )


def resolve_interrupted(
    d: Deps, host: HostOps, state: HostState
) -> tuple[HostState, Outcome | None]:
    """A run killed after its switch (SIGKILL, lost machine) leaves `current` active but
    unverified. It is never assumed good: gate it now, and roll back if it fails — unless it
    was itself the automatic rollback of a failed run (the one step back already), or it was
    good before and there is nothing to go back to: then a failure stops here for a human."""
    settled = strategy_for(d, host, state).settle()
    for line in settled:
        d.reporter.warn(line)
    if settled:
        state = host.read_state()
    current = state.current
    if current is None or state.state_of(current) != ReleaseState.ACTIVE_UNVERIFIED:
        return state, None
    fallback = state.last_good(exclude=[current])
    hold = None
    if state.automatic_fallback(current):
        hold = "the automatic rollback of a failed run (one step back already)"
    elif fallback is None and state.was_good(current):
        # Nothing to go back to, but it served as good before: stopping the app and marking
        # it bad is for a release that never did (a first deploy).
        hold = "good before, and there is no other good release to go back to"
    d.reporter.warn(
        f"{current} is active but was never verified (an earlier run was interrupted after "
        f"its switch); gating it before going on"
        + (f" — it was {hold}: if it fails, releasegate stops for a human" if hold else "")
    )
    load_stored_packs(d, state, [current, None if hold else fallback])
    if fallback is not None:
        d.crossings[fallback] = migrations.crossing(state.journal, fallback)
    outcome = activate_and_gate(
        d,
        host,
        current,
        strategy_for(d, host, state),
        op="verify",
        fallback=None if hold else fallback,
        hold=hold,
    )
    if outcome.exit_code > 128 and outcome.result == "rolled-back":
        # interrupted while gating it: the safe path ran (back on the last good release,
        # verified); the operation stops there with the signal's exit code
        raise Interrupted(
            outcome.message, signum=outcome.exit_code - 128, evidence=outcome.evidence
        )
    if outcome.exit_code not in (0, 3):
        raise HumanNeeded(
            f"the unverified release {current} left by an interrupted run could not be made "
            f"safe: {outcome.message}",
            evidence=outcome.evidence,
        )
    return host.read_state(), outcome


# ---------------------------------------------------------------------------- activation


def activate_and_gate(
    d: Deps,
    host: HostOps,
    rid: str,
    way: Strategy,
    *,
    op: str,
    fallback: str | None,
    state: HostState | None = None,
    hold: str | None = None,
    on_success: Callable[[], list[Cmd]] | None = None,
    last: bool = False,
) -> Outcome:
    """Start `rid`, gate it, send it traffic, watch it, promote it. Before it takes traffic
    (blue-green: gated in the idle slot) a failure rejects it and nothing live changed; after,
    roll back to `fallback` — or, when `hold` says why this activation must not be followed by
    an automatic step, stop for a human."""
    r = d.reporter
    before = way.gates_before_traffic
    evidence: list[str] = []
    started = "none"
    try:
        if before:
            with r.stage(f"start {rid} without traffic"):
                started = way.start(rid)
            if started != "warm":  # warm: running, verified when it last served
                with r.stage(f"gate {rid} on {way.target(rid).label}"):
                    evidence = gate_release(d, host, rid, way.target(rid))
    except LockLost:
        raise
    except BaseException as exc:
        if started == "live":  # it already serves (left by an interrupted run)
            return recover(d, host, rid, way, op=op, fallback=fallback, exc=exc, hold=hold)
        return reject(d, host, way, rid, op=op, exc=exc, state=state)
    # ---------------------------- point of no return: live state changes below ----------
    try:
        with r.stage(f"switch the front door to {rid}" if before else f"activate {rid}"):
            # the lease guard first: a run whose lock was broken changes nothing live
            records = [
                *host.lease_guard(),
                host.journal_cmd(d.clock.now(), op, rid, ReleaseState.ACTIVE_UNVERIFIED),
            ]
            for note in activation_notes(way.send_traffic(rid, records, keep_previous=True)):
                r.warn(note)
        if before:
            with r.stage(f"watch {rid} through the front door"):
                evidence += watch(d, way, rid, bake=True)
        else:
            with r.stage(f"gate {rid}"):
                evidence = gate_through(d, host, rid, way)
    except LockLost:
        raise
    except NotSwitched as exc:
        return not_switched(d, host, way, rid, op=op, exc=exc)
    except BaseException as exc:
        return recover(d, host, rid, way, op=op, fallback=fallback, exc=exc, hold=hold)
    # `last`: nothing follows on the host, so (in place: retiring is nothing) the promotion's
    # batch also releases the lock — one round trip less
    unlock = last and not before and not d.dry_run
    _promote(
        d,
        host,
        rid,
        op,
        state if op == "deploy" else None,
        on_success() if on_success else [],
        unlock=unlock,
    )
    _retire(d, way, rid)
    verb = "promoted" if op == "deploy" else "rolled back to"
    if d.dry_run:
        return report_slots(
            d,
            way,
            Outcome(
                op=op,
                result="planned",
                exit_code=0,
                release=rid,
                live=host.read_state().current,
                message=(
                    f"dry run: nothing was changed on {host.label}; a real {op} would then "
                    f"{'promote' if op == 'deploy' else 'roll back to'} {rid} if its gate passes"
                ),
            ),
        )
    return report_slots(
        d,
        way,
        Outcome(
            op=op,
            result="promoted" if op == "deploy" else "rolled-back",
            exit_code=0,
            release=rid,
            live=rid,
            message=f"{verb} {rid} on {host.label}",
            evidence=tuple(evidence),
        ),
    )


def _retire(d: Deps, way: Strategy, rid: str) -> None:
    """After a promotion: the strategy's retire; its failure never undoes the promotion."""
    try:
        way.retire(rid)
    except ReleasegateError as exc:
        d.reporter.warn(
            f"after promoting {rid}: retiring the previous slot failed: {exc.message} (the "
            f"deploy stands; the next deploy or rollback finishes it)"
        )


def _promote(
    d: Deps,
    host: HostOps,
    rid: str,
    op: str,
    state: HostState | None,
    verdicts: list[Cmd] | None = None,
    *,
    unlock: bool = False,
) -> None:
    """Record the release good (and the verdicts that follow from it), make the process set
    survive a reboot, (after a deploy) prune old releases and (`unlock`) release the lock —
    one round trip. Only the journal lines are essential: a failure of the rest is reported,
    never undoes the promotion (and a lock not released here is released by locked)."""
    now = d.clock.now()
    good = host.journal_cmd(now, op, rid, ReleaseState.GOOD, result="promoted")
    # the lease guard first: a run whose lock was taken away records no verdict; nor does one
    # whose `current` was switched by hand meanwhile (what serves is no longer what was gated)
    still = [] if d.dry_run else [commands.current_is(host.layout, rid)]
    steps = [*host.lease_guard(), *still, good, *(verdicts or [])]
    decided = None
    if state is not None:
        decided = prune.plan(state.promoted(rid), d.inventory.app.keep_releases)
        for warning in decided.warnings:
            d.reporter.warn(warning)
        if decided.remove:
            steps.append(commands.prune_releases(host.layout, decided.remove))
            steps.append(host.journal_cmd(now, "prune", removed=list(decided.remove)))
    persist = host.manager.persist()
    if persist is not None:
        steps.append(persist)
    release = host.release_steps() if unlock else []
    try:
        res = host.run_batch("promote", steps + release, f"promote {rid}")
    except LockLost as lost:
        raise LockLost(
            f"{rid} passed its gate, but this run no longer holds the lock {host.layout.lock} "
            f"on {host.label}, so it was not recorded good: it is live and unverified, and the "
            f"next deploy or rollback gates it first (`releasegate status "
            f"{d.inventory.env}`). ({lost.message})"
        ) from None
    except ReleasegateError as exc:
        failure = getattr(exc, "failure", None)
        if failure is not None and still and failure.display == still[0].display:
            raise HumanNeeded(
                f"{rid} passed its gate, but `current` was switched by hand meanwhile "
                f"({failure.stderr_tail.strip()}), so {rid} was not recorded good. Its processes "
                f"may still run {rid} while `current` names another release. Check with "
                f"`releasegate status {d.inventory.env}`, then `releasegate rollback "
                f"{d.inventory.env} --to ID` to the release that should serve (gated), or "
                f"deploy again."
            ) from None
        if failure is not None and failure.display == good.display:
            raise HumanNeeded(
                f"{rid} is live and passed its gate, but recording it as good in "
                f"{host.layout.journal} failed: {exc.message}. Check the host's disk, then "
                f"`releasegate rollback {d.inventory.env} --to {rid}` to record it."
            ) from None
        d.reporter.warn(f"after promoting {rid}: {exc.message} (the deploy stands)")
        return
    if release:
        host.released_by(res)
    if decided is not None and decided.remove:
        verb = "would remove" if d.dry_run else "removed"
        d.reporter.info(f"pruned: {verb} {', '.join(decided.remove)}")
