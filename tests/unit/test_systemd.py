"""The systemd manager: inventory rules, rendered units (checked by systemd-analyze verify),
the exact commands and sudoers allowlist, and the host scripts run here against fake
`sudo`/`systemctl` binaries that enforce that allowlist and record what ran."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml

from deploy import inventory, proxy, sandbox
from deploy.commands import Cmd
from deploy.errors import ConfigError
from deploy.inventory import Inventory
from deploy.model import Layout
from deploy.process import Pm2, Systemd, manager_for
from deploy.process.pm2 import describe_jlist
from deploy.process.systemd import exec_word, parse_show

ROOT = Path(__file__).resolve().parents[2]
RID = "20261122120000-abcdef1"
RID2 = "20261122130000-1234567"
BASE = """
hosts: [{name: web1, address: 10.0.0.5, user: deploy, root: /srv/shop}]
app: {name: shop}
process:
  manager: systemd
  command: server.js --name "two words"
  interpreter: node
  port: 3000
  env: {NODE_ENV: production}
  systemd: {scope: system}
"""


def inv(text: str = BASE, **process: object) -> Inventory:
    data = yaml.safe_load(text)
    data["process"].update(process)
    return inventory.parse(yaml.safe_dump(data), source=Path("inventories/prod.yml"), env="prod")


def manager(text: str = BASE, root: str | Path = "/srv/shop", **process: object) -> Systemd:
    m = manager_for(inv(text, **process), Layout(PurePosixPath(str(root))))
    assert isinstance(m, Systemd)
    return m


def err(**process: object) -> str:
    with pytest.raises(ConfigError) as exc:
        inv(**process)
    return exc.value.message


# ---------------------------------------------------------------------------- inventory


def test_manager_for_picks_by_inventory():
    assert isinstance(manager(), Systemd)
    pm2 = manager_for(inv(manager="pm2", systemd=None), Layout(PurePosixPath("/srv/shop")))
    assert isinstance(pm2, Pm2)


def test_systemd_needs_its_section_with_a_scope():
    assert "needs a systemd: section choosing the scope" in err(systemd=None)
    assert "process.systemd.scope: is required" in err(systemd={})
    assert "process.systemd.scope" in err(systemd={"scope": "global"})


@pytest.mark.parametrize(
    ("process", "expected"),
    [
        ({"instances": 4}, "instances: 4 is PM2 cluster mode"),
        ({"pm2": "/usr/bin/pm2"}, "pm2: only applies to manager: pm2"),
        ({"manager": "pm2"}, "systemd: only applies to manager: systemd"),
        ({"systemd": {"scope": "user", "group": "www-data"}}, "group: only applies to scope"),
        ({"systemd": {"scope": "system", "restart": "sometimes"}}, "process.systemd.restart"),
        ({"systemd": {"scope": "system", "user": "root"}}, "process.systemd.user: unknown key"),
        ({"command": 'server.js "a\nExecStartPre=/bin/evil"'}, "without control characters"),
        ({"interpreter": "-/usr/bin/node"}, "process.interpreter"),
        ({"interpreter": "@/usr/bin/node"}, "process.interpreter"),
    ],
)
def test_keys_of_the_other_manager_and_unsafe_values_are_refused(process, expected):
    msg = err(**process)
    assert "inventories/prod.yml" in msg and expected in msg


def test_instances_one_is_accepted_under_systemd():
    assert inv(instances=1).process.instances == 1


# ---------------------------------------------------------------------------- rendering


def test_unit_goes_through_current_and_names_no_release():
    m = manager()
    files = m.config_files(RID)
    unit = files[".releasegate.service"]
    assert "WorkingDirectory=/srv/shop/current\n" in unit
    # one environment: the release's own snapshot, nothing shared that a deploy rewrites
    assert "shared/.env" not in unit
    assert unit.count("EnvironmentFile=") == 1
    assert "EnvironmentFile=/srv/shop/current/.releasegate.env\n" in unit
    assert 'ExecStart=node server.js --name "two words"\n' in unit
    assert "User=deploy\n" in unit and "WantedBy=multi-user.target" in unit
    assert "Restart=always\n" in unit and "RestartSec=1000ms\n" in unit
    assert "TimeoutStopSec=5000ms\n" in unit
    assert RID not in unit
    # the release's environment (written by the ship, deploy/release_env.py) carries what
    # changes per release, so the unit of the next release is byte-identical: no
    # daemon-reload for it
    assert m.config_files(RID2)[".releasegate.service"] == unit


def test_user_scope_unit_has_no_user_and_wants_default_target():
    unit = manager(systemd={"scope": "user"}).render_unit()
    assert "User=" not in unit and "Group=" not in unit
    assert "After=network.target" not in unit
    assert "WantedBy=default.target" in unit


def test_without_interpreter_the_script_itself_runs_through_current():
    m = manager(command="bin/server --port-from-env", interpreter=None)
    assert m.exec_start() == "/srv/shop/current/bin/server --port-from-env"


@pytest.mark.parametrize(
    ("word", "rendered"),
    [
        ("server.js", "server.js"),
        ("--opt=a,b:c", "--opt=a,b:c"),
        ("two words", '"two words"'),
        ("50%", '"50%%"'),
        ("$HOME", '"$$HOME"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
        (";", '";"'),
        ("", '""'),
    ],
)
def test_exec_words_are_quoted_for_systemd(word, rendered):
    assert exec_word(word) == rendered


# ---------------------------------------------------------------------------- systemd-analyze


def verify(unit_text: str, tmp_path: Path, *, user: bool = False, name: str = "shop") -> str:
    """systemd-analyze verify exits 0 on unknown keys and only warns on stderr, so any
    stderr output counts as a problem. Returns stderr (empty when the unit is clean)."""
    work = tmp_path / "verify"
    work.mkdir(exist_ok=True)
    path = work / f"{name}.service"
    path.write_text(unit_text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    res = subprocess.run(
        ["/usr/bin/systemd-analyze", "verify", *(["--user"] if user else []), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"},
    )
    problems = res.stderr.strip()
    if res.returncode != 0 and not problems:
        problems = f"exit {res.returncode}: {res.stdout.strip()}"
    return problems


@pytest.mark.parametrize(
    "process",
    [
        {},
        {"systemd": {"scope": "system", "group": "www-data", "restart": "on-failure"}},
        {"systemd": {"scope": "user", "restart": "no", "restart_sec": 0.25}},
        {"command": 'server.js "50% $HOME" \'say "hi"\' ;', "env": {"Q": 'x"y\\z $A %n'}},
        {"interpreter": "/usr/bin/env", "kill_timeout_ms": 120000},
    ],
)
def test_rendered_units_pass_systemd_analyze_verify(process, tmp_path):
    m = manager(**process)
    assert verify(m.render_unit(), tmp_path, user=not m.system) == ""


def test_unit_running_a_release_executable_passes_verify(tmp_path):
    # ExecStart is then <root>/current/<script>; verify checks that it exists and is executable.
    root = tmp_path / "srv"
    (root / "releases" / RID / "bin").mkdir(parents=True)
    exe = root / "releases" / RID / "bin" / "server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "current").symlink_to(f"releases/{RID}")
    m = manager(root=root, command="bin/server", interpreter=None)
    assert verify(m.render_unit(), tmp_path) == ""


def test_shipped_systemd_inventory_renders_a_clean_unit(tmp_path):
    inv_ = inventory.load("local-systemd", ROOT / "inventories")
    m = manager_for(inv_, Layout(PurePosixPath(inv_.host.root)))
    assert isinstance(m, Systemd) and m.system
    assert verify(m.render_unit(), tmp_path, name="sampleapp-sd") == ""


def test_verify_check_catches_a_misspelt_key(tmp_path):
    # Proves the stderr rule above: the exit code alone would have passed this unit.
    unit = manager().render_unit().replace("Restart=always", "Restrt=always")
    assert "Unknown key" in verify(unit, tmp_path)


# ---------------------------------------------------------------------------- commands


def test_reading_state_needs_no_sudo_and_changes_do():
    m = manager()
    assert m.snapshot().render() == (
        "/usr/bin/systemctl show --property=LoadState,ActiveState,SubState,MainPID,NRestarts "
        "shop.service"
    )
    assert m.describe().render() == (
        "/usr/bin/systemctl status --no-pager --full --lines=0 shop.service"
    )
    assert m.stop().render() == "sudo -n /usr/bin/systemctl stop shop.service"
    persist = m.persist()
    assert persist is not None
    assert persist.render() == "sudo -n /usr/bin/systemctl enable shop.service"


def test_user_scope_commands_use_systemctl_user():
    m = manager(systemd={"scope": "user"})
    assert m.stop().render() == "systemctl --user stop shop.service"
    persist = m.persist()
    assert persist is not None and persist.render() == "systemctl --user enable shop.service"
    assert m.snapshot().argv[:3] == ("systemctl", "--user", "show")
    assert m.logs(30).render() == ("journalctl --user -u shop.service -n 30 --no-pager -o cat")
    assert m.sudoers() == []


def test_sudoers_allowlist_is_exact():
    assert manager().sudoers() == [
        "deploy ALL=(root) NOPASSWD: /usr/bin/install -m 0644 "
        "/srv/shop/.releasegate/systemd/shop.service /etc/systemd/system/shop.service",
        "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl daemon-reload",
        "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl reset-failed shop.service",
        "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart shop.service",
        "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl stop shop.service",
        "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl enable shop.service",
        "deploy ALL=(root) NOPASSWD: /usr/bin/journalctl -u shop.service -n 200 --no-pager -o cat",
    ]


def test_every_plain_sudo_command_is_in_the_allowlist():
    m = manager()
    allowed = {line.split("NOPASSWD: ", 1)[1] for line in m.sudoers()}
    persist = m.persist()
    assert persist is not None
    for cmd in (m.stop(), persist):
        assert cmd.argv[:2] == ("sudo", "-n")
        assert " ".join(cmd.argv[2:]) in allowed


def test_sandbox_sudoers_is_exactly_the_example_inventorys_allowlist():
    inv_ = inventory.load("local-systemd", ROOT / "inventories")
    m = manager_for(inv_, Layout(PurePosixPath(inv_.host.root)))
    assert isinstance(m, Systemd)
    text = sandbox.sudoers_text(inv_.host.user)
    # the systemd example's allowlist, then nginx's for blue/green (docs/blue-green.md)
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        *m.sudoers(),
        *proxy.sudoers_lines(inv_.host.user),
    ]


def test_docs_print_the_allowlist_the_code_uses():
    docs = (ROOT / "docs" / "systemd.md").read_text()
    example = yaml.safe_load((ROOT / "inventories" / "example.yml").read_text())
    example["process"] = {
        "manager": "systemd",
        "command": "server.js",
        "port": 3000,
        "systemd": {"scope": "system"},
    }
    inv_ = inventory.parse(yaml.safe_dump(example), source=Path("x.yml"), env="x")
    m = manager_for(inv_, Layout(PurePosixPath(inv_.host.root)))
    assert isinstance(m, Systemd)
    for line in m.sudoers():
        assert f"\n{line}\n" in docs
    generic = manager_for(inv_, Layout(PurePosixPath("ROOT"))).sudoers()
    for line in generic:
        placeholder = line.replace("deploy ALL", "USER ALL").replace("shop-api", "APP")
        assert f"\n{placeholder}\n" in docs


def test_logs_lines_are_bounded_by_the_fixed_sudo_line():
    with pytest.raises(ValueError, match=r"1\.\.200"):
        manager().logs(500)


# ---------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize(
    ("show", "status", "pids", "restarts"),
    [
        ("ActiveState=active\nSubState=running\nMainPID=812\nNRestarts=0\n", "online", (812,), 0),
        (
            "ActiveState=activating\nSubState=auto-restart\nMainPID=0\nNRestarts=3\n",
            "restarting",
            (),
            3,
        ),
        ("ActiveState=failed\nSubState=failed\nMainPID=0\nNRestarts=4\n", "errored", (), 4),
        ("ActiveState=inactive\nSubState=dead\nMainPID=0\nNRestarts=0\n", "stopped", (), 0),
        ("LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n", "missing", (), 0),
        (
            "ActiveState=activating\nSubState=start\nMainPID=77\nNRestarts=0\n",
            "launching",
            (77,),
            0,
        ),
        ("", "unknown", (), 0),
    ],
)
def test_show_output_maps_to_the_gates_words(show, status, pids, restarts):
    snap = parse_show(show)
    assert (snap.status, snap.pids, snap.restarts) == (status, pids, restarts)


# ---------------------------------------------------------------------------- host scripts

FAKE_SUDO = r"""#!/bin/sh
# sudo as sudoers would behave with exactly the lines in $ALLOW: `-n` required, arguments
# must match a line exactly; `-l CMD` only answers. Allowed commands are recorded in $LOG.
[ "$1" = -n ] || { echo "fake sudo: -n missing, would prompt" >&2; exit 2; }
shift
listing=
if [ "$1" = -l ]; then listing=1; shift; fi
if ! grep -qxF -- "$*" "$ALLOW"; then echo "sudo: a password is required" >&2; exit 1; fi
[ -n "$listing" ] && exit 0
echo "sudo $*" >>"$LOG"
case "$1" in
  /usr/bin/install) shift; exec install "$@" ;;
  /usr/bin/journalctl) seq 1 250 ;;
esac
"""

FAKE_SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >>"$LOG"
case "$*" in *NeedDaemonReload*) echo "${NEED_RELOAD:-no}" ;; esac
"""


@dataclass
class FakeHost:
    """A deploy root in tmp_path, fake sudo/systemctl on PATH, and the record of calls."""

    tmp: Path
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

    def run(self, cmd: Cmd, **env: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        argv = [
            a.replace("/etc/systemd/system/shop.service", str(self.installed)) for a in cmd.argv
        ]
        line = shlex.join(argv)
        return subprocess.run(
            ["sh", "-c", line], capture_output=True, text=True, env={**self.env, **env}, timeout=30
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sudo", FAKE_SUDO), ("systemctl", FAKE_SYSTEMCTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    root = tmp_path / "srv"
    (root / ".releasegate").mkdir(parents=True)
    installed = tmp_path / "etc-systemd-system" / "shop.service"
    installed.parent.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "calls.log"
    allow = tmp_path / "allow"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(home),
        "LOG": str(log),
        "ALLOW": str(allow),
    }
    return FakeHost(tmp_path, root, installed, allow, log, env)


def allow(fake: FakeHost, m: Systemd) -> None:
    lines = [line.split("NOPASSWD: ", 1)[1] for line in m.sudoers()]
    text = "\n".join(lines).replace("/etc/systemd/system/shop.service", str(fake.installed))
    fake.allow.write_text(text + "\n")


def test_system_activate_installs_and_reloads_only_when_the_unit_changed(fake: FakeHost):
    m = manager(root=fake.root)
    allow(fake, m)
    fake.release(RID, m)
    res = fake.run(m.activate(RID)[0])
    assert res.returncode == 0, res.stderr
    staged = fake.root / ".releasegate/systemd/shop.service"
    assert fake.calls() == [
        f"sudo /usr/bin/install -m 0644 {staged} {fake.installed}",
        "sudo /usr/bin/systemctl daemon-reload",
        "sudo /usr/bin/systemctl reset-failed shop.service",
        "sudo /usr/bin/systemctl restart shop.service",
    ]
    assert fake.installed.read_text() == m.render_unit()
    assert "unit changed" in res.stdout

    # the next release carries the same unit: restart only
    fake.release(RID2, m)
    res = fake.run(m.activate(RID2)[0])
    assert res.returncode == 0, res.stderr
    assert [c for c in fake.calls() if c.startswith("sudo")] == [
        "sudo /usr/bin/systemctl reset-failed shop.service",
        "sudo /usr/bin/systemctl restart shop.service",
    ]

    # systemd never loaded the installed file (e.g. an interrupted run): reload, no install
    res = fake.run(m.activate(RID2)[0], NEED_RELOAD="yes")
    assert res.returncode == 0, res.stderr
    assert "sudo /usr/bin/systemctl daemon-reload" in fake.calls()
    assert not any("install" in c for c in fake.calls())

    # a changed inventory setting changes the unit: install + daemon-reload again
    changed = manager(root=fake.root, systemd={"scope": "system", "restart": "on-failure"})
    rid3 = "20261122140000-7654321"
    fake.release(rid3, changed)
    res = fake.run(changed.activate(rid3)[0])
    assert res.returncode == 0, res.stderr
    assert "sudo /usr/bin/systemctl daemon-reload" in fake.calls()
    assert "Restart=on-failure" in fake.installed.read_text()


def test_system_activate_without_the_allowlist_says_how_to_fix_and_changes_nothing(
    fake: FakeHost,
):
    m = manager(root=fake.root)
    fake.allow.write_text("")
    fake.release(RID, m)
    res = fake.run(m.activate(RID)[0])
    assert res.returncode == 4
    assert "sudoers allowlist" in res.stderr and "docs/systemd.md" in res.stderr
    assert fake.calls() == []
    assert not fake.installed.exists()


def test_activate_of_a_release_shipped_for_pm2_is_refused(fake: FakeHost):
    m = manager(root=fake.root)
    allow(fake, m)
    (fake.root / "releases" / RID).mkdir(parents=True)
    res = fake.run(m.activate(RID)[0])
    assert res.returncode == 3
    assert "not shipped for systemd" in res.stderr
    assert not any("restart" in c for c in fake.calls())


def test_user_activate_installs_under_home_and_reloads_only_on_change(fake: FakeHost):
    m = manager(root=fake.root, systemd={"scope": "user"})
    fake.release(RID, m)
    res = fake.run(m.activate(RID)[0])
    assert res.returncode == 0, res.stderr
    dest = Path(fake.env["HOME"]) / ".config/systemd/user/shop.service"
    assert dest.read_text() == m.render_unit()
    assert fake.calls() == [
        "systemctl --user daemon-reload",
        "systemctl --user reset-failed shop.service",
        "systemctl --user restart shop.service",
    ]
    fake.release(RID2, m)
    res = fake.run(m.activate(RID2)[0])
    assert res.returncode == 0, res.stderr
    assert "systemctl --user daemon-reload" not in fake.calls()
    assert "systemctl --user restart shop.service" in fake.calls()


def test_system_logs_read_the_fixed_sudo_line_and_trim(fake: FakeHost):
    m = manager(root=fake.root)
    allow(fake, m)
    res = fake.run(m.logs(3))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["248", "249", "250"]
    assert fake.calls() == ["sudo /usr/bin/journalctl -u shop.service -n 200 --no-pager -o cat"]
    fake.allow.write_text("")
    res = fake.run(m.logs(3))
    assert res.returncode == 1 and "password is required" in res.stderr


# ---------------------------------------------------------------------------- PM2 forensics


def test_pm2_logs_tail_both_log_files(fake: FakeHost):
    pm2_home = fake.tmp / "pm2home"
    (pm2_home / "logs").mkdir(parents=True)
    (pm2_home / "logs" / "shop-out.log").write_text("".join(f"out {n}\n" for n in range(9)))
    pm2 = manager_for(inv(manager="pm2", systemd=None), Layout(PurePosixPath("/srv/shop")))
    res = fake.run(pm2.logs(2), PM2_HOME=str(pm2_home))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"==> {pm2_home}/logs/shop-out.log <==",
        "out 7",
        "out 8",
        f"==> {pm2_home}/logs/shop-error.log <==",
        "(no such file)",
    ]


def test_pm2_describe_shows_state_but_never_the_environment():
    jlist = [
        {
            "name": "shop",
            "pid": 0,
            "pm2_env": {
                "pm_id": 3,
                "status": "errored",
                "restart_time": 15,
                "unstable_restarts": 2,
                "exit_code": 1,
                "exec_mode": "cluster_mode",
                "pm_cwd": "/srv/shop/current",
                "pm_uptime": 1795382923419,
                "API_TOKEN": "s3cret-value",
                "env": {"API_TOKEN": "s3cret-value"},
            },
        },
        {"name": "other", "pid": 9, "pm2_env": {"status": "online"}},
    ]
    text = describe_jlist("[PM2] Spawning PM2 daemon\n" + json.dumps(jlist), "shop")
    assert text == (
        "shop[3] errored: pid -, 15 restarts, 2 unstable, last exit code 1, cluster mode, "
        "since 2026-11-22T21:28:43Z, cwd /srv/shop/current"
    )
    assert "s3cret" not in text
    assert describe_jlist("[]", "shop") == "PM2 has no process named shop"
