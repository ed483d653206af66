"""One JSON format for every command: each line valid against the packaged JSON Schema
(smoke/output.schema.json), the last line one outcome, stdout never empty with --json, and
every `result` the schema allows documented in docs/json-output.md. Flows run on the fake
host with the JSON reporter; the commands through Click's runner."""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from click.testing import CliRunner

from deploy import flow
from deploy.artifact import Source
from deploy.cli import main
from deploy.deps import Deps
from deploy.errors import ReleasegateError
from deploy.inventory import parse
from deploy.locking import lock_manually, unlock
from deploy.plan import PlanRemote
from deploy.report import JsonReporter
from deploy.status import host_status
from smoke import jsonlines
from tests.conftest import git
from tests.fakehost import FakeClock, FakeHost, FakeRemote, app_handler
from tests.unit import test_ci

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = jsonlines.schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

INVENTORY = """
hosts: [{name: web1, address: 10.0.0.5, user: deploy, root: /srv/app}]
app: {name: app, repo: ., install: npm ci}
process: {command: server.js, port: 3000, instances: 2}
health: {deadline: 5, interval: 0.5, successes: 3}
"""


def records(stdout: str) -> list[dict[str, Any]]:
    """Every line valid against the schema; the last, and only the last, an outcome."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "stdout is empty with --json"
    parsed = [json.loads(line) for line in lines]
    for record in parsed:
        errors = sorted(VALIDATOR.iter_errors(record), key=str)
        assert not errors, f"{record}\n" + "\n".join(e.message for e in errors)
    assert [r["event"] for r in parsed].count("outcome") == 1
    assert parsed[-1]["event"] == "outcome"
    return parsed


def test_the_schema_is_a_valid_json_schema_shipped_in_the_package():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert jsonlines.SCHEMA.parent.name == "smoke"  # package data (pyproject: smoke/*.json)


def test_every_result_and_event_the_schema_allows_is_documented():
    doc = (ROOT / "docs" / "json-output.md").read_text()
    for result in SCHEMA["$defs"]["result"]["enum"]:
        assert f"`{result}`" in doc, f"result {result!r} is not in docs/json-output.md"
    for event in SCHEMA["properties"]["event"]["enum"]:
        assert f"| `{event}` |" in doc, f"event {event!r} is not in docs/json-output.md"


def test_a_row_keyed_by_an_empty_column_name_is_refused_by_the_schema():
    row = {"event": "table", "t": 0, "title": "x", "columns": [""], "rows": [{"": "ok"}]}
    assert list(VALIDATOR.iter_errors(row))


# ---------------------------------------------------------------- flows on the fake host


@pytest.fixture
def world(tmp_path: Path, app_repo: Path) -> Iterator[tuple[Deps, io.StringIO, Path]]:
    inv = parse(INVENTORY, source=tmp_path / "inventories" / "prod.yml", env="prod")
    clock = FakeClock()
    remote = FakeRemote(FakeHost(), clock)
    out = io.StringIO()
    deps = Deps(
        inventory=inv,
        remote=remote,
        reporter=JsonReporter(stream=out),
        clock=clock,
        actor="tester",
        workdir=tmp_path / "work",
        http=lambda base, timeout: httpx.Client(base_url=base, transport=app_handler(remote)),
    )
    yield deps, out, app_repo


def commit(repo: Path, name: str) -> None:
    (repo / "version.txt").write_text(f"{name}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", name)


def run_op(
    deps: Deps, out: io.StringIO, op: str, body: Callable[[Deps], Any]
) -> list[dict[str, Any]]:
    """One operation as the CLI runs it: a fresh reporter, then finish() with its code."""
    out.seek(0)
    out.truncate()
    rep = JsonReporter(stream=out)
    deps = dataclasses.replace(deps, reporter=rep)
    if isinstance(deps.remote, PlanRemote):
        deps = dataclasses.replace(deps, remote=PlanRemote(deps.remote._real, rep))
    try:
        result = body(deps)
        code = result.exit_code if hasattr(result, "exit_code") else 0
    except ReleasegateError as exc:
        rep.error(exc.message, exc.evidence, exit_code=exc.exit_code)
        code = exc.exit_code
    rep.finish(op, code)
    return records(out.getvalue())


def test_deploy_rollback_status_lock_and_dry_run_json_match_the_schema(world):
    deps, out, repo = world
    deploy = lambda d: flow.deploy(d, Source(repo=repo, revision="HEAD"))  # noqa: E731

    commit(repo, "one")
    got = run_op(deps, out, "deploy", deploy)
    assert got[-1]["result"] == "promoted"
    assert {"stage", "command"} <= {r["event"] for r in got}

    commit(repo, "two")
    remote = deps.remote
    assert isinstance(remote, FakeRemote)
    remote.next_fault = "ready_503"
    got = run_op(deps, out, "deploy", deploy)
    assert (got[-1]["result"], got[-1]["exit_code"]) == ("rolled-back", 3)

    got = run_op(deps, out, "status", lambda d: d.reporter.status(host_status(d)))
    assert [r["event"] for r in got] == ["status", "outcome"]

    assert run_op(deps, out, "lock", lambda d: lock_manually(d, "db"))[-1]["result"] == ("locked")
    locked = run_op(deps, out, "deploy", deploy)
    assert (locked[-1]["result"], locked[-1]["exit_code"]) == ("error", 4)
    unlocked = run_op(deps, out, "unlock", lambda d: unlock(d, force=False, reason=None))
    assert unlocked[-1]["result"] == "unlocked"

    commit(repo, "three")
    plan = dataclasses.replace(deps, remote=PlanRemote(remote, deps.reporter), dry_run=True)
    planned = run_op(plan, out, "deploy", deploy)
    assert planned[-1]["result"] == "planned"


# ---------------------------------------------------------------- commands via Click


@pytest.fixture
def site() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "ok"}'
            self.send_response(200 if self.path.startswith("/health") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


PERF_PACK = """
version: 1
name: hot
checks:
  - name: live
    request: {path: /health/live}
perf:
  requests: 5
  concurrency: 2
  endpoints:
    - {check: live, p95_ms: 5000}
"""


def cli(args: list[str]) -> tuple[int, list[dict[str, Any]]]:
    res = CliRunner().invoke(main, ["--json", *args])
    assert "Traceback" not in res.output
    return res.exit_code, records(res.stdout)


@pytest.mark.parametrize(
    "args",
    [
        ["deploy", "nosuch"],
        ["rollback", "nosuch", "--dry-run"],
        ["resolve", "nosuch"],
        ["preflight", "nosuch"],
        ["setup", "nosuch"],
        ["releases", "nosuch"],
        ["history", "nosuch"],
        ["lock", "nosuch", "-m", "why"],
        ["unlock", "nosuch"],
        ["status", "nosuch"],
        ["trust-host", "nosuch", "--yes"],
        ["smoke", "nosuch"],
        ["perf", "nosuch"],
        ["ci", "github", "--env", "nosuch"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_command_ends_a_config_error_with_an_outcome(args: list[str], tmp_path: Path):
    code, got = cli(["--inventories", str(tmp_path), *args])
    assert code == 2
    assert (got[-1]["result"], got[-1]["exit_code"]) == ("error", 2)
    assert "nosuch" in got[-1]["message"]


def test_smoke_json_passes_fails_and_errors_in_the_one_format(site: str, tmp_path: Path):
    code, got = cli(["smoke", site, "health"])
    assert code == 0 and got[-1]["op"] == "smoke" and got[-1]["result"] == "passed"
    assert {r["event"] for r in got[:-1]} == {"check"}

    code, got = cli(["smoke", "--base-url", site, "--audit"])
    assert code == 1 and got[-1]["result"] == "failed"
    assert got[-1]["evidence"] and got[-1]["smoke"]["failed"] > 0

    code, got = cli(["smoke", "--base-url", site, str(tmp_path / "missing.yml")])
    assert code == 2 and got[-1]["result"] == "error" and got[0]["event"] == "error"


def test_perf_json_in_the_one_format(site: str, tmp_path: Path):
    pack = tmp_path / "hot.yml"
    pack.write_text(PERF_PACK)
    code, got = cli(["perf", "--base-url", site, str(pack)])
    assert code == 0
    assert got[-1]["op"] == "perf" and got[-1]["result"] == "passed"
    assert [r["event"] for r in got[:-1]] == ["perf"]
    saved = tmp_path / "baseline.json"
    code, got = cli(["perf", "--base-url", site, str(pack), "--save-baseline", str(saved)])
    assert code == 0 and saved.is_file()
    code, got = cli(["perf", "--base-url", site, str(pack), "--baseline", str(saved)])
    assert code == 0 and got[-1]["perf"]["baseline"]["file"] == str(saved)
    assert got[0]["baseline"]["status"] in ("ok", "over", "regressed")
    code, got = cli(["perf-trend", str(tmp_path / "baseline.history.jsonl")])
    assert code == 0 and got[-1]["op"] == "perf-trend" and "```mermaid" in got[-1]["markdown"]
    code, got = cli(["perf-trend", str(tmp_path / "no-history.jsonl")])
    assert code == 2 and got[-1]["result"] == "error"
    code, got = cli(["perf", "--base-url", site, "health"])  # no perf: section
    assert code == 2 and got[-1]["result"] == "error"


@pytest.fixture
def ci_repo(tmp_path: Path) -> Path:
    """An app repository with a prod inventory and a pinned key (as in test_ci.py)."""
    root = tmp_path / "shop"
    (root / "inventories").mkdir(parents=True)
    (root / "smoke").mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "inventories" / "prod.yml").write_text(test_ci.INVENTORY)
    (root / "smoke" / "contract.yml").write_text(test_ci.PACK)
    (root / "inventories" / "known_hosts").write_text(test_ci.pinned_line("10.0.0.5"))
    return root


def test_ci_github_json(ci_repo: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ci_repo)
    pinned = ["--install", "releasegate @ git+https://github.com/acme/releasegate@v0.1.0"]
    code, got = cli(["ci", "github", "--env", "prod", *pinned])
    assert code == 0 and (got[-1]["op"], got[-1]["result"]) == ("ci", "ok")
    code, got = cli(["ci", "github", "--env", "prod", *pinned])  # they exist now: refused
    assert code == 2 and got[-1]["result"] == "error"


def test_sandbox_status_json(tmp_path: Path):
    code, got = cli(["sandbox", "status", "--name", "rgnone", "--index", "23"])
    assert code == 1
    assert (got[-1]["op"], got[-1]["result"]) == ("sandbox-status", "not-running")


def test_global_json_after_the_command_is_the_same_format(tmp_path: Path):
    res = CliRunner().invoke(main, ["status", "nosuch", "--inventories", str(tmp_path), "--json"])
    assert records(res.stdout)[-1]["exit_code"] == 2


def test_docs_list_no_result_the_code_cannot_produce():
    """Every result named in docs/json-output.md's result list is in the schema."""
    doc = (ROOT / "docs" / "json-output.md").read_text()
    listed = re.search(r"`outcome\.result` is one of (.*?)\.", doc, re.S)
    assert listed is not None
    named = set(re.findall(r"`([a-z-]+)`", listed.group(1)))
    assert named <= set(SCHEMA["$defs"]["result"]["enum"])


def test_a_many_host_outcome_matches_the_schema():
    from deploy.model import HostLive, Outcome

    out = io.StringIO()
    rep = JsonReporter(stream=out)
    hosts = (
        HostLive("web1", "r1", "r2", "promoted", True),
        HostLive("web2", "r1", None, "unknown", False),
    )
    rep.table("hosts after deploy", ["host", "live"], [["web1", "r2"], ["web2", "?"]])
    rep.outcome(Outcome("deploy", "promoted", 0, "r2", "r2", "ok", hosts=hosts))
    rep.finish("deploy", 0)
    assert records(out.getvalue())[-1]["hosts"][1]["live"] is None
