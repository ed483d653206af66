"""A release carries its environment and its smoke packs (issue 9, items 3, 4, 7, 11): checked
on the sandbox through the app's real process environment (/proc/<pid>/environ), real PM2 and
real systemd, over real SSH."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Iterator

import pytest

from deploy import demo, operations
from deploy.operations import Options
from deploy.report import RecordingReporter
from tests.conftest import git, wait_until
from tests.integration.conftest import Target
from tests.integration.test_deploy import cli, deploy, released, rollback

pytestmark = pytest.mark.integration


@pytest.fixture(params=["pm2", "systemd"])
def app(request: pytest.FixtureRequest, target: Target) -> Iterator[Target]:
    """The target app under PM2 (cluster of 2) or systemd (the deploy user's manager)."""
    target.data["process"]["env"] = {"HOST": "0.0.0.0", "FEATURE_FLAG": "on"}
    target.data["process"]["manager"] = request.param
    if request.param == "systemd":
        target.data["process"].pop("instances")
        target.data["process"].update(interpreter="node", systemd={"scope": "user"})
    target.write()
    try:
        yield target
    finally:
        if request.param == "systemd":
            unit = f"{target.app}.service"
            target.ssh(
                f"systemctl --user disable --now {unit} >/dev/null 2>&1; "
                f"rm -f .config/systemd/user/{unit}; systemctl --user daemon-reload; true",
                check=False,
            )


def app_pids(t: Target) -> list[int]:
    if t.data["process"].get("manager") == "systemd":
        out = t.ssh(f"systemctl --user show -p MainPID --value {t.app}.service").stdout
        pids = [int(out.strip() or 0)]
    else:
        procs = json.loads(t.ssh("pm2 jlist").stdout)
        pids = [int(p["pid"]) for p in procs if p["name"] == t.app]
    assert pids and all(pids), f"no running process for {t.app}"
    return pids


def app_envs(t: Target) -> list[dict[str, str]]:
    """The environment of every running app process, read from /proc/<pid>/environ. A PM2
    cluster worker is exec'd with one variable, pm2_env (JSON), and PM2's ProcessContainer
    copies its top-level keys into process.env before the app's code runs: so do we."""
    envs = []
    for pid in app_pids(t):
        text = t.ssh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout
        env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        container = env.pop("pm2_env", None)
        if container is not None:
            for key, value in json.loads(container).items():
                env[key] = value if isinstance(value, str) else json.dumps(value)
        envs.append(env)
    return envs


def the_env(t: Target) -> dict[str, str]:
    """The variables every instance has with the same value (PM2 adds per-instance ones)."""
    envs = app_envs(t)
    return {k: v for k, v in envs[0].items() if all(e.get(k) == v for e in envs)}


def names_anywhere(t: Target) -> set[str]:
    return set().union(*app_envs(t))


def commit(t: Target, fault: str = "") -> str:
    """A new revision of the app (a release id is per commit)."""
    (t.repo / "n.txt").write_text(uuid.uuid4().hex)
    demo.commit_fault(t.repo, fault)
    return git(t.repo, "rev-parse", "HEAD")


# ---------------------------------------------------------------------------- env


def test_a_variable_removed_from_the_release_is_gone_from_the_running_app(app: Target):
    sha = commit(app)
    code, rep = deploy(app)
    assert code == 0, rep.lines
    rid = released(rep)
    env = the_env(app)
    assert env["FEATURE_FLAG"] == "on"
    assert env["RELEASE_ID"] == rid and env["REVISION"] == sha
    assert env["PORT"] == str(app.port)
    mode = app.ssh(f"stat -c %a {app.root}/releases/{rid}/.releasegate.env").stdout.strip()
    assert mode == "600"

    del app.data["process"]["env"]["FEATURE_FLAG"]
    app.write()
    commit(app)
    code, rep = deploy(app)
    assert code == 0, rep.lines
    env = the_env(app)
    assert "FEATURE_FLAG" not in names_anywhere(app)  # replaced, not merged (PM2 would keep it)
    assert env["RELEASE_ID"] == released(rep)
    if app.data["process"]["manager"] == "pm2":
        assert any("FEATURE_FLAG" in line and "deleted and started" in line for line in rep.lines)
    # ... and a rollback brings it back with the old release
    code, rep = rollback(app)
    assert code == 0, rep.lines
    assert the_env(app)["FEATURE_FLAG"] == "on"
    assert the_env(app)["RELEASE_ID"] == rid


def test_rollback_runs_the_old_code_with_its_own_secrets(
    app: Target, monkeypatch: pytest.MonkeyPatch
):
    app.data["secrets"] = {"from_env": ["APP_SECRET"]}
    app.write()
    monkeypatch.setenv("APP_SECRET", "old-secret-value")
    code, rep = deploy(app)
    assert code == 0, rep.lines
    old = released(rep)
    assert the_env(app)["APP_SECRET"] == "old-secret-value"
    # nothing shared carries the secret: each release has its own snapshot
    assert app.ssh(f"test -e {app.root}/shared/.env", check=False).returncode != 0

    monkeypatch.setenv("APP_SECRET", "new-secret-value")
    commit(app)
    code, rep = deploy(app)
    assert code == 0, rep.lines
    assert the_env(app)["APP_SECRET"] == "new-secret-value"

    code, rep = rollback(app)
    assert code == 0, rep.lines
    assert app.current() == old
    env = the_env(app)
    assert env["APP_SECRET"] == "old-secret-value" and env["RELEASE_ID"] == old

    # an automatic rollback too: the failing release's secret does not stay behind
    monkeypatch.setenv("APP_SECRET", "bad-release-secret")
    commit(app, "ready_503")
    code, rep = deploy(app)
    assert code == 3, rep.lines
    assert app.current() == old
    assert the_env(app)["APP_SECRET"] == "old-secret-value"


def live_fingerprint(t: Target) -> str:
    """Everything the live app's environment is made of, hashed on the host."""
    rid = t.current()
    files = t.ssh(
        f"cd {t.root} && sha256sum releases/{rid}/.releasegate.env; "
        f"find shared -type f -exec sha256sum {{}} + | sort; ls -la shared"
    ).stdout
    procs = sorted(json.dumps(e, sort_keys=True) for e in app_envs(t))
    return files + "\n".join(procs)


def uploads(t: Target) -> list[str]:
    return t.ssh(f"ls -A {t.root}/.releasegate/uploads").stdout.split()


def test_an_aborted_deploy_leaves_the_live_env_byte_for_byte_unchanged(
    target: Target, monkeypatch: pytest.MonkeyPatch
):
    target.data["secrets"] = {"from_env": ["APP_SECRET"]}
    target.write()
    monkeypatch.setenv("APP_SECRET", "live-value")
    code, rep = deploy(target)
    assert code == 0, rep.lines
    live = target.current()
    before = live_fingerprint(target)

    # a failure after the uploads, before the switch: the release can't be extracted
    monkeypatch.setenv("APP_SECRET", "value-that-must-not-leak-into-live")
    commit(target)
    target.ssh(f"chmod 555 {target.root}/releases")
    try:
        code, rep = deploy(target)
    finally:
        target.ssh(f"chmod 755 {target.root}/releases")
    assert code == 5, rep.lines
    assert target.current() == live
    assert live_fingerprint(target) == before
    assert uploads(target) == []  # the artifact and the secrets upload are gone

    # a signal during the ship (the install sleeps on the host)
    target.update("app", install="sleep 20")
    commit(target)
    proc = cli(target, "deploy", "test")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    wait_until(
        lambda: target.ssh(f"ls {target.root}/releases").stdout.count(".partial"),
        60,
        "the partial release on the host",
    )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 130, "".join(lines)
    reader.join(timeout=5)
    assert target.current() == live
    assert live_fingerprint(target) == before
    assert uploads(target) == []
    assert ".partial" not in target.ssh(f"ls {target.root}/releases").stdout


# ---------------------------------------------------------------------------- smoke packs

P1 = """version: 1
name: contract
checks:
  - name: version
    request: {path: /version}
    expect: {status: 200}
  - name: items-list
    request: {path: /api/items}
    expect: {status: 200, schema: {type: object, required: [items]}}
"""
NEW_ENDPOINT = """  - name: new-endpoint
    request: {path: /api/new-endpoint}
    expect: {status: 200}
"""


def with_pack(t: Target, text: str) -> None:
    """The pack lives in the app's repository, so each revision carries its own version."""
    (t.repo / "contract.yml").write_text(text)
    t.data["smoke"] = {"packs": [str(t.repo / "contract.yml")]}
    t.write()


def test_automatic_rollback_gates_the_fallback_with_its_own_packs(target: Target):
    with_pack(target, P1)
    commit(target)
    code, rep = deploy(target)
    assert code == 0, rep.lines
    good = released(rep)
    # the next release checks an endpoint it does not serve: it fails; the fallback is
    # gated with the pack it was deployed with, which passes
    with_pack(target, P1 + NEW_ENDPOINT)
    commit(target)
    code, rep = deploy(target)
    assert code == 3, rep.lines  # not 6: "rollback failed" for a healthy release
    assert target.current() == good == target.version()["release"]
    assert target.state_of(good) == "good"
    smoke = [e for e in target.journal() if e["op"] == "smoke"]
    assert smoke[-1]["release"] == good and not smoke[-1]["detail"]["failed"]


def test_manual_rollback_gates_the_target_with_its_own_packs(target: Target):
    with_pack(target, P1)
    commit(target)
    code, rep = deploy(target)
    assert code == 0, rep.lines
    old = released(rep)
    # a release that changed its contract, and its pack with it
    with_pack(target, P1.replace("required: [items]", "required: [data]"))
    commit(target, "wrong_contract")
    code, rep = deploy(target)
    assert code == 0, rep.lines
    code, rep = rollback(target)
    assert code == 0, rep.lines
    assert target.current() == old == target.version()["release"]
    stored = target.ssh(f"cat {target.root}/releases/{old}/.releasegate/smoke.json").stdout
    assert "required: [items]" in json.loads(stored)["packs"][0]["text"]
    manifest = json.loads(target.ssh(f"cat {target.root}/releases/{old}/.release.json").stdout)
    assert manifest["smoke_packs"] == ["contract"] and len(manifest["smoke_sha256"]) == 64


# ---------------------------------------------------------------------------- dependencies


def test_reused_dependencies_are_a_copy_the_new_release_cannot_change(target: Target):
    code, rep = deploy(target)
    assert code == 0, rep.lines
    first = released(rep)
    (target.repo / "n.txt").write_text("new code, same dependencies")
    commit(target)
    code, rep = deploy(target)
    assert code == 0, rep.lines
    second = released(rep)
    assert any("copied from" in line and "install skipped" in line for line in rep.lines)
    dep = "node_modules/ms/index.js"
    a, b = (f"{target.root}/releases/{r}/{dep}" for r in (first, second))
    target.ssh(f"cmp {a} {b}")  # the same tree …
    inodes = target.ssh(f"stat -c %i {a} {b}").stdout.split()
    assert inodes[0] != inodes[1]  # … as a copy, not hard links
    key = f"{target.root}/releases/{{}}/.releasegate/deps.key"
    assert target.ssh(f"cat {key.format(first)}").stdout == (
        target.ssh(f"cat {key.format(second)}").stdout
    )
    # an in-place write into the new release's tree leaves the rollback target intact
    target.ssh(f"echo '// patched' >> {b}")
    assert "patched" not in target.ssh(f"cat {a}").stdout
    code, rep = rollback(target)
    assert code == 0, rep.lines

    # --clean-install forces the install
    rep = RecordingReporter()
    opts = Options(inventories=target.inv_dir, clean_install=True)
    commit(target)
    assert operations.run_deploy("test", opts, reporter=rep) == 0, rep.lines
    assert not any("copied from" in line for line in rep.lines)


def test_the_pack_file_must_be_committed_when_it_lives_in_the_repository(target: Target):
    with_pack(target, P1)  # written, not committed
    (target.repo / ".gitignore").write_text("contract.yml\n")
    commit(target)
    code, rep = deploy(target)
    assert code == 2, rep.lines
    assert any("not in revision" in line for line in rep.lines)
    assert target.ssh(f"test -e {target.root}/releases", check=False).returncode != 0


def test_an_app_with_nothing_to_install_skips_the_install_next_time(target: Target):
    """Issue 14: an app whose lockfile has no packages used to run `npm ci` on every deploy."""
    repo = target.repo
    for item in ("vendor", "package-lock.json", "smoke.yml"):
        git(repo, "rm", "-rq", item)
    (repo / "package.json").write_text('{"name": "bare", "version": "1.0.0"}\n')
    (repo / "package-lock.json").write_text(
        '{"name": "bare", "version": "1.0.0", "lockfileVersion": 3, "requires": true,\n'
        ' "packages": {"": {"name": "bare", "version": "1.0.0"}}}\n'
    )
    (repo / "server.js").write_text(
        "require('http').createServer((q, s) => { s.writeHead(q.url === '/health/ready' ? "
        "200 : 404); s.end('{}'); }).listen(Number(process.env.PORT), process.env.HOST);\n"
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "an app without dependencies")
    code, rep = deploy(target)
    assert code == 0, rep.lines
    first = released(rep)
    assert not any("install skipped" in line for line in rep.lines)
    (repo / "n.txt").write_text("new code")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "new code")
    code, rep = deploy(target)
    assert code == 0, rep.lines
    assert any(
        f"nothing to install, as for {first}" in line and "install skipped" in line
        for line in rep.lines
    ), rep.lines
    assert target.ssh(f"test -e {target.root}/current/node_modules", check=False).returncode != 0
