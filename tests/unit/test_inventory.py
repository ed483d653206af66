"""Inventory validation: errors name the file, the key path and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.parametrize(
    "snippet, key, rule",
    [
        ("app: {name: shop, path: /etc}", "app.path", "directory of the repository"),
        ("app: {name: shop, path: ../other}", "app.path", "'..'"),
        ("app: {name: shop, deps_lockfile: /etc/lock}", "app.deps_lockfile", "release"),
        ("app: {name: shop, shared_dirs: [/var/data]}", "app.shared_dirs[0]", "shared/"),
    ],
)
def test_an_absolute_path_names_the_key_and_its_own_rule(snippet, key, rule):
    msg = err(GOOD.replace("app: {name: shop}", snippet))
    assert key in msg and rule in msg
    if key == "app.path" or key == "app.deps_lockfile":
        assert "shared/" not in msg


def test_env_values_reserved_and_single_line():
    msg = err(GOOD.replace("port: 3000}", "port: 3000, env: {RELEASE_ID: x}}"))
    assert "set by releasegate" in msg


def test_many_hosts_with_defaults_and_overrides(tmp_path):
    text = GOOD.replace(
        "hosts: [{name: web1, address: 10.0.0.5, root: /srv/app}]",
        "host_defaults: {user: ops, root: /srv/shared, port: 2200}\n"
        "hosts: [{name: web1, address: 10.0.0.5, root: /srv/app}, {name: web2, address: h2},"
        " {name: web3, address: h3, port: 22, user: deploy, identity_file: k3}]\n"
        "rollout: {batch: 2, max_failed: 0}",
    )
    inv = inventory.parse(text, source=tmp_path / "prod.yml", env="prod")
    assert [(h.name, h.user, h.root, h.port) for h in inv.hosts] == [
        ("web1", "ops", "/srv/app", 2200),
        ("web2", "ops", "/srv/shared", 2200),
        ("web3", "deploy", "/srv/shared", 22),
    ]
    assert [list(b) for b in inv.rollout.batches(3)] == [[0, 1], [2]]
    assert inv.many and inv.for_host("web3").host.name == "web3"
    assert inv.for_host("web3").identity_path() == (tmp_path / "k3").resolve()
    assert inv.rollout.model_copy(update={"batch": "all"}).batches(3) == [range(0, 3)]


def test_many_hosts_errors_name_the_key():
    one = "hosts: [{name: web1, address: 10.0.0.5, root: /srv/app}]"
    assert "hosts[0].root: is required" in err(GOOD.replace(one, "hosts: [{name: w, address: h}]"))
    msg = err(GOOD.replace("hosts: [", "hosts: [{name: web1, address: h2, root: /srv/app}, "))
    assert "the name web1 is used more than once" in msg
    msg = err(GOOD.replace("hosts: [", "hosts: [{name: web2, address: 10.0.0.5, root: /srv/app}, "))
    assert "10.0.0.5:22/srv/app is listed more than once" in msg
    assert "rollout.batch" in err(GOOD + "rollout: {batch: 0}\n")
    assert "rollout.batch" in err(GOOD + "rollout: {batch: some}\n")
    assert "rollout.max_failed" in err(GOOD + "rollout: {max_failed: -1}\n")
    assert "rollout.order: unknown key" in err(GOOD + "rollout: {order: random}\n")
    assert "host_defaults.address: unknown key" in err(GOOD + "host_defaults: {address: x}\n")


def test_bad_yaml_and_missing_file(tmp_path):
    msg = err("hosts: [\n")
    assert "not valid YAML" in msg and "line" in msg
    with pytest.raises(ConfigError, match="no such inventory file"):
        inventory.load("prod", tmp_path)
    with pytest.raises(ConfigError, match="not valid"):
        inventory.load("../etc/passwd", tmp_path)


# ---------------------------------------------------------------- strategy (docs/blue-green.md)

BLUE_GREEN = {
    "kind": "blue-green",
    "slots": {"blue": 3001, "green": 3002},
    "public_port": 8080,
    "bake": {"seconds": 45},
    "retire": "keep-warm",
    "on_failure": "pause",
}


def test_the_default_strategy_is_in_place():
    inv = inventory.parse(GOOD, source=Path("inventories/prod.yml"), env="prod")
    assert inv.strategy.kind == "in-place" and inv.strategy.slots is None


def test_blue_green_settings_validate_and_default():
    full = inventory.StrategyConfig.model_validate(BLUE_GREEN)
    assert (full.slots.blue, full.slots.green) == (3001, 3002)  # type: ignore[union-attr]
    assert (full.public_port, full.bake.seconds, full.retire, full.on_failure) == (
        8080,
        45,
        "keep-warm",
        "pause",
    )
    least = inventory.StrategyConfig.model_validate(
        {"kind": "blue-green", "slots": {"blue": 3001, "green": 3002}}
    )
    assert (least.public_port, least.bake.seconds, least.retire, least.on_failure) == (
        80,
        30,
        "after-bake",
        "rollback",
    )


@pytest.mark.parametrize(
    "strategy, words",
    [
        ("{kind: blue-green}", "needs slots"),
        ("{kind: blue-green, slots: {blue: 3001, green: 3001}}", "each slot needs its own port"),
        ("{kind: blue-green, slots: {blue: 80, green: 3002}}", "public_port 80 is also a slot"),
        ("{public_port: 8080}", "public_port only applies to kind: blue-green"),
        ("{retire: keep-warm, on_failure: pause}", "retire, on_failure only apply"),
        ("{kind: blue-green, slots: {blue: 1, green: 2}, retire: never}", "retire"),
        ("{kind: blue-green, slots: {blue: 1, green: 2}, bake: {secs: 3}}", "bake.secs: unknown"),
        ("{kind: canary}", "strategy.kind"),
        (
            "{kind: blue-green, slots: {blue: 1, green: 2}, bake: {metrics: {counter: 'a b'}}}",
            "use a Prometheus metric name",
        ),
        (
            "{kind: blue-green, slots: {blue: 1, green: 2}, bake: {metrics: {label: code}}}",
            "bake.metrics.label: unknown",
        ),
    ],
)
def test_strategy_errors_name_the_key_and_the_fix(strategy, words):
    assert words in err(GOOD + f"strategy: {strategy}\n")


def test_blue_green_is_accepted_under_pm2():
    text = GOOD + "strategy: {kind: blue-green, slots: {blue: 3001, green: 3002}}\n"
    inv = inventory.parse(text, source=Path("inventories/prod.yml"), env="prod")
    assert inv.strategy.kind == "blue-green"


def test_blue_green_refuses_a_separate_health_port():
    # both slots would answer readiness on one port: the gate could not tell them apart
    msg = err(
        GOOD
        + "health: {port: 9000}\n"
        + "strategy: {kind: blue-green, slots: {blue: 3001, green: 3002}}\n"
    )
    assert "health.port (9000) cannot be used with strategy.kind: blue-green" in msg


def test_example_documents_every_blue_green_key():
    # the commented blue-green keys of example.yml, uncommented, are a valid strategy
    text = (ROOT / "inventories" / "example.yml").read_text()
    block = text[text.index("\nstrategy:") : text.index("\nnotify:")]
    lines = []
    for line in block.splitlines():
        m = re.match(r"^  # (\s*[a-z_]+:.*)$", line)
        code = "  " + m.group(1) if m else line
        code = re.sub(r"\s+#.*$", "", code).rstrip()
        if code.strip():
            lines.append(code)
    data = yaml.safe_load("\n".join(lines))["strategy"]
    assert data["kind"] == "in-place"
    parsed = inventory.StrategyConfig.model_validate({**data, "kind": "blue-green"})
    assert set(data) == set(inventory.StrategyConfig.model_fields)
    assert set(data["bake"]) == set(inventory.BakeConfig.model_fields)
    assert set(data["bake"]["metrics"]) == set(inventory.BakeMetricsConfig.model_fields)
    assert parsed.slots == inventory.SlotsConfig(blue=3001, green=3002)


def test_example_documents_every_many_hosts_key():
    text = (ROOT / "inventories" / "example.yml").read_text()
    data = yaml.safe_load(text)
    assert set(data["rollout"]) == set(inventory.RolloutConfig.model_fields)
    block = text[text.index("\nhost_defaults:") : text.index("\nrollout:")]
    assert all(key in block for key in inventory.HostDefaults.model_fields)


def test_the_bake_metrics_signal_is_off_unless_configured_and_defaults_to_the_common_names():
    bare = inventory.StrategyConfig.model_validate(BLUE_GREEN)
    assert bare.bake.metrics is None
    on = inventory.StrategyConfig.model_validate({**BLUE_GREEN, "bake": {"metrics": {}}})
    assert on.bake.metrics == inventory.BakeMetricsConfig(
        path="/metrics",
        counter="http_requests_total",
        status_label="status",
        max_error_ratio=0.05,
        min_requests=20,
    )


def test_the_bake_metrics_signal_is_refused_in_pm2_cluster_mode():
    # each worker counts alone: a read reaches one at random, so deltas would mean nothing
    msg = err(
        GOOD.replace("port: 3000}", "port: 3000, instances: 4}")
        + "strategy: {kind: blue-green, slots: {blue: 3001, green: 3002}, bake: {metrics: {}}}\n"
    )
    assert "strategy.bake.metrics cannot be used with process.instances: 4" in msg
    assert "Remove strategy.bake.metrics" in msg
