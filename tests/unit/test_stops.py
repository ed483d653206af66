"""What stops a run, and output that cannot: a closed pipe or terminal never interrupts the
host being made safe; SIGHUP takes the safe path unless the run was started ignoring it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from deploy import stops
from deploy.report import PlainReporter
from tests.unit.test_flow import ship, world  # noqa: F401 (the fixture)


@pytest.fixture
def closed_pipe():
    """A stream whose reader is gone, as after `releasegate deploy | tee log` and Ctrl-C."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    yield stream
    stream.close()


def test_a_closed_pipe_drops_output_instead_of_raising(closed_pipe):
    with pytest.raises(BrokenPipeError):
        print("unguarded", file=closed_pipe, flush=True)
    sturdy = stops.SturdyStream(closed_pipe)
    print("dropped", file=sturdy, flush=True)
    sturdy.write("still dropped\n")
    sturdy.flush()


def test_sigint_in_the_gate_rolls_back_even_when_the_output_pipe_closed(world, closed_pipe):  # noqa: F811
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    deps.reporter = PlainReporter(stream=stops.SturdyStream(closed_pipe))
    remote.interrupt_on["pm2.jlist"] = KeyboardInterrupt
    out = ship(deps, repo)
    assert out.exit_code == 130 and out.result == "rolled-back"
    assert host.current == good == host.running
    assert host.lock is None


def test_sighup_is_handled_unless_the_run_started_ignoring_it():
    seen: list[int] = []
    with stops.handling(lambda signum, _frame: seen.append(signum)):
        os.kill(os.getpid(), signal.SIGHUP)
    assert seen == [signal.SIGHUP]
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under `nohup`
    try:
        with stops.handling(lambda signum, _frame: seen.append(signum)):
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
        assert seen == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_cli_keeps_its_exit_code_when_its_terminal_is_gone():
    """Both streams closed (the terminal went away): the error cannot be shown, but the exit
    code is still the operation's (2: no such environment), not a crash while printing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    res = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "--plain", "--inventories", "/nonexistent",
         "status", "prod"],
        stdout=write_end,
        stderr=write_end,
    )  # fmt: skip
    os.close(write_end)
    assert res.returncode == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_every_stop_signal_is_raised_and_recorded(signum):
    """Raised as Signalled (Invoke's runner would swallow a KeyboardInterrupt while a remote
    command runs) and recorded (Python drops an exception raised in a weakref callback)."""
    from deploy.errors import Signalled
    from deploy.operations import _signals_as_exceptions

    seen: list[int] = []
    with pytest.raises(Signalled) as raised, _signals_as_exceptions(seen):
        os.kill(os.getpid(), signum)
    assert raised.value.signum == signum and seen == [signum]


def test_a_signal_while_gating_an_unverified_current_is_an_interruption(world):  # noqa: F811
    """The next run gates what a killed run left unverified; Ctrl-C meanwhile takes the safe
    path (back on the last good release, verified) and says so with exit 130 — not "could not
    be made safe" with exit 6."""
    from deploy.errors import Interrupted

    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    remote.dies_after = "pm2.activate"  # a run killed right after its switch
    ship(deps, repo, fault="slow_ready:600")
    host.lock = None  # the dead run's lock (breaking it is tested elsewhere)
    remote.dead, remote.dies_after = False, None
    deps.clock.sleep(2)
    remote.interrupt_on["pm2.jlist"] = KeyboardInterrupt
    with pytest.raises(Interrupted) as stopped:
        ship(deps, repo)
    assert stopped.value.exit_code == 130
    assert "serves again and is verified" in stopped.value.message
    assert host.current == good == host.running
    assert host.lock is None


def test_the_current_check_script_runs_for_real(tmp_path):
    from pathlib import PurePosixPath

    from deploy import commands
    from deploy.model import Layout

    rid, other = "20261130120000-abcdef1", "20261130110000-1234567"
    for r in (rid, other):
        (tmp_path / "releases" / r).mkdir(parents=True)
    (tmp_path / "current").symlink_to(f"releases/{rid}")
    layout = Layout(root=PurePosixPath(str(tmp_path)))

    def check(release: str) -> subprocess.CompletedProcess[str]:
        cmd = commands.current_is(layout, release)
        return subprocess.run(["sh", "-c", cmd.render()], capture_output=True, text=True)

    assert check(rid).returncode == 0
    moved = check(other)
    assert moved.returncode == 3 and f"current points to releases/{rid}" in moved.stdout
    (tmp_path / "current").unlink()
    assert "current points to nothing" in check(rid).stdout


def test_current_switched_by_hand_after_the_gate_read_is_not_recorded_good(world):  # noqa: F811
    """Someone points `current` at another release once the gate has read it (the gate's own
    identity read catches a switch before that): the promotion records no verdict for the
    release gated — what serves is no longer what was gated — and says so (exit 6)."""
    import contextlib
    import json

    from deploy.errors import HumanNeeded

    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    tunnel = remote.tunnel

    @contextlib.contextmanager
    def then_by_hand(port: int):
        with tunnel(port) as local:
            yield local
        host.current = good  # an operator's `ln -s` + `mv -T` on the host, after the gate read

    remote.tunnel = then_by_hand  # type: ignore[method-assign]
    with pytest.raises(HumanNeeded, match="switched by hand") as stopped:
        ship(deps, repo)
    assert stopped.value.exit_code == 6
    newest = max(host.releases)
    records = [json.loads(line) for line in host.journal]
    assert not any(e["release"] == newest and e["state"] == "good" for e in records)
    assert host.current == good and host.lock is None
