"""Preflight failures stop before anything changes (exit 5); secrets reach the app through
its release's env snapshot (0600) and never any output surface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import demo
from tests.integration.conftest import Target
from tests.integration.test_deploy import deploy

pytestmark = pytest.mark.integration

CANARY = "canary-5d2c8e1f-health-token"


def host_snapshot(t: Target) -> str:
    """Everything a failed preflight must leave alone."""
    res = t.ssh(
        f"cd {t.root} 2>/dev/null && {{ readlink current; ls -a releases shared .releasegate; "
        f"cat .releasegate/journal.jsonl; }} || echo no-root",
        check=False,
    )
    return res.stdout


def run_cli(
    t: Target, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "--plain", "--inventories", str(t.inv_dir), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "section, values, words",
    [
        ("preflight", {"min_free_mb": 9_000_000}, "free disk"),
        (
            "preflight",
            {"migration_check": "echo 'pending: drop column users.email'; exit 3"},
            "drop column users.email",
        ),
        ("preflight", {"runtimes": {"node": ">=99"}}, "runtime node"),
        ("preflight", {"required_env": ["RG_TEST_NOT_SET_ANYWHERE"]}, "RG_TEST_NOT_SET_ANYWHERE"),
        ("app", {"shared_files": [".env"]}, "shared file .env"),
    ],
)
def test_failed_preflight_changes_nothing(target: Target, section, values, words):
    code, _ = deploy(target)
    assert code == 0
    before = host_snapshot(target)
    target.update(section, **values)
    demo.commit_fault(target.repo, "")
    res = run_cli(target, "deploy", "test")
    assert res.returncode == 5, res.stdout + res.stderr
    assert words in res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert host_snapshot(target) == before


def test_world_readable_env_file_is_refused(target: Target):
    code, _ = deploy(target)
    assert code == 0
    target.ssh(f"echo A=1 > {target.root}/shared/.env && chmod 644 {target.root}/shared/.env")
    target.update("app", shared_files=[".env"])
    before = host_snapshot(target)
    demo.commit_fault(target.repo, "")
    res = run_cli(target, "deploy", "test")
    assert res.returncode == 5, res.stdout + res.stderr
    assert "chmod 600" in res.stdout + res.stderr
    assert host_snapshot(target) == before


def test_unreachable_host_is_exit_5(target: Target):
    # in the sandbox's subnet, where nobody answers
    target.data["hosts"][0]["address"] = target.vps.service_address.rsplit(".", 1)[0] + ".99"
    target.data["hosts"][0]["port"] = 22
    target.data["ssh"]["connect_timeout"] = 3
    target.write()
    res = run_cli(target, "deploy", "test")
    assert res.returncode == 5, res.stdout + res.stderr
    assert "Nothing was done on the host" in res.stderr
    assert "Traceback" not in res.stderr


def test_preflight_command_lists_every_check(target: Target):
    target.update("preflight", runtimes={"node": ">=18"})
    res = run_cli(target, "preflight", "test")
    assert res.returncode == 0, res.stdout + res.stderr
    for name in (
        "inventory",
        "revision",
        "host",
        "deploy root",
        "free disk",
        "runtime node",
        "process manager",
        "lock",
    ):
        assert name in res.stdout


def test_secrets_reach_the_app_but_no_output_surface(target: Target, tmp_path: Path):
    pack = Path(__file__).resolve().parents[2] / "examples" / "sampleapp" / "smoke.yml"
    target.data["secrets"] = {"from_env": ["HEALTH_TOKEN"]}
    target.data["health"]["token_env"] = "HEALTH_TOKEN"  # the gate must send it
    target.data["smoke"] = {"packs": [str(pack)]}
    target.write()
    env = {"HEALTH_TOKEN": CANARY}
    surfaces = []
    res = run_cli(target, "-v", "deploy", "test", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    surfaces += [res.stdout, res.stderr]
    good = target.current()
    # the app really got it (from its release's env snapshot, mode 0600): /health/ready
    # refuses without the token
    snapshot = f"{target.root}/releases/{good}/.releasegate.env"
    assert target.ssh(f"stat -c %a {snapshot}").stdout.strip() == "600"
    probe = f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{target.port}/health/ready"
    assert target.ssh(probe).stdout == "401"

    # PM2 keeps every process's environment (the secret too) in its dump: owner-only
    dump = target.ssh('stat -c %a "${PM2_HOME:-$HOME/.pm2}/dump.pm2"').stdout.strip()
    assert dump == "600"

    # a failing release whose error page echoes its configuration: the canary is in the
    # readiness response body, so in the gate's evidence — rollback, forensics, evidence,
    # journal: still no canary anywhere
    server = target.repo / "server.js"
    leaky = server.read_text().replace(
        "send(res, 503, { status: 'not-ready' })",
        "send(res, 503, { status: 'not-ready', config: { HEALTH_TOKEN } })",
    )
    assert leaky != server.read_text()
    server.write_text(leaky)
    demo.commit_fault(target.repo, "ready_503")
    res = run_cli(target, "-v", "--json", "deploy", "test", env=env)
    assert res.returncode == 3, res.stdout + res.stderr
    surfaces += [res.stdout, res.stderr]
    assert json.loads(res.stdout.splitlines()[-1])["live"] == good
    journal = target.ssh(f"cat {target.root}/.releasegate/journal.jsonl").stdout
    assert '\\"config\\":{\\"HEALTH_TOKEN\\":\\"********\\"}' in journal  # evidence, masked
    junit = tmp_path / "smoke.xml"
    res = run_cli(target, "smoke", "test", "--junit", str(junit), env=env)
    surfaces += [res.stdout, res.stderr, junit.read_text()]
    for cmd in ("history", "releases", "status"):
        res = run_cli(target, "--json", cmd, "test", env=env)
        surfaces += [res.stdout, res.stderr]
    surfaces.append(target.ssh(f"cat {target.root}/.releasegate/journal.jsonl").stdout)
    surfaces.append(target.ssh(f"cat {target.root}/releases/*/.releasegate-pm2.config.js").stdout)
    for text in surfaces:
        assert CANARY not in text
    # and a missing secret is a preflight failure that names the variable, not a value
    res = run_cli(target, "deploy", "test", env={"HEALTH_TOKEN": ""})
    assert res.returncode in (2, 5), res.stdout + res.stderr
    assert "HEALTH_TOKEN" in res.stdout + res.stderr
