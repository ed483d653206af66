"""What an operation works with: its dependencies (Deps), the host and strategy built from
them, and the reporter every outcome ends at."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import httpx

from deploy import migrations
from deploy.clock import Clock
from deploy.host import HostOps
from deploy.interrupts import raise_pending_signal
from deploy.inventory import Inventory
from deploy.journal import HostState
from deploy.model import Layout, Outcome
from deploy.preflight import Check
from deploy.process import manager_for
from deploy.redact import Redactor
from deploy.remote import Remote
from deploy.report import Reporter
from deploy.strategies.base import Strategy
from deploy.strategies.blue_green import BlueGreen
from deploy.strategies.in_place import InPlace
from smoke.model import Pack

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


def strategy_for(d: Deps, host: HostOps, state: HostState | None) -> Strategy:
    """The inventory's strategy, over the host state read at the lock (None: not read)."""
    if d.inventory.strategy.kind == "blue-green":
        return BlueGreen(
            host=host,
            state=state or HostState(False, None, frozenset(), frozenset(), frozenset(), None),
            http=d.http,
            clock=d.clock,
            reporter=d.reporter,
            headers=health_headers(d),
            check_signal=lambda: raise_pending_signal(d),
        )
    return InPlace(host)


def health_headers(d: Deps) -> dict[str, str]:
    health = d.inventory.health
    return {health.token_header: d.health_token} if d.health_token else {}


def report_slots(d: Deps, way: Strategy, outcome: Outcome) -> Outcome:
    return report(d, outcome, way)


def report(d: Deps, outcome: Outcome, way: Strategy | None = None) -> Outcome:
    """Every operation ends here: the reporter shows the outcome, the caller returns it.
    With the strategy: the outcome says what each slot runs afterwards (blue-green)."""
    if way is not None and not d.dry_run:
        outcome = replace(outcome, slots=way.roles())
    d.reporter.outcome(outcome)
    return outcome
