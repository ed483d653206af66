"""The process-manager seam: PM2 and systemd behind this protocol.

Every method is a pure builder (or parser); HostOps runs the commands on the Remote.
"""

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
