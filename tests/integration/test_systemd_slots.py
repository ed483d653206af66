"""systemd's blue/green slots on the sandbox's real systemd, both scopes: the template unit
`<app>@.service` started per slot through releasegate's own SSH Remote (the flow's link_slot,
then start_slot, in one batch), checked on the host with plain ssh: each slot's main process
runs in its own release directory with that release's environment and the slot's PORT, one
slot's start never touches the other, stop = stopped and not started at boot."""

from __future__ import annotations

import itertools
import shlex
import uuid
from collections.abc import Iterator
from pathlib import PurePosixPath

import pytest

from bench.load import KeepAliveLoad
from deploy import commands, demo, operations, proxy
from deploy.model import Layout
from deploy.operations import Options
from deploy.process import Systemd
from deploy.remote import SshRemote
from deploy.report import RecordingReporter
from deploy.slots import Slot, Slots
from deploy.traffic import Load, fetch, tail_is
from tests.conftest import wait_until
from tests.integration.conftest import PORTS, Target
from tests.integration.test_systemd import as_root, deploy, manager, released, sudoers_file

pytestmark = pytest.mark.integration


@pytest.fixture(params=["system", "user"])
def sd(request: pytest.FixtureRequest, target: Target) -> Iterator[Target]:
    """The `target` app under systemd, with the in-place and the slot allowlists (system)."""
    scope = request.param
    target.data["process"] = {
        "manager": "systemd",
        "command": "server.js",
        "interpreter": "node",
        "port": target.port,
        "systemd": {"scope": scope, "restart_sec": 0.5},
    }
    target.write()
    m = manager(target)
    units = [m.unit, *(m.slot_unit(Slot(n, 1)) for n in ("blue", "green"))]
    if scope == "system":
        lines = "\n".join([*m.sudoers(slots=False), *m.sudoers(slots=True)]) + "\n"
        path = sudoers_file(target)
        as_root(
            target,
            f"printf %s {shlex.quote(lines)} > {path}.tmp && chmod 0440 {path}.tmp && "
            f"visudo -cq -f {path}.tmp && mv {path}.tmp {path}",
        )
    try:
        yield target
    finally:
        names = " ".join(units)
        if scope == "system":
            as_root(
                target,
                f"systemctl disable --now {names} >/dev/null 2>&1; "
                f"rm -f /etc/systemd/system/{m.unit} /etc/systemd/system/{m.template_unit} "
                f"{sudoers_file(target)}; systemctl daemon-reload; "
                f"systemctl reset-failed {names} 2>/dev/null; true",
            )
        else:
            target.ssh(
                f"systemctl --user disable --now {names} >/dev/null 2>&1; "
                f"rm -f .config/systemd/user/{m.unit} .config/systemd/user/{m.template_unit}; "
                f"systemctl --user daemon-reload; systemctl --user reset-failed {names} "
                "2>/dev/null; true",
                check=False,
            )


def remote(t: Target) -> SshRemote:
    vps = t.vps
    return SshRemote(
        address=vps.address,
        port=vps.port,
        user=vps.user,
        known_hosts=(vps.known_hosts,),
        identity_file=vps.identity_file,
    )


def start(t: Target, conn: SshRemote, slot: Slot, rid: str) -> str:
    """What the blue/green strategy runs: link the slot, start it, one round trip."""
    m = manager(t)
    layout = Layout(PurePosixPath(t.root))
    steps = [commands.link_slot(layout, slot.name, rid, slot.port, uuid.uuid4().hex)]
    res = conn.run(commands.batch("slot.start", [*steps, *m.start_slot(slot, rid)], "start"))
    return res.stdout


def show(t: Target, unit: str) -> dict[str, str]:
    ctl = "systemctl" if manager(t).system else "systemctl --user"
    out = t.ssh(f"{ctl} show -p ActiveState,SubState,MainPID,NRestarts,UnitFileState {unit}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def running(t: Target, unit: str) -> dict[str, str]:
    return wait_until(
        lambda: (s := show(t, unit))["SubState"] == "running" and s["MainPID"] != "0" and s,
        10,
        f"{unit} running",
    )


def environ(t: Target, pid: str) -> dict[str, str]:
    out = t.ssh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def answer(t: Target, port: int) -> str:
    """The release answering on the slot's loopback port, asked on the host itself."""
    res = t.ssh(f"curl -sf -m 2 http://127.0.0.1:{port}/version", check=False)
    return res.stdout


def test_each_slot_runs_its_own_release_with_its_port(sd: Target) -> None:
    code, rep = deploy(sd)
    assert code == 0, "\n".join(rep.lines)
    first = released(rep)
    demo.commit_fault(sd.repo, "")
    code, rep = deploy(sd)
    assert code == 0, "\n".join(rep.lines)
    second = released(rep)
    m: Systemd = manager(sd)
    base = next(PORTS) + 500
    slots = Slots.of(base, base + 1)
    blue, green = m.slot_unit(slots.blue), m.slot_unit(slots.green)
    conn = remote(sd)
    try:
        # blue on the first release: a process of its own, in that release, on blue's port,
        # with that release's environment (RELEASE_ID) and the slot's PORT winning over the
        # snapshot's (process.port)
        out = start(sd, conn, slots.blue, first)
        assert "unit changed" in out
        state = running(sd, blue)
        pid = state["MainPID"]
        assert sd.ssh(f"readlink /proc/{pid}/cwd").stdout.strip() == f"{sd.root}/releases/{first}"
        env = environ(sd, pid)
        assert env["PORT"] == str(slots.blue.port) and env["RELEASE_ID"] == first
        assert env["RELEASEGATE_SLOT"] == "blue"
        wait_until(lambda: f'"{first}"' in answer(sd, slots.blue.port), 10, "blue answers")
        installed = (
            m.installed_slot_template if m.system else f".config/systemd/user/{m.template_unit}"
        )
        before = sd.ssh(f"stat -c '%i %.9Y' {installed}").stdout

        # green on the second release; blue is not touched (same main process), `current`
        # and the in-place unit neither, and the template was not installed again
        out = start(sd, conn, slots.green, second)
        assert "unit changed" not in out
        gpid = running(sd, green)["MainPID"]
        assert sd.ssh(f"readlink /proc/{gpid}/cwd").stdout.strip() == (
            f"{sd.root}/releases/{second}"
        )
        assert environ(sd, gpid)["PORT"] == str(slots.green.port)
        wait_until(lambda: f'"{second}"' in answer(sd, slots.green.port), 10, "green answers")
        assert show(sd, blue)["MainPID"] == pid
        assert f'"{first}"' in answer(sd, slots.blue.port)
        assert sd.ssh(f"stat -c '%i %.9Y' {installed}").stdout == before
        assert sd.current() == second

        # the slot snapshot the gate and the bake read
        snap = m.parse_slot_snapshot(slots.green, conn.run(m.slot_snapshot(slots.green)).stdout)
        assert snap.status == "online" and snap.pids == (int(gpid),)

        # a start is always fresh: blue started again on the second release
        start(sd, conn, slots.blue, second)
        state = wait_until(
            lambda: (s := running(sd, blue))["MainPID"] != pid and s, 10, "a new blue process"
        )
        assert sd.ssh(f"readlink /proc/{state['MainPID']}/cwd").stdout.strip() == (
            f"{sd.root}/releases/{second}"
        )

        # persist = enabled at boot; stop = stopped and disabled; stopping again is fine
        conn.run(m.persist_slot(slots.blue))  # type: ignore[arg-type]
        conn.run(m.persist_slot(slots.green))  # type: ignore[arg-type]
        assert show(sd, blue)["UnitFileState"] == "enabled"
        conn.run(m.stop_slot(slots.green))
        gone = show(sd, green)
        assert gone["ActiveState"] == "inactive" and gone["UnitFileState"] == "disabled"
        snap = m.parse_slot_snapshot(slots.green, conn.run(m.slot_snapshot(slots.green)).stdout)
        assert snap.status == "missing" and snap.pids == ()
        conn.run(m.stop_slot(slots.green))
        assert answer(sd, slots.green.port) == ""
        assert f'"{second}"' in answer(sd, slots.blue.port)

        # forensics of a slot: its own log lines
        logs = conn.run(m.slot_logs(slots.blue, 20)).stdout
        assert f"sampleapp {second} listening on 127.0.0.1:{slots.blue.port}" in logs
        assert "blue" in m.parse_slot_describe(
            slots.blue, conn.run(m.slot_describe(slots.blue), check=False).stdout
        )
    finally:
        conn.close()


@pytest.mark.parametrize("sd", ["system"], indirect=True)
def test_stopping_a_slot_that_never_ran_is_a_no_op(sd: Target) -> None:
    m = manager(sd)
    conn = remote(sd)
    try:
        res = conn.run(m.stop_slot(Slot("green", 1)), check=False)
        assert res.exit_code == 0, res.stderr
    finally:
        conn.close()


# ------------------------------------------------------------------ blue/green deploys


PUBLIC = itertools.count(8760)


@pytest.fixture
def bg(sd: Target) -> Iterator[Target]:
    """The systemd app deployed blue/green behind the sandbox's nginx: the host prepared as
    docs/blue-green.md says (setup, the site config installed as root)."""
    base = next(PORTS) + 600
    sd.data["strategy"] = {
        "kind": "blue-green",
        "slots": {"blue": base, "green": base + 1},
        "public_port": next(PUBLIC),
        "bake": {"seconds": 2},
        "retire": "after-bake",
    }
    sd.write()
    opts = Options(inventories=sd.inv_dir)
    assert operations.run_setup("test", opts, reporter=RecordingReporter()) == 0
    paths = proxy.proxy_paths(Layout(PurePosixPath(sd.root)), sd.app)
    conn = remote(sd)
    try:
        conn.run(proxy.ensure_upstream(paths, proxy.Upstream(base)))
    finally:
        conn.close()
    demo.install_site(sd.vps, sd.inv)
    try:
        yield sd
    finally:
        as_root(
            sd,
            f"rm -f {paths.site} {paths.access_log}; nginx -t -q && systemctl reload nginx; true",
        )


def front(t: Target) -> tuple[str, int]:
    return t.vps.service_address, int(t.data["strategy"]["public_port"])


def slot_cwd(t: Target, slot: str) -> str:
    pid = running(t, manager(t).slot_unit(Slot(slot, 1)))["MainPID"]  # type: ignore[arg-type]
    return t.ssh(f"readlink /proc/{pid}/cwd").stdout.strip()


def test_blue_green_under_systemd_serves_every_request(bg: Target) -> None:
    code, rep = deploy(bg)
    assert code == 0, "\n".join(rep.lines)
    first = released(rep)
    host, port = front(bg)
    wait_until(lambda: fetch(host, port, "/version", 2).release == first, 10, "first serves")

    # a good release under load through nginx: new connection per request, and keep-alive
    per_conn = Load(host, port, "/version", rate=50, max_seconds=120, timeout=5)
    keepalive = KeepAliveLoad(host, port, "/version", rate=20, max_seconds=120, timeout=5)
    with per_conn, keepalive:
        assert per_conn.wait_for(tail_is(first, 10), deadline=10)
        demo.commit_fault(bg.repo, "")
        code, rep = deploy(bg)
        assert code == 0, "\n".join(rep.lines)
        second = released(rep)
        for client in (per_conn, keepalive):
            assert client.wait_for(tail_is(second, 10), deadline=10)

        # a release that crashes at boot: rejected in its slot, never seen by a user
        demo.commit_fault(bg.repo, "boot_crash")
        code, rep = deploy(bg)
        assert code == 3, "\n".join(rep.lines)
        crashed = released(rep)
        assert rep.outcomes[-1].live == second
        seen = len(per_conn.hits())
        assert per_conn.wait_for(lambda hits: len(hits) >= seen + 20, deadline=10)
        assert per_conn.wait_for(tail_is(second, 10), deadline=10)
    for client in (per_conn, keepalive):
        hits = client.hits()
        assert [h for h in hits if not h.ok] == [], {h.error or h.status for h in hits if not h.ok}
        assert {h.release for h in hits} == {first, second}  # never the crashed one
        assert crashed not in {h.release for h in hits}

    # on the host: the live slot's main process runs in its release, `current` names it,
    # the crashed release is bad, and its slot is stopped (after-bake: the old one too)
    assert bg.current() == second
    assert bg.state_of(crashed) == "bad" and bg.state_of(second) == "good"
    m = manager(bg)
    cwds = {}
    for name in ("blue", "green"):
        state = show(bg, m.slot_unit(Slot(name, 1)))  # type: ignore[arg-type]
        if state["SubState"] == "running":
            cwds[name] = bg.ssh(f"readlink /proc/{state['MainPID']}/cwd").stdout.strip()
    assert list(cwds.values()) == [f"{bg.root}/releases/{second}"], cwds
    assert not bg.lock_exists()
