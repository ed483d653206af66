"""The SSH tunnel's local end (deploy.remote._Forwarder) with a fake transport: a channel is
one end of a socketpair, so bytes really flow and a closed tunnel really stops."""

from __future__ import annotations

import socket

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


class DeadTransport:
    """A transport whose link dropped: no channel opens."""

    def open_channel(self, *_args: object, **_kwargs: object) -> socket.socket:
        raise EOFError("link dropped")


def test_bytes_flow_through_and_closing_takes_no_poll_interval():
    transport = FakeTransport()
    # An hour between polls of the stop flag: only a close that wakes its threads (rather
    # than waiting for their next poll) leaves none running.
    forward = _Forwarder(lambda: transport, 80, poll=3600)  # type: ignore[arg-type,return-value]
    client = socket.create_connection(("127.0.0.1", forward.local_port), timeout=5)
    client.sendall(b"ping")
    wait_until(lambda: transport.hosts, 5, "the forwarder to open its channel", every=0.01)
    transport.hosts[0].settimeout(5)
    assert transport.hosts[0].recv(4) == b"ping"
    transport.hosts[0].sendall(b"pong")
    assert client.recv(4) == b"pong"
    # an open connection idles in the pump's select, the accepter in accept(): close wakes both
    forward.close()
    threads = [forward._accepter, *forward._threads]
    wait_until(
        lambda: not any(t.is_alive() for t in threads),
        10,
        "close() to wake the tunnel's threads instead of waiting for their next poll",
        every=0.01,
    )
    assert client.recv(4) == b""  # the tunnel really closed the connection


def test_after_a_dropped_link_the_tunnel_uses_the_reconnected_transport():
    """The link dropped and a command reconnected: connections through a tunnel opened before
    go over the new transport, not the dead one (a gate's probes recover with the link)."""
    dead = DeadTransport()
    now: dict[str, object] = {"transport": dead}
    forward = _Forwarder(lambda: now["transport"], 80)  # type: ignore[arg-type,return-value]
    first = socket.create_connection(("127.0.0.1", forward.local_port), timeout=5)
    assert first.recv(4) == b""  # refused while the link is down
    assert forward.failure is not None and "link dropped" in forward.failure
    now["transport"] = live = FakeTransport()
    second = socket.create_connection(("127.0.0.1", forward.local_port), timeout=5)
    second.sendall(b"ping")
    wait_until(lambda: live.hosts, 5, "a channel on the new transport", every=0.01)
    live.hosts[0].settimeout(5)
    assert live.hosts[0].recv(4) == b"ping"
    forward.close()
