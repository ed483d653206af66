"""Plain values the rest of releasegate passes around. No I/O here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from deploy.errors import ConfigError

if TYPE_CHECKING:
    from deploy.slots import SlotView

RELEASE_ID = re.compile(r"^[0-9]{14}-[0-9a-f]{7,40}\Z")
TOKEN = re.compile(r"^[0-9a-f]{32}\Z")

# What a release carries besides the app's files (docs/design.md, "What a release carries").
RELEASE_ENV = ".releasegate.env"  # its environment snapshot (0600), read by PM2 and systemd
RELEASE_META = ".releasegate"  # releasegate's own files inside a release
SMOKE_BUNDLE = f"{RELEASE_META}/smoke.json"  # the smoke packs it was gated with (raw files)
DEPS_KEY = f"{RELEASE_META}/deps.key"  # the key of its dependency tree


class ReleaseState(StrEnum):
    PARTIAL = "partial"
    READY = "ready"
    ACTIVE_UNVERIFIED = "active-unverified"
    GOOD = "good"
    BAD = "bad"
    # Left by a manual rollback: healthy when last seen, but someone chose to leave it, so a
    # plain `rollback` never goes back to it (`rollback --to` still may).
    ROLLED_BACK = "rolled-back"


def is_release_id(value: str) -> bool:
    return bool(RELEASE_ID.match(value))


def check_release_id(to: str | None, env: str, option: str = "--to") -> None:
    if to is not None and not is_release_id(to):
        raise ConfigError(
            f"{option} {to!r} is not a release id: ids look like 20261122143055-1a2b3c4 "
            f"(see `releasegate releases {env}`)"
        )


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

    def release_env(self, release_id: str) -> PurePosixPath:
        """The release's own environment snapshot, made at ship time (mode 0600)."""
        return self.release(release_id) / RELEASE_ENV

    @property
    def slots(self) -> PurePosixPath:
        """Blue/green slots (deploy/slots.py): one link and one env file per slot."""
        return self.state / "slots"

    def slot_link(self, slot: str) -> PurePosixPath:
        """`slots/<slot>` -> ../../releases/<id>: the release the slot runs."""
        return self.slots / _slot(slot)

    def slot_env(self, slot: str) -> PurePosixPath:
        """`slots/<slot>.env`: PORT and RELEASEGATE_SLOT, read after the release's snapshot."""
        return self.slots / f"{_slot(slot)}.env"

    def slot_pm2_config(self, slot: str) -> PurePosixPath:
        """PM2 only: the slot's app, rendered each time a release starts in the slot."""
        return self.slots / f"{_slot(slot)}.pm2.config.js"

    def pm2_env_keys(self) -> PurePosixPath:
        """The names of the variables PM2 was last given for the app (never values): PM2's
        reload only adds variables, so a removed one is detected against this list."""
        return self.state / "pm2-env-keys"


def _slot(slot: str) -> str:
    if slot not in ("blue", "green"):
        raise ValueError(f"not a slot: {slot!r}")
    return slot


@dataclass(frozen=True)
class Artifact:
    """A tarball of one revision, ready to ship."""

    path: str
    sha256: str
    size: int
    revision: str
    release_id: str
    members: int
    tags: tuple[str, ...] = ()  # git tags pointing at the revision (for the version identity)


@dataclass(frozen=True)
class Manifest:
    id: str
    revision: str
    sha256: str
    created_at: str
    actor: str
    tags: tuple[str, ...] = ()
    # sha256 of the smoke bundle the release carries (SMOKE_BUNDLE) and the packs in it
    smoke_sha256: str | None = None
    smoke_packs: tuple[str, ...] = ()
    # the release's migration declaration (deploy/migrations.py), when migrations are on
    migration: Mapping[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id,
            "revision": self.revision,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "actor": self.actor,
        }
        if self.tags:
            out["tags"] = list(self.tags)
        if self.smoke_sha256 is not None:
            out["smoke_sha256"] = self.smoke_sha256
            out["smoke_packs"] = list(self.smoke_packs)
        if self.migration is not None:
            out["migration"] = dict(self.migration)
        return out


@dataclass(frozen=True)
class JournalEntry:
    ts: str
    op: str
    release: str | None
    state: str | None
    actor: str
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """One process of the app as its manager reports it (a PM2 instance, the systemd unit)."""

    id: int  # PM2's pm_id; 0 for the systemd unit
    status: str  # online, errored, stopped, stopping, launching, waiting restart, …
    pid: int  # 0 when there is no process
    restarts: int  # as the manager counts them since it started the app

    @property
    def up(self) -> bool:
        """Serving: `stopping`, `launching`, `waiting restart` or pid 0 are not."""
        return self.status == "online" and self.pid > 0

    def line(self) -> str:
        return f"#{self.id} {self.status} pid {self.pid or '-'} restarts {self.restarts}"


@dataclass(frozen=True)
class ProcessSnapshot:
    """What the process manager says about the app right now: the aggregate (status, pids,
    restarts) and each instance. A snapshot built from the aggregate alone gets one instance
    per pid (or none), so older callers keep working."""

    status: str  # online, errored, stopped, launching, missing, …
    pids: tuple[int, ...]
    restarts: int
    instances: tuple[Instance, ...] = ()

    def __post_init__(self) -> None:
        if not self.instances and self.pids:
            derived = tuple(
                Instance(id=i, status=self.status, pid=pid, restarts=self.restarts if i == 0 else 0)
                for i, pid in enumerate(self.pids)
            )
            object.__setattr__(self, "instances", derived)

    @classmethod
    def of(cls, instances: tuple[Instance, ...], status: str) -> ProcessSnapshot:
        return cls(
            status=status,
            pids=tuple(i.pid for i in instances if i.pid > 0),
            restarts=sum(i.restarts for i in instances),
            instances=instances,
        )

    @property
    def running(self) -> bool:
        return self.status == "online" and bool(self.pids)

    def all_up(self, expected: int) -> bool:
        """At least `expected` instances, and every one of them online with a pid."""
        return len(self.instances) >= expected and all(i.up for i in self.instances)

    def fingerprint(self) -> tuple[tuple[int, int, int], ...]:
        """What must not change during the stability window: each instance's pid and restarts."""
        return tuple(sorted((i.id, i.pid, i.restarts) for i in self.instances))

    def restarts_since(self, baseline: ProcessSnapshot) -> int:
        """Restarts counted as deltas per instance from `baseline` (the start of the gate)."""
        before = {i.id: i.restarts for i in baseline.instances}
        return sum(max(0, i.restarts - before.get(i.id, 0)) for i in self.instances)

    def describe(self) -> str:
        return ", ".join(i.line() for i in self.instances) or f"no process ({self.status})"


@dataclass(frozen=True)
class IdentityFacts:
    """What the host says about a release's processes (one read, commands.process_identity)."""

    release_dir: str | None  # the release directory as the host resolves it; None if missing
    cwds: dict[int, str]  # pid -> /proc/<pid>/cwd ("-" when unreadable)
    manifest: dict[str, object]  # the release's .release.json ({} when unreadable)
    # `current`'s link text ("-": no link), read with the cwds; None: not read
    current: str | None = None

    @property
    def revision(self) -> str | None:
        value = self.manifest.get("revision")
        return value if isinstance(value, str) and value else None

    @property
    def tags(self) -> tuple[str, ...]:
        value = self.manifest.get("tags")
        return tuple(t for t in value if isinstance(t, str)) if isinstance(value, list) else ()


@dataclass(frozen=True)
class Probe:
    """One readiness probe: ok, fail (a bad answer) or error (no answer)."""

    at: float  # seconds since the gate started
    outcome: str  # "ok" | "fail" | "error" | "info" (a process-state note, not a probe)
    detail: str

    def line(self) -> str:
        return f"+{self.at:5.1f}s {self.outcome:<5} {self.detail}"


@dataclass(frozen=True)
class NeedsHuman:
    """The host's sticky needs-human mark (docs/design.md): set when a rollback failed; while
    it stands no automatic step is taken, until `resolve` or a successful `rollback --to`."""

    since: str  # journal timestamp of the mark
    actor: str
    reason: str
    live: str | None  # the release `current` pointed to when the mark was set
    failed: str | None  # the release whose failure started it
    commands: tuple[str, ...]  # what to run, exactly, as written into the journal


@dataclass(frozen=True)
class HostStatus:
    host: str
    current: str | None
    last_good: str | None
    process: ProcessSnapshot | None
    lock_holder: dict[str, object] | None
    releases: tuple[tuple[str, str], ...]  # (id, state), newest first
    needs_human: NeedsHuman | None = None
    slots: tuple[SlotView, ...] = ()  # blue/green: each slot, its release and role
    # the database's schema version as the journal last recorded it (deploy/migrations.py)
    schema: str | None = None


@dataclass(frozen=True)
class SlotRole:
    """Blue/green: what a slot runs after an operation, and what for."""

    slot: str  # blue | green
    port: int
    role: str  # live | backup | warm | paused | stray
    release: str | None

    def line(self) -> str:
        return f"{self.slot} {self.role} {self.release or '(empty)'}"


@dataclass(frozen=True)
class HostLive:
    """Many hosts: what one host runs after an operation (deploy.fleet)."""

    host: str
    before: str | None  # the release it ran when the operation started
    live: str | None  # what it runs now (None: nothing, or unknown when `result` says so)
    result: str  # promoted | rolled-back | untouched | failed | unknown | …
    verified: bool  # `live` passed its gate in this operation (or was already good, untouched)

    def line(self) -> str:
        shown = self.live or "(none)"
        proof = "verified" if self.verified else "NOT verified"
        return f"{self.host}: {shown} ({self.result}, {proof}; was {self.before or '(none)'})"


@dataclass(frozen=True)
class Outcome:
    """How an operation ended; the reporter shows it and the CLI exits with `exit_code`."""

    op: str
    result: str  # promoted | rolled-back | rejected | rollback-failed | needs-human | …
    exit_code: int
    release: str | None
    live: str | None
    message: str
    evidence: tuple[str, ...] = ()
    slots: tuple[SlotRole, ...] = ()  # blue/green: the slots that run something, afterwards
    hosts: tuple[HostLive, ...] = ()  # many hosts: what each one runs, afterwards
