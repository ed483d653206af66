"""In place: switch `current` and reload the process manager, then gate (the first strategy).

The release takes traffic the moment the reload returns, so the gate runs after the point of
no return and a failed gate is undone by activating the previous release the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deploy import commands
from deploy.commands import Cmd
from deploy.host import HostOps, new_token
from deploy.model import ProcessSnapshot, SlotRole
from deploy.preflight import Check
from deploy.slots import SlotView
from deploy.strategies.base import GateTarget, Start


@dataclass
class InPlace:
    host: HostOps
    name: str = "in-place"
    gates_before_traffic: bool = False
    # the process state read at the end of the last activation: (release, snapshot)
    after_activation: tuple[str, ProcessSnapshot] | None = field(default=None, repr=False)

    def start(self, rid: str) -> Start:
        return "none"  # nothing runs before the switch: the reload starts it

    def target(self, rid: str) -> GateTarget:
        host, inv = self.host, self.host.inventory
        return GateTarget(
            port=inv.health_port,
            smoke_port=inv.process.port,
            label=f"port {inv.health_port}",
            snapshot=lambda timeout: host.snapshot(timeout=timeout),
            forensics=host.forensics,
            closing=lambda timeout, pids: host.snapshot_with_identity(rid, pids, timeout),
            first=self._first_snapshot(rid),
        )

    def _first_snapshot(self, rid: str) -> ProcessSnapshot | None:
        taken, self.after_activation = self.after_activation, None
        return taken[1] if taken is not None and taken[0] == rid else None

    def reject(self, rid: str, *, pause: bool) -> None:
        raise AssertionError("in place, nothing runs before the switch")

    def send_traffic(self, rid: str, records: list[Cmd], *, keep_previous: bool) -> str:
        """One round trip: the flow's records, switch `current`, reload — and the process
        state right after, which the gate starts from (one round trip less)."""
        host = self.host
        steps = records + host.activate_steps(rid)
        marker = f"@@processes-{new_token()}"
        read = commands.quiet_read(host.manager.snapshot(), marker, host.inventory.health.deadline)
        if read is not None:
            steps.append(read)
        stdout = host.run_batch("activate", steps, f"activate {rid}").stdout
        notes, found, processes = stdout.partition(f"{marker}\n")
        self.after_activation = (rid, host.manager.parse_snapshot(processes)) if found else None
        return notes

    def take_out(self, rid: str, *, pause: bool) -> None:
        """The reload of the previous release replaced its processes already."""

    def stop(self, rid: str) -> None:
        self.host.stop_app()

    def retire(self, rid: str) -> None:
        """Nothing else runs."""

    def persist(self, rid: str) -> None:
        self.host.persist()

    def watch(self, rid: str, *, bake_window: bool) -> list[str]:
        raise AssertionError("in place, the gate runs after the switch")

    def settle(self) -> list[str]:
        return []  # `current` alone says what runs

    def views(self) -> tuple[SlotView, ...]:
        return ()

    def roles(self) -> tuple[SlotRole, ...]:
        return ()

    def preflight_probe(self) -> list[Cmd]:
        return []

    def preflight_checks(self, stdout: str) -> list[Check]:
        return []
