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

    def __init__(self, t: Target, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = cli(t, *args, env=env)
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
    # each would hold the lock for a few seconds (a slow readiness), so the two really contend
    demo.commit_fault(target.repo, "slow_ready:4")
    runs = [Running(target, "deploy", "test"), Running(target, "deploy", "test")]
    codes = sorted(run.wait() for run in runs)
    outputs = "\n---\n".join(run.output for run in runs)
    # whichever ended first: exactly one promoted, the other was refused by the held lock
    assert codes == [0, 4], outputs
    winner = next(run for run in runs if run.proc.returncode == 0)
    loser = next(run for run in runs if run.proc.returncode == 4)
    assert "is held by" in loser.output and "lease expires in" in loser.output
    promoted = [e["release"] for e in target.journal() if e["detail"].get("result") == "promoted"]
    assert target.current() == promoted[-1] and promoted[-1] in winner.output
    # the loser left the winner's lock alone: never broken, released by its owner
    assert "lock-broken" not in [e["op"] for e in target.journal()]
    assert "no longer ours" not in winner.output
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


ELSEWHERE = {"RELEASEGATE_MACHINE": "ci-runner-elsewhere"}  # a second machine's lock records


def lock_times(t: Target) -> tuple[int, int] | None:
    """(acquired, last renewal) of the lock on the host, by the host's clock."""
    out = t.ssh(
        f"cd {t.root}/.releasegate/lock 2>/dev/null && for d in */; do "
        f"stat -c %Y $d/owner.json $d/lease; done",
        check=False,
    ).stdout.split()
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def test_a_runner_killed_elsewhere_loses_the_lock_when_its_lease_ends(target: Target):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    target.update("lock", lease=12)
    target.update("health", deadline=60)
    demo.commit_fault(target.repo, "slow_ready:600")
    run = Running(target, "deploy", "test", env=ELSEWHERE)
    wait_until(lambda: run.saw("gate ") and run.saw("…"), 60, "the gate stage")
    run.proc.kill()  # a cancelled CI job: SIGKILL, no cleanup
    run.wait()
    killed = target.current()
    assert killed != good and target.state_of(killed) == "active-unverified"

    # Its process is on another machine, so only the lease can free the lock: while the lease
    # lives, the next run is refused and told when it ends.
    target.update("health", deadline=6)
    demo.commit_fault(target.repo, "")
    early = Running(target, "deploy", "test")
    assert early.wait() == 4, early.output
    assert "ci-runner-elsewhere" in early.output and "lease expires in" in early.output
    assert target.current() == killed and target.lock_exists()

    # Once it ends, the next run breaks it (journaled) and gates the unverified release first.
    later = Running(target, "deploy", "test", "--lock-wait", "60")
    assert later.wait() == 0, later.output
    journal = target.journal()
    ops = [e["op"] for e in journal]
    broken = journal[ops.index("lock-broken")]
    assert broken["detail"]["holder"]["host"] == "ci-runner-elsewhere"
    assert "lease expired" in broken["detail"]["reason"]
    bad_at = next(
        i for i, e in enumerate(journal) if e["release"] == killed and e["state"] == "bad"
    )
    assert ops.index("lock-broken") < bad_at  # gated (and failed) after the break, never assumed
    newest = target.current()
    assert newest not in (good, killed) and target.state_of(newest) == "good"
    assert target.version()["release"] == newest
    assert not target.lock_exists()


def test_a_long_install_does_not_let_the_lease_lapse(target: Target):
    lease = 3
    target.update("lock", lease=lease)
    install = target.data["app"]["install"]
    target.update("app", install=f"sleep 10.25 && {install}", reuse_deps=False)
    run = Running(target, "deploy", "test")

    def renewed_past_the_first_lease() -> bool:
        times = lock_times(target)
        return times is not None and times[1] > times[0] + lease + 2

    # one command (the install) runs all along, and the lease is renewed meanwhile
    wait_until(renewed_past_the_first_lease, 60, "a renewal past the first lease", every=0.5)
    assert target.ssh("pgrep -f 'sleep 10[.]25'", check=False).returncode == 0
    contender = Running(target, "deploy", "test")
    assert contender.wait() == 4, contender.output
    assert "lease expires in" in contender.output
    assert run.wait() == 0, run.output
    assert "lock-broken" not in [e["op"] for e in target.journal()]
