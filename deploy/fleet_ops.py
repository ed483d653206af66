"""Composition for an inventory with many hosts: what deploy.operations does for one host
(the real seams: SSH, clock, reporter), once per host, around deploy.fleet."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from deploy import fleet
from deploy.clock import SystemClock
from deploy.deps import Deps, GatePacks
from deploy.inventory import Inventory
from deploy.model import Outcome
from deploy.plan import PlanRemote
from deploy.preflight import Check
from deploy.redact import Redactor
from deploy.remote import Remote
from deploy.report import Reporter

FleetBody = Callable[[fleet.Fleet], Outcome | int]
HostBody = Callable[[Deps], Outcome | int]
# operations whose single-host body, run host by host, is the many-host operation; the
# read-only ones also say when the hosts run different releases
PER_HOST = ("setup", "unlock", "resolve", "releases", "history")
READ_ONLY = ("releases", "history")


def execute(
    op: str,
    inv: Inventory,
    *,
    dry_run: bool,
    lock_wait: float,
    clean_install: bool,
    reporter: Reporter,
    redact: Redactor,
    health_token: str | None,
    local_checks: tuple[Check, ...],
    env_file: str | None,
    host_body: HostBody,
    fleet_body: FleetBody | None,
) -> Outcome | int:
    from deploy import operations  # its seams (open_remote, actor, machine): no import cycle

    gate_packs: dict[str, GatePacks] = {}  # a release's packs are the same on every host

    def open_one(part: Inventory, rep: Reporter) -> Remote:
        return operations.open_remote(part, redact, rep)

    with tempfile.TemporaryDirectory(prefix="releasegate-") as work:

        def make_deps(part: Inventory, remote: Remote, rep: Reporter, index: int) -> Deps:
            return Deps(
                inventory=part,
                remote=PlanRemote(remote, rep) if dry_run else remote,
                reporter=rep,
                clock=SystemClock(),
                actor=operations.actor(),
                machine=operations.machine(),
                workdir=Path(work) / part.host.name,
                health_token=health_token,
                lock_wait=lock_wait,
                dry_run=dry_run,
                clean_install=clean_install,
                signals=[],  # fleet.each hands a signal to every host's flow
                redact=redact,
                local_checks=local_checks if index == 0 else (),  # made once, shown once
                env_file=env_file,
                environ=os.environ,
                gate_packs=gate_packs,
            )

        for host in inv.hosts:
            (Path(work) / host.name).mkdir()
        partial = op in ("status", *READ_ONLY)  # they show what they can reach
        with fleet.opened(inv, reporter, open_one, make_deps, partial=partial) as fl:
            if fleet_body is not None:
                return fleet_body(fl)
            if op not in PER_HOST:
                raise AssertionError(f"{op} has no many-host form")
            code = 5 if fl.unreachable else 0  # a read-only view that misses hosts
            for member in fl.members:
                result = host_body(member.deps)
                code = max(code, result if isinstance(result, int) else result.exit_code)
            if op in READ_ONLY:
                fleet.warn_drift(fl)
            return code
