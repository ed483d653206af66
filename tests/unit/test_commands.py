"""Exact remote command strings: what reaches the host's shell, quoted in one place."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

import pytest

from deploy import commands
from deploy.model import Layout, Manifest

L = Layout(PurePosixPath("/srv/app"))
RID = "20261122120000-abcdef1"
TOKEN = "0123456789abcdef0123456789abcdef"


def test_finalize_is_mv_T():
    cmd = commands.finalize_release(L.partial(RID), L.release(RID))
    assert cmd.render() == (f"mv -T -- /srv/app/releases/{RID}.partial /srv/app/releases/{RID}")


def test_switch_is_link_beside_then_rename():
    cmd = commands.switch_current(L, RID, TOKEN)
    argv = shlex.split(cmd.render())
    assert argv[:2] == ["sh", "-c"]
    assert argv[3:] == ["releasegate", "/srv/app", RID, TOKEN]
    assert "mv -T" in argv[2] and "ln -s" in argv[2] and "ln -sfn" not in argv[2]


def test_install_runs_users_line_as_one_quoted_argument():
    cmd = commands.run_install(L.partial(RID), "npm ci --omit=dev")
    assert cmd.render() == (f"cd /srv/app/releases/{RID}.partial && sh -c 'npm ci --omit=dev'")


def test_journal_records_travel_on_stdin_never_in_argv():
    entry = {"detail": "x'; rm -rf / #$(reboot)`id`\\"}
    cmd = commands.append_journal(L, [entry, {"op": "deploy"}])
    argv = shlex.split(cmd.render())
    assert argv[3:] == ["releasegate", "/srv/app/.releasegate/journal.jsonl", "2"]
    assert "reboot" not in cmd.render()
    assert cmd.stdin == '{"detail":"x\'; rm -rf / #$(reboot)`id`\\\\"}\n{"op":"deploy"}\n'


def test_lock_acquire_and_release_carry_the_token():
    instance = commands.lock_instance(TOKEN)
    acquire = shlex.split(commands.acquire_lock(L, TOKEN, {"actor": "a"}, 60).render())
    assert acquire[3:] == [
        "releasegate",
        "/srv/app/.releasegate/lock",
        instance,
        TOKEN,
        '{"actor": "a"}',
        "60",
    ]
    release = shlex.split(commands.release_lock(L, TOKEN, "e" * 32).render())
    assert release[3:] == ["releasegate", "/srv/app/.releasegate/lock", instance, TOKEN, "e" * 32]
    assert TOKEN not in instance and len(instance) == 16  # public name, secret token
    with pytest.raises(ValueError):
        commands.release_lock(L, "not-a-token", "e" * 32)


def test_extract_verifies_sha_before_tar():
    sha = "a" * 64
    cmd = commands.verify_and_extract(L.uploads / "x.tar.gz", sha, L.partial(RID))
    script = cmd.argv[2]
    assert script.index("sha256sum") < script.index("tar -xzf")
    with pytest.raises(ValueError):
        commands.verify_and_extract(L.uploads / "x", "nothex;rm", L.partial(RID))


def test_release_ids_and_paths_are_validated():
    with pytest.raises(ValueError):
        L.release("../../etc")
    with pytest.raises(ValueError):
        commands.switch_current(L, "20261122120000-abcdef1; reboot", TOKEN)
    with pytest.raises(ValueError):
        commands.remove_partial(L.release(RID))  # only *.partial may be removed this way


def test_manifest_write():
    m = Manifest(id=RID, revision="f" * 40, sha256="a" * 64, created_at="t", actor="me")
    cmd = commands.write_manifest(L.release(RID), m)
    argv = shlex.split(cmd.render())
    assert argv[4] == f"/srv/app/releases/{RID}/.release.json"
    assert '"sha256": "' + "a" * 64 in argv[5]


def test_pm2_commands():
    from deploy.inventory import parse
    from deploy.process.pm2 import Pm2

    inv = parse(
        "hosts: [{name: h, address: h, root: /srv/app}]\napp: {name: shop}\n"
        "process: {command: server.js --x 1, port: 3000, instances: 2, env: {A: 'b\"c'}}\n",
        source=PurePosixPath("/i/prod.yml"),  # type: ignore[arg-type]
        env="prod",
    )
    pm2 = Pm2(inventory=inv, layout=L)
    activate = shlex.split(pm2.activate(RID)[0].render())
    assert activate[3:] == [
        "releasegate",
        "pm2",
        f"/srv/app/releases/{RID}/.releasegate-pm2.config.js",
        "shop",
        f"/srv/app/releases/{RID}/.releasegate.env",
        "/srv/app/.releasegate/pm2-env-keys",
    ]
    assert pm2.snapshot().render() == "pm2 jlist"
    assert pm2.stop().render() == "pm2 delete shop"
    config = pm2.render_config(RID)
    assert '"cwd": ' not in config and 'cwd: "/srv/app/current"' in config
    assert 'exec_mode: "cluster"' in config
    # the environment is the release's own snapshot, read on the host: no value in the config
    assert f'readEnvFile("/srv/app/releases/{RID}/.releasegate.env")' in config
    assert "b\\\"c" not in config and "shared/.env" not in config
    assert 'args: ["--x", "1"]' in config


def test_parse_jlist_skips_daemon_banner_and_aggregates():
    from deploy.process.pm2 import parse_jlist

    out = (
        "[PM2] Spawning PM2 daemon with pm2_home=/home/deploy/.pm2\n"
        "[PM2] PM2 Successfully daemonized\n"
        '[{"name":"shop","pid":11,"pm2_env":{"status":"online","restart_time":1}},'
        '{"name":"shop","pid":12,"pm2_env":{"status":"online","restart_time":2}},'
        '{"name":"other","pid":13,"pm2_env":{"status":"errored","restart_time":9}}]\n'
    )
    snap = parse_jlist(out, "shop")
    assert snap.status == "online" and snap.pids == (11, 12) and snap.restarts == 3
    assert parse_jlist(out, "missing").status == "missing"
    crashed = '[{"name":"shop","pid":0,"pm2_env":{"status":"errored","restart_time":4}}]'
    assert parse_jlist(crashed, "shop").status == "errored"
