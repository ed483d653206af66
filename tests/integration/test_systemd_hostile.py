"""Releases that misbehave as systemd services, in the user scope on the sandbox: one that
exits 0 at once (a Type=exec "success"), one that forks a listening child and exits, one that
ignores SIGTERM; a unit file edited by hand; the deploy user's systemd manager not running.
Checked on the host with plain ssh/systemctl: which release serves, what the unit runs, no
process of a rejected release left, the lock free."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Target
from tests.integration.test_systemd import (
    assert_runs,
    ctl,
    deploy,
    manager,
    released,
    unit_file,
)

pytestmark = pytest.mark.integration


def commit_app(t: Target, source: str, message: str) -> None:
    """Replace the app's server.js: a release whose code misbehaves on purpose."""
    (t.repo / "server.js").write_text(source)
    subprocess.run(["git", "-C", str(t.repo), "commit", "-qam", message], check=True)


EXITS_AT_ONCE = "process.exit(0);\n"
FORKS_AND_EXITS = """\
const { spawn } = require('child_process');
const child = spawn(process.execPath, [__dirname + '/real.js'], {
  detached: true, stdio: 'ignore', env: process.env,
});
child.unref();
process.exit(0);
"""
IGNORES_SIGTERM = "process.on('SIGTERM', () => {});\nrequire('./real.js');\n"


@pytest.fixture
def sdu(target: Target) -> Iterator[Target]:
    target.data["process"] = {
        "manager": "systemd",
        "command": "server.js",
        "interpreter": "node",
        "port": target.port,
        "env": {"HOST": "0.0.0.0"},
        "systemd": {"scope": "user", "restart_sec": 0.5},
    }
    target.write()
    # the real app under another name, so a misbehaving server.js can start it
    (target.repo / "real.js").write_text((target.repo / "server.js").read_text())
    subprocess.run(["git", "-C", str(target.repo), "add", "real.js"], check=True)
    subprocess.run(["git", "-C", str(target.repo), "commit", "-qm", "real.js"], check=True)
    unit = manager(target).unit
    try:
        yield target
    finally:
        target.ssh(
            f"systemctl --user disable --now {unit} >/dev/null 2>&1; "
            f"rm -f .config/systemd/user/{unit}; systemctl --user daemon-reload; "
            f"systemctl --user reset-failed {unit} 2>/dev/null; "
            f"pkill -u deploy -f {target.root}/releases/ ; true",
            check=False,
        )


def processes_in(t: Target, rid: str) -> list[str]:
    """Pids of any process whose cwd is inside release `rid`."""
    out = t.ssh(
        "for p in /proc/[0-9]*; do c=$(readlink $p/cwd 2>/dev/null) || continue; "
        f'case "$c" in {t.root}/releases/{rid}*) echo ${{p#/proc/}};; esac; done; true'
    ).stdout
    return out.split()


@pytest.mark.parametrize(
    "source", [EXITS_AT_ONCE, FORKS_AND_EXITS], ids=["exits-0-at-once", "forks-and-exits"]
)
def test_a_release_that_exits_0_is_rolled_back_and_leaves_nothing_running(sdu, source):
    code, rep = deploy(sdu)
    assert code == 0, rep.lines
    good = released(rep)
    commit_app(sdu, source, "misbehaves")
    code, rep = deploy(sdu)
    text = "\n".join(rep.lines)
    assert code == 3, text
    bad = released(rep)
    assert rep.outcomes[-1].live == good
    assert_runs(sdu, good)
    assert sdu.state_of(bad) == "bad"
    assert processes_in(sdu, bad) == [], text
    assert not sdu.lock_exists()


def test_a_release_that_ignores_sigterm_is_replaced_within_the_stop_timeout(sdu):
    commit_app(sdu, IGNORES_SIGTERM, "ignores SIGTERM")
    code, rep = deploy(sdu)
    assert code == 0, rep.lines
    stubborn = released(rep)
    commit_app(sdu, (sdu.repo / "real.js").read_text(), "behaves")
    started = time.monotonic()
    code, rep = deploy(sdu)
    took = time.monotonic() - started
    assert code == 0, rep.lines
    new = released(rep)
    assert_runs(sdu, new)
    assert processes_in(sdu, stubborn) == []
    assert took < 90, took
    assert not sdu.lock_exists()


def test_a_unit_file_edited_by_hand_is_put_back_by_the_next_deploy(sdu):
    code, rep = deploy(sdu)
    assert code == 0, rep.lines
    path = unit_file(sdu)
    sdu.ssh(f"sed -i 's|^ExecStart=.*|ExecStart=/bin/sleep 10000|' {path}")
    sdu.ssh(f"{ctl(sdu)} daemon-reload")
    code, rep = deploy(sdu)
    text = "\n".join(rep.lines)
    assert code == 0, text
    assert "sleep 10000" not in sdu.ssh(f"cat {path}").stdout
    assert_runs(sdu, released(rep))


def test_a_stopped_user_manager_is_started_again_by_the_deploys_login(sdu):
    """`systemctl stop user@UID` (the unit dies with it): the deploy's SSH login starts the
    manager again (pam_systemd, linger), and the new release runs under it."""
    code, rep = deploy(sdu)
    assert code == 0, rep.lines
    uid = sdu.ssh("id -u").stdout.strip()
    root = sdu.vps.ssh_argv(f"systemctl stop user@{uid}.service", user="root")
    subprocess.run(root, check=True, capture_output=True, timeout=60)
    code, rep = deploy(sdu)
    assert code == 0, "\n".join(rep.lines)
    assert_runs(sdu, released(rep))
    assert not sdu.lock_exists()
