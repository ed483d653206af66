"""Bad days on a real host: races, signals at several phases, a killed orchestrator, manual
locks, hostile histories for pruning, hostile arguments — host state checked after each."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from deploy import demo
from tests.conftest import wait_until
from tests.integration.conftest import Target
from tests.integration.test_deploy import cli, deploy, released

pytestmark = pytest.mark.integration


class Running:
    """A `releasegate` CLI process whose output is collected as it comes."""

    def __init__(self, t: Target, *args: str) -> None:
        self.proc = cli(t, *args)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def partials(t: Target) -> list[str]:
    out = t.ssh(f"ls {t.root}/releases", check=False).stdout.split()
    return [name for name in out if name.endswith(".partial")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_ship_removes_partial_and_lock(target: Target, signum: int):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    # an install step that takes long enough to be interrupted
    target.update("app", install="sleep 30", reuse_deps=False)
    demo.commit_fault(target.repo, "")
    run = Running(target, "deploy", "test")
    wait_until(lambda: run.saw("ship ") and run.saw("…"), 60, "the ship stage")
    wait_until(
        lambda: target.ssh(f"ls -d {target.root}/releases/*.partial", check=False).returncode == 0,
        30,
        "the partial release on the host",
    )
    run.proc.send_signal(signum)
    assert run.wait() == 128 + signum, run.output
    assert target.current() == good
    assert target.version()["release"] == good
    assert partials(target) == []
    assert not target.lock_exists()


def test_sigterm_during_gate_rolls_back(target: Target):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    target.update("health", deadline=60)
    demo.commit_fault(target.repo, "slow_ready:60")
    run = Running(target, "deploy", "test")
    wait_until(lambda: run.saw("gate ") and run.saw("…"), 60, "the gate stage")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 143, run.output
    assert target.current() == good and target.version()["release"] == good
    assert not target.lock_exists()


def test_sigkill_after_switch_is_resolved_by_the_next_run(target: Target):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    target.update("health", deadline=60)
    demo.commit_fault(target.repo, "slow_ready:600")
    run = Running(target, "deploy", "test")
    wait_until(lambda: run.saw("gate ") and run.saw("…"), 60, "the gate stage")
    run.proc.kill()
    run.wait()
    killed = target.current()
    assert killed != good  # the switch happened; nobody verified it
    assert target.state_of(killed) == "active-unverified"
    assert target.lock_exists()  # a dead run's lock

    target.update("health", deadline=6)
    demo.commit_fault(target.repo, "")
    code, rep = deploy(target)
    assert code == 0, rep.lines
    newest = released(rep)
    assert target.current() == newest and target.version()["release"] == newest
    assert target.state_of(killed) == "bad"  # gated, failed, rolled back: never assumed good
    ops = [e["op"] for e in target.journal()]
    assert "lock-broken" in ops
    assert not target.lock_exists()


def test_two_deploys_racing_exactly_one_wins(target: Target):
    code, _ = deploy(target)
    assert code == 0
    demo.commit_fault(target.repo, "")
    first, second = Running(target, "deploy", "test"), Running(target, "deploy", "test")
    codes = {}
    loser = None
    # whoever loses exits 4 at once, while the winner still holds the lock
    wait_until(
        lambda: first.proc.poll() is not None or second.proc.poll() is not None,
        60,
        "one deploy to finish",
    )
    for run in (first, second):
        if run.proc.poll() is not None:
            loser = run
    assert loser is not None
    assert loser.wait() == 4, loser.output
    assert "is held by" in loser.output
    winner = second if loser is first else first
    if winner.proc.poll() is None:
        assert target.lock_exists()  # the loser left the winner's lock alone
    codes["winner"] = winner.wait()
    assert codes["winner"] == 0, winner.output
    assert not target.lock_exists()


def test_manual_lock_blocks_even_with_lock_wait(target: Target):
    code, _ = deploy(target)
    assert code == 0
    lock = Running(target, "lock", "test", "--message", "db migration in progress")
    assert lock.wait() == 0, lock.output
    demo.commit_fault(target.repo, "")
    run = Running(target, "deploy", "test", "--lock-wait", "300")
    assert run.wait(timeout=60) == 4, run.output
    assert "db migration in progress" in run.output
    unlock = Running(target, "unlock", "test")
    assert unlock.wait() == 0, unlock.output
    assert not target.lock_exists()


def test_pruning_with_a_hostile_history_keeps_current_and_last_good(target: Target):
    target.update("app", keep_releases=3)
    rids = []
    for fault in ["", "", "", "ready_503", "ready_503"]:
        (target.repo / "n.txt").write_text(str(len(rids)))
        code, rep = deploy(target, fault)
        rids.append(released(rep))
    # go back to the oldest good release by hand: current is now an old release
    rb = Running(target, "rollback", "test", "--to", rids[0])
    assert rb.wait() == 0, rb.output
    target.ssh(f"mkdir {target.root}/releases/backup-by-hand && touch {target.root}/releases/notes")
    target.update("app", keep_releases=2)
    (target.repo / "n.txt").write_text("last")
    code, rep = deploy(target, "")
    assert code == 0, rep.lines
    newest = released(rep)
    present = set(target.ssh(f"ls {target.root}/releases").stdout.split())
    assert newest in present and rids[0] in present  # current and the previous last good
    assert {"backup-by-hand", "notes"} <= present  # never what it does not recognise
    assert rids[3] not in present and rids[4] not in present  # bad ones went first
    assert rids[1] not in present and rids[2] not in present  # then good ones beyond 2
    assert target.current() == newest
    assert any("not a release releasegate made" in line for line in rep.lines)


@pytest.mark.parametrize(
    "args",
    [
        ["rollback", "test", "--to", "../../etc"],
        ["rollback", "test", "--to", "20261122120000-abcdef1; reboot"],
        ["deploy", "test", "--revision", "--upload-pack=touch /tmp/pwned"],
        ["deploy", "test", "--revision", "main;id"],
    ],
)
def test_hostile_arguments_are_refused_before_any_ssh(target: Target, args: list[str], tmp_path):
    # an unreachable host: if anything tried to connect, the exit code would be 5, not 2
    data = json.loads(json.dumps(target.data))
    data["hosts"][0]["address"] = "10.231.254.254"
    target.data = data
    target.write()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "--plain",
            "--inventories",
            str(target.inv_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def test_second_signal_during_rollback_is_acknowledged_and_ignored(target: Target):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    # the rollback's own gate must take a moment, so the second signal lands inside it
    target.update("health", deadline=60, successes=6, interval=0.5)
    demo.commit_fault(target.repo, "slow_ready:600")
    run = Running(target, "deploy", "test")
    wait_until(lambda: run.saw("gate ") and run.saw("…"), 60, "the gate stage")
    run.proc.send_signal(signal.SIGINT)
    wait_until(lambda: run.saw("roll back to"), 60, "the rollback")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == 130, run.output
    assert "received while making the host safe" in run.output
    assert target.current() == good and target.version()["release"] == good
    assert not target.lock_exists()
