"""The process-manager seam: PM2 today, systemd next, both behind this protocol."""

from __future__ import annotations

from typing import Protocol

from deploy.commands import Cmd
from deploy.model import ProcessSnapshot


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
