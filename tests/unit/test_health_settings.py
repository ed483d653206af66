"""health.stable_for and health.version: defaults, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import inventory
from deploy.errors import ConfigError

BASE = """
hosts: [{name: web1, address: 10.0.0.5, root: /srv/app}]
app: {name: shop}
process: {command: server.js, port: 3000, instances: 3}
"""


def parse(health: str = "", process: str = "") -> inventory.Inventory:
    text = BASE + (f"health: {health}\n" if health else "")
    if process:
        text = text.replace("process: {command: server.js, port: 3000, instances: 3}", process)
    return inventory.parse(text, source=Path("inventories/prod.yml"), env="prod")


def err(health: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(health)
    return exc.value.message


def test_default_window_is_five_seconds_and_fits_a_short_deadline():
    assert parse().health.window == 5
    # an inventory written before the window existed keeps working: it is shortened to fit
    assert parse("{deadline: 3, interval: 0.5}").health.window == 2.5
    assert parse("{stable_for: 0}").health.window == 0


def test_explicit_window_longer_than_the_deadline_is_refused():
    msg = err("{deadline: 5, stable_for: 5}")
    assert "inventories/prod.yml" in msg and "health:" in msg
    assert "stable_for (5s)" in msg and "deadline (5s)" in msg and "Raise deadline" in msg


def test_expected_instances_pm2_and_systemd():
    assert parse().expected_instances == 3
    sd = parse(
        process="process: {command: server.js, port: 3000, manager: systemd, "
        "systemd: {scope: user}}"
    )
    assert sd.expected_instances == 1


def test_version_defaults_and_sources():
    v = parse("{version: {field: build.sha, expect: revision}}").health.version
    assert v is not None and (v.path, v.field, v.expect) == ("/version", "build.sha", "revision")
    assert parse("{version: {header: X-Release-Id}}").health.version.expect == "release_id"


@pytest.mark.parametrize(
    ("version", "words"),
    [
        ("{path: /version}", "exactly one of field"),
        ("{field: release, header: X-Release-Id}", "exactly one of field"),
        ("{field: 'a b'}", "health.version.field: use a JSON field name"),
        ("{header: 'X Bad'}", "health.version.header:"),
        ("{field: release, expect: branch}", "health.version.expect:"),
        ("{field: release, path: version}", "health.version.path: use a URL path"),
    ],
)
def test_bad_version_settings_name_the_key(version, words):
    assert words in err(f"{{version: {version}}}")
