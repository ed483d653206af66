"""A minimal SSH server on 127.0.0.1 (paramiko, in a thread): completes the key exchange and
accepts any public key, recording who logged in with which key. Enough to check what a client
sends (user, port, key) and what trust-host reads, without the sandbox."""

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


class _Interface(paramiko.ServerInterface):
    def __init__(self, server: Server) -> None:
        self._server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self._server.logins.append((username, key.get_base64()))
        return paramiko.AUTH_SUCCESSFUL


@contextlib.contextmanager
def ssh_server() -> Iterator[Server]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    server = Server(port=srv.getsockname()[1], host_key=paramiko.RSAKey.generate(1024))
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(server.host_key)
            transports.append(t)
            with contextlib.suppress(Exception):
                t.start_server(server=_Interface(server))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        srv.close()
        for t in transports:
            t.close()
