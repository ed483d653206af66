"""The first hour, against the sandbox VPS over real SSH: `smoke ENV` names the environment
and explains a tunnel the host refused in one line of its own (no paramiko noise); `-v`
shows the real commands; an inventory that names a ~/.ssh/config alias and leaves user and
key to it reaches the host (Port and User over a real SSH server: tests/unit/test_ssh_config)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Target

pytestmark = pytest.mark.integration


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


def test_smoke_env_names_the_environment_and_explains_a_refused_tunnel(target: Target):
    # nothing runs on the app's port yet: every connection through the tunnel is refused
    res = run_cli(target, "smoke", "test", "health")
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.startswith(f"smoke against test (sandbox, 127.0.0.1:{target.port} ")
    assert "Secsh channel" not in res.stderr and "Traceback" not in res.stderr
    explained = [line for line in res.stderr.splitlines() if "nothing answered" in line]
    assert len(explained) == 1 and f"127.0.0.1:{target.port}" in explained[0], res.stderr


def test_verbose_shows_the_commands_that_run(target: Target):
    res = run_cli(target, "-v", "status", "test")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"$ sh -c <script state.read> {target.root}" in res.stdout


def test_an_ssh_config_alias_supplies_user_and_key(target: Target, tmp_path: Path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host rg-alias\n  HostName {target.vps.address}\n  User {target.vps.user}\n"
        f"  IdentityFile {target.vps.identity_file}\n"
    )
    host = target.data["hosts"][0]
    host["address"] = "rg-alias"
    host.pop("identity_file")
    host.pop("user", None)
    target.write()
    res = run_cli(target, "status", "test", env={"HOME": str(home), "SSH_AUTH_SOCK": ""})
    assert res.returncode == 0, res.stdout + res.stderr  # HostName, User, IdentityFile
