"""The docker provider's sandbox itself: boots systemd + sshd + the deploy user's manager from
its cached image, publishes SSH on loopback only with a host key we generated and pinned, and
`down` leaves no container, network or volume behind. Uses its own name and subnet
(RELEASEGATE_DOCKER_TEST_SANDBOX, default rgdock:43)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from deploy import sandbox
from deploy.sandbox import SandboxInfo, SandboxSpec, state

pytestmark = pytest.mark.integration

NAME, _, INDEX = os.environ.get("RELEASEGATE_DOCKER_TEST_SANDBOX", "rgdock:43").partition(":")
LABEL = f"dev.releasegate.sandbox={NAME}"


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


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SandboxSpec, SandboxInfo]]:
    spec = SandboxSpec(name=NAME, index=int(INDEX), state_root=tmp_path_factory.mktemp("dstate"))
    info = sandbox.up(spec, provider_name="docker")
    try:
        yield spec, info
    finally:
        sandbox.down(spec)


def test_it_boots_a_vps_with_systemd_sshd_and_the_deploy_users_manager(
    box: tuple[SandboxSpec, SandboxInfo],
) -> None:
    _spec, info = box
    assert info.provider == "docker" and info.address == "127.0.0.1"
    res = ssh(
        info,
        "systemctl is-system-running; systemctl --user is-system-running; "
        "systemctl is-active ssh nginx; command -v node npm pm2; id -nG",
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0] in ("running", "degraded") and lines[1] == "running", res.stdout
    assert lines[2:4] == ["active", "active"], res.stdout
    assert "/pm2" in res.stdout and "adm" in lines[-2]
    # root logs in with the same key (the demo installs nginx sites as root)
    assert ssh(info, "id -u", user="root").stdout.strip() == "0"


def test_sudo_is_the_narrow_allowlist(box: tuple[SandboxSpec, SandboxInfo]) -> None:
    _spec, info = box
    assert ssh(info, "sudo -n /usr/sbin/nginx -t").returncode == 0
    refused = ssh(info, "sudo -n true")
    assert refused.returncode != 0 and "password is required" in refused.stderr


def test_ssh_is_published_on_loopback_only_with_our_own_pinned_host_key(
    box: tuple[SandboxSpec, SandboxInfo],
) -> None:
    spec, info = box
    container = docker.from_env().containers.get(f"releasegate-{spec.name}")
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert list(bindings) == ["22/tcp"]
    assert [b["HostIp"] for b in bindings["22/tcp"]] == ["127.0.0.1"]
    ours = (info.state_dir / "ssh_host_ed25519_key.pub").read_text().split()[1]
    pins = info.known_hosts.read_text()
    assert f"[127.0.0.1]:{info.port} ssh-ed25519 {ours}" in pins
    served = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(info.port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    assert ours in served
    # the record the inventories resolve `sandbox: NAME` from
    record = json.loads(state.path(spec).read_text())
    assert record["provider"] == "docker" and record["port"] == info.port


def test_status_and_up_again_return_the_running_sandbox(
    box: tuple[SandboxSpec, SandboxInfo],
) -> None:
    spec, info = box
    assert sandbox.status(spec) == info
    assert sandbox.up(spec, provider_name="docker") == info


def test_down_leaves_no_container_network_or_volume(tmp_path: Path) -> None:
    client = docker.from_env()
    spec = SandboxSpec(name=NAME + "b", index=int(INDEX) + 1, state_root=tmp_path)
    label = f"dev.releasegate.sandbox={spec.name}"
    volumes = {v.name for v in client.volumes.list()}
    info = sandbox.up(spec, provider_name="docker")
    assert ssh(info, "true").returncode == 0
    sandbox.down(spec)
    assert not client.containers.list(all=True, filters={"label": label})
    assert not client.networks.list(filters={"label": label})
    assert {v.name for v in client.volumes.list()} <= volumes
    assert not state.path(spec).exists()
    assert sandbox.status(spec, provider_name="docker") is None
    sandbox.down(spec, provider_name="docker")  # idempotent
    # the keys stay, so the next up pins the same host key
    assert (tmp_path / spec.name / "ssh_host_ed25519_key").exists()
