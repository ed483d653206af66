"""The running sandbox's record, ``<state_root>/<name>/sandbox.json``: written by ``up``,
removed by ``down``. It says which provider runs the sandbox (so ``down`` and ``status`` need
no ``--provider``) and where to reach it (so an inventory can name the sandbox instead of its
address: a host entry ``sandbox: rg-local``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy.sandbox.base import SAFE_PATH_RE, SandboxError, SandboxInfo, SandboxSpec

FILE = "sandbox.json"
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "provider": str,
    "name": str,
    "address": str,
    "port": int,
    "user": str,
    "identity_file": str,
    "known_hosts": str,
    "state_dir": str,
    "pid1": int,
    "services_at": (str, type(None)),
}


def path(spec: SandboxSpec) -> Path:
    return spec.state_root / spec.name / FILE


def write(spec: SandboxSpec, info: SandboxInfo) -> None:
    record = {
        "provider": info.provider,
        "name": info.name,
        "address": info.address,
        "port": info.port,
        "user": info.user,
        "identity_file": str(info.identity_file),
        "known_hosts": str(info.known_hosts),
        "state_dir": str(info.state_dir),
        "pid1": info.pid1,
        "services_at": info.services_at,
    }
    target = path(spec)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(target)  # readers never see half a record


def clear(spec: SandboxSpec) -> None:
    path(spec).unlink(missing_ok=True)


def recorded_provider(spec: SandboxSpec) -> str | None:
    """The provider the record names, or None when there is no readable record."""
    try:
        return read(spec).provider
    except SandboxError:
        return None


def read(spec: SandboxSpec) -> SandboxInfo:
    """The record as a SandboxInfo, strictly checked; SandboxError says what is wrong."""
    where = path(spec)
    start = f"releasegate sandbox up --name {spec.name}"
    try:
        data: Any = json.loads(where.read_text())
    except FileNotFoundError:
        raise SandboxError(
            f"Sandbox {spec.name!r} is not up (no {where}). Start it with `{start}`."
        ) from None
    except (OSError, ValueError) as exc:
        raise SandboxError(
            f"The sandbox record {where} cannot be read ({exc}). Run `releasegate sandbox down "
            f"--name {spec.name}`, then `{start}`."
        ) from exc
    problems = _problems(data, spec)
    if problems:
        raise SandboxError(
            f"The sandbox record {where} is not valid ({'; '.join(problems)}). Run `releasegate "
            f"sandbox down --name {spec.name}`, then `{start}`."
        )
    return SandboxInfo(
        name=data["name"],
        address=data["address"],
        port=data["port"],
        user=data["user"],
        identity_file=Path(data["identity_file"]),
        known_hosts=Path(data["known_hosts"]),
        pid1=data["pid1"],
        state_dir=Path(data["state_dir"]),
        provider=data["provider"],
        services_at=data["services_at"],
    )


def _problems(data: Any, spec: SandboxSpec) -> list[str]:
    if not isinstance(data, dict):
        return ["it is not a JSON object"]
    problems = [f"unknown key {key!r}" for key in data if key not in _FIELDS]
    for key, kind in _FIELDS.items():
        if key not in data:
            problems.append(f"missing key {key!r}")
        elif not isinstance(data[key], kind) or isinstance(data[key], bool):
            problems.append(f"{key} has the wrong type")
    if problems:
        return problems
    from deploy.sandbox import PROVIDERS

    if data["provider"] not in PROVIDERS:
        problems.append(f"provider {data['provider']!r} is not one of {', '.join(PROVIDERS)}")
    if data["name"] != spec.name:
        problems.append(f"name {data['name']!r} is not {spec.name!r}")
    if not 1 <= data["port"] <= 65535:
        problems.append(f"port {data['port']} is out of range")
    for key in ("identity_file", "known_hosts", "state_dir"):
        if not SAFE_PATH_RE.match(data[key]):
            problems.append(f"{key} {data[key]!r} is not a plain absolute path")
    return problems
