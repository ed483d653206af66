"""Every remote step has a deadline, and the host enforces the long ones itself: a hung
install ends the deploy (exit 5, nothing live changed, lock released) and leaves no process
behind on the host, even when the orchestrator is killed outright."""

from __future__ import annotations

import time
import uuid

import pytest

from deploy import commands, demo
from tests.conftest import wait_until
from tests.integration.conftest import Target
from tests.integration.test_deploy import deploy, released
from tests.integration.test_safety import Running, partials

pytestmark = pytest.mark.integration


def hung_install(t: Target, limit: float) -> str:
    """An install that never ends, recognisable on the host by its own sleep argument."""
    marker = f"600.{uuid.uuid4().int % 10**6}"
    t.update("app", install=f"sleep {marker}", reuse_deps=False, install_timeout=limit)
    return marker


def running_on_host(t: Target, marker: str) -> bool:
    # the [.] keeps pgrep from matching the shell that runs it
    pattern = marker.replace(".", "[.]")
    return t.ssh(f"pgrep -f 'sleep {pattern}'", check=False).returncode == 0


def test_a_hung_install_ends_within_its_deadline_and_leaves_nothing_behind(target: Target):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    marker = hung_install(target, 3)
    demo.commit_fault(target.repo, "")
    started = time.monotonic()
    code, rep = deploy(target)
    took = time.monotonic() - started
    assert code == 5, rep.lines
    # 3 s of install, the host's kill grace, and a deploy's ordinary few round trips
    assert took < 3 + commands.KILL_AFTER + 20, took
    assert any("timed out" in line and "install_timeout" in line for line in rep.lines)
    assert not running_on_host(target, marker)
    assert target.current() == good and target.version()["release"] == good
    assert partials(target) == []
    assert not target.lock_exists()


def test_a_killed_run_cannot_leave_its_install_running(target: Target):
    marker = hung_install(target, 4)
    run = Running(target, "deploy", "test")
    wait_until(lambda: running_on_host(target, marker), 60, "the install on the host", every=0.5)
    run.proc.kill()  # the client is gone: nobody on this side will ever stop the install
    run.wait()
    # the host's own `timeout` stops it (4 s, then KILL 5 s later at worst)
    wait_until(
        lambda: not running_on_host(target, marker),
        4 + commands.KILL_AFTER + 10,
        "the host to stop the orphaned install",
        every=0.5,
    )
