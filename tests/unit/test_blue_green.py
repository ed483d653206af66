"""The blue/green strategy against the fake host: slots, nginx's upstream and access log are
modelled there (tests/fakehost.py), and the HTTP answers come from the release each port
really serves — the slot's own port before the switch, the front door after it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy import flow
from deploy.artifact import Source
from deploy.deps import Deps, host_ops
from deploy.errors import NotSwitched, PreflightFailed
from deploy.inventory import parse
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
health: {deadline: 5, interval: 0.5, successes: 3, stable_for: 1}
strategy:
  kind: blue-green
  slots: {blue: 3001, green: 3002}
  public_port: 8080
  bake: {seconds: 3}
"""
BLUE, GREEN = 3001, 3002


@dataclass
class World:
    deps: Deps
    host: FakeHost
    remote: FakeRemote
    repo: Path
    reporter: RecordingReporter


def make_world(tmp_path: Path, repo: Path, strategy: str = "", *, instances: int = 2) -> World:
    text = INVENTORY.replace("instances: 2", f"instances: {instances}")
    extra = [line for line in strategy.splitlines() if line]
    for line in extra:  # a strategy key given here replaces the base one (no key twice)
        text = re.sub(rf"^  {re.escape(line.split(':', 1)[0])}:.*\n", "", text, flags=re.M)
    text += "".join(f"  {line}\n" for line in extra)
    inv = parse(text, source=tmp_path / "inventories" / "prod.yml", env="prod")
    clock = FakeClock()
    host = FakeHost(upstream=(BLUE, None))  # as `releasegate setup` leaves it
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
    return World(deps, host, remote, repo, reporter)


@pytest.fixture
def world(tmp_path: Path, app_repo: Path) -> World:
    return make_world(tmp_path, app_repo)


def ship(w: World, fault: str = "") -> Outcome:
    w.remote.next_fault = fault
    (w.repo / "version.txt").write_text(f"{fault}{len(w.remote.log)}\n")
    git(w.repo, "add", "-A")
    git(w.repo, "commit", "-q", "-m", f"release {fault or 'good'}")
    w.deps.clock.sleep(2)
    return flow.deploy(w.deps, Source(repo=w.repo, revision="HEAD"))


def records(host: FakeHost) -> list[dict[str, object]]:
    return [json.loads(line) for line in host.journal]


def slot_events(host: FakeHost) -> list[tuple[object, object, object]]:
    return [
        (e["release"], e["detail"]["slot"], e["detail"]["role"])  # type: ignore[index]
        for e in records(host)
        if e["op"] == "slot"
    ]


def state_of(host: FakeHost, rid: str) -> object:
    return [e["state"] for e in records(host) if e["release"] == rid and e["state"]][-1]


def answers(w: World, n: int = 5) -> set[str | None]:
    """Who answers users through the front door now."""
    return {w.host.front_door("/", w.remote.clock.t)[0] for _ in range(n)}


# ---------------------------------------------------------------------------- good deploys


def test_a_release_is_gated_in_the_idle_slot_then_switched_and_baked(world: World):
    first = ship(world)
    assert first.exit_code == 0 and first.result == "promoted", world.reporter.lines
    rid = first.release
    assert rid is not None
    h = world.host
    # started in green (blue was named live by setup but ran nothing), alone in the upstream
    assert h.slot_links == {"green": rid} and h.upstream == (GREEN, None)
    assert h.current == rid and answers(world) == {rid}
    assert h.running is None  # no in-place app: the slot is the app
    names = world.remote.names()
    # gated on the slot's own port before any switch; the switch, then the bake's log reads
    assert (
        names.index("pm2.start_slot")
        < names.index("process.identity")
        < names.index("proxy.switch")
        < names.index("proxy.read_log")
    )
    second = ship(world)
    assert second.exit_code == 0, world.reporter.lines
    assert h.slot_links == {"blue": second.release}  # after-bake: green was stopped
    assert h.upstream == (BLUE, None) and set(h.slot_procs) == {"blue"}
    assert h.current == second.release and answers(world) == {second.release}
    assert (rid, "green", "stopped") in slot_events(h)


def test_while_the_new_release_bakes_the_old_slot_is_the_backup(world: World):
    first = ship(world).release
    seen: list[tuple[int, int | None] | None] = []
    original = world.remote._apply

    def spy(cmd):  # type: ignore[no-untyped-def]
        if cmd.name == "proxy.read_log":
            seen.append(world.host.upstream)
        return original(cmd)

    world.remote._apply = spy  # type: ignore[method-assign]
    second = ship(world).release
    assert seen and set(seen) == {(BLUE, GREEN)}  # during the bake: blue live, green backup
    assert world.host.upstream == (BLUE, None)
    assert ("slot", first) in {(e["op"], e["release"]) for e in records(world.host)}
    assert (first, "green", "backup") in slot_events(world.host)
    assert second in world.host.slot_links.values()


def test_keep_warm_leaves_the_previous_release_running_without_traffic(
    tmp_path: Path, app_repo: Path
):
    w = make_world(tmp_path, app_repo, "retire: keep-warm")
    first = ship(w).release
    second = ship(w).release
    assert w.host.slot_links == {"green": first, "blue": second}
    assert set(w.host.slot_procs) == {"green", "blue"}
    assert w.host.upstream == (BLUE, None) and answers(w) == {second}
    views = {v.slot.name: v.role for v in host_status(w.deps).slots}
    assert views == {"blue": "live", "green": "warm"}


# ---------------------------------------------------------------------- rejected before traffic


@pytest.mark.parametrize("fault", ["boot_crash", "ready_503", "wrong_version"])
def test_a_release_that_fails_in_its_slot_never_takes_traffic(tmp_path, app_repo, fault):
    w = make_world(tmp_path, app_repo)
    w.deps = _with_version(w.deps) if fault == "wrong_version" else w.deps
    good = ship(w).release
    log_before = w.host.access_log
    out = ship(w, fault)
    assert out.exit_code == 3 and out.result == "rejected", w.reporter.lines
    assert out.live == good and w.host.current == good
    assert w.host.upstream == (GREEN, None)  # never switched
    assert (
        "proxy.switch" not in w.remote.names()[-40:] or w.remote.names().count("proxy.switch") == 1
    )
    assert state_of(w.host, out.release or "") == "bad"
    assert w.host.slot_links == {"green": good} and set(w.host.slot_procs) == {"green"}
    # the live release was verified through the front door after the rejection
    assert len(w.host.access_log) > len(log_before) and answers(w) == {good}
    assert "verified" in out.message


def _with_version(d: Deps) -> Deps:
    inv = d.inventory.model_copy(
        update={
            "health": d.inventory.health.model_copy(
                update={
                    "version": parse(
                        INVENTORY.replace(
                            "health: {deadline",
                            "health: {version: {header: X-Release-Id}, deadline",
                        ),
                        source=Path("x.yml"),
                        env="prod",
                    ).health.version
                }
            )
        }
    )
    d.inventory = inv
    return d


def test_pause_leaves_the_rejected_release_running_without_traffic_until_the_next_deploy(
    tmp_path: Path, app_repo: Path
):
    w = make_world(tmp_path, app_repo, "on_failure: pause")
    good = ship(w).release
    bad = ship(w, "ready_503")
    assert bad.exit_code == 3 and bad.result == "rejected"
    assert "paused" in bad.message
    assert w.host.slot_links == {"green": good, "blue": bad.release}
    assert set(w.host.slot_procs) == {"green", "blue"} and answers(w) == {good}
    views = {v.slot.name: (v.role, v.release) for v in host_status(w.deps).slots}
    assert views == {"green": ("live", good), "blue": ("paused", bad.release)}
    third = ship(w)
    assert third.exit_code == 0
    assert w.host.slot_links == {"blue": third.release}  # the paused one was replaced
    assert (bad.release, "blue", "stopped") in slot_events(w.host)


# ---------------------------------------------------------------------------- after the switch


def test_a_release_that_dies_after_the_switch_is_reverted_during_the_bake(
    tmp_path: Path, app_repo: Path
):
    world = make_world(tmp_path, app_repo, "bake: {seconds: 10}")
    good = ship(world).release
    # ready, stable through its gate (stable_for 1 s), then it dies: the bake catches it
    out = ship(world, "crash_after:5")
    assert out.exit_code == 3 and out.result == "rolled-back", world.reporter.lines
    h = world.host
    assert out.live == good == h.current and h.upstream == (GREEN, None)
    assert answers(world) == {good}
    assert state_of(h, out.release or "") == "bad" and state_of(h, good or "") == "good"
    assert set(h.slot_procs) == {"green"}  # the failed slot was stopped
    assert any("bake" in line for line in out.evidence)
    # users first: the switch back runs before the failed slot's logs are read
    names = world.remote.names()
    last_switch = len(names) - 1 - names[::-1].index("proxy.switch")
    assert "pm2.logs" in names[last_switch:]


def test_server_errors_of_real_traffic_fail_the_bake(world: World):
    good = ship(world).release
    world.host.user_requests = 10
    out = ship(world, "errors_5xx")
    assert out.exit_code == 3 and out.result == "rolled-back", world.reporter.lines
    assert "5xx ratio" in out.message and world.host.current == good
    world.host.user_requests = 0
    assert answers(world) == {good}


METRICS_ONLY = """bake:
  seconds: 3
  max_error_ratio: 1     # the access log's 5xx judgement off: only the app's counter speaks
  metrics: {max_error_ratio: 0.05, min_requests: 20}
"""


def test_the_apps_own_counter_fails_the_bake_when_the_access_log_does_not(
    tmp_path: Path, app_repo: Path
):
    w = make_world(tmp_path, app_repo, METRICS_ONLY, instances=1)
    good = ship(w).release
    w.host.user_requests = 10
    out = ship(w, "errors_5xx")
    assert out.exit_code == 3 and out.result == "rolled-back", w.reporter.lines
    assert re.search(r"metrics: 5xx ratio 0\.\d+ > 0\.05 over \d+ requests", out.message)
    assert any("FAIL metrics: 5xx ratio" in line for line in out.evidence)
    assert w.host.current == good
    w.host.user_requests = 0
    assert answers(w) == {good}


def test_without_the_metrics_signal_the_same_release_is_promoted(tmp_path: Path, app_repo: Path):
    # the counterpart of the test above: what the metrics signal adds
    w = make_world(tmp_path, app_repo, "bake: {seconds: 3, max_error_ratio: 1}", instances=1)
    ship(w)
    w.host.user_requests = 10
    out = ship(w, "errors_5xx")
    assert out.exit_code == 0 and out.result == "promoted", w.reporter.lines


def test_a_healthy_release_passes_the_metrics_signal(tmp_path: Path, app_repo: Path):
    w = make_world(tmp_path, app_repo, METRICS_ONLY, instances=1)
    ship(w)
    w.host.user_requests = 10
    out = ship(w)
    assert out.exit_code == 0 and out.result == "promoted", w.reporter.lines
    assert any(
        "metrics: " in line and "requests since the bake started, 0 5xx" in line
        for line in out.evidence
    ), out.evidence


def test_nginx_refusing_the_switch_changes_nothing_live(world: World):
    good = ship(world).release
    world.host.nginx_refuses = True
    with pytest.raises(NotSwitched) as exc:
        ship(world)
    assert exc.value.exit_code == 5
    h = world.host
    assert h.current == good and h.upstream == (GREEN, None) and answers(world) == {good}
    new = next(r for r in h.releases if r != good)
    assert state_of(h, new) == "ready" and set(h.slot_procs) == {"green"}
    assert h.lock is None


# ---------------------------------------------------------------------------- rollback


def test_a_manual_rollback_to_a_warm_release_is_a_switch(tmp_path: Path, app_repo: Path):
    w = make_world(tmp_path, app_repo, "retire: keep-warm")
    first = ship(w).release
    second = ship(w).release
    before = len(w.remote.log)
    out = rollback(w.deps)
    assert out.exit_code == 0 and out.result == "rolled-back", w.reporter.lines
    names = w.remote.names()[before:]
    assert "pm2.start_slot" not in names  # nothing started: it was warm
    assert w.host.current == first and w.host.upstream == (GREEN, None)
    assert answers(w) == {first}
    assert state_of(w.host, second or "") == "rolled-back"
    assert set(w.host.slot_procs) == {"green", "blue"}  # keep-warm: the one left stays warm


def test_a_manual_rollback_to_a_stopped_release_is_gated_in_the_idle_slot(world: World):
    first = ship(world).release
    ship(world)
    before = len(world.remote.log)
    out = rollback(world.deps)
    assert out.exit_code == 0, world.reporter.lines
    names = world.remote.names()[before:]
    assert (
        names.index("pm2.start_slot")
        < names.index("process.identity")
        < names.index("proxy.switch")
    )
    assert world.host.current == first and answers(world) == {first}


# ---------------------------------------------------------------------------- killed runs


def test_a_run_killed_during_the_bake_is_finished_by_the_next_run(world: World):
    good = ship(world).release
    world.remote.dies_after = "current.switch"  # SIGKILL right after the switch
    ship(world)
    h = world.host
    killed = h.current
    assert killed != good and h.upstream == (BLUE, GREEN)  # left mid-bake
    world.remote.dead, world.remote.dies_after = False, None
    h.lock = None  # its lease ran out
    out = ship(world)
    assert out.exit_code == 0, world.reporter.lines
    assert state_of(h, killed or "") == "good"  # re-watched through the front door, promoted
    assert h.current == out.release and answers(world) == {out.release}


def test_a_run_killed_between_the_front_door_and_current_is_made_consistent(world: World):
    good = ship(world).release
    world.remote.dies_after = "proxy.switch"  # current.switch never ran
    ship(world, "crash_after:5")
    h = world.host
    assert h.current == good and h.upstream == (BLUE, GREEN)
    world.remote.dead, world.remote.dies_after = False, None
    h.lock = None
    out = rollback(world.deps)
    # current followed the front door, the unverified release failed its bake and the
    # previous one (still running as the backup) took the traffic back: the one step back
    assert out.exit_code == 0 and out.result == "rolled-back", world.reporter.lines
    assert h.current == good and h.upstream == (GREEN, None) and answers(world) == {good}
    assert any("current now points at" in line for line in world.reporter.lines)


def test_an_upstream_file_pointed_at_the_empty_slot_by_hand_stops_before_anything(
    world: World,
):
    good = ship(world).release
    h = world.host
    live, idle = h.upstream[0], (GREEN if h.upstream[0] == BLUE else BLUE)
    h.upstream = (idle, None)  # edited by hand; nginx, not reloaded, still serves `live`
    links, procs = dict(h.slot_links), set(h.slot_procs)
    with pytest.raises(PreflightFailed) as exc:
        ship(world)
    assert exc.value.exit_code == 5
    assert "changed outside releasegate" in str(exc.value)
    assert f"server 127.0.0.1:{live};" in str(exc.value)
    assert h.current == good and h.upstream == (idle, None) and h.lock is None
    assert h.slot_links == links and set(h.slot_procs) == procs  # the live slot untouched


# ---------------------------------------------------------------------------- preflight


def test_preflight_refuses_a_host_without_the_front_door(world: World):
    world.remote.proxy_facts = ["site=", "config=failed", "config_error=nginx: [emerg] x"]
    with pytest.raises(PreflightFailed) as exc:
        ship(world)
    assert exc.value.exit_code == 5
    failed = "\n".join(exc.value.evidence)
    assert "front door site" in failed and "nginx config" in failed
    assert world.host.lock is None and not world.host.releases and not world.host.journal


# ---------------------------------------------------------------------------- what it says


def test_outcomes_webhooks_and_the_ci_summary_say_what_each_slot_runs(
    tmp_path: Path, app_repo: Path
):
    from deploy import github, notify
    from deploy.model import SlotRole
    from deploy.redact import Redactor

    w = make_world(tmp_path, app_repo, "retire: keep-warm")
    first = ship(w).release
    out = ship(w)
    assert out.slots == (
        SlotRole("blue", BLUE, "live", out.release),
        SlotRole("green", GREEN, "warm", first),
    )
    context = notify.Context(env="prod", app="app", host="web1", actor="ci", at="now")
    notice = notify.Notice(event="promoted", outcome=out, context=context)
    payload = notify.json_payload(notice, Redactor())
    assert payload["slots"] == [
        {"slot": "blue", "port": BLUE, "role": "live", "release": out.release},
        {"slot": "green", "port": GREEN, "role": "warm", "release": first},
    ]
    assert f"green warm `{first}`" in notify.slack_payload(notice, Redactor())["text"]
    summary = github.step_summary(out, "prod", Redactor())
    assert f"| slot green | warm `{first}` |" in summary
    rejected = ship(w, "boot_crash")
    assert rejected.result == "rejected" and notify.event_for(rejected) == "rolled-back"
    # the rejected release's slot was stopped: the warm one was replaced by it, then stopped
    assert rejected.slots == (SlotRole("blue", BLUE, "live", out.release),)


def test_status_lists_the_slots_in_words_and_in_json(tmp_path: Path, app_repo: Path):
    import io

    from deploy.report import JsonReporter, status_lines

    w = make_world(tmp_path, app_repo, "retire: keep-warm")
    first = ship(w).release
    second = ship(w).release
    status = host_status(w.deps)
    lines = status_lines(status)
    assert any(line.startswith("  blue  :3001  live") and str(second) in line for line in lines)
    assert any(f"{first}  good  <- warm in green" in line for line in lines)
    out = io.StringIO()
    JsonReporter(out).status(status)
    shown = json.loads(out.getvalue())
    assert [(s["slot"], s["role"], s["release"]) for s in shown["slots"]] == [
        ("blue", "live", second),
        ("green", "warm", first),
    ]
    assert shown["slots"][0]["process"]["status"] == "online"


def test_a_dry_run_reads_the_front_door_and_changes_nothing(world: World):
    from deploy.plan import PlanRemote

    good = ship(world).release
    before = (list(world.host.journal), dict(world.host.slot_links), world.host.upstream)
    plan = PlanRemote(world.remote, world.reporter)
    world.deps.remote = plan
    world.deps.dry_run = True
    out = ship(world)
    assert out.exit_code == 0 and out.result == "planned", world.reporter.lines
    assert (list(world.host.journal), dict(world.host.slot_links), world.host.upstream) == before
    assert world.host.current == good
    shown = "\n".join(plan.planned)
    assert "pm2 start" in shown and "front door to live 127.0.0.1:3001" in shown
    assert any("ok   nginx config" in line for line in world.reporter.lines)  # really probed


def test_a_rejected_first_release_leaves_nothing_running_and_says_so(world: World):
    out = ship(world, "ready_503")
    assert out.exit_code == 6 and out.result == "rejected", world.reporter.lines
    assert "No release serves yet" in out.message
    assert world.host.slot_procs == {} and world.host.current is None
    assert state_of(world.host, out.release or "") == "bad"


def test_ctrl_c_while_gating_in_the_slot_stops_it_and_changes_nothing_live(world: World):
    from deploy.errors import Interrupted

    good = ship(world).release
    world.remote.interrupt_on["process.identity"] = KeyboardInterrupt
    with pytest.raises(Interrupted) as exc:
        ship(world)
    assert exc.value.exit_code == 130 and "nothing live changed" in exc.value.message
    h = world.host
    assert h.current == good and h.upstream == (GREEN, None) and set(h.slot_procs) == {"green"}
    new = next(r for r in h.releases if r != good)
    assert state_of(h, new) == "ready"  # not judged: not bad
    assert h.lock is None


@pytest.mark.parametrize("instances", [2, 1])
def test_setup_tells_a_cluster_mode_app_how_to_start_the_pm2_daemon(
    tmp_path: Path, app_repo: Path, instances: int
):
    # a cluster worker that crashes while the daemon hands it a connection hangs that request
    # under Node's round-robin (docs/blue-green.md); fork mode has no such handoff
    w = make_world(tmp_path, app_repo, instances=instances)
    flow.setup_front_door(w.deps, host_ops(w.deps))
    text = "\n".join(w.reporter.lines)
    if instances > 1:
        assert "Environment=NODE_CLUSTER_SCHED_POLICY=none" in text
    else:
        assert "NODE_CLUSTER_SCHED_POLICY" not in text
