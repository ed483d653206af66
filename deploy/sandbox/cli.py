"""Sandbox commands for both doors (Click and Invoke): print progress, map errors to exit codes.

With --json they write the JSON lines of every command (smoke.jsonlines): an `info` event per
progress line, then one outcome (`sandbox-up`, `sandbox-down`, `sandbox-status`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from deploy import sandbox
from deploy.sandbox import SandboxError, SandboxInfo, SandboxSpec
from smoke.jsonlines import JsonLines


class _Out:
    """Plain lines, or JSON lines with --json."""

    def __init__(self, op: str, json_out: bool) -> None:
        self.op = op
        self.lines = JsonLines() if json_out else None

    def log(self, line: str) -> None:
        if self.lines is not None:
            self.lines.emit("info", message=line)
        else:
            print(f"  {line}", flush=True)

    def end(self, result: str, code: int, message: str, **extra: Any) -> int:
        if self.lines is not None:
            if code and result == "error":
                self.lines.error(message)
            self.lines.outcome(op=self.op, result=result, exit_code=code, message=message, **extra)
        elif code and result == "error":
            print(f"error: {message}", file=sys.stderr)
        else:
            print(message)
        return code


def _spec(name: str, index: int) -> SandboxSpec:
    return SandboxSpec(name=name, index=index)


def _fields(info: SandboxInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "provider": info.provider,
        "address": info.address,
        "port": info.port,
        "user": info.user,
        "pid1": info.pid1,
        "identity_file": str(info.identity_file),
        "known_hosts": str(info.known_hosts),
    }


def _guarded(out: _Out, body: Callable[[], int]) -> int:
    try:
        return body()
    except SandboxError as exc:
        return out.end("error", 2, str(exc))


def up(name: str, index: int, json_out: bool = False, provider: str | None = None) -> int:
    out = _Out("sandbox-up", json_out)

    def body() -> int:
        info = sandbox.up(_spec(name, index), log=out.log, provider_name=provider)
        return out.end(
            "up",
            0,
            f"sandbox {info.name} is up ({info.provider}): ssh -i {info.identity_file} "
            f"-o UserKnownHostsFile={info.known_hosts} -p {info.port} {info.user}@{info.address}",
            sandbox=_fields(info),
        )

    return _guarded(out, body)


def down(name: str, index: int, json_out: bool = False, provider: str | None = None) -> int:
    out = _Out("sandbox-down", json_out)

    def body() -> int:
        sandbox.down(_spec(name, index), log=out.log, provider_name=provider)
        return out.end("down", 0, f"sandbox {name} is down")

    return _guarded(out, body)


def status(
    name: str, index: int, json_out: bool = False, provider: str | None = None
) -> int:
    out = _Out("sandbox-status", json_out)

    def body() -> int:
        info = sandbox.status(_spec(name, index), provider_name=provider)
        if info is None:
            return out.end(
                "not-running",
                1,
                f"sandbox {name} is not running (start it with `releasegate sandbox up`)",
            )
        return out.end(
            "up",
            0,
            f"sandbox {info.name} is up ({info.provider}) at {info.user}@{info.address}:"
            f"{info.port} (systemd pid {info.pid1})",
            sandbox=_fields(info),
        )

    return _guarded(out, body)
