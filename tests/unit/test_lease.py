"""The lock lease in the flow (fake host, fake clock): a live lease from another machine is
never broken, an ended one is broken and journaled and the unverified `current` it left is
gated first; our own lease is renewed while we run and checked before anything goes live.
Plus the journal's redaction: records are masked and travel on stdin."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from deploy import commands
from deploy.deps import Deps, host_ops
from deploy.errors import LockHeld
from deploy.lock import LeaseKeeper
from deploy.locking import lock_manually
from deploy.redact import Redactor
from tests.conftest import wait_until
from tests.fakehost import FakeHost, app_handler
from tests.unit import test_flow
from tests.unit.test_flow import ship, states

world = test_flow.world  # the fake host, clock and deps of the flow tests

ELSEWHERE = {"actor": "ci@runner-7", "op": "deploy", "pid": 4242, "host": "runner-7"}
TOKEN = "a" * 32


def lock_entries(host: FakeHost) -> list[dict[str, object]]:
    return [json.loads(e) for e in host.journal if '"op":"lock-broken"' in e]


def test_a_live_lease_of_another_machine_is_never_broken(world):
    deps, host, remote, repo = world
    host.hold(TOKEN, ELSEWHERE, lease=60, now=deps.clock.t - 20)
    with pytest.raises(LockHeld) as caught:
        ship(deps, repo)
    assert "its lease expires in 42s" in caught.value.message  # 60 + grace 2 - 20
    assert host.lock is not None and host.lock[0] == TOKEN
    assert lock_entries(host) == []
    assert "lock.break" not in remote.names()


def test_an_ended_lease_is_broken_journaled_and_the_deploy_goes_on(world):
    deps, host, remote, repo = world
    host.hold(TOKEN, ELSEWHERE, lease=60, now=deps.clock.t - 120)
    out = ship(deps, repo)
    assert out.exit_code == 0
    (broken,) = lock_entries(host)
    assert broken["detail"]["holder"]["actor"] == "ci@runner-7"  # type: ignore[index]
    assert "lease expired" in str(broken["detail"]["reason"])  # type: ignore[index]
    assert host.lock is None  # ours was released at the end


def test_lock_wait_waits_out_a_lease_then_breaks_it(world):
    deps, host, remote, repo = world
    host.hold(TOKEN, ELSEWHERE, lease=10, now=deps.clock.t)
    deps.lock_wait = 60
    start = deps.clock.t
    assert ship(deps, repo).exit_code == 0
    assert 10 + commands.LEASE_GRACE <= deps.clock.t - start < 20
    assert len(lock_entries(host)) == 1
    assert any("waiting for the lock" in line for line in deps.reporter.lines)


def test_a_killed_run_elsewhere_is_broken_after_its_lease_and_its_release_gated_first(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    # a CI runner on another machine, SIGKILLed right after its switch
    other = Deps(**{**deps.__dict__, "machine": "runner-7"})
    remote.dies_after = "pm2.activate"
    ship(other, repo, fault="ready_503")
    killed = host.current
    assert killed != good and states(host)[-1] == (killed, "active-unverified")
    assert host.lock is not None and host.lease == deps.inventory.lock.lease
    remote.dead, remote.dies_after = False, None

    deps.clock.sleep(5)
    with pytest.raises(LockHeld, match="lease expires in"):
        ship(deps, repo)  # live: never broken
    deps.clock.sleep(deps.inventory.lock.lease)
    out = ship(deps, repo)
    assert out.exit_code == 0
    assert len(lock_entries(host)) == 1
    assert (killed, "bad") in states(host)  # gated, failed, rolled back: never assumed good
    names = remote.names()
    assert names.index("lock.break") < names.index("pm2.jlist", names.index("lock.break"))
    assert host.current == out.release


def test_activation_refuses_when_our_lock_was_broken_meanwhile(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    remote.fail["lock.renew"] = commands.LOCK_HELD  # the guard finds the lock is not ours
    before = len(remote.log)
    with pytest.raises(LockHeld, match="no longer ours"):
        ship(deps, repo)
    assert host.current == good and host.running == good
    names = remote.names()[before:]
    assert "release.finalize" in names and "current.switch" not in names
    assert states(host)[-1][1] != "active-unverified"


def test_manual_lock_has_no_lease(world):
    deps, host, remote, repo = world
    lock_manually(deps, "freeze")
    assert host.lock is not None and host.lease is None
    deps.clock.sleep(10_000)
    with pytest.raises(LockHeld, match="no lease: held until unlocked"):
        ship(deps, repo)


# ---------------------------------------------------------------- the keeper


def test_keeper_renews_until_stopped():
    renewed = threading.Event()
    count = [0]

    def renew() -> str | None:
        count[0] += 1
        if count[0] >= 3:
            renewed.set()
        return None

    keeper = LeaseKeeper(renew, interval=0.01).start()
    wait_until(renewed.is_set, 5, "three renewals")
    keeper.stop()
    after = count[0]
    assert keeper.renewals >= 3 and keeper.lost is None
    assert not keeper._thread.is_alive()
    assert count[0] == after


def test_keeper_stops_renewing_once_the_lock_is_lost_and_retries_a_failed_trip():
    answers: list[object] = [ConnectionError("stalled"), None, "the lease ended"]

    def renew() -> str | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    keeper = LeaseKeeper(renew, interval=60)
    keeper.tick()
    keeper.tick()
    keeper.tick()
    assert keeper.failures == ["ConnectionError: stalled"]
    assert keeper.renewals == 1 and keeper.lost == "the lease ended"


def test_our_lease_is_renewed_on_the_host_while_we_hold_it(world):
    deps, host, remote, repo = world
    ops = host_ops(deps)
    assert ops.try_lock("deploy", deps.clock.now()) is None
    deps.clock.sleep(30)
    assert ops.renew_lease() is None
    assert host.lease_renewed == deps.clock.t
    deps.clock.sleep(deps.inventory.lock.lease + 1)
    assert "ended" in (ops.renew_lease() or "")  # too late: never revived


# ---------------------------------------------------------------- journal redaction


def test_journal_records_are_masked_and_sent_on_stdin(world):
    deps, host, remote, repo = world
    canary = "canary-0c1d-secret-token"
    deps.redact = Redactor([canary])
    ship(deps, repo)
    deps.clock.sleep(2)

    def leaky(request: httpx.Request) -> httpx.Response:
        # a release whose error page echoes its configuration: the body is gate evidence
        if remote.host.fault_of_running() == "ready_503":
            return httpx.Response(503, text=f"not ready; config token={canary}")
        return app_handler(remote).handle_request(request)

    deps.http = lambda base, timeout: httpx.Client(
        base_url=base, transport=httpx.MockTransport(leaky)
    )
    out = ship(deps, repo, fault="ready_503")
    assert out.exit_code == 3
    bad = [json.loads(e) for e in host.journal if '"state":"bad"' in e][-1]
    assert "token=********" in json.dumps(bad["detail"]["evidence"])
    assert all(canary not in line for line in host.journal)
    appends = [c for c in remote.log if c.name == "journal.append"]
    assert appends and all('"op"' not in c.render() for c in appends)
    assert all(canary not in text for text in remote.stdin_seen)


def test_a_break_that_fails_is_tried_once_then_reported(world):
    deps, host, remote, repo = world
    host.hold(TOKEN, ELSEWHERE, lease=10, now=deps.clock.t - 100)
    remote.fail["lock.break"] = 1  # e.g. the lock directory is not ours to rename
    with pytest.raises(LockHeld, match="lease ended"):
        ship(deps, repo)
    assert remote.names().count("lock.break") == 1
    assert host.lock is not None and lock_entries(host) == []
