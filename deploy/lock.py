"""The host lock's owner record, what can be said about a holder (age, lease, dead or alive),
and the keeper that renews our own lease while an operation runs.

The lock itself is `.releasegate/lock/<instance>/` made by commands.acquire_lock in one rename;
the secret token that releases it sits in `<instance>/token`, owner.json says who holds it and
why, and `<instance>/lease` (content: seconds; mtime: last renewal, by the host's clock) says
until when. A lease that ended may be broken by anyone; a live one never (commands.LEASE_GRACE).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from deploy.commands import LEASE_GRACE

MANUAL = "manual"


def process_start(pid: int) -> str | None:
    """Start time of a local process in clock ticks since boot: tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_record(
    *,
    token: str,
    actor: str,
    op: str,
    now: datetime,
    message: str = "",
    machine: str | None = None,
    lease_s: int = 0,
) -> dict[str, object]:
    pid = os.getpid()
    record: dict[str, object] = {
        "token_hint": token[:8],
        "actor": actor,
        "op": op,
        "pid": pid,
        "pid_start": process_start(pid),
        "host": machine or socket.gethostname(),
        "since": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "message": message,
    }
    if lease_s:
        record["lease_s"] = lease_s
    return record


@dataclass(frozen=True)
class Lease:
    """A holder's lease as the host saw it: seconds since its last renewal and its length,
    both by the host's clock (None: no lease — a manual lock, held until unlocked)."""

    instance: str
    age_s: int | None
    ttl_s: int | None

    @property
    def left_s(self) -> int | None:
        """Seconds until anyone may break it (negative: it may be broken now)."""
        if self.age_s is None or self.ttl_s is None:
            return None
        return self.ttl_s + LEASE_GRACE - self.age_s

    @property
    def ended(self) -> bool:
        left = self.left_s
        return left is not None and left < 0


@dataclass(frozen=True)
class Holder:
    raw: str  # the lock view exactly as the host printed it
    owner: dict[str, object]
    age_s: float | None
    dead: bool  # known dead: same machine, and the process is gone (or its pid was reused)
    lease: Lease | None = None  # None: a lock made by an older releasegate (no instance)
    now: datetime | None = None

    @property
    def manual(self) -> bool:
        return self.owner.get("op") == MANUAL

    @property
    def instance(self) -> str | None:
        return self.lease.instance if self.lease else None

    @property
    def key(self) -> str:
        """Which lock this is: its instance (or, for an older releasegate's, its owner line)."""
        return self.instance or (self.raw.splitlines()[0] if self.raw else "")

    @property
    def expired(self) -> bool:
        """Its lease ended: the holder stopped renewing it, so anyone may break the lock."""
        return self.lease is not None and self.lease.ended and not self.manual

    def lease_text(self) -> str:
        lease = self.lease
        left = lease.left_s if lease else None
        if lease is None or left is None:
            return "no lease: held until unlocked"
        if left < 0:
            return f"its lease ended {-left}s ago: it may be broken"
        at = ""
        if self.now is not None:
            when = self.now + timedelta(seconds=left)
            at = f" (about {when.isoformat(timespec='seconds').replace('+00:00', 'Z')})"
        return f"its lease expires in {left}s{at} unless its holder renews it"

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
        elif self.lease is not None:
            text += f"; {self.lease_text()}"
        return text


def assess(raw: str, now: datetime, this_host: str | None = None) -> Holder:
    """Judge a holder from commands.LOCK_VIEW's output (owner.json line, `lease` line)."""
    lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
    owner_line = next((ln for ln in lines if ln.startswith("{")), "")
    try:
        loaded = json.loads(owner_line) if owner_line else {}
    except (json.JSONDecodeError, RecursionError):  # garbage on the host
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
    lease = next((_lease(ln) for ln in lines if ln.startswith("lease ")), None)
    return Holder(raw=raw.strip(), owner=owner, age_s=age, dead=dead, lease=lease, now=now)


def _lease(line: str) -> Lease | None:
    parts = line.split()
    if len(parts) != 4:
        return None
    _, instance, age, ttl = parts
    return Lease(
        instance=instance,
        age_s=int(age) if _int(age) else None,
        ttl_s=int(ttl) if _int(ttl) else None,
    )


def _int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LeaseKeeper:
    """Renews our lease every `interval` seconds on a background thread until stopped.

    Renewals run beside the operation's own commands — a second channel on the same SSH
    connection — so a single long command (an install) cannot let the lease lapse, and the
    flow's round trips stay as they are. `renew` returns None when renewed, else why the lock
    is no longer ours; it may raise for a renewal that failed to reach the host (retried at
    the next tick: the lease outlives two missed renewals).
    """

    def __init__(self, renew: Callable[[], str | None], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rg-lease")
        self.renewals = 0
        self.failures: list[str] = []
        self.lost: str | None = None  # why the lock stopped being ours, once it did

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval + 5)

    def tick(self) -> None:
        """One renewal (the thread's body; tests call it directly)."""
        try:
            why = self._renew()
        except Exception as exc:  # a renewal that did not reach the host: try again next tick
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return
        if why is None:
            self.renewals += 1
        else:
            self.lost = why

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.tick()
            if self.lost is not None:
                return
