"""Migrations in the deploy (deploy/migrations.py): the host script run for real with `sh`,
and every outcome of the flow against the fake host's database."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path, PurePosixPath

import httpx
import pytest

from deploy import commands, flow, migrations, release_env
from deploy.artifact import Source
from deploy.deps import Deps
from deploy.errors import ConfigError, HumanNeeded, Interrupted
from deploy.inventory import parse
from deploy.model import Outcome
from deploy.redact import Redactor
from deploy.report import RecordingReporter, status_lines
from deploy.rollback import rollback
from deploy.status import host_status
from tests.conftest import git
from tests.fakehost import FakeClock, FakeHost, FakeRemote, app_handler

INVENTORY = """
hosts: [{name: web1, address: 10.0.0.5, user: deploy, root: /srv/app}]
app: {name: app, repo: ., install: npm ci}
process: {command: server.js, port: 3000, instances: 2}
health: {deadline: 5, interval: 0.5, successes: 3}
migrations:
  command: npm run -s db:migrate
  schema_version_command: npm run -s db:version
  down_command: npm run -s db:down
"""

CFG = parse(INVENTORY, source=Path("/x/inventories/prod.yml"), env="prod").migrations
SECRET = 's3cr$et"pw`x'


# ---------------------------------------------------------------------------- the host script


def run_script(release: Path, command: str, version: str, seconds: float = 5) -> tuple[str, int]:
    cmd = commands.migrate(
        PurePosixPath(release), command=command, version_command=version, seconds=seconds
    )
    assert SECRET not in cmd.render()
    res = subprocess.run(["sh", "-c", cmd.render()], capture_output=True, text=True, timeout=60)
    return res.stdout, res.returncode


@pytest.fixture
def release(tmp_path: Path) -> Path:
    rel = tmp_path / "releases" / "20261130101010-abcdef1"
    rel.mkdir(parents=True)
    db = tmp_path / "db"
    db.write_text("1\n")
    # written the way release_env writes it, plus the shapes a hand-kept shared/.env may have
    (rel / ".releasegate.env").write_text(
        f"# secrets\nDB_FILE={db}\n"
        f'DATABASE_URL="postgres://app:{release_env.quote(SECRET)[1:-1]}@db/app"\n'
        "PLAIN=hello world   \n"
        "SQ='$(touch pwned)'\n"
        "export EXP=yes\n"
    )
    return rel


def test_the_migration_runs_in_the_release_with_its_env_snapshot(release: Path) -> None:
    out, code = run_script(
        release,
        'pwd; printf "%s|%s|%s|%s\\n" "$DATABASE_URL" "$PLAIN" "$SQ" "$EXP"; echo 2 > "$DB_FILE"',
        'cat "$DB_FILE"',
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "@@schema-before=0 1"
    assert lines[1] == str(release)
    assert lines[2] == f"postgres://app:{SECRET}@db/app|hello world|$(touch pwned)|yes"
    assert lines[-2:] == ["@@migrate-exit=0", "@@schema-after=0 2"]
    assert not (release / "pwned").exists()  # nothing in the env file ran as shell code
    m = migrations.parse(
        out, code, release.name, CFG, migrations.Declaration(False, "x"), Redactor([SECRET])
    )
    assert (m.ok, m.before, m.after, m.changed) == (True, "1", "2", True)
    assert not any(SECRET in line for line in m.output)  # redacted
    assert any("postgres://app:********@db/app" in line for line in m.output)


def test_a_failed_migration_reports_its_exit_and_the_version_after(release: Path) -> None:
    out, code = run_script(release, 'echo "ERROR: relation exists" >&2; exit 3', 'cat "$DB_FILE"')
    m = migrations.parse(
        out, code, release.name, CFG, migrations.Declaration(True, "x"), Redactor()
    )
    assert not m.ok and m.exit_code == 3 and (m.before, m.after) == ("1", "1")
    assert "exited 3" in m.problem
    assert "ERROR: relation exists" in m.output


def test_a_schema_version_that_cannot_be_read_stops_before_the_migration(release: Path) -> None:
    out, code = run_script(release, 'echo 9 > "$DB_FILE"', "echo 'could not connect' >&2; exit 2")
    m = migrations.parse(
        out, code, release.name, CFG, migrations.Declaration(True, "x"), Redactor()
    )
    assert not m.ok and m.before is None and m.exit_code is None
    assert "nothing was migrated" in m.problem
    assert (release.parent.parent / "db").read_text() == "1\n"


def test_a_hung_migration_is_stopped_by_the_host(release: Path) -> None:
    out, code = run_script(release, "sleep 30", 'cat "$DB_FILE"', seconds=0.5)
    m = migrations.parse(
        out, code, release.name, CFG, migrations.Declaration(True, "x"), Redactor()
    )
    assert m.exit_code == 124 and "migrations.timeout" in m.problem


# ---------------------------------------------------------------------------- the flow


@pytest.fixture
def world(tmp_path: Path, app_repo: Path):
    inv = parse(INVENTORY, source=tmp_path / "inventories" / "prod.yml", env="prod")
    clock = FakeClock()
    host = FakeHost()
    remote = FakeRemote(host, clock)
    deps = Deps(
        inventory=inv,
        remote=remote,
        reporter=RecordingReporter(),
        clock=clock,
        actor="tester",
        workdir=tmp_path / "work",
        http=lambda base, timeout: httpx.Client(base_url=base, transport=app_handler(remote)),
    )
    return deps, host, remote, app_repo


def ship(
    d: Deps,
    repo: Path,
    *,
    to: str | None = None,
    exit_code: int = 0,
    compatible: bool | None = None,
    fault: str = "",
    printed: str = "",
) -> Outcome:
    remote = getattr(d.remote, "_real", d.remote)  # under a PlanRemote, the fake behind it
    assert isinstance(remote, FakeRemote)
    remote.next_fault = fault
    remote.next_migration = (to, exit_code, printed)
    declaration = repo / "releasegate-migration.json"
    if compatible is None:
        declaration.unlink(missing_ok=True)
    else:
        declaration.write_text(json.dumps({"backward_compatible": compatible}))
    (repo / "version.txt").write_text(f"{len(remote.log)}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release")
    d.clock.sleep(2)
    return flow.deploy(d, Source(repo=repo, revision="HEAD"))


def journal(host: FakeHost, op: str) -> list[dict]:
    return [e for e in map(json.loads, host.journal) if e["op"] == op]


def test_deploy_runs_the_migration_after_the_ship_and_before_the_switch(world) -> None:
    d, host, remote, repo = world
    first = ship(d, repo)
    out = ship(d, repo, to="2", compatible=True)
    assert out.exit_code == 0 and host.current == out.release
    assert host.schema == "2"
    names = remote.names()
    last_ship = max(i for i, n in enumerate(names) if n == "release.finalize")
    migrate = max(i for i, n in enumerate(names) if n == "release.migrate")
    switch = max(i for i, n in enumerate(names) if n == "current.switch")
    assert last_ship < migrate < switch
    assert host.migrated[-1] == f"/srv/app/releases/{out.release}"
    rec = journal(host, "migrate")[-1]
    assert rec["release"] == out.release
    assert rec["detail"] == {
        "result": "migrated",
        "from": "1",
        "to": "2",
        "backward_compatible": True,
    }
    manifest = host.manifests[out.release]["migration"]
    assert manifest["backward_compatible"] is True
    assert (manifest["schema_before"], manifest["schema"]) == ("1", "2")
    assert manifest["declared_in"].endswith(":releasegate-migration.json")
    assert first.exit_code == 0


def test_a_failed_migration_leaves_everything_live_as_it_was(world) -> None:
    d, host, remote, repo = world
    good = ship(d, repo).release
    switches = remote.names().count("current.switch")
    out = ship(
        d, repo, exit_code=1, printed=f"ERROR: duplicate column; url postgres://u:{SECRET}@h"
    )
    assert out.exit_code == 5 and out.result == "migration-failed"
    assert host.current == good == host.running and host.schema == "1"
    assert remote.names().count("current.switch") == switches  # never activated
    assert host.lock is None
    assert "nothing live changed" in out.message
    assert any("ERROR: duplicate column" in e for e in out.evidence)
    assert not any("s3cr" in e for e in out.evidence)  # URL credentials masked
    states = [(e["release"], e["state"]) for e in map(json.loads, host.journal) if e["state"]]
    assert states[-1] == (out.release, "bad")


def test_a_failed_migration_that_moved_the_schema_needs_a_human(world) -> None:
    d, host, remote, repo = world
    good = ship(d, repo).release
    out = ship(d, repo, to="2", exit_code=1)
    assert out.exit_code == 6 and out.result == "migration-failed"
    assert host.current == good and host.schema == "2"
    assert "schema 1 before, 2 now" in out.message


def test_automatic_rollback_across_an_incompatible_change_is_refused(world) -> None:
    d, host, remote, repo = world
    good = ship(d, repo).release
    out = ship(d, repo, to="2", compatible=False, fault="ready_503")
    assert out.exit_code == 6 and out.result == "rollback-refused"
    assert host.current == out.release == out.live  # no walking back onto schema 2
    assert host.schema == "2"
    runs = [e.removeprefix("run: ") for e in out.evidence if e.startswith("run: ")]
    assert f"releasegate rollback prod --to {good} --across-schema" in " ".join(runs)
    assert any(
        r.startswith(f"cd /srv/app/releases/{out.release} && npm run -s db:down") for r in runs
    )
    assert any(r.startswith("releasegate deploy prod") for r in runs)
    mark = journal(host, "needs-human")[-1]["detail"]
    assert mark["live"] == out.release and "not backward compatible" in mark["reason"]
    # and the refused release is not marked bad: the operator decides
    assert all(
        e["state"] != "bad" for e in map(json.loads, host.journal) if e["release"] == out.release
    )


def test_automatic_rollback_across_a_compatible_change_goes_back(world) -> None:
    d, host, remote, repo = world
    good = ship(d, repo).release
    out = ship(d, repo, to="2", compatible=True, fault="ready_503")
    assert out.exit_code == 3 and out.result == "rolled-back" and host.current == good
    back = [e for e in journal(host, "rollback") if e["state"] == "active-unverified"][-1]
    assert back["detail"]["schema"]["database"] == "2"
    assert back["detail"]["schema"]["changes"] == [out.release]


def test_a_release_without_a_declaration_is_not_compatible(world) -> None:
    d, host, remote, repo = world
    ship(d, repo)
    out = ship(d, repo, to="2", fault="ready_503")
    assert out.exit_code == 6 and out.result == "rollback-refused"
    assert host.manifests[out.release]["migration"]["backward_compatible"] is False


def test_manual_rollback_across_an_incompatible_change_needs_the_flag(world) -> None:
    d, host, remote, repo = world
    old = ship(d, repo).release
    new = ship(d, repo, to="2", compatible=False).release
    journal_before = list(host.journal)
    out = rollback(d)
    assert out.exit_code == 6 and out.result == "rollback-refused"
    assert host.current == new and host.journal == journal_before  # nothing changed
    assert any("--across-schema" in e for e in out.evidence)
    out = rollback(d, to=old)
    assert out.exit_code == 6 and host.current == new
    # the operator ran the down migration, then takes the rollback across
    host.schema = "1"
    d.across_schema = True
    out = rollback(d, to=old)
    assert out.exit_code == 0 and host.current == old
    rec = journal(host, "schema")[-1]
    assert rec["release"] == old and rec["detail"]["allowed_by"] == "--across-schema"
    # from here the database matches `old`: a later failed deploy may go back to it
    d.across_schema = False
    out = ship(d, repo, fault="ready_503")
    assert out.exit_code == 3 and host.current == old


def test_manual_rollback_across_a_compatible_change_is_allowed_and_journaled(world) -> None:
    d, host, remote, repo = world
    old = ship(d, repo).release
    ship(d, repo, to="2", compatible=True)
    out = rollback(d)
    assert out.exit_code == 0 and host.current == old and host.schema == "2"
    rec = journal(host, "schema")[-1]
    assert rec["detail"]["allowed_by"] == "backward compatible"
    assert rec["detail"]["database"] == "2"


def test_a_broken_declaration_is_a_config_error_before_anything_ships(world) -> None:
    d, host, remote, repo = world
    (repo / "releasegate-migration.json").write_text('{"backward_compatible": "yes"}')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "broken declaration")
    with pytest.raises(ConfigError, match=r"releasegate-migration\.json"):
        flow.deploy(d, Source(repo=repo, revision="HEAD"))
    assert not host.releases and not remote.uploads


def test_a_migration_needs_a_schema_version_command() -> None:
    text = INVENTORY.replace("  schema_version_command: npm run -s db:version\n", "")
    with pytest.raises(ConfigError, match="schema_version_command"):
        parse(text, source=Path("/x/inventories/prod.yml"), env="prod")


# ---------------------------------------------------------------------------- blue/green

BLUE_GREEN = (
    INVENTORY
    + """
strategy:
  kind: blue-green
  slots: {blue: 3001, green: 3002}
  public_port: 8080
  bake: {seconds: 3}
"""
)


@pytest.fixture
def bg_world(tmp_path: Path, app_repo: Path):
    return make_bg_world(tmp_path, app_repo)


def make_bg_world(tmp_path: Path, app_repo: Path, bake: int = 3):
    text = BLUE_GREEN.replace("bake: {seconds: 3}", f"bake: {{seconds: {bake}}}")
    inv = parse(text, source=tmp_path / "inventories" / "prod.yml", env="prod")
    clock = FakeClock()
    host = FakeHost(upstream=(3001, None))  # as `releasegate setup` leaves it
    remote = FakeRemote(host, clock)
    deps = Deps(
        inventory=inv,
        remote=remote,
        reporter=RecordingReporter(),
        clock=clock,
        actor="tester",
        workdir=tmp_path / "work",
        http=lambda base, timeout: httpx.Client(base_url=base, transport=app_handler(remote)),
    )
    return deps, host, remote, app_repo


def test_blue_green_migrates_before_the_idle_slot_starts(bg_world) -> None:
    d, host, remote, repo = bg_world
    ship(d, repo)
    start = len(remote.log)
    out = ship(d, repo, to="2", compatible=True)
    assert out.exit_code == 0 and host.current == out.release and host.schema == "2"
    names = remote.names()[start:]
    assert names.index("release.migrate") < names.index("pm2.start_slot")
    assert names.index("pm2.start_slot") < names.index("proxy.switch")


def test_blue_green_failed_migration_starts_nothing(bg_world) -> None:
    d, host, remote, repo = bg_world
    good = ship(d, repo).release
    start = len(remote.log)
    out = ship(d, repo, exit_code=2)
    assert out.exit_code == 5 and out.result == "migration-failed"
    assert host.current == good
    names = remote.names()[start:]
    assert "pm2.start_slot" not in names and "proxy.switch" not in names


def test_blue_green_rejected_after_an_incompatible_migration_says_where_the_database_is(
    bg_world,
) -> None:
    d, host, remote, repo = bg_world
    good = ship(d, repo).release
    out = ship(d, repo, to="2", compatible=False, fault="ready_503")
    assert out.exit_code == 3 and out.result == "rejected" and host.current == good
    assert "The database stays at schema 2" in out.message
    assert "not declared backward compatible" in out.message


def test_ctrl_c_during_the_migration_activates_nothing_and_says_to_check_the_database(
    world,
) -> None:
    d, host, remote, repo = world
    good = ship(d, repo).release
    remote.interrupt_on["release.migrate"] = KeyboardInterrupt
    with pytest.raises(Interrupted) as caught:
        ship(d, repo, to="2")
    assert caught.value.exit_code == 130
    assert "db:version" in caught.value.message and "not activated" in caught.value.message
    assert host.current == good == host.running and host.lock is None
    rec = journal(host, "migrate")[-1]
    assert rec["state"] == "bad" and rec["detail"]["result"] == "interrupted"


def test_blue_green_refused_rollback_after_the_switch_leaves_the_new_release_serving(
    tmp_path: Path, app_repo: Path
) -> None:
    d, host, remote, repo = make_bg_world(tmp_path, app_repo, bake=10)
    good = ship(d, repo).release
    # ready and stable in its slot, then it dies during the bake: going back would cross 1 → 2
    out = ship(d, repo, to="2", compatible=False, fault="crash_after:5")
    assert out.exit_code == 6 and out.result == "rollback-refused", d.reporter.lines
    assert host.current == out.release and host.schema == "2"
    assert any(f"--to {good} --across-schema" in e for e in out.evidence)
    assert journal(host, "needs-human")


def test_a_killed_run_after_an_incompatible_migration_is_verified_but_never_rolled_back_across(
    world,
) -> None:
    d, host, remote, repo = world
    ship(d, repo)
    remote.dies_after = "pm2.activate"
    ship(d, repo, to="2", compatible=False, fault="ready_503")
    killed = host.current
    host.lock = None  # the dead run's lock (breaking it is tested elsewhere)
    remote.dead, remote.dies_after = False, None
    with pytest.raises(HumanNeeded, match="not backward compatible"):
        ship(d, repo)
    assert host.current == killed and host.schema == "2"
    assert journal(host, "needs-human")


def test_a_deploy_with_a_migration_costs_two_more_round_trips(world) -> None:
    d, host, remote, repo = world
    ship(d, repo)
    before = remote.round_trips + len(remote.uploads)
    ship(d, repo)
    plain = remote.round_trips + len(remote.uploads) - before
    d.inventory = d.inventory.model_copy(update={"migrations": type(CFG)()})
    before = remote.round_trips + len(remote.uploads)
    ship(d, repo)
    assert remote.round_trips + len(remote.uploads) - before == plain - 2


def test_dry_run_shows_the_migration_and_runs_nothing(world) -> None:
    from deploy.plan import PlanRemote

    d, host, remote, repo = world
    ship(d, repo)
    d.remote = PlanRemote(remote, d.reporter)
    d.dry_run = True
    out = ship(d, repo, to="2")
    assert out.result == "planned" and host.schema == "1"
    assert any("would run the migration `npm run -s db:migrate`" in ln for ln in d.reporter.lines)


def test_the_migration_reads_the_snapshot_as_the_pm2_config_and_systemd_do(tmp_path: Path) -> None:
    """The same hand-written forms and rendered values as the PM2 config's reader test
    (test_release_scripts.py): the migration's environment gets exactly those values."""
    from tests.unit.test_release_scripts import TRICKY

    release = tmp_path / "rel"
    release.mkdir()
    hand = (
        "# a comment\n; another\n"
        "export EXPORTED=1\n"
        "UNQUOTED = value with trailing space   \n"
        "ESCAPED=a\\ b\\\\c\n"
        "SINGLE='it''s'\n"
        'DOUBLE="x\\ny\\"z"\n'
        "CONTINUED=first\\\nsecond\n"
        "LATER=old\n"
        "9INVALID=x\n"
    )
    settings = "".join(f"{k}={release_env.quote(v)}\n" for k, v in TRICKY.items())
    (release / ".releasegate.env").write_text(hand + settings + "LATER=new")
    (release / "db").write_text("1\n")
    out, _ = run_script(release, "node -e 'console.log(JSON.stringify(process.env))'", "cat db")
    env = json.loads(next(ln for ln in out.splitlines() if ln.startswith("{")))
    assert {k: env[k] for k in TRICKY} == TRICKY
    assert env["EXPORTED"] == "1"
    assert env["UNQUOTED"] == "value with trailing space"
    assert env["ESCAPED"] == "a b\\c"
    assert env["SINGLE"] == "its"
    assert env["DOUBLE"] == 'x\\ny"z'
    assert env["CONTINUED"] == "firstsecond"
    assert env["LATER"] == "new"
    assert "9INVALID" not in env


def test_status_shows_the_schema_the_journal_last_recorded(world) -> None:
    d, host, remote, repo = world
    assert host_status(d).schema is None
    old = ship(d, repo).release
    assert host_status(d).schema == "1"
    ship(d, repo, to="2")
    assert host_status(d).schema == "2"
    host.schema = "1"  # the operator ran the down migration
    d.across_schema = True
    assert rollback(d, to=old).exit_code == 0
    status = host_status(d)
    assert status.schema == "1"
    assert "schema      1 (the database, as last journaled)" in status_lines(status)


def test_migrations_are_refused_with_several_hosts_for_now() -> None:
    text = INVENTORY.replace(
        "hosts: [{name: web1, address: 10.0.0.5, user: deploy, root: /srv/app}]",
        "hosts: [{name: web1, address: 10.0.0.5, root: /srv/app}, "
        "{name: web2, address: 10.0.0.6, root: /srv/app}]",
    )
    with pytest.raises(ConfigError, match="more than one host"):
        parse(text, source=Path("/x/inventories/prod.yml"), env="prod")
