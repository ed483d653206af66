"""The sandbox seam: what every provider is given (a spec), what it hands back (where to
reach the running sandbox), and what every sandbox installs the same way (its sudo allowlist).
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,9}\Z")  # "<name>-h" must fit IFNAMSIZ (15 chars)
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
# Paths end up in overlayfs mount options, ssh -o values and shell variables: none of these
# can quote, so only plain characters are allowed.
SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]*\Z")


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
    provider: str = "namespaces"
    # Where this machine reaches the sandbox's TCP services (apps, nginx) when that is not
    # `address`: the docker provider publishes only SSH, on loopback.
    services_at: str | None = None

    @property
    def service_address(self) -> str:
        return self.services_at or self.address

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


def validate(spec: SandboxSpec) -> None:
    # Runs before anything touches the system: these values become interface, netns and
    # cgroup names, mount options and environment of a root shell script.
    if not isinstance(spec.name, str) or not NAME_RE.match(spec.name):
        raise SandboxError(
            f"Invalid sandbox name {spec.name!r}: use 1-10 characters, a lowercase letter first, "
            "then lowercase letters, digits or '-' (it becomes the network interface "
            f"'<name>-h', which Linux limits to 15 characters)."
        )
    if (
        isinstance(spec.index, bool)
        or not isinstance(spec.index, int)
        or not 1 <= spec.index <= 254
    ):
        raise SandboxError(
            f"Invalid sandbox index {spec.index!r}: use an integer from 1 to 254; the sandbox "
            "gets the private subnet 10.231.<index>.0/24."
        )
    if not isinstance(spec.user, str) or not _USER_RE.match(spec.user) or spec.user == "root":
        raise SandboxError(
            f"Invalid sandbox user {spec.user!r}: use a lowercase Unix user name other than "
            "root (letters, digits, '_' or '-', at most 32 characters)."
        )
    root = str(spec.state_root)
    if not SAFE_PATH_RE.match(root) or root == "/" or ".." in Path(root).parts or len(root) > 200:
        raise SandboxError(
            f"Invalid sandbox state_root {root!r}: use an absolute path other than '/' made of "
            "letters, digits and . _ - + / only (it is used in mount options and ssh options, "
            "which cannot quote), for example /var/lib/releasegate/sandbox."
        )


def sshd_answers(address: str, port: int, timeout: float) -> bool:
    """True once an SSH server greets on address:port.

    Reading the greeting (not just connecting) proves it is sshd; answering with our own
    identification line makes sshd log a plain disconnect instead of a key-exchange error.
    """
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            greeting = conn.recv(256)
            if greeting.startswith(b"SSH-"):
                conn.sendall(b"SSH-2.0-releasegate-sandbox-probe\r\n")
                return True
            return False
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def ensure_keys(keys: tuple[tuple[Path, str], ...], name: str, log: Log) -> None:
    """The sandbox's client and host key pairs ((path, "client"|"host"), …), created once per
    state dir and kept by down(), so a pinned known_hosts stays valid."""
    for key, comment in keys:
        if key.exists() and key.with_suffix(".pub").exists():
            continue
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C"]
        argv += [f"releasegate-sandbox-{name}-{comment}", "-f", str(key)]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            result = subprocess.CompletedProcess(argv, 127, "", str(exc))
        if result.returncode != 0:
            raise SandboxError(
                f"ssh-keygen could not create {key}: {result.stderr.strip()} (install "
                "openssh-client)."
            )
        key.chmod(0o600)
        log(f"sandbox {name}: created {comment} key {key}")


def wait_system_running(
    info: SandboxInfo,
    deadline: float,
    keys_dir: Path,
    gone: Callable[[], str | None] = lambda: None,
) -> str:
    """Log in as the deploy user and wait for `systemctl is-system-running --wait`: that proves
    the key, the pinned host key, PAM and a booted systemd at once. `gone` names why the
    sandbox died while booting (None while it lives)."""
    last = ""
    while time.monotonic() < deadline:
        try:
            result = subprocess.run(
                info.ssh_argv("systemctl", "is-system-running", "--wait"),
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            break
        state = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if state in ("running", "degraded"):
            return state
        last = result.stderr.strip() or state or f"exit status {result.returncode}"
        if "Host key verification failed" in last or "Permission denied" in last:
            raise SandboxError(
                f"sshd in the sandbox answers, but SSH login as {info.user} fails: {last}. "
                f"The keys in {keys_dir} may be damaged: run down, delete the id_ed25519* "
                "and ssh_host_ed25519_key* files there, and run up again."
            )
        if result.returncode != 255:  # 255 = ssh itself failed: retry; else systemd answered
            raise SandboxError(f"The sandbox booted, but systemd reports state {state!r} ({last}).")
        why = gone()
        if why is not None:
            raise SandboxError(why)
        time.sleep(0.2)
    raise SandboxError(
        f"Timed out waiting for systemd in the sandbox to finish booting, or for SSH login as "
        f"{info.user}@{info.address}:{info.port} to work (last error: {last or 'none'})."
    )


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    # Serialises up/down of the same sandbox across processes (flock on the state dir itself).
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
