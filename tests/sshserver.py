"""A minimal SSH server on 127.0.0.1 (paramiko, in a thread): completes the key exchange and
accepts any public key, recording who logged in with which key and from where, and forwards
direct-tcpip channels (so it can be a ProxyJump host). Enough to check what a client sends
(user, port, key) and what trust-host reads, without the sandbox."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import paramiko


@dataclass
class Server:
    port: int
    host_key: paramiko.PKey
    logins: list[tuple[str, str]] = field(default_factory=list)  # (user, key base64)
    peers: list[str] = field(default_factory=list)  # the address of every TCP connection


class _Interface(paramiko.ServerInterface):
    def __init__(self, server: Server) -> None:
        self._server = server
        self.forwards: dict[int, tuple[str, int]] = {}  # channel id -> destination

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self._server.logins.append((username, key.get_base64()))
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        self.forwards[chanid] = destination
        return paramiko.OPEN_SUCCEEDED


def _pipe(a: socket.socket | paramiko.Channel, b: socket.socket | paramiko.Channel) -> None:
    with contextlib.suppress(Exception):
        while data := a.recv(32768):
            b.sendall(data)
    with contextlib.suppress(Exception):
        b.close()


def _forward(t: paramiko.Transport, interface: _Interface) -> None:
    """Bridges each accepted direct-tcpip channel to a TCP connection to its destination."""
    while t.is_active():
        chan = t.accept(0.2)
        if chan is None or chan.get_id() not in interface.forwards:
            continue
        try:
            sock = socket.create_connection(interface.forwards.pop(chan.get_id()), timeout=5)
        except OSError:
            chan.close()
            continue
        sock.settimeout(None)
        for a, b in ((chan, sock), (sock, chan)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


@contextlib.contextmanager
def ssh_server(address: str = "127.0.0.1") -> Iterator[Server]:
    srv = socket.socket()
    srv.bind((address, 0))
    srv.listen(4)
    server = Server(port=srv.getsockname()[1], host_key=paramiko.RSAKey.generate(1024))
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                conn, peer = srv.accept()
            except OSError:
                return
            server.peers.append(peer[0])
            t = paramiko.Transport(conn)
            t.add_server_key(server.host_key)
            transports.append(t)
            interface = _Interface(server)
            with contextlib.suppress(Exception):
                t.start_server(server=interface)
                threading.Thread(target=_forward, args=(t, interface), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        srv.close()
        for t in transports:
            t.close()
