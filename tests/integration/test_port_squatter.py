"""A release that leaves a daemon behind — double fork + setsid, out of PM2's process tree —
which takes the app's port once its release stops: the next release cannot bind. The gate
fails, the rollback fails the same way, and the host ends needs-human (exit 6) with a message
that names the process holding the port and the fix; after that fix the way back works."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import demo
from tests.conftest import wait_until
from tests.integration.conftest import Target
from tests.integration.test_deploy import deploy, released, rollback

pytestmark = pytest.mark.integration

# Retries the app's port until it is free, then answers everything as its release (so the
# probes even see the old release's identity).
SQUATTER = r"""
const http = require('http');
require('fs').writeFileSync(process.argv[2], String(process.pid));
const body = JSON.stringify({
  status: 'ok', release: process.env.RELEASE_ID, revision: process.env.REVISION });
function attempt() {
  const s = http.createServer((q, r) => {
    r.setHeader('content-type', 'application/json'); r.end(body); });
  s.on('error', () => setTimeout(attempt, 50));
  s.listen(Number(process.env.PORT), process.env.HOST || '0.0.0.0');
}
attempt();
"""
# Prepended to server.js: start the squatter once, detached twice over (sh &, then setsid).
SPAWN = r"""
try {
  const pidfile = '/tmp/squatter-' + process.env.PORT + '.pid';
  require('fs').writeFileSync(pidfile + '.once', '', { flag: 'wx' });
  const daemon = 'setsid node squatter.js "$0" </dev/null >/dev/null 2>&1 &';
  require('child_process').spawn('sh', ['-c', daemon, pidfile],
    { cwd: __dirname, detached: true, stdio: 'ignore' }).unref();
} catch (e) {}
"""


def commit(repo: Path, files: dict[str, str | None]) -> None:
    for name, text in files.items():
        if text is None:
            (repo / name).unlink()
        else:
            (repo / name).write_text(text)
    demo.commit_fault(repo, "")


def test_a_daemon_left_holding_the_port_is_named_with_its_fix(target: Target):
    t = target
    t.update("process", instances=1)  # fork mode: each start binds the port itself
    pidfile = f"/tmp/squatter-{t.port}.pid"
    try:
        code, rep = deploy(t)
        assert code == 0, rep.lines
        first = released(rep)
        original = (t.repo / "server.js").read_text()
        commit(t.repo, {"squatter.js": SQUATTER, "server.js": SPAWN + original})
        code, rep = deploy(t)
        assert code == 0, rep.lines  # it serves; the daemon waits in the background
        hostile = released(rep)
        squatter = wait_until(
            lambda: t.ssh(f"cat {pidfile}", check=False).stdout.strip(), 20, "the daemon"
        )

        commit(t.repo, {"squatter.js": None, "server.js": original})
        code, rep = deploy(t)
        assert code == 6, rep.lines
        message = rep.outcomes[-1].message
        assert f"port {t.port} on sandbox is held by pid {squatter}" in message
        assert "squatter.js" in message and "not a PM2 process" in message
        assert f"kill {squatter}" in message
        # what is on the host: the daemon still holds the port, current is the rollback
        # target (not verified), the lock is released, the journal says needs-human
        assert t.current() == hostile and not t.lock_exists()
        assert any(e["op"] == "needs-human" for e in t.journal())
        listening = t.ssh(f"ss -Hltnp 'sport = :{t.port}'").stdout
        assert f"pid={squatter}," in listening

        # the fix the message names, then the way back the needs-human commands name
        t.ssh(f"kill {squatter}")
        code, rep = rollback(t, to=first)
        assert code == 0, rep.lines
        assert t.current() == first and t.version()["release"] == first
    finally:
        t.ssh(f"kill $(cat {pidfile}) 2>/dev/null; rm -f {pidfile} {pidfile}.once", check=False)
