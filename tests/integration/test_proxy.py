"""The nginx front door on the sandbox VPS: the sandbox's systemd runs nginx, root installs
releasegate's site config for a throwaway app (as an operator would), two tiny HTTP servers
started as the deploy user are the slots, and deploy.proxy's commands run over releasegate's
own SSH Remote. Load goes through nginx from this machine: a new connection per request and
a keep-alive client. Figures (switch times) are printed, not asserted."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator

import pytest

from bench.load import KeepAliveLoad, Load, tail_is
from bench.proxy import FrontDoor, failed, front_door, summary, switch_and_settle
from deploy import proxy
from deploy.model import Layout
from deploy.sandbox import SandboxInfo
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

PUBLIC = itertools.count(8700)
SLOTS = itertools.count(4800, 2)


@pytest.fixture(scope="module")
def shared_door(vps: SandboxInfo) -> Iterator[FrontDoor]:
    first = next(SLOTS)
    with front_door(vps, public_port=next(PUBLIC), slots={"blue": first, "green": first + 1}) as d:
        yield d


@pytest.fixture
def door(shared_door: FrontDoor) -> FrontDoor:
    """The module's app, both slots running and blue alone live, whatever a test left."""
    shared_door.reset("blue")
    return shared_door


def ssh(vps: SandboxInfo, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vps.ssh_argv(command), capture_output=True, text=True, timeout=60)


def test_the_sandbox_runs_nginx_under_systemd_with_the_allowlist(vps: SandboxInfo) -> None:
    allowed = [line.split("NOPASSWD: ", 1)[1] for line in proxy.sudoers_lines(vps.user)]
    refused = ["/usr/sbin/nginx -s stop", "/usr/sbin/nginx -T", "/usr/sbin/nginx"]
    script = "; ".join(
        [
            "systemctl is-active nginx",
            "systemctl is-enabled nginx",
            *(f"sudo -n -l {c} >/dev/null 2>&1; echo $?" for c in allowed + refused),
            "id -nG",
        ]
    )
    out = ssh(vps, script).stdout.splitlines()
    assert out[:2] == ["active", "enabled"]
    assert out[2 : 2 + len(allowed)] == ["0"] * len(allowed)
    assert "0" not in out[2 + len(allowed) : -1]
    assert "adm" in out[-1].split()  # the deploy user reads nginx's logs


def test_switching_back_and_forth_under_load_fails_no_request(
    door: FrontDoor, capsys: pytest.CaptureFixture[str]
) -> None:
    blue, green = door.slots["blue"], door.slots["green"]
    per_conn = Load(
        door.vps.service_address, door.public_port, "/", rate=50, max_seconds=60, timeout=5
    )
    keepalive = KeepAliveLoad(
        door.vps.service_address, door.public_port, "/", rate=20, max_seconds=60, timeout=5
    )
    clients: dict[str, Load | KeepAliveLoad] = {"new-conn": per_conn, "keep-alive": keepalive}
    figures = []
    with per_conn, keepalive:
        for client in clients.values():
            assert client.wait_for(tail_is("blue", 5), deadline=10)
        for to, up in [
            ("green", proxy.Upstream(green, blue)),
            ("blue", proxy.Upstream(blue)),
            ("green", proxy.Upstream(green)),
            ("blue", proxy.Upstream(blue, green)),
        ]:
            # raises unless every client's answers moved to `to`
            figures.append(switch_and_settle(door, up, to, clients))
            assert door.upstream() == up
    hits, kept = per_conn.hits(), keepalive.hits()
    assert failed(hits) == [] and failed(kept) == []
    assert {h.release for h in hits} == {"blue", "green"}
    with capsys.disabled():
        print("\nfront door switches under load (sandbox, nginx reload):")
        print("\n".join(summary(figures)))
        print(
            f"{len(hits)} new-connection and {len(kept)} keep-alive requests, 0 failed; "
            f"the keep-alive client reconnected {keepalive.retried}x when a reload closed "
            f"its idle connection"
        )


def test_nginx_refusing_the_config_means_no_switch(door: FrontDoor) -> None:
    broken = f"/etc/nginx/conf.d/zz-broken-{door.app}.conf"
    door.as_root(f"echo 'server {{ listen nonsense; }}' > {broken}")
    try:
        with Load(
            door.vps.service_address, door.public_port, "/", rate=50, max_seconds=30, timeout=5
        ) as load:
            report, _, _ = door.switch(proxy.Upstream(door.slots["green"]))
            assert not report.ok and report.reason == "refused" and report.consistent
            assert report.exit_code == proxy.SWITCH_REFUSED
            assert "nonsense" in report.detail
            assert door.upstream() == proxy.Upstream(door.slots["blue"])
            # still served, still by blue: nothing switched, nothing reloaded
            seen = len(load.hits())
            assert load.wait_for(lambda hits: len(hits) >= seen + 20, deadline=10)
        assert failed(load.hits()) == []
        assert {h.release for h in load.hits()} == {"blue"}
    finally:
        door.as_root(f"rm -f {broken}")


def test_the_backup_slot_catches_a_live_slot_that_dies(door: FrontDoor) -> None:
    blue, green = door.slots["blue"], door.slots["green"]
    with Load(
        door.vps.service_address, door.public_port, "/", rate=50, max_seconds=30, timeout=5
    ) as load:
        report, start, took = door.switch(proxy.Upstream(green, blue))  # blue is the backup
        assert report.ok and report.log_offset is not None
        assert load.wait_for(tail_is("green", 10), deadline=10)
        door.kill_slot("green")
        killed = len(load.hits())
        assert load.wait_for(lambda hits: len(hits) >= killed + 50, deadline=15)
        assert load.wait_for(tail_is("blue", 20), deadline=10)
    assert failed(load.hits()) == []
    after = [h for h in load.hits() if h.sent >= start + took]  # surely logged past the offset
    traffic = wait_until(
        lambda: (t := door.traffic(report.log_offset or 0)).requests >= len(after) and t,
        10,
        "the requests since the switch in the access log",
    )
    # users saw no error; the log shows nginx tried the dead slot and the backup answered
    assert traffic.server_errors == 0
    assert traffic.of_port(green).failed >= 1 and traffic.upstream_errors >= 1
    assert traffic.of_port(blue).answered >= 20


def test_preflight_facts_on_the_sandbox(door: FrontDoor, vps: SandboxInfo) -> None:
    free = next(SLOTS)
    cmd = proxy.probe(
        door.paths, public_port=door.public_port, slot_ports=(door.slots["green"], free)
    )
    facts = proxy.parse_facts(door.remote.run(cmd).stdout)
    checks = proxy.judge(
        facts,
        paths=door.paths,
        user=vps.user,
        env="test",
        public_port=door.public_port,
        idle_port=free,
    )
    assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]
    green = facts.ports[door.slots["green"]]
    assert green.state == "own" and green.cwd == str(door.layout.root)  # our slot server

    # an app whose site was never installed: the checks say what to do
    other = proxy.proxy_paths(Layout(door.layout.root / "elsewhere"), "nosite")
    facts = proxy.parse_facts(
        door.remote.run(proxy.probe(other, public_port=8699, slot_ports=(free,))).stdout
    )
    names = {
        c.name
        for c in proxy.judge(
            facts, paths=other, user=vps.user, env="test", public_port=8699, idle_port=free
        )
        if not c.ok
    }
    assert names == {"front door site", "upstream file", "access log", "public port"}
