"""Blue/green slots as plain values: which slot runs which release, and what role it plays.

A blue/green app has two slots, `blue` and `green`, each on its own loopback port, each running
one release directory of its own (never through `current`). On the host a slot is:

    <root>/.releasegate/slots/<slot>            symlink -> ../../releases/<id>: the release the
                                                slot runs (absent: the slot is empty)
    <root>/.releasegate/slots/<slot>.env        PORT=<slot port>, RELEASEGATE_SLOT=<slot>; read
                                                after the release's own env snapshot, so the
                                                slot's port wins
    <root>/.releasegate/slots/<slot>.pm2.config.js   PM2 only: the slot's app, rendered at start

and its processes (PM2: the app `<app>-<slot>`; systemd: the unit `<app>@<slot>.service`).

The role of a slot is decided from facts, never remembered on its own: the nginx upstream file
says which slot is live (and which is the backup during a bake); a slot that runs but takes no
traffic is `paused` when the journal's last `slot` record for it says so (a failed release kept
for inspection), `warm` when its release is good or rolled-back (keep-warm), else `stray` (left
by a run that was killed before it could stop it). No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from deploy.model import JournalEntry, ProcessSnapshot, ReleaseState

SlotName = Literal["blue", "green"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("blue", "green")

# The journal's record of a slot's role change: op SLOT, release, state null,
# detail {"slot": <name>, "port": <port>, "role": <one of SLOT_EVENTS>, …}.
SLOT = "slot"
SlotEvent = Literal["started", "live", "backup", "warm", "paused", "stopped"]

Role = Literal["live", "backup", "warm", "paused", "stray", "idle"]


@dataclass(frozen=True)
class Slot:
    name: SlotName
    port: int

    def other(self, slots: Slots) -> Slot:
        return slots.green if self.name == "blue" else slots.blue

    def describe(self) -> str:
        return f"{self.name} (127.0.0.1:{self.port})"


@dataclass(frozen=True)
class Slots:
    blue: Slot
    green: Slot

    @classmethod
    def of(cls, blue: int, green: int) -> Slots:
        return cls(Slot("blue", blue), Slot("green", green))

    def __iter__(self) -> Iterator[Slot]:
        return iter((self.blue, self.green))

    def named(self, name: str) -> Slot:
        if name == "blue":
            return self.blue
        if name == "green":
            return self.green
        raise ValueError(f"not a slot: {name!r}")

    def by_port(self, port: int | None) -> Slot | None:
        return next((s for s in self if s.port == port), None)


@dataclass(frozen=True)
class SlotView:
    """One slot as the host shows it now."""

    slot: Slot
    release: str | None  # what the slot link names (None: empty)
    process: ProcessSnapshot | None  # None: not read
    role: Role

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def line(self) -> str:
        proc = self.process
        what = self.release or "(empty)"
        state = f"{proc.status}, pids {list(proc.pids)}, restarts {proc.restarts}" if proc else "?"
        return f"{self.slot.name:<5} :{self.slot.port:<5} {self.role:<7} {what}  [{state}]"


def last_slot_event(journal: Sequence[JournalEntry], slot: SlotName) -> JournalEntry | None:
    """The newest `slot` record of that slot."""
    for item in reversed(journal):
        if item.op == SLOT and item.detail.get("slot") == slot:
            return item
    return None


def role_of(
    slot: Slot,
    *,
    release: str | None,
    process: ProcessSnapshot | None,
    live_port: int | None,
    backup_port: int | None,
    journal: Sequence[JournalEntry],
    states: Mapping[str, str | None],
) -> Role:
    """What a slot is for, from the upstream file, its process and the journal."""
    if slot.port == live_port:
        return "live"
    if slot.port == backup_port:
        return "backup"
    # not read (None): a linked slot is taken to run — the link goes when the slot is stopped
    running = process is None or process.status not in ("missing", "stopped")
    if release is None or not running:
        return "idle"
    event = last_slot_event(journal, slot.name)
    if event is not None and event.release == release and event.detail.get("role") == "paused":
        return "paused"
    if states.get(release) in (ReleaseState.GOOD, ReleaseState.ROLLED_BACK):
        return "warm"
    return "stray"


def views(
    slots: Slots,
    *,
    links: Mapping[str, str | None],
    processes: Mapping[str, ProcessSnapshot | None],
    live_port: int | None,
    backup_port: int | None,
    journal: Sequence[JournalEntry],
    states: Mapping[str, str | None],
) -> tuple[SlotView, SlotView]:
    out = []
    for slot in slots:
        release = links.get(slot.name)
        process = processes.get(slot.name)
        out.append(
            SlotView(
                slot=slot,
                release=release,
                process=process,
                role=role_of(
                    slot,
                    release=release,
                    process=process,
                    live_port=live_port,
                    backup_port=backup_port,
                    journal=journal,
                    states=states,
                ),
            )
        )
    return out[0], out[1]
