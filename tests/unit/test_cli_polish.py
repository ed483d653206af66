"""What the CLI shows: `setup --print-sudoers` prints exactly the allowlists the preflight
checks (valid sudoers text, nothing contacted); `--help` names both process managers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from deploy import inventory, proxy
from deploy.cli import main
from deploy.model import Layout
from deploy.process import Systemd, manager_for

ROOT = Path(__file__).resolve().parents[2]
BASE = """
hosts: [{name: web1, address: 127.0.0.1, port: 1, user: shipit, root: /srv/shop}]
app: {name: shop}
"""
SYSTEMD = "process: {manager: systemd, command: server.js, port: 3000, systemd: {scope: system}}\n"
PM2 = "process: {command: server.js, port: 3000}\n"
BLUE_GREEN = "strategy: {kind: blue-green, slots: {blue: 3001, green: 3002}}\n"


def print_sudoers(tmp_path: Path, text: str) -> tuple[int, str]:
    inv = tmp_path / "inventories"
    inv.mkdir(exist_ok=True)
    (inv / "prod.yml").write_text(text)
    res = CliRunner().invoke(
        main, ["--plain", "--inventories", str(inv), "setup", "prod", "--print-sudoers"]
    )
    return res.exit_code, res.output


@pytest.mark.parametrize(
    ("body", "systemd", "nginx"),
    [
        (SYSTEMD, True, False),
        (SYSTEMD + BLUE_GREEN, True, True),
        (PM2 + BLUE_GREEN, False, True),
        (PM2, False, False),
    ],
    ids=["systemd", "systemd blue/green", "pm2 blue/green", "pm2"],
)
def test_print_sudoers_is_the_allowlist_the_preflight_checks(
    tmp_path: Path, body: str, systemd: bool, nginx: bool
):
    code, out = print_sudoers(tmp_path, BASE + body)  # port 1: contacting would fail
    assert code == 0, out
    inv = inventory.load("prod", tmp_path / "inventories")
    manager = manager_for(inv, Layout(root=PurePosixPath(inv.host.root)))
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    expected = (manager.sudoers() if isinstance(manager, Systemd) and systemd else []) + (
        proxy.sudoers_lines("shipit") if nginx else []
    )
    if not expected:
        assert "no sudoers lines needed" in out
        return
    assert lines == expected
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    if Path(visudo).exists():
        (tmp_path / "sudoers").write_text(out)
        res = subprocess.run([visudo, "-cf", str(tmp_path / "sudoers")], capture_output=True)
        assert res.returncode == 0, res.stdout + res.stderr


def test_help_names_both_process_managers():
    out = CliRunner().invoke(main, ["--help"]).output
    assert "PM2" in out and "systemd" in out


def test_verbose_shows_the_real_commands_masked():
    import io

    from deploy import commands
    from deploy.redact import MASK, Redactor
    from deploy.report import PlainReporter

    layout = Layout(root=PurePosixPath("/srv/shop"))
    partial = PurePosixPath("/srv/shop/releases/20261130101500-abc1234")
    cmd = commands.batch(
        "ship",
        [
            commands.prepare_layout(layout),
            commands.bounded(commands.run_install(partial, "npm ci --token=s3cr3t"), 900),
        ],
        "prepare and install",
    )
    out = io.StringIO()
    reporter = PlainReporter(out, Redactor(["s3cr3t"]), verbose=True)
    for line in commands.shown(cmd):
        reporter.command(line)
    text = out.getvalue()
    lines = [ln.split("$ ", 1)[1] for ln in text.splitlines()]
    assert lines[0] == "sh -c <script layout.prepare> /srv/shop"
    assert lines[1].startswith(f"cd {partial} && timeout -k ")
    assert lines[1].endswith(f"900 sh -c 'npm ci --token={MASK}'")
    assert "s3cr3t" not in text and "prepare and install" not in text
