"""Migrations and a real database: the sample app on the sandbox's PostgreSQL (started by the
sandbox's own systemd), its migrations run by the deploy, its readiness tied to the database.

Each test gets its own database and role on the one PostgreSQL of the session's sandbox."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from deploy import demo, operations
from deploy.model import Outcome
from deploy.operations import Options
from deploy.report import RecordingReporter
from smoke.commands import run_smoke
from smoke.config import AuditSettings
from tests.conftest import wait_until
from tests.integration.conftest import Target

pytestmark = pytest.mark.integration

CLUSTER = "postgresql@15-main"


def as_root(t: Target, command: str, stdin: str | None = None) -> str:
    """Root on the sandbox (PostgreSQL administration), with the plain ssh client."""
    res = subprocess.run(
        [
            "ssh",
            "-i",
            str(t.vps.identity_file),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={t.vps.known_hosts}",
            f"root@{t.vps.address}",
            command,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, f"{command}: {res.stderr}"
    return res.stdout


def psql(t: Target, sql: str, db: str = "postgres") -> str:
    # the SQL travels on stdin: no password on a command line, even in a test
    return as_root(
        t, f"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -d {db}", stdin=sql
    ).strip()


def database_running(t: Target, running: bool) -> None:
    as_root(t, f"systemctl {'start' if running else 'stop'} {CLUSTER}")
    state = "active" if running else "inactive"
    wait_until(
        lambda: as_root(t, f"systemctl is-active {CLUSTER} || true").strip() == state,
        timeout=30,
        what=f"PostgreSQL {state}",
    )


@dataclass
class Db:
    t: Target
    name: str
    password: str

    def schema(self) -> str:
        return psql(self.t, "SELECT coalesce(max(version), 0) FROM schema_migrations;", self.name)

    def tables(self) -> set[str]:
        out = psql(
            self.t, "SELECT tablename FROM pg_tables WHERE schemaname = 'public';", self.name
        )
        return set(out.split())


@pytest.fixture
def db(target: Target) -> Iterator[Db]:
    """A database and role of its own, DATABASE_URL in the app's secrets, migrations on."""
    name = target.app.replace("-", "_")
    password = secrets.token_hex(16)
    psql(target, f"CREATE ROLE {name} LOGIN PASSWORD '{password}';")
    psql(target, f"CREATE DATABASE {name} OWNER {name};")
    secrets_file = target.inv_dir / "test.secrets"
    target.inv_dir.mkdir(parents=True, exist_ok=True)
    secrets_file.write_text(f"DATABASE_URL=postgres://{name}:{password}@127.0.0.1:5432/{name}\n")
    target.data["secrets"] = {"from_file": "test.secrets"}
    target.data["migrations"] = {
        "command": "node db/migrate.js up",
        "schema_version_command": "node db/migrate.js version",
        "down_command": "node db/migrate.js down",
        "timeout": 60,
    }
    target.write()
    try:
        yield Db(target, name, password)
    finally:
        database_running(target, True)
        target.ssh(f"pm2 delete {target.app} >/dev/null 2>&1", check=False)
        psql(target, f"DROP DATABASE IF EXISTS {name} WITH (FORCE); DROP ROLE IF EXISTS {name};")


def deploy(t: Target) -> tuple[int, RecordingReporter]:
    rep = RecordingReporter()
    return operations.run_deploy("test", Options(inventories=t.inv_dir), reporter=rep), rep


def rollback(
    t: Target, to: str | None = None, *, across_schema: bool = False
) -> tuple[int, RecordingReporter]:
    rep = RecordingReporter()
    opts = Options(inventories=t.inv_dir, across_schema=across_schema)
    return operations.run_rollback("test", opts, to=to, reporter=rep), rep


def resolve(t: Target) -> tuple[int, RecordingReporter]:
    rep = RecordingReporter()
    code = operations.run_resolve("test", Options(inventories=t.inv_dir), reporter=rep)
    return code, rep


def commit(t: Target, files: dict[str, str | None], message: str) -> None:
    for rel, text in files.items():
        path = t.repo / rel
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    subprocess.run(["git", "-C", str(t.repo), "add", "-A"], check=True, env=demo_env())
    subprocess.run(
        ["git", "-C", str(t.repo), "commit", "-q", "-m", message], check=True, env=demo_env()
    )


def demo_env() -> dict[str, str]:
    return {**os.environ, **demo.GIT_ENV}


def outcome(rep: RecordingReporter) -> Outcome:
    assert rep.outcomes, rep.lines
    return rep.outcomes[-1]


def ready(t: Target) -> httpx.Response:
    return httpx.get(f"http://{t.vps.address}:{t.port}/health/ready", timeout=5)


ADD_PRICE = {
    "db/migrations/002_note_price.sql": "ALTER TABLE notes ADD COLUMN price_cents integer;\n",
    "db/migrations/002_note_price.down.sql": "ALTER TABLE notes DROP COLUMN price_cents;\n",
}


def test_deploy_runs_the_migration_and_a_failed_one_changes_nothing_live(db: Db) -> None:
    t = db.t
    code, rep = deploy(t)
    assert code == 0, rep.lines
    first = outcome(rep).release
    assert db.schema() == "1" and "notes" in db.tables()
    answer = ready(t)
    assert answer.status_code == 200 and answer.json()["schema"] == 1
    record = [e for e in t.journal() if e["op"] == "migrate"][-1]
    assert record["release"] == first
    assert record["detail"] == {
        "result": "migrated",
        "from": "0",
        "to": "1",
        "backward_compatible": False,
    }
    manifest = json.loads(t.ssh(f"cat {t.root}/releases/{first}/.release.json").stdout)
    assert manifest["migration"]["backward_compatible"] is False
    assert (manifest["migration"]["schema_before"], manifest["migration"]["schema"]) == ("0", "1")

    # a migration that fails inside its transaction: nothing live changed
    commit(
        t,
        {"db/migrations/002_broken.sql": "ALTER TABLE no_such_table ADD COLUMN x integer;\n"},
        "a broken migration",
    )
    code, rep = deploy(t)
    out = outcome(rep)
    assert code == 5 and out.result == "migration-failed", rep.lines
    assert t.current() == first and db.schema() == "1"
    assert ready(t).status_code == 200
    assert any('relation "no_such_table" does not exist' in e for e in out.evidence)
    assert t.state_of(out.release or "") == "bad"
    shown = "\n".join([*rep.lines, *out.evidence, json.dumps(t.journal())])
    assert db.password not in shown


def test_rollback_across_a_schema_change_needs_its_declaration(db: Db) -> None:
    t = db.t
    code, rep = deploy(t)
    assert code == 0, rep.lines
    first = outcome(rep).release
    # schema 1 → 2 without a declaration, and a release that fails its gate
    commit(t, {**ADD_PRICE, "FAULT": "ready_503\n"}, "price column, failing release")
    code, rep = deploy(t)
    out = outcome(rep)
    assert code == 6 and out.result == "rollback-refused", rep.lines
    second = out.release
    assert t.current() == second and db.schema() == "2"  # no code put on a schema it can't read
    runs = " ".join(e for e in out.evidence if e.startswith("run: "))
    assert f"releasegate rollback test --to {first} --across-schema" in runs
    assert f"cd {t.root}/releases/{second} && node db/migrate.js down" in runs
    assert [e for e in t.journal() if e["op"] == "needs-human"]

    # the operator runs the down migration, then takes the rollback across the change
    t.ssh(
        f"cd {t.root}/releases/{second} && set -a && . ./.releasegate.env && set +a && "
        "node db/migrate.js down"
    )
    code, rep = rollback(t, first)
    assert code == 6 and outcome(rep).result == "rollback-refused", rep.lines
    code, rep = rollback(t, first, across_schema=True)
    assert code == 0, rep.lines
    assert t.current() == first and db.schema() == "1" and ready(t).status_code == 200

    # declared backward compatible: a failed release goes back automatically, the database
    # stays at the new schema and the journal says so
    commit(
        t,
        {"releasegate-migration.json": '{"backward_compatible": true}\n'},
        "price column again, declared backward compatible, still failing",
    )
    code, rep = deploy(t)
    out = outcome(rep)
    assert code == 3 and out.result == "rolled-back", rep.lines
    assert t.current() == first and db.schema() == "2"
    assert ready(t).status_code == 200  # the old release works on the newer schema
    back = [
        e
        for e in t.journal()
        if e["op"] == "rollback" and e["release"] == first and e["state"] == "active-unverified"
    ][-1]
    assert back["detail"]["schema"]["database"] == "2"


def test_database_down_the_gate_fails_then_a_human_then_recovery(db: Db) -> None:
    t = db.t
    code, rep = deploy(t)
    assert code == 0, rep.lines
    first = outcome(rep).release

    # with the database down a migration cannot even read the schema: nothing live changes
    database_running(t, False)
    code, rep = deploy(t)
    assert code == 5 and outcome(rep).result == "migration-failed", rep.lines
    assert t.current() == first

    # without a migration to run, the release is activated: its gate fails on readiness, the
    # rollback's gate fails the same way, and releasegate stops for a human
    t.data.pop("migrations")
    t.write()
    commit(t, {"version.txt": "2\n"}, "a release with no migration")
    answer = ready(t)
    assert answer.status_code == 503 and answer.json()["reason"] == "database unavailable"
    code, rep = deploy(t)
    out = outcome(rep)
    assert code == 6 and out.result == "rollback-failed", rep.lines
    assert out.live == first and t.current() == first
    assert "same way" in out.message
    assert [e for e in t.journal() if e["op"] == "needs-human"]
    code, rep = deploy(t)
    assert code == 6 and outcome(rep).result == "needs-human"  # no walking back

    # the database is back: resolve, and the next deploy verifies the live release first
    database_running(t, True)
    wait_until(lambda: ready(t).status_code == 200, timeout=20, what="ready again")
    code, rep = resolve(t)
    assert code == 0, rep.lines
    commit(t, {"version.txt": "3\n"}, "after the outage")
    code, rep = deploy(t)
    assert code == 0, rep.lines
    assert t.current() == outcome(rep).release != first
    assert t.state_of(first) == "good"


def test_the_readiness_audit_fails_while_the_database_is_down(db: Db) -> None:
    t = db.t
    code, rep = deploy(t)
    assert code == 0, rep.lines
    settings = AuditSettings(
        enabled=True,
        mode="warn",
        ready_token_env="READY_TOKEN",
        checks={"ready-with-token": "enforce"},
    )

    def audit() -> tuple[int, str]:
        out = io.StringIO()
        code = run_smoke(
            base_url=f"http://{t.vps.address}:{t.port}",
            audit=settings,
            out=out,
            err=io.StringIO(),
            json_out=True,
            environ={"READY_TOKEN": "any-token-1234"},
        )
        return code, out.getvalue()

    code, text = audit()
    assert code == 0, text
    records = map(json.loads, text.splitlines())
    checks = {r["check"]: r for r in records if r.get("event") == "check"}
    assert checks["ready-with-token"]["passed"] is True
    database_running(t, False)
    code, text = audit()
    assert code != 0
    records = map(json.loads, text.splitlines())
    checks = {r["check"]: r for r in records if r.get("event") == "check"}
    ready_check = checks["ready-with-token"]
    assert ready_check["passed"] is False and ready_check["status"] == 503, ready_check
    assert "database" in ready_check["detail"], ready_check
