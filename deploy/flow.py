"""deploy() and rollback(): the flow of docs/design.md §2, and nothing else.

    lock → ship → start → [gate] ─┬─ send traffic → gate / watch → promote → retire → unlock
                                  │                │ any failure or signal after this line
    failure before the switch ────┘                └→ back to the last good → verify → mark bad
    (ship: abort, exit 5; blue-green's gate in the idle slot: reject, exit 3 — nothing live)

The strategy (deploy/strategies/: in-place, blue-green) decides how a release starts, takes
traffic, is reverted and retired; this module keeps the order, the point of no return and the
journal. Steps (deploy.host, deploy.gate, the strategies) raise; only this module decides
between abort, reject and rollback.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import httpx

from deploy import artifact as artifacts
from deploy import commands, lock, migrations, proxy, prune, release_packs, verdict
from deploy.clock import Clock
from deploy.commands import Cmd
from deploy.errors import (
    AbortedBeforeLive,
    ConfigError,
    ConnectionLost,
    GateFailed,
    HostKeyRefused,
    HumanNeeded,
    Interrupted,
    LockHeld,
    LockLost,
    NotSwitched,
    PreflightFailed,
    ReleasegateError,
    Signalled,
)
from deploy.gate import (
    MIN_READ_TIMEOUT,
    Expected,
    ReadyPolicy,
    check_identity,
    check_version,
    closing_identity,
    probe_http,
    reported_version,
    stability,
    wait_ready,
)
from deploy.host import HostOps
from deploy.inventory import Inventory
from deploy.journal import NEEDS_HUMAN, RESOLVE, HostState
from deploy.model import (
    SMOKE_BUNDLE,
    HostStatus,
    IdentityFacts,
    Layout,
    NeedsHuman,
    Outcome,
    ProcessSnapshot,
    ReleaseState,
    is_release_id,
)
from deploy.preflight import Check, judge_host
from deploy.process import Systemd, manager_for
from deploy.process.pm2 import activation_notes
from deploy.redact import Redactor
from deploy.release_packs import Bundle
from deploy.remote import Remote
from deploy.report import Reporter
from deploy.strategies.base import GateTarget, Strategy
from deploy.strategies.blue_green import BlueGreen
from deploy.strategies.in_place import InPlace
from smoke.model import Pack
from smoke.pack import PackError
from smoke.runner import run_packs

HttpFactory = Callable[[str, float], httpx.Client]


def default_http(base_url: str, timeout: float) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)


@dataclass(frozen=True)
class GatePacks:
    """The smoke packs that gate one release: its own (carried since its ship), or none with
    the reason why (`note`, shown as a warning when the release is gated)."""

    packs: tuple[Pack, ...] = ()
    note: str | None = None


@dataclass
class Deps:
    """What an operation needs from outside; tests pass fakes for each."""

    inventory: Inventory
    remote: Remote
    reporter: Reporter
    clock: Clock
    actor: str
    workdir: Path
    http: HttpFactory = default_http
    health_token: str | None = None
    lock_wait: float = 0.0
    dry_run: bool = False  # the remote is a PlanRemote: reads happen, changes are only shown
    clean_install: bool = False  # never reuse the previous release's dependencies
    # Signals the CLI's handler saw. Python drops an exception raised by a signal handler that
    # happens to run inside a weakref callback or finalizer, so long waits also look here.
    signals: list[int] = field(default_factory=list)
    redact: Redactor = field(default_factory=Redactor)  # seeded with every secret value
    local_checks: tuple[Check, ...] = ()  # preflight checks made on this machine
    machine: str = field(default_factory=socket.gethostname)  # this machine, in lock records
    # the secrets part of each new release's env snapshot (release_env), built locally
    env_file: str | None = field(default=None, repr=False)
    # this machine's environment: resolves `${ENV:…}` in the smoke packs releases carry
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    # release id -> the packs that gate it, loaded before the point of no return
    gate_packs: dict[str, GatePacks] = field(default_factory=dict)
    # told the failed release as soon as one fails after its switch, before its rollback
    # (deploy.fleet starts putting the other hosts back meanwhile)
    on_failure: Callable[[str], None] | None = None
    # rollback --across-schema: the operator ran the down migration (deploy/migrations.py)
    across_schema: bool = False
    # fallback release id -> the schema changes an automatic rollback to it would cross
    crossings: dict[str, migrations.Crossing | None] = field(default_factory=dict)
    # release id -> its migration declaration, read when it was built (migrations on)
    declarations: dict[str, migrations.Declaration] = field(default_factory=dict)


def host_ops(d: Deps) -> HostOps:
    layout = Layout(root=PurePosixPath(d.inventory.host.root))
    return HostOps(
        inventory=d.inventory,
        remote=d.remote,
        manager=manager_for(d.inventory, layout),
        layout=layout,
        actor=d.actor,
        redact=d.redact,
        machine=d.machine,
    )


# ---------------------------------------------------------------------------- deploy


def deploy(d: Deps, source: artifacts.Source) -> Outcome:
    art, bundle = build_release(d, source)
    host = host_ops(d)
    with d.reporter.stage("preflight"):
        run_preflight(d, host, art.size)
    with _locked(d, host, "deploy"):
        plan = plan_deploy(d, host, art.release_id)
        if isinstance(plan, Outcome):
            return plan
        ship_release(d, host, plan, art, bundle)
        failed = migrate_release(d, host, plan)
        if failed is not None:
            return failed
        # in-place: the point of no return is the activation; blue-green: the front door's
        # switch, after the release passed its gate in the idle slot (see _activate_and_gate)
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
        bundle, packs = _collect_packs(d, source, sha)
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
    mark = state.needs_human()
    if mark is not None:
        return _refuse(d, host, "deploy", mark)
    state, _verified = _resolve_interrupted(d, host, state)
    if rid in state.release_dirs:
        raise AbortedBeforeLive(f"release {rid} already exists on {host.label}; retry in a second")
    previous_good = state.last_good(exclude=[rid])
    way = strategy_for(d, host, state)
    _load_stored_packs(d, state, [previous_good])
    return DeployPlan(rid=rid, state=state, previous_good=previous_good, way=way)


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
        return _report(
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
    return _activate_and_gate(
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
            with _shielded(d.reporter), contextlib.suppress(ReleasegateError):
                if not isinstance(exc, ConnectionLost):
                    host.record(
                        d.clock.now(),
                        migrations.MIGRATE,
                        rid,
                        ReleaseState.BAD,
                        result="interrupted",
                        reason=_reason(exc),
                    )
            why = migrations.interrupted(rid, cfg, _reason(exc))
            if _signum(exc):
                raise Interrupted(why, signum=_signum(exc)) from None
            raise HumanNeeded(why) from None
        steps = migrations.record_steps(host, d.clock.now(), done)
        host.run_batch("migrate.record", steps, f"record the migration of {rid}")
    for line in done.evidence() if done.ok else ():
        d.reporter.info(line)
    return done


def _collect_packs(d: Deps, source: artifacts.Source, sha: str) -> tuple[Bundle, tuple[Pack, ...]]:
    """The smoke packs the new release will carry, as they are at `sha` (pack files in the
    app's repository) or on disk; loaded now, so a bad pack stops here (exit 2)."""
    inv = d.inventory
    try:
        bundle = release_packs.collect(
            inv.smoke, base_dir=inv.base_dir, repo=source.repo, revision=sha
        )
        packs = release_packs.load(bundle, d.environ)
    except PackError as exc:
        raise ConfigError(f"{inv.source}: smoke: {exc}") from None
    for pack in packs:
        d.redact.add(*pack.secret_values())
    return bundle, packs


def _load_stored_packs(d: Deps, state: HostState, releases: Iterable[str | None]) -> None:
    """Before the point of no return: the packs each release that may be activated carries,
    read by the state read and loaded here (their `${ENV:…}` resolved on this machine)."""
    for rid in releases:
        if rid is not None and rid not in d.gate_packs:
            d.gate_packs[rid] = _stored_packs(d, state, rid)


def _stored_packs(d: Deps, state: HostState, rid: str) -> GatePacks:
    fallback = "it is gated on readiness and identity only"
    stored = state.smoke.get(rid)
    if stored is None:
        return GatePacks(
            note=f"{rid} was shipped before releases carried their smoke packs: {fallback}"
        )
    if stored.recorded != stored.sha256:
        return GatePacks(
            note=(
                f"the smoke packs stored in {rid} ({SMOKE_BUNDLE}) do not match the hash its "
                f"manifest recorded (changed on the host after it shipped?): {fallback}"
            )
        )
    try:
        packs = release_packs.load(Bundle.from_json(stored.text), d.environ)
    except (ValueError, PackError) as exc:
        return GatePacks(
            note=f"the smoke packs {rid} carries cannot be used here ({exc}): {fallback}"
        )
    for pack in packs:
        d.redact.add(*pack.secret_values())
    return GatePacks(packs)


def _packs_for(d: Deps, host: HostOps, rid: str) -> GatePacks:
    """The packs that gate `rid`: loaded before the point of no return; read now only if the
    flow activates a release it did not foresee."""
    if rid not in d.gate_packs:
        d.gate_packs[rid] = _stored_packs(d, host.read_state(), rid)
    return d.gate_packs[rid]


def _abort(d: Deps, host: HostOps, rid: str, exc: BaseException) -> None:
    """Before the point of no return: remove the partial release; nothing live changed."""
    d.signals.clear()
    with _shielded(d.reporter):
        if not isinstance(exc, ConnectionLost):
            with contextlib.suppress(ReleasegateError):
                # this run's uploads too (the artifact, the secrets): the ship did not take
                # them; a run that cannot clean up leaves them to the next one's ship
                host.remove_uploads()
                host.remove_partials(frozenset({f"{rid}.partial"}))
                host.record(
                    d.clock.now(), "deploy", rid, None, result="aborted", reason=_reason(exc)
                )
    signum = _signum(exc)
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
            f"deploy of {rid} failed before activation, nothing live changed: {exc.message}",
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


def strategy_for(d: Deps, host: HostOps, state: HostState | None) -> Strategy:
    """The inventory's strategy, over the host state read at the lock (None: not read)."""
    if d.inventory.strategy.kind == "blue-green":
        return BlueGreen(
            host=host,
            state=state or HostState(False, None, frozenset(), frozenset(), frozenset(), None),
            http=d.http,
            clock=d.clock,
            reporter=d.reporter,
            headers=_health_headers(d),
            check_signal=lambda: _raise_pending_signal(d),
        )
    return InPlace(host)


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


def _health_headers(d: Deps) -> dict[str, str]:
    health = d.inventory.health
    return {health.token_header: d.health_token} if d.health_token else {}


# ---------------------------------------------------------------------------- rollback


def check_release_id(to: str | None, env: str, option: str = "--to") -> None:
    if to is not None and not is_release_id(to):
        raise ConfigError(
            f"{option} {to!r} is not a release id: ids look like 20261122143055-1a2b3c4 "
            f"(see `releasegate releases {env}`)"
        )


def rollback(d: Deps, to: str | None = None) -> Outcome:
    check_release_id(to, d.inventory.env)
    host = host_ops(d)
    with _locked(d, host, "rollback"):
        return rollback_locked(d, host, to, last=True)


def rollback_locked(d: Deps, host: HostOps, to: str | None, *, last: bool = False) -> Outcome:
    """rollback() once the host's lock is held (deploy.fleet holds every host's lock);
    `last`: nothing follows on this host under its lock."""
    state = host.state_at_lock or host.read_state()
    mark = state.needs_human()
    if mark is not None and to is None:
        return _refuse(d, host, "rollback", mark)
    if mark is None:
        state, verified = _resolve_interrupted(d, host, state)
        if verified is not None and verified.exit_code == 3 and to is None:
            return _report(d, _already_rolled_back(verified))
    current = state.current
    if to is not None:
        target = _explicit_target(d, host, state, to, mark)
    else:
        target = _previous_good(d, host, state)
    if target == current:
        d.reporter.info(f"{target} is already current; activating and gating it again")
    crossing = migrations.crossing(state.journal, target) if target != current else None
    if crossing is not None and not crossing.compatible and not d.across_schema:
        return _report(
            d,
            migrations.refused_rollback(
                d.inventory, crossing, root=str(host.layout.root), live=current
            ),
        )
    fallback = current if current and state.state_of(current) == ReleaseState.GOOD else None
    if fallback == target or mark is not None:
        fallback = None  # while marked, an operator's rollback is never followed by another
    _load_stored_packs(d, state, [target, fallback])
    # the point of no return is inside: the activation, or the front door's switch
    return _activate_and_gate(
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


def _resolve_interrupted(
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
    _load_stored_packs(d, state, [current, None if hold else fallback])
    if fallback is not None:
        d.crossings[fallback] = migrations.crossing(state.journal, fallback)
    outcome = _activate_and_gate(
        d,
        host,
        current,
        strategy_for(d, host, state),
        op="verify",
        fallback=None if hold else fallback,
        hold=hold,
    )
    if outcome.exit_code not in (0, 3):
        raise HumanNeeded(
            f"the unverified release {current} left by an interrupted run could not be made "
            f"safe: {outcome.message}",
            evidence=outcome.evidence,
        )
    return host.read_state(), outcome


def _refuse(d: Deps, host: HostOps, op: str, mark: NeedsHuman) -> Outcome:
    """While the needs-human mark stands: refuse, change nothing, say what to run."""
    commands = mark.commands or verdict.mark_commands(d.inventory.env, live=mark.live, others=[])
    what = "this deploy" if op == "deploy" else "a plain rollback"
    return _report(
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
    with _locked(d, host, "resolve"):
        state = host.state_at_lock or host.read_state()
        mark = state.needs_human()
        if mark_good is not None and mark_good not in state.release_dirs:
            known = ", ".join(sorted(state.release_dirs, reverse=True)) or "none"
            raise ConfigError(
                f"release {mark_good} does not exist on {host.label}; releases there: {known}"
            )
        if mark is None and mark_good is None:
            return _report(
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
        return _report(
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


# ---------------------------------------------------------------------------- activation


def _activate_and_gate(
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
                    evidence = _gate(d, host, rid, way.target(rid))
    except LockLost:
        raise
    except BaseException as exc:
        if started == "live":  # it already serves (left by an interrupted run)
            return _recover(d, host, rid, way, op=op, fallback=fallback, exc=exc, hold=hold)
        return _reject(d, host, way, rid, op=op, exc=exc, state=state)
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
                evidence += _watch(d, way, rid, bake=True)
        else:
            with r.stage(f"gate {rid}"):
                evidence = _gate(d, host, rid, way.target(rid))
    except LockLost:
        raise
    except NotSwitched as exc:
        return _not_switched(d, host, way, rid, op=op, exc=exc)
    except BaseException as exc:
        return _recover(d, host, rid, way, op=op, fallback=fallback, exc=exc, hold=hold)
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
        return _report_slots(
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
    return _report_slots(
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


def _gate(d: Deps, host: HostOps, rid: str, target: GateTarget) -> list[str]:
    """Readiness and the stability window (together), identity by cwd and — when
    health.version is set — by the version the app reports, then the smoke pack; all of it
    where `target` says the release is reached (in place: the app's port; blue-green: its slot's
    port, before it takes traffic). Everything up to the smoke pack runs inside health.deadline:
    each process-manager read gets the time left as its timeout."""
    health = d.inventory.health
    version = health.version
    smoke = _packs_for(d, host, rid)
    if smoke.note:
        d.reporter.warn(smoke.note)
    if d.dry_run:
        d.reporter.info(
            f"would probe {health.path} on {target.label} through an SSH tunnel "
            f"until {health.successes} consecutive 2xx answers and {health.window:g}s "
            f"without a restart (every instance online) within {health.deadline:g}s, then "
            f"check that every process runs in {host.layout.release(rid)}"
            + (
                f" and that {version.path} reports its {version.expect.replace('_', ' ')}"
                if version
                else ""
            )
            + (f", then run the {len(smoke.packs)} smoke pack(s) it carries" if smoke.packs else "")
            + "; whether it passes cannot be known in advance (a failure would roll back)"
        )
        return []
    policy = ReadyPolicy(
        deadline=health.deadline,
        interval=health.interval,
        successes=health.successes,
        max_restarts=health.max_restarts,
        stable_for=health.window,
        instances=d.inventory.expected_instances,
    )
    started = d.clock.monotonic()

    def time_left() -> float:
        return max(policy.deadline - (d.clock.monotonic() - started), MIN_READ_TIMEOUT)

    headers = _health_headers(d)
    with (
        host.remote.tunnel(target.port) as port,
        d.http(f"http://127.0.0.1:{port}", health.probe_timeout) as client,
    ):

        def probe() -> tuple[str, str]:
            _raise_pending_signal(d)
            return probe_http(client, health.path, headers)

        closed: list[tuple[ProcessSnapshot, IdentityFacts | None]] = []

        def closing(timeout: float, pids: tuple[int, ...]) -> ProcessSnapshot:
            assert target.closing is not None  # identity read with the closing snapshot
            closed[:] = [target.closing(timeout, pids)]
            return closed[0][0]

        history, snap = wait_ready(
            probe,
            target.snapshot,
            policy,
            d.clock,
            on_probe=lambda p: d.reporter.command(p.line()),
            closing=closing if target.closing is not None else None,
            first=target.first,
        )
        probes = sum(1 for p in history if p.outcome != "info")
        d.reporter.info(f"ready: {history[-1].detail} ({probes} probes)")
        stable = stability(snap, policy)
        d.reporter.info(f"stable: {stable}")
        snap = snap or target.snapshot(time_left())
        facts = closing_identity(snap, closed[0] if closed else None) or host.identity_facts(
            rid, snap.pids, timeout=time_left()
        )
        identity = check_identity(snap, facts, host.layout.release(rid))
        d.reporter.info(f"identity: {identity}")
        evidence = [p.line() for p in history] + [f"stable: {stable}", f"identity: {identity}"]
        if version is not None:
            # Through the readiness client: same tunnel, same connection, no new round trip.
            reported = reported_version(client, version, headers)
            expected = Expected(release_id=rid, revision=facts.revision, tags=facts.tags)
            said = check_version(reported, version.expect, expected, version.source)
            d.reporter.info(f"version: {said}")
            evidence.append(f"version: {said}")
    if smoke.note:
        evidence.append(f"smoke: {smoke.note}")
    if smoke.packs:
        evidence += _smoke_gate(d, host, rid, smoke.packs, target)
    return evidence


def _smoke_gate(
    d: Deps, host: HostOps, rid: str, packs: tuple[Pack, ...], target: GateTarget
) -> list[str]:
    """The smoke packs the release carries (and its readiness audit) against it. smoke.base_url
    is where the public reaches the app: used in place, never for a slot without traffic."""
    settings = d.inventory.smoke
    secrets = (d.health_token,) if d.health_token else ()
    with contextlib.ExitStack() as stack:
        if settings.base_url and target.public_url:
            base = settings.base_url
        else:
            port = stack.enter_context(host.remote.tunnel(target.smoke_port))
            base = f"http://127.0.0.1:{port}"
        client = stack.enter_context(d.http(base, d.inventory.health.probe_timeout))
        result = run_packs(
            list(packs),
            base_url=base,
            client=client,
            concurrency=settings.concurrency,
            clock=d.clock,
            extra_secrets=secrets,
        )
    d.reporter.info(result.summary())
    for check in result.warned:
        d.reporter.warn(f"smoke (warn only): {check.line()}")
    host.record(d.clock.now(), "smoke", rid, None, **result.journal_detail())
    if result.failed_enforced:
        names = ", ".join(c.name for c in result.failed_enforced)
        raise GateFailed(
            "smoke",
            f"{len(result.failed_enforced)} enforced check(s) failed: {names}",
            evidence=result.lines(),
        )
    return list(result.lines())


def _recover(
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
    reason = _reason(exc)
    evidence = exc.evidence if isinstance(exc, ReleasegateError) else ()
    signum = _signum(exc)
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
    with _shielded(r):
        forensics = _forensics(d, failed, target) if early else Forensics((), {})
        evidence = tuple(evidence) + forensics.lines
        if hold is not None:
            return _hold(
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
                forensics = _forensics(d, failed, target)
                evidence += forensics.lines
            return _refuse_crossing(
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
            host.record(
                d.clock.now(),
                op,
                failed,
                ReleaseState.BAD,
                reason=reason,
                evidence=list(evidence)[-20:],
                forensics=forensics.journal,
            )
            return _report_slots(
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
                back_evidence = _revert(d, host, way, fallback, record)
        except Exception as again:
            if not early:
                forensics = _forensics(d, failed, target)
                evidence += forensics.lines
            shared = verdict.same_cause(exc, again)
            again_reason = _reason(again)
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
            commands = _mark(
                d,
                host,
                live=fallback,
                failed=failed,
                reason=(
                    f"{failed} failed its gate ({reason}) and the automatic rollback to "
                    f"{fallback} failed too ({again_reason})."
                    + (
                        f" Both failed the same way ({shared}): probably a shared cause."
                        if shared
                        else ""
                    )
                ),
            )
            if plain:
                r.warn(plain)
            return _report_slots(
                d,
                way,
                Outcome(
                    op=op,
                    result="rollback-failed",
                    exit_code=6,
                    release=failed,
                    live=fallback,
                    message=(
                        f"{failed} failed ({reason}) and the rollback to {fallback} failed too "
                        f"({again_reason}). "
                        + (f"{plain} " if plain else "")
                        + f"`current` points to {fallback} but it is not verified healthy: a "
                        f"human is needed. The host is marked needs-human: deploys, automatic "
                        f"rollbacks and a plain rollback are refused until you run one of the "
                        f"commands below."
                    ),
                    evidence=evidence
                    + (getattr(again, "evidence", ()) or ())
                    + tuple(f"run: {c}" for c in commands),
                ),
            )
        if not early:
            forensics = _forensics(d, failed, target)
            evidence += forensics.lines
        host.record(
            d.clock.now(),
            op,
            failed,
            ReleaseState.BAD,
            reason=reason,
            evidence=list(evidence)[-20:],
            forensics=forensics.journal,
        )
        host.record(
            d.clock.now(), "rollback", fallback, ReleaseState.GOOD, result="restored", after=failed
        )
        paused = _take_out(d, way, failed, signum=signum)
        way.persist(fallback)
    code = 128 + signum if signum else 3
    return _report_slots(
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


def _revert(d: Deps, host: HostOps, way: Strategy, fallback: str, record: Cmd) -> list[str]:
    """Traffic back to `fallback`, recorded first in the same round trip. In place: switch and
    reload, then its gate. Blue-green: it still runs in the other slot (the bake's backup), so
    the front door is switched at once — or, if it does not, it is started in the idle slot and
    gated there first — then verified through the front door."""
    evidence: list[str] = []
    before = way.gates_before_traffic
    if before and way.start(fallback) == "started":
        evidence += _gate(d, host, fallback, way.target(fallback))
    for note in activation_notes(way.send_traffic(fallback, [record], keep_previous=False)):
        d.reporter.warn(note)
    if before:
        return evidence + _watch(d, way, fallback, bake=False)
    return evidence + _gate(d, host, fallback, way.target(fallback))


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


def _watch(d: Deps, way: Strategy, rid: str, *, bake: bool) -> list[str]:
    """Blue-green, after a switch: the front door answers with `rid`, then the bake."""
    if d.dry_run:
        d.reporter.info(
            f"would verify {rid} through the front door"
            + (f", then bake for {d.inventory.strategy.bake.seconds:g}s" if bake else "")
        )
        return []
    return way.watch(rid, bake_window=bake)


def _retire(d: Deps, way: Strategy, rid: str) -> None:
    """After a promotion: the strategy's retire; its failure never undoes the promotion."""
    try:
        way.retire(rid)
    except ReleasegateError as exc:
        d.reporter.warn(
            f"after promoting {rid}: retiring the previous slot failed: {exc.message} (the "
            f"deploy stands; the next deploy or rollback finishes it)"
        )


def _reject(
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
    reason = _reason(exc)
    signum = _signum(exc)
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
    with _shielded(r):
        forensics = Forensics((), {})
        with contextlib.suppress(AssertionError):  # a start that failed leaves no slot
            forensics = _forensics(d, rid, way.target(rid))
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
        host.record(
            d.clock.now(),
            op,
            rid,
            ReleaseState.BAD,
            result="rejected",
            reason=reason,
            evidence=list(evidence)[-20:],
            forensics=forensics.journal,
        )
        if live is None:
            return _report_slots(
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
                verified = _watch(d, way, live, bake=False)
        except Exception as again:
            return _report_slots(
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
                        f"({_reason(again)}): nothing releasegate did changed it — check the "
                        f"app and nginx (`releasegate status {d.inventory.env}`)."
                    ),
                    evidence=evidence + tuple(getattr(again, "evidence", ()) or ()),
                ),
            )
    return _report_slots(
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


def _not_switched(
    d: Deps, host: HostOps, way: Strategy, rid: str, *, op: str, exc: NotSwitched
) -> Outcome:
    """nginx refused the switch and the previous upstream is back: `rid` passed its gate but
    never took traffic. Not its fault, so not bad: it is `ready` again and its slot stopped."""
    with _shielded(d.reporter):
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


def _hold(
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
        host.record(
            d.clock.now(),
            op,
            failed,
            None,
            result="gate-failed",
            reason=reason,
            evidence=list(evidence)[-20:],
            forensics=forensics.journal,
        )
    commands = _mark(
        d,
        host,
        live=failed,
        failed=failed,
        reason=f"{failed} failed its gate ({reason}); it was {why}.",
    )
    return _report(
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


def _mark(
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
    return commands


def _refuse_crossing(
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
        host.record(
            d.clock.now(),
            op,
            failed,
            None,
            result="gate-failed",
            reason=reason,
            evidence=list(evidence)[-20:],
            forensics=forensics.journal,
            rollback_refused=crossing.journal("refused"),
        )
    refusal = migrations.refusal(crossing, what="the automatic rollback")
    choices = migrations.choices(d.inventory, crossing, root=str(host.layout.root), live=failed)
    why = f"{failed} failed its gate ({reason}); {refusal}"
    commands = _mark(d, host, live=failed, failed=failed, reason=why, commands=choices)
    outcome = migrations.refused_automatic(op, failed, reason, refusal, evidence, commands)
    return _report_slots(d, way, outcome)


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
    never undoes the promotion (and a lock not released here is released by _locked)."""
    now = d.clock.now()
    good = host.journal_cmd(now, op, rid, ReleaseState.GOOD, result="promoted")
    steps = [good, *(verdicts or [])]
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
    except ReleasegateError as exc:
        failure = getattr(exc, "failure", None)
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


@dataclass(frozen=True)
class Forensics:
    lines: tuple[str, ...]  # for the output (evidence)
    journal: dict[str, object]  # for the bad release's journal entry


def _forensics(d: Deps, failed: str, target: GateTarget, log_lines: int = 40) -> Forensics:
    """What the failing release left behind: its last log lines and the process state,
    captured before anything restarts it. Secrets are masked first."""
    if d.dry_run:
        return Forensics((), {})
    try:
        logs, state = target.forensics(log_lines)
    except ReleasegateError as exc:
        return Forensics((f"forensics unavailable: {exc.message}",), {"error": exc.message})
    logs, state = d.redact(logs), d.redact(state)
    shown = [line for line in logs.splitlines() if line.strip()][-15:]
    return Forensics(
        (f"process: {state}", *(f"log: {line}" for line in shown)),
        {"process": state, "logs": logs[-4000:]},
    )


# ---------------------------------------------------------------------------- status


def status(d: Deps) -> HostStatus:
    host = host_ops(d)
    state = host.read_state()
    slots = strategy_for(d, host, state).views() if state.root_exists else ()
    live = next((view for view in slots if view.role == "live"), None)
    snap = (live.process if live else None) if slots else None
    if not slots and state.root_exists:
        snap = host.snapshot()
    rels = sorted(
        state.release_dirs | {p.removesuffix(".partial") for p in state.partial_dirs}, reverse=True
    )
    return HostStatus(
        host=host.label,
        current=state.current,
        last_good=state.last_good(),
        needs_human=state.needs_human(),
        process=snap,
        lock_holder=state.lock_owner,
        slots=slots,
        schema=migrations.database_schema(state.journal),
        releases=tuple(
            (
                rid,
                state.state_of(rid)
                or ("partial" if f"{rid}.partial" in state.partial_dirs else "unknown"),
            )
            for rid in rels
        ),
    )


# ---------------------------------------------------------------------------- helpers


def _report_slots(d: Deps, way: Strategy, outcome: Outcome) -> Outcome:
    return _report(d, outcome, way)


def _report(d: Deps, outcome: Outcome, way: Strategy | None = None) -> Outcome:
    """Every operation ends here: the reporter shows the outcome, the caller returns it.
    With the strategy: the outcome says what each slot runs afterwards (blue-green)."""
    if way is not None and not d.dry_run:
        outcome = replace(outcome, slots=way.roles())
    d.reporter.outcome(outcome)
    return outcome


@contextlib.contextmanager
def _locked(d: Deps, host: HostOps, op: str) -> Iterator[None]:
    with d.reporter.stage(f"connect {host.label} and lock"):
        take_lock(d, host, op)
    # The lease is renewed in the background while the operation runs (lock.LeaseKeeper).
    keeper = None if d.dry_run else host.keep_lease()
    try:
        yield
    finally:
        with _shielded(d.reporter):
            if keeper is not None:
                keeper.stop()
            try:
                if not host.release_lock():
                    d.reporter.warn(
                        f"the lock {host.layout.lock} on {host.label} was no longer ours when "
                        f"this run ended: our lease lapsed"
                        + (f" ({keeper.lost})" if keeper is not None and keeper.lost else "")
                        + " and another run broke it"
                    )
            except ReleasegateError as exc:
                d.reporter.error(
                    f"could not release the lock {host.layout.lock} on {host.label}: "
                    f"{exc.message}. Remove it once you have checked the host "
                    f"(`releasegate status {d.inventory.env}`)."
                )


locked = _locked  # public: deploy.fleet holds every host's lock with it


def take_lock(d: Deps, host: HostOps, op: str, message: str = "") -> None:
    """Take the host lock; wait up to d.lock_wait for an automated holder (never for a manual
    lock). Break a holder's lock — journaled — once its lease has ended (it stopped renewing:
    killed, or its machine is gone), or at once when its process is known dead (same machine,
    pid gone). A live lease is never broken."""
    if d.dry_run:
        held = host.read_state().lock_raw
        if held:
            holder = lock.assess(held, d.clock.now(), d.machine)
            if not (holder.dead or holder.expired) and (holder.manual or d.lock_wait <= 0):
                # what the real run would do, with its exit code (docs/exit-codes.md)
                raise LockHeld(
                    f"dry run: {host.layout.lock} on {host.label} is held by "
                    f"{holder.describe()}, so a real {op} would stop here with exit 4; "
                    f"nothing was changed."
                    + (
                        f" Ask its holder, or `releasegate unlock {d.inventory.env}`."
                        if holder.manual
                        else " Retry later, or wait for it with --lock-wait SECONDS."
                    )
                )
            d.reporter.warn(
                f"the lock is held by {holder.describe()}: a real {op} would wait "
                f"(--lock-wait) or break it once its holder is gone"
            )
    deadline = d.clock.monotonic() + d.lock_wait
    tried_to_break: set[str] = set()
    while True:
        raw = host.try_lock(op, d.clock.now(), message)
        if raw is None:
            return
        holder = lock.assess(raw, d.clock.now(), d.machine)
        if (holder.dead or holder.expired) and holder.key not in tried_to_break:
            tried_to_break.add(holder.key)
            if host.break_lock(holder, force=holder.dead):
                lease = holder.lease
                reason = (
                    "owner process is gone"
                    if holder.dead or lease is None
                    else f"lease expired: no renewal for {lease.age_s}s (lease {lease.ttl_s}s)"
                )
                host.record(
                    d.clock.now(), "lock-broken", None, None, holder=holder.owner, reason=reason
                )
                d.reporter.warn(f"broke a stale lock: {holder.describe()}")
            continue
        remaining = deadline - d.clock.monotonic()
        if holder.manual or remaining <= 0:
            hint = (
                "It is a manual lock: ask its holder, or `releasegate unlock "
                f"{d.inventory.env}` (its holder) / `--force --reason …`."
                if holder.manual
                else "Wait for it (--lock-wait SECONDS): a holder that stopped renewing its "
                "lease loses the lock when the lease ends. If you are sure it is gone, "
                f"`releasegate unlock {d.inventory.env} --force --reason …` after checking "
                f"`releasegate status {d.inventory.env}`."
            )
            raise LockHeld(
                f"{host.layout.lock} on {host.label} is held by {holder.describe()}; nothing "
                f"was changed. {hint}"
            )
        d.reporter.info(f"waiting for the lock held by {holder.describe()}")
        left = holder.lease.left_s if holder.lease else None
        # wake up right after the lease ends rather than up to 2 s later
        pause = min(2.0, remaining, max(0.2, left + 0.2) if left is not None else 2.0)
        d.clock.sleep(pause)


def lock_manually(d: Deps, message: str) -> Outcome:
    host = host_ops(d)
    host.prepare()
    take_lock(d, host, lock.MANUAL, message)
    host.record(d.clock.now(), "lock", None, None, message=message)
    host.lock_token = None  # stays held after we exit: that is the point
    return _report(
        d,
        Outcome(
            op="lock",
            result="locked",
            exit_code=0,
            release=None,
            live=None,
            message=f"deploys to {host.label} are blocked: {message!r}",
        ),
    )


def unlock(d: Deps, *, force: bool, reason: str | None) -> Outcome:
    host = host_ops(d)
    state = host.read_state()
    if state.lock_raw is None:
        return _report(
            d,
            Outcome(
                op="unlock",
                result="not-locked",
                exit_code=0,
                release=None,
                live=state.current,
                message=f"{host.layout.lock} is not held",
            ),
        )
    holder = lock.assess(state.lock_raw, d.clock.now(), d.machine)
    own_manual = holder.manual and holder.owner.get("actor") == d.actor
    if not own_manual and not force:
        raise LockHeld(
            f"{host.layout.lock} is held by {holder.describe()}; only its holder unlocks it. "
            f"If you are sure it is abandoned: `releasegate unlock {d.inventory.env} --force "
            f'--reason "…"` (the reason goes in the journal).'
        )
    if force and not own_manual and not reason:
        raise ConfigError('--force needs --reason "…": it is recorded in the journal')
    if not host.break_lock(holder, force=True):
        raise LockHeld(f"{host.layout.lock} changed hands while unlocking; look again")
    host.record(
        d.clock.now(),
        "unlock",
        None,
        None,
        holder=holder.owner,
        forced=force and not own_manual,
        reason=reason or "",
    )
    return _report(
        d,
        Outcome(
            op="unlock",
            result="unlocked",
            exit_code=0,
            release=None,
            live=state.current,
            message=f"released the lock of {holder.describe()}",
        ),
    )


@contextlib.contextmanager
def _shielded(reporter: Reporter) -> Iterator[None]:
    """While the host is being made safe, a second Ctrl-C/SIGTERM is acknowledged, not obeyed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def acknowledge(signum: int, _frame: object) -> None:
        reporter.warn(
            f"{signal.Signals(signum).name} received while making the host safe; "
            f"finishing that first"
        )

    old_int = signal.signal(signal.SIGINT, acknowledge)
    old_term = signal.signal(signal.SIGTERM, acknowledge)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def _raise_pending_signal(d: Deps) -> None:
    if d.signals:
        raise Signalled(d.signals.pop())


def _signum(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    if isinstance(exc, Signalled):
        return exc.signum
    return 0


def _reason(exc: BaseException) -> str:
    signum = _signum(exc)
    if signum:
        return f"interrupted by {signal.Signals(signum).name}"
    if isinstance(exc, ReleasegateError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
