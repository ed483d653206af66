"""In place: switch `current` and reload the process manager, then gate (the first strategy).

The release takes traffic the moment the reload returns, so the gate runs after the point of
no return and a failed gate is undone by activating the previous release the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deploy import commands
from deploy.commands import Cmd
from deploy.errors import CommandFailure, RemoteCommandError
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
    after_activation: tuple[str, ProcessSnapshot | RemoteCommandError] | None = field(
        default=None, repr=False
    )

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
            through_current=True,
            port_note=lambda: host.port_note(inv.process.port),
        )

    def _first_snapshot(self, rid: str) -> Callable[[float | None], ProcessSnapshot] | None:
        taken, self.after_activation = self.after_activation, None
        if taken is None or taken[0] != rid:
            return None
        read = taken[1]

        def first(_timeout: float | None) -> ProcessSnapshot:
            if isinstance(read, RemoteCommandError):
                raise read
            return read

        return first

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
        notes, found, rest = stdout.partition(f"{marker} ")
        self.after_activation = None
        if read is not None and found:
            code, _, processes = rest.partition("\n")
            self.after_activation = (rid, self._judge(read, int(code or 1), processes))
        return notes

    def _judge(self, read: Cmd, code: int, stdout: str) -> ProcessSnapshot | RemoteCommandError:
        """As HostOps.snapshot judges its own read: stopped at the deadline, or the state."""
        if code in commands.TIMED_OUT:
            return RemoteCommandError(
                CommandFailure(
                    display=read.display,
                    exit_code=code,
                    stderr_tail=f"no answer within {read.limit:g}s (bounded by the gate's "
                    f"deadline)",
                    host=self.host.remote.host_label,
                ),
                what="reading the process state",
            )
        return self.host.manager.parse_snapshot(stdout)

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
