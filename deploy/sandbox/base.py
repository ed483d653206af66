"""The sandbox seam: what every provider is given (a spec), what it hands back (where to
reach the running sandbox), and what every sandbox installs the same way (its sudo allowlist).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deploy import proxy
from deploy.process.systemd import sudoers_lines

__all__ = [
    "SYSTEMD_EXAMPLE_APP",
    "SYSTEMD_EXAMPLE_ROOT",
    "Log",
    "SandboxError",
    "SandboxInfo",
    "SandboxSpec",
    "sudoers_text",
]

Log = Callable[[str], None]

# The systemd example (inventories/local-systemd.yml, system scope). The deploy user's sudo is
# exactly the allowlist docs/systemd.md tells an operator to install for it, nothing more.
SYSTEMD_EXAMPLE_APP = "sampleapp-sd"
SYSTEMD_EXAMPLE_ROOT = PurePosixPath("/srv/sampleapp-sd")


class SandboxError(Exception):
    """The sandbox could not be created, inspected or removed; the message says how to fix it."""


@dataclass(frozen=True)
class SandboxSpec:
    name: str = "rg-local"
    index: int = 5  # 1..254 -> 10.231.<index>.0/24, host side .1, sandbox .2
    user: str = "deploy"
    state_root: Path = Path("/var/lib/releasegate/sandbox")


@dataclass(frozen=True)
class SandboxInfo:
    name: str
    address: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path
    pid1: int
    state_dir: Path

    def ssh_argv(self, *command: str, user: str | None = None) -> list[str]:
        """`ssh` argv that trusts only this sandbox's pinned host key and ignores ssh configs.

        Like plain ssh, the remote command words are joined with spaces and run by the remote
        login shell, so quote them for that shell.
        """
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.identity_file),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(self.port),
            f"{user or self.user}@{self.address}",
            *(["--", *command] if command else []),
        ]


def sudoers_text(user: str) -> str:
    """/etc/sudoers.d/releasegate-sandbox: the systemd example's allowlist for `user`, and
    the nginx allowlist of blue/green deploys."""
    lines = sudoers_lines(user=user, app=SYSTEMD_EXAMPLE_APP, root=SYSTEMD_EXAMPLE_ROOT)
    header = (
        "# releasegate sandbox: exactly what inventories/local-systemd.yml needs as root "
        "(docs/systemd.md)"
    )
    nginx = "# and what blue/green deploys need for nginx (docs/blue-green.md)"
    return "\n".join([header, *lines, nginx, *proxy.sudoers_lines(user)]) + "\n"


def nolog(_line: str) -> None:
    pass
