"""Secret redaction: a canary token, resolved from the environment into a pack, never appears
in any output — Rich table, plain lines, JSON lines, JUnit XML, error messages."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import httpx
import pytest

from smoke import secrets
from smoke.commands import run_perf, run_smoke
from smoke.config import AuditSettings
from smoke.secrets import MASK, Redactor

CANARY = "canary-7f3a9c-do-not-print"
QUERY_CANARY = "qcanary-51e0"
ENV = {"CANARY_TOKEN": CANARY, "QUERY_KEY": QUERY_CANARY}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


PACK = """
version: 1
name: canary
defaults:
  retries: {attempts: 2, backoff: 0}
  headers:
    Authorization: "Bearer ${ENV:CANARY_TOKEN}"
checks:
  - name: echo-body
    request: {path: /echo, query: {key: "${ENV:QUERY_KEY}"}}
    expect: {status: 200, body_contains: never-there}
  - name: echo-status
    request: {path: /status}
    expect: {status: 200}
  - name: echo-header
    request: {path: /header}
    expect: {headers: {X-Seen: {equals: nothing}}}
  - name: echo-schema
    request: {path: /schema}
    expect: {schema: {type: object, properties: {auth: {type: integer}}}}
  - name: broken
    request: {path: /broken}
  - name: budget
    mode: warn
    request: {path: /echo}
    expect: {body_matches: '^nope$'}
"""


def echoing_app(request: httpx.Request) -> httpx.Response:
    """The worst case: an app that echoes the credentials it got, everywhere."""
    auth = request.headers.get("authorization", "")
    if request.url.path == "/broken":
        raise httpx.ConnectError(f"refused for {request.url} with {auth}", request=request)
    if request.url.path == "/status":
        return httpx.Response(500, text=f"bad token {auth} " + "x" * 200)
    if request.url.path == "/header":
        return httpx.Response(200, headers={"X-Seen": auth})
    if request.url.path == "/schema":
        return httpx.Response(200, json={"auth": auth})
    # the token cut across the 120-character clip of a detail line
    return httpx.Response(200, text="p" * 100 + auth + str(request.url))


@pytest.fixture
def pack_file(tmp_path: Path) -> Path:
    path = tmp_path / "canary.yml"
    path.write_text(textwrap.dedent(PACK))
    return path


def assert_clean(text: str) -> None:
    assert CANARY not in text
    assert QUERY_CANARY not in text
    # nor any long piece of it (a clipped detail must not leave half a token behind)
    assert CANARY[:12] not in text


@pytest.mark.parametrize("style", ["plain", "rich", "rich-narrow", "json"])
def test_canary_never_in_output_or_junit(
    pack_file: Path, tmp_path: Path, style: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a wide terminal gets the table, a narrow one each detail under its row
    monkeypatch.setenv("COLUMNS", "70" if style == "rich-narrow" else "160")
    out = Tty() if style.startswith("rich") else io.StringIO()
    err = io.StringIO()
    junit = tmp_path / "junit.xml"
    code = run_smoke(
        base_url="http://app",
        packs=[pack_file],
        junit=junit,
        json_out=style == "json",
        out=out,
        err=err,
        client=httpx.Client(transport=httpx.MockTransport(echoing_app)),
        clock=Clock(),
        environ=ENV,
    )
    assert code == 1
    text = out.getvalue()
    assert "echo-status" in text and MASK in text  # it ran, and masked what it showed
    if style == "rich":
        assert "┃" in text or "│" in text
    if style == "rich-narrow":
        assert "\n      expected" in text
    for output in (text, err.getvalue(), junit.read_text()):
        assert_clean(output)


def test_canary_never_in_pack_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text(textwrap.dedent(PACK).replace("${ENV:QUERY_KEY}", "${ENV:MISSING}"))
    err = io.StringIO()
    code = run_smoke(base_url="http://app", packs=[path], err=err, environ=ENV)
    assert code == 2
    assert "MISSING" in err.getvalue()
    assert_clean(err.getvalue())


def test_audit_tokens_masked(tmp_path: Path) -> None:
    def app(request: httpx.Request) -> httpx.Response:
        # reflects both tokens into headers the audit looks at, and fails the checks
        seen = request.headers.get("x-health-token", "") + request.headers.get("authorization", "")
        return httpx.Response(500, headers={"X-Frame-Options": seen}, text=f"seen {seen}")

    out = io.StringIO()
    settings = AuditSettings(
        enabled=True, ready_token_env="CANARY_TOKEN", metrics_token_env="QUERY_KEY"
    )
    code = run_smoke(
        base_url="http://app",
        audit=settings,
        out=out,
        client=httpx.Client(transport=httpx.MockTransport(app)),
        clock=Clock(),
        environ=ENV,
    )
    assert code == 1
    assert_clean(out.getvalue())


def test_extra_secrets_from_the_caller_are_masked(pack_file: Path) -> None:
    out = io.StringIO()

    def app(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="deploy-side-secret-value")

    run_smoke(
        base_url="http://app",
        packs=[pack_file],
        out=out,
        client=httpx.Client(transport=httpx.MockTransport(app)),
        clock=Clock(),
        environ=ENV,
        extra_secrets=["deploy-side-secret-value"],
    )
    assert "deploy-side-secret-value" not in out.getvalue()


def test_perf_output_masks_too(tmp_path: Path) -> None:
    path = tmp_path / "perf.yml"
    path.write_text(
        textwrap.dedent(PACK) + "perf: {requests: 3, concurrency: 1, warmup: 0, endpoints: "
        "[{check: broken, p95_ms: 100}]}\n"
    )
    for json_out in (False, True):
        out = io.StringIO()
        code = run_perf(
            base_url="http://app",
            packs=[path],
            json_out=json_out,
            out=out,
            client=httpx.Client(transport=httpx.MockTransport(echoing_app)),
            environ=ENV,
        )
        assert code == 0  # informational
        assert "ConnectError" in out.getvalue()
        assert_clean(out.getvalue())


def test_redactor() -> None:
    r = Redactor(["abcd", "abcdefgh", "xy", None])  # type: ignore[list-item]
    assert r("k=abcdefgh and abcd and xy") == f"k={MASK} and {MASK} and xy"
    assert r.secrets == ("abcd", "abcdefgh")


def test_resolve() -> None:
    assert secrets.resolve("Bearer ${ENV:T}", {"T": "tttt"}) == ("Bearer tttt", ("tttt",))
    assert secrets.resolve("plain", {}) == ("plain", ())
    with pytest.raises(secrets.SecretError, match="not a valid reference"):
        secrets.resolve("${ENV:1BAD}", {})
    with pytest.raises(secrets.SecretError, match="not a valid reference"):
        secrets.resolve("${ENV:T", {"T": "tttt"})


def test_json_lines_are_valid_after_masking(pack_file: Path) -> None:
    out = io.StringIO()
    run_smoke(
        base_url="http://app",
        packs=[pack_file],
        json_out=True,
        out=out,
        client=httpx.Client(transport=httpx.MockTransport(echoing_app)),
        clock=Clock(),
        environ=ENV,
    )
    for line in out.getvalue().splitlines():
        json.loads(line)


def test_password_in_base_url_is_masked(pack_file: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_smoke(
        base_url="http://user:url-pass-9876@app",
        packs=[pack_file],
        out=out,
        client=httpx.Client(transport=httpx.MockTransport(echoing_app)),
        clock=Clock(),
        environ=ENV,
    )
    assert code == 1 and "url-pass-9876" not in out.getvalue()
    code = run_smoke(base_url="ftp://user:url-pass-9876@app", packs=[pack_file], err=err)
    assert code == 2 and "url-pass-9876" not in err.getvalue() and "ftp://" in err.getvalue()
