"""The host's journal (.releasegate/journal.jsonl) read as data, and the decisions made from it.

The journal, not the directory listing, says which release is good: the last known-good is
the newest `good` entry whose release still exists and was not marked bad afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from deploy.model import JournalEntry, NeedsHuman, ReleaseState, is_release_id

# The sticky needs-human mark: set by a line with op NEEDS_HUMAN, cleared by a later RESOLVE.
NEEDS_HUMAN = "needs-human"
RESOLVE = "resolve"


def parse(text: str) -> list[JournalEntry]:
    entries: list[JournalEntry] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            # A torn last line (a killed writer), or garbage nested past Python's recursion
            # limit, must not hide the rest of the history.
            continue
        if not isinstance(raw, dict):
            continue
        entries.append(
            JournalEntry(
                ts=str(raw.get("ts", "")),
                op=str(raw.get("op", "")),
                release=raw.get("release") if isinstance(raw.get("release"), str) else None,
                state=raw.get("state") if isinstance(raw.get("state"), str) else None,
                actor=str(raw.get("actor", "")),
                detail=dict(raw["detail"]) if isinstance(raw.get("detail"), dict) else {},
            )
        )
    return entries


def entry(
    *,
    now: datetime,
    op: str,
    actor: str,
    release: str | None = None,
    state: ReleaseState | None = None,
    **detail: object,
) -> dict[str, object]:
    return {
        "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "op": op,
        "release": release,
        "state": str(state) if state else None,
        "actor": actor,
        "detail": detail,
    }


@dataclass(frozen=True)
class StoredSmoke:
    """The smoke bundle a release carries, as the state read found it on the host."""

    sha256: str  # of the file as it is now
    recorded: str | None  # the hash its manifest recorded at ship time
    text: str  # the bundle (deploy.release_packs.Bundle as JSON)


@dataclass(frozen=True)
class HostState:
    """What is on the host right now, as one read of current, releases, lock and journal."""

    root_exists: bool
    current: str | None  # release id `current` points to
    release_dirs: frozenset[str]  # complete release ids present
    partial_dirs: frozenset[str]  # "<id>.partial" names present
    other_dirs: frozenset[str]  # names in releases/ we do not recognise
    lock_owner: dict[str, object] | None
    journal: Sequence[JournalEntry] = field(default_factory=tuple)
    lock_raw: str | None = None  # the lock view as the host printed it (lock.assess reads it)
    # release id -> the smoke packs it carries; a release shipped before releases carried
    # their packs has no entry
    smoke: Mapping[str, StoredSmoke] = field(default_factory=dict)
    # blue/green: slot name -> the release its link names (absent: empty), and the upstream
    # file's text (None: no upstream file) — deploy/slots.py, deploy/proxy.py
    slot_links: Mapping[str, str] = field(default_factory=dict)
    upstream_text: str | None = None
    # `current` exists but is not a link ("directory" or "file"): nothing can be switched
    current_kind: str | None = None
    # release ids whose directory has no manifest: never a target, never pruned
    incomplete_dirs: frozenset[str] = frozenset()

    def layout_problem(self, root: str, label: str) -> str | None:
        """Why no release can be switched to on this host as it is, or None."""
        if self.current_kind is None:
            return None
        return (
            f"{root}/current on {label} is a {self.current_kind}, not the link releasegate "
            f"switches; nothing was changed. No switch can replace it, so a deploy or rollback "
            f"would fail half-way. Move it aside on the host (`mv {root}/current "
            f"{root}/current.moved-aside`) and run again: releasegate makes current a link to "
            f"the release it verifies."
        )

    def promoted(self, release_id: str) -> HostState:
        """This state after `release_id` was promoted (partials removed by the same ship)."""
        good = JournalEntry(
            ts="", op="deploy", release=release_id, state=ReleaseState.GOOD, actor=""
        )
        return replace(
            self,
            current=release_id,
            release_dirs=self.release_dirs | {release_id},
            partial_dirs=frozenset(),
            journal=(*self.journal, good),
        )

    def state_of(self, release_id: str) -> str | None:
        for item in reversed(self.journal):
            if item.release == release_id and item.state:
                return item.state
        return None

    def good_releases(self) -> list[str]:
        """Releases whose latest state is good and which still exist, newest good first."""
        return self._latest_in(ReleaseState.GOOD)

    def _latest_in(self, state: ReleaseState) -> list[str]:
        """Releases whose latest journaled state is `state` and which still exist, the most
        recent first."""
        seen: set[str] = set()
        out: list[str] = []
        for item in reversed(self.journal):
            rid = item.release
            if rid is None or rid in seen or item.state is None:
                continue
            seen.add(rid)
            if item.state == state and rid in self.release_dirs:
                out.append(rid)
        return out

    def last_good(self, *, exclude: Iterable[str] = ()) -> str | None:
        skip = set(exclude)
        return next((rid for rid in self.good_releases() if rid not in skip), None)

    def rolled_back_releases(self) -> list[str]:
        """Releases a manual rollback left (latest state rolled-back) that still exist,
        most recently left first."""
        return self._latest_in(ReleaseState.ROLLED_BACK)

    def needs_human(self) -> NeedsHuman | None:
        """The standing needs-human mark, if the newest mark was not resolved since."""
        for item in reversed(self.journal):
            if item.op == RESOLVE:
                return None
            if item.op == NEEDS_HUMAN:
                d = item.detail
                commands = d.get("commands")
                return NeedsHuman(
                    since=item.ts,
                    actor=item.actor,
                    reason=str(d.get("reason", "")),
                    live=_release_or_none(d.get("live")),
                    failed=_release_or_none(d.get("failed")),
                    commands=tuple(str(c) for c in commands) if isinstance(commands, list) else (),
                )
        return None

    def was_good(self, release_id: str) -> bool:
        """Whether the journal ever recorded `release_id` good."""
        return any(
            item.release == release_id and item.state == ReleaseState.GOOD for item in self.journal
        )

    def automatic_fallback(self, release_id: str) -> bool:
        """Whether `release_id` was last activated by an automatic rollback (the one step
        back after a failed deploy): if it fails its gate, nothing may walk further back."""
        for item in reversed(self.journal):
            if item.release == release_id and item.state == ReleaseState.ACTIVE_UNVERIFIED:
                # (older journals carry only the reason "<op> of <id> failed")
                return item.op == "rollback" and (
                    item.detail.get("automatic") is True
                    or str(item.detail.get("reason", "")).endswith(" failed")
                )
        return False


def _release_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and is_release_id(value) else None


def parse_state(stdout: str) -> HostState:
    """Parse the sections printed by commands.STATE_SCRIPT."""
    if stdout.startswith("@@missing-root"):
        return HostState(False, None, frozenset(), frozenset(), frozenset(), None, ())
    sections: dict[str, list[str]] = {}
    name = ""
    for line in stdout.splitlines():
        if line.startswith("@@"):
            name = line[2:].strip()
            sections[name] = []
        elif name:
            sections[name].append(line)
    link = "".join(sections.get("current", [])).strip()
    current = link.rsplit("/", 1)[-1] if link else None
    if current is not None and not is_release_id(current):
        current = None
    incomplete = {ln.strip() for ln in sections.get("incomplete", []) if is_release_id(ln.strip())}
    complete, partial, other = set(), set(), set()
    for item in sections.get("releases", []):
        item = item.strip()
        if not item or item in incomplete:
            continue
        if is_release_id(item):
            complete.add(item)
        elif item.endswith(".partial") and is_release_id(item[: -len(".partial")]):
            partial.add(item)
        else:
            other.add(item)
    # commands.LOCK_VIEW: the holder's owner.json line, then its `lease …` line
    lock_text = "\n".join(sections.get("lock", [])).strip()
    owner_text = next((ln for ln in lock_text.splitlines() if not ln.startswith("lease ")), "")
    owner: dict[str, object] | None = None
    if lock_text:
        try:
            loaded = json.loads(owner_text)
            owner = loaded if isinstance(loaded, dict) else {"raw": owner_text[:200]}
        except (json.JSONDecodeError, RecursionError):  # garbage on the host
            owner = {"raw": owner_text[:200]}
    return HostState(
        root_exists=True,
        current=current,
        release_dirs=frozenset(complete),
        partial_dirs=frozenset(partial),
        other_dirs=frozenset(other),
        lock_owner=owner,
        journal=tuple(parse("\n".join(sections.get("journal", [])))),
        lock_raw=lock_text or None,
        smoke=_parse_smoke(sections.get("smoke", [])),
        slot_links=_parse_slots(sections.get("slots", [])),
        upstream_text=_parse_upstream(sections.get("upstream")),
        current_kind=next(
            (k for k in ("".join(sections.get("current-kind", [])).split()) if k), None
        ),
        incomplete_dirs=frozenset(incomplete),
    )


def _parse_slots(lines: list[str]) -> dict[str, str]:
    """`<slot> <link target>` per slot; a target that is not ../../releases/<id> is ignored."""
    out: dict[str, str] = {}
    for line in lines:
        name, _, target = line.strip().partition(" ")
        rid = target.strip().rsplit("/", 1)[-1]
        if name in ("blue", "green") and target.startswith("../../releases/") and is_release_id(
            rid
        ):
            out[name] = rid
    return out


def _parse_upstream(lines: list[str] | None) -> str | None:
    return None if lines is None else "\n".join(lines).strip() + "\n"


def _parse_smoke(lines: list[str]) -> dict[str, StoredSmoke]:
    """`<id> <sha> <recorded|->` per release, and `=<sha>` + one line of content per distinct
    bundle (commands.STATE_SCRIPT)."""
    owners: dict[str, tuple[str, str | None]] = {}
    texts: dict[str, str] = {}
    pending: str | None = None
    for line in lines:
        if pending is not None:
            texts[pending] = line
            pending = None
        elif line.startswith("="):
            pending = line[1:].strip()
        else:
            parts = line.split()
            if len(parts) == 3 and is_release_id(parts[0]):
                owners[parts[0]] = (parts[1], None if parts[2] == "-" else parts[2])
    return {
        rid: StoredSmoke(sha256=sha, recorded=recorded, text=texts[sha])
        for rid, (sha, recorded) in owners.items()
        if sha in texts
    }


@dataclass(frozen=True)
class ReleaseRow:
    id: str
    revision: str
    state: str
    created: str
    actor: str
    duration_s: float | None
    current: bool
    last_good: bool


def release_rows(state: HostState) -> list[ReleaseRow]:
    """One row per release on the host, newest first, described from the journal."""
    first: dict[str, JournalEntry] = {}
    settled: dict[str, JournalEntry] = {}
    revision: dict[str, str] = {}
    for item in state.journal:
        rid = item.release
        if rid is None:
            continue
        first.setdefault(rid, item)
        if "revision" in item.detail:
            revision[rid] = str(item.detail["revision"])
        if item.state in (ReleaseState.GOOD, ReleaseState.BAD) and rid not in settled:
            settled[rid] = item
    last_good = state.last_good()
    ids = state.release_dirs | {p.removesuffix(".partial") for p in state.partial_dirs}
    rows = []
    for rid in sorted(ids, reverse=True):
        start, end = first.get(rid), settled.get(rid)
        rows.append(
            ReleaseRow(
                id=rid,
                revision=revision.get(rid, "")[:12],
                state=state.state_of(rid)
                or ("partial" if f"{rid}.partial" in state.partial_dirs else "unknown"),
                created=start.ts if start else "",
                actor=start.actor if start else "",
                duration_s=_seconds(start.ts, end.ts) if start and end else None,
                current=rid == state.current,
                last_good=rid == last_good,
            )
        )
    return rows


def _seconds(start: str, end: str) -> float | None:
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((b - a).total_seconds(), 1)


def history(
    state: HostState, *, op: str | None = None, release: str | None = None, limit: int = 50
) -> list[JournalEntry]:
    out = [
        e
        for e in reversed(state.journal)
        if (op is None or e.op == op) and (release is None or e.release == release)
    ]
    return out[:limit]
