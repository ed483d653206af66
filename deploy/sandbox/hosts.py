"""Inventories name the sandbox, not its address: a host entry ``sandbox: rg-local`` gets its
address, port, key (and, unless the inventory sets one, its known_hosts) from the running
sandbox's record, whichever provider runs it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deploy.errors import ConfigError
from deploy.sandbox import state
from deploy.sandbox.base import NAME_RE, SAFE_PATH_RE, SandboxError, SandboxSpec

# Where sandbox records are looked up; tests and unusual setups point it elsewhere.
STATE_ROOT_ENV = "RELEASEGATE_SANDBOX_STATE_ROOT"
FROM_SANDBOX = ("address", "port", "identity_file")


def state_root(source: Path) -> Path:
    value = os.environ.get(STATE_ROOT_ENV)
    if not value:
        return SandboxSpec.state_root
    if not SAFE_PATH_RE.match(value) or value == "/":
        raise ConfigError(
            f"{source}: {STATE_ROOT_ENV}={value!r} is not a plain absolute path; unset it or "
            "name the sandboxes' state root, e.g. /var/lib/releasegate/sandbox."
        )
    return Path(value)


def resolve(data: dict[str, Any], source: Path) -> dict[str, Any]:
    """`data` with every `sandbox:` host entry filled in from its sandbox's record."""
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not any(
        isinstance(h, dict) and "sandbox" in h for h in hosts
    ):
        return data
    resolved: list[Any] = []
    pins: dict[Path, str] = {}  # each sandbox's known_hosts -> its name
    for i, host in enumerate(hosts):
        if not isinstance(host, dict) or "sandbox" not in host:
            resolved.append(host)
            continue
        name = host["sandbox"]
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(
                f"{source}: hosts[{i}].sandbox: {name!r} is not a sandbox name; use the name "
                "the sandbox was started with (`releasegate sandbox up --name NAME`: 1-10 "
                "lowercase letters, digits or '-', a letter first), e.g. rg-local."
            )
        clash = [key for key in FROM_SANDBOX if key in host]
        if clash:
            raise ConfigError(
                f"{source}: hosts[{i}]: {', '.join(clash)} come from the running sandbox "
                f"{name!r}; remove {'them' if len(clash) > 1 else 'it'}, or remove `sandbox:` "
                "to name the host by its address."
            )
        try:
            info = state.read(SandboxSpec(name=name, state_root=state_root(source)))
        except SandboxError as exc:
            raise ConfigError(f"{source}: hosts[{i}].sandbox: {exc}") from None
        resolved.append(
            {
                "user": info.user,
                **host,
                "address": info.address,
                "port": info.port,
                "identity_file": str(info.identity_file),
            }
        )
        pins.setdefault(info.known_hosts, name)
    out = {**data, "hosts": resolved}
    ssh = data.get("ssh")
    settable = ssh is None or (isinstance(ssh, dict) and not ssh.get("known_hosts"))
    if pins and settable:
        if len(pins) > 1:
            raise ConfigError(
                f"{source}: hosts: several sandboxes ({', '.join(sorted(pins.values()))}) each "
                "pin their own host key; set ssh.known_hosts to one file holding all their "
                f"pins (cat {' '.join(str(p) for p in pins)} > FILE)."
            )
        out["ssh"] = {**(ssh or {}), "known_hosts": str(next(iter(pins)))}
    return out
