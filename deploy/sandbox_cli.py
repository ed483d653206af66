"""Sandbox commands for both doors (Click and Invoke): print progress, map errors to exit codes."""

from __future__ import annotations

import sys

from deploy import sandbox
from deploy.sandbox import SandboxError, SandboxSpec


def _log(line: str) -> None:
    print(f"  {line}", flush=True)


def _spec(name: str, index: int) -> SandboxSpec:
    return SandboxSpec(name=name, index=index)


def up(name: str, index: int) -> int:
    try:
        info = sandbox.up(_spec(name, index), log=_log)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"sandbox {info.name} is up: ssh -i {info.identity_file} "
        f"-o UserKnownHostsFile={info.known_hosts} {info.user}@{info.address}"
    )
    return 0


def down(name: str, index: int) -> int:
    try:
        sandbox.down(_spec(name, index), log=_log)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"sandbox {name} is down")
    return 0


def status(name: str, index: int) -> int:
    try:
        info = sandbox.status(_spec(name, index))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if info is None:
        print(f"sandbox {name} is not running (start it with `releasegate sandbox up`)")
        return 1
    print(f"sandbox {info.name} is up at {info.user}@{info.address} (systemd pid {info.pid1})")
    return 0
