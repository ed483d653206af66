"""Sandbox VPS: a throwaway local host to rehearse deploys on.

``up()`` boots a copy of *this machine's own OS* as a container: real systemd as PID 1, sshd,
a ``deploy`` user with a lingering user manager, Node and PM2 - reachable only at a private
address (10.231.<index>.2) on a veth pair to this machine. Nothing is downloaded and nothing is
written to disk except keys: the container's root is an overlay (lower = the host's ``/``
read-only, upper = tmpfs) inside private namespaces, so ``down()`` leaves no trace.

The namespace side lives in ``pid1.sh`` (package data next to this module). Needs root.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from deploy.sandbox.base import SAFE_PATH_RE as _SAFE_PATH_RE
from deploy.sandbox.base import (
    Log,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
    ensure_keys,
    sudoers_text,
    wait_system_running,
)
from deploy.sandbox.base import locked as _locked
from deploy.sandbox.base import sshd_answers as _sshd_answers
from deploy.sandbox.base import validate as _validate
from deploy.sandbox.base import wait_until as _wait_until

__all__ = ["down", "status", "up"]

PID1_SCRIPT = Path(__file__).with_name("pid1.sh")
SSH_PORT = 22
BOOT_TIMEOUT = 90.0  # generous: a busy 2-core CI box boots in 1-3 s, but never hang forever
STOP_TIMEOUT = 20.0  # graceful poweroff budget before SIGKILL of the container's PID 1

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# sshd's compiled-in PATH for non-interactive sessions on Debian (apart from /usr/games).
_SSH_SESSION_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
# Filesystems that hold host files; a separate mount of one of these needs its own overlay.
_DISK_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "zfs", "bcachefs"}
_NOT_COPIED = ("/proc", "/sys", "/dev", "/run", "/tmp", "/boot", "/mnt", "/media")

# Host programs the sandbox needs, with the fix to print when one is missing.
_TOOLS: dict[str, tuple[str, str]] = {
    "unshare": ("unshare", "apt-get install util-linux"),
    "nsenter": ("nsenter", "apt-get install util-linux"),
    "ip": ("ip", "apt-get install iproute2"),
    "ssh": ("ssh", "apt-get install openssh-client"),
    "ssh-keygen": ("ssh-keygen", "apt-get install openssh-client"),
    "sshd": ("/usr/sbin/sshd", "apt-get install openssh-server"),
    "systemd": ("/lib/systemd/systemd", "apt-get install systemd"),
    "dbus-daemon": ("dbus-daemon", "apt-get install dbus"),
    "sudo": ("sudo", "apt-get install sudo"),
    "useradd": ("useradd", "apt-get install passwd"),
    "node": ("node", "apt-get install nodejs"),
    "pm2": ("pm2", "npm install -g pm2"),
}
# Needed inside the sandbox's PATH for deploys, optional for booting it.
_OPTIONAL_SESSION_TOOLS = ("npm",)
_PAM_SYSTEMD_GLOBS = (
    "lib/*/security/pam_systemd.so",
    "usr/lib/*/security/pam_systemd.so",
    "lib/security/pam_systemd.so",
    "usr/lib/security/pam_systemd.so",
)


@dataclass(frozen=True)
class _Layout:
    """Every host-side name and path one sandbox uses, derived from its spec."""

    spec: SandboxSpec
    cgroup_root: Path | None = None
    state_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", self.spec.state_root / self.spec.name)

    @property
    def netns(self) -> str:
        return f"releasegate-{self.spec.name}"

    @property
    def veth(self) -> str:  # host end; the sandbox end is "eth0" inside the netns
        return f"{self.spec.name}-h"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.231.{self.spec.index}.0/24")

    @property
    def host_address(self) -> str:
        return f"10.231.{self.spec.index}.1"

    @property
    def address(self) -> str:
        return f"10.231.{self.spec.index}.2"

    @property
    def cgroup_dir(self) -> Path | None:
        return self.cgroup_root / self.netns if self.cgroup_root else None

    @property
    def mount_dir(self) -> Path:  # empty on the host; the tmpfs exists only in the sandbox
        return self.state_dir / "overlay"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pid1"

    @property
    def boot_log(self) -> Path:
        return self.state_dir / "boot.log"

    @property
    def client_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    def info(self, pid1: int) -> SandboxInfo:
        return SandboxInfo(
            name=self.spec.name,
            address=self.address,
            port=SSH_PORT,
            user=self.spec.user,
            identity_file=self.client_key,
            known_hosts=self.known_hosts,
            pid1=pid1,
            state_dir=self.state_dir,
        )


# Launcher processes started by this Python process, so down() can reap them (no zombies).
_LAUNCHERS: dict[Path, subprocess.Popen[bytes]] = {}


def _nolog(_line: str) -> None:
    pass


# --------------------------------------------------------------------------- public API


def up(spec: SandboxSpec, log: Log = _nolog, timeout: float = BOOT_TIMEOUT) -> SandboxInfo:
    """Boot the sandbox (or return the running one) and wait until systemd finished booting."""
    _validate(spec)
    _require_root()
    tools = _find_tools()
    links = _session_tool_links(tools)
    lay = _Layout(spec, _cgroup_root())
    _check_kernel()
    lay.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(lay.state_dir):
        running = status(spec)
        if running is not None:
            log(f"sandbox {spec.name} is already up at {running.address} (pid1 {running.pid1})")
            return running
        live = _find_init(lay)
        if live is not None and live != _read_pid_file(lay):
            raise SandboxError(
                f"A sandbox named {spec.name!r} is already running (host pid {live}), but not "
                f"from state dir {lay.state_dir}: probably started with another state_root. "
                "Stop it with down() and that state_root, or choose another name."
            )
        _check_conflicts(lay)
        if _leftovers(lay):
            log(f"sandbox {spec.name}: removing leftovers of an earlier run")
            _teardown(lay, log)
        _ensure_keys(lay, log)
        _write_known_hosts(lay)
        try:
            return _boot(lay, links, log, timeout)
        except BaseException as exc:  # also Ctrl-C: never leave a half-built sandbox behind
            tail = _tail(lay.boot_log)
            try:
                _teardown(lay, log)
            except SandboxError as cleanup_exc:
                log(f"cleanup after failed boot also failed: {cleanup_exc}")
            if not isinstance(exc, Exception):
                raise
            what = str(exc) if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}"
            raise SandboxError(
                f"{what}\nThe partly started sandbox was removed. Last lines of {lay.boot_log}:\n"
                f"{tail}"
            ) from exc


def down(spec: SandboxSpec, log: Log = _nolog) -> None:
    """Stop the sandbox and remove every runtime trace; keys and known_hosts are kept."""
    _validate(spec)
    _require_root()
    lay = _Layout(spec, _cgroup_root())
    if not lay.state_dir.is_dir():  # never booted with this state root: clean what can exist
        _teardown(lay, log)
        return
    with _locked(lay.state_dir):
        _teardown(lay, log)


def status(spec: SandboxSpec) -> SandboxInfo | None:
    """The running sandbox's info, or None unless its systemd is alive and sshd is reachable."""
    _validate(spec)
    lay = _Layout(spec, _cgroup_root_or_none())
    pid1 = _read_pid_file(lay)
    if pid1 is None or not _is_sandbox_init(pid1, lay):
        return None
    if not Path("/run/netns", lay.netns).exists() or not _sshd_answers(lay.address, SSH_PORT, 1.0):
        return None
    return lay.info(pid1)


# --------------------------------------------------------------------------- checks


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "The sandbox needs root: it creates network namespaces, veth interfaces, cgroups "
            "and mounts. Run the command as root (for example with sudo)."
        )


def _which(program: str) -> str | None:
    if program.startswith("/"):
        return program if os.access(program, os.X_OK) else None
    # System directories first: a root shell may have e.g. an nvm node first on its PATH,
    # which the sandbox's deploy user could not use, while a usable /usr/bin/node exists.
    search = f"{_SYSTEM_PATH}:{os.environ.get('PATH', '')}"
    return shutil.which(program, path=search)


def _find_tools() -> dict[str, str]:
    found: dict[str, str] = {}
    missing: list[str] = []
    for key, (program, fix) in _TOOLS.items():
        path = _which(program)
        if path is None:
            missing.append(f"{program} (fix: {fix})")
        else:
            found[key] = path
    for program in _OPTIONAL_SESSION_TOOLS:
        path = _which(program)
        if path is not None:
            found[program] = path
    root = Path("/")
    if not any(any(root.glob(pattern)) for pattern in _PAM_SYSTEMD_GLOBS):
        missing.append("pam_systemd.so (fix: apt-get install libpam-systemd)")
    if missing:
        raise SandboxError(
            "The sandbox boots a copy of this machine's own OS, so these programs must be "
            f"installed on this machine first: {'; '.join(missing)}."
        )
    return found


def _session_tool_links(tools: dict[str, str]) -> list[tuple[str, str]]:
    """Links to add to the sandbox's /usr/local/bin so SSH sessions find node, npm and pm2."""
    links: list[tuple[str, str]] = []
    for name in ("node", "npm", "pm2"):
        path = tools.get(name)
        if path is None or str(Path(path).parent) in _SSH_SESSION_PATH:
            continue
        real = Path(path).resolve()
        if not _SAFE_PATH_RE.match(str(real)) or not _usable_by_others(real):
            raise SandboxError(
                f"{name} was found at {path}, outside the default PATH of SSH sessions and not "
                f"usable by other users, so the sandbox's deploy user could not run it. Install "
                f"it system-wide (apt-get install nodejs npm; npm install -g pm2)."
            )
        links.append((name, str(real)))
    return links


def _usable_by_others(path: Path) -> bool:
    if path.stat().st_mode & 0o005 != 0o005:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in path.parents)


def _cgroup_root_or_none() -> Path | None:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # pure cgroup v2
        return Path("/sys/fs/cgroup")
    if Path("/sys/fs/cgroup/unified/cgroup.controllers").exists():  # hybrid: v2 beside v1
        return Path("/sys/fs/cgroup/unified")
    return None


def _cgroup_root() -> Path:
    root = _cgroup_root_or_none()
    if root is None:
        raise SandboxError(
            "The sandbox needs a cgroup v2 hierarchy (at /sys/fs/cgroup or "
            "/sys/fs/cgroup/unified) to run systemd; this machine has only cgroup v1. Boot the "
            "machine with cgroup v2 (the default on Debian 12), e.g. drop "
            "systemd.unified_cgroup_hierarchy=0 from the kernel command line."
        )
    return root


def _check_kernel() -> None:
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if not re.search(r"\boverlay$", filesystems, re.M):
        raise SandboxError(
            "The kernel does not offer overlayfs, which the sandbox uses for its throwaway "
            "root filesystem. Load it with 'modprobe overlay' (or use a kernel with "
            "CONFIG_OVERLAY_FS)."
        )


def _check_conflicts(lay: _Layout) -> None:
    """Refuse names and subnets that something other than this sandbox already uses."""
    ours = Path("/run/netns", lay.netns).exists()
    if _link_exists(lay.veth) and not ours:
        raise SandboxError(
            f"Network interface {lay.veth} already exists and was not created by sandbox "
            f"{lay.spec.name!r} (its network namespace {lay.netns} does not exist). Choose "
            f"another sandbox name, or remove the interface with 'ip link del {lay.veth}'."
        )
    for owner, network in _used_networks():
        if owner != lay.veth and network.overlaps(lay.subnet):
            raise SandboxError(
                f"Subnet {lay.subnet} for sandbox {lay.spec.name!r} is already in use on this "
                f"machine ({network} on {owner}), possibly by another sandbox. Choose another "
                "index (1-254), or stop whatever uses that subnet."
            )


def _used_networks() -> Iterator[tuple[str, ipaddress.IPv4Network]]:
    for entry in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for addr in entry.get("addr_info", []):
            iface = ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}")
            yield entry.get("ifname", "?"), iface.network
    for route in json.loads(_run(["ip", "-j", "-4", "route", "show"]).stdout or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            yield route.get("dev", "?"), ipaddress.IPv4Network(dst, strict=False)


# --------------------------------------------------------------------------- boot


def _boot(lay: _Layout, links: list[tuple[str, str]], log: Log, timeout: float) -> SandboxInfo:
    start = time.monotonic()
    deadline = start + timeout
    _create_network(lay, log)
    _create_cgroups(lay, log)
    lay.mount_dir.mkdir()
    proc = _launch(lay, links)
    _LAUNCHERS[lay.state_dir] = proc
    pid1 = _wait_for_pid1(lay, proc, deadline)
    lay.pid_file.write_text(f"{pid1}\n")
    _release_init(lay, proc)
    log(f"sandbox {lay.spec.name}: container PID 1 is host pid {pid1}")
    _wait_for_sshd(lay, pid1, deadline)
    log(
        f"sandbox {lay.spec.name}: sshd accepting on {lay.address}:{SSH_PORT} "
        f"after {time.monotonic() - start:.2f}s"
    )
    info = lay.info(pid1)
    state = wait_system_running(
        info,
        deadline,
        lay.state_dir,
        gone=lambda: (
            None
            if _is_sandbox_init(pid1, lay)
            else f"The sandbox's init (host pid {pid1}) exited while booting."
        ),
    )
    log(f"sandbox {lay.spec.name}: systemd {state} after {time.monotonic() - start:.2f}s")
    if state == "degraded":
        failed = _ssh(info, ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"], 30)
        log(f"sandbox {lay.spec.name}: failed units: {failed.stdout.strip() or '(none listed)'}")
    log(
        f"sandbox {lay.spec.name} is up: ssh -i {lay.client_key} -o UserKnownHostsFile="
        f"{lay.known_hosts} {lay.spec.user}@{lay.address}"
    )
    return info


def _ensure_keys(lay: _Layout, log: Log) -> None:
    ensure_keys(((lay.client_key, "client"), (lay.host_key, "host")), lay.spec.name, log)


def _write_known_hosts(lay: _Layout) -> None:
    # We generated the host key ourselves, so trusting it needs no first-connection leap.
    key_type, blob = lay.host_key.with_suffix(".pub").read_text().split()[:2]
    lay.known_hosts.write_text(f"{lay.address} {key_type} {blob}\n")


def _create_network(lay: _Layout, log: Log) -> None:
    ns, veth = lay.netns, lay.veth
    _run(["ip", "netns", "add", ns])
    # Create the sandbox end directly inside the netns, named like a VPS's NIC.
    _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
    _run(["ip", "addr", "add", f"{lay.host_address}/24", "dev", veth])
    _run(["ip", "link", "set", veth, "up"])
    _run(["ip", "-n", ns, "addr", "add", f"{lay.address}/24", "dev", "eth0"])
    _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    _run(["ip", "-n", ns, "link", "set", "lo", "up"])
    log(f"sandbox {lay.spec.name}: network {lay.host_address} ({veth}) <-> {lay.address} ({ns})")


def _create_cgroups(lay: _Layout, log: Log) -> None:
    """<top>/payload becomes the container's cgroup namespace root; <top>/supervisor holds the
    host-side launcher (like systemd-nspawn's payload/supervisor split).

    cgroup v2 lets a cgroup pass controllers to children only while it has no processes of
    its own, so the launcher must not stay in payload once the inner systemd delegates.
    """
    top = lay.cgroup_dir
    assert top is not None
    top.mkdir()
    controllers = (top / "cgroup.controllers").read_text().split()
    if controllers:  # pure v2 host; the hybrid layout's v2 tree has no controllers at all
        try:
            (top / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in controllers))
        except OSError as exc:  # systemd still boots, only without resource controllers
            log(f"sandbox {lay.spec.name}: could not delegate cgroup controllers: {exc}")
    (top / "payload").mkdir()
    (top / "supervisor").mkdir()


def _release_init(lay: _Layout, proc: subprocess.Popen[bytes]) -> None:
    """Move the launcher out of the payload cgroup, then let the init script continue."""
    assert lay.cgroup_dir is not None and proc.stdin is not None
    (lay.cgroup_dir / "supervisor" / "cgroup.procs").write_text(str(proc.pid))
    proc.stdin.write(b"go\n")
    proc.stdin.close()


def _launch(lay: _Layout, links: list[tuple[str, str]]) -> subprocess.Popen[bytes]:
    assert lay.cgroup_dir is not None
    env = {
        "PATH": _SYSTEM_PATH,  # nothing of the caller's environment leaks into the sandbox
        "RG_CGROUP": str(lay.cgroup_dir / "payload"),
        "RG_NETNS": lay.netns,
        "RG_NAME": lay.spec.name,
        "RG_USER": lay.spec.user,
        "RG_ADDRESS": lay.address,
        "RG_MNT": str(lay.mount_dir),
        "RG_STATE_ROOT": str(lay.spec.state_root),
        "RG_HOST_KEY": str(lay.host_key),
        "RG_CLIENT_PUBKEY": str(lay.client_key.with_suffix(".pub")),
        "RG_MACHINE_ID": uuid.uuid4().hex,
        "RG_SUBMOUNTS": "\n".join(_host_submounts(lay)),
        "RG_TOOL_LINKS": "\n".join(f"{name} {path}" for name, path in links),
        "RG_SUDOERS": sudoers_text(lay.spec.user),
    }
    with open(lay.boot_log, "wb") as boot_log:
        # New session: the sandbox must not get the caller's Ctrl-C or die with its terminal.
        return subprocess.Popen(
            ["bash", str(PID1_SCRIPT), "launch"],
            env=env,
            cwd="/",
            stdin=subprocess.PIPE,  # the init script waits for "go" (see _release_init)
            stdout=boot_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _host_submounts(lay: _Layout) -> list[str]:
    """Host filesystems mounted below / that the sandbox should see (parents first)."""
    skip = (*_NOT_COPIED, str(lay.spec.state_root))
    found: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point = fields[4]
        fstype = fields[fields.index("-") + 1]
        if (
            fstype not in _DISK_FS
            or mount_point == "/"
            or "\\" in mount_point
            or not _SAFE_PATH_RE.match(mount_point)
            or any(mount_point == s or mount_point.startswith(s + "/") for s in skip)
            or not os.path.isdir(mount_point)
        ):
            continue
        found.add(mount_point)
    return sorted(found, key=lambda p: (p.count("/"), p))


def _wait_for_pid1(lay: _Layout, proc: subprocess.Popen[bytes], deadline: float) -> int:
    # The launcher forks the container's PID 1 inside our cgroup; find it there.
    while True:
        pid1 = _find_init(lay)
        if pid1 is not None:
            return pid1
        if proc.poll() is not None:
            raise SandboxError(
                f"The sandbox launcher exited with status {proc.returncode} before the "
                "container started (see the boot log below)."
            )
        if time.monotonic() > deadline:
            raise SandboxError("Timed out waiting for the sandbox container to start.")
        time.sleep(0.02)


def _wait_for_sshd(lay: _Layout, pid1: int, deadline: float) -> None:
    while not _sshd_answers(lay.address, SSH_PORT, 0.5):
        if not _is_sandbox_init(pid1, lay):
            raise SandboxError(
                f"The sandbox's init (host pid {pid1}) exited while booting, before sshd "
                "accepted connections (see the boot log below)."
            )
        if time.monotonic() > deadline:
            raise SandboxError(
                f"Timed out waiting for sshd in the sandbox to accept connections on "
                f"{lay.address}:{SSH_PORT}. Check that openssh-server is installed on this "
                "machine (apt-get install openssh-server)."
            )
        time.sleep(0.05)


def _ssh(
    info: SandboxInfo, command: list[str], timeout: float, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        info.ssh_argv(*command, user=user),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# --------------------------------------------------------------------------- teardown


def _leftovers(lay: _Layout) -> bool:
    return (
        Path("/run/netns", lay.netns).exists()
        or _link_exists(lay.veth)
        or (lay.cgroup_dir is not None and lay.cgroup_dir.exists())
        or lay.pid_file.exists()
        or lay.mount_dir.exists()
    )


def _teardown(lay: _Layout, log: Log) -> None:
    pid1 = _read_pid_file(lay)
    if pid1 is None or not _is_sandbox_init(pid1, lay):
        pid1 = _find_init(lay)  # pid file lost (e.g. an interrupted up): find it in the cgroup
    if pid1 is not None:
        start = time.monotonic()
        _stop_init(pid1, lay, log)
        log(f"sandbox {lay.spec.name}: systemd stopped after {time.monotonic() - start:.2f}s")
    _kill_cgroup(lay)
    launcher = _LAUNCHERS.pop(lay.state_dir, None)
    if launcher is not None:
        if launcher.stdin is not None:
            launcher.stdin.close()  # an init still waiting for "go" then gives up
        try:
            launcher.wait(timeout=5)  # reap it; an init that does not reap would keep a zombie
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
    _remove_cgroup(lay)
    if _link_exists(lay.veth):
        _run(["ip", "link", "del", lay.veth])  # deleting one end removes the pair
    if Path("/run/netns", lay.netns).exists():
        _run(["ip", "netns", "del", lay.netns])
    try:
        lay.mount_dir.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SandboxError(
            f"Could not remove the sandbox's mount point {lay.mount_dir}: {exc}. It should be an "
            "empty directory; check what was put there and remove it by hand."
        ) from exc
    lay.pid_file.unlink(missing_ok=True)
    log(f"sandbox {lay.spec.name} is down")


def _stop_init(pid1: int, lay: _Layout, log: Log) -> None:
    # A clean poweroff lets services stop properly; escalate when it does not happen in time.
    try:
        subprocess.run(
            ["nsenter", "-t", str(pid1), "-a", "systemctl", "poweroff"],
            capture_output=True,
            timeout=10,
            check=True,
            env={"PATH": _SYSTEM_PATH},
        )
    except (subprocess.SubprocessError, OSError):
        log(f"sandbox {lay.spec.name}: 'systemctl poweroff' failed, sending SIGRTMIN+4")
        _signal(pid1, signal.SIGRTMIN + 4)  # systemd's "power off" signal
    if _wait_until(lambda: not _is_sandbox_init(pid1, lay), STOP_TIMEOUT):
        return
    log(f"sandbox {lay.spec.name}: no poweroff after {STOP_TIMEOUT:.0f}s, killing PID 1")
    _signal(pid1, signal.SIGKILL)  # PID 1 of a pid namespace: the kernel kills all of it
    if not _wait_until(lambda: not _is_sandbox_init(pid1, lay), 10):
        raise SandboxError(
            f"The sandbox's systemd (host pid {pid1}) did not exit even after SIGKILL. Check "
            f"'ps -o pid,stat,wchan -p {pid1}'; a process stuck in the kernel (D state) "
            "needs a reboot."
        )


def _kill_cgroup(lay: _Layout) -> None:
    """SIGKILL whatever is still in the sandbox's cgroup (after a failed or forced stop)."""
    top = lay.cgroup_dir
    if top is None or not top.exists():
        return
    # The launcher exits by itself right after the container's PID 1; give it a moment.
    if _wait_until(lambda: not _cgroup_pids(top), 2):
        return
    kill_file = top / "cgroup.kill"  # Linux >= 5.14: kills the whole subtree atomically
    if kill_file.exists():
        kill_file.write_text("1")
    else:
        for pid in _cgroup_pids(top):
            _signal(pid, signal.SIGKILL)
    if not _wait_until(lambda: not _cgroup_pids(top), 10):
        raise SandboxError(
            f"Processes of sandbox {lay.spec.name!r} survived SIGKILL: "
            f"{sorted(_cgroup_pids(top))} in {top}. Look at them with 'ps -o pid,stat,wchan,args "
            "-p PID'; processes stuck in the kernel (D state) need a reboot."
        )


def _remove_cgroup(lay: _Layout) -> None:
    top = lay.cgroup_dir
    if top is None or not top.exists():
        return
    deadline = time.monotonic() + 10
    while True:
        # Children first; rmdir of a cgroup fails with EBUSY until its last process is gone.
        try:
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                Path(dirpath).rmdir()
            return
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise SandboxError(
                    f"Could not remove the sandbox's cgroup {top}: {exc}. Remove it with "
                    f"'find {top} -depth -type d -exec rmdir {{}} +' once it is empty."
                ) from exc
            time.sleep(0.05)


# --------------------------------------------------------------------------- processes


def _read_pid_file(lay: _Layout) -> int | None:
    try:
        return int(lay.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _pid_depth() -> int:
    return len(_proc_status(os.getpid()).get("NSpid", "x").split())


def _is_sandbox_init(pid: int, lay: _Layout) -> bool:
    """True if pid is a live PID 1 of a child pid namespace inside this sandbox's cgroup.

    Checking both guards against a recycled pid in a stale pid file.
    """
    info = _proc_status(pid)
    nspid = info.get("NSpid", "").split()
    if len(nspid) != _pid_depth() + 1 or nspid[-1] != "1" or info.get("State", "Z")[0] in "ZX":
        return False
    if lay.cgroup_root is None or lay.cgroup_dir is None:
        return False
    rel = "/" + str(lay.cgroup_dir.relative_to(lay.cgroup_root))
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    paths = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    return bool(paths) and (paths[0] == rel or paths[0].startswith(rel + "/"))


def _cgroup_pids(top: Path) -> set[int]:
    pids: set[int] = set()
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            with suppress(OSError):  # the cgroup was removed while walking
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def _find_init(lay: _Layout) -> int | None:
    if lay.cgroup_dir is None or not lay.cgroup_dir.exists():
        return None
    for pid in sorted(_cgroup_pids(lay.cgroup_dir)):
        if _is_sandbox_init(pid, lay):
            return pid
    return None


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):  # already gone
        os.kill(pid, sig)


# --------------------------------------------------------------------------- helpers


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            env={"PATH": _SYSTEM_PATH, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"Command {' '.join(argv)!r} could not run: {exc}.") from exc
    if result.returncode != 0:
        raise SandboxError(
            f"Command {' '.join(argv)!r} failed with status {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no boot log)"
