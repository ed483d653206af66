"""The contract pack, the readiness audit and perf against the real sample app (node on a
free loopback port, as in test_sampleapp.py); no sandbox VPS needed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from smoke.cli import attach
from smoke.cli import main as smoke_cli
from smoke.commands import run_perf, run_smoke
from smoke.config import AuditSettings, MutationSettings
from tests.integration import test_sampleapp as sampleapp
from tests.integration.test_sampleapp import APP_SRC, App, free_port

pytestmark = pytest.mark.integration

# The sample app's fixtures (npm ci once, a private copy, node on a free port), reused.
installed_app = sampleapp.installed_app
app_dir = sampleapp.app_dir
start_app = sampleapp.start_app

REPO = APP_SRC.parents[1]
PACK = APP_SRC / "smoke.yml"
TOKENS = {"HEALTH_TOKEN": "health-secret-4242", "METRICS_TOKEN": "metrics-secret-4343"}
ORIGIN = "https://app.example.com"
AUDIT = AuditSettings(
    enabled=True,
    ready_token_env="HEALTH_TOKEN",
    metrics_token_env="METRICS_TOKEN",
    cors_allowed_origin=ORIGIN,
    mutation=MutationSettings(path="/api/items", body={"name": "audit", "price_cents": 1}),
)
StartApp = Callable[..., App]


def json_records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_contract_pack_passes(start_app: StartApp, tmp_path: Path) -> None:
    app = start_app()
    junit = tmp_path / "smoke.xml"
    started = time.monotonic()
    result = CliRunner().invoke(
        smoke_cli,
        ["smoke", "--base-url", app.base_url, str(PACK), "--junit", str(junit), "--json"],
    )
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    records = json_records(result.output)
    assert (records[-1]["event"], records[-1]["result"]) == ("outcome", "passed")
    summary = records[-1]["smoke"]
    assert summary["failed"] == 0 and summary["passed"] == summary["total"] == 9
    assert {r["check"] for r in records[:-1]} >= {"items-list", "item-get", "version"}
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("9", "0", "0")
    print(f"\ncontract pack against the sample app: {elapsed * 1000:.0f} ms wall")
    assert elapsed < 10


def test_wrong_contract_fails_the_pack_naming_the_checks(start_app: StartApp) -> None:
    app = start_app(env={"FAULT": "wrong_contract"})
    out, err = io.StringIO(), io.StringIO()
    code = run_smoke(base_url=app.base_url, packs=[PACK], out=out, err=err, plain=True)
    assert code == 1, out.getvalue() + err.getvalue()
    lines = out.getvalue().splitlines()
    failing = [line for line in lines if line.startswith("FAIL")]
    assert len(failing) == 2
    assert failing[0].startswith("FAIL  items-list  GET /api/items  expected body matching")
    assert "at $: 'items' is a required property" in failing[0]
    assert failing[1].startswith("FAIL  item-get  GET /api/items/1")
    assert lines[-1].startswith("smoke sampleapp: 7/9 passed, 2 failed")


def test_audit_passes_against_the_configured_app(start_app: StartApp) -> None:
    app = start_app(env={**TOKENS, "CORS_ORIGINS": ORIGIN})
    out = io.StringIO()
    code = run_smoke(base_url=app.base_url, audit=AUDIT, out=out, environ=TOKENS, plain=True)
    text = out.getvalue()
    assert code == 0, text
    assert "smoke readiness-audit: 14/14 passed" in text
    for secret in TOKENS.values():
        assert secret not in text
    assert "secret" not in app.stdout + app.stderr


def test_audit_catches_the_app_left_open(start_app: StartApp) -> None:
    """The same app without HEALTH_TOKEN, METRICS_TOKEN and CORS_ORIGINS: the audit says so."""
    app = start_app()
    out = io.StringIO()
    code = run_smoke(base_url=app.base_url, audit=AUDIT, out=out, json_out=True, environ=TOKENS)
    assert code == 1
    records = json_records(out.getvalue())
    assert set(records[-1]["smoke"]["failed_checks"]) == {
        "ready-refuses-anonymous",
        "metrics-refuses-anonymous",
        "cors-allowed-origin",
    }


def test_both_packs_together_and_unreachable_app(start_app: StartApp) -> None:
    app = start_app(env={**TOKENS, "CORS_ORIGINS": ORIGIN})
    out = io.StringIO()
    code = run_smoke(
        base_url=app.base_url, packs=[PACK, "health"], audit=AUDIT, out=out, environ=TOKENS
    )
    assert code == 0, out.getvalue()  # the built-in health pack's ready check is warn-only:
    # protected readiness answers 401 without the token, shown but not blocking
    assert "smoke sampleapp, health, readiness-audit: 24/25 passed, 1 warned" in out.getvalue()
    assert "WARN  ready  GET /health/ready  expected status 2xx got 401" in out.getvalue()

    out = io.StringIO()
    code = run_smoke(base_url=f"http://127.0.0.1:{free_port()}", packs=["health"], out=out)
    assert code == 1
    assert "ERROR live  GET /health/live  expected an answer got ConnectError" in out.getvalue()
    assert "(3 attempts in" in out.getvalue()


def test_perf_against_the_sample_app(start_app: StartApp, tmp_path: Path) -> None:
    app = start_app()
    out = io.StringIO()
    code = run_perf(base_url=app.base_url, packs=[PACK], json_out=True, out=out)
    assert code == 0
    records = json_records(out.getvalue())
    perf = [r for r in records if r["event"] == "perf"]
    assert [r["endpoint"] for r in perf] == ["items-list", "item-get"]
    for r in perf:
        assert r["requests"] == 200 and r["errors"] == 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        print(
            f"\nperf {r['endpoint']}: n={r['requests']} c={r['concurrency']} "
            f"p50={r['p50_ms']:.1f} p95={r['p95_ms']:.1f} p99={r['p99_ms']:.1f} ms"
        )

    strict = tmp_path / "strict.yml"
    strict.write_text(
        PACK.read_text().split("\nperf:")[0]
        + textwrap.dedent(
            """
            perf:
              requests: 20
              concurrency: 2
              endpoints:
                - {check: items-list, p50_ms: 0.001}
            """
        )
    )
    out = io.StringIO()
    assert run_perf(base_url=app.base_url, packs=[strict], mode="blocking", out=out) == 1
    assert "BREACH items-list" in out.getvalue() and "> 0.001 ms" in out.getvalue()
    assert run_perf(base_url=app.base_url, packs=[strict], out=io.StringIO()) == 0


def test_standalone_module_exit_codes(start_app: StartApp) -> None:
    """`python -m smoke.cli` needs nothing of deploy/: any URL, exit 0/1/2."""
    good = start_app()
    bad = start_app(env={"FAULT": "wrong_contract"})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smoke.cli", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run("smoke", "--base-url", good.base_url, str(PACK)).returncode == 0
    assert run("smoke", "--base-url", bad.base_url, str(PACK)).returncode == 1
    res = run("smoke", "--base-url", good.base_url, "nope.yml")
    assert res.returncode == 2 and "nope.yml: no such pack file" in res.stderr


def test_attached_commands_honour_the_root_flags(start_app: StartApp) -> None:
    """`releasegate --json --plain smoke …`: the root group's flags reach the command."""
    app = start_app()

    @click.group()
    @click.option("--json", "json_out", is_flag=True)
    @click.option("--plain", is_flag=True)
    def root(json_out: bool, plain: bool) -> None:
        pass

    attach(root)
    result = CliRunner().invoke(root, ["--json", "smoke", "--base-url", app.base_url, str(PACK)])
    assert result.exit_code == 0, result.output
    assert json_records(result.output)[-1]["op"] == "smoke"
    result = CliRunner().invoke(
        root, ["--json", "perf", "--base-url", app.base_url, str(PACK), "-n", "5", "-c", "2"]
    )
    assert result.exit_code == 0, result.output
    assert json_records(result.output)[-1]["op"] == "perf"
