"""What `trust-host` reads: the SSH key a host presents in the handshake, read without logging
in to it — directly, or through the ProxyJump hops ~/.ssh/config names for it.

A jump host is logged into, so its own key is verified against known_hosts exactly as a
deploy verifies it (deploy.remote.verified_client). A jump host whose key is not pinned is
never trusted implicitly: it is pinned only when `pin_jump` (a person at a terminal who
checked the fingerprint) says so, otherwise nothing is read from the host behind it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.errors import ConfigError, HostKeyRefused

if TYPE_CHECKING:
    import paramiko
    from fabric import Connection

# (pin name, key) -> True once the person confirmed it and it is pinned; False: refused
PinJump = Callable[[str, "paramiko.PKey"], bool]


def host_key(
    address: str,
    port: int,
    *,
    known_hosts: tuple[Path, ...],
    timeout: float,
    env: str,
    pin_jump: PinJump | None = None,
) -> tuple[paramiko.PKey, tuple[str, ...]]:
    """The key `address` (an address or a ~/.ssh/config alias) presents on `port`, and the
    pin names of the jump hosts it was read through, outermost first."""
    from fabric import Connection

    conn = Connection(address, port=port, connect_timeout=timeout)
    target = f"{conn.host}:{port}"
    if isinstance(conn.gateway, str):
        # a ProxyCommand (e.g. `ssh -W %h:%p bastion`) is a stream like any other; what it
        # runs verifies its own hops, as it does for deploys (Fabric uses it the same way)
        return _handshake(conn.open_gateway(), target, timeout), ()
    hops = _hops(conn)
    try:
        for hop in hops:
            _open_jump(hop, target, known_hosts, timeout, env, pin_jump)
        sock = _socket_to(conn.host, port, hops[-1] if hops else None, timeout)
        return _handshake(sock, target, timeout), tuple(pin_name(hop) for hop in hops)
    finally:
        for hop in reversed(hops):
            hop.close()


def pin_name(conn: Connection) -> str:
    """The name a connection's key is looked up under in known_hosts (its HostName)."""
    from deploy.remote import known_hosts_name

    return known_hosts_name(conn.host, int(conn.port))


def _hops(conn: Connection) -> list[Connection]:
    """Fabric's gateway chain for ProxyJump a,b: conn.gateway is b, b.gateway is a."""
    from fabric import Connection

    hops = []
    hop = conn.gateway
    while isinstance(hop, Connection):
        hops.append(hop)
        hop = hop.gateway
    return hops[::-1]


def _open_jump(
    hop: Connection,
    target: str,
    known_hosts: tuple[Path, ...],
    timeout: float,
    env: str,
    pin_jump: PinJump | None,
) -> None:
    import paramiko

    from deploy.remote import fingerprint, verified_client

    name = pin_name(hop)
    hop.connect_timeout = timeout
    hop.client = verified_client(known_hosts, None)
    try:
        hop.open()
        return
    except paramiko.BadHostKeyException as exc:
        raise HostKeyRefused(
            f"the SSH host key of the jump host {hop.original_host} ({name}) has CHANGED: it "
            f"now presents {fingerprint(exc.key)}, but known_hosts pins "
            f"{fingerprint(exc.expected_key)}. Nothing was read from {target}. If the jump host "
            f"was rebuilt, verify its new key out of band and replace its line in "
            f"{known_hosts[0]}; otherwise treat this as an attack."
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" not in str(exc):
            raise _jump_failed(hop, name, target, exc) from None
    except (OSError, EOFError) as exc:
        raise _jump_failed(hop, name, target, exc) from None
    # unknown jump host: its key, read the same way (through the hops before it)
    outer = hop.gateway if hop.gateway is not None and not isinstance(hop.gateway, str) else None
    key = _handshake(_socket_to(hop.host, int(hop.port), outer, timeout), name, timeout)
    if pin_jump is None or not pin_jump(name, key):
        raise HostKeyRefused(
            f"{target} is reached through the jump host {hop.original_host} ({name}), whose "
            f"SSH key is not in {known_hosts[0]}; releasegate never trusts a jump host "
            f"implicitly, so nothing was read from {target}. {name} presents "
            f"{key.get_name()} {fingerprint(key)}: check that fingerprint with the jump host's "
            f"owner, then run `releasegate trust-host {env}` at a terminal — it asks about the "
            f"jump host first, then about the host (`--yes` never pins a jump host)."
        )
    hop.client = verified_client(known_hosts, None)
    hop.client.get_host_keys().add(name, key.get_name(), key)
    try:
        hop.open()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise _jump_failed(hop, name, target, exc) from None


def _jump_failed(hop: Connection, name: str, target: str, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"could not log in to the jump host {hop.original_host} ({hop.user}@{name}) on the way "
        f"to {target}: {type(exc).__name__}: {exc}. Check its HostName, Port, User and "
        f"IdentityFile in ~/.ssh/config."
    )


def _socket_to(
    address: str, port: int, gateway: Connection | None, timeout: float
) -> socket.socket | paramiko.Channel:
    """A stream to address:port: a TCP connection, or a direct-tcpip channel opened by the
    (already open, verified) jump host."""
    import paramiko

    try:
        if gateway is None:
            return socket.create_connection((address, port), timeout=timeout)
        return gateway.transport.open_channel(
            "direct-tcpip", (address, port), ("", 0), timeout=timeout
        )
    except (OSError, paramiko.SSHException) as exc:
        via = f" from the jump host {gateway.original_host}" if gateway is not None else ""
        raise ConfigError(
            f"cannot reach {address}:{port}{via} to read its host key ({exc}); check the "
            f"address and port in the inventory (and ~/.ssh/config)"
        ) from None


def _handshake(sock: socket.socket | paramiko.Channel, name: str, timeout: float) -> paramiko.PKey:
    """The key from the SSH handshake; nothing is authenticated."""
    import paramiko

    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError) as exc:
        raise ConfigError(f"{name} did not complete an SSH handshake: {exc}") from None
    finally:
        transport.close()
