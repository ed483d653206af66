"""Inventory validation: errors name the file, the key path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import inventory
from deploy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
hosts: [{name: web1, address: 10.0.0.5, root: /srv/app}]
app: {name: shop}
process: {command: server.js, port: 3000}
"""


def err(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        inventory.parse(text, source=Path("inventories/prod.yml"), env="prod")
    assert exc.value.exit_code == 2
    return exc.value.message


@pytest.mark.parametrize("env", ["example", "local", "local-systemd"])
def test_shipped_inventories_are_valid(env):
    inv = inventory.load(env, ROOT / "inventories")
    assert inv.env == env and inv.host.root.startswith("/srv/")


def test_defaults():
    inv = inventory.parse(GOOD, source=Path("/x/inventories/prod.yml"), env="prod")
    assert inv.host.port == 22 and inv.host.user == "deploy"
    assert inv.health.path == "/health/ready" and inv.health.successes == 3
    assert inv.health_port == 3000
    assert inv.repo_path() == Path("/x/inventories")
    assert inv.pin_file() == Path("/x/inventories/known_hosts")


def test_unknown_key_names_path_and_fix():
    msg = err(GOOD.replace("port: 3000", "port: 3000, instancse: 2"))
    assert "inventories/prod.yml" in msg
    assert "process.instancse: unknown key" in msg and "spelling" in msg


def test_missing_key():
    msg = err("hosts: [{name: web1, address: h, root: /srv/app}]\napp: {name: shop}\n")
    assert "process: is required" in msg


def test_bad_values_are_listed_together():
    msg = err(GOOD.replace("root: /srv/app", "root: srv/app, port: 70000"))
    assert "hosts[0].root: must be an absolute path" in msg
    assert "hosts[0].port:" in msg and "65535" in msg
    assert "2 problem(s)" in msg


@pytest.mark.parametrize(
    "field, value",
    [
        ("root", "/srv/app;reboot"),
        ("root", "/srv/$(id)"),
        ("root", "/srv/`id`"),
        ("root", "/srv/../etc"),
        ("root", "/srv/-rf"),
        ("root", "'/srv/a\\nb'"),
        ("address", "host;id"),
        ("address", "-oProxyCommand=x"),
        ("user", "root;id"),
        ("name", "web 1"),
    ],
)
def test_malicious_host_values_are_refused(field, value):
    text = GOOD.replace("name: web1", "name: web1, " if field != "name" else "").replace(
        "{name: web1, ", "{"
    )
    text = GOOD.replace("{name: web1, address: 10.0.0.5, root: /srv/app}", "{%s}")
    fields = {"name": "web1", "address": "10.0.0.5", "root": "/srv/app"}
    fields[field] = value
    inner = ", ".join(f"{k}: {v}" for k, v in fields.items())
    msg = err(text % inner)
    assert f"hosts[0].{field}" in msg


@pytest.mark.parametrize(
    "snippet, path",
    [
        ("app: {name: shop, shared_dirs: [../up]}", "app.shared_dirs[0]"),
        ("app: {name: shop, shared_files: [/etc/passwd]}", "app.shared_files[0]"),
        ('app: {name: shop, install: "npm ci\\nreboot"}', "app.install"),
        ("app: {name: 'shop;id'}", "app.name"),
        ("app: {name: shop, revision: 'main;id'}", "app.revision"),
    ],
)
def test_malicious_app_values_are_refused(snippet, path):
    msg = err(GOOD.replace("app: {name: shop}", snippet))
    assert path in msg


def test_env_values_reserved_and_single_line():
    msg = err(GOOD.replace("port: 3000}", "port: 3000, env: {RELEASE_ID: x}}"))
    assert "set by releasegate" in msg


def test_multiple_hosts_not_yet():
    msg = err(GOOD.replace("hosts: [", "hosts: [{name: web2, address: h2, root: /srv/app}, "))
    assert "more than one host" in msg


def test_bad_yaml_and_missing_file(tmp_path):
    msg = err("hosts: [\n")
    assert "not valid YAML" in msg and "line" in msg
    with pytest.raises(ConfigError, match="no such inventory file"):
        inventory.load("prod", tmp_path)
    with pytest.raises(ConfigError, match="not valid"):
        inventory.load("../etc/passwd", tmp_path)
