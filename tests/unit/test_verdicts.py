"""Verdicts against the fake host: a failed rollback is final (the sticky needs-human mark),
automatic rollback goes back one step and never more, and a release left by a manual
rollback is `rolled-back` (never the target of a plain rollback)."""

from __future__ import annotations

import json

import pytest

from deploy import commands, journal
from deploy.deps import host_ops
from deploy.errors import ConfigError, HumanNeeded
from deploy.model import Outcome
from deploy.needs_human import resolve
from deploy.report import status_lines
from deploy.rollback import rollback
from deploy.status import host_status
from tests.fakehost import FakeHost, FakeRemote
from tests.unit.test_flow import ship, states
from tests.unit.test_flow import world as world  # the fixture, re-exported


def entries(host: FakeHost) -> list[dict]:
    return [json.loads(line) for line in host.journal]


def outage(host: FakeHost) -> None:
    """A shared dependency is down: every release's readiness answers 503."""
    for rid in host.releases | host.partials:
        host.faults[rid] = "ready_503"


def recovered(host: FakeHost) -> None:
    host.faults.clear()


def snapshot(host: FakeHost) -> tuple[object, ...]:
    return (host.current, host.running, set(host.releases), list(host.journal), host.lock)


def switched_to(remote: FakeRemote) -> list[str]:
    """Releases `current` was switched to, in order."""
    return [c.argv[5] for c in remote.log if c.name == "current.switch"]


def die_on(remote: FakeRemote, name: str, nth: int) -> None:
    """SIGKILL stand-in: nothing reaches the host after the nth command called `name`."""
    seen = 0
    one = remote._one

    def counting(cmd):  # type: ignore[no-untyped-def]
        nonlocal seen
        if cmd.name == name and not remote.dead:
            seen += 1
            if seen == nth:
                remote.dies_after = name
        return one(cmd)

    remote._one = counting  # type: ignore[method-assign]


def two_good_then_outage(deps, host, repo) -> tuple[str, str, Outcome]:
    older = ship(deps, repo).release
    deps.clock.sleep(2)
    live = ship(deps, repo).release
    deps.clock.sleep(2)
    outage(host)
    out = ship(deps, repo, fault="ready_503")
    return older, live, out


# ---------------------------------------------------------------------------- item 5


def test_a_failed_rollback_marks_the_host_and_says_the_cause_is_shared(world):
    deps, host, remote, repo = world
    older, live, out = two_good_then_outage(deps, host, repo)
    assert out.exit_code == 6 and out.result == "rollback-failed"
    assert host.current == live and out.live == live
    # the fallback failed exactly like the new release: said plainly
    assert f"{live} failed its gate the same way {out.release} did" in out.message
    assert "readiness answered HTTP 503" in out.message
    assert "shared dependency" in out.message
    mark = [e for e in entries(host) if e["op"] == "needs-human"]
    assert len(mark) == 1
    assert mark[0]["detail"]["live"] == live and mark[0]["detail"]["failed"] == out.release
    to_run = mark[0]["detail"]["commands"]
    assert any(c.startswith(f"releasegate rollback prod --to {live}") for c in to_run)
    assert any(c.startswith(f"releasegate resolve prod --mark-good {live}") for c in to_run)
    assert any(c.startswith(f"releasegate rollback prod --to {older}") for c in to_run)
    assert any(f"run: {c}" == line for c in to_run for line in out.evidence)
    # only the new release is bad; the fallback and the older release keep their verdicts
    state = journal.parse_state(remote.run(commands.read_state(host_ops(deps).layout)).stdout)
    assert state.state_of(out.release) == "bad"
    assert state.state_of(older) == "good"
    assert state.state_of(live) == "active-unverified"
    assert host.lock is None


def test_different_failures_are_not_called_the_same_cause(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    deps.clock.sleep(2)
    live = ship(deps, repo).release
    deps.clock.sleep(2)
    host.faults[live] = "ready_503"
    out = ship(deps, repo, fault="boot_crash")
    assert out.exit_code == 6
    assert "same way" not in out.message


def test_while_marked_deploy_and_plain_rollback_refuse_and_change_nothing(world):
    deps, host, remote, repo = world
    older, live, _ = two_good_then_outage(deps, host, repo)
    before = snapshot(host)
    switches = len(switched_to(remote))

    out = ship(deps, repo)
    assert out.exit_code == 6 and out.result == "needs-human" and out.op == "deploy"
    assert "needs a human" in out.message and "nothing on the host was changed" in out.message
    assert f"run: releasegate resolve prod --mark-good {live}" in " ".join(out.evidence)

    out = rollback(deps)
    assert out.exit_code == 6 and out.result == "needs-human" and out.op == "rollback"

    assert snapshot(host) == before
    assert len(switched_to(remote)) == switches
    assert host.partials == set()


def test_resolve_with_a_verdict_clears_the_mark_and_deploys_work_again(world):
    deps, host, remote, repo = world
    older, live, _ = two_good_then_outage(deps, host, repo)
    recovered(host)
    out = resolve(deps, mark_good=live, reason="database restarted")
    assert out.exit_code == 0 and out.result == "resolved"
    last = entries(host)[-1]
    assert last["op"] == "resolve" and last["release"] == live and last["state"] == "good"
    assert last["actor"] == "tester" and last["detail"]["reason"] == "database restarted"
    assert host_status(deps).needs_human is None
    deps.clock.sleep(2)
    out = ship(deps, repo)
    assert out.exit_code == 0 and host.current == out.release


def test_resolve_without_a_mark_changes_nothing(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    before = list(host.journal)
    out = resolve(deps)
    assert out.result == "not-needed" and out.exit_code == 0
    assert host.journal == before
    with pytest.raises(ConfigError, match="--mark-good"):
        resolve(deps, mark_good="../etc")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(deps, mark_good="20200101000000-0000000")


def test_an_explicit_rollback_to_the_live_release_clears_the_mark_once_it_passes(world):
    deps, host, remote, repo = world
    older, live, _ = two_good_then_outage(deps, host, repo)
    recovered(host)
    out = rollback(deps, to=live)
    assert out.exit_code == 0 and host.current == live
    assert host_status(deps).needs_human is None
    assert states(host)[-1] == (live, "good")
    assert any(
        e["op"] == "resolve" and e["detail"]["via"] == f"rollback --to {live}"
        for e in entries(host)
    )


def test_an_explicit_rollback_that_fails_while_marked_takes_no_further_step(world):
    deps, host, remote, repo = world
    older, live, _ = two_good_then_outage(deps, host, repo)
    switches = len(switched_to(remote))
    out = rollback(deps, to=older)  # the database is still down
    assert out.exit_code == 6 and out.result == "needs-human"
    # one switch (to the release asked for), none back: the human decides what is next
    assert switched_to(remote)[switches:] == [older]
    assert host.current == older
    # the outage does not turn a good release bad
    assert (older, "bad") not in states(host)
    mark = host_status(deps).needs_human
    assert mark is not None and mark.live == older


def test_the_unverified_automatic_fallback_is_never_walked_past(world):
    """A run whose automatic rollback was killed mid-gate leaves the fallback unverified; the
    next run gates it, and when it fails (the outage again) it stops for a human instead of
    marking it bad and going one release further back."""
    deps, host, remote, repo = world
    older = ship(deps, repo).release
    deps.clock.sleep(2)
    live = ship(deps, repo).release
    deps.clock.sleep(2)
    outage(host)
    die_on(remote, "pm2.activate", nth=2)  # the new release's activation, then the fallback's
    ship(deps, repo, fault="ready_503")
    assert host.current == live and states(host)[-1] == (live, "active-unverified")
    host.lock = None  # the killed run's lock (breaking stale locks is tested elsewhere)
    remote.dead, remote.dies_after = False, None
    deps.clock.sleep(2)
    switches = len(switched_to(remote))

    with pytest.raises(HumanNeeded):
        ship(deps, repo)
    assert host.current == live
    assert switched_to(remote)[switches:] == [live]  # re-gated in place, never further back
    assert (live, "bad") not in states(host) and (older, "bad") not in states(host)
    assert host_status(deps).needs_human is not None
    # and from then on, every run refuses
    assert rollback(deps).result == "needs-human"


def test_a_plain_rollback_after_a_killed_deploy_goes_back_one_step_only(world):
    deps, host, remote, repo = world
    older = ship(deps, repo).release
    deps.clock.sleep(2)
    live = ship(deps, repo).release
    deps.clock.sleep(2)
    remote.dies_after = "pm2.activate"
    ship(deps, repo, fault="ready_503")
    killed = host.current
    host.lock = None
    remote.dead, remote.dies_after = False, None
    out = rollback(deps)
    assert out.exit_code == 0 and out.live == live == host.current
    assert (killed, "bad") in states(host)
    assert states(host)[-1] != (older, "good")


def test_a_failed_first_deploy_does_not_mark_the_host(world):
    deps, host, remote, repo = world
    out = ship(deps, repo, fault="ready_503")
    assert out.result == "rollback-impossible" and out.exit_code == 6
    assert host_status(deps).needs_human is None
    deps.clock.sleep(2)
    assert ship(deps, repo).exit_code == 0  # fix and deploy again


def test_status_shows_the_mark_and_what_to_run(world):
    deps, host, remote, repo = world
    older, live, _ = two_good_then_outage(deps, host, repo)
    status = host_status(deps)
    assert status.needs_human is not None and status.needs_human.live == live
    text = "\n".join(status_lines(status))
    assert "NEEDS HUMAN since" in text and f"releasegate resolve prod --mark-good {live}" in text


# ---------------------------------------------------------------------------- item 6


def test_rolling_back_twice_never_returns_to_where_you_started(world):
    deps, host, remote, repo = world
    first = ship(deps, repo).release
    deps.clock.sleep(2)
    second = ship(deps, repo).release
    deps.clock.sleep(2)
    third = ship(deps, repo).release
    assert rollback(deps).live == second
    assert (third, "rolled-back") in states(host)
    out = rollback(deps)
    assert out.live == first == host.current  # further back, not forward to `third`
    assert (second, "rolled-back") in states(host)
    with pytest.raises(HumanNeeded, match=f"--to {second}"):
        rollback(deps)
    # an explicit --to still goes there
    out = rollback(deps, to=third)
    assert out.exit_code == 0 and host.current == third
    assert states(host)[-1] == (first, "rolled-back")


def test_resolve_without_a_verdict_regates_the_live_release_and_never_walks_back(world):
    deps, host, remote, repo = world
    older, live, _ = two_good_then_outage(deps, host, repo)
    out = resolve(deps, reason="looking into it")
    assert out.result == "resolved" and "gates it first" in out.message
    deps.clock.sleep(2)
    switches = len(switched_to(remote))
    with pytest.raises(HumanNeeded):
        ship(deps, repo)  # the outage goes on: the live release fails again, in place
    assert switched_to(remote)[switches:] == [live] and host.current == live
    assert (older, "bad") not in states(host) and (live, "bad") not in states(host)
    assert host_status(deps).needs_human is not None
    recovered(host)
    resolve(deps, reason="database back")
    deps.clock.sleep(2)
    out = ship(deps, repo)
    assert out.exit_code == 0 and (live, "good") in states(host)


def test_the_kind_of_a_gate_failure_ignores_what_differs_between_releases():
    from deploy.errors import CommandFailure, GateFailed, RemoteCommandError
    from deploy.verdict import failure_kind, same_cause

    def ready(last: str) -> GateFailed:
        return GateFailed("ready", f"no 3 consecutive successes within 5s (9 probes; last: {last})")

    a = ready('503 in 3 ms {"status":"not-ready"}')
    b = ready('503 in 41 ms {"status":"not-ready","db":"down"}')
    assert same_cause(a, b) == "readiness answered HTTP 503"
    assert same_cause(a, ready("500 in 2 ms")) is None
    assert same_cause(ready("no answer: ConnectError refused"), ready("no answer: timed out")) == (
        "readiness got no answer"
    )
    crashed = GateFailed("ready", "the process is errored (fail fast)")
    assert failure_kind(crashed) == "the process is errored"
    assert same_cause(crashed, a) is None
    smoke = GateFailed("smoke", "2 enforced check(s) failed: items, orders")
    assert same_cause(smoke, GateFailed("smoke", "2 enforced check(s) failed: items, orders"))
    lost = RemoteCommandError(CommandFailure(display="pm2 reload", exit_code=1, stderr_tail=""))
    assert same_cause(lost, lost) is None  # not a gate's verdict: never called a shared cause


def test_json_status_carries_the_mark(world):
    import io

    from deploy.report import JsonReporter

    deps, host, remote, repo = world
    older, live, _ = two_good_then_outage(deps, host, repo)
    out = io.StringIO()
    JsonReporter(stream=out).status(host_status(deps))
    record = json.loads(out.getvalue())
    assert record["needs_human"]["live"] == live
    assert any(c.startswith("releasegate status prod") for c in record["needs_human"]["commands"])


def test_resolve_is_a_command_in_both_doors():
    import subprocess
    import sys
    from pathlib import Path

    from click.testing import CliRunner

    from deploy.cli import main

    result = CliRunner().invoke(main, ["resolve", "--help"])
    assert result.exit_code == 0 and "--mark-good" in result.output and "--reason" in result.output
    root = Path(__file__).resolve().parents[2]
    listed = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(root), "--help", "resolve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--mark-good" in listed.stdout and "--reason" in listed.stdout, listed.stderr


def test_an_unverified_release_that_was_good_is_not_stopped_when_there_is_nowhere_to_go(world):
    """The only release, re-gated by a `rollback --to` that was killed mid-gate, fails its
    gate in an outage: with nothing to go back to, it keeps serving and a human is asked —
    stopping the app and marking it bad is for a first deploy that never served."""
    deps, host, remote, repo = world
    only = ship(deps, repo).release
    die_on(remote, "pm2.activate", nth=1)
    rollback(deps, to=only)
    host.lock = None
    remote.dead, remote.dies_after = False, None
    assert states(host)[-1] == (only, "active-unverified")
    outage(host)
    deps.clock.sleep(2)
    with pytest.raises(HumanNeeded):
        ship(deps, repo)
    assert host.running == only == host.current  # not stopped
    assert (only, "bad") not in states(host)
    assert host_status(deps).needs_human is not None
