"""The SSH tunnel's local end (deploy.remote._Forwarder) with a fake transport: a channel is
one end of a socketpair, so bytes really flow and a closed tunnel really stops."""

from __future__ import annotations

import socket
import time

from deploy.remote import _Forwarder
from tests.conftest import wait_until


class FakeTransport:
    """open_channel returns one end of a socketpair; the test holds the other (the host)."""

    def __init__(self) -> None:
        self.hosts: list[socket.socket] = []

    def open_channel(self, *_args: object, **_kwargs: object) -> socket.socket:
        ours, host = socket.socketpair()
        self.hosts.append(host)
        return ours


def test_bytes_flow_through_and_closing_takes_no_poll_interval():
    transport = FakeTransport()
    forward = _Forwarder(transport, 80)  # type: ignore[arg-type]
    client = socket.create_connection(("127.0.0.1", forward.local_port), timeout=5)
    client.sendall(b"ping")
    wait_until(lambda: transport.hosts, 5, "the forwarder to open its channel", every=0.01)
    transport.hosts[0].settimeout(5)
    assert transport.hosts[0].recv(4) == b"ping"
    transport.hosts[0].sendall(b"pong")
    assert client.recv(4) == b"pong"
    # an open connection idles in the pump's select: close wakes it instead of waiting it out
    started = time.monotonic()
    forward.close()
    assert time.monotonic() - started < 0.1
    assert client.recv(4) == b""  # the tunnel really closed the connection
