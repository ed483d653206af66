"""The process-manager seam: PM2 and systemd behind this protocol.

Every method is a pure builder (or parser); HostOps runs the commands on the Remote.
"""

from __future__ import annotations

from typing import Protocol

from deploy.commands import Cmd
from deploy.model import ProcessSnapshot
from deploy.slots import Slot


class ProcessManager(Protocol):
    @property
    def name(self) -> str: ...

    def config_files(self, release_id: str) -> dict[str, str]:
        """Files to write into the release (path relative to the release dir -> content)."""
        ...

    def activate(self, release_id: str) -> list[Cmd]:
        """Commands that make the processes run the release `current` points to."""
        ...

    def snapshot(self) -> Cmd: ...

    def parse_snapshot(self, stdout: str) -> ProcessSnapshot: ...

    def stop(self) -> Cmd: ...

    def persist(self) -> Cmd | None:
        """Make the running set survive a reboot of the host, if the manager needs it."""
        ...

    # ---------------------------------------------------------------- forensics
    # For the moment a gate fails: run both with check=False (a dead app is the normal case
    # here), redact, show and journal the text. Neither prints environment values.

    def logs(self, lines: int) -> Cmd:
        """The app's own last `lines` log lines (stdout and stderr) as text on stdout."""
        ...

    def describe(self) -> Cmd:
        """The process state as the manager sees it; feed stdout to `parse_describe`."""
        ...

    def parse_describe(self, stdout: str) -> str:
        """Human-readable, secret-free text from `describe`'s stdout."""
        ...

    # ---------------------------------------------------------------- blue/green slots
    # (deploy/strategies/blue_green.py; host files in deploy/slots.py and /work/BG-INTERFACE.md)
    # Each slot runs one release directory of its own, never through `current`, with the env
    # of ITS release followed by the slot's env file (PORT = the slot's port wins).

    def start_slot(self, slot: Slot, release_id: str) -> list[Cmd]:
        """A fresh start of `release_id` in `slot` — never a reload: whatever the slot ran is
        stopped first. Runs in the same batch right after `commands.link_slot` pointed
        `<root>/.releasegate/slots/<slot>` at the release and wrote `slots/<slot>.env`. The
        processes' cwd must be the release directory itself (the identity gate compares
        /proc/<pid>/cwd with it); their env the release's snapshot, then the slot env file."""
        ...

    def stop_slot(self, slot: Slot) -> Cmd:
        """Stop the slot's processes (gracefully, within kill_timeout) and make sure they do
        not come back at boot. Succeeds when nothing runs there. (The flow then removes the
        slot link with `commands.unlink_slot`.)"""
        ...

    def slot_snapshot(self, slot: Slot) -> Cmd:
        """The slot's processes as the manager sees them; feed stdout to parse_slot_snapshot."""
        ...

    def parse_slot_snapshot(self, slot: Slot, stdout: str) -> ProcessSnapshot:
        """Same words as parse_snapshot: `missing` when the slot runs nothing."""
        ...

    def persist_slot(self, slot: Slot) -> Cmd | None:
        """Make the slot's processes start again at boot (the live slot, a warm one)."""
        ...

    def slot_logs(self, slot: Slot, lines: int) -> Cmd:
        """The slot's own last `lines` log lines (forensics of a failed gate or bake)."""
        ...

    def slot_describe(self, slot: Slot) -> Cmd: ...

    def parse_slot_describe(self, slot: Slot, stdout: str) -> str: ...
