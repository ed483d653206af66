"""Attacks through the real CLI: signals, a broken output pipe, lost SSH, hand edits on the
host mid-deploy — after each, the host's real state is checked against the promise."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from deploy import demo
from tests.conftest import wait_until
from tests.integration.conftest import Target
from tests.integration.test_deploy import deploy, released
from tests.integration.test_safety import Running

pytestmark = pytest.mark.integration


class Piped:
    """`releasegate … | tee log` in a terminal: the CLI writes into a pipe whose reader can be
    killed (Ctrl-C reaches the whole pipeline, tee dies with it)."""

    def __init__(self, t: Target, *args: str) -> None:
        self._read_end, write_end = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "--plain", "--inventories", str(t.inv_dir), *args],
            stdout=write_end,
            stderr=write_end,
        )
        os.close(write_end)
        self.text = ""
        self._cut = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._cut.is_set():
            ready, _, _ = select.select([self._read_end], [], [], 0.05)
            if ready:
                chunk = os.read(self._read_end, 65536)
                if not chunk:
                    break
                self.text += chunk.decode(errors="replace")
        os.close(self._read_end)

    def saw(self, text: str) -> bool:
        return text in self.text

    def cut(self) -> None:
        """The reader dies: every later write of the CLI meets a closed pipe."""
        self._cut.set()
        self._reader.join(timeout=5)


def as_root(t: Target, command: str) -> subprocess.CompletedProcess[str]:
    """The sandbox's root (same key): to do to sshd what a bad network does."""
    return subprocess.run(
        ["ssh", "-i", str(t.vps.identity_file), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={t.vps.known_hosts}",
         "-p", str(t.vps.port), f"root@{t.vps.address}", command],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_safe(t: Target, live: str) -> None:
    """The promise after any stop: `current` is a complete release, the processes run from it
    and it is ready; the lock is free."""
    assert t.current() == live
    t.ssh(f"test -f {t.root}/releases/{live}/.release.json")
    assert t.pm2_cwds() == {f"{t.root}/releases/{live}"}
    r = httpx.get(f"http://{t.vps.service_address}:{t.port}/health/ready", timeout=5)
    assert r.status_code == 200
    assert t.version()["release"] == live
    assert not t.lock_exists()


def at_gate(t: Target, run: Running) -> str:
    wait_until(lambda: run.saw("gate ") and run.saw("…"), 60, "the gate stage")
    return str(t.current())


def test_probe_sighup_during_gate(target: Target):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    target.update("health", deadline=60)
    demo.commit_fault(target.repo, "slow_ready:60")
    run = Running(target, "deploy", "test")
    at_gate(target, run)
    run.proc.send_signal(signal.SIGHUP)
    code = run.wait()
    print(run.output)
    print(json.dumps(target.journal()[-4:], indent=1))
    assert code == 129, run.output
    assert_safe(target, good)


def test_probe_sigint_with_a_closed_pipe_during_gate(target: Target):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    target.update("health", deadline=60)
    demo.commit_fault(target.repo, "slow_ready:60")
    run = Piped(target, "deploy", "test")
    wait_until(lambda: run.saw("gate ") and run.saw("…"), 60, "the gate stage")
    # `releasegate deploy | tee log` and Ctrl-C: tee dies with it, the pipe is closed
    run.cut()
    run.proc.send_signal(signal.SIGINT)
    code = run.proc.wait(timeout=120)
    print(json.dumps(target.journal()[-4:], indent=1))
    assert code == 130
    assert_safe(target, good)


def test_a_forced_unlock_mid_gate_stops_the_run_before_its_verdict(target: Target):
    """Someone runs `unlock --force` while a deploy is in its gate: from then on the run is no
    longer the host's owner, so it records no verdict and changes nothing live (exit 4); the
    release stays live and unverified, and the next deploy gates it before anything else."""
    code, rep = deploy(target)
    assert code == 0
    target.update("health", deadline=40)
    demo.commit_fault(target.repo, "slow_ready:12")
    run = Running(target, "deploy", "test")
    new = wait_until(
        lambda: run.saw("gate ") and run.saw("…") and target.current(), 60, "the gate stage"
    )
    forced = Running(target, "unlock", "test", "--force", "--reason", "looked stuck")
    assert forced.wait() == 0, forced.output
    assert run.wait() == 4, run.output
    assert "no longer holds the lock" in run.output
    assert target.current() == new
    assert target.state_of(new) == "active-unverified"  # never recorded good by a lockless run
    assert not target.lock_exists()

    demo.commit_fault(target.repo, "")
    code, rep = deploy(target)
    assert code == 0, rep.lines
    assert target.state_of(new) == "good"  # gated by the next run, its verdict recorded then
    assert_safe(target, released(rep))


def test_a_fallback_removed_mid_gate_is_reported_as_it_is(target: Target):
    """The release an automatic rollback goes back to is removed by hand during the gate: the
    switch back cannot happen. The outcome, the journal and the needs-human mark say what
    really serves — the failed release — never that the fallback does."""
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    demo.commit_fault(target.repo, "ready_503")
    run = Running(target, "deploy", "test")
    failed = wait_until(
        lambda: run.saw("gate ") and run.saw("…") and target.current(), 60, "the gate stage"
    )
    target.ssh(f"rm -rf {target.root}/releases/{good}")
    assert run.wait() == 6, run.output
    assert target.current() == failed  # still a complete release
    target.ssh(f"test -f {target.root}/releases/{failed}/.release.json")
    assert "switch back did not happen" in run.output
    assert f"`current` points to {good}" not in run.output
    journal = target.journal()
    marks = [e for e in journal if e["op"] == "needs-human"]
    assert marks and marks[-1]["detail"]["live"] == failed
    last_of_good = [e for e in journal if e["release"] == good and e["state"]][-1]
    assert last_of_good["state"] != "active-unverified"
    assert not target.lock_exists()


def test_a_link_cut_mid_gate_reconnects_and_gates_again(target: Target):
    """The SSH session's server process is killed mid-gate (what a dropped link does to a
    command in flight): the run reconnects and gates the release again from its start — a cut
    link says nothing about the release, so it is neither abandoned (exit 6) nor marked bad."""
    code, rep = deploy(target)
    assert code == 0
    target.update("health", deadline=30)
    demo.commit_fault(target.repo, "slow_ready:6")
    run = Running(target, "deploy", "test")
    wait_until(lambda: run.saw("gate ") and run.saw("…"), 60, "the gate stage")
    cut = as_root(target, "pkill -KILL -u deploy -f '^sshd: deploy'")
    assert cut.returncode == 0, cut.stderr  # at least the run's own session was cut
    assert run.wait() == 0, run.output
    new = str(target.current())
    assert target.state_of(new) == "good"
    assert_safe(target, new)


def test_ctrl_c_during_a_long_install_stops_at_once(target: Target):
    """Ctrl-C while the host runs a long install: the run stops now (the host's own timeout
    ends the install), not when the install would have ended, and nothing live changed."""
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    target.update("app", install="sleep 300.5", reuse_deps=False, install_timeout=300)
    demo.commit_fault(target.repo, "")
    run = Running(target, "deploy", "test")
    wait_until(
        lambda: target.ssh("pgrep -f 'sleep 300[.]5'", check=False).returncode == 0,
        60,
        "the install on the host",
    )
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130, run.output
    assert "partial release was removed" in run.output
    assert_safe(target, good)


def test_current_switched_by_hand_mid_gate_is_not_recorded_good(target: Target):
    """An operator points `current` back at the previous release while the new one is being
    gated: the run never records a verdict of good for a release that `current` no longer
    names — the gate's identity read rolls it back (exit 3), or, after that read, the
    promotion stops for a human (exit 6) — and `current` stays a complete release."""
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    target.update("health", deadline=30)
    demo.commit_fault(target.repo, "slow_ready:6")
    run = Running(target, "deploy", "test")
    new = wait_until(
        lambda: run.saw("gate ") and run.saw("…") and target.current(), 60, "the gate stage"
    )
    target.ssh(
        f"cd {target.root} && ln -s releases/{good} current.byhand && mv -T current.byhand current"
    )
    code = run.wait()
    assert code in (3, 6), run.output
    assert target.state_of(new) != "good"
    assert target.current() == good
    target.ssh(f"test -f {target.root}/releases/{good}/.release.json")
    if code == 3:
        assert_safe(target, good)
    assert not target.lock_exists()
