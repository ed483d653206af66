"""Exit codes exactly as documented (deploy.cli's epilog, docs/exit-codes.md): command x failure
→ code, through the real Click door. Config problems are exit 2 with nothing contacted — a
listening socket on this machine stands in for the host and proves no connection was made."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy import flow
from deploy.artifact import Source
from deploy.cli import main
from deploy.errors import LockHeld
from deploy.plan import PlanRemote
from tests.sshserver import ssh_server
from tests.unit.test_flow import ship
from tests.unit.test_flow import world as world

PACK = """
version: 1
name: health
checks:
  - name: health
    request: {path: /healthz}
    expect: {status: 200}
"""


class Listener:
    """A TCP port on 127.0.0.1 that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def contacted(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.sock.close()


def write_project(
    tmp: Path, repo: Path, port: int, *, identity: str | None = None, packs: str = ""
) -> Path:
    inv = tmp / "inventories"
    inv.mkdir(exist_ok=True)
    host = f"{{name: web1, address: 127.0.0.1, port: {port}, root: /srv/app"
    if identity:
        host += f", identity_file: {identity}"
    host += "}"
    (inv / "prod.yml").write_text(
        f"hosts: [{host}]\n"
        f"app: {{name: app, repo: {repo}}}\n"
        "process: {command: server.js, port: 3000}\n"
        + (f"smoke: {{packs: [{packs}]}}\n" if packs else "")
    )
    (tmp / "health.yml").write_text(PACK)
    return inv


def cli(inv: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["--plain", "--inventories", str(inv), *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


NO_KEY = "missing_key"

# command x failure → (exit code, words the message must contain, was the host contacted?)
TABLE = [
    ("deploy", "missing identity_file", ["deploy", "prod"], NO_KEY, 2, "hosts[0].identity_file"),
    ("deploy", "unknown revision", ["deploy", "prod", "--revision", "nope"], None, 2, "'nope'"),
    (
        "deploy --dry-run",
        "missing identity_file",
        ["deploy", "prod", "--dry-run"],
        NO_KEY,
        2,
        "hosts[0].identity_file",
    ),
    (
        "rollback",
        "missing identity_file",
        ["rollback", "prod"],
        NO_KEY,
        2,
        "hosts[0].identity_file",
    ),
    ("status", "missing identity_file", ["status", "prod"], NO_KEY, 2, "hosts[0].identity_file"),
    (
        "preflight",
        "missing identity_file",
        ["preflight", "prod"],
        NO_KEY,
        2,
        "hosts[0].identity_file",
    ),
    (
        "releases",
        "missing identity_file",
        ["releases", "prod"],
        NO_KEY,
        2,
        "hosts[0].identity_file",
    ),
    (
        "smoke ENV",
        "missing identity_file",
        ["smoke", "prod", "health"],
        NO_KEY,
        2,
        "hosts[0].identity_file",
    ),
    ("smoke ENV", "pack file missing", ["smoke", "prod", "nosuch.yml"], None, 2, "nosuch.yml"),
    ("smoke ENV", "inventory pack missing", ["smoke", "prod"], "bad-pack", 2, "smoke.packs"),
    ("deploy", "no such environment", ["deploy", "nosuch"], None, 2, "no such inventory"),
    ("history", "missing identity_file", ["history", "prod"], NO_KEY, 2, "identity_file"),
    ("lock", "missing identity_file", ["lock", "prod", "-m", "x"], NO_KEY, 2, "identity_file"),
    ("unlock", "missing identity_file", ["unlock", "prod"], NO_KEY, 2, "identity_file"),
    ("resolve", "missing identity_file", ["resolve", "prod"], NO_KEY, 2, "identity_file"),
    ("setup", "missing identity_file", ["setup", "prod"], NO_KEY, 2, "identity_file"),
    ("perf ENV", "missing identity_file", ["perf", "prod", "health"], NO_KEY, 2, "identity_file"),
    ("perf ENV", "pack file missing", ["perf", "prod", "nosuch.yml"], None, 2, "nosuch.yml"),
    ("rollback", "bad release id", ["rollback", "prod", "--to", "../x"], None, 2, "--to"),
]


@pytest.mark.parametrize(
    ("command", "failure", "args", "setup", "code", "words"),
    TABLE,
    ids=[f"{c}: {f}" for c, f, *_ in TABLE],
)
def test_config_problems_exit_2_before_anything_is_contacted(
    tmp_path, app_repo, listener, command, failure, args, setup, code, words
):
    inv = write_project(
        tmp_path,
        app_repo,
        listener.port,
        identity="keys/nosuch_ed25519" if setup == NO_KEY else None,
        packs=str(tmp_path / "missing-pack.yml") if setup == "bad-pack" else "",
    )
    got, out = cli(inv, *args)
    assert got == code, out
    assert words in out
    assert not listener.contacted(), f"{command} contacted the host on {failure}"


def test_smoke_env_that_cannot_connect_exits_5_as_documented(tmp_path, app_repo):
    closed = Listener()
    port = closed.port
    closed.sock.close()  # nothing listens there any more: connection refused
    inv = write_project(tmp_path, app_repo, port)
    got, out = cli(inv, "smoke", "prod", str(tmp_path / "health.yml"))
    assert got == 5, out
    assert "could not reach" in out
    assert (
        "5  smoke ENV: could not reach ENV" in CliRunner().invoke(main, ["smoke", "--help"]).output
    )


def test_trust_host_without_a_terminal_or_yes_exits_2_with_the_fix(tmp_path, app_repo):
    with ssh_server() as server:
        inv = write_project(tmp_path, app_repo, server.port)
        got, out = cli(inv, "trust-host", "prod")
    assert got == 2, out
    assert "SHA256:" in out
    assert "releasegate trust-host prod --yes" in out
    assert not (inv / "known_hosts").exists()


def test_trust_host_tells_the_user_to_commit_the_pin(tmp_path, app_repo):
    with ssh_server() as server:
        inv = write_project(tmp_path, app_repo, server.port)
        got, out = cli(inv, "trust-host", "prod", "--yes")
    assert got == 0, out
    assert (inv / "known_hosts").exists()
    assert "commit" in out and "known_hosts" in out


def test_dry_run_under_a_manual_lock_exits_4_like_the_real_run(world):
    deps, host, remote, repo = world
    host.lock = ("f" * 32, json.dumps({"actor": "alice", "op": "manual", "message": "freeze"}))
    deps.remote = PlanRemote(remote, deps.reporter)
    deps.dry_run = True
    with pytest.raises(LockHeld, match="a real deploy would stop here with exit 4") as caught:
        ship(deps, repo)
    assert caught.value.exit_code == 4
    assert host.current is None and host.lock[0] == "f" * 32


def test_dry_run_on_a_dirty_tree_shows_the_plan_with_a_warning(world):
    deps, host, remote, repo = world
    ship(deps, repo)
    (repo / "known_hosts").write_text("[10.0.0.5]:22 ssh-ed25519 AAAA\n")  # as trust-host left it
    deps.remote = planner = PlanRemote(remote, deps.reporter)
    deps.dry_run = True
    deps.clock.sleep(2)
    out = flow.deploy(deps, Source(repo=repo, revision="HEAD"))
    assert out.exit_code == 0 and out.result == "planned"
    assert any("switch current" in p for p in planner.planned)
    assert any(
        "uncommitted changes" in line and "known_hosts" in line for line in deps.reporter.lines
    )


def test_a_missing_key_of_a_second_host_is_exit_2_naming_it(tmp_path, app_repo, listener):
    inv = tmp_path / "inventories"
    inv.mkdir()
    (inv / "prod.yml").write_text(
        "hosts:\n"
        f"  - {{name: web1, address: 127.0.0.1, port: {listener.port}, root: /srv/a}}\n"
        f"  - {{name: web2, address: 127.0.0.1, port: {listener.port}, root: /srv/b,"
        " identity_file: keys/nosuch}\n"
        f"app: {{name: app, repo: {app_repo}}}\n"
        "process: {command: server.js, port: 3000}\n"
    )
    got, out = cli(inv, "deploy", "prod")
    assert got == 2, out
    assert "hosts[1].identity_file (host web2)" in out
    assert not listener.contacted()
