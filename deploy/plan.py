"""--dry-run: a Remote that reads the host but changes nothing, and lists what would run.

Read-only commands (the state read, the process list) run for real, so the plan is computed
from the host as it is; every other command is shown (masked) and answered with success.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from deploy.commands import Cmd
from deploy.remote import Remote, Result
from deploy.report import Reporter

# The preflight probe reads; its optional migration check is the user's own read-only command.
READ_ONLY = frozenset(
    {"state.read", "pm2.jlist", "systemd.show", "process.identity", "preflight.probe"}
)


class PlanRemote:
    def __init__(self, real: Remote, reporter: Reporter) -> None:
        self._real = real
        self._reporter = reporter
        self.host_label = real.host_label
        self.planned: list[str] = []

    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> Result:
        if cmd.name in READ_ONLY:
            return self._real.run(cmd, check=check, timeout=timeout, stdin=stdin)
        for step in cmd.steps or (cmd,):
            self.planned.append(step.display)
            self._reporter.info(f"would run: {step.display}")
        return Result(stdout="", stderr="", exit_code=0)

    def put(self, local: Path, remote: PurePosixPath) -> None:
        size = local.stat().st_size if local.exists() else 0
        self.planned.append(f"upload {local.name} -> {remote}")
        self._reporter.info(f"would upload {local.name} ({size / 1024:.0f} KiB) to {remote}")

    @contextlib.contextmanager
    def tunnel(self, port: int) -> Iterator[int]:
        yield 0

    def close(self) -> None:
        self._real.close()
