"""systemd's blue/green slots: the template unit `<app>@.service` (checked by systemd-analyze
verify as an instance), the exact commands and sudoers allowlist of the slots, and the slot
start script run here against fake `sudo`/`systemctl` that enforce that allowlist."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from deploy.commands import Cmd
from deploy.model import Layout
from deploy.process import Systemd, manager_for
from deploy.slots import Slot
from tests.unit.test_systemd import BASE, FAKE_SUDO, RID, RID2, inv, manager, verify

SYSTEM_TEMPLATE = "/etc/systemd/system/shop@.service"


# ---------------------------------------------------------------------------- rendering


def test_every_release_carries_the_slot_template_beside_the_unit():
    files = manager().config_files(RID)
    assert set(files) == {".releasegate.service", ".releasegate@.service"}
    # names no release and no port: the next release's template is byte-identical, so
    # starting it in a slot needs no daemon-reload
    assert RID not in files[".releasegate@.service"]
    assert "3000" not in files[".releasegate@.service"]
    assert manager().config_files(RID2) == files


def test_slot_template_runs_the_slots_link_never_current():
    unit = manager().render_slot_template()
    slots = "/srv/shop/.releasegate/slots"
    assert f"WorkingDirectory={slots}/%i\n" in unit
    assert "current" not in unit.split("[Unit]", 1)[1]
    # the release's env snapshot through the slot's link, then the slot's PORT, in that
    # order: systemd lets a later EnvironmentFile win
    env_files = [line for line in unit.splitlines() if line.startswith("EnvironmentFile=")]
    assert env_files == [
        f"EnvironmentFile={slots}/%i/.releasegate.env",
        f"EnvironmentFile={slots}/%i.env",
    ]
    assert 'ExecStart=node server.js --name "two words"\n' in unit
    assert "SyslogIdentifier=shop-%i\n" in unit
    assert "User=deploy\n" in unit and "WantedBy=multi-user.target" in unit


def test_slot_template_runs_a_release_executable_through_the_slots_link():
    m = manager(command="bin/server --port-from-env 50%", interpreter=None)
    assert m.exec_start(through="/srv/shop/.releasegate/slots/%i") == (
        '/srv/shop/.releasegate/slots/%i/bin/server --port-from-env "50%%"'
    )
    # the in-place unit still goes through current
    assert m.exec_start() == '/srv/shop/current/bin/server --port-from-env "50%%"'


def test_user_scope_slot_template_has_no_user():
    unit = manager(systemd={"scope": "user"}).render_slot_template()
    assert "User=" not in unit and "WantedBy=default.target" in unit


@pytest.mark.parametrize(
    "process",
    [
        {},
        {"systemd": {"scope": "system", "group": "www-data", "restart": "on-failure"}},
        {"systemd": {"scope": "user", "restart": "no", "restart_sec": 0.25}},
        {"command": 'server.js "50% $HOME" ;', "env": {"Q": 'x"y\\z $A %n'}},
    ],
)
def test_slot_instances_pass_systemd_analyze_verify(process, tmp_path):
    m = manager(**process)
    # verify needs an instance name to load a template's text
    assert verify(m.render_slot_template(), tmp_path, user=not m.system, name="shop@blue") == ""


def test_slot_instance_running_a_release_executable_passes_verify(tmp_path):
    root = tmp_path / "srv"
    (root / "releases" / RID / "bin").mkdir(parents=True)
    exe = root / "releases" / RID / "bin" / "server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / ".releasegate/slots").mkdir(parents=True)
    (root / ".releasegate/slots/blue").symlink_to(root / "releases" / RID)
    m = manager(root=root, command="bin/server", interpreter=None)
    assert verify(m.render_slot_template(), tmp_path, name="shop@blue") == ""
    # and verify does look at the path: the green slot has no link yet
    assert "green" in verify(m.render_slot_template(), tmp_path, name="shop@green")


# ---------------------------------------------------------------------------- commands


BLUE, GREEN = Slot("blue", 3001), Slot("green", 3002)


def test_slot_commands_are_exact():
    m = manager()
    assert m.slot_unit(BLUE) == "shop@blue.service"
    assert m.slot_snapshot(GREEN).render() == (
        "/usr/bin/systemctl show --property=LoadState,ActiveState,SubState,MainPID,NRestarts "
        "shop@green.service"
    )
    assert m.slot_describe(BLUE).render() == (
        "/usr/bin/systemctl status --no-pager --full --lines=0 shop@blue.service"
    )
    persist = m.persist_slot(GREEN)
    assert persist is not None
    assert persist.render() == "sudo -n /usr/bin/systemctl enable shop@green.service"
    (start,) = m.start_slot(GREEN, RID)
    assert start.argv[-4:] == (
        f"/srv/shop/releases/{RID}/.releasegate@.service",
        "/srv/shop/.releasegate/systemd/shop@.service",
        SYSTEM_TEMPLATE,
        "shop@green.service",
    )
    assert start.display == f"start shop@green.service on {RID} (127.0.0.1:3002), sudo"
    stop = m.stop_slot(BLUE)
    assert stop.argv[-1] == "shop@blue.service"
    assert stop.display == "sudo systemctl disable --now shop@blue.service"


def test_user_scope_slot_commands_use_systemctl_user():
    m = manager(systemd={"scope": "user"})
    assert m.stop_slot(GREEN).display == "systemctl --user disable --now shop@green.service"
    assert m.slot_snapshot(BLUE).argv[:3] == ("systemctl", "--user", "show")
    assert m.slot_logs(BLUE, 30).render() == (
        "journalctl --user -u shop@blue.service -n 30 --no-pager -o cat"
    )
    persist = m.persist_slot(BLUE)
    assert persist is not None and persist.render() == "systemctl --user enable shop@blue.service"
    (start,) = m.start_slot(BLUE, RID)
    assert start.argv[-3:] == (
        f"/srv/shop/releases/{RID}/.releasegate@.service",
        "shop@.service",
        "shop@blue.service",
    )
    assert m.sudoers(slots=True) == []


@pytest.mark.parametrize("name", ["red", "blue ; reboot", "", "Blue"])
def test_only_the_two_slots_exist(name):
    m = manager()
    slot = Slot(name, 3001)  # type: ignore[arg-type]
    for build in (
        lambda: m.stop_slot(slot),
        lambda: m.slot_snapshot(slot),
        lambda: m.start_slot(slot, RID),
        lambda: m.persist_slot(slot),
        lambda: m.slot_logs(slot, 10),
    ):
        with pytest.raises(ValueError, match="not a slot"):
            build()


def test_start_slot_refuses_a_bad_release_id():
    with pytest.raises(ValueError, match="release id"):
        manager().start_slot(BLUE, "../../etc")


@pytest.mark.parametrize(
    ("show", "status", "pids"),
    [
        # never started, or stopped: the slot runs nothing
        ("LoadState=loaded\nActiveState=inactive\nSubState=dead\nMainPID=0\n", "missing", ()),
        ("LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n", "missing", ()),
        ("LoadState=loaded\nActiveState=failed\nSubState=failed\nMainPID=0\n", "errored", ()),
        ("ActiveState=active\nSubState=running\nMainPID=812\nNRestarts=0\n", "online", (812,)),
    ],
)
def test_slot_snapshot_says_missing_when_the_slot_runs_nothing(show, status, pids):
    snap = manager().parse_slot_snapshot(BLUE, show)
    assert (snap.status, snap.pids) == (status, pids)


def test_slot_sudoers_allowlist_is_exact():
    prefix = "deploy ALL=(root) NOPASSWD: "
    assert manager().sudoers(slots=True) == [
        prefix + "/usr/bin/install -m 0644 /srv/shop/.releasegate/systemd/shop@.service "
        "/etc/systemd/system/shop@.service",
        prefix + "/usr/bin/systemctl daemon-reload",
        prefix + "/usr/bin/systemctl reset-failed shop@blue.service",
        prefix + "/usr/bin/systemctl reset-failed shop@green.service",
        prefix + "/usr/bin/systemctl restart shop@blue.service",
        prefix + "/usr/bin/systemctl restart shop@green.service",
        prefix + "/usr/bin/systemctl disable --now shop@blue.service",
        prefix + "/usr/bin/systemctl disable --now shop@green.service",
        prefix + "/usr/bin/systemctl enable shop@blue.service",
        prefix + "/usr/bin/systemctl enable shop@green.service",
        prefix + "/usr/bin/journalctl -u shop@blue.service -n 200 --no-pager -o cat",
        prefix + "/usr/bin/journalctl -u shop@green.service -n 200 --no-pager -o cat",
    ]


def test_every_plain_sudo_command_of_the_slots_is_in_the_allowlist():
    m = manager()
    allowed = {line.split("NOPASSWD: ", 1)[1] for line in m.sudoers(slots=True)}
    cmds = [m.persist_slot(s) for s in (BLUE, GREEN)]
    for cmd in cmds:
        assert cmd is not None
        assert cmd.argv[:2] == ("sudo", "-n")
        assert " ".join(cmd.argv[2:]) in allowed


def test_docs_print_the_slot_allowlist_the_code_uses():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "systemd.md").read_text()
    m = manager_for(inv(), Layout(PurePosixPath("ROOT")))  # placeholders as the page writes them
    assert isinstance(m, Systemd)
    for line in m.sudoers(slots=True):
        placeholder = line.replace("deploy ALL", "USER ALL").replace("shop", "APP")
        assert f"\n{placeholder}\n" in docs


# ---------------------------------------------------------------------------- host scripts

# systemctl as the scripts see it: records what ran; `show` answers NeedDaemonReload and
# LoadState from the environment.
SLOT_SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >>"$LOG"
case "$*" in
  *NeedDaemonReload*) echo "${NEED_RELOAD:-no}" ;;
  *LoadState*) echo "${LOAD_STATE:-loaded}" ;;
esac
"""


@dataclass
class SlotHost:
    """A deploy root in tmp_path, fake sudo/systemctl on PATH, and the record of calls."""

    root: Path
    installed: Path
    allow: Path
    log: Path
    env: dict[str, str]

    def release(self, rid: str, m: Systemd) -> None:
        d = self.root / "releases" / rid
        d.mkdir(parents=True, exist_ok=True)
        for name, content in m.config_files(rid).items():
            (d / name).write_text(content)

    def link(self, slot: Slot, rid: str) -> None:
        """What the flow's link_slot leaves before start_slot runs."""
        slots = self.root / ".releasegate/slots"
        slots.mkdir(parents=True, exist_ok=True)
        (slots / f"{slot.name}.env").write_text(f"PORT={slot.port}\n")
        (slots / slot.name).unlink(missing_ok=True)
        (slots / slot.name).symlink_to(f"../../releases/{rid}")

    def permit(self, m: Systemd) -> None:
        lines = [line.split("NOPASSWD: ", 1)[1] for line in m.sudoers(slots=True)]
        self.allow.write_text("\n".join(lines).replace(SYSTEM_TEMPLATE, str(self.installed)) + "\n")

    def run(self, cmd: Cmd, **env: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        argv = [a.replace(SYSTEM_TEMPLATE, str(self.installed)) for a in cmd.argv]
        return subprocess.run(
            ["sh", "-c", shlex.join(argv)],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=30,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def sudo_calls(self) -> list[str]:
        return [c for c in self.calls() if c.startswith("sudo")]


@pytest.fixture
def host(tmp_path: Path) -> SlotHost:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sudo", FAKE_SUDO), ("systemctl", SLOT_SYSTEMCTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    root = tmp_path / "srv"
    (root / ".releasegate").mkdir(parents=True)
    installed = tmp_path / "etc-systemd-system" / "shop@.service"
    installed.parent.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    log, allow = tmp_path / "calls.log", tmp_path / "allow"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LOG": str(log)}
    return SlotHost(root, installed, allow, log, {**env, "ALLOW": str(allow)})


def test_system_slot_start_installs_the_template_once_and_restarts_only_its_slot(
    host: SlotHost,
):
    m = manager(root=host.root)
    host.permit(m)
    host.release(RID, m)
    host.release(RID2, m)
    (host.root / "current").symlink_to(f"releases/{RID}")

    host.link(BLUE, RID)
    res = host.run(m.start_slot(BLUE, RID)[0])
    assert res.returncode == 0, res.stderr
    staged = host.root / ".releasegate/systemd/shop@.service"
    assert host.sudo_calls() == [
        f"sudo /usr/bin/install -m 0644 {staged} {host.installed}",
        "sudo /usr/bin/systemctl daemon-reload",
        "sudo /usr/bin/systemctl reset-failed shop@blue.service",
        "sudo /usr/bin/systemctl restart shop@blue.service",
    ]
    assert host.installed.read_text() == m.render_slot_template()
    assert "unit changed" in res.stdout

    # the next release goes to green with the same template: no install, no daemon-reload,
    # and nothing but green is touched
    host.link(GREEN, RID2)
    res = host.run(m.start_slot(GREEN, RID2)[0])
    assert res.returncode == 0, res.stderr
    assert host.sudo_calls() == [
        "sudo /usr/bin/systemctl reset-failed shop@green.service",
        "sudo /usr/bin/systemctl restart shop@green.service",
    ]
    assert (host.root / "current").readlink() == Path(f"releases/{RID}")

    # systemd never loaded the installed template (an interrupted run): reload, no install
    res = host.run(m.start_slot(GREEN, RID2)[0], NEED_RELOAD="yes")
    assert res.returncode == 0, res.stderr
    assert "sudo /usr/bin/systemctl daemon-reload" in host.sudo_calls()
    assert not any("install" in c for c in host.sudo_calls())

    # a changed process setting changes the template: installed again
    changed = manager(root=host.root, systemd={"scope": "system", "restart": "on-failure"})
    rid3 = "20261122140000-7654321"
    host.release(rid3, changed)
    res = host.run(changed.start_slot(BLUE, rid3)[0])
    assert res.returncode == 0, res.stderr
    assert host.sudo_calls()[:2] == [
        f"sudo /usr/bin/install -m 0644 {staged} {host.installed}",
        "sudo /usr/bin/systemctl daemon-reload",
    ]
    assert "Restart=on-failure" in host.installed.read_text()


def test_system_slot_start_without_the_slots_allowlist_changes_nothing(host: SlotHost):
    m = manager(root=host.root)
    host.release(RID, m)
    # the in-place allowlist is not enough for slots
    host.allow.write_text("\n".join(line.split("NOPASSWD: ", 1)[1] for line in m.sudoers()) + "\n")
    res = host.run(m.start_slot(BLUE, RID)[0])
    assert res.returncode == 4
    assert "allowlist for blue/green slots" in res.stderr and "docs/systemd.md" in res.stderr
    assert host.sudo_calls() == []
    assert not host.installed.exists()


def test_slot_start_of_a_release_without_the_template_is_refused(host: SlotHost):
    m = manager(root=host.root)
    host.permit(m)
    (host.root / "releases" / RID).mkdir(parents=True)  # shipped for PM2, or by an older version
    res = host.run(m.start_slot(BLUE, RID)[0])
    assert res.returncode == 3
    assert "not shipped for systemd slots" in res.stderr
    assert host.calls() == []


def test_user_slot_start_installs_the_template_under_home(host: SlotHost):
    m = manager(root=host.root, systemd={"scope": "user"})
    host.release(RID, m)
    res = host.run(m.start_slot(GREEN, RID)[0])
    assert res.returncode == 0, res.stderr
    dest = Path(host.env["HOME"]) / ".config/systemd/user/shop@.service"
    assert dest.read_text() == m.render_slot_template()
    assert [c for c in host.calls() if "show" not in c] == [
        "systemctl --user daemon-reload",
        "systemctl --user reset-failed shop@green.service",
        "systemctl --user restart shop@green.service",
    ]
    res = host.run(m.start_slot(GREEN, RID)[0])
    assert "systemctl --user daemon-reload" not in host.calls()
    assert "systemctl --user restart shop@green.service" in host.calls()


@pytest.mark.parametrize("scope", ["system", "user"])
def test_stopping_a_slot_disables_it_and_is_a_no_op_without_the_template(
    host: SlotHost, scope: str
):
    m = manager(root=host.root, systemd={"scope": scope})
    host.permit(m)
    res = host.run(m.stop_slot(GREEN))
    assert res.returncode == 0, res.stderr
    stop = (
        "sudo /usr/bin/systemctl disable --now shop@green.service"
        if scope == "system"
        else "systemctl --user disable --now shop@green.service"
    )
    assert stop in host.calls()
    res = host.run(m.stop_slot(GREEN), LOAD_STATE="not-found")
    assert res.returncode == 0, res.stderr
    assert not any("disable" in c for c in host.calls())


def test_system_slot_logs_read_the_fixed_sudo_line(host: SlotHost):
    m = manager(root=host.root)
    host.permit(m)
    res = host.run(m.slot_logs(GREEN, 2))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["249", "250"]
    assert host.calls() == [
        "sudo /usr/bin/journalctl -u shop@green.service -n 200 --no-pager -o cat"
    ]


# ---------------------------------------------------------------------------- preflight

BG = BASE + "strategy: {kind: blue-green, slots: {blue: 3001, green: 3002}}\n"


def test_the_preflight_asks_sudo_for_every_command_of_the_slots_allowlist(host: SlotHost):
    m = manager(BG, root=host.root)
    assert m.sudoers() == m.sudoers(slots=True)  # a blue-green inventory: the slots' lines
    (probe,) = m.slots_allowlist_probe()
    host.permit(m)

    def answers() -> str:
        # the fake host installs units under tmp_path; the judge knows the real path
        res = host.run(probe)
        assert res.returncode == 0, res.stderr
        return res.stdout.replace(str(host.installed), SYSTEM_TEMPLATE)

    (check,) = m.judge_slots_allowlist(answers())
    assert host.calls() == []  # `sudo -l` only answers: nothing ran
    assert check.ok and check.name == "systemd slots allowlist"
    assert check.detail == "deploy may run the 12 commands of the slots (sudo -n)"

    # the in-place allowlist is installed instead: the check says what is missing and the fix
    # is the exact lines
    host.allow.write_text(
        "\n".join(line.split("NOPASSWD: ", 1)[1] for line in m.sudoers(slots=False)) + "\n"
    )
    (check,) = m.judge_slots_allowlist(answers())
    assert not check.ok
    template = str(host.root / ".releasegate/systemd/shop@.service")
    assert check.detail == (
        f"deploy may not run `sudo -n /usr/bin/install -m 0644 {template} "
        f"{SYSTEM_TEMPLATE}` and 10 more"
    )  # daemon-reload is in both allowlists
    assert "/etc/sudoers.d/releasegate-shop" in check.fix
    assert all(line in check.fix for line in m.sudoers(slots=True))
    # nothing readable (the probe did not run): not allowed
    (check,) = m.judge_slots_allowlist("")
    assert not check.ok


def test_user_scope_needs_no_allowlist():
    m = manager(BG, systemd={"scope": "user"})
    assert m.slots_allowlist_probe() == [] and m.judge_slots_allowlist("") == []


def test_the_blue_green_preflight_carries_the_systemd_check():
    from deploy.host import HostOps
    from deploy.journal import HostState
    from deploy.strategies.blue_green import PREFLIGHT_MARK, BlueGreen
    from tests.fakehost import FakeClock

    m = manager(BG)
    ops = HostOps(inventory=m.inventory, remote=None, manager=m, layout=m.layout, actor="t")  # type: ignore[arg-type]
    way = BlueGreen(
        host=ops,
        state=HostState(False, None, frozenset(), frozenset(), frozenset(), None),
        http=None,  # type: ignore[arg-type]
        clock=FakeClock(),
        reporter=None,  # type: ignore[arg-type]
    )
    steps = way.preflight_probe()
    assert steps[0].name == "systemd.allowlist"  # its own section, before the front door's
    section = "@@systemd-allowlist\n" + "".join(
        f"no {line.split('NOPASSWD: ', 1)[1]}\n" for line in m.sudoers()
    )
    checks = way.preflight_checks(section + PREFLIGHT_MARK + "\n")
    failed = [c for c in checks if c.name == "systemd slots allowlist"]
    assert len(failed) == 1 and not failed[0].ok


@pytest.mark.parametrize("scope", ["system", "user"])
def test_setup_shows_root_the_slots_allowlist_of_a_systemd_app(tmp_path: Path, scope: str):
    from deploy import flow
    from deploy.flow import Deps
    from deploy.report import RecordingReporter
    from tests.fakehost import FakeClock, FakeHost, FakeRemote

    m = manager(BG, systemd={"scope": scope})
    clock = FakeClock()
    remote = FakeRemote(FakeHost(), clock)
    reporter = RecordingReporter()
    deps = Deps(
        inventory=m.inventory,
        remote=remote,
        reporter=reporter,
        clock=clock,
        actor="tester",
        workdir=tmp_path,
    )
    summary = flow.setup_front_door(deps, flow.host_ops(deps))
    assert "wrote /srv/shop/.releasegate/nginx/upstream.conf" in summary
    text = "\n".join(reporter.lines)
    if scope == "system":
        assert "/etc/sudoers.d/releasegate-shop" in text
        assert all(f"\n{line}" in text for line in m.sudoers(slots=True))
    else:
        assert "systemd slots' allowlist" not in text  # user scope: no root at all
