"""~/.ssh/config is honoured (Port, User, IdentityFile, HostName, ProxyJump) unless the
inventory sets the value: checked against a real SSH server on 127.0.0.1 that records who
logged in with which key, with HOME pointing at a temporary home."""

from __future__ import annotations

import sys
from pathlib import Path

import paramiko
import pytest
from click.testing import CliRunner

from deploy import inventory, operations
from deploy.cli import main
from deploy.errors import HostKeyRefused
from deploy.options import Options
from deploy.redact import Redactor
from deploy.remote import fingerprint
from deploy.report import RecordingReporter
from tests.sshserver import Server, ssh_server


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # only the keys we name
    return home


def key_in(home: Path, name: str) -> paramiko.PKey:
    pkey = paramiko.RSAKey.generate(1024)
    pkey.write_private_key_file(str(home / ".ssh" / name))
    return pkey


def project(tmp_path: Path, host: str) -> Path:
    inv = tmp_path / "proj" / "inventories"
    inv.mkdir(parents=True)
    (inv / "prod.yml").write_text(
        f"hosts: [{host}]\napp: {{name: app}}\nprocess: {{command: server.js, port: 3000}}\n"
    )
    return inv


def pin(inv: Path, server: Server, name: str = "127.0.0.1") -> None:
    key = server.host_key
    line = f"[{name}]:{server.port} {key.get_name()} {key.get_base64()}\n"
    (inv / "known_hosts").write_text(line)


def test_port_user_identity_and_hostname_come_from_ssh_config(tmp_path, home):
    alias_key = key_in(home, "alias_key")
    with ssh_server() as server:
        (home / ".ssh" / "config").write_text(
            f"Host web-alias\n  HostName 127.0.0.1\n  Port {server.port}\n  User alice\n"
            f"  IdentityFile ~/.ssh/alias_key\n"
        )
        inv_dir = project(tmp_path, "{name: web1, address: web-alias, root: /srv/app}")
        pin(inv_dir, server)
        inv = inventory.load("prod", inv_dir)
        assert (inv.host.port, inv.host.user) == (server.port, "alice")
        assert inv.host.label == f"web1 (alice@web-alias:{server.port})"
        remote = operations.open_remote(inv, Redactor())
        remote.close()
    assert server.logins and {u for u, _ in server.logins} == {"alice"}
    assert server.logins[-1][1] == alias_key.get_base64()


def test_the_inventory_wins_where_it_sets_a_value(tmp_path, home):
    key_in(home, "alias_key")
    own = key_in(home, "inventory_key")
    with ssh_server() as server:
        (home / ".ssh" / "config").write_text(
            "Host 127.0.0.1\n  Port 1\n  User alice\n  IdentityFile ~/.ssh/alias_key\n"
        )
        inv_dir = project(
            tmp_path,
            f"{{name: web1, address: 127.0.0.1, port: {server.port}, user: deploy, "
            f"root: /srv/app, identity_file: {home}/.ssh/inventory_key}}",
        )
        pin(inv_dir, server)
        inv = inventory.load("prod", inv_dir)
        assert (inv.host.port, inv.host.user) == (server.port, "deploy")
        remote = operations.open_remote(inv, Redactor())
        remote.close()
    assert {k for _, k in server.logins} == {own.get_base64()}  # never the alias's key
    assert {u for u, _ in server.logins} == {"deploy"}


def test_without_ssh_config_the_defaults_are_22_and_deploy(tmp_path, home):
    inv = inventory.load("prod", project(tmp_path, "{name: web1, address: 10.0.0.5, root: /a}"))
    assert (inv.host.port, inv.host.user) == (22, "deploy")


def test_a_proxyjump_hosts_key_is_verified_too(tmp_path, home):
    key_in(home, "alias_key")
    with ssh_server() as jump, ssh_server() as server:
        (home / ".ssh" / "config").write_text(
            f"Host jumper\n  HostName 127.0.0.1\n  Port {jump.port}\n"
            f"  IdentityFile ~/.ssh/alias_key\n"
            f"Host web-alias\n  HostName 127.0.0.1\n  Port {server.port}\n"
            f"  IdentityFile ~/.ssh/alias_key\n  ProxyJump jumper\n"
        )
        inv_dir = project(tmp_path, "{name: web1, address: web-alias, root: /srv/app}")
        pin(inv_dir, server)  # the host is pinned, the jump host is not
        inv = inventory.load("prod", inv_dir)
        with pytest.raises(HostKeyRefused):
            operations.open_remote(inv, Redactor())
    assert jump.logins == []  # refused at the jump host's key, before authenticating


def test_trust_host_pins_the_host_the_alias_reaches(tmp_path, home):
    with ssh_server() as server:
        (home / ".ssh" / "config").write_text(
            f"Host web-alias\n  HostName 127.0.0.1\n  Port {server.port}\n"
        )
        inv_dir = project(tmp_path, "{name: web1, address: web-alias, root: /srv/app}")
        res = CliRunner().invoke(
            main, ["--plain", "--inventories", str(inv_dir), "trust-host", "prod", "--yes"]
        )
        assert res.exit_code == 0, res.output
        assert (inv_dir / "known_hosts").read_text().startswith(f"[127.0.0.1]:{server.port} ")


def behind_jump(home: Path, jump: Server, server: Server) -> None:
    key_in(home, "alias_key")
    (home / ".ssh" / "config").write_text(
        f"Host jumper\n  HostName 127.0.0.1\n  Port {jump.port}\n  User hop\n"
        f"  IdentityFile ~/.ssh/alias_key\n"
        f"Host web-alias\n  HostName 127.0.0.1\n  Port {server.port}\n  ProxyJump jumper\n"
    )


def test_trust_host_reads_the_key_through_the_proxyjump(tmp_path, home):
    with ssh_server() as jump, ssh_server() as server:
        behind_jump(home, jump, server)
        inv_dir = project(tmp_path, "{name: web1, address: web-alias, root: /srv/app}")
        pin(inv_dir, jump)  # the jump host is known, the host behind it is not
        res = CliRunner().invoke(
            main, ["--plain", "--inventories", str(inv_dir), "trust-host", "prod", "--yes"]
        )
        assert res.exit_code == 0, res.output
    assert [u for u, _ in jump.logins] == ["hop"]  # through the jump, logged in as its User
    pins = (inv_dir / "known_hosts").read_text().splitlines()
    key = server.host_key
    assert pins[-1] == f"[127.0.0.1]:{server.port} {key.get_name()} {key.get_base64()}"
    assert "jump host" in res.output


def test_trust_host_refuses_an_unknown_jump_host(tmp_path, home):
    with ssh_server() as jump, ssh_server() as server:
        behind_jump(home, jump, server)
        inv_dir = project(tmp_path, "{name: web1, address: web-alias, root: /srv/app}")
        res = CliRunner().invoke(
            main, ["--plain", "--inventories", str(inv_dir), "trust-host", "prod", "--yes"]
        )
        assert res.exit_code == 7, res.output
    assert jump.logins == [] and server.peers == []  # nothing read from the host
    assert not (inv_dir / "known_hosts").exists()  # --yes never pins a jump host
    assert fingerprint(jump.host_key) in res.output
    assert "releasegate trust-host prod` at a terminal" in " ".join(res.output.split())


def test_trust_host_at_a_terminal_asks_for_the_jump_host_then_the_host(tmp_path, home):
    asked: list[str] = []
    with ssh_server() as jump, ssh_server() as server:
        behind_jump(home, jump, server)
        inv_dir = project(tmp_path, "{name: web1, address: web-alias, root: /srv/app}")
        code = operations.run_trust_host(
            "prod",
            Options(inventories=inv_dir),
            yes=False,
            replace=False,
            confirm=lambda q: asked.append(q) or True,
            interactive=True,
            reporter=RecordingReporter(),
        )
        assert code == 0
    assert len(asked) == 2
    assert "jump host" in asked[0] and fingerprint(jump.host_key) in asked[0]
    assert fingerprint(server.host_key) in asked[1]
    pins = (inv_dir / "known_hosts").read_text().splitlines()
    assert [line.split()[0] for line in pins] == [
        f"[127.0.0.1]:{jump.port}",
        f"[127.0.0.1]:{server.port}",
    ]


RELAY = """\
import os, pathlib, socket, sys, threading
pathlib.Path(sys.argv[3]).touch()
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while data := os.read(0, 32768):
        sock.sendall(data)
threading.Thread(target=up, daemon=True).start()
while data := sock.recv(32768):
    os.write(1, data)
"""


def test_trust_host_reads_the_key_through_a_proxycommand(tmp_path, home):
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    with ssh_server() as server:
        (home / ".ssh" / "config").write_text(
            f"Host web-alias\n  HostName 127.0.0.1\n  Port {server.port}\n"
            f"  ProxyCommand {sys.executable} {relay} %h %p {tmp_path / 'relayed'}\n"
        )
        inv_dir = project(tmp_path, "{name: web1, address: web-alias, root: /srv/app}")
        res = CliRunner().invoke(
            main, ["--plain", "--inventories", str(inv_dir), "trust-host", "prod", "--yes"]
        )
        assert res.exit_code == 0, res.output
    assert (tmp_path / "relayed").exists()  # read through the ProxyCommand
    key = server.host_key
    assert (inv_dir / "known_hosts").read_text() == (
        f"[127.0.0.1]:{server.port} {key.get_name()} {key.get_base64()}\n"
    )
