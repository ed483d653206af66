"""Who holds the app's port after a failed gate: the host script run for real against a
listener this test starts, and the sentence a human gets (deploy/port_holders.py)."""

from __future__ import annotations

import subprocess
import sys

from deploy import commands, port_holders
from tests.conftest import wait_until

LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
)


def test_the_script_names_the_process_listening_on_the_port_and_its_parent():
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTENER, "left-behind"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        cmd = commands.port_holders(port)

        def holders() -> list[port_holders.Holder]:
            out = subprocess.run(["sh", "-c", cmd.render()], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            return port_holders.parse(out.stdout)

        (holder,) = wait_until(holders, 10, f"a listener on port {port}")
        assert holder.pid == str(proc.pid) and "left-behind" in holder.args
        assert holder.ppid and holder.cwd and not holder.under_pm2
        note = port_holders.stray_note([holder], port=port, app="shop", host="web1")
        assert f"port {port} on web1 is held by pid {proc.pid}" in note
        assert "left-behind" in note and f"kill {proc.pid}` on web1" in note
    finally:
        proc.kill()
        proc.wait()
    # nothing listening: nothing said
    out = subprocess.run(["sh", "-c", cmd.render()], capture_output=True, text=True)
    assert out.returncode == 0 and port_holders.parse(out.stdout) == []


def test_pm2_and_its_children_are_not_strays_by_pid_not_by_name():
    listed = (
        "@@pm2 10\n"
        "10\t1\t/home/deploy\tPM2 v5.4.2: God Daemon (/home/deploy/.pm2)\n"  # cluster mode
        "11\t10\t/srv/app/releases/1\tnode /srv/app/current/server.js\n"  # fork mode
    )
    holders = port_holders.parse(listed)
    assert len(holders) == 2 and all(h.under_pm2 for h in holders)
    assert port_holders.stray_note(holders, port=3000, app="shop", host="web1") == ""
    # a daemon that calls itself PM2 is still not PM2
    impostor = port_holders.parse("@@pm2 10\n12\t1\t/tmp\tPM2 v5.4.2: God Daemon\n")
    assert "pid 12" in port_holders.stray_note(impostor, port=3000, app="shop", host="web1")
    other = port_holders.parse("@@pm2 10\n-\t\t\t\n")
    assert "another user" in port_holders.stray_note(other, port=3000, app="shop", host="web1")
