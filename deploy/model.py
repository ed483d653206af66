"""Plain values the rest of releasegate passes around. No I/O here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath

RELEASE_ID = re.compile(r"^\d{14}-[0-9a-f]{7,40}$")
TOKEN = re.compile(r"^[0-9a-f]{32}$")


class ReleaseState(StrEnum):
    PARTIAL = "partial"
    READY = "ready"
    ACTIVE_UNVERIFIED = "active-unverified"
    GOOD = "good"
    BAD = "bad"


def is_release_id(value: str) -> bool:
    return bool(RELEASE_ID.match(value))


def new_release_id(sha: str, now: datetime) -> str:
    return f"{now.astimezone(UTC):%Y%m%d%H%M%S}-{sha[:7]}"


@dataclass(frozen=True)
class Layout:
    """Where things live on one host under its deploy root (docs/design.md §3)."""

    root: PurePosixPath

    @property
    def releases(self) -> PurePosixPath:
        return self.root / "releases"

    @property
    def shared(self) -> PurePosixPath:
        return self.root / "shared"

    @property
    def current(self) -> PurePosixPath:
        return self.root / "current"

    @property
    def state(self) -> PurePosixPath:
        return self.root / ".releasegate"

    @property
    def lock(self) -> PurePosixPath:
        return self.state / "lock"

    @property
    def journal(self) -> PurePosixPath:
        return self.state / "journal.jsonl"

    @property
    def uploads(self) -> PurePosixPath:
        return self.state / "uploads"

    def release(self, release_id: str) -> PurePosixPath:
        if not is_release_id(release_id):
            raise ValueError(f"not a release id: {release_id!r}")
        return self.releases / release_id

    def partial(self, release_id: str) -> PurePosixPath:
        return self.releases / f"{self.release(release_id).name}.partial"

    def pm2_config(self, release_id: str) -> PurePosixPath:
        return self.release(release_id) / ".releasegate-pm2.config.js"


@dataclass(frozen=True)
class Artifact:
    """A tarball of one revision, ready to ship."""

    path: str
    sha256: str
    size: int
    revision: str
    release_id: str
    members: int


@dataclass(frozen=True)
class Manifest:
    id: str
    revision: str
    sha256: str
    created_at: str
    actor: str

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "revision": self.revision,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "actor": self.actor,
        }


@dataclass(frozen=True)
class JournalEntry:
    ts: str
    op: str
    release: str | None
    state: str | None
    actor: str
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessSnapshot:
    """What the process manager says about the app right now."""

    status: str  # online, errored, stopped, launching, missing, …
    pids: tuple[int, ...]
    restarts: int

    @property
    def running(self) -> bool:
        return self.status == "online" and bool(self.pids)


@dataclass(frozen=True)
class Probe:
    """One readiness probe: ok, fail (a bad answer) or error (no answer)."""

    at: float  # seconds since the gate started
    outcome: str  # "ok" | "fail" | "error"
    detail: str

    def line(self) -> str:
        return f"+{self.at:5.1f}s {self.outcome:<5} {self.detail}"


@dataclass(frozen=True)
class HostStatus:
    host: str
    current: str | None
    last_good: str | None
    process: ProcessSnapshot | None
    lock_holder: dict[str, object] | None
    releases: tuple[tuple[str, str], ...]  # (id, state), newest first


@dataclass(frozen=True)
class Outcome:
    """How an operation ended; the reporter shows it and the CLI exits with `exit_code`."""

    op: str
    result: str  # promoted | rolled-back | rollback-failed | aborted | no-op
    exit_code: int
    release: str | None
    live: str | None
    message: str
    evidence: tuple[str, ...] = ()
