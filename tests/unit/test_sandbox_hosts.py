"""Inventories name the sandbox (`sandbox: rg-local`), not its address: the host entry is
filled in from the running sandbox's record, whichever provider runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy import inventory
from deploy.errors import ConfigError
from deploy.sandbox import SandboxSpec, state
from deploy.sandbox.hosts import STATE_ROOT_ENV
from tests.unit.conftest import sandbox_record

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path("inventories/local.yml")
ENTRY = """\
hosts:
  - name: sandbox
    sandbox: {name}
    root: /srv/app{extra}
app: {{name: app}}
process: {{command: server.js, port: 3000}}
"""


def parse(text: str) -> inventory.Inventory:
    return inventory.parse(text, source=SOURCE, env="local")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert exc.value.exit_code == 2
    return exc.value.message


def test_local_yml_takes_address_port_key_and_pin_from_a_docker_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_ROOT_ENV, str(tmp_path))
    info = sandbox_record(
        tmp_path, address="127.0.0.1", port=32769, provider="docker", services_at="10.231.5.2"
    )
    inv = inventory.load("local", ROOT / "inventories")
    assert (inv.host.address, inv.host.port, inv.host.user) == ("127.0.0.1", 32769, "deploy")
    assert inv.identity_path() == info.identity_file
    assert inv.known_hosts_files() == (info.known_hosts,)
    assert inv.host.sandbox == "rg-local"


def test_the_same_inventory_follows_a_namespaces_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_ROOT_ENV, str(tmp_path))
    sandbox_record(tmp_path)  # namespaces: 10.231.5.2:22
    inv = inventory.load("local-systemd", ROOT / "inventories")
    assert (inv.host.address, inv.host.port) == ("10.231.5.2", 22)


def test_a_sandbox_that_is_not_up_says_how_to_start_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_ROOT_ENV, str(tmp_path))
    msg = error(ENTRY.format(name="rg-other", extra=""))
    assert "inventories/local.yml: hosts[0].sandbox:" in msg
    assert "'rg-other' is not up" in msg
    assert "releasegate sandbox up --name rg-other" in msg


def test_address_next_to_sandbox_is_refused() -> None:
    msg = error(ENTRY.format(name="rg-local", extra="\n    address: 10.0.0.5\n    port: 2222"))
    assert "hosts[0]: address, port come from the running sandbox 'rg-local'" in msg
    assert "remove them" in msg


@pytest.mark.parametrize("name", ["Bad;name", "", "x" * 11, 5])
def test_bad_sandbox_name_is_refused(name: object) -> None:
    msg = error(ENTRY.format(name=json.dumps(name), extra=""))
    assert "hosts[0].sandbox:" in msg and "is not a sandbox name" in msg


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"port": "22"}, "port has the wrong type"),
        ({"port": 70000}, "port 70000 is out of range"),
        ({"provider": "vagrant"}, "provider 'vagrant' is not one of"),
        ({"identity_file": "/tmp/a key"}, "identity_file '/tmp/a key' is not a plain"),
        ({"extra": 1}, "unknown key 'extra'"),
        ({"name": "rg-other"}, "name 'rg-other' is not 'rg-local'"),
    ],
)
def test_a_damaged_record_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, object], problem: str
) -> None:
    monkeypatch.setenv(STATE_ROOT_ENV, str(tmp_path))
    sandbox_record(tmp_path)
    where = state.path(SandboxSpec(name="rg-local", state_root=tmp_path))
    where.write_text(json.dumps({**json.loads(where.read_text()), **change}))
    msg = error(ENTRY.format(name="rg-local", extra=""))
    assert str(where) in msg and problem in msg
    assert "releasegate sandbox down --name rg-local" in msg


def test_an_inventory_known_hosts_wins_over_the_sandbox_pin(tmp_path: Path) -> None:
    text = ENTRY.format(name="rg-local", extra="") + "ssh: {known_hosts: /etc/ssh/pins}\n"
    assert parse(text).known_hosts_files() == (Path("/etc/ssh/pins"),)


def test_two_sandboxes_need_one_known_hosts_file_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_ROOT_ENV, str(tmp_path))
    sandbox_record(tmp_path, name="rga")
    sandbox_record(tmp_path, name="rgb", address="10.231.6.2")
    two = (
        "hosts:\n  - {name: a, sandbox: rga}\n  - {name: b, sandbox: rgb}\n"
        "host_defaults: {root: /srv/app}\napp: {name: app}\n"
        "process: {command: server.js, port: 3000}\n"
    )
    msg = error(two)
    assert "several sandboxes (rga, rgb)" in msg and "set ssh.known_hosts" in msg
    inv = parse(two + "ssh: {known_hosts: /etc/ssh/pins}\n")
    assert [h.address for h in inv.hosts] == ["10.231.5.2", "10.231.6.2"]
