"""The Remote seam: run a Cmd, upload a file, open a tunnel — over one SSH connection.

`SshRemote` connects with Fabric, with one change that matters: host keys are verified.
Fabric's Connection trusts any key (paramiko's auto-add policy); we load known_hosts and use
RejectPolicy, so an unknown or changed key stops the operation (exit 7) before any command runs.
Commands and uploads then travel on one long-lived shell session (deploy/session.py): one
round trip on the wire per command.
Tests use a fake Remote (tests/fakehost.py); nothing patches this module.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import paramiko
from fabric import Connection

from deploy.commands import (
    TIMED_OUT,
    Cmd,
    client_deadline,
    receive_file,
    shell_session,
    without_marks,
)
from deploy.errors import (
    CommandFailure,
    ConnectionLost,
    HostKeyRefused,
    HostUnreachable,
    ReleasegateError,
    RemoteCommandError,
)
from deploy.redact import Redactor
from deploy.session import Reply, SessionLost, SessionTimeout, ShellSession


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    exit_code: int
    step: str | None = None  # for a failed batch: the name of the step it stopped at

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Remote(Protocol):
    """One host. `run` waits at most `timeout` seconds (default: the command's own deadline,
    commands.client_deadline); `stdin` (default: cmd.stdin) is written to the command's
    standard input and closed — data that must not show in `ps` on the host goes there; a
    command given none reads end-of-file."""

    host_label: str

    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> Result: ...
    def put(self, local: Path, remote: PurePosixPath) -> None: ...
    def tunnel(self, port: int) -> contextlib.AbstractContextManager[int]: ...
    def close(self) -> None: ...


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


class SshRemote:
    """One SSH connection to one host for a whole operation."""

    def __init__(
        self,
        *,
        address: str,
        port: int,
        user: str,
        known_hosts: tuple[Path, ...],
        identity_file: Path | None = None,
        connect_timeout: float = 10,
        command_timeout: float = 60,
        upload_timeout: float = 600,
        keepalive: float = 15,
        redact: Redactor | None = None,
        env_name: str = "<env>",
        on_command: Callable[[Cmd], None] | None = None,
        pin_unknown: Callable[[str, paramiko.PKey], None] | None = None,
    ) -> None:
        self.host_label = f"{user}@{address}:{port}"
        self._address = address
        self._port = port
        self._known_hosts = known_hosts[0]
        self._env_name = env_name
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._upload_timeout = upload_timeout
        self._keepalive = keepalive
        self._redact = redact or Redactor()
        self._on_command = on_command
        connect_kwargs: dict[str, object] = {}
        if identity_file is not None:
            connect_kwargs["key_filename"] = [str(identity_file)]
        self._conn = _Connection(
            address,
            user=user,
            port=port,
            connect_timeout=connect_timeout,
            connect_kwargs=connect_kwargs,
        )
        if identity_file is not None:
            # the inventory's key only: Fabric would add ~/.ssh/config's IdentityFile keys
            self._conn.connect_kwargs["key_filename"] = [str(identity_file)]
        # Replace Fabric's trust-anything client: verified keys only.
        self._conn.client = verified_client(known_hosts, pin_unknown)
        # ~/.ssh/config ProxyJump: Fabric opens each hop with a trust-anything client too;
        # a jump host's key must be pinned like the host's (never trusted on first use).
        hop = self._conn.gateway
        while isinstance(hop, Connection):
            hop.client = verified_client(known_hosts, None)
            hop = hop.gateway
        self.commands_run = 0
        self._opened = False
        self._session: ShellSession | None = None
        self._session_lock = threading.Lock()  # held by the thread whose command is on it
        # why the last tunnel's connections to the host port failed (None: they did not)
        self.tunnel_failure: str | None = None

    def open(self) -> None:
        try:
            self._conn.open()
        except paramiko.BadHostKeyException as exc:
            raise HostKeyRefused(
                f"the SSH host key of {self.host_label} has CHANGED: it now presents "
                f"{fingerprint(exc.key)}, but {self._known_hosts} pins "
                f"{fingerprint(exc.expected_key)}. Nothing was run. If the host was rebuilt, "
                f"verify the new key out of band, remove the old line from {self._known_hosts} "
                f"and run `releasegate trust-host {self._env_name}`; otherwise treat this as "
                f"an attack."
            ) from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyRefused(
                    f"the SSH host key of {self.host_label} is not in {self._known_hosts}, so "
                    f"releasegate refused to connect and ran nothing. Check the key's "
                    f"fingerprint with the host's owner, then pin it with "
                    f"`releasegate trust-host {self._env_name}`."
                ) from None
            raise self._unreachable(
                f"could not open SSH to {self.host_label}: {self._redact(str(exc))}. Check the "
                f"address, port, user and key in the inventory (and ~/.ssh/config)."
            ) from None
        except (OSError, EOFError) as exc:
            raise self._unreachable(
                f"could not reach {self.host_label}: {exc}. Check that the host is up and "
                f"that the address and port in the inventory are right."
            ) from None
        self._opened = True
        self._session = None  # a session from before a reconnect died with its transport
        transport = self.transport
        # the first command's channel opens while the flow still works locally
        self._conn.channels = _Channels(transport.open_session).prefetch()
        # Small request/response exchanges (probes, short commands) must not wait on Nagle.
        with contextlib.suppress(OSError, AttributeError):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A dead link must be noticed, not waited on: SSH keepalives put data on the wire
        # every `keepalive` seconds, and TCP gives up on data unacknowledged for three of
        # those, which closes the transport — every waiting call then ends with ConnectionLost.
        transport.set_keepalive(max(1, round(self._keepalive)))
        # Opening a channel (a command, an upload, a tunnel connection) is quick on a live link;
        # paramiko would otherwise wait an hour for the answer.
        transport.channel_timeout = self._connect_timeout
        with contextlib.suppress(OSError, AttributeError):
            user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
            if user_timeout is not None:
                transport.sock.setsockopt(
                    socket.IPPROTO_TCP, user_timeout, int(self._keepalive * 3 * 1000)
                )

    def _unreachable(self, message: str) -> ReleasegateError:
        if self._opened:
            return ConnectionLost(message)
        return HostUnreachable(message + " Nothing was done on the host.")

    @property
    def transport(self) -> paramiko.Transport:
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"the SSH connection to {self.host_label} is closed")
        return transport

    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> Result:
        if not self._conn.is_connected:
            self.open()
        if self._on_command is not None:
            self._on_command(cmd)
        self.commands_run += 1
        deadline = timeout if timeout is not None else client_deadline(cmd, self._command_timeout)
        feed = stdin if stdin is not None else cmd.stdin
        data = feed.encode() if feed is not None else b""
        started = time.monotonic()
        try:
            reply = self._send(cmd.render(), deadline, [data] if data else [], len(data))
        except SessionTimeout:
            reply = None
        except SessionLost:
            # The session ended under the command without its exit status: the link or the
            # host's side of it (sshd) went away — even if the transport has not noticed yet.
            # The connection is dropped so that the next command reconnects.
            self._drop_connection()
            raise ConnectionLost(
                f"lost the SSH connection to {self.host_label} while running "
                f"`{self._redact(cmd.display)}` (no exit status: the link was dropped)"
            ) from None
        except (OSError, EOFError, paramiko.SSHException, ConnectionLost) as exc:
            raise ConnectionLost(
                f"lost the SSH connection to {self.host_label} while running "
                f"`{self._redact(cmd.display)}`: "
                f"{self._redact(type(exc).__name__ + ': ' + str(exc))}"
            ) from None
        if reply is None or (
            reply.exit_code in TIMED_OUT and time.monotonic() - started >= deadline
        ):
            # the client's deadline passed (the host's `timeout` with the same limit, or no
            # reply at all): the command was abandoned, as before
            if not check:
                return Result(stdout="", stderr=f"timed out after {deadline:g}s", exit_code=124)
            raise RemoteCommandError(
                CommandFailure(
                    display=self._redact(cmd.display),
                    exit_code=124,
                    stderr_tail=f"no result after {deadline:g}s; the command was abandoned",
                    host=self.host_label,
                )
            )
        stdout = reply.stdout.decode("utf-8", "replace")
        stderr = reply.stderr.decode("utf-8", "replace")
        failed = cmd.failed_step(stderr) if reply.exit_code != 0 else None
        result = Result(
            stdout=stdout,
            stderr=without_marks(stderr),
            exit_code=reply.exit_code,
            step=failed.name if failed else None,
        )
        if check and not result.ok:
            raise RemoteCommandError(
                CommandFailure(
                    display=self._redact((failed or cmd).display),
                    exit_code=result.exit_code,
                    stderr_tail=self._redact(_tail(result.stderr or result.stdout)),
                    host=self.host_label,
                )
            )
        return result

    def _send(
        self,
        line: str,
        deadline: float,
        stdin: Iterable[bytes],
        size: int,
        reply_wait: Callable[[], float] | None = None,
    ) -> Reply:
        """One command over the connection's shell session (deploy/session.py), started by
        the first command — which, if it has no stdin, rides on the session's exec request.
        The host stops the command after `deadline` seconds; the client waits a little more
        for that verdict, then gives the session up. A command from a second thread while the
        session is busy (the lease keeper's renewal during a long install) runs beside it on a
        session of its own, closed after it."""
        if not self._session_lock.acquire(blocking=False):
            channel = self.transport.open_session(timeout=self._connect_timeout)
            aside, rode = self._start(channel, line, deadline, size)
            try:
                if rode:
                    return aside.collect(deadline + _VERDICT_GRACE)
                return self._finish(aside, line, deadline, stdin, size, reply_wait)
            finally:
                aside.close()
        try:
            session = self._session
            if session is None or session.broken:
                session, rode = self._start(self._take_channel(), line, deadline, size)
                self._session = session
                if rode:
                    return session.collect(deadline + _VERDICT_GRACE)
            return self._finish(session, line, deadline, stdin, size, reply_wait)
        finally:
            self._session_lock.release()

    def _start(
        self, channel: paramiko.Channel, line: str, deadline: float, size: int
    ) -> tuple[ShellSession, bool]:
        """A shell session on `channel`; True if the command rode on its exec request (its
        reply is the session's first), False if it is still to be sent (it has stdin)."""
        nonce = secrets.token_hex(16)
        session = ShellSession(_ChannelDuplex(channel, self.transport), nonce)
        if size:
            _exec_early(channel, shell_session(nonce).render())
            return session, False
        _exec_early(channel, shell_session(nonce, line, int(deadline + 0.999)).render())
        return session, True

    def _finish(
        self,
        session: ShellSession,
        line: str,
        deadline: float,
        stdin: Iterable[bytes],
        size: int,
        reply_wait: Callable[[], float] | None,
    ) -> Reply:
        session.send(
            line, limit=deadline, stdin=stdin, stdin_size=size, send_timeout=self._command_timeout
        )
        return session.collect(
            reply_wait() if reply_wait is not None else deadline + _VERDICT_GRACE
        )

    def _take_channel(self) -> paramiko.Channel:
        channels, self._conn.channels = self._conn.channels, None
        if channels is not None:
            # the channel opened ahead (right after authentication) starts the session; no
            # further channel is opened ahead: later commands share this one
            channel = channels.take_last()
        else:
            channel = self.transport.open_session(timeout=self._connect_timeout)
        return channel

    def _drop_connection(self) -> None:
        self._session = None
        channels, self._conn.channels = self._conn.channels, None
        if channels is not None:
            channels.close()
        with contextlib.suppress(Exception):
            self._conn.close()

    def _alive(self) -> bool:
        transport = self._conn.client.get_transport()
        return transport is not None and transport.is_active()

    def put(self, local: Path, remote: PurePosixPath) -> None:
        """Upload with a deadline: no single write or reply may take longer than
        command_timeout (a stalled link), and the whole upload no longer than upload_timeout.
        The file travels on the stdin of one command (commands.receive_file) over the shell
        session, byte-counted; the remote copy keeps the local mode (0600 for the env file)."""
        if not self._conn.is_connected:
            self.open()
        deadline = time.monotonic() + self._upload_timeout
        cmd = receive_file(remote, stat.S_IMODE(local.stat().st_mode))
        size = local.stat().st_size

        def chunks() -> Iterator[bytes]:
            with local.open("rb") as source:
                while chunk := source.read(_UPLOAD_CHUNK):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not finished after {self._upload_timeout:g}s")
                    yield chunk

        try:
            reply = self._send(
                cmd.render(),
                self._upload_timeout,
                chunks(),
                size,
                # after the last byte, the answer within command_timeout (and the whole)
                lambda: min(self._command_timeout, max(deadline - time.monotonic(), 0.1)),
            )
            code, stderr = reply.exit_code, reply.stderr.decode("utf-8", "replace")
        except (TimeoutError, SessionTimeout) as exc:
            raise RemoteCommandError(
                CommandFailure(
                    display=f"upload {local.name} to {remote}",
                    exit_code=124,
                    stderr_tail=f"{exc} (ssh.upload_timeout); the upload was abandoned",
                    host=self.host_label,
                )
            ) from None
        except (OSError, EOFError, paramiko.SSHException, SessionLost, ConnectionLost) as exc:
            if isinstance(exc, SessionLost):
                self._drop_connection()
            raise ConnectionLost(
                f"uploading {local.name} to {self.host_label}:{remote} failed: {exc}"
            ) from None
        if code != 0:
            raise RemoteCommandError(
                CommandFailure(
                    display=f"upload {local.name} to {remote}",
                    exit_code=code,
                    stderr_tail=self._redact(_tail(stderr)),
                    host=self.host_label,
                )
            )

    @contextlib.contextmanager
    def tunnel(self, port: int) -> Iterator[int]:
        """Forward a local ephemeral port to 127.0.0.1:<port> on the host, over this connection."""
        if not self._conn.is_connected:
            self.open()
        # each connection through the tunnel opens its channel on the transport of the moment:
        # after a dropped link, the next command reconnects and the tunnel follows it
        forward = _Forwarder(lambda: self.transport, port, open_timeout=self._connect_timeout)
        try:
            yield forward.local_port
        finally:
            forward.close()
            self.tunnel_failure = forward.failure

    def close(self) -> None:
        # The session is not closed by a message of its own (an EOF or CHANNEL_CLOSE after
        # the last reply would be one more turn on the wire): closing the connection ends it,
        # and the host's loop with it (its stdin ends).
        self._drop_connection()


def verified_client(
    known_hosts: tuple[Path, ...], pin_unknown: Callable[[str, paramiko.PKey], None] | None
) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    for path in known_hosts:
        if path.exists():
            client.get_host_keys().load(str(path))
    client.set_missing_host_key_policy(
        paramiko.RejectPolicy() if pin_unknown is None else _PinOnFirstUse(pin_unknown)
    )
    return client


_UPLOAD_CHUNK = 32768  # paramiko's own SFTP write size
# Seconds the client waits past a command's deadline for the host's own verdict (its `timeout`
# with the same limit) before it gives the session up.
_VERDICT_GRACE = 2.0


class _ChannelDuplex:
    """The shell session's streams on a paramiko session channel."""

    def __init__(self, channel: paramiko.Channel, transport: paramiko.Transport) -> None:
        self._channel = channel
        self._transport = transport

    def send(self, data: bytes, timeout: float) -> None:
        self._channel.settimeout(timeout)
        self._channel.sendall(data)

    def receive(self, timeout: float) -> tuple[bytes, bytes, bool]:
        ch = self._channel
        if not (ch.recv_ready() or ch.recv_stderr_ready() or ch.eof_received or ch.closed):
            # the channel's select pipe is set by stdout, stderr, EOF and close alike
            select.select([ch], [], [], timeout)
        out = ch.recv(65536) if ch.recv_ready() else b""
        err = ch.recv_stderr(65536) if ch.recv_stderr_ready() else b""
        ended = (ch.eof_received or ch.closed or not self._transport.is_active()) and not (
            ch.recv_ready() or ch.recv_stderr_ready()
        )
        return out, err, ended

    def close(self) -> None:
        self._channel.close()


class _Channels:
    """The session channel opened ahead: right after authentication, in the background while
    the flow still works locally (the artifact build), so the first command goes out at once
    on the shell session's exec request. An unused channel costs nothing on the host (sshd
    starts a session only on the exec request)."""

    def __init__(self, opener: Callable[[], paramiko.Channel]) -> None:
        self._open = opener
        self._lock = threading.Lock()
        self._pending: _Opening | None = None
        self._closed = False

    def take(self) -> paramiko.Channel:
        with self._lock:
            pending, self._pending = self._pending, None
        channel = pending.result() if pending is not None else None
        if channel is None or channel.closed or not channel.active:
            channel = self._open()  # the link's own error, where it belongs: in the caller
        self.prefetch()
        return channel

    def take_last(self) -> paramiko.Channel:
        """The channel opened ahead, without opening another."""
        with self._lock:
            self._closed = True
        return self.take()

    def prefetch(self) -> _Channels:
        with self._lock:
            if self._pending is None and not self._closed:
                self._pending = _Opening(self._open)
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, None
        if pending is not None:
            channel = pending.result(timeout=1)
            if channel is not None:
                with contextlib.suppress(Exception):
                    channel.close()


class _Opening(threading.Thread):
    """One channel being opened in the background; result() is None if that failed."""

    def __init__(self, opener: Callable[[], paramiko.Channel]) -> None:
        super().__init__(daemon=True, name="rg-channel")
        self._opener = opener
        self._channel: paramiko.Channel | None = None
        self.start()

    def run(self) -> None:
        with contextlib.suppress(Exception):
            self._channel = self._opener()

    def result(self, timeout: float | None = None) -> paramiko.Channel | None:
        self.join(timeout)
        return self._channel


class _Connection(Connection):
    """Fabric's connection (connect, ProxyJump), with the channel opened ahead for the shell
    session that carries its commands."""

    channels: _Channels | None = None


def _exec_early(channel: paramiko.Channel, command: str) -> None:
    """paramiko's exec_command without waiting for the server's answer to the request: the
    command's stdin follows at once (one round trip less per command that has any). A refused
    request still closes the channel (paramiko's _request_failed), which the caller sees as
    a command without an exit status."""
    try:
        message = paramiko.Message()
        message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
        message.add_int(channel.remote_chanid)
        message.add_string("exec")
        message.add_boolean(True)
        message.add_string(command)
        channel._event_pending()
        channel.transport._send_user_message(message)
    except AttributeError:  # a paramiko without these internals: its own (waiting) request
        paramiko.Channel.exec_command(channel, command)


class _PinOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Opt-in only (ssh.accept_unknown_hosts): pin an unknown key; changed keys still fail."""

    def __init__(self, pin: Callable[[str, paramiko.PKey], None]) -> None:
        self._pin = pin

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        self._pin(hostname, key)


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class _Forwarder:
    """A tiny local port forward (like ssh -L) with an OS-chosen local port.

    Fabric's forward_local needs a fixed local port; we want an ephemeral one so parallel
    operations never collide.
    """

    def __init__(
        self,
        transport: Callable[[], paramiko.Transport],
        remote_port: int,
        open_timeout: float = 10,
        poll: float = 0.2,  # how often idle threads look at the stop flag
    ) -> None:
        self._transport = transport
        self._poll = poll
        self._remote_port = remote_port
        self._open_timeout = open_timeout
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(poll)
        self.local_port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self.failure: str | None = None  # the first connection the host refused, and why
        self._threads: list[threading.Thread] = []
        self._clients: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True, name="rg-tunnel")
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._clients.append(client)
            thread = threading.Thread(target=self._pump, args=(client, peer), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, client: socket.socket, peer: tuple[str, int]) -> None:
        try:
            channel = self._transport().open_channel(
                "direct-tcpip", ("127.0.0.1", self._remote_port), peer, timeout=self._open_timeout
            )
        except Exception as exc:
            # Nothing listens on the host port (or the link dropped): the client sees a
            # closed connection, which the gate records as an error, not a failure; the
            # caller can say why, once (paramiko's own log lines are silenced).
            if self.failure is None:
                self.failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
            client.close()
            return
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([client, channel], [], [], self._poll)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(65536)
                    if not data:
                        break
                    client.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            client.close()

    def close(self) -> None:
        # Shutting the sockets down wakes the threads blocked on them at once, rather than at
        # their next poll (0.2 s): a blue/green revert opens its switch right after a tunnel of
        # the bake closes, and every millisecond here is one the old release is not serving.
        self._stop.set()
        for sock in (self._listener, *self._clients):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepter.join(timeout=1)
        for thread in self._threads:
            thread.join(timeout=1)
