"""The host-side scripts executed for real: each rendered Cmd runs with `sh` against a
temporary deploy root — the lock (acquire, renew, release, break, racing contenders), the
journal append (stdin, torn last line), host-side deadlines and `pm2 save`'s dump mode."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from deploy import commands, journal, lock
from deploy.commands import Cmd
from deploy.model import Layout
from tests.conftest import wait_until

TOKENS = [f"{i:x}" * 32 for i in range(1, 10)]


def sh(cmd: Cmd, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command the way the host does: its rendered text through a shell, its stdin fed."""
    feed = stdin if stdin is not None else cmd.stdin
    return subprocess.run(
        ["sh", "-c", cmd.render()],
        input=feed or "",
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout(PurePosixPath(tmp_path / "root"))
    assert sh(commands.prepare_layout(lay)).returncode == 0
    return lay


def lock_dir(lay: Layout) -> Path:
    return Path(str(lay.lock))


def acquire(lay: Layout, token: str, lease: int = 60, **owner: object):
    record = {"actor": "ci", "op": "deploy", "pid": 1, "host": "runner-1", **owner}
    return sh(commands.acquire_lock(lay, token, record, lease))


def age_lease(lay: Layout, token: str, seconds: float) -> None:
    """Pretend the holder last renewed `seconds` ago (the host clock is the lease's clock)."""
    lease = lock_dir(lay) / commands.lock_instance(token) / "lease"
    then = time.time() - seconds
    os.utime(lease, (then, then))


def holder_of(lay: Layout) -> lock.Holder:
    state = journal.parse_state(sh(commands.read_state(lay)).stdout)
    assert state.lock_raw is not None
    return lock.assess(state.lock_raw, datetime.now(UTC))


def token_on_host(lay: Layout) -> str | None:
    entries = list(lock_dir(lay).glob("*/token")) if lock_dir(lay).exists() else []
    assert len(entries) <= 1, entries
    return entries[0].read_text().strip() if entries else None


# ---------------------------------------------------------------- lock


def test_acquire_then_contender_sees_holder_and_lease(layout: Layout):
    assert acquire(layout, TOKENS[0], lease=30).returncode == 0
    instance = lock_dir(layout) / commands.lock_instance(TOKENS[0])
    assert (instance / "token").read_text().strip() == TOKENS[0]
    assert (instance / "lease").read_text().strip() == "30"

    other = acquire(layout, TOKENS[1], actor="bob")
    assert other.returncode == commands.LOCK_HELD
    holder = lock.assess(other.stdout, datetime.now(UTC))
    assert holder.owner["actor"] == "ci"
    assert holder.lease is not None and holder.lease.ttl_s == 30
    assert holder.lease.age_s is not None and 0 <= holder.lease.age_s <= 2
    assert "its lease expires in" in holder.describe()
    assert token_on_host(layout) == TOKENS[0]
    assert not list(lock_dir(layout).parent.glob("lock.new-*"))  # the loser cleaned up


def test_state_read_shows_the_holder_without_its_token(layout: Layout):
    acquire(layout, TOKENS[0])
    state = journal.parse_state(sh(commands.read_state(layout)).stdout)
    assert state.lock_owner is not None and state.lock_owner["actor"] == "ci"
    assert state.lock_raw is not None and TOKENS[0] not in state.lock_raw


def test_release_removes_only_our_own_lock(layout: Layout):
    acquire(layout, TOKENS[0])
    wrong = sh(commands.release_lock(layout, TOKENS[1], TOKENS[8]))
    assert commands.LOCK_GONE in wrong.stdout
    assert token_on_host(layout) == TOKENS[0]
    res = sh(commands.release_lock(layout, TOKENS[0], TOKENS[8]))
    assert res.returncode == 0 and "@@released" in res.stdout
    assert not lock_dir(layout).exists()
    assert acquire(layout, TOKENS[1]).returncode == 0


def test_renew_extends_a_live_lease_and_never_revives_an_ended_one(layout: Layout):
    acquire(layout, TOKENS[0], lease=10)
    age_lease(layout, TOKENS[0], 8)
    assert sh(commands.renew_lease(layout, TOKENS[0])).returncode == 0
    assert holder_of(layout).lease.age_s <= 1  # type: ignore[union-attr]

    age_lease(layout, TOKENS[0], 30)
    res = sh(commands.renew_lease(layout, TOKENS[0]))
    assert res.returncode == commands.LOCK_HELD and "lease ended" in res.stdout
    assert holder_of(layout).lease.age_s >= 29  # type: ignore[union-attr]


def test_renew_fails_once_the_lock_is_no_longer_ours(layout: Layout):
    acquire(layout, TOKENS[0])
    sh(commands.break_lock(layout, commands.lock_instance(TOKENS[0]), TOKENS[8], force=True))
    res = sh(commands.renew_lease(layout, TOKENS[0]))
    assert res.returncode == commands.LOCK_HELD and "no longer ours" in res.stdout
    assert not (lock_dir(layout) / commands.lock_instance(TOKENS[0])).exists()


def test_break_refuses_a_live_lease_and_breaks_an_ended_one(layout: Layout):
    acquire(layout, TOKENS[0], lease=10)
    instance = commands.lock_instance(TOKENS[0])
    age_lease(layout, TOKENS[0], 11)  # ended, but within the grace
    live = sh(commands.break_lock(layout, instance, TOKENS[8], force=False))
    assert live.returncode == commands.LOCK_HELD and "live" in live.stdout
    assert token_on_host(layout) == TOKENS[0]

    age_lease(layout, TOKENS[0], 10 + commands.LEASE_GRACE + 2)
    res = sh(commands.break_lock(layout, instance, TOKENS[8], force=False))
    assert res.returncode == 0 and commands.LOCK_BROKEN in res.stdout
    assert token_on_host(layout) is None
    assert not list(lock_dir(layout).parent.glob("lock.broken-*"))


def test_a_manual_lock_has_no_lease_and_only_force_breaks_it(layout: Layout):
    assert acquire(layout, TOKENS[0], lease=0, op="manual").returncode == 0
    instance = commands.lock_instance(TOKENS[0])
    assert not (lock_dir(layout) / instance / "lease").exists()
    assert holder_of(layout).lease_text() == "no lease: held until unlocked"
    res = sh(commands.break_lock(layout, instance, TOKENS[8], force=False))
    assert res.returncode == commands.LOCK_HELD
    assert sh(commands.renew_lease(layout, TOKENS[0])).returncode == commands.LOCK_HELD
    res = sh(commands.break_lock(layout, instance, TOKENS[8], force=True))
    assert commands.LOCK_BROKEN in res.stdout and token_on_host(layout) is None


def test_breaking_an_old_holder_never_touches_the_new_one(layout: Layout):
    # A judged stale, but A released and B took the lock before the break arrived.
    acquire(layout, TOKENS[0])
    stale = commands.lock_instance(TOKENS[0])
    sh(commands.release_lock(layout, TOKENS[0], TOKENS[8]))
    assert acquire(layout, TOKENS[1]).returncode == 0
    res = sh(commands.break_lock(layout, stale, TOKENS[8], force=True))
    assert commands.LOCK_GONE in res.stdout
    assert token_on_host(layout) == TOKENS[1]


def test_lock_made_by_an_older_releasegate_is_held_and_breakable_by_force_only(layout: Layout):
    legacy = lock_dir(layout)
    legacy.mkdir()
    (legacy / "token").write_text("f" * 32 + "\n")
    owner = '{"actor": "alice@laptop", "op": "deploy"}'
    (legacy / "owner.json").write_text(owner + "\n")
    res = acquire(layout, TOKENS[0])
    assert res.returncode == commands.LOCK_HELD
    holder = lock.assess(res.stdout, datetime.now(UTC))
    assert holder.owner["actor"] == "alice@laptop" and holder.instance is None
    assert not holder.expired
    assert sh(commands.break_lock(layout, None, TOKENS[8], force=False)).returncode == 75
    res = sh(commands.break_lock(layout, None, TOKENS[8], force=True, legacy_owner=owner))
    assert commands.LOCK_BROKEN in res.stdout and not legacy.exists()


def test_racing_contenders_exactly_one_wins(layout: Layout):
    with ThreadPoolExecutor(len(TOKENS)) as pool:
        results = list(pool.map(lambda t: (t, acquire(layout, t).returncode), TOKENS))
    winners = [t for t, code in results if code == 0]
    assert len(winners) == 1, results
    assert all(code == commands.LOCK_HELD for t, code in results if t not in winners)
    assert token_on_host(layout) == winners[0]
    assert not list(lock_dir(layout).parent.glob("lock.new-*"))


def test_racing_breakers_never_remove_a_live_holder(layout: Layout):
    acquire(layout, TOKENS[0], lease=5)
    instance = commands.lock_instance(TOKENS[0])
    age_lease(layout, TOKENS[0], 4)  # close to its end: breakers and renewals race

    def contender(i: int) -> int:
        if i % 3 == 0:
            return sh(commands.renew_lease(layout, TOKENS[0])).returncode
        return sh(commands.break_lock(layout, instance, TOKENS[i % 8 + 1], force=False)).returncode

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(contender, range(24)))
    assert token_on_host(layout) == TOKENS[0]


def test_racing_breakers_of_an_ended_lease_break_it_once_and_one_new_holder_wins(
    layout: Layout,
):
    acquire(layout, TOKENS[0], lease=5)
    instance = commands.lock_instance(TOKENS[0])
    age_lease(layout, TOKENS[0], 60)

    def next_run(token: str) -> tuple[bool, int]:
        broke = sh(commands.break_lock(layout, instance, TOKENS[8], force=False))
        return commands.LOCK_BROKEN in broke.stdout, acquire(layout, token).returncode

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(next_run, TOKENS[1:7]))
    assert sum(broke for broke, _ in results) == 1, results
    assert sum(code == 0 for _, code in results) == 1, results
    assert token_on_host(layout) in TOKENS[1:7]


# ---------------------------------------------------------------- journal


def test_journal_append_reads_records_from_stdin_and_fsyncs(layout: Layout):
    hostile = {"detail": "x'; rm -rf / #$(reboot)`id`\\", "op": "deploy"}
    cmd = commands.append_journal(layout, [hostile, {"op": "smoke"}])
    res = sh(cmd)
    assert res.returncode == 0, res.stderr
    lines = Path(str(layout.journal)).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [hostile, {"op": "smoke"}]


def test_journal_append_after_a_torn_last_line_keeps_the_new_record_whole(layout: Layout):
    path = Path(str(layout.journal))
    path.write_text('{"op":"deploy","state":"good"}\n{"op":"deploy","sta')  # writer killed
    res = sh(commands.append_journal(layout, [{"op": "rollback", "state": "good"}]))
    assert res.returncode == 0, res.stderr
    text = path.read_text()
    assert text.endswith('\n{"op":"rollback","state":"good"}\n')
    parsed = journal.parse(text)
    assert [(e.op, e.state) for e in parsed] == [("deploy", "good"), ("rollback", "good")]


def test_a_batch_routes_each_journal_step_its_own_records(layout: Layout):
    # A step between them that reads stdin (an install could) must not swallow the second.
    greedy = commands._cmd("probe.stdin", ["cat"])
    first = commands.append_journal(layout, [{"op": "a"}])
    second = commands.append_journal(layout, [{"op": "b"}, {"op": "c"}])
    res = sh(commands.batch("b", [first, greedy, second], "batch"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # `cat` read /dev/null
    ops = [e.op for e in journal.parse(Path(str(layout.journal)).read_text())]
    assert ops == ["a", "b", "c"]


def test_journal_append_without_its_records_fails_and_writes_nothing(layout: Layout):
    res = sh(commands.append_journal(layout, [{"op": "a"}]), stdin="")
    assert res.returncode != 0
    assert not Path(str(layout.journal)).exists()


# ---------------------------------------------------------------- deadlines


def test_bounded_renders_the_hosts_timeout_and_the_clients_deadline():
    install = commands.run_install(PurePosixPath("/srv/app/releases/x.partial"), "npm ci")
    cmd = commands.bounded(install, 90)
    assert cmd.render() == "cd /srv/app/releases/x.partial && timeout -k 5 90 sh -c 'npm ci'"
    assert cmd.display == install.display
    assert commands.client_deadline(cmd, 60) == 60 + 90 + commands.KILL_AFTER
    quick = commands.prepare_layout(Layout(PurePosixPath("/srv/app")))
    assert commands.client_deadline(quick, 60) == 60
    both = commands.batch("ship", [quick, cmd, commands.bounded(quick, 2.5)], "ship")
    assert commands.client_deadline(both, 60) == 60 + 90 + 2.5 + 2 * commands.KILL_AFTER
    with pytest.raises(ValueError):
        commands.bounded(both, 10)


def _running(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv:
                found.append(proc.name)
    return found


def test_a_bounded_step_is_stopped_on_the_host_with_everything_it_started(tmp_path: Path):
    marker = f"{time.time_ns() % 10**6}.5"  # `sleep <marker>`: ours alone
    hang = commands._cmd("release.install", ["sh", "-c", f"sleep {marker} & sleep {marker}"])
    started = time.monotonic()
    res = sh(commands.batch("ship", [commands.bounded(hang, 1)], "ship"))
    assert res.returncode in commands.TIMED_OUT
    assert time.monotonic() - started < 1 + commands.KILL_AFTER
    wait_until(lambda: not _running(marker), 5, "the hung step's processes to be gone")


def test_preflight_migration_check_runs_under_the_hosts_timeout(layout: Layout):
    cmd = commands.preflight_probe(
        layout,
        manager="sh",
        shared_files=[],
        runtimes=[],
        migration_check="sleep 30",
        migration_timeout=1,
    )
    assert cmd.limit == 1
    started = time.monotonic()
    res = sh(cmd)
    assert time.monotonic() - started < 1 + commands.KILL_AFTER
    assert "migration_exit=124" in res.stdout


def test_pm2_save_leaves_the_dump_owner_only(tmp_path: Path):
    from deploy.inventory import parse
    from deploy.process.pm2 import Pm2

    home = tmp_path / "pm2home"
    home.mkdir()
    fake_pm2 = tmp_path / "pm2"
    # like pm2: the dump (every app's env) written with the process umask; an old one kept
    fake_pm2.write_text(
        '#!/bin/sh\nd="$PM2_HOME"; [ -f "$d/dump.pm2" ] && cp "$d/dump.pm2" "$d/dump.pm2.bak"\n'
        'echo \'[{"env":{"API_KEY":"s3cr3t"}}]\' > "$d/dump.pm2"\n'
    )
    fake_pm2.chmod(0o755)
    (home / "dump.pm2").write_text("old")
    (home / "dump.pm2").chmod(0o644)
    inv = parse(
        f"""
hosts: [{{name: web1, address: 10.0.0.5, root: /srv/app}}]
app: {{name: shop}}
process: {{command: server.js, port: 3000, pm2: {fake_pm2}}}
""",
        source=tmp_path / "prod.yml",
        env="prod",
    )
    cmd = Pm2(inv, Layout(PurePosixPath("/srv/app"))).persist()
    assert cmd is not None
    res = subprocess.run(
        ["sh", "-c", cmd.render()],
        env={**os.environ, "PM2_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert (home / "dump.pm2").stat().st_mode & 0o777 == 0o600
    assert (home / "dump.pm2.bak").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------ the gate's closing read


class ShRemote:
    """A Remote that runs every command with `sh` on this machine (no SSH)."""

    host_label = "local"

    def run(self, cmd: Cmd, *, check: bool = True, timeout: float | None = None, stdin=None):
        from deploy.remote import Result

        res = sh(cmd, stdin)
        return Result(res.stdout, commands.without_marks(res.stderr), res.returncode)

    def put(self, local, remote):  # pragma: no cover - not used here
        raise AssertionError("no uploads here")

    def tunnel(self, port):  # pragma: no cover - not used here
        raise AssertionError("no tunnels here")

    def close(self) -> None:
        pass


def test_the_closing_read_returns_the_snapshot_and_the_identity_in_one_round_trip(
    tmp_path: Path,
) -> None:
    """The gate's closing read (process state + cwd of the window's pids + manifest) is one
    command; the snapshot's output — PM2's jlist carries every process's environment, so it
    may contain anything, `@@release` included — is cut from the identity's at a fresh
    marker, never at a guessable word."""
    import yaml

    from deploy import inventory
    from deploy.host import HostOps
    from deploy.process import manager_for

    rid = "20261122120000-abcdef1"
    lay = Layout(PurePosixPath(tmp_path / "root"))
    release = Path(str(lay.release(rid)))
    release.mkdir(parents=True)
    (release / ".release.json").write_text(json.dumps({"id": rid, "revision": "abc1234"}))
    proc = subprocess.Popen(["sleep", "30"], cwd=release)
    try:
        jlist = [
            {
                "name": "shop",
                "pm_id": 0,
                "pid": proc.pid,
                "pm2_env": {"status": "online", "restart_time": 0, "X": "@@release /nope\n"},
            }
        ]
        pm2 = tmp_path / "pm2"
        pm2.write_text(f"#!/bin/sh\ncat <<'JSON'\n{json.dumps(jlist)}\nJSON\n")
        pm2.chmod(0o755)
        data = {
            "hosts": [{"name": "web1", "address": "10.0.0.5", "user": "d", "root": str(lay.root)}],
            "app": {"name": "shop"},
            "process": {"command": "server.js", "port": 3000, "pm2": str(pm2)},
        }
        inv = inventory.parse(yaml.safe_dump(data), source=Path("inventories/prod.yml"), env="prod")
        host = HostOps(
            inventory=inv,
            remote=ShRemote(),
            manager=manager_for(inv, lay),
            layout=lay,
            actor="ci",
        )
        snap, facts = host.snapshot_with_identity(rid, (proc.pid,), timeout=10)
        assert snap.status == "online" and snap.pids == (proc.pid,)
        assert facts is not None
        assert facts.cwds == {proc.pid: str(release)}
        assert facts.release_dir == str(release)
        assert facts.revision == "abc1234"
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------- uploads


def test_an_upload_arrives_on_stdin_byte_for_byte_with_its_mode(tmp_path: Path) -> None:
    """SshRemote.put sends the file on the stdin of commands.receive_file: binary content
    arrives unchanged, with the local mode, and never readable by others while it arrives."""
    data = bytes(range(256)) * 300 + b"\x00\xff\n"
    target = tmp_path / "uploads" / "a.tar.gz.1234"
    target.parent.mkdir()
    cmd = commands.receive_file(PurePosixPath(target), 0o600)
    res = subprocess.run(["sh", "-c", cmd.render()], input=data, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600
    assert not target.with_name(target.name + ".part").exists()


def test_an_upload_that_cannot_be_written_fails_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "env.1234"
    cmd = commands.receive_file(PurePosixPath(target), 0o600)
    res = subprocess.run(["sh", "-c", cmd.render()], input=b"x", capture_output=True, timeout=60)
    assert res.returncode != 0
    assert not target.parent.exists()


def test_a_quiet_read_brings_its_output_or_nothing_and_never_fails_its_batch() -> None:
    """The process read that ends the activation's batch (commands.quiet_read): its exit code
    and output after the marker, exit 0 even when it failed or hung past its limit on the host
    (stopped: 124) — the activation's outcome is the reload's; the gate judges the read."""
    marker = "@@processes-" + "a" * 32
    ok = commands.quiet_read(Cmd("r", ("printf", "[1,2]"), "r"), marker, 5)
    assert ok is not None and ok.limit == 5
    res = sh(ok)
    assert res.returncode == 0 and res.stdout == f"{marker} 0\n[1,2]\n"
    failed = commands.quiet_read(Cmd("r", ("sh", "-c", "echo partial; exit 3"), "r"), marker, 5)
    assert failed is not None
    res = sh(failed)
    assert res.returncode == 0 and res.stdout == f"{marker} 3\npartial\n"
    hung = commands.quiet_read(Cmd("r", ("sleep", "30"), "r"), marker, 0.5)
    assert hung is not None
    started = time.monotonic()
    res = sh(hung)
    assert res.returncode == 0 and res.stdout.split("\n")[0] == f"{marker} 124"
    assert time.monotonic() - started < 10
