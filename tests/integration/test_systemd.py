"""Deploys under real systemd on the sandbox VPS, in both scopes, checked on the host itself
with plain ssh/systemctl (independent of releasegate's own code).

system scope: the test installs exactly the sudoers allowlist releasegate prints for the app,
as an operator would (root ssh), and removes it afterwards. user scope: `systemctl --user` of
the deploy user, whose manager runs thanks to linger."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import PurePosixPath

import pytest

from deploy import demo, operations
from deploy.model import Layout
from deploy.operations import Options
from deploy.process import Systemd, manager_for
from deploy.redact import Redactor
from deploy.report import RecordingReporter
from tests.conftest import wait_until
from tests.integration.conftest import Target

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------ helpers


def as_root(t: Target, command: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        t.vps.ssh_argv(command, user="root"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert res.returncode == 0, f"{command}: {res.stderr}"
    return res


def manager(t: Target) -> Systemd:
    m = manager_for(t.inv, Layout(PurePosixPath(t.root)))
    assert isinstance(m, Systemd)
    return m


def ctl(t: Target) -> str:
    return "systemctl" if manager(t).system else "systemctl --user"


def unit_file(t: Target) -> str:
    m = manager(t)
    return str(m.installed_unit) if m.system else f".config/systemd/user/{m.unit}"


def show(t: Target) -> dict[str, str]:
    m = manager(t)
    out = t.ssh(f"{ctl(t)} show -p ActiveState,SubState,MainPID,NRestarts {m.unit}").stdout
    return dict(line.split("=", 1) for line in out.split())


def main_cwd(t: Target) -> str:
    pid = show(t)["MainPID"]
    assert pid != "0", f"{manager(t).unit} has no main process: {show(t)}"
    return t.ssh(f"readlink /proc/{pid}/cwd").stdout.strip()


def deploy(t: Target, fault: str | None = None) -> tuple[int, RecordingReporter]:
    if fault is not None:
        demo.commit_fault(t.repo, fault)
    rep = RecordingReporter()
    return operations.run_deploy("test", Options(inventories=t.inv_dir), reporter=rep), rep


def rollback(t: Target, to: str | None = None) -> tuple[int, RecordingReporter]:
    rep = RecordingReporter()
    return operations.run_rollback("test", Options(inventories=t.inv_dir), to=to, reporter=rep), rep


def released(rep: RecordingReporter) -> str:
    assert rep.outcomes, rep.lines
    rid = rep.outcomes[-1].release
    assert rid
    return rid


def assert_runs(t: Target, rid: str) -> None:
    """The unit is active, its main process runs in the release, and HTTP serves it."""
    state = wait_until(
        lambda: (s := show(t))["SubState"] == "running" and s, 10, "the unit running"
    )
    assert state["ActiveState"] == "active"
    assert main_cwd(t) == f"{t.root}/releases/{rid}"
    assert t.version()["release"] == rid
    assert t.current() == rid


def sudoers_file(t: Target) -> str:
    return f"/etc/sudoers.d/rg-{t.app}"


def install_allowlist(t: Target) -> None:
    lines = "\n".join(manager(t).sudoers()) + "\n"
    path = sudoers_file(t)
    as_root(
        t,
        f"printf %s {shlex.quote(lines)} > {path}.tmp && chmod 0440 {path}.tmp && "
        f"visudo -cq -f {path}.tmp && mv {path}.tmp {path}",
    )


@pytest.fixture(params=["system", "user"])
def sd(request: pytest.FixtureRequest, target: Target) -> Iterator[Target]:
    """The `target` app, managed by systemd in the given scope."""
    scope = request.param
    target.data["process"] = {
        "manager": "systemd",
        "command": "server.js",
        "interpreter": "node",
        "port": target.port,
        "env": {"HOST": "0.0.0.0"},
        "systemd": {"scope": scope, "restart_sec": 0.5},
    }
    target.write()
    unit = manager(target).unit
    if scope == "system":
        install_allowlist(target)
    try:
        yield target
    finally:
        if scope == "system":
            as_root(
                target,
                f"systemctl disable --now {unit} >/dev/null 2>&1; "
                f"rm -f /etc/systemd/system/{unit} {sudoers_file(target)}; "
                f"systemctl daemon-reload; systemctl reset-failed {unit} 2>/dev/null; true",
            )
        else:
            target.ssh(
                f"systemctl --user disable --now {unit} >/dev/null 2>&1; "
                f"rm -f .config/systemd/user/{unit}; systemctl --user daemon-reload; "
                f"systemctl --user reset-failed {unit} 2>/dev/null; true",
                check=False,
            )


# ------------------------------------------------------------------------------ deploys


def test_good_deploy_is_promoted_and_really_runs(sd: Target):
    code, rep = deploy(sd)
    assert code == 0, rep.lines
    rid = released(rep)
    assert_runs(sd, rid)
    assert sd.state_of(rid) == "good"
    assert not sd.lock_exists()
    unit = manager(sd).unit
    # persist = enable: the unit starts at boot
    assert sd.ssh(f"{ctl(sd)} is-enabled {unit}").stdout.strip() == "enabled"
    # the release carries its environment; the installed unit names no release
    installed = sd.ssh(f"cat {unit_file(sd)}").stdout
    assert f"WorkingDirectory={sd.root}/current" in installed and rid not in installed
    env = sd.ssh(f"cat {sd.root}/releases/{rid}/.releasegate.env").stdout
    assert f'RELEASE_ID="{rid}"' in env
    before = sd.ssh(f"stat -c '%i %.9Y' {unit_file(sd)}").stdout

    # a second good release: new main process in the new release; the unit was not
    # reinstalled (same inode and mtime), so no daemon-reload ran
    demo.commit_fault(sd.repo, "")
    code, rep = deploy(sd)
    assert code == 0, rep.lines
    second = released(rep)
    assert second != rid
    assert_runs(sd, second)
    assert sd.ssh(f"stat -c '%i %.9Y' {unit_file(sd)}").stdout == before


@pytest.mark.parametrize("fault", ["ready_503", "boot_crash"])
def test_bad_release_is_rolled_back(sd: Target, fault: str):
    code, rep = deploy(sd)
    assert code == 0, rep.lines
    good = released(rep)
    code, rep = deploy(sd, fault)
    assert code == 3, rep.lines
    bad = released(rep)
    assert bad != good
    assert rep.outcomes[-1].live == good
    assert_runs(sd, good)
    assert sd.state_of(bad) == "bad"
    assert sd.state_of(good) == "good"
    assert not sd.lock_exists()
    assert rep.outcomes[-1].evidence  # the probe history (or the process state) explains why


@pytest.mark.parametrize("sd", ["system"], indirect=True)
def test_under_systemd_a_release_that_exits_after_start_is_rolled_back(sd: Target):
    """The same crash under systemd: Restart=always brings it back with a new MainPID."""
    sd.update("health", stable_for=4, deadline=15)
    code, rep = deploy(sd)
    assert code == 0, rep.lines
    good = released(rep)
    code, rep = deploy(sd, "crash_after:2")
    assert code == 3, rep.lines
    assert sd.state_of(released(rep)) == "bad"
    assert_runs(sd, good)


def test_first_deploy_failing_stops_the_unit_exit_6(sd: Target):
    code, rep = deploy(sd, "boot_crash")
    assert code == 6, rep.lines
    bad = released(rep)
    assert sd.state_of(bad) == "bad"
    wait_until(lambda: show(sd)["ActiveState"] in {"inactive", "failed"}, 15, "the unit stopped")
    assert not sd.lock_exists()


def test_manual_rollback_and_to(sd: Target):
    rids = []
    for n in range(3):
        (sd.repo / "n.txt").write_text(str(n))
        demo.commit_fault(sd.repo, "")
        code, rep = deploy(sd)
        assert code == 0, rep.lines
        rids.append(released(rep))
    code, rep = rollback(sd)
    assert code == 0, rep.lines
    assert_runs(sd, rids[1])
    code, rep = rollback(sd, to=rids[0])
    assert code == 0, rep.lines
    assert_runs(sd, rids[0])
    # a bad release is refused as a target, and nothing changes
    code, rep = deploy(sd, "ready_503")
    assert code == 3, rep.lines
    bad = released(rep)
    code, rep = rollback(sd, to=bad)
    assert code == 2
    assert_runs(sd, rids[0])


def test_status_reports_the_units_main_process(sd: Target):
    code, rep = deploy(sd)
    assert code == 0, rep.lines
    rid = released(rep)
    rep = RecordingReporter()
    assert operations.run_status("test", Options(inventories=sd.inv_dir), reporter=rep) == 0
    text = "\n".join(rep.lines)
    assert rid in text and show(sd)["MainPID"] in text


@pytest.mark.parametrize("sd", ["system"], indirect=True)
def test_system_scope_without_the_allowlist_says_what_to_install(sd: Target):
    as_root(sd, f"rm -f {sudoers_file(sd)}")
    code, rep = deploy(sd)
    assert code == 6, rep.lines  # a first deploy has nothing to roll back to
    text = "\n".join([*rep.lines, *(o.message for o in rep.outcomes)])
    assert "sudoers allowlist" in text, text
    assert sd.ssh(f"test -e {unit_file(sd)}", check=False).returncode != 0  # nothing installed


# ------------------------------------------------------------------------------ forensics
# What the flow captures when a gate fails: manager.logs(N) and manager.describe(), run on
# the host. The flow-level assertion (the outcome's evidence and the journal entry carry the
# app's last line) belongs in test_forensics_of_a_failing_release_* once the flow wires them.


def forensics(t: Target, lines: int = 40) -> tuple[str, str]:
    inv = t.inv
    m = manager_for(inv, Layout(PurePosixPath(t.root)))
    remote = operations.open_remote(inv, Redactor())
    try:
        logs = remote.run(m.logs(lines), check=False)
        state = remote.run(m.describe(), check=False)
    finally:
        remote.close()
    assert logs.exit_code == 0, logs.stderr
    return logs.stdout, m.parse_describe(state.stdout)


def test_forensics_of_a_failing_release_contain_the_apps_last_line(sd: Target):
    code, rep = deploy(sd)
    assert code == 0, rep.lines
    code, rep = deploy(sd, "boot_crash")
    assert code == 3, rep.lines
    logs, state = forensics(sd)
    assert "sampleapp: boot_crash fault: refusing to start" in logs
    assert manager(sd).unit in state and "Active: active (running)" in state  # rolled back
    # captured by the flow before the rollback: in the output and in the bad release's entry
    last_words = "sampleapp: boot_crash fault: refusing to start"
    out = rep.outcomes[-1]
    assert any(last_words in line for line in out.evidence)
    bad = [e for e in sd.journal() if e["release"] == out.release and e["state"] == "bad"]
    assert last_words in bad[-1]["detail"]["forensics"]["logs"]


def test_forensics_under_pm2_contain_the_apps_last_line(target: Target):
    # Fork mode: in cluster mode PM2's worker wrapper ships stdout/stderr to the daemon over
    # IPC, and an app that writes its last words and calls process.exit() at once (as the
    # sample app's boot_crash does) exits before the message leaves: PM2's logs stay empty.
    target.update("process", instances=1)
    code, rep = deploy(target)
    assert code == 0, rep.lines
    code, rep = deploy(target, "boot_crash")
    assert code == 3, rep.lines
    logs, state = forensics(target)
    assert "sampleapp: boot_crash fault: refusing to start" in logs
    assert f"{target.app}[" in state and "online" in state
    assert "HOST" not in state  # no environment in the process state
    last_words = "sampleapp: boot_crash fault: refusing to start"
    out = rep.outcomes[-1]
    assert any(last_words in line for line in out.evidence)
    bad = [e for e in target.journal() if e["release"] == out.release and e["state"] == "bad"]
    assert last_words in bad[-1]["detail"]["forensics"]["logs"]
