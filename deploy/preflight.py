"""The preflight catalogue: everything that can be checked before anything changes.

Run first by every deploy and alone by `releasegate preflight ENV`. The host-side facts are
gathered by one read-only script (commands.preflight_probe) and judged here, in pure code;
each check says ok/fail, what was found, and the fix. Any failure: exit 5, nothing changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from deploy import lock
from deploy.inventory import Inventory


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        tail = f" — fix: {self.fix}" if not self.ok and self.fix else ""
        return f"{mark} {self.name}: {self.detail}{tail}"


def parse_probe(stdout: str) -> dict[str, str]:
    """`key=value` lines from the probe script; later lines win."""
    facts: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.match(r"^[a-z_][a-z0-9_.-]*\Z", key):
            facts[key] = value.strip()
    return facts


def judge_host(
    inv: Inventory, facts: Mapping[str, str], artifact_size: int, now: datetime
) -> list[Check]:
    root = inv.host.root
    env = inv.env
    checks: list[Check] = []

    root_state = facts.get("root", "missing")
    if root_state == "writable":
        checks.append(Check("deploy root", True, f"{root} exists and is writable"))
    elif root_state == "creatable":
        checks.append(
            Check("deploy root", True, f"{root} will be created (its parent is writable)")
        )
    else:
        checks.append(
            Check(
                "deploy root",
                False,
                f"{root} is {root_state.replace('-', ' ')} for {inv.host.user}",
                f"run `releasegate setup {env}` as a user who may create it, or create {root} "
                f"owned by {inv.host.user}",
            )
        )

    floor_mb = inv.preflight.min_free_mb
    need_kb = max(floor_mb * 1024, 2 * artifact_size // 1024)
    free = facts.get("free_kb", "")
    if free.isdigit():
        ok = int(free) >= need_kb
        checks.append(
            Check(
                "free disk",
                ok,
                f"{_size(int(free))} free on {root}'s filesystem, need {_size(need_kb)} "
                f"(max of preflight.min_free_mb and 2x the artifact)",
                f"free space on the host (old releases: `releasegate releases {env}`), or lower "
                f"preflight.min_free_mb",
            )
        )
    else:
        checks.append(
            Check(
                "free disk",
                False,
                "could not read free space (df)",
                "check that `df -Pk` works for the deploy user",
            )
        )

    for rel in inv.app.shared_files:
        state = facts.get(f"shared.{rel}", "missing")
        if state == "missing":
            checks.append(
                Check(
                    f"shared file {rel}",
                    False,
                    f"{root}/shared/{rel} does not exist",
                    "create it on the host (mode 0600 if it holds secrets) or remove it from "
                    "app.shared_files",
                )
            )
            continue
        mode = state
        secret_like = rel.endswith(".env") or "secret" in rel or "key" in rel
        world_writable = mode[-1:].isdigit() and int(mode[-1]) & 2
        exposed = secret_like and mode[-2:] != "00"
        problem = (
            " (writable by every user)"
            if world_writable
            else " (readable by other users; it looks like a secret)"
            if exposed
            else ""
        )
        checks.append(
            Check(
                f"shared file {rel}",
                not problem,
                f"{root}/shared/{rel} has mode {mode}{problem}",
                f"chmod 600 {root}/shared/{rel}",
            )
        )
    if inv.secrets.enabled:
        mode = facts.get("shared..env", "missing")
        if mode not in ("missing", "600", "400"):
            checks.append(
                Check(
                    "shared .env",
                    False,
                    f"{root}/shared/.env has mode {mode}",
                    f"chmod 600 {root}/shared/.env (releases shipped by an older releasegate "
                    f"read it; new releases carry their own env snapshot)",
                )
            )

    for name, constraint in inv.preflight.runtimes.items():
        found = facts.get(f"version.{name}", "")
        if not found:
            checks.append(
                Check(
                    f"runtime {name}",
                    False,
                    f"`{name}` is not on the host's PATH",
                    f"install {name} {constraint} on the host",
                )
            )
            continue
        ok = satisfies(found, constraint)
        checks.append(
            Check(
                f"runtime {name}",
                ok,
                f"{name} {found} (wanted {constraint})",
                f"install {name} {constraint} on the host",
            )
        )

    manager = inv.process.manager
    found_manager = facts.get("manager", "")
    checks.append(
        Check(
            "process manager",
            bool(found_manager),
            f"{manager} found at {found_manager}" if found_manager else f"{manager} not found",
            "npm install -g pm2 (for the deploy user's PATH), or set process.pm2 to its path"
            if manager == "pm2"
            else "systemd must be the host's init system",
        )
    )

    raw = facts.get("lock", "")
    if raw and facts.get("lock_lease"):
        raw += f"\nlease {facts['lock_lease']}"
    holder = lock.assess(raw, now) if raw else None
    # Informational: a held lock is decided by the lock step itself (wait, break, or exit 4).
    checks.append(
        Check(
            "lock",
            True,
            "free"
            if holder is None
            else f"held by {holder.describe()} (it will be broken)"
            if holder.dead or holder.expired
            else f"held by {holder.describe()}: a deploy waits (--lock-wait) or stops (exit 4)",
        )
    )

    if inv.preflight.migration_check:
        code = facts.get("migration_exit", "")
        tail = facts.get("migration_tail", "")
        timed_out = code in ("124", "137")
        checks.append(
            Check(
                "migration safety",
                code == "0",
                (
                    f"`{inv.preflight.migration_check}` did not finish within "
                    f"{inv.preflight.migration_timeout:g}s (preflight.migration_timeout); the "
                    f"host stopped it"
                    if timed_out
                    else f"`{inv.preflight.migration_check}` exited {code or '?'}"
                )
                + (f": {tail}" if tail and code != "0" else ""),
                "make the migration safe to run before the new code (or fix the check)",
            )
        )
    return checks


_VERSION = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def _version(text: str) -> tuple[int, int, int]:
    m = _VERSION.search(text)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))


def satisfies(found: str, constraint: str) -> bool:
    """`>=18`, `>=18.2 <21`, `20`, `==20.1.0`: every clause must hold."""
    have = _version(found)
    for clause in constraint.split():
        m = re.match(r"^(>=|<=|==|>|<|\^|~)?v?(\d+(?:\.\d+){0,2})\Z", clause)
        if not m:
            return False
        op, want_text = m.group(1) or "", m.group(2)
        want = _version(want_text)
        parts = want_text.count(".") + 1
        if op == "":
            if have[:parts] != want[:parts]:
                return False
        elif op == "^":
            if have[0] != want[0] or have < want:
                return False
        elif op == "~":
            if have[:2] != want[:2] or have < want:
                return False
        elif not {
            ">=": have >= want,
            "<=": have <= want,
            "==": have == want,
            ">": have > want,
            "<": have < want,
        }[op]:
            return False
    return True


def _size(kib: int) -> str:
    # in KiB below 10 MiB: "0 MiB free, need 0 MiB" read as a contradiction, and a failure
    return f"{kib // 1024} MiB" if kib >= 10 * 1024 else f"{kib} KiB"
