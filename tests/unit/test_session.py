"""The shell session that carries every command of a connection (deploy/session.py), with the
host's loop (commands.SESSION_SCRIPT) executed for real by a local `sh` — what sshd would run,
minus SSH: output, exit codes, stdin framing, deadlines, interruption and a lost link."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import commands
from deploy.session import SessionLost, SessionTimeout, ShellSession, frame
from tests.conftest import wait_until

NONCE = "0123456789abcdef0123456789abcdef"


class LocalShell:
    """The session's streams on a local `sh -c <rendered session command>`."""

    def __init__(self, cmd: commands.Cmd) -> None:
        self.proc = subprocess.Popen(
            ["sh", "-c", cmd.render()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout and self.proc.stderr
        self._fds = {self.proc.stdout.fileno(): "out", self.proc.stderr.fileno(): "err"}
        self.closed = False

    def send(self, data: bytes, timeout: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> tuple[bytes, bytes, bool]:
        got = {"out": b"", "err": b""}
        if self._fds:
            readable, _, _ = select.select(list(self._fds), [], [], timeout)
            for fd in readable:
                data = os.read(fd, 65536)
                if data:
                    got[self._fds[fd]] = data
                else:
                    del self._fds[fd]
        return got["out"], got["err"], not self._fds

    def close(self) -> None:
        self.closed = True
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def kill_group(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def shell() -> Iterator[tuple[ShellSession, LocalShell]]:
    duplex = LocalShell(commands.shell_session(NONCE))
    yield ShellSession(duplex, NONCE), duplex
    duplex.close()
    try:
        duplex.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        duplex.kill_group()
        duplex.proc.wait(timeout=5)


def run(session: ShellSession, line: str, stdin: bytes = b"", limit: float = 30, wait: float = 30):
    return session.run(
        line, limit=limit, wait=wait, stdin=[stdin] if stdin else [], stdin_size=len(stdin)
    )


def test_commands_in_order_each_with_its_own_output_and_exit_code(shell):
    session, _ = shell
    first = run(session, "echo out; echo err >&2; exit 3")
    assert (first.stdout, first.stderr, first.exit_code) == (b"out\n", b"err\n", 3)
    # no trailing newline, trailing blank lines and quoting all survive as an exec would see them
    second = run(session, "printf 'a b'; printf 'x\\n\\n\\n' >&2")
    assert (second.stdout, second.stderr, second.exit_code) == (b"a b", b"x\n\n\n", 0)
    third = run(
        session, commands.Cmd("t", ("sh", "-c", 'echo "$1"', "n", "it's $HOME"), "t").render()
    )
    assert third.stdout == b"it's $HOME\n"


def test_the_first_command_rides_on_the_sessions_own_start():
    duplex = LocalShell(commands.shell_session(NONCE, "echo first; exit 4", 10))
    session = ShellSession(duplex, NONCE)
    try:
        reply = session.collect(10)
        assert (reply.stdout, reply.exit_code) == (b"first\n", 4)
        assert run(session, "echo next").stdout == b"next\n"
    finally:
        duplex.close()
        duplex.proc.wait(timeout=5)


def test_a_command_reads_exactly_its_own_stdin_and_nothing_of_the_next_frame(shell):
    session, _ = shell
    data = bytes(range(256)) * 40 + b"no newline at the end"
    assert run(session, "cat", stdin=data).stdout == data
    # a command that leaves its stdin unread: the rest is drained, the next frame is intact
    assert run(session, "true", stdin=b"x" * 200_000).exit_code == 0
    assert run(session, "head -c 3", stdin=b"abcdef").stdout == b"abc"
    assert run(session, "echo still in step").stdout == b"still in step\n"


def test_a_command_without_stdin_reads_end_of_file_at_once(shell):
    session, _ = shell
    started = time.monotonic()
    reply = run(session, "cat; echo done", wait=10)
    assert reply.stdout == b"done\n" and time.monotonic() - started < 5


def test_binary_and_megabytes_of_output_arrive_whole(shell, tmp_path: Path):
    session, _ = shell
    blob = os.urandom(3_000_000) + f"\n{commands.DONE_MARK}{'f' * 32}:0\n".encode()
    (tmp_path / "blob").write_bytes(blob)
    reply = run(session, f"cat {tmp_path / 'blob'}; head -c 2000000 /dev/zero >&2")
    assert reply.stdout == blob  # even a done-marker with another nonce is just output
    assert reply.stderr == bytes(2_000_000)
    assert run(session, "echo after").stdout == b"after\n"


def test_the_host_stops_a_command_at_its_limit_and_the_session_goes_on(shell):
    session, _ = shell
    started = time.monotonic()
    reply = run(session, "sleep 30", limit=1, wait=20)
    assert reply.exit_code == 124 and time.monotonic() - started < 10
    assert run(session, "echo alive").stdout == b"alive\n"


def test_no_reply_within_the_clients_deadline_gives_the_session_up(shell):
    session, duplex = shell
    with pytest.raises(SessionTimeout):
        run(session, "sleep 5", limit=30, wait=0.5)
    assert session.broken and duplex.closed
    with pytest.raises(SessionLost):
        run(session, "echo never")


def interrupting_after(*delays: float):
    """Raise KeyboardInterrupt in this thread after each delay (Ctrl-C, as the CLI sees it)."""
    pending = list(delays)

    def interrupt(signum, frame):
        if pending:
            signal.setitimer(signal.ITIMER_REAL, pending.pop(0))
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, pending.pop(0))
    return old


def stop_interrupting(old) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_an_interrupt_stops_the_wait_at_once_and_gives_the_session_up(shell):
    session, duplex = shell
    old = interrupting_after(0.3)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(session, "sleep 20", wait=30)
    finally:
        stop_interrupting(old)
    assert time.monotonic() - started < 5
    assert session.broken and duplex.closed  # never reused with a reply half read


def test_a_frame_cut_short_is_never_run(tmp_path: Path):
    duplex = LocalShell(commands.shell_session(NONCE))
    witness = tmp_path / "ran"
    whole = frame(f"touch {witness}", 10, 0, NONCE)
    duplex.send(whole[:-5], 1)  # the client was interrupted mid-send, then left
    duplex.close()
    assert duplex.proc.wait(timeout=5) != 0
    assert not witness.exists()


def test_a_session_that_dies_mid_command_is_lost_not_hung(shell):
    session, duplex = shell
    run(session, "true")
    # the link (here: the host's shell and all it runs) goes away while a command runs
    wait_until(lambda: duplex.proc.poll() is None, 5, "the local shell to run")
    session.send("sleep 20", limit=30)
    duplex.kill_group()
    started = time.monotonic()
    with pytest.raises(SessionLost):
        session.collect(30)
    assert time.monotonic() - started < 5 and session.broken


def test_stdin_never_shows_on_a_command_line(shell):
    session, _ = shell
    secret = b"s3cret-value-on-stdin"
    # while its stdin (the secret) waits unread, the command lists every command line
    reply = run(session, "ps -eo args", stdin=secret)
    assert b"ps -eo args" in reply.stdout
    assert secret not in reply.stdout


def test_a_session_nonce_is_plain():
    with pytest.raises(ValueError):
        commands.shell_session("x'; rm -rf /" + "0" * 20)
