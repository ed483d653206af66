"""One long-lived shell session carrying every command of a connection (issue 14).

A command on its own exec channel costs a round trip for the channel, one for the exec request
before its stdin may follow (sshd opens a session's window only then) and the CHANNEL_CLOSE
exchange; in one session (commands.SESSION_SCRIPT on the host) a command is one frame on stdin
and one framed reply: a single round trip on the wire. Output ends at the session's done-marker
(a nonce: any bytes may come before it), on stdout and on stderr; the exit code follows it.

The session is given up — never reused — as soon as anything is off: the client's deadline
passed, the caller was interrupted (Ctrl-C, SIGTERM), a send failed, the stream ended. The
owner (remote.SshRemote) then starts a new one for the next command; a command in flight on
the old one runs on under the host's `timeout`, as an abandoned exec command would.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from deploy.commands import DONE_MARK


class Duplex(Protocol):
    """The session's byte streams: paramiko's channel in production, a local `sh` in tests."""

    def send(self, data: bytes, timeout: float) -> None:
        """Write all of `data` (TimeoutError if the peer does not take it within `timeout`)."""
        ...

    def receive(self, timeout: float) -> tuple[bytes, bytes, bool]:
        """Whatever stdout and stderr bytes arrived within `timeout`, and whether the streams
        have ended (nothing more will come)."""
        ...

    def close(self) -> None: ...


class SessionLost(Exception):
    """The session's streams ended before the command's done-marker: the link or the host's
    shell went away mid-command."""


class SessionTimeout(Exception):
    """No done-marker within the client's deadline (the session is given up)."""


@dataclass(frozen=True)
class Reply:
    stdout: bytes
    stderr: bytes
    exit_code: int


def frame(line: str, limit: float, stdin_size: int, nonce: str) -> bytes:
    """The header and command line of one frame; `stdin_size` bytes of stdin follow it."""
    body = line.encode()
    head = f"{max(1, int(limit + 0.999))} {len(body)} {stdin_size}\n".encode()
    return head + body + nonce.encode()


class _Stream:
    """One of stdout/stderr: bytes until this command's done-marker, found incrementally."""

    def __init__(self, mark: bytes) -> None:
        self._mark = mark
        self.data = bytearray()
        self._searched = 0
        self.exit_code: int | None = None
        self.output = b""

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if self.exit_code is not None:
            return
        at = self.data.find(self._mark, max(0, self._searched - len(self._mark)))
        if at < 0:
            self._searched = len(self.data)
            return
        end = self.data.find(b"\n", at + len(self._mark))
        if end < 0:
            self._searched = at  # the marker's line is not complete yet
            return
        self.exit_code = int(self.data[at + len(self._mark) : end])
        self.output = bytes(self.data[:at])
        del self.data[: end + 1]  # a background process's late bytes stay for the next reply
        self._searched = 0


class ShellSession:
    """Commands in order over one Duplex. Not thread-safe: one caller (the flow's thread)."""

    def __init__(self, duplex: Duplex, nonce: str) -> None:
        self._duplex = duplex
        self._nonce = nonce
        mark = f"\n{DONE_MARK}{nonce}:".encode()
        self._out = _Stream(mark)
        self._err = _Stream(mark)
        self.broken = False

    def run(
        self,
        line: str,
        *,
        limit: float,
        wait: float,
        stdin: Iterable[bytes] = (),
        stdin_size: int = 0,
        send_timeout: float = 60,
    ) -> Reply:
        """Send one command (its stdin exactly `stdin_size` bytes, streamed from `stdin`) and
        wait up to `wait` seconds for its reply; the host stops it after `limit` seconds."""
        self.send(line, limit=limit, stdin=stdin, stdin_size=stdin_size, send_timeout=send_timeout)
        return self.collect(wait)

    def send(
        self,
        line: str,
        *,
        limit: float,
        stdin: Iterable[bytes] = (),
        stdin_size: int = 0,
        send_timeout: float = 60,
    ) -> None:
        with self._giving_up_on_error():
            self._duplex.send(frame(line, limit, stdin_size, self._nonce), send_timeout)
            sent = 0
            for chunk in stdin:
                sent += len(chunk)
                if sent > stdin_size:
                    raise ValueError("more stdin than announced")
                self._duplex.send(chunk, send_timeout)
            if sent != stdin_size:
                raise ValueError(f"{sent} bytes of stdin sent, {stdin_size} announced")

    def collect(self, wait: float) -> Reply:
        """The reply to the command sent last (or run by the session's exec request). A
        signal (Ctrl-C, SIGTERM's exception) stops the wait at once and gives the session up;
        the host's `timeout` ends the command by itself."""
        with self._giving_up_on_error():
            deadline = time.monotonic() + wait
            self._out.feed(b"")
            self._err.feed(b"")
            while self._out.exit_code is None or self._err.exit_code is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SessionTimeout(f"no reply within {wait:g}s")
                out, err, ended = self._duplex.receive(min(left, 1.0))
                self._out.feed(out)
                self._err.feed(err)
                if ended and not out and not err:
                    if self._out.exit_code is not None and self._err.exit_code is not None:
                        break
                    raise SessionLost("the session ended before the command's reply")
            reply = Reply(self._out.output, self._err.output, self._out.exit_code)
            self._out.exit_code = self._err.exit_code = None
            return reply

    @contextlib.contextmanager
    def _giving_up_on_error(self) -> Iterator[None]:
        if self.broken:
            raise SessionLost("this session was given up")
        try:
            yield
        except BaseException:
            # A reply half read or a frame half sent leaves the stream out of step: never
            # reuse it (KeyboardInterrupt and SIGTERM's exception included).
            self.close()
            raise

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            self._duplex.close()
