"""What the user's SSH client configuration (~/.ssh/config, /etc/ssh/ssh_config) says about a
host: read exactly as Fabric reads it, so the values we print, pin and check are the ones the
connection uses. The inventory wins wherever it sets a value explicitly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    """One host alias as the SSH configuration resolves it (None: not set there)."""

    hostname: str  # HostName, else the alias itself
    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None


def lookup(alias: str) -> Route:
    from fabric import Config  # imported when an inventory is parsed, not for --help

    data = Config().base_ssh_config.lookup(alias)
    port = data.get("port")
    return Route(
        hostname=str(data.get("hostname") or alias),
        port=int(port) if port and str(port).isdigit() else None,
        user=data.get("user"),
        identity_files=tuple(data.get("identityfile", ())),
        proxy_jump=data.get("proxyjump"),
    )


def pin_name(address: str, port: int) -> str:
    """The name the host's key is pinned under in known_hosts: the host the connection really
    reaches (HostName), as OpenSSH and paramiko look it up."""
    host = lookup(address).hostname
    return host if port == 22 else f"[{host}]:{port}"
