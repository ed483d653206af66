"""`trust-host` through a ProxyJump, over real SSH: the sandbox's OpenSSH is the jump host and
the host behind it is an SSH server on this machine's side of the sandbox's link, reachable
for the test through the jump. The key pinned is the host's (not the jump's), read through the
jump; an unknown jump host is refused and nothing is read from the host behind it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import sandbox
from tests.sshserver import Server, ssh_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def jump(
    vps: sandbox.SandboxInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sandbox.SandboxInfo]:
    """A sandbox that can reach this machine: the session's, unless it is the docker one (which
    publishes only SSH on loopback and cannot reach us) — then a namespaces sandbox of its own."""
    if not vps.address.startswith("127."):
        yield vps
        return
    spec = sandbox.SandboxSpec(
        name="rgjump", index=20, state_root=tmp_path_factory.mktemp("jump-sandbox")
    )
    info = sandbox.up(spec, provider_name="namespaces")
    try:
        yield info
    finally:
        sandbox.down(spec, provider_name="namespaces")


def this_side(vps: sandbox.SandboxInfo) -> str:
    """The address of this machine on the link to the sandbox (the veth's host end)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((vps.address, vps.port))
        return str(probe.getsockname()[0])


def setup(vps: sandbox.SandboxInfo, tmp_path: Path, server: Server, address: str) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host rg-jump\n  HostName {vps.address}\n  Port {vps.port}\n  User {vps.user}\n"
        f"  IdentityFile {vps.identity_file}\n"
        f"Host behind-jump\n  HostName {address}\n  Port {server.port}\n  ProxyJump rg-jump\n"
    )
    inv = tmp_path / "proj" / "inventories"
    inv.mkdir(parents=True)
    (inv / "prod.yml").write_text(
        "hosts: [{name: web1, address: behind-jump, root: /srv/app}]\n"
        "app: {name: app}\nprocess: {command: server.js, port: 3000}\n"
    )
    return home


def trust_host(home: Path, inv: Path) -> subprocess.CompletedProcess[str]:
    cli = [sys.executable, "-m", "deploy.cli", "--plain", "--inventories", str(inv)]
    return subprocess.run(
        [*cli, "trust-host", "prod", "--yes"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(home), "SSH_AUTH_SOCK": ""},
    )


def test_trust_host_pins_the_key_of_the_host_behind_the_jump(
    jump: sandbox.SandboxInfo, tmp_path: Path
):
    vps = jump
    address = this_side(vps)
    with ssh_server(address) as server:
        home = setup(vps, tmp_path, server, address)
        inv = tmp_path / "proj" / "inventories"
        pins = inv / "known_hosts"

        # the jump host unknown: refused, nothing read from the host behind it
        res = trust_host(home, inv)
        assert res.returncode == 7, res.stdout + res.stderr
        assert "jump host rg-jump" in res.stderr, res.stderr
        assert server.peers == [] and not pins.exists()

        # the jump host pinned (as the sandbox's own known_hosts pins it): the host's key
        pins.write_text(vps.known_hosts.read_text())
        res = trust_host(home, inv)
        assert res.returncode == 0, res.stdout + res.stderr
        assert server.peers == [vps.address]  # reached from the jump host, not from here

    key = server.host_key
    assert pins.read_text().splitlines()[-1] == (
        f"[{address}]:{server.port} {key.get_name()} {key.get_base64()}"
    )
