"""Database migrations in the deploy, and the expand/contract rule for rollbacks across them.

    ship → migrate (in the new release, with its env snapshot) → start / switch → gate …

A release's migration runs on the host in `releases/<id>/` with that release's env snapshot,
under the lock, after the ship and before the release takes traffic (in place: before the
switch; blue/green: before the idle slot starts, so the new code boots and is gated on the
schema it needs). The schema version is read before and after it (`schema_version_command`);
the journal (`op: migrate`) and the release's manifest keep both.

Whether a release's schema change is backward compatible — whether the release before it still
works on the new schema — is the release's own declaration: a JSON file in the app's
repository (`migrations.declaration`, `{"backward_compatible": true}`), read at the revision
being deployed and recorded in the manifest. A rollback to a release shipped before such a
change is allowed automatically only when every change since was declared compatible (the
database stays at the new version); otherwise it is refused (exit 6) with the choices: run the
down migration and `rollback --to … --across-schema`, or roll forward.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from deploy import artifact as artifacts
from deploy import commands
from deploy.commands import Cmd
from deploy.errors import ConfigError
from deploy.host import HostOps
from deploy.inventory import Inventory, MigrationsConfig
from deploy.model import JournalEntry, Manifest, Outcome, ReleaseState
from deploy.redact import MASK, Redactor

MIGRATE = "migrate"  # journal op of a migration run (detail: result, from, to, …)
SCHEMA = "schema"  # journal op: a rollback crossed a schema change (detail: how it was allowed)
OUTPUT_LINES = 40  # of the migration's output, in the outcome and the journal
# a schema version as releasegate records and compares it
VERSION = re.compile(r"^[A-Za-z0-9._:+-]{1,64}\Z")
# credentials in URLs (postgres://user:password@host) are masked even when not a known secret
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+):[^\s@/]+@")


@dataclass(frozen=True)
class Declaration:
    """What the release says about its schema change (its repository's declaration file)."""

    backward_compatible: bool
    source: str  # where it was read, or why there is none

    def as_manifest(self) -> dict[str, object]:
        return {"backward_compatible": self.backward_compatible, "declared_in": self.source}


def read_declaration(inv: Inventory, source: artifacts.Source, sha: str) -> Declaration:
    """The declaration as committed at `sha` (a missing file declares nothing: not compatible,
    the safe default). A file that is there but wrong is a config error (exit 2)."""
    cfg = inv.migrations
    rel = "/".join(p for p in (source.path, cfg.declaration) if p)
    where = f"{sha[:12]}:{rel}"
    res = subprocess.run(
        ["git", "-C", str(source.repo), "show", f"{sha}:{rel}"],
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        return Declaration(False, f"none ({rel} is not in {sha[:12]})")
    fix = (
        'it must be a JSON object {"backward_compatible": true|false} — true when the release '
        "before this one still works on the schema after this release's migration"
    )
    try:
        raw = json.loads(res.stdout.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(
            f"{where} (migrations.declaration): not valid JSON ({why}); {fix}"
        ) from None
    if (
        not isinstance(raw, dict)
        or set(raw) != {"backward_compatible"}
        or not isinstance(raw["backward_compatible"], bool)
    ):
        raise ConfigError(f"{where} (migrations.declaration): {fix}")
    return Declaration(raw["backward_compatible"], where)


@dataclass(frozen=True)
class Migration:
    """One run of the migration for `release`, as the host reported it."""

    release: str
    before: str | None  # schema version before (None: could not be read; nothing was run)
    after: str | None  # after (None: could not be read)
    exit_code: int | None  # the migration's exit (None: not run)
    output: tuple[str, ...]  # its last lines, redacted
    backward_compatible: bool
    problem: str = ""  # what went wrong, if anything

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def journal(self) -> dict[str, object]:
        detail: dict[str, object] = {
            "result": "migrated" if self.ok else "failed",
            "from": self.before,
            "to": self.after,
            "backward_compatible": self.backward_compatible,
        }
        if not self.ok:
            detail["exit"] = self.exit_code
            detail["reason"] = self.problem
            detail["output"] = list(self.output[-20:])
        return detail

    def evidence(self) -> tuple[str, ...]:
        compat = "yes" if self.backward_compatible else "no"
        line = (
            f"migration: schema {self.before} → {self.after} (backward compatible: {compat})"
            if self.changed
            else f"migration: schema {self.before}, unchanged"
        )
        return (line,)


def redact_output(text: str, redact: Redactor) -> str:
    return URL_CREDENTIALS.sub(rf"\g<scheme>:{MASK}@", redact(text))


def run(host: HostOps, rid: str, cfg: MigrationsConfig, declaration: Declaration) -> Migration:
    """Run the migration of `rid` on the host (one round trip) and read what happened."""
    assert cfg.command is not None and cfg.schema_version_command is not None
    res = host.remote.run(
        commands.migrate(
            host.layout.release(rid),
            command=cfg.command,
            version_command=cfg.schema_version_command,
            seconds=cfg.timeout,
        ),
        check=False,
    )
    return parse(res.stdout, res.exit_code, rid, cfg, declaration, host.redact)


def parse(
    stdout: str,
    exit_code: int,
    rid: str,
    cfg: MigrationsConfig,
    declaration: Declaration,
    redact: Redactor,
) -> Migration:
    marks: dict[str, str] = {}
    output: list[str] = []
    for line in stdout.splitlines():
        if line.startswith(commands.MIGRATE_EXIT):
            marks["exit"] = line[len(commands.MIGRATE_EXIT) :].strip()
        elif line.startswith(commands.SCHEMA_MARK) and "=" in line:
            name, _, value = line[len(commands.SCHEMA_MARK) :].partition("=")
            marks[name] = value
        else:
            output.append(redact_output(line, redact))
    tail = tuple(output[-OUTPUT_LINES:])
    compat = declaration.backward_compatible

    def version(name: str) -> tuple[str | None, str]:
        code, _, value = marks.get(name, "").partition(" ")
        value = value.strip()
        if code != "0":
            how = "did not finish" if code in ("124", "137") else f"exited {code or '?'}"
            return None, f"`{cfg.schema_version_command}` {how} ({name} the migration)"
        if not VERSION.match(value):
            return None, (
                f"`{cfg.schema_version_command}` printed {value[:40]!r} ({name} the migration): "
                f"a schema version is 1-64 letters, digits or . _ : + -"
            )
        return value, ""

    if exit_code != 0:
        what = {90: "the release directory is missing", 91: "its env snapshot is unreadable"}
        problem = f"the migration could not start: {what.get(exit_code, f'exit {exit_code}')}"
        return Migration(rid, None, None, None, tail, compat, problem)
    before, problem = version("before")
    if before is None:
        return Migration(rid, None, None, None, tail, compat, problem + "; nothing was migrated")
    after, after_problem = version("after")
    code = marks.get("exit", "")
    if code != "0":
        how = (
            f"did not finish within {cfg.timeout:g}s (migrations.timeout); the host stopped it"
            if code in ("124", "137")
            else f"exited {code or '?'}"
        )
        return Migration(
            rid,
            before,
            after,
            int(code) if code.isdigit() else None,
            tail,
            compat,
            f"`{cfg.command}` {how}",
        )
    return Migration(rid, before, after, 0, tail, compat, after_problem)


def failed_outcome(m: Migration, *, live: str | None, label: str, env: str) -> Outcome:
    """A failed migration: the release was never activated. Exit 5 when the schema version
    is what it was before (nothing live changed); exit 6 when it moved or cannot be read."""
    unchanged = m.before is not None and m.after == m.before
    untouched = m.before is None or unchanged  # None: the migration never ran
    where = f"{live} still serves" if live else "no release serves yet"
    if untouched:
        message = (
            f"the migration of {m.release} failed ({m.problem}); {m.release} was not activated "
            f"and nothing live changed: the database is still at schema "
            f"{m.before or 'as it was'} and {where}. Fix the migration and deploy again."
        )
    else:
        message = (
            f"the migration of {m.release} failed ({m.problem}) after it changed the database: "
            f"schema {m.before} before, {m.after or 'unreadable'} now. {m.release} was not "
            f"activated and {where}, but {live or 'the app'} may not work on that schema: a "
            f"human is needed — finish or undo the migration by hand, check `releasegate "
            f"status {env}`, then deploy again."
        )
    return Outcome(
        op="deploy",
        result="migration-failed",
        exit_code=5 if untouched else 6,
        release=m.release,
        live=live,
        message=message,
        evidence=tuple(f"migration output: {line}" for line in m.output),
    )


# ---------------------------------------------------------------------------- rollbacks


@dataclass(frozen=True)
class SchemaChange:
    release: str
    before: str | None
    after: str | None
    backward_compatible: bool

    def words(self) -> str:
        compat = (
            "declared backward compatible"
            if self.backward_compatible
            else "not declared backward compatible"
        )
        return f"{self.release} moved it {self.before} → {self.after} ({compat})"


@dataclass(frozen=True)
class Crossing:
    """Going back to `target` would cross these schema changes, made after it shipped."""

    target: str
    changes: tuple[SchemaChange, ...] = field(default=())

    @property
    def compatible(self) -> bool:
        return all(c.backward_compatible for c in self.changes)

    @property
    def database(self) -> str | None:
        return self.changes[-1].after

    @property
    def target_schema(self) -> str | None:
        return self.changes[0].before

    def note(self) -> str:
        return f"the database stays at schema {self.database}: " + "; ".join(
            c.words() for c in self.changes
        )

    def journal(self, allowed_by: str) -> dict[str, object]:
        return {
            "database": self.database,
            "target_schema": self.target_schema,
            "changes": [c.release for c in self.changes],
            "backward_compatible": self.compatible,
            "allowed_by": allowed_by,
        }


def database_schema(journal: Sequence[JournalEntry]) -> str | None:
    """The database's schema version as the journal last recorded it: the last migration that
    ran, or the target of a rollback an operator took across a change (after the down
    migration, the database matches it). None when no migration was ever journaled."""
    for item in reversed(journal):
        d = item.detail
        if item.op == MIGRATE and d.get("result") == "migrated":
            return _str(d.get("to"))
        if item.op == SCHEMA and d.get("allowed_by") == ACROSS:
            return _str(d.get("target_schema"))
    return None


def stays_note(c: Crossing | None) -> str:
    """For a release rejected in its slot after its migration ran: the live release now works
    on the new schema; say so when it was not declared to."""
    if c is None or c.compatible:
        return ""
    return (
        f". The database stays at schema {c.database} ({'; '.join(w.words() for w in c.changes)})"
        f": {c.target} answers on it now, but was not declared to work on it — check it, then "
        f"run the down migration or roll forward"
    )


ACROSS = "--across-schema"  # the operator's flag: the database matches the target now


def crossing(
    journal: Sequence[JournalEntry], target: str, pending: Migration | None = None
) -> Crossing | None:
    """The schema changes a rollback to `target` would cross: every migration journaled after
    `target` was shipped that changed the version (plus `pending`, this run's), since the last
    time an operator took a rollback across with --across-schema (then the database matched)."""
    shipped = next((i for i, e in enumerate(journal) if e.release == target), -1)
    changes: list[SchemaChange] = []
    for item in journal[shipped + 1 :]:
        d = item.detail
        if item.op == SCHEMA and d.get("allowed_by") == ACROSS:
            changes = []
        elif (
            item.op == MIGRATE
            and item.release != target
            and d.get("result") == "migrated"
            and d.get("from") != d.get("to")
        ):
            changes.append(
                SchemaChange(
                    item.release or "?",
                    _str(d.get("from")),
                    _str(d.get("to")),
                    d.get("backward_compatible") is True,
                )
            )
    if pending is not None and pending.ok and pending.changed and pending.release != target:
        changes.append(
            SchemaChange(
                pending.release, pending.before, pending.after, pending.backward_compatible
            )
        )
    return Crossing(target, tuple(changes)) if changes else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def choices(inv: Inventory, c: Crossing, *, root: str, live: str | None) -> tuple[str, ...]:
    """The exact ways out of a refused rollback across a schema change."""
    env = inv.env
    last = c.changes[-1].release
    down = inv.migrations.down_command
    undo = (
        f"cd {root}/releases/{last} && {down}"
        if down
        else f"your down migration to schema {c.target_schema} (from {root}/releases/{last})"
    )
    out = [
        f"{undo}  # run the down migration (with that release's env), then:",
        f"releasegate rollback {env} --to {c.target} {ACROSS}  # after the down migration",
        f"releasegate deploy {env}  # or roll forward with a fix that works on schema {c.database}",
    ]
    if live is not None:
        out.insert(2, f"releasegate resolve {env}  # clears the mark before rolling forward")
    return tuple(out)


def refusal(c: Crossing, *, what: str) -> str:
    return (
        f"{what} to {c.target} would cross a schema change that is not backward compatible "
        f"({'; '.join(w.words() for w in c.changes)}): {c.target} needs schema "
        f"{c.target_schema} and the database is at {c.database}. releasegate does not put code "
        f"on a database it may not read."
    )


def refused_rollback(inv: Inventory, c: Crossing, *, root: str, live: str | None) -> Outcome:
    """A plain or `--to` rollback across an incompatible schema change, without the flag:
    refused before anything changed (exit 6)."""
    cmds = [x for x in choices(inv, c, root=root, live=None)]
    return Outcome(
        op="rollback",
        result="rollback-refused",
        exit_code=6,
        release=c.target,
        live=live,
        message=(
            refusal(c, what="a rollback")
            + f" Nothing was changed. After you ran the down migration, `{ACROSS}` says the "
            f"database matches {c.target} again."
        ),
        evidence=tuple(f"run: {x}" for x in cmds),
    )


def interrupted(rid: str, cfg: MigrationsConfig, reason: str) -> str:
    """What a signal or a lost link in the middle of the migration leaves."""
    return (
        f"the migration of {rid} was interrupted ({reason}); {rid} was not activated. The host "
        f"stops the migration at its deadline ({cfg.timeout:g}s, migrations.timeout) if it still "
        f"runs, and the database may be between two versions: check it "
        f"(`{cfg.schema_version_command}`) before deploying again"
    )


def record_steps(host: HostOps, now: datetime, done: Migration) -> list[Cmd]:
    """The migration's journal line (a failed one marks the release bad) and, when it
    succeeded, the release's manifest rewritten with its schema — one round trip."""
    state = None if done.ok else ReleaseState.BAD
    steps = [host.journal_cmd(now, MIGRATE, done.release, state, **done.journal())]
    shipped = host.shipped.get(done.release)
    if done.ok and shipped is not None:
        # rewritten whole by a rename: the release stays complete at every instant
        steps.append(
            commands.write_manifest(host.layout.release(done.release), with_schema(shipped, done))
        )
    return steps


def refused_automatic(
    op: str,
    failed: str,
    reason: str,
    refusal: str,
    evidence: tuple[str, ...],
    commands_to_run: tuple[str, ...],
) -> Outcome:
    """After a failed deploy, the automatic rollback across an incompatible schema change was
    refused: the failed release stays live and the host is marked needs-human."""
    return Outcome(
        op=op,
        result="rollback-refused",
        exit_code=6,
        release=failed,
        live=failed,
        message=(
            f"{failed} failed ({reason}), and {refusal} {failed} stays live, unverified and not "
            f"marked bad. The host is marked needs-human: run the down migration and roll back "
            f"with {ACROSS}, or roll forward (the commands below)."
        ),
        evidence=evidence + tuple(f"run: {c}" for c in commands_to_run),
    )


def with_schema(manifest: Manifest, m: Migration) -> Manifest:
    """The release's manifest with the schema its migration left: the version it needs."""
    return replace(
        manifest,
        migration={**(manifest.migration or {}), "schema": m.after, "schema_before": m.before},
    )
