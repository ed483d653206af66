"""The sandbox VPS itself: boots real systemd + sshd + PM2, pins its own host key, and leaves
nothing behind. Uses its own names/subnets (rgsbx/9, rgsbx2/10), so it can run beside the
session sandbox of the other integration tests and beside a demo sandbox (rg-local/5)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy import sandbox
from deploy.sandbox import SandboxError, SandboxInfo, SandboxSpec, namespaces
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    wait_until(predicate, timeout, what or str(predicate))


def ssh(
    info: SandboxInfo, command: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        info.ssh_argv(command, user=user),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ssh_ok(info: SandboxInfo, command: str, user: str | None = None) -> str:
    result = ssh(info, command, user)
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}): {result.stderr}"
    return result.stdout.strip()


def key_blob(public_key_line: str) -> str:
    return public_key_line.split()[1]


def netns_names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def leftovers(spec: SandboxSpec, pid1: int) -> list[str]:
    """Everything of this sandbox that still exists on the host (empty when fully down)."""
    found = []
    if spec.name in netns_names():
        found.append("netns")
    if Path("/sys/class/net", f"{spec.name}-h").exists():
        found.append("veth")
    try:
        state = Path(f"/proc/{pid1}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    if state not in ("gone", "Z"):  # a zombie is only waiting for its parent to reap it
        found.append(f"process {pid1}")
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        found += [str(p) for p in root.glob(f"*{spec.name}")]
    state_dir = spec.state_root / spec.name
    found += [str(p) for p in (state_dir / "pid1", state_dir / "overlay") if p.exists()]
    return found


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> SandboxSpec:
    return SandboxSpec(name="rgsbx", index=9, state_root=tmp_path_factory.mktemp("sbx-state"))


@pytest.fixture(scope="module")
def box(spec: SandboxSpec) -> Iterator[SandboxInfo]:
    assert os.geteuid() == 0, "the sandbox needs root (CI runs as root)"
    lines: list[str] = []
    info = sandbox.up(spec, log=lines.append)
    assert any("sshd accepting" in line for line in lines), lines
    try:
        yield info
    finally:
        sandbox.down(spec)
        assert leftovers(spec, info.pid1) == []


# --------------------------------------------------------------------------- without root


@pytest.mark.parametrize("name", ["Bad;name", "", "toolongname1", "1abc", "a b", "../x"])
def test_bad_name_is_rejected_before_touching_anything(tmp_path: Path, name: str) -> None:
    spec = SandboxSpec(name=name, index=9, state_root=tmp_path / "state")
    for call in (sandbox.up, sandbox.down, sandbox.status):
        with pytest.raises(SandboxError, match="Invalid sandbox name"):
            call(spec)
    assert not (tmp_path / "state").exists()
    # Only this name is ours to check: sandboxes of other tests (parallel CI workers) come and go.
    assert f"releasegate-{name}" not in [line.split()[0] for line in netns_names().splitlines()]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("index", 0, "Invalid sandbox index"),
        ("index", 255, "Invalid sandbox index"),
        ("user", "root", "Invalid sandbox user"),
        ("user", "Dep;loy", "Invalid sandbox user"),
        ("state_root", Path("relative/dir"), "Invalid sandbox state_root"),
        ("state_root", Path("/tmp/with space"), "Invalid sandbox state_root"),
    ],
)
def test_bad_spec_fields_are_rejected(field: str, value: Any, message: str) -> None:
    spec = dataclasses.replace(SandboxSpec(name="rgsbx", index=9), **{field: value})
    with pytest.raises(SandboxError, match=message):
        sandbox.up(spec)


def test_non_root_is_told_to_use_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(namespaces.os, "geteuid", lambda: 1000)
    spec = SandboxSpec(name="rgsbx", index=9, state_root=tmp_path / "state")
    # (without --provider, a non-root user gets the docker provider: docs/sandbox.md)
    for call in (namespaces.up, namespaces.down):
        with pytest.raises(SandboxError, match="needs root"):
            call(spec)
    assert not (tmp_path / "state").exists()


def test_missing_host_program_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(namespaces.os, "geteuid", lambda: 0)
    real_which = namespaces._which
    monkeypatch.setattr(
        namespaces, "_which", lambda program: None if program == "pm2" else real_which(program)
    )
    spec = SandboxSpec(name="rgsbx", index=9, state_root=tmp_path / "state")
    with pytest.raises(SandboxError, match=r"pm2 \(fix: npm install -g pm2\)"):
        sandbox.up(spec)
    assert not (tmp_path / "state").exists()


# --------------------------------------------------------------------------- one running box


def test_ssh_as_deploy_with_pinned_host_key(box: SandboxInfo) -> None:
    assert box.address == "10.231.9.2" and box.port == 22 and box.user == "deploy"
    assert ssh_ok(box, "id -un") == "deploy"
    assert ssh_ok(box, "id -un", user="root") == "root"
    assert oct(box.identity_file.stat().st_mode & 0o777) == "0o600"
    assert box.known_hosts.read_text().startswith("10.231.9.2 ssh-ed25519 AAAA")


def test_a_different_host_key_is_refused(box: SandboxInfo, tmp_path: Path) -> None:
    # Proves StrictHostKeyChecking is really in force with the pinned known_hosts.
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(
        f"{box.address} ssh-ed25519 {key_blob(other.with_suffix('.pub').read_text())}\n"
    )
    assert subprocess.run(box.ssh_argv("true"), timeout=60, check=False).returncode == 0
    forged = [arg.replace(str(box.known_hosts), str(wrong)) for arg in box.ssh_argv("true")]
    result = subprocess.run(forged, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_host_key_is_the_sandboxs_own_not_the_machines(box: SandboxInfo) -> None:
    scan = subprocess.run(
        ["ssh-keyscan", "-T", "10", box.address], capture_output=True, text=True, timeout=60
    )
    offered = [line.split()[1:3] for line in scan.stdout.splitlines() if not line.startswith("#")]
    ours = (box.state_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    assert offered == [ours]  # exactly one key, ours
    machine_keys = {key_blob(p.read_text()) for p in Path("/etc/ssh").glob("ssh_host_*_key.pub")}
    assert ours[1] not in machine_keys
    # ... and the machine's private host keys are not even present inside the sandbox.
    assert ssh_ok(box, "ls /etc/ssh/ | grep ssh_host_", user="root").split() == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]


def test_pid1_is_systemd_and_system_is_running(box: SandboxInfo, spec: SandboxSpec) -> None:
    assert ssh_ok(box, "cat /proc/1/comm") == "systemd"
    state = ssh(box, "systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded")
    assert ssh_ok(box, "hostname") == spec.name
    assert Path(f"/proc/{box.pid1}/comm").read_text().strip() == "systemd"


def test_user_manager_runs_for_deploy_thanks_to_linger(box: SandboxInfo) -> None:
    state = ssh(box, "systemctl --user is-system-running").stdout.strip()
    assert state in ("running", "degraded")
    # A user unit and its journal, as deploys to `systemctl --user` targets use them.
    ssh_ok(box, "systemd-run --user --unit=rgsbx-hello --quiet echo hello-from-sandbox")
    wait_for(
        lambda: (
            "hello-from-sandbox"
            in ssh(box, "journalctl --user -u rgsbx-hello --no-pager -o cat").stdout
        ),
        what="the user unit's output in journalctl --user",
    )


def test_sudo_is_exactly_the_systemd_examples_allowlist(box: SandboxInfo) -> None:
    # What docs/systemd.md prints for inventories/local-systemd.yml and docs/blue-green.md for
    # nginx, and nothing else. `sudo -n -l CMD` answers whether CMD may run, without running it.
    for line in sandbox.sudoers_text(box.user).splitlines():
        if line.startswith("#"):
            continue
        command = line.split("NOPASSWD: ", 1)[1]
        result = ssh(box, f"sudo -n -l {command}")
        assert result.returncode == 0, f"{command}: {result.stderr}"
    unit = f"{sandbox.SYSTEMD_EXAMPLE_APP}.service"
    assert ssh(box, "sudo -n /usr/bin/systemctl daemon-reload").returncode == 0
    assert (
        ssh(box, f"sudo -n /usr/bin/journalctl -u {unit} -n 200 --no-pager -o cat").returncode == 0
    )
    refused = [
        "id",
        "/usr/bin/systemctl is-active ssh",
        "/usr/bin/systemctl restart ssh.service",
        f"/usr/bin/systemctl restart {unit} ssh.service",
        "/usr/bin/journalctl -u ssh -n 1 --no-pager",
        f"/usr/bin/journalctl -u {unit} -n 200 --no-pager -o cat -D /var/log",
        f"/usr/bin/install -m 0644 /tmp/x /etc/systemd/system/{unit}",
    ]
    for command in refused:
        assert ssh(box, f"sudo -n -l {command}").returncode != 0, f"sudo allows {command!r}"
    assert "password is required" in ssh(box, "sudo -n id").stderr


def test_node_npm_pm2_on_path_of_noninteractive_ssh(box: SandboxInfo) -> None:
    paths = ssh_ok(box, "command -v node npm pm2").split()
    assert [Path(p).name for p in paths] == ["node", "npm", "pm2"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", ssh_ok(box, "pm2 --version").splitlines()[-1])
    ssh_ok(box, "pm2 kill")


def test_srv_is_writable_by_deploy(box: SandboxInfo) -> None:
    assert ssh_ok(box, "stat -c %U /srv") == "deploy"
    ssh_ok(box, "mkdir -p /srv/rgsbx-app/releases && touch /srv/rgsbx-app/releases/x")


def test_up_again_is_idempotent(box: SandboxInfo, spec: SandboxSpec) -> None:
    lines: list[str] = []
    again = sandbox.up(spec, log=lines.append)
    assert again == box
    assert any("already up" in line for line in lines)
    assert sandbox.status(spec) == box


def test_subnet_of_a_running_sandbox_is_refused(box: SandboxInfo, tmp_path: Path) -> None:
    clash = SandboxSpec(name="rgsbx3", index=9, state_root=tmp_path / "state")
    with pytest.raises(SandboxError, match=r"10\.231\.9\.0/24 .* already in use"):
        sandbox.up(clash)
    assert "rgsbx3" not in netns_names()
    assert not Path("/sys/class/net/rgsbx3-h").exists()


# --------------------------------------------------------------------------- full lifecycle


def test_second_sandbox_lifecycle_leaves_nothing_behind(
    box: SandboxInfo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A second sandbox beside the module's one: up, up again, down, down again.
    spec2 = SandboxSpec(name="rgsbx2", index=10, state_root=tmp_path_factory.mktemp("sbx2"))
    try:
        info = sandbox.up(spec2)
        assert info.address == "10.231.10.2"
        assert sandbox.up(spec2).pid1 == info.pid1
        assert ssh_ok(info, "hostname") == "rgsbx2"
        assert ssh_ok(box, "hostname") == "rgsbx"  # the first one is unaffected
        host_key = (info.state_dir / "ssh_host_ed25519_key.pub").read_text()
    finally:
        sandbox.down(spec2)
    assert leftovers(spec2, info.pid1) == []
    assert sandbox.status(spec2) is None
    sandbox.down(spec2)  # idempotent
    # Keys and known_hosts survive down, so a pinned known_hosts stays valid for the next up.
    assert (info.state_dir / "ssh_host_ed25519_key.pub").read_text() == host_key
    assert info.known_hosts.exists() and info.identity_file.exists()
    assert ssh_ok(box, "hostname") == "rgsbx"  # still unaffected
