"""The functions behind the doors (exit codes 0/1/2, JUnit file, ENV resolution through an
injected resolver), the Click commands' argument handling, and the `smoke:` settings."""

from __future__ import annotations

import ast
import contextlib
import io
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from smoke import cli, commands
from smoke.commands import (
    Target,
    TargetUnavailable,
    load_packs,
    pack_paths,
    packs_from_settings,
    run_smoke,
    run_smoke_env,
    target_from_settings,
)
from smoke.config import AuditSettings, SmokeSettings
from smoke.pack import BUILTIN_DIR, PackError

PACK = """
version: 1
name: api
checks:
  - {name: a, request: {path: /a}, expect: {status: 200}}
  - {name: b, request: {path: /b}, expect: {status: 200}}
"""


class Clock:
    t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def pack_file(tmp_path: Path) -> Path:
    path = tmp_path / "api.yml"
    path.write_text(textwrap.dedent(PACK))
    return path


def client(status_b: int = 200) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status_b if request.url.path == "/b" else 200)

    return httpx.Client(transport=httpx.MockTransport(handler))


def smoke(**kw) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    kw.setdefault("base_url", "http://app")
    kw.setdefault("environ", {})
    kw.setdefault("clock", Clock())
    code = run_smoke(out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


def test_exit_0_when_enforced_checks_pass(pack_file: Path) -> None:
    code, out, err = smoke(packs=[pack_file], client=client())
    assert (code, err) == (0, "")
    assert out.splitlines()[-1].startswith("smoke api: 2/2 passed in")


def test_exit_1_when_a_check_fails_and_junit_is_written(pack_file: Path, tmp_path: Path) -> None:
    junit = tmp_path / "reports" / "smoke.xml"
    junit.parent.mkdir()
    code, out, _ = smoke(packs=[pack_file], client=client(500), junit=junit)
    assert code == 1
    assert "FAIL  b  GET /b  expected status 200 got 500" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"base_url": "localhost:3000"}, "base URL 'localhost:3000' is not usable"),
        ({"packs": []}, "nothing to run: name a pack file"),
        ({"packs": ["missing.yml"]}, "missing.yml: no such pack file"),
        ({"junit": Path("/nonexistent-dir/x.xml")}, "the directory /nonexistent-dir does not"),
        ({"concurrency": 0}, "--concurrency must be at least 1"),
    ],
)
def test_exit_2_before_contacting_anything(pack_file: Path, kw: dict, message: str) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be contacted")

    kw.setdefault("packs", [pack_file])
    code, out, err = smoke(client=httpx.Client(transport=httpx.MockTransport(refuse)), **kw)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err


def test_builtin_pack_by_name_and_relative_paths(pack_file: Path) -> None:
    code, out, _ = smoke(packs=["health", "api.yml"], base_dir=pack_file.parent, client=client())
    assert code == 0
    assert "live" in out and "smoke health, api:" in out


def test_audit_runs_when_enabled(pack_file: Path) -> None:
    code, out, _ = smoke(packs=[], audit=AuditSettings(enabled=True), client=client())
    assert "readiness-audit" in out and "ready-refuses-anonymous" in out
    assert code == 1  # the mock app answers 200 everywhere: readiness is not protected
    code, out, err = smoke(packs=[], audit=AuditSettings(enabled=False), client=client())
    assert code == 2 and "nothing to run" in err


def test_two_packs_with_one_name(pack_file: Path) -> None:
    with pytest.raises(PackError, match="two packs are named 'api'"):
        load_packs([pack_file, pack_file], environ={})


def test_settings_helpers(tmp_path: Path, pack_file: Path) -> None:
    settings = SmokeSettings(
        packs=("api.yml", "health"),
        audit=AuditSettings(enabled=True),
        concurrency=3,
    )
    assert pack_paths(settings, tmp_path) == (pack_file, BUILTIN_DIR / "health.yml")
    packs = packs_from_settings(settings, base_dir=tmp_path, environ={})
    assert [p.name for p in packs] == ["api", "health", "readiness-audit"]
    target = target_from_settings(
        settings, base_dir=tmp_path, base_url="http://127.0.0.1:4000", secrets=["sec-ret"]
    )
    assert target.packs == (pack_file, BUILTIN_DIR / "health.yml")
    assert target.audit == settings.audit and target.concurrency == 3
    assert target.secrets == ("sec-ret",)
    off = target_from_settings(SmokeSettings(), base_dir=tmp_path, base_url="http://x")
    assert off.audit is None and off.packs == ()


# ------------------------------------------------------------------ ENV form --


class Resolver:
    """Records enter/exit, like a tunnel that must stay open for the whole run."""

    def __init__(self, target: Target | None = None, error: TargetUnavailable | None = None):
        self.target = target
        self.error = error
        self.events: list[str] = []

    @contextlib.contextmanager
    def __call__(self, env: str) -> Iterator[Target]:
        self.events.append(f"open {env}")
        if self.error:
            raise self.error
        try:
            assert self.target is not None
            yield self.target
        finally:
            self.events.append("close")


def test_env_form_reports_target_unavailable() -> None:
    resolver = Resolver(error=TargetUnavailable("host key changed for prod", exit_code=7))
    err = io.StringIO()
    assert run_smoke_env("prod", resolver, err=err) == 7
    assert err.getvalue() == "error: host key changed for prod\n"


def test_env_form_uses_the_targets_packs_and_closes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("version: 1\nchecks: [{name: a}]\n")
    resolver = Resolver(Target(base_url="http://127.0.0.1:9", packs=(bad,)))
    err = io.StringIO()
    assert run_smoke_env("staging", resolver, err=err) == 2
    assert "bad.yml" in err.getvalue() and "request: is required" in err.getvalue()
    assert resolver.events == ["open staging", "close"]


# ------------------------------------------------------------------ Click --


def group(resolver=None) -> click.Group:
    @click.group()
    @click.option("--plain", is_flag=True)
    def root(plain: bool) -> None:
        pass

    cli.attach(root, resolver)
    return root


def test_attach_adds_smoke_and_perf() -> None:
    root = group()
    assert set(root.commands) == {"smoke", "perf", "perf-trend"}
    result = CliRunner().invoke(root, ["smoke", "--help"])
    assert result.exit_code == 0
    assert "--junit" in result.output and "Exit codes:" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["smoke"], "give an environment (ENV) or --base-url URL"),
        (["smoke", "prod"], "no environments wired in; use --base-url URL"),
        (["perf"], "give an environment (ENV) or --base-url URL"),
    ],
)
def test_usage_errors_are_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(group(), args)
    assert result.exit_code == 2
    assert message in result.output


def test_pack_path_given_as_env_is_explained(pack_file: Path) -> None:
    result = CliRunner().invoke(group(Resolver()), ["smoke", str(pack_file)])
    assert result.exit_code == 2
    assert "is not an environment name" in result.output
    assert "--base-url URL" in result.output


def test_cli_bad_pack_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("version: 1\n")
    result = CliRunner().invoke(group(), ["smoke", "--base-url", "http://127.0.0.1:9", str(bad)])
    assert result.exit_code == 2
    assert "checks: is required" in result.output


def test_cli_env_form_reaches_the_resolver() -> None:
    resolver = Resolver(error=TargetUnavailable("no inventory staging", exit_code=2))
    result = CliRunner().invoke(group(resolver), ["--plain", "smoke", "staging", "--json"])
    assert result.exit_code == 2
    assert resolver.events == ["open staging"]
    result = CliRunner().invoke(group(resolver), ["perf", "staging", "--mode", "blocking"])
    assert result.exit_code == 2 and resolver.events[-1] == "open staging"


def test_public_api() -> None:
    """What the deploy side wires in; renaming any of these breaks it."""
    for name in (
        "run_smoke",
        "run_perf",
        "run_smoke_env",
        "run_perf_env",
        "load_packs",
        "packs_from_settings",
        "pack_paths",
        "target_from_settings",
        "Target",
        "TargetUnavailable",
        "Resolver",
    ):
        assert hasattr(commands, name), name
    assert callable(cli.attach) and callable(cli.smoke_command) and callable(cli.perf_command)


# ------------------------------------------------------------------ settings --

INVENTORY_SMOKE = """
smoke:
  packs: [../examples/sampleapp/smoke.yml]
  concurrency: 4
  audit:
    enabled: true
    mode: enforce
    checks: {header-hsts: warn}
    ready_token_env: HEALTH_TOKEN
    metrics_token_env: METRICS_TOKEN
    cors_allowed_origin: https://app.example.com
    mutation: {method: POST, path: /api/items, body: {name: audit, price_cents: 1}}
  perf: {mode: blocking, requests: 500, concurrency: 16}
"""


def test_inventory_section_validates() -> None:
    settings = SmokeSettings.model_validate(yaml.safe_load(INVENTORY_SMOKE)["smoke"])
    assert settings.audit.mutation is not None
    assert settings.audit.mutation.body == {"name": "audit", "price_cents": 1}
    assert settings.perf.mode == "blocking"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"audit": {"enabeld": True}}, "audit.enabeld"),
        ({"audit": {"cors_allowed_origin": "https://x.example/path"}}, "use an origin"),
        ({"audit": {"ready_token_env": "not a name"}}, "environment variable name"),
        ({"audit": {"live_path": "health"}}, "use a URL path"),
        ({"audit": {"checks": {"live-open": "maybe"}}}, "audit.checks.live-open"),
        ({"perf": {"mode": "nightly"}}, "perf.mode"),
        ({"concurrency": 0}, "concurrency"),
        ({"base_url": "staging.example.com"}, "use an http:// or https:// URL"),
    ],
)
def test_inventory_section_errors(data: dict, where: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SmokeSettings.model_validate(data)
    assert where in str(exc.value)


def test_smoke_never_imports_deploy() -> None:
    """smoke/ must stay usable on its own, against any URL."""
    package = Path(commands.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("deploy"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("deploy") for a in node.names), path
