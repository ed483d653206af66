"""Hostile files and values a user (or a committer to the app's repository) can hand
releasegate: each is refused with a one-paragraph error naming the file and the fix — never a
traceback, never minutes of CPU or gigabytes of memory, never silently half-read."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path, PurePosixPath

import httpx
import pytest

from deploy import commands, inventory, journal
from deploy.errors import ConfigError, GateFailed
from deploy.gate import check_identity, probe_http
from deploy.host import parse_identity
from deploy.model import IdentityFacts, Layout, ProcessSnapshot
from smoke.pack import PackError, load_pack

GOOD = """\
hosts: [{name: web1, address: 10.0.0.5, root: /srv/app}]
app: {name: shop}
process: {command: server.js, port: 3000}
"""
PACK = """\
version: 1
name: hostile
checks:
  - name: live
    request: {path: /health/live}
    expect: {status: 200}
"""


def _laughs(levels: int = 8) -> str:
    """Anchors that alias the one before nine times: 9**levels values once expanded (43
    million for 8 levels: half a minute and ~1 GB when validation walks them; 9 levels is
    the machine's memory)."""
    names = "abcdefghij"
    items = ["&a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        items.append(f"&{names[i]} [" + ", ".join([f"*{names[i - 1]}"] * 9) + "]")
    return "[" + ", ".join(items) + "]"


def inventory_error(tmp_path: Path, text: str | bytes) -> str:
    inv_dir = tmp_path / "inventories"
    inv_dir.mkdir(exist_ok=True)
    path = inv_dir / "prod.yml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        inventory.load("prod", inv_dir)
    assert exc.value.exit_code == 2
    assert str(path) in exc.value.message
    return exc.value.message


def pack_error(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "pack.yml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(PackError) as exc:
        load_pack(path, environ={})
    assert str(path) in exc.value.message
    return exc.value.message


# ------------------------------------------------------------------ inventories


def test_a_key_written_twice_is_refused_not_silently_the_last(tmp_path: Path):
    msg = inventory_error(tmp_path, GOOD.replace("port: 3000}", "port: 3000}\nprocess: {}"))
    assert "'process' appears twice" in msg and "line 4" in msg and "line 3" in msg


def test_a_key_written_twice_inside_a_section_is_refused(tmp_path: Path):
    msg = inventory_error(tmp_path, GOOD.replace("port: 3000", "port: 3000, port: 8080"))
    assert "'port' appears twice" in msg


def test_merge_keys_may_still_be_overridden(tmp_path: Path):
    text = GOOD.replace(
        "process: {command: server.js, port: 3000}",
        "process:\n  <<: {command: server.js, port: 3000}\n  port: 3001",
    )
    (tmp_path / "inventories").mkdir()
    (tmp_path / "inventories" / "prod.yml").write_text(text)
    assert inventory.load("prod", tmp_path / "inventories").process.port == 3001


def test_a_billion_laughs_inventory_is_refused_at_once(tmp_path: Path):
    started = time.monotonic()
    msg = inventory_error(
        tmp_path,
        GOOD.replace("app: {name: shop}", f"app: {{name: shop, shared_files: {_laughs()}}}"),
    )
    assert time.monotonic() - started < 5
    assert "billion laughs" in msg


def test_deep_nesting_in_an_inventory_is_an_error_not_a_traceback(tmp_path: Path):
    msg = inventory_error(tmp_path, GOOD + "extra: " + "[" * 2000 + "]" * 2000 + "\n")
    assert "nested more than" in msg


def test_an_inventory_that_is_not_utf8_is_named(tmp_path: Path):
    msg = inventory_error(tmp_path, GOOD.encode() + b"# caf\xe9\n")
    assert "not UTF-8" in msg and "0xe9" in msg


# ------------------------------------------------------------------ smoke packs


def test_a_billion_laughs_pack_is_refused_at_once(tmp_path: Path):
    started = time.monotonic()
    msg = pack_error(
        tmp_path,
        PACK.replace(
            "expect: {status: 200}", f"expect: {{status: 200, schema: {{enum: {_laughs()}}}}}"
        ),
    )
    assert time.monotonic() - started < 5
    assert "billion laughs" in msg


def test_deep_nesting_in_a_pack_is_an_error_not_a_traceback(tmp_path: Path):
    msg = pack_error(tmp_path, PACK + "extra: " + "[" * 2000 + "]" * 2000 + "\n")
    assert "nested more than" in msg


def test_a_check_written_twice_is_refused(tmp_path: Path):
    msg = pack_error(tmp_path, PACK + "checks: []\n")
    assert "'checks' appears twice" in msg


def test_a_pack_that_is_not_utf8_says_so_not_permissions(tmp_path: Path):
    msg = pack_error(tmp_path, PACK.encode() + b"# \xff\n")
    assert "not UTF-8" in msg and "permissions" not in msg


# ------------------------------------------------------------------ a trailing newline
# `$` in a Python regex also matches before a final "\n": every validator must refuse it.


@pytest.mark.parametrize(
    "value",
    [
        "20261122120000-abcdef1\n",
        "\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0662\u0661\u0662\u0660\u0660\u0660\u0660-abcdef1",
    ],
)
def test_a_release_id_with_a_newline_or_foreign_digits_is_not_a_release_id(value: str):
    from deploy.model import is_release_id

    assert is_release_id("20261122120000-abcdef1")
    assert not is_release_id(value)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("root: /srv/app", 'root: "/srv/app\\n"', "hosts[0].root"),
        ("address: 10.0.0.5", 'address: "web1.example.com\\n"', "hosts[0].address"),
        ("name: shop", 'name: "shop\\n"', "app.name"),
        ("name: shop", 'name: shop, revision: "main\\n"', "app.revision"),
        ("port: 3000", 'port: 3000, env: {"API_TOKEN\\n": x}', "process.env"),
    ],
)
def test_an_inventory_value_with_a_trailing_newline_is_refused(old: str, new: str, key: str):
    with pytest.raises(ConfigError) as exc:
        inventory.parse(GOOD.replace(old, new), source=Path("inventories/prod.yml"), env="prod")
    assert key in exc.value.message


def test_an_environment_name_with_a_trailing_newline_is_refused(tmp_path: Path):
    (tmp_path / "prod.yml").write_text(GOOD)
    with pytest.raises(ConfigError) as exc:
        inventory.load("prod\n", tmp_path)
    assert "is not valid" in exc.value.message


# ------------------------------------------------------------------ CLI numbers


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan"])
def test_lock_wait_nan_is_refused_before_anything(tmp_path: Path, value: str):
    from click.testing import CliRunner

    from deploy.cli import main

    # no inventory at all: a refused option must stop before the inventory is even read
    res = CliRunner().invoke(
        main, ["--inventories", str(tmp_path), "deploy", "prod", "--lock-wait", value]
    )
    assert res.exit_code == 2, res.output
    assert "--lock-wait" in res.output and "finite" in res.output
    assert "Traceback" not in res.output


def test_perf_thresholds_refuse_nan_and_inf(tmp_path: Path):
    from click.testing import CliRunner

    from deploy.cli import main

    for value in ("nan", "inf"):
        res = CliRunner().invoke(
            main, ["perf", "--base-url", "http://127.0.0.1:9", "--p95-increase-ms", value]
        )
        assert res.exit_code == 2, res.output
        assert "--p95-increase-ms" in res.output


# ------------------------------------------------------------------ host state (scripts run)


def _sh(cmd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", cmd.render()],
        input=cmd.stdin or "",
        capture_output=True,
        text=True,
        timeout=60,
    )


OLD, NEW = "20261122120000-abcdef1", "20261123120000-abcdef2"


@pytest.fixture
def root(tmp_path: Path) -> Layout:
    lay = Layout(PurePosixPath(tmp_path / "root"))
    assert _sh(commands.prepare_layout(lay)).returncode == 0
    for rid in (OLD, NEW):
        (Path(str(lay.releases)) / rid).mkdir()
        (Path(str(lay.releases)) / rid / ".release.json").write_text("{}")
    return lay


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_current_that_is_not_a_link_is_a_layout_problem(root: Layout, kind: str):
    current = Path(str(root.current))
    if kind == "directory":
        current.mkdir()
    else:
        current.write_text("x")
    state = journal.parse_state(_sh(commands.read_state(root)).stdout)
    problem = state.layout_problem(str(root.root), "web1")
    assert problem is not None
    assert f"{root.root}/current on web1 is a {kind}" in problem and "mv " in problem


def test_a_linked_or_missing_current_is_no_layout_problem(root: Layout):
    state = journal.parse_state(_sh(commands.read_state(root)).stdout)
    assert state.layout_problem(str(root.root), "web1") is None
    Path(str(root.current)).symlink_to(f"releases/{NEW}")
    state = journal.parse_state(_sh(commands.read_state(root)).stdout)
    assert state.layout_problem(str(root.root), "web1") is None and state.current == NEW


def test_a_release_without_its_manifest_is_never_a_target(root: Layout):
    (Path(str(root.releases)) / OLD / ".release.json").unlink()
    state = journal.parse_state(_sh(commands.read_state(root)).stdout)
    assert state.incomplete_dirs == {OLD}
    assert state.release_dirs == {NEW}  # neither a rollback target nor the last good


def test_a_file_where_the_lock_should_be_is_named_not_held_by_an_unknown_owner(root: Layout):
    lock = Path(str(root.lock))
    lock.write_text("garbage")
    res = _sh(commands.acquire_lock(root, "a" * 32, {"op": "deploy"}, 60))
    assert res.returncode == 1  # not LOCK_HELD: no one will ever release it
    assert f"{lock} is a file, not a lock releasegate made" in res.stderr
    assert f"rm -- {lock}" in res.stderr
    assert lock.read_text() == "garbage"  # left for the user to look at
    assert not list(lock.parent.glob("lock.new-*"))  # no staging directory left behind


# ------------------------------------------------------------------ a release that moves `current`


def _identity(root: Layout, rid: str) -> IdentityFacts:
    # our own pid runs in the release directory, as a process of the release would
    return parse_identity(_sh(commands.process_identity(root.release(rid), [os.getpid()])).stdout)


@pytest.mark.parametrize("link", [f"releases/{OLD}", "releases/nonexistent", None])
def test_a_release_that_moves_current_as_it_starts_fails_its_identity_gate(
    root: Layout, link: str | None, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(str(root.release(NEW)))
    if link is not None:
        Path(str(root.current)).symlink_to(link)
    facts = _identity(root, NEW)
    snap = ProcessSnapshot(status="online", pids=(os.getpid(),), restarts=0)
    with pytest.raises(GateFailed) as exc:
        check_identity(snap, facts, root.release(NEW), through_current=True)
    assert exc.value.gate == "identity"
    assert f"current no longer names {NEW}" in exc.value.message
    assert ("missing" if link is None else link) in exc.value.message
    # a slot (blue/green) is gated before current names it: not its business there
    assert "run in" in check_identity(snap, facts, root.release(NEW), through_current=False)


def test_current_naming_the_gated_release_passes(root: Layout, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(str(root.release(NEW)))
    Path(str(root.current)).symlink_to(f"releases/{NEW}")
    snap = ProcessSnapshot(status="online", pids=(os.getpid(),), restarts=0)
    said = check_identity(snap, _identity(root, NEW), root.release(NEW), through_current=True)
    assert said == f"1 process(es) run in {root.release(NEW)}"


# ------------------------------------------------------------------ an answer without end


class _Endless(httpx.SyncByteStream):
    def __init__(self, chunk: bytes, pause: float = 0.0) -> None:
        self.chunk, self.pause = chunk, pause

    def __iter__(self):
        while True:
            if self.pause:
                time.sleep(self.pause)  # a release dripping its answer (real time on purpose)
            yield self.chunk


@pytest.mark.parametrize(
    ("stream", "said"),
    [
        (_Endless(b"x" * 65536), "went on past 1024 KiB"),
        (_Endless(b"x", pause=0.05), "still coming after 0.5s"),
    ],
    ids=["flood", "drip"],
)
def test_a_readiness_answer_without_end_fails_the_probe_in_bounded_time(stream, said):
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    client = httpx.Client(base_url="http://127.0.0.1:9", transport=transport, timeout=0.5)
    started = time.monotonic()
    outcome, detail = probe_http(client, "/health/ready", {})
    # before: the probe read for ever, past the gate's deadline (only a signal ended it)
    assert time.monotonic() - started < 5
    assert outcome == "fail" and said in detail and detail.startswith("200 in ")


@pytest.mark.parametrize(
    ("stream", "said"),
    [
        (_Endless(b"x" * 65536), "expected a body that ends within 8 MiB"),
        (_Endless(b"x", pause=0.05), "expected a body that ends within 0.5 s"),
    ],
    ids=["flood", "drip"],
)
def test_a_smoke_check_whose_answer_never_ends_fails_in_bounded_time(tmp_path: Path, stream, said):
    from smoke.runner import run_pack
    from tests.fakehost import FakeClock

    path = tmp_path / "pack.yml"
    path.write_text(PACK.replace("version: 1\n", "version: 1\ndefaults: {timeout: 0.5}\n"))
    pack = load_pack(path, environ={})
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    started = time.monotonic()
    result = run_pack(
        pack, base_url="http://app", client=httpx.Client(transport=transport), clock=FakeClock()
    )
    assert time.monotonic() - started < 5
    (check,) = result.checks
    assert check.outcome == "fail" and said in check.detail, check.detail


# ------------------------------------------------------------------ garbage nested on the host

DEEP = "[" * 100_000


def test_a_journal_line_nested_past_the_recursion_limit_does_not_hide_the_history():
    good = '{"op":"deploy","release":"20261122120000-abcdef1","state":"good","ts":"t","actor":"a"}'
    entries = journal.parse(f"{good}\n{DEEP}\n")
    assert [e.release for e in entries] == ["20261122120000-abcdef1"]


def test_a_lock_owner_nested_past_the_recursion_limit_is_an_unknown_owner():
    from datetime import UTC, datetime

    from deploy import lock

    holder = lock.assess('{"a":' + DEEP, datetime.now(UTC))
    assert holder.owner == {}
    state = journal.parse_state(f'@@current\n@@releases\n@@lock\n{{"a":{DEEP}\n@@journal\n')
    assert state.lock_owner is not None and "raw" in state.lock_owner


def test_a_migration_declaration_nested_past_the_recursion_limit_is_a_config_error(
    tmp_path: Path,
):
    from deploy import artifact, migrations
    from tests.conftest import git

    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "releasegate-migration.json").write_text(DEEP)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "hostile declaration")
    sha = git(repo, "rev-parse", "HEAD").strip()
    inv = inventory.parse(
        GOOD + "migrations: {command: 'true', schema_version_command: 'echo 1'}\n",
        source=tmp_path / "prod.yml",
        env="prod",
    )
    with pytest.raises(ConfigError) as exc:
        migrations.read_declaration(inv, artifact.Source(repo=repo, revision="HEAD"), sha)
    assert "releasegate-migration.json" in exc.value.message
    assert "nested too deeply" in exc.value.message


# ------------------------------------------------------------------ wrong YAML types, URL paths


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("port: 3000", "port: true", "process.port"),
        ("root: /srv/app", "root: /srv/app, port: false", "hosts[0].port"),
    ],
)
def test_a_port_written_as_true_or_false_is_refused_not_port_1(old: str, new: str, key: str):
    with pytest.raises(ConfigError) as exc:
        inventory.parse(GOOD.replace(old, new), source=Path("inventories/prod.yml"), env="prod")
    assert f"{key}: must be a port number" in exc.value.message


@pytest.mark.parametrize("path", ["//evil.example/ready", "//127.0.0.1:22/"])
def test_a_health_path_an_http_client_would_read_as_another_host_is_refused(path: str):
    with pytest.raises(ConfigError) as exc:
        inventory.parse(
            GOOD + f"health: {{path: '{path}'}}\n", source=Path("inventories/prod.yml"), env="prod"
        )
    assert "health.path: use a URL path" in exc.value.message


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://a b/", "http://x/\n", "http://127.0.0.1:99999/", "http://h:0/"]
)
def test_a_base_url_that_cannot_be_reached_as_written_is_refused_by_name(url: str):
    from click.testing import CliRunner

    from deploy.cli import main
    from smoke.runner import BaseUrlError, check_base_url

    with pytest.raises(BaseUrlError):
        check_base_url(url)
    res = CliRunner().invoke(main, ["smoke", "--plain", "--base-url", url, "health"])
    assert res.exit_code == 2, res.output
    assert "base URL" in res.output and "Traceback" not in res.output


def test_a_secret_variable_set_but_empty_is_named_as_empty_not_as_missing():
    from deploy import secrets

    _built, problems = secrets.build(("EMPTY", "MISSING"), None, {"EMPTY": ""})
    assert "environment variable EMPTY is set but empty" in problems
    assert "environment variable MISSING is not set" in problems
