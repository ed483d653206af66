"""Per-instance process state (PM2 jlist, systemctl show) and the host-side identity read."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from deploy import commands
from deploy.host import parse_identity
from deploy.model import Instance
from deploy.process.pm2 import parse_jlist
from deploy.process.systemd import parse_show


def jlist(*entries: tuple[int, str, int, int], name: str = "shop") -> str:
    """(pm_id, status, pid, restart_time) per instance, as `pm2 jlist` prints them."""
    return json.dumps(
        [
            {
                "name": name,
                "pm_id": pm_id,
                "pid": pid,
                "pm2_env": {"status": status, "restart_time": restarts, "pm_id": pm_id},
            }
            for pm_id, status, pid, restarts in entries
        ]
    )


def test_jlist_keeps_every_instance():
    snap = parse_jlist(jlist((3, "online", 11, 1), (4, "online", 12, 2)), "shop")
    assert snap.instances == (Instance(3, "online", 11, 1), Instance(4, "online", 12, 2))
    assert (snap.status, snap.pids, snap.restarts) == ("online", (11, 12), 3)
    assert snap.all_up(2)
    assert not snap.all_up(3)  # process.instances: 3 but PM2 runs two


@pytest.mark.parametrize(
    ("status", "pid"),
    [("stopping", 12), ("launching", 12), ("waiting restart", 0), ("online", 0), ("errored", 0)],
)
def test_an_instance_that_is_not_online_with_a_pid_is_not_up(status, pid):
    snap = parse_jlist(jlist((0, "online", 11, 0), (1, status, pid, 1)), "shop")
    other = snap.instances[1]
    assert (other.status, other.pid, other.up) == (status, pid, False)
    assert not snap.all_up(2)
    assert snap.instances[0].up


def test_aggregate_status_is_unchanged_for_the_fail_fast_rules():
    assert parse_jlist(jlist((0, "online", 1, 0), (1, "errored", 0, 4)), "shop").status == "errored"
    assert parse_jlist(jlist((0, "online", 1, 0), (1, "launching", 2, 0)), "shop").status == (
        "launching"
    )
    assert parse_jlist(jlist((0, "stopped", 0, 0)), "shop").status == "stopped"
    assert parse_jlist("[]", "shop").status == "missing"


def test_a_pid_change_or_a_restart_changes_the_fingerprint():
    before = parse_jlist(jlist((0, "online", 11, 5), (1, "online", 12, 5)), "shop")
    same = parse_jlist(jlist((0, "online", 11, 5), (1, "online", 12, 5)), "shop")
    restarted = parse_jlist(jlist((0, "online", 11, 5), (1, "online", 99, 6)), "shop")
    assert before.fingerprint() == same.fingerprint()
    assert before.fingerprint() != restarted.fingerprint()
    assert restarted.restarts_since(before) == 1


def test_jlist_without_pm_id_numbers_instances_in_order():
    out = '[{"name":"shop","pid":7,"pm2_env":{"status":"online","restart_time":0}}]'
    assert parse_jlist(out, "shop").instances == (Instance(0, "online", 7, 0),)


@pytest.mark.parametrize(
    ("show", "up"),
    [
        ("ActiveState=active\nSubState=running\nMainPID=812\nNRestarts=2\n", True),
        ("ActiveState=activating\nSubState=auto-restart\nMainPID=0\nNRestarts=3\n", False),
        ("ActiveState=deactivating\nSubState=stop-sigterm\nMainPID=812\nNRestarts=0\n", False),
        ("ActiveState=activating\nSubState=start\nMainPID=77\nNRestarts=0\n", False),
    ],
)
def test_systemd_unit_is_one_instance(show, up):
    snap = parse_show(show)
    assert len(snap.instances) == 1
    assert snap.all_up(1) is up


# ---------------------------------------------------------------- identity read, run for real


def test_identity_read_is_one_command_with_values_as_parameters():
    rid = "20261122120000-abcdef1"
    cmd = commands.process_identity(PurePosixPath(f"/srv/app/releases/{rid}"), [11, 12])
    assert cmd.name == "process.identity"
    assert cmd.argv[:2] == ("sh", "-c") and cmd.argv[3:] == (
        "releasegate",
        f"/srv/app/releases/{rid}",
        "11",
        "12",
    )
    assert cmd.display == f"read cwd of pids 11 12 and the manifest of {rid}"


def test_identity_script_resolves_a_symlinked_root_on_the_host(tmp_path: Path):
    """/srv/app -> /data/srv/app: the cwd /proc shows is the physical path; the script reads
    it together with the release directory resolved the same way, and the manifest."""
    rid = "20261122120000-abcdef1"
    real = tmp_path / "data" / "srv" / "app"
    release = real / "releases" / rid
    release.mkdir(parents=True)
    (release / ".release.json").write_text(
        json.dumps({"id": rid, "revision": "abcdef1" + "0" * 33, "tags": ["v1"]}, indent=2)
    )
    link = tmp_path / "srv-app"
    link.symlink_to(real)
    sleeper = subprocess.Popen(["sleep", "30"], cwd=release)
    try:
        cmd = commands.process_identity(PurePosixPath(link) / "releases" / rid, [sleeper.pid])
        out = subprocess.run(
            ["sh", "-c", cmd.render()], capture_output=True, text=True, check=True
        ).stdout
    finally:
        sleeper.kill()
        sleeper.wait()
    facts = parse_identity(out)
    assert facts.release_dir == os.path.realpath(release)
    assert facts.cwds == {sleeper.pid: os.path.realpath(release)}
    assert facts.revision == "abcdef1" + "0" * 33 and facts.tags == ("v1",)


def test_identity_script_on_a_missing_release_and_unknown_pid(tmp_path: Path):
    cmd = commands.process_identity(PurePosixPath(tmp_path) / "nope", [999999999])
    out = subprocess.run(["sh", "-c", cmd.render()], capture_output=True, text=True).stdout
    facts = parse_identity(out)
    assert facts.release_dir is None
    assert facts.cwds == {999999999: "-"}
    assert facts.manifest == {} and facts.revision is None
