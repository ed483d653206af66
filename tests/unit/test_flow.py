"""Every outcome of deploy/rollback against a fake host (no SSH, no waiting)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from deploy import flow
from deploy.artifact import Source
from deploy.deps import Deps
from deploy.errors import (
    AbortedBeforeLive,
    ConfigError,
    HumanNeeded,
    Interrupted,
    LockHeld,
    Signalled,
)
from deploy.inventory import parse
from deploy.locking import lock_manually, unlock
from deploy.model import Outcome
from deploy.report import RecordingReporter
from deploy.rollback import rollback
from deploy.status import host_status
from tests.conftest import git
from tests.fakehost import FakeClock, FakeHost, FakeRemote, app_handler

INVENTORY = """
hosts: [{name: web1, address: 10.0.0.5, user: deploy, root: /srv/app}]
app: {name: app, repo: ., install: npm ci}
process: {command: server.js, port: 3000, instances: 2}
health: {deadline: 5, interval: 0.5, successes: 3}
"""


@pytest.fixture
def world(tmp_path: Path, app_repo: Path):
    inv = parse(INVENTORY, source=tmp_path / "inventories" / "prod.yml", env="prod")
    clock = FakeClock()
    host = FakeHost()
    remote = FakeRemote(host, clock)
    reporter = RecordingReporter()
    deps = Deps(
        inventory=inv,
        remote=remote,
        reporter=reporter,
        clock=clock,
        actor="tester",
        workdir=tmp_path / "work",
        http=lambda base, timeout: httpx.Client(base_url=base, transport=app_handler(remote)),
    )
    return deps, host, remote, app_repo


def ship(deps: Deps, repo: Path, fault: str = "") -> Outcome:
    remote = getattr(deps.remote, "_real", deps.remote)
    assert isinstance(remote, FakeRemote)
    remote.next_fault = fault
    (repo / "version.txt").write_text(f"{fault}{len(remote.log)}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"release {fault or 'good'}")
    return flow.deploy(deps, Source(repo=repo, revision="HEAD"))


def states(host: FakeHost) -> list[tuple[str, str | None]]:
    return [(e["release"], e["state"]) for e in map(json.loads, host.journal) if e["state"]]


def test_first_good_deploy_is_promoted(world):
    deps, host, remote, repo = world
    out = ship(deps, repo)
    assert out.exit_code == 0 and out.result == "promoted"
    assert host.current == out.release == host.running
    assert host.lock is None
    assert states(host)[-1] == (out.release, "good")
    assert [s for _, s in states(host)] == ["partial", "ready", "active-unverified", "good"]


def test_bad_release_rolls_back_to_last_good(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    out = ship(deps, repo, fault="ready_503")
    assert out.exit_code == 3 and out.result == "rolled-back"
    assert host.current == good == host.running == out.live
    assert (out.release, "bad") in states(host)
    assert states(host)[-1] == (good, "good")
    assert any("503" in line for line in out.evidence)
    assert host.lock is None


def test_crashing_release_fails_fast(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    deps.clock.sleep(2)
    before = deps.clock.t
    out = ship(deps, repo, fault="boot_crash")
    assert out.exit_code == 3
    # fail fast: far less than the 5 s deadline was spent waiting (the rollback's own gate
    # then needs its stability window)
    assert deps.clock.t - before < 2 + deps.inventory.health.window
    assert "errored" in out.message


def test_first_deploy_failure_stops_app_exit_6(world):
    deps, host, remote, repo = world
    out = ship(deps, repo, fault="ready_503")
    assert out.exit_code == 6 and out.result == "rollback-impossible"
    assert host.running is None  # the bad process was stopped
    assert states(host)[-1] == (out.release, "bad")
    assert "no known-good release" in out.message
    assert host.lock is None


def test_identity_mismatch_rolls_back(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    host.stale_cwd = True  # PM2 kept the old code after the switch
    out = ship(deps, repo)
    assert out.exit_code == 3
    assert "identity gate failed" in out.message
    assert host.current == good


def test_lock_held_exit_4_and_holder_lock_survives(world):
    deps, host, remote, repo = world
    host.lock = ("f" * 32, json.dumps({"actor": "alice", "op": "deploy", "pid": 1}))
    with pytest.raises(LockHeld) as err:
        ship(deps, repo)
    assert err.value.exit_code == 4
    assert "alice" in err.value.message
    assert host.lock is not None and host.lock[0] == "f" * 32
    assert "lock.release" not in remote.names()


def test_ship_failure_aborts_exit_5_nothing_live_changed(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    remote.fail["release.install"] = 1
    with pytest.raises(AbortedBeforeLive) as err:
        ship(deps, repo)
    assert err.value.exit_code == 5
    assert host.current == good == host.running
    assert host.partials == set()
    assert host.lock is None
    assert "current.switch" not in remote.names()[-8:]


def test_corrupt_upload_aborts(world):
    deps, host, remote, repo = world
    remote.corrupt = True
    with pytest.raises(AbortedBeforeLive, match="corrupted"):
        ship(deps, repo)
    assert host.current is None and host.lock is None


def test_sigint_during_ship_removes_partial_exit_130(world):
    deps, host, remote, repo = world
    remote.interrupt_on["release.install"] = KeyboardInterrupt
    with pytest.raises(Interrupted) as err:
        ship(deps, repo)
    assert err.value.exit_code == 130
    assert host.partials == set() and host.lock is None and host.current is None


def test_sigint_during_gate_rolls_back_exit_130(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    remote.interrupt_on["pm2.jlist"] = KeyboardInterrupt
    out = ship(deps, repo)
    assert out.exit_code == 130 and out.result == "rolled-back"
    assert host.current == good == host.running
    assert host.lock is None


def test_sigterm_after_switch_rolls_back_exit_143(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    remote.interrupt_on["pm2.activate"] = lambda: Signalled(15)  # type: ignore[assignment]
    out = ship(deps, repo)
    assert out.exit_code == 143
    assert host.current == good == host.running


def test_leftover_partial_is_removed_by_next_deploy(world):
    deps, host, remote, repo = world
    host.partials.add("20260101000000-abcdef1")
    ship(deps, repo)
    assert host.partials == set()


def test_manual_rollback_to_previous_good(world):
    deps, host, remote, repo = world
    first = ship(deps, repo).release
    deps.clock.sleep(2)
    second = ship(deps, repo).release
    out = rollback(deps)
    assert out.exit_code == 0 and out.live == first == host.current == host.running
    # the newest good entry is now `first`: an automatic rollback would go there
    assert (first, "good") in states(host)[-2:]
    # the release left is rolled-back: rolling back again never returns there (only --to)
    assert states(host)[-1] == (second, "rolled-back")
    with pytest.raises(HumanNeeded, match=f"--to {second}"):
        rollback(deps)
    assert rollback(deps, to=second).live == second


def test_manual_rollback_refuses_bad_and_unknown(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    deps.clock.sleep(2)
    bad = ship(deps, repo, fault="ready_503").release
    with pytest.raises(ConfigError, match="not good"):
        rollback(deps, to=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        rollback(deps, to="20200101000000-0000000")
    with pytest.raises(ConfigError, match="not a release id"):
        rollback(deps, to="../../etc")
    assert host.lock is None


def test_manual_rollback_without_target_needs_human(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    with pytest.raises(HumanNeeded):
        rollback(deps)
    assert host.lock is None


def test_status_reports_current_and_last_good(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    bad = ship(deps, repo, fault="ready_503").release
    st = host_status(deps)
    assert st.current == good and st.last_good == good
    assert dict(st.releases) == {good: "good", bad: "bad"}
    assert st.process is not None and st.process.status == "online"


def test_promotion_prunes_old_and_bad_releases(world):
    deps, host, remote, repo = world
    deps.inventory = deps.inventory.model_copy(
        update={"app": deps.inventory.app.model_copy(update={"keep_releases": 2})}
    )
    ids = []
    for fault in ["", "", "ready_503", "", ""]:
        deps.clock.sleep(2)
        ids.append(ship(deps, repo, fault=fault).release)
    assert host.releases == {ids[3], ids[4]}
    assert host.current == ids[4]
    pruned = [json.loads(e) for e in host.journal if '"op":"prune"' in e]
    removed = [rid for e in pruned for rid in e["detail"]["removed"]]
    assert ids[2] in removed and ids[0] in removed and ids[1] in removed


def test_lock_wait_waits_for_an_automated_holder(world):
    deps, host, remote, repo = world
    host.lock = (
        "f" * 32,
        json.dumps({"actor": "ci", "op": "deploy", "pid": 1, "host": "elsewhere"}),
    )
    deps.lock_wait = 10

    def release_after_a_while(seconds: float) -> None:
        FakeClock.sleep(deps.clock, seconds)
        if deps.clock.t > 1004 and host.lock is not None and host.lock[0] == "f" * 32:
            host.lock = None  # the other holder's lock, never ours

    deps.clock.sleep = release_after_a_while  # type: ignore[method-assign]
    assert ship(deps, repo).exit_code == 0
    assert any("waiting for the lock" in line for line in deps.reporter.lines)


def test_lock_wait_never_waits_for_a_manual_lock(world):
    deps, host, remote, repo = world
    host.lock = ("f" * 32, json.dumps({"actor": "alice", "op": "manual", "message": "freeze"}))
    deps.lock_wait = 600
    start = deps.clock.t
    with pytest.raises(LockHeld, match="manual lock"):
        ship(deps, repo)
    assert deps.clock.t - start < 1


def test_stale_lock_of_a_dead_local_process_is_broken(world):
    import socket

    deps, host, remote, repo = world
    dead = {"actor": "me", "op": "deploy", "pid": 2**22 + 7, "host": socket.gethostname()}
    host.lock = ("f" * 32, json.dumps(dead))
    assert ship(deps, repo).exit_code == 0
    assert any('"op":"lock-broken"' in e for e in host.journal)


def test_manual_lock_blocks_deploys_until_its_holder_unlocks(world):
    deps, host, remote, repo = world
    lock_manually(deps, "release freeze")
    assert host.lock is not None
    with pytest.raises(LockHeld, match="release freeze"):
        ship(deps, repo)
    other = Deps(**{**deps.__dict__, "actor": "mallory"})
    with pytest.raises(LockHeld, match="only its holder"):
        unlock(other, force=False, reason=None)
    with pytest.raises(ConfigError, match="--reason"):
        unlock(other, force=True, reason=None)
    assert unlock(deps, force=False, reason=None).result == "unlocked"
    assert host.lock is None
    assert ship(deps, repo).exit_code == 0


def test_forced_unlock_records_the_reason(world):
    deps, host, remote, repo = world
    host.lock = ("f" * 32, json.dumps({"actor": "ci", "op": "deploy", "pid": 1, "host": "gone"}))
    unlock(deps, force=True, reason="runner was cancelled")
    assert host.lock is None
    entry = json.loads(host.journal[-1])
    assert entry["op"] == "unlock" and entry["detail"]["reason"] == "runner was cancelled"
    assert entry["detail"]["forced"] is True


def test_unverified_current_left_by_a_killed_run_is_gated_first(world):
    deps, host, remote, repo = world
    good = ship(deps, repo).release
    deps.clock.sleep(2)
    # a run killed right after its switch: current is active-unverified and serves 503
    remote.dies_after = "pm2.activate"
    ship(deps, repo, fault="ready_503")
    killed = host.current
    assert killed != good and states(host)[-1] == (killed, "active-unverified")
    assert host.lock is not None
    host.lock = None  # the dead run's lock (breaking it is tested elsewhere)
    remote.dead, remote.dies_after = False, None
    deps.clock.sleep(2)
    out = ship(deps, repo)
    assert out.exit_code == 0
    assert (killed, "bad") in states(host)  # gated, failed, rolled back — never assumed good
    assert host.current == out.release


def test_dry_run_reads_the_host_but_changes_nothing(world):
    from deploy.plan import PlanRemote

    deps, host, remote, repo = world
    good = ship(deps, repo).release
    before = (set(host.releases), host.current, list(host.journal), host.lock, host.running)
    deps.clock.sleep(2)
    planner = PlanRemote(remote, deps.reporter)
    deps.remote = planner
    deps.dry_run = True
    out = ship(deps, repo)
    assert out.exit_code == 0 and out.result == "planned" and out.live == good
    assert (set(host.releases), host.current, list(host.journal), host.lock, host.running) == before
    assert any(p.startswith("upload ") for p in planner.planned)
    assert any("switch current" in p for p in planner.planned)
    assert any("cannot be known in advance" in line for line in deps.reporter.lines)


def test_a_release_that_logs_a_megabyte_line_does_not_flood_output_or_journal(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    deps.clock.sleep(2)
    host.log_noise = "E" * 1_000_000
    out = ship(deps, repo, fault="ready_503")
    assert out.exit_code == 3
    assert any("log: EEEE" in line for line in out.evidence)
    assert max(len(line) for line in out.evidence) < 1100
    assert max(len(e) for e in host.journal) < 20_000


def test_forensics_of_the_failing_release_are_shown_and_journaled(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    deps.clock.sleep(2)
    out = ship(deps, repo, fault="ready_503")
    assert any("log: sampleapp: fault ready_503" in line for line in out.evidence)
    bad = [json.loads(e) for e in host.journal if '"state":"bad"' in e][-1]
    assert "fault ready_503" in bad["detail"]["forensics"]["logs"]
    # captured before the rollback restarted the good release
    names = remote.names()
    assert names.index("pm2.logs") < max(i for i, n in enumerate(names) if n == "current.switch")


def test_a_warm_deploy_costs_at_most_eight_exec_sessions(world):
    """Issue 14: the gate starts from the process state read at the end of the activation,
    the identity is read with the gate's closing process read, and the lock is released in
    the promotion's batch; each was a round trip (an exec session) of its own."""
    deps, host, remote, repo = world
    ship(deps, repo)
    deps.clock.sleep(2)
    before = len(remote.timeouts)
    out = ship(deps, repo)
    assert out.exit_code == 0
    runs = [name for name, _ in remote.timeouts[before:]]
    assert len(runs) <= 8, runs
    assert "pm2.jlist" not in runs  # the window's first read came with the activation
    assert "process.identity" not in runs and "gate.close" in runs
    assert "lock.release" not in runs and runs[-1] == "promote"
    assert host.lock is None
    assert not any("lock" in line and "no longer ours" in line for line in deps.reporter.lines)


def test_a_deploy_costs_at_most_twelve_round_trips(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    deps.clock.sleep(2)
    before_runs, before_puts = remote.round_trips, len(remote.uploads)
    out = ship(deps, repo)
    assert out.exit_code == 0
    trips = (remote.round_trips - before_runs) + (len(remote.uploads) - before_puts)
    assert trips <= 12, [c.name for c in remote.log[-30:]]
