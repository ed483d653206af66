"""Gating a release: readiness, stability, identity and version, then the smoke packs it
carries (loaded before the point of no return); blue-green's watch through the front door."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from deploy import artifact as artifacts
from deploy import release_packs
from deploy.deps import Deps, GatePacks, health_headers
from deploy.errors import ConfigError, ConnectionLost, GateFailed, ReleasegateError
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
from deploy.interrupts import raise_pending_signal
from deploy.journal import HostState
from deploy.model import SMOKE_BUNDLE, IdentityFacts, ProcessSnapshot
from deploy.release_packs import Bundle
from deploy.strategies.base import GateTarget, Strategy
from smoke.model import Pack
from smoke.pack import PackError
from smoke.runner import run_packs


def collect_packs(d: Deps, source: artifacts.Source, sha: str) -> tuple[Bundle, tuple[Pack, ...]]:
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


def load_stored_packs(d: Deps, state: HostState, releases: Iterable[str | None]) -> None:
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


def gate_through(d: Deps, host: HostOps, rid: str, way: Strategy) -> list[str]:
    """The gate of a release that serves (in place). A link cut under it says nothing about
    the release: when SSH comes back, the gate runs again from its start, once."""
    try:
        return gate_release(d, host, rid, way.target(rid))
    except ConnectionLost as lost:
        try:
            host.read_state()  # reconnects
        except ReleasegateError:
            raise lost from None
        d.reporter.warn(f"{lost.message}; reconnected, gating {rid} again from the start")
        return gate_release(d, host, rid, way.target(rid))


def gate_release(d: Deps, host: HostOps, rid: str, target: GateTarget) -> list[str]:
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

    headers = health_headers(d)
    with (
        host.remote.tunnel(target.port) as port,
        d.http(f"http://127.0.0.1:{port}", health.probe_timeout) as client,
    ):

        def probe() -> tuple[str, str]:
            raise_pending_signal(d)
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
        identity = check_identity(
            snap, facts, host.layout.release(rid), through_current=target.through_current
        )
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


def watch(d: Deps, way: Strategy, rid: str, *, bake: bool) -> list[str]:
    """Blue-green, after a switch: the front door answers with `rid`, then the bake."""
    if d.dry_run:
        d.reporter.info(
            f"would verify {rid} through the front door"
            + (f", then bake for {d.inventory.strategy.bake.seconds:g}s" if bake else "")
        )
        return []
    return way.watch(rid, bake_window=bake)
