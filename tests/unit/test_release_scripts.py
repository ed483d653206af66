"""The host-side scripts of a release's life, executed for real with `sh` against a temporary
deploy root — extract, link shared, switch, the env snapshot, PM2's activation, dependency
reuse, uploads, the state read: the exact command line `Cmd.render` produces is what runs
here, quoting included (the lock and journal scripts: test_host_scripts.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from deploy import commands, journal, release_env
from deploy.commands import Cmd
from deploy.inventory import parse
from deploy.model import Layout, Manifest
from deploy.process.pm2 import ENV_LEGACY, ENV_RESTART, Pm2
from deploy.release_packs import Bundle, PackFile

RID = "20261122120000-abcdef1"
RID2 = "20261122130000-1234567"
TOKEN = "0123456789abcdef0123456789abcdef"


def run(cmd: Cmd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", cmd.render()],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=60,
    )


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout(PurePosixPath(tmp_path / "root"))
    res = run(commands.prepare_layout(lay))
    assert res.returncode == 0, res.stderr
    return lay


def p(path: PurePosixPath) -> Path:
    return Path(str(path))


# ---------------------------------------------------------------------------- extract


def tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_extract_verifies_then_extracts_and_consumes_the_upload(layout: Layout):
    data = tarball({"server.js": b"ok\n", "lib/a.js": b"a\n"})
    upload = layout.uploads / "x.tar.gz.1"
    p(upload).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    res = run(commands.verify_and_extract(upload, sha, layout.partial(RID)))
    assert res.returncode == 0, res.stderr
    assert (p(layout.partial(RID)) / "lib/a.js").read_text() == "a\n"
    assert not p(upload).exists()

    p(upload).write_bytes(data)
    res = run(commands.verify_and_extract(upload, "0" * 64, layout.partial(RID2)))
    assert res.returncode == commands.CHECKSUM_MISMATCH
    assert not p(layout.partial(RID2)).exists() and not p(upload).exists()


# ---------------------------------------------------------------------------- link shared


def test_link_shared_links_dirs_and_refuses_a_missing_file(layout: Layout):
    partial = layout.partial(RID)
    p(partial).mkdir(parents=True)
    (p(layout.shared) / "config.json").write_text("{}")
    res = run(commands.link_shared(layout, partial, ["config.json"], ["storage/uploads"]))
    assert res.returncode == 0, res.stderr
    assert os.readlink(p(partial) / "config.json") == str(layout.shared / "config.json")
    assert (p(partial) / "storage/uploads").resolve() == p(layout.shared / "storage/uploads")

    res = run(commands.link_shared(layout, partial, ["missing.env"], []))
    assert res.returncode == 3 and "does not exist" in res.stdout


# ---------------------------------------------------------------------------- switch


def test_switch_is_atomic_and_refuses_an_incomplete_release(layout: Layout):
    for rid in (RID, RID2):
        p(layout.release(rid)).mkdir(parents=True)
    run(commands.write_manifest(layout.release(RID), manifest()))
    res = run(commands.switch_current(layout, RID, TOKEN))
    assert res.returncode == 0, res.stderr
    assert os.readlink(p(layout.current)) == f"releases/{RID}"
    res = run(commands.switch_current(layout, RID2, TOKEN))  # no manifest: incomplete
    assert res.returncode == 3
    assert os.readlink(p(layout.current)) == f"releases/{RID}"
    assert sorted(os.listdir(p(layout.root))) == [".releasegate", "current", "releases", "shared"]


def manifest(rid: str = RID, smoke: Bundle | None = None) -> Manifest:
    return Manifest(
        id=rid,
        revision="f" * 40,
        sha256="a" * 64,
        created_at="t",
        actor="me",
        smoke_sha256=smoke.sha256 if smoke else None,
        smoke_packs=smoke.names() if smoke else (),
    )


# ---------------------------------------------------------------------------- env snapshot

SETTINGS = release_env.render_settings(
    release_id=RID, revision="f" * 40, port=3000, env={"NODE_ENV": "production", "A": "x"}
)


def test_release_env_moves_the_uploaded_secrets_in_with_mode_0600(layout: Layout):
    partial = layout.partial(RID)
    p(partial).mkdir(parents=True)
    upload = layout.uploads / "env.1"
    p(upload).write_text("API_KEY=s3cret\nA=from-secrets\n")
    (p(layout.shared) / ".env").write_text("HAND=written\n")
    dest = partial / ".releasegate.env"
    cmd = commands.install_release_env(dest, settings=SETTINGS, upload=upload)
    assert "s3cret" not in cmd.render()  # uploaded on stdin, never an argument
    res = run(cmd)
    assert res.returncode == 0, res.stderr
    text = p(dest).read_text()
    assert stat.S_IMODE(p(dest).stat().st_mode) == 0o600
    assert "API_KEY=s3cret" in text and "HAND" not in text  # shared/.env is not read
    # releasegate's settings come last, so they win in both readers
    assert text.index("A=from-secrets") < text.index('A="x"')
    assert f'RELEASE_ID="{RID}"' in text and f'REVISION="{"f" * 40}"' in text
    assert not p(upload).exists()  # consumed


def test_release_env_seals_a_hand_maintained_shared_env_when_secrets_are_not_used(
    layout: Layout,
):
    partial = layout.partial(RID)
    p(partial).mkdir(parents=True)
    shared_env = layout.shared / ".env"
    p(shared_env).write_text("HAND=written")  # no trailing newline
    dest = partial / ".releasegate.env"
    res = run(commands.install_release_env(dest, settings=SETTINGS, shared_env=shared_env))
    assert res.returncode == 0, res.stderr
    assert "HAND=written\n" in p(dest).read_text()
    # a later edit of shared/.env does not change the release's snapshot
    before = p(dest).read_bytes()
    p(shared_env).write_text("HAND=changed\n")
    assert p(dest).read_bytes() == before

    p(shared_env).unlink()
    res = run(commands.install_release_env(dest, settings=SETTINGS, shared_env=shared_env))
    assert res.returncode == 0 and p(dest).read_text() == SETTINGS


# ---------------------------------------------------------------------------- PM2's reader

TRICKY = {
    "PLAIN": "abc",
    "SPACES": "  two words  ",
    "QUOTES": "say \"hi\" and 'bye'",
    "BACKSLASH": "C:\\path\\n",
    "DOLLAR": "$HOME `id` ${X}",
    "HASH": "a # not a comment",
    "EMPTY": "",
}


def test_the_pm2_config_reads_the_snapshot_as_systemd_does(tmp_path: Path):
    """Values rendered by releasegate come back exactly; hand-written forms follow systemd's
    EnvironmentFile= rules (quotes, escapes, comments, a later line wins)."""
    lay = Layout(PurePosixPath(tmp_path))
    inv = parse(
        "hosts: [{name: h, address: h, root: /srv/app}]\napp: {name: shop}\n"
        "process: {command: server.js, port: 3000}\n",
        source=tmp_path / "prod.yml",
        env="prod",
    )
    pm2 = Pm2(inventory=inv, layout=lay)
    release = Path(str(lay.release(RID)))
    release.mkdir(parents=True)
    config = release / ".releasegate-pm2.config.js"
    config.write_text(pm2.render_config(RID))
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
    out = subprocess.run(
        ["node", "-e", f"console.log(JSON.stringify(require({str(config)!r}).apps[0].env))"],
        capture_output=True,
        text=True,
        check=True,
    )
    env = json.loads(out.stdout)
    assert {k: env[k] for k in TRICKY} == TRICKY
    assert env["EXPORTED"] == "1"
    assert env["UNQUOTED"] == "value with trailing space"
    assert env["ESCAPED"] == "a b\\c"
    assert env["SINGLE"] == "its"
    assert env["DOUBLE"] == 'x\\ny"z'
    assert env["CONTINUED"] == "firstsecond"
    assert env["LATER"] == "new"
    assert "9INVALID" not in env


# ---------------------------------------------------------------------------- PM2 activation


@pytest.fixture
def fake_pm2(tmp_path: Path) -> Path:
    """A `pm2` that logs its arguments; `pm2 pid` prints $FAKE_PM2_PID."""
    script = tmp_path / "pm2"
    script.write_text(
        '#!/bin/sh\necho "$*" >> "$FAKE_PM2_LOG"\n'
        '[ "$1" = pid ] && printf "%s\\n" "$FAKE_PM2_PID"\nexit 0\n'
    )
    script.chmod(0o755)
    return script


def activate(
    tmp_path: Path, pm2_bin: Path, env_text: str | None, *, pid: str = ""
) -> tuple[str, list[str]]:
    lay = Layout(PurePosixPath(tmp_path / "root"))
    inv = parse(
        f"hosts: [{{name: h, address: h, root: {lay.root}}}]\napp: {{name: shop}}\n"
        f"process: {{command: server.js, port: 3000, pm2: {pm2_bin}}}\n",
        source=tmp_path / "prod.yml",
        env="prod",
    )
    release = p(lay.release(RID))
    release.mkdir(parents=True, exist_ok=True)
    p(lay.state).mkdir(parents=True, exist_ok=True)
    env_file = p(lay.release_env(RID))
    if env_text is None:
        env_file.unlink(missing_ok=True)
    else:
        env_file.write_text(env_text)
    log = tmp_path / "pm2.log"
    log.write_text("")
    (cmd,) = Pm2(inventory=inv, layout=lay).activate(RID)
    res = run(cmd, env={"FAKE_PM2_LOG": str(log), "FAKE_PM2_PID": pid})
    assert res.returncode == 0, res.stderr
    return res.stdout, [line.split()[0] for line in log.read_text().splitlines()]


def test_pm2_reloads_while_no_variable_is_removed_and_restarts_when_one_is(
    tmp_path: Path, fake_pm2: Path
):
    out, calls = activate(tmp_path, fake_pm2, "A=1\nB=2\n")  # first deploy: nothing runs
    assert calls == ["pid", "startOrReload"] and ENV_RESTART not in out
    out, calls = activate(tmp_path, fake_pm2, "A=1\nB=2\nC=3\n", pid="41")  # a key added
    assert calls == ["startOrReload"]
    out, calls = activate(tmp_path, fake_pm2, "A=9\nC=3\n", pid="41")  # B removed
    assert calls == ["delete", "start"]
    assert f"{ENV_RESTART} B" in out
    keys = (tmp_path / "root/.releasegate/pm2-env-keys").read_text().split()
    assert keys == ["A", "C"]
    out, calls = activate(tmp_path, fake_pm2, "A=1\nC=3\n", pid="41")  # values only
    assert calls == ["startOrReload"]


def test_pm2_restarts_an_app_it_runs_with_unrecorded_variables(tmp_path: Path, fake_pm2: Path):
    out, calls = activate(tmp_path, fake_pm2, "A=1\n", pid="41\n42")
    assert calls == ["pid", "delete", "start"] and "unknown" in out


def test_a_first_deploy_that_wakes_the_pm2_daemon_is_not_a_restart(tmp_path: Path, fake_pm2: Path):
    # what `pm2 pid APP` prints on a host whose PM2 daemon was not running (measured, 7.0.4)
    banner = (
        "[PM2] Spawning PM2 daemon with pm2_home=/home/deploy/.pm2\n"
        "[PM2] PM2 Successfully daemonized\n"
    )
    out, calls = activate(tmp_path, fake_pm2, "A=1\n", pid=banner)
    assert calls == ["pid", "startOrReload"] and ENV_RESTART not in out


def test_pm2_logs_replace_a_megabyte_line_instead_of_bringing_it_over(tmp_path: Path):
    logs = tmp_path / "pm2home" / "logs"
    logs.mkdir(parents=True)
    (logs / "shop-out.log").write_text("started\n" + "E" * 3_000_000 + "\nlast words\n")
    (logs / "shop-error.log").write_text("boom\n")
    lay = Layout(PurePosixPath(tmp_path / "root"))
    inv = parse(
        f"hosts: [{{name: h, address: h, root: {lay.root}}}]\napp: {{name: shop}}\n"
        "process: {command: server.js, port: 3000}\n",
        source=tmp_path / "prod.yml",
        env="prod",
    )
    res = run(Pm2(inventory=inv, layout=lay).logs(40), env={"PM2_HOME": str(tmp_path / "pm2home")})
    assert res.returncode == 0, res.stderr
    assert len(res.stdout) < 2000
    assert "(a line of 3000000 bytes)" in res.stdout
    assert "started" in res.stdout and "last words" in res.stdout and "boom" in res.stdout


def test_pm2_activates_an_old_release_without_a_snapshot(tmp_path: Path, fake_pm2: Path):
    activate(tmp_path, fake_pm2, "A=1\n")
    out, calls = activate(tmp_path, fake_pm2, None, pid="41")
    assert calls == ["startOrReload"] and ENV_LEGACY in out
    # what PM2 holds is unknown now: the next release with a snapshot restarts the app
    assert not (tmp_path / "root/.releasegate/pm2-env-keys").exists()


# ---------------------------------------------------------------------------- dependencies

INSTALL = "mkdir -p node_modules/dep && echo v1 > node_modules/dep/index.js && touch installed"


def ship_deps(
    layout: Layout,
    rid: str,
    *,
    source: str | None,
    install: str = INSTALL,
    lock: str = "lock-1",
    pkg: str = '{"name": "app"}',
    runtimes: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    partial = p(layout.release(rid))
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "package-lock.json").write_text(lock)
    (partial / "package.json").write_text(pkg)
    cmd = commands.reuse_or_install(
        layout.release(source) if source else None,
        layout.release(rid),
        install,
        lockfile="package-lock.json",
        manifest="package.json",
        deps_dir="node_modules",
        runtimes=runtimes,
    )
    res = run(cmd, env=env)
    assert res.returncode == 0, res.stderr
    return res


def test_same_dependency_key_copies_the_tree_and_skips_the_install(layout: Layout):
    first = ship_deps(layout, RID, source=None)
    assert commands.DEPS_REUSED not in first.stdout
    assert (p(layout.release(RID)) / "installed").exists()
    key = (p(layout.release(RID)) / ".releasegate/deps.key").read_text().strip()
    assert len(key) == 64

    second = ship_deps(layout, RID2, source=RID)
    assert f"{commands.DEPS_REUSED} copy" in second.stdout
    new_tree = p(layout.release(RID2)) / "node_modules/dep/index.js"
    assert not (p(layout.release(RID2)) / "installed").exists()
    assert new_tree.read_text() == "v1\n"
    assert (p(layout.release(RID2)) / ".releasegate/deps.key").read_text().strip() == key

    # an in-place write in the new release (same inode if the tree were hard-linked) must
    # not change the rollback target's tree
    with new_tree.open("a") as handle:
        handle.write("patched in place\n")
    assert (p(layout.release(RID)) / "node_modules/dep/index.js").read_text() == "v1\n"


@pytest.mark.parametrize(
    "change",
    [
        {"lock": "lock-2"},
        {"pkg": '{"name": "app", "overrides": {"x": "2"}}'},
        {"install": INSTALL + " && true"},
    ],
)
def test_anything_that_shapes_the_tree_changes_the_key(layout: Layout, change: dict[str, str]):
    ship_deps(layout, RID, source=None)
    res = ship_deps(layout, RID2, source=RID, **change)
    assert commands.DEPS_REUSED not in res.stdout
    assert (p(layout.release(RID2)) / "installed").exists()


def test_the_runtime_version_on_the_host_is_part_of_the_key(layout: Layout, tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runtime = bin_dir / "fakenode"

    def version(v: str) -> dict[str, str]:
        runtime.write_text(f"#!/bin/sh\necho {v}\n")
        runtime.chmod(0o755)
        return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

    ship_deps(layout, RID, source=None, runtimes=("fakenode",), env=version("v20.1.0"))
    same = ship_deps(layout, RID2, source=RID, runtimes=("fakenode",), env=version("v20.1.0"))
    assert commands.DEPS_REUSED in same.stdout
    third = "20261122140000-7654321"
    res = ship_deps(layout, third, source=RID2, runtimes=("fakenode",), env=version("v22.0.0"))
    assert commands.DEPS_REUSED not in res.stdout


def test_nothing_to_install_is_reused_too(layout: Layout):
    """An app whose lockfile has no packages: its install makes no deps dir. The same key
    next time skips the install instead of running it again."""
    install = "touch installed"
    ship_deps(layout, RID, source=None, install=install)
    assert not (p(layout.release(RID)) / "node_modules").exists()
    res = ship_deps(layout, RID2, source=RID, install=install)
    assert f"{commands.DEPS_REUSED} none" in res.stdout
    assert not (p(layout.release(RID2)) / "installed").exists()


def test_a_release_without_a_key_is_never_a_reuse_source(layout: Layout):
    ship_deps(layout, RID, source=None)
    (p(layout.release(RID)) / ".releasegate/deps.key").unlink()  # shipped by an older version
    res = ship_deps(layout, RID2, source=RID)
    assert commands.DEPS_REUSED not in res.stdout
    assert (p(layout.release(RID2)) / "installed").exists()


def test_a_failed_install_leaves_no_key(layout: Layout):
    partial = p(layout.partial(RID))
    partial.mkdir(parents=True)
    cmd = commands.reuse_or_install(
        None, layout.partial(RID), "exit 7", lockfile="l", manifest="m", deps_dir="d"
    )
    assert run(cmd).returncode == 7
    assert not (partial / ".releasegate/deps.key").exists()


# ---------------------------------------------------------------------------- uploads


def test_clean_uploads_removes_leftovers_but_this_runs_own(layout: Layout):
    uploads = p(layout.uploads)
    for name in ("old.tar.gz.1", "env.dead", ".hidden", "mine.tar.gz.2", "env.mine"):
        (uploads / name).write_text("x")
    (uploads / "dir.partial").mkdir()
    keep = [layout.uploads / "mine.tar.gz.2", layout.uploads / "env.mine"]
    res = run(commands.clean_uploads(layout, keep))
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(uploads)) == ["env.mine", "mine.tar.gz.2"]
    res = run(commands.remove_uploads(keep))
    assert res.returncode == 0 and os.listdir(uploads) == []


# ---------------------------------------------------------------------------- state read


def test_state_read_carries_each_distinct_smoke_bundle_once(layout: Layout):
    one = Bundle(packs=(PackFile(source="a.yml", text="version: 1\n"),))
    two = Bundle(packs=(PackFile(source="b.yml", text="version: 1 # b\n"),), audit={"x": 1})
    third = "20261122140000-7654321"
    for rid, bundle in ((RID, one), (RID2, one), (third, two)):
        release = p(layout.release(rid))
        (release / ".releasegate").mkdir(parents=True)
        (release / ".releasegate/smoke.json").write_bytes(bundle.to_json())
        run(commands.write_manifest(layout.release(rid), manifest(rid, bundle)))
    p(layout.release("20261122150000-0000000")).mkdir()  # shipped before bundles existed
    (p(layout.release(third)) / ".releasegate/smoke.json").write_bytes(two.to_json() + b"x\n")
    res = run(commands.read_state(layout))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(one.to_json().decode().strip()) == 1  # sent once for two releases
    state = journal.parse_state(res.stdout)
    assert set(state.smoke) == {RID, RID2, third}
    assert Bundle.from_json(state.smoke[RID].text) == one
    assert state.smoke[RID].sha256 == state.smoke[RID].recorded == one.sha256
    # changed on the host after the ship: the hashes no longer agree
    assert state.smoke[third].recorded == two.sha256 != state.smoke[third].sha256
