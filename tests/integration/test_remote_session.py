"""Every command of a connection travels on one shell session (deploy/session.py) over real SSH
to the sandbox, and fails no worse than an exec command of its own would: the host stops a
command at its deadline, Ctrl-C gives up at once, a dropped link is ConnectionLost, stdin is
exactly the command's own and never on a command line, any output arrives whole."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pytest

from deploy.commands import Cmd
from deploy.errors import ConnectionLost
from deploy.remote import SshRemote
from tests.conftest import wait_until
from tests.integration.conftest import Target

pytestmark = pytest.mark.integration


def sh(script: str, *args: str) -> Cmd:
    return Cmd("test", ("sh", "-c", script, "releasegate", *args), "test")


@pytest.fixture
def remote(target: Target) -> Iterator[SshRemote]:
    vps = target.vps
    conn = SshRemote(
        address=vps.address,
        port=vps.port,
        user=vps.user,
        known_hosts=(vps.known_hosts,),
        identity_file=vps.identity_file,
        command_timeout=20,
    )
    conn.open()
    # the first command rides on the session's exec request (its line stays on the loop's
    # command line on the host, where `pgrep -f` would find it): the tests' commands are later
    assert conn.run(sh("echo first")).stdout == "first\n"
    yield conn
    conn.close()


def running_on_host(t: Target, marker: str) -> bool:
    pattern = marker.replace(".", "[.]")  # keeps pgrep from matching the shell that runs it
    return t.ssh(f"pgrep -f 'sleep {pattern}'", check=False).returncode == 0


def test_stdin_output_and_uploads_arrive_exact(remote: SshRemote, tmp_path: Path):
    assert remote.run(sh('cat; echo "[$1]"', "it's"), stdin="héllo\n").stdout == "héllo\n[it's]\n"
    # a command given no stdin reads end-of-file at once, never the next command's bytes
    assert remote.run(sh("cat; echo done")).stdout == "done\n"
    big = remote.run(sh("head -c 3000000 /dev/zero | tr '\\0' x; printf '\\377\\000end' >&2"))
    assert big.stdout == "x" * 3_000_000 and big.stderr == "\ufffd\x00end"
    secret = "s3cret-" + uuid.uuid4().hex
    listing = remote.run(sh("ps -eo args"), stdin=secret).stdout
    assert "ps -eo args" in listing and secret not in listing
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1_500_000))
    blob.chmod(0o600)
    dest = PurePosixPath(f"/tmp/rg-upload-{uuid.uuid4().hex}")
    remote.put(blob, dest)
    seen = remote.run(sh('stat -c %a "$1"; sha256sum < "$1"; rm -f "$1"', str(dest))).stdout
    assert seen.split()[:2] == ["600", hashlib.sha256(blob.read_bytes()).hexdigest()]
    failed = remote.run(sh("echo why >&2; exit 9"), check=False)
    assert (failed.exit_code, failed.stderr) == (9, "why")


def test_the_host_stops_a_command_at_its_deadline(target: Target, remote: SshRemote):
    marker = f"600.{uuid.uuid4().int % 10**6}"
    started = time.monotonic()
    res = remote.run(sh(f"sleep {marker}"), timeout=2, check=False)
    assert res.exit_code == 124 and "timed out" in res.stderr
    assert time.monotonic() - started < 2 + 2 + 3
    assert not running_on_host(target, marker)
    assert remote.run(sh("echo next")).stdout == "next\n"


def test_ctrl_c_stops_the_wait_at_once_and_the_host_still_stops_the_command(
    target: Target, remote: SshRemote
):
    marker = f"600.{uuid.uuid4().int % 10**6}"

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            remote.run(sh(f"sleep {marker}"), timeout=4)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 3
    # the cleanup that follows a signal runs at once, on a fresh session
    assert remote.run(sh("echo cleanup")).stdout == "cleanup\n"
    wait_until(
        lambda: not running_on_host(target, marker), 4 + 5 + 10, "the host to stop the command"
    )


def test_a_link_dropped_mid_command_is_connection_lost(remote: SshRemote):
    # the command kills the sshd process serving this very connection
    drop = sh(
        'p=$$; while [ "$p" -gt 1 ]; do '
        'case $(cat /proc/$p/comm) in sshd*) kill -9 "$p"; break;; esac; '
        "p=$(cut -d' ' -f4 /proc/$p/stat); done; sleep 30"
    )
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        remote.run(drop)
    assert time.monotonic() - started < 15


def test_a_second_thread_runs_beside_a_long_command(target: Target, remote: SshRemote):
    # the lease keeper renews the lock while the flow's thread waits on a long install
    marker = f"4.{uuid.uuid4().int % 10**6}"
    with ThreadPoolExecutor(max_workers=1) as pool:
        long = pool.submit(remote.run, sh(f"sleep {marker}; echo long"))
        wait_until(lambda: running_on_host(target, marker), 10, "the long command on the host")
        assert remote.run(sh("echo beside")).stdout == "beside\n"
        assert not long.done()  # it ran beside, not after
        assert long.result(timeout=30).stdout == "long\n"
    assert remote.run(sh("echo after")).stdout == "after\n"
