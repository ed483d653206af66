"""Many hosts (deploy.fleet) against three fake hosts: the order across hosts, the
all-or-nothing rollback, and what each host runs afterwards."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from deploy import fleet, notify
from deploy.artifact import Source
from deploy.commands import Cmd
from deploy.deps import Deps, host_ops
from deploy.errors import ConnectionLost, HostUnreachable, LockHeld, PreflightFailed, Signalled
from deploy.inventory import Inventory, parse
from deploy.model import Outcome
from deploy.plan import PlanRemote
from deploy.redact import Redactor
from deploy.remote import Result
from deploy.report import RecordingReporter
from tests.conftest import git
from tests.fakehost import FakeClock, FakeHost, FakeRemote, app_handler

Handler = Callable[[httpx.Request], httpx.Response]
INVENTORY = """
host_defaults: {user: deploy, root: /srv/app}
hosts: [{name: web1, address: 10.0.0.5}, {name: web2, address: 10.0.0.6},
        {name: web3, address: 10.0.0.7}]
rollout: {batch: 1}
app: {name: app, repo: ., install: npm ci}
process: {command: server.js, port: 3000, instances: 2}
health: {deadline: 5, interval: 0.5, successes: 3}
"""


class World:
    def __init__(
        self,
        tmp_path: Path,
        repo: Path,
        inventory: str = INVENTORY,
        remotes: tuple[type[FakeRemote], ...] = (),
        **host: object,
    ) -> None:
        self.inv: Inventory = parse(
            inventory, source=tmp_path / "inventories" / "prod.yml", env="prod"
        )
        self.repo = repo
        self.reporter = RecordingReporter()
        self.lb_status = 200  # what the load balancer (smoke.base_url) answers on /api
        self.lb_seen: list[str] = []
        self.lb_hook: Callable[[], None] = lambda: None  # as the load balancer is asked
        self.hosts = [FakeHost(**host) for _ in self.inv.hosts]  # type: ignore[arg-type]
        self.clocks = [FakeClock() for _ in self.inv.hosts]
        kinds = [*remotes, *[FakeRemote] * len(self.hosts)]
        self.remotes = [
            kind(h, c) for kind, h, c in zip(kinds, self.hosts, self.clocks, strict=False)
        ]
        lock = threading.Lock()
        members = []
        shared: dict = {}
        for i, host in enumerate(self.inv.hosts):
            remote = self.remotes[i]
            d = Deps(
                inventory=fleet.host_part(self.inv, host.name),
                remote=remote,
                reporter=fleet.HostReporter(self.reporter, host.name, lock),
                clock=self.clocks[i],
                actor="tester",
                workdir=tmp_path / "work" / host.name,
                http=functools.partial(_client, remote, self.front_door),
                gate_packs=shared,
            )
            members.append(fleet.Member(d, host_ops(d)))
        self.fleet = fleet.Fleet(inventory=self.inv, members=members, reporter=self.reporter)

    def ship(self, faults: dict[int, str] | None = None) -> Outcome:
        for clock in self.clocks:
            clock.sleep(2)  # a new release id
        for i, remote in enumerate(self.remotes):
            remote.next_fault = (faults or {}).get(i, "")
        (self.repo / "version.txt").write_text(f"{self.clocks[0].t}\n")
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "release")
        for member in self.fleet.members:  # a new operation: hosts are read again
            member.host.state_at_lock = None
        return fleet.deploy(self.fleet, Source(repo=self.repo, revision="HEAD"))

    def currents(self) -> list[str | None]:
        return [h.current for h in self.hosts]

    def journal_states(self, index: int, rid: str) -> list[str]:
        entries = map(json.loads, self.hosts[index].journal)
        return [e["state"] for e in entries if e["release"] == rid and e["state"]]

    def front_door(self, request: httpx.Request) -> httpx.Response:
        self.lb_seen.append(request.url.path)
        self.lb_hook()
        return httpx.Response(self.lb_status, json={"items": []})


def _client(remote: FakeRemote, lb: Handler, base: str, timeout: float) -> httpx.Client:
    transport = httpx.MockTransport(lb) if base.startswith("http://lb") else app_handler(remote)
    return httpx.Client(base_url=base, transport=transport)


@pytest.fixture
def world(tmp_path: Path, app_repo: Path) -> World:
    return World(tmp_path, app_repo)


def test_rolling_deploy_promotes_the_same_release_on_every_host(world):
    out = world.ship()
    assert out.exit_code == 0 and out.result == "promoted"
    assert world.currents() == [out.release] * 3
    assert [h.running for h in world.hosts] == [out.release] * 3
    assert [h.live for h in out.hosts] == [out.release] * 3 and all(h.verified for h in out.hosts)
    assert all(h.lock is None for h in world.hosts)
    # one host at a time: each activation is its own batch, in listed order
    assert [s for s in world.reporter.stages if s.startswith("activate")] == [
        f"activate {out.release} on web{i} (batch {i} of 3)" for i in (1, 2, 3)
    ]


def test_failure_on_host_two_rolls_back_every_switched_host_and_leaves_three(world):
    good = world.ship().release
    before3 = list(world.remotes[2].names())
    out = world.ship(faults={1: "ready_503"})
    bad = out.release
    assert out.exit_code == 3 and out.result == "rolled-back"
    assert world.currents() == [good, good, good]
    assert [h.running for h in world.hosts] == [good, good, good]
    assert [(h.host, h.live, h.verified) for h in out.hosts] == [
        ("web1", good, True),
        ("web2", good, True),
        ("web3", good, True),
    ]
    assert [h.result for h in out.hosts] == ["rolled-back", "rolled-back", "untouched"]
    # host one passed its gate, then went back: the release is rolled-back there, bad on two
    assert world.journal_states(0, bad)[-1] == "rolled-back"
    assert world.journal_states(1, bad)[-1] == "bad"
    # host three was never switched: no activation, and the unused copy is gone
    after3 = world.remotes[2].names()[len(before3) :]
    assert "current.switch" not in after3 and "pm2.activate" not in after3
    assert bad not in world.hosts[2].releases
    assert all(h.lock is None for h in world.hosts)
    assert "web2" in out.message and "503" in out.message


def test_unreachable_or_failing_preflight_on_host_three_changes_nothing(world):
    good = world.ship().release
    journals = [list(h.journal) for h in world.hosts]
    world.remotes[2].facts = {**world.remotes[2].facts, "root": "not-writable"}
    with pytest.raises(PreflightFailed) as err:
        world.ship()
    assert err.value.exit_code == 5
    assert "web3" in err.value.message and "nothing was changed" in err.value.message
    assert world.currents() == [good] * 3
    assert [h.journal for h in world.hosts] == journals  # not even a lock was taken
    assert all("lock.acquire" not in r.names()[-6:] for r in world.remotes)


def test_connect_failure_on_one_host_closes_the_others(world):
    closed = []

    class Closing(FakeRemote):
        def close(self) -> None:
            closed.append(self)

    def open_one(part: Inventory) -> FakeRemote:
        if part.host.name == "web3":
            raise HostUnreachable("connection refused")
        return Closing(FakeHost(), FakeClock())

    with pytest.raises(HostUnreachable) as err:
        fleet.connect(world.inv, open_one)
    assert err.value.exit_code == 5 and "web3 (1 of 3 hosts)" in err.value.message
    assert len(closed) == 2


def test_lock_held_on_host_two_releases_host_one_and_changes_nothing(world):
    good = world.ship().release
    world.hosts[1].hold("f" * 32, {"actor": "alice", "op": "lock", "pid": 1}, None, 0)
    with pytest.raises(LockHeld) as err:
        world.ship()
    assert err.value.exit_code == 4
    assert "web2" in err.value.message and "alice" in err.value.message
    assert "locks taken on web1 were released" in err.value.message
    assert world.hosts[0].lock is None and world.hosts[2].lock is None
    assert world.hosts[1].lock is not None  # alice's lock stands
    assert "lock.acquire" not in world.remotes[2].names()[-3:]
    assert world.currents() == [good] * 3


def test_lost_ssh_after_activation_exit_6_with_what_each_host_runs(world):
    good = world.ship().release
    world.remotes[1].interrupt_on["pm2.activate"] = functools.partial(
        ConnectionLost, "the SSH connection dropped"
    )
    out = world.ship()
    assert out.exit_code == 6 and out.result == "rollback-failed"
    by_host = {h.host: h for h in out.hosts}
    assert by_host["web1"].live == good and by_host["web1"].verified  # put back
    assert by_host["web2"].result == "unknown" and not by_host["web2"].verified
    assert by_host["web3"].result == "untouched" and by_host["web3"].live == good
    assert world.currents()[0] == world.currents()[2] == good
    table = world.reporter.tables[-1]
    assert table[0] == ["host", "before", "live", "result", "verified"]
    assert [row[0] for row in table[1]] == ["web1", "web2", "web3"]


def test_max_failed_lets_one_host_fail_alone(tmp_path, app_repo):
    world = World(
        tmp_path, app_repo, INVENTORY.replace("{batch: 1}", "{batch: all, max_failed: 1}")
    )
    good = world.ship().release
    out = world.ship(faults={1: "ready_503"})
    assert out.exit_code == 0 and "web2 failed" in out.message
    assert world.currents() == [out.release, good, out.release]
    assert f"activate {out.release} on web1, web2, web3 (batch 1 of 1)" in world.reporter.stages


def test_manual_rollback_moves_every_host_to_the_newest_release_good_on_all(world):
    first = world.ship().release
    second = world.ship().release
    for member in world.fleet.members:
        member.host.state_at_lock = None
    out = fleet.rollback(world.fleet)
    assert out.exit_code == 0 and out.release == first
    assert world.currents() == [first] * 3
    assert all(world.journal_states(i, second)[-1] == "rolled-back" for i in range(3))


def test_status_flags_drift(world):
    first = world.ship().release
    second = world.ship().release
    world.hosts[2].current = first  # changed by hand
    assert fleet.status(world.fleet) == 0
    warning = next(line for line in world.reporter.lines if "drift" in line)
    assert f"web1, web2 on {second}" in warning and f"web3 on {first}" in warning
    columns, rows = world.reporter.tables[-1]
    assert [r[1] for r in rows] == [second, second, first]


BLUE_GREEN = """
strategy:
  kind: blue-green
  slots: {blue: 3001, green: 3002}
  public_port: 8080
  bake: {seconds: 2}
"""


def test_blue_green_per_host_failure_on_host_two_puts_host_one_back(tmp_path, app_repo):
    world = World(
        tmp_path,
        app_repo,
        INVENTORY.replace("successes: 3}", "successes: 3, stable_for: 1}") + BLUE_GREEN,
        upstream=(3001, None),  # as `releasegate setup` leaves it
    )
    good = world.ship().release
    later = world.clocks[0].t + 100
    assert [h.serving(h.upstream[0], later) for h in world.hosts if h.upstream] == [good] * 3
    out = world.ship(faults={1: "ready_503"})
    assert out.exit_code == 3, world.reporter.lines
    assert [(h.host, h.result, h.live) for h in out.hosts] == [
        ("web1", "rolled-back", good),
        ("web2", "rejected", good),  # failed in its idle slot: never took traffic
        ("web3", "untouched", good),
    ]
    # the front door of every host answers with the release it was on
    later = world.clocks[0].t + 100
    assert [h.serving(h.upstream[0], later) for h in world.hosts if h.upstream] == [good] * 3


def test_dry_run_changes_nothing_and_says_so(world):
    good = world.ship().release
    for member in world.fleet.members:
        member.deps.dry_run = True
        member.deps.remote = PlanRemote(member.deps.remote, member.deps.reporter)
        member.host.remote = member.deps.remote
    out = world.ship()
    assert out.exit_code == 0 and out.result == "planned", world.reporter.lines
    assert world.currents() == [good] * 3


PACK = """
version: 1
name: contract
checks:
  - name: items
    request: {path: /api/items}
    expect: {status: 200}
"""


def test_smoke_through_the_load_balancer_once_every_host_switched(tmp_path, app_repo):
    pack = app_repo / "smoke.yml"
    pack.write_text(PACK)
    smoke = f"smoke: {{base_url: 'http://lb.test', packs: [{pack}]}}\n"
    world = World(tmp_path, app_repo, INVENTORY + smoke)
    good = world.ship().release
    assert world.lb_seen == ["/api/items"]  # once for the fleet; each host through its tunnel
    world.lb_status = 500  # users would see errors through the load balancer
    out = world.ship()
    assert out.exit_code == 3, world.reporter.lines
    assert "smoke.base_url (http://lb.test)" in out.message
    assert world.currents() == [good] * 3
    assert [h.result for h in out.hosts] == ["rolled-back"] * 3


def test_sigterm_on_host_two_puts_every_switched_host_back_exit_143(world):
    good = world.ship().release
    world.remotes[1].interrupt_on["pm2.jlist"] = functools.partial(Signalled, signal.SIGTERM)
    out = world.ship()
    assert out.exit_code == 143 and out.result == "rolled-back", world.reporter.lines
    assert world.currents() == [good] * 3
    assert [h.result for h in out.hosts] == ["rolled-back", "rolled-back", "untouched"]
    assert all(h.lock is None for h in world.hosts)


def test_webhook_payloads_say_what_each_host_runs(world):
    good = world.ship().release
    out = world.ship(faults={1: "ready_503"})
    context = notify.Context(env="prod", app="app", host="web1, web2, web3", actor="t", at="now")
    notice = notify.Notice(event="rolled-back", outcome=out, context=context)
    payload = notify.json_payload(notice, Redactor())
    assert [(h["host"], h["live"], h["verified"]) for h in payload["hosts"]] == [
        ("web1", good, True),
        ("web2", good, True),
        ("web3", good, True),
    ]
    text = notify.slack_payload(notice, Redactor())["text"]
    assert f"• web2 `{good}` rolled-back" in text and f"• web3 `{good}` untouched" in text


SWITCHED_BACK = threading.Event()  # host one's put-back switched `current`


class HostOne(FakeRemote):
    """Notes when `current` switches for the second time after it is armed."""

    armed = False
    switches = 0

    def _one(self, cmd: Cmd) -> Result:
        if self.armed and cmd.name == "current.switch":
            self.switches += 1
            if self.switches == 2:  # 1: the new release; 2: back to the previous one
                SWITCHED_BACK.set()
        return super()._one(cmd)


class HostTwo(FakeRemote):
    """Its own rollback (its second switch once armed) waits until host one went back."""

    armed = False
    switches = 0
    waited: bool | None = None

    def _one(self, cmd: Cmd) -> Result:
        if self.armed and cmd.name == "current.switch":
            self.switches += 1
            if self.switches == 2:
                self.waited = SWITCHED_BACK.wait(timeout=10)
        return super()._one(cmd)


def test_switched_hosts_go_back_while_the_failing_host_rolls_back(tmp_path, app_repo):
    SWITCHED_BACK.clear()
    world = World(tmp_path, app_repo, remotes=(HostOne, HostTwo))
    good = world.ship().release
    one, two = world.remotes[0], world.remotes[1]
    assert isinstance(one, HostOne) and isinstance(two, HostTwo)
    one.armed = two.armed = True
    out = world.ship(faults={1: "ready_503"})
    assert out.exit_code == 3, world.reporter.lines
    assert world.currents() == [good] * 3
    # host two's own rollback did not hold host one back: it went back meanwhile
    assert two.waited is True


def test_manual_lock_is_all_or_nothing(world):
    world.hosts[2].hold("f" * 32, {"actor": "alice", "op": "lock", "pid": 1}, None, 0)
    with pytest.raises(LockHeld) as err:
        fleet.lock(world.fleet, "db migration")
    assert "web3" in err.value.message and "web1, web2 were released again" in err.value.message
    assert world.hosts[0].lock is None and world.hosts[1].lock is None
    world.hosts[2].lock = None
    out = fleet.lock(world.fleet, "db migration")
    assert out.result == "locked" and all(h.lock is not None for h in world.hosts)


def test_status_shows_the_hosts_it_reaches_and_names_the_others(world):
    good = world.ship().release
    by_name = {m.name: m for m in world.fleet.members}

    def open_one(part: Inventory, _rep: object) -> FakeRemote:
        if part.host.name == "web2":
            raise HostUnreachable("connection refused")
        remote = by_name[part.host.name].deps.remote
        assert isinstance(remote, FakeRemote)
        return remote

    def make_deps(part: Inventory, _remote: object, _rep: object, _index: int) -> Deps:
        return by_name[part.host.name].deps

    with fleet.opened(world.inv, world.reporter, open_one, make_deps, partial=True) as fl:
        assert [m.name for m in fl.members] == ["web1", "web3"]
        assert fleet.status(fl) == 5  # the view is incomplete
    columns, rows = world.reporter.tables[-1]
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("web1", good, "free"),
        ("web2", "?", "unreachable"),
        ("web3", good, "free"),
    ]
    assert any("web2: unreachable, left out: connection refused" in x for x in world.reporter.lines)


class SignallingReporter(RecordingReporter):
    """Sends the process a real SIGTERM as the main thread enters (or leaves) a stage: a
    moment between waits, where no host's flow is waited on."""

    def __init__(self, stage: str, when: str) -> None:
        super().__init__()
        self.at, self.when, self.sent = stage, when, False

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        hit = not self.sent and self.at in name
        if hit and self.when == "enter":
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        with super().stage(name):
            yield
        if hit and self.when == "leave":
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def sigterm_raises():
    """SIGTERM handled as the CLI does (deploy.operations): Signalled in the main thread."""

    def raise_signalled(signum: int, _frame: object) -> None:
        raise Signalled(signum)

    old = signal.signal(signal.SIGTERM, raise_signalled)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize(
    ("stage", "when"),
    [
        ("(batch 1 of 3)", "leave"),  # host one just switched, batch two not started
        ("(batch 2 of 3)", "enter"),
        ("roll back", "enter"),  # a second signal while the switched hosts go back
    ],
)
def test_sigterm_between_waits_puts_every_switched_host_back(world, sigterm_raises, stage, when):
    good = world.ship().release
    world.reporter = world.fleet.reporter = SignallingReporter(stage, when)
    if stage == "roll back":  # the first signal: host two, during its gate
        world.remotes[1].interrupt_on["pm2.jlist"] = functools.partial(Signalled, signal.SIGTERM)
    out = world.ship()
    assert world.fleet.reporter.sent
    assert out.exit_code == 143 and out.result == "rolled-back", world.reporter.lines
    assert world.currents() == [good] * 3
    assert [h.running for h in world.hosts] == [good] * 3
    assert all(h.lock is None for h in world.hosts)
    assert out.hosts[0].result == "rolled-back" and out.hosts[2].result == "untouched"


def test_sigterm_during_the_front_door_smoke_puts_every_host_back(
    tmp_path, app_repo, sigterm_raises
):
    pack = app_repo / "smoke.yml"
    pack.write_text(PACK)
    smoke = f"smoke: {{base_url: 'http://lb.test', packs: [{pack}]}}\n"
    world = World(tmp_path, app_repo, INVENTORY + smoke)
    good = world.ship().release
    # every host switched; the load balancer is being checked, in the main thread
    world.lb_hook = lambda: os.kill(os.getpid(), signal.SIGTERM)
    out = world.ship()
    assert out.exit_code == 143 and out.result == "rolled-back", world.reporter.lines
    assert world.currents() == [good] * 3
    assert [h.result for h in out.hosts] == ["rolled-back"] * 3
    assert all(h.lock is None for h in world.hosts)
