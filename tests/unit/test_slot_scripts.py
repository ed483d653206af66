"""The blue/green host scripts executed for real with `sh` against a temporary deploy root:
the slot link and env file, the state read's slot and upstream sections, the first upstream
file (setup never overwrites a live one), PM2's fresh slot start and tolerant stop (through a
stand-in `pm2` that records its calls), the listening check before a switch and the bounded
wait for nginx to drain a slot."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path, PurePosixPath

import pytest

from deploy import commands, journal, proxy
from deploy.commands import Cmd
from deploy.inventory import parse
from deploy.model import Layout, Manifest
from deploy.process.pm2 import Pm2
from deploy.slots import Slot
from deploy.strategies.blue_green import listening, wait_drained

RID = "20261122120000-abcdef0"
OTHER = "20261122130000-1234567"
NONCE = "0" * 32


def sh(cmd: Cmd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", cmd.render()], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout(PurePosixPath(tmp_path / "root"))
    assert sh(commands.prepare_layout(lay)).returncode == 0
    for rid in (RID, OTHER):
        release = Path(str(lay.release(rid)))
        release.mkdir(parents=True)
        manifest = Manifest(id=rid, revision="a" * 40, sha256="b" * 64, created_at="", actor="t")
        assert sh(commands.write_manifest(PurePosixPath(release), manifest)).returncode == 0
    return lay


def test_a_slot_points_at_its_release_and_carries_its_port(layout: Layout):
    assert sh(commands.link_slot(layout, "green", RID, 3002, NONCE)).returncode == 0
    link = Path(str(layout.slot_link("green")))
    assert link.is_symlink() and str(link.readlink()) == f"../../releases/{RID}"
    assert link.resolve() == Path(str(layout.release(RID))).resolve()
    env = Path(str(layout.slot_env("green"))).read_text()
    assert "PORT=3002\n" in env and "RELEASEGATE_SLOT=green\n" in env
    # a new release in the same slot: the link is renamed over, never removed first
    assert sh(commands.link_slot(layout, "green", OTHER, 3002, "1" * 32)).returncode == 0
    assert str(link.readlink()) == f"../../releases/{OTHER}"
    assert sorted(p.name for p in link.parent.iterdir()) == ["green", "green.env"]
    assert sh(commands.unlink_slot(layout, "green")).returncode == 0
    assert not link.is_symlink()


def test_a_slot_refuses_an_incomplete_release(layout: Layout):
    partial = "20261122140000-fedcba9"
    Path(str(layout.release(partial))).mkdir()
    res = sh(commands.link_slot(layout, "blue", partial, 3001, NONCE))
    assert res.returncode == 3 and "not a complete release" in res.stderr
    assert not Path(str(layout.slot_link("blue"))).exists()


def test_the_state_read_says_what_each_slot_runs_and_what_nginx_is_told(layout: Layout):
    before = journal.parse_state(sh(commands.read_state(layout)).stdout)
    assert before.slot_links == {} and before.upstream_text is None
    assert sh(commands.link_slot(layout, "blue", RID, 3001, NONCE)).returncode == 0
    paths = proxy.proxy_paths(layout, "app")
    assert sh(proxy.ensure_upstream(paths, proxy.Upstream(3001, 3002))).returncode == 0
    state = journal.parse_state(sh(commands.read_state(layout)).stdout)
    assert state.slot_links == {"blue": RID}
    assert state.upstream_text is not None
    assert proxy.parse_upstream(state.upstream_text) == proxy.Upstream(3001, 3002)
    assert state.release_dirs == {RID, OTHER}  # the sections before are read as before


def test_setup_writes_the_first_upstream_and_never_overwrites_a_live_one(layout: Layout):
    paths = proxy.proxy_paths(layout, "app")
    first = sh(proxy.ensure_upstream(paths, proxy.Upstream(3001)))
    assert first.returncode == 0 and "@@written" in first.stdout
    upstream = Path(str(paths.upstream))
    upstream.write_text(proxy.upstream_text(paths, proxy.Upstream(3002)))  # a later switch
    again = sh(proxy.ensure_upstream(paths, proxy.Upstream(3001)))
    assert again.returncode == 0 and "@@exists" in again.stdout
    assert proxy.parse_upstream(upstream.read_text()) == proxy.Upstream(3002)


FAKE_PM2 = """#!/bin/sh
# records its calls; `delete` of an app it does not run fails like PM2's
echo "$*" >> "$(dirname "$0")/calls"
if [ "$1" = delete ]; then
  if ! grep -qx "$2" "$(dirname "$0")/running" 2>/dev/null; then
    echo "[PM2][ERROR] Process or Namespace $2 not found"; exit 1
  fi
  grep -vx "$2" "$(dirname "$0")/running" > "$(dirname "$0")/running.new"
  mv "$(dirname "$0")/running.new" "$(dirname "$0")/running"
fi
if [ "$1" = start ]; then echo "$4" >> "$(dirname "$0")/running"; fi
exit 0
"""


def pm2(tmp_path: Path, layout: Layout) -> tuple[Pm2, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "pm2"
    fake.write_text(FAKE_PM2)
    fake.chmod(0o755)
    inv = parse(
        f"""
hosts: [{{name: web1, address: 10.0.0.5, root: {layout.root}}}]
app: {{name: shop}}
process: {{command: server.js, port: 3000, instances: 2, pm2: {fake}}}
strategy: {{kind: blue-green, slots: {{blue: 3001, green: 3002}}}}
""",
        source=Path("prod.yml"),
        env="prod",
    )
    return Pm2(inventory=inv, layout=layout), bindir


def test_pm2_starts_a_slot_afresh_from_its_own_config(tmp_path: Path, layout: Layout):
    manager, bindir = pm2(tmp_path, layout)
    slot = Slot("green", 3002)
    for n in range(2):  # the second start replaces the first
        # as HostOps.slot_start_steps runs them: the link (and the slots dir) first
        link = commands.link_slot(layout, "green", RID, 3002, str(n) * 32)
        for cmd in [link, *manager.start_slot(slot, RID)]:
            res = sh(cmd)
            assert res.returncode == 0, res.stderr
    calls = (bindir / "calls").read_text().splitlines()
    config = str(layout.slot_pm2_config("green"))
    assert calls == [
        "delete shop-green",
        f"start {config} --only shop-green",
        "delete shop-green",
        f"start {config} --only shop-green",
    ]
    text = Path(config).read_text()
    assert f'cwd: "{layout.release(RID)}"' in text  # the release itself, never `current`
    assert 'name: "shop-green"' in text and "instances: 2" in text
    assert (
        f'readEnvFile("{layout.release_env(RID)}"), readEnvFile("{layout.slot_env("green")}")'
        in text
    )


def test_pm2_stops_a_slot_and_a_stopped_slot_is_no_error(tmp_path: Path, layout: Layout):
    manager, bindir = pm2(tmp_path, layout)
    slot = Slot("blue", 3001)
    (bindir / "running").write_text("shop-blue\n")
    assert sh(manager.stop_slot(slot)).returncode == 0
    assert (bindir / "running").read_text() == ""
    assert sh(manager.stop_slot(slot)).returncode == 0  # nothing runs there: fine


def test_a_switch_needs_something_listening_on_the_slot():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        assert sh(listening(port)).returncode == 0
    finally:
        server.close()
    res = sh(listening(port))
    assert res.returncode == 1 and f"nothing listens on 127.0.0.1:{port}" in res.stderr


def test_the_retire_waits_for_the_last_connection_to_the_old_slot_and_no_longer():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    started = time.monotonic()
    waiting = subprocess.Popen(["sh", "-c", wait_drained(port, 10).render()], text=True)
    with pytest.raises(subprocess.TimeoutExpired):  # an established connection: still waiting
        waiting.wait(timeout=0.5)
    client.close()
    peer.close()
    assert waiting.wait(timeout=5) == 0 and time.monotonic() - started < 3
    bounded = subprocess.run(
        ["sh", "-c", wait_drained(port, 0.3).render()], capture_output=True, text=True
    )
    assert bounded.returncode == 0  # nothing left: returns at once
    server.close()


def test_the_drain_wait_is_bounded():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    started = time.monotonic()
    res = subprocess.run(
        ["sh", "-c", wait_drained(port, 0.5).render()], capture_output=True, text=True
    )
    took = time.monotonic() - started
    assert res.returncode == 0 and "still open" in res.stdout and 0.4 < took < 3
    for sock in (client, peer, server):
        sock.close()


def test_slot_commands_exact():
    lay = Layout(PurePosixPath("/srv/app"))
    assert commands.unlink_slot(lay, "blue").render() == "rm -f -- /srv/app/.releasegate/slots/blue"
    cmd = commands.link_slot(lay, "green", RID, 3002, NONCE)
    assert cmd.argv[4:] == ("/srv/app", "green", RID, "3002", NONCE)
    assert cmd.display == f"point slot green (:3002) at releases/{RID}"
    with pytest.raises(ValueError):
        commands.link_slot(lay, "red", RID, 3002, NONCE)
    with pytest.raises(ValueError):
        commands.link_slot(lay, "blue", "../../etc", 3002, NONCE)
    assert json.loads(json.dumps(listening(3001).argv[-1])) == "3001"
