"""The strategy seam: how a release starts, takes traffic, is reverted and retired.

deploy/flow.py keeps the order, the point of no return and the journal; a strategy answers:

    start(rid)           run rid without giving it traffic (blue-green: a fresh start in the
                         idle slot); True when something was started that must be gated first
    target(rid)          where the gate reaches rid: a port on the host and its processes
    reject(rid, pause)   before traffic: take a release that failed its gate out (or leave it
                         paused in its slot); nothing live changes
    send_traffic(rid)    THE POINT OF NO RETURN: rid becomes live (in-place: switch `current`
                         and reload; blue-green: switch nginx's upstream, the previous slot kept
                         as backup, and `current`), in one round trip with the flow's records
    watch(rid)           after the switch (blue-green only): verify through the front door,
                         then the bake window
    take_out(rid, pause) after a revert: stop what runs rid (or leave it paused, no traffic)
    retire(rid)          after promotion: what happens to the previous release (blue-green:
                         drop the backup; stop the old slot, or keep it warm)
    settle()             after a killed run, before anything else: slots, front door and
                         `current` made to agree (blue-green)

Two strategies: deploy/strategies/in_place.py and deploy/strategies/blue_green.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from deploy.commands import Cmd
from deploy.model import IdentityFacts, ProcessSnapshot, SlotRole
from deploy.preflight import Check
from deploy.slots import SlotView

# What `start` did: started afresh (gate it before traffic); already running without traffic
# and verified before (warm, or the backup of a bake); already live; nothing (in place).
Start = Literal["started", "warm", "live", "none"]


@dataclass(frozen=True)
class GateTarget:
    """Where the gate reaches a release on the host."""

    port: int  # readiness (and version) probes, through the SSH tunnel
    smoke_port: int  # the smoke packs, through the SSH tunnel
    label: str  # "port 3000" / "slot green (127.0.0.1:3002)"
    snapshot: Callable[[float | None], ProcessSnapshot]  # the manager's view (timeout)
    forensics: Callable[[int], tuple[str, str]]  # (last log lines, process state)
    public_url: bool = True  # smoke.base_url applies (in place); a slot has no public URL
    # `current` must name the gated release (in place: it serves through current)
    through_current: bool = False
    # the gate's closing read: the snapshot and the identity facts of the given pids in one
    # round trip (timeout, pids); None: read them one after the other
    closing: (
        Callable[[float | None, tuple[int, ...]], tuple[ProcessSnapshot, IdentityFacts | None]]
        | None
    ) = None
    # the gate's first process read when it was made at the end of the activation (in place):
    # the state read then, or the error of that read (timeout)
    first: Callable[[float | None], ProcessSnapshot] | None = None
    # forensics: what else holds the port (a daemon a release left behind), as a sentence
    port_note: Callable[[], str] | None = None


class Strategy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def gates_before_traffic(self) -> bool:
        """True: the gate runs on the new release's own port before it takes traffic."""
        ...

    def start(self, rid: str) -> Start: ...

    def target(self, rid: str) -> GateTarget: ...

    def reject(self, rid: str, *, pause: bool) -> None: ...

    def send_traffic(self, rid: str, records: list[Cmd], *, keep_previous: bool) -> str:
        """Returns the activation's stdout (process-manager notes)."""
        ...

    def take_out(self, rid: str, *, pause: bool) -> None: ...

    def stop(self, rid: str) -> None:
        """Nothing to go back to (a first deploy failed): stop what runs rid."""
        ...

    def retire(self, rid: str) -> None: ...

    def persist(self, rid: str) -> None:
        """What runs rid comes back after a reboot of the host."""
        ...

    def watch(self, rid: str, *, bake_window: bool) -> list[str]:
        """Blue-green: after a switch, the front door and (with bake_window) the bake."""
        ...

    def settle(self) -> list[str]:
        """After a killed run, before anything else: make slots, front door and `current`
        agree; returns what was done."""
        ...

    def views(self) -> tuple[SlotView, ...]:
        """Each slot as the host shows it (none in place)."""
        ...

    def roles(self) -> tuple[SlotRole, ...]:
        """The slots that run something, as this run left them (for the outcome)."""
        ...

    def preflight_probe(self) -> list[Cmd]:
        """Read-only steps added to the preflight's one round trip."""
        ...

    def preflight_checks(self, stdout: str) -> list[Check]:
        """The strategy's preflight checks from that round trip's output."""
        ...
