"""The host lock's owner record and what can be said about a holder (age, dead or alive).

The lock itself is a directory made with mkdir (atomic) by commands.acquire_lock; the secret
token that releases it sits in lock/token, and owner.json says who holds it and why.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

MANUAL = "manual"


def process_start(pid: int) -> str | None:
    """Start time of a local process in clock ticks since boot: tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_record(
    *, token: str, actor: str, op: str, now: datetime, message: str = ""
) -> dict[str, object]:
    pid = os.getpid()
    return {
        "token_hint": token[:8],
        "actor": actor,
        "op": op,
        "pid": pid,
        "pid_start": process_start(pid),
        "host": socket.gethostname(),
        "since": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "message": message,
    }


@dataclass(frozen=True)
class Holder:
    raw: str  # owner.json exactly as on the host: breaking the lock is conditional on it
    owner: dict[str, object]
    age_s: float | None
    dead: bool  # known dead: same machine, and the process is gone (or its pid was reused)

    @property
    def manual(self) -> bool:
        return self.owner.get("op") == MANUAL

    def describe(self) -> str:
        o = self.owner
        if not o:
            return "an unknown owner (the lock has no owner.json)"
        age = f", {_age(self.age_s)} ago" if self.age_s is not None else ""
        text = (
            f"{o.get('actor', '?')} ({o.get('op', '?')}, pid {o.get('pid', '?')} on "
            f"{o.get('host', '?')}, since {o.get('since', '?')}{age})"
        )
        if o.get("message"):
            text += f" with message {o.get('message')!r}"
        if self.dead:
            text += " — that process is gone: the lock is stale"
        return text


def assess(raw: str, now: datetime, this_host: str | None = None) -> Holder:
    raw = raw.strip()
    try:
        loaded = json.loads(raw.splitlines()[-1]) if raw else {}
    except json.JSONDecodeError:
        loaded = {}
    owner = loaded if isinstance(loaded, dict) else {}
    age = None
    since = owner.get("since")
    if isinstance(since, str):
        try:
            age = (now - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds()
        except ValueError:
            age = None
    dead = False
    host = this_host or socket.gethostname()
    pid = owner.get("pid")
    if owner.get("host") == host and isinstance(pid, int) and owner.get("op") != MANUAL:
        started = process_start(pid)
        dead = started is None or (owner.get("pid_start") not in (None, started))
    return Holder(raw=raw.splitlines()[-1] if raw else "", owner=owner, age_s=age, dead=dead)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
