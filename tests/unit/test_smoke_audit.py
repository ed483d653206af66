"""The readiness audit pack: which checks the settings produce, and each audit expectation
against a well-behaved app (httpx.MockTransport) and the misbehaviour it must catch."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from pydantic import ValidationError

from smoke.audit import (
    UNKNOWN_FIELD,
    CorsAllows,
    CorsRefuses,
    FramePolicy,
    Hsts,
    ReferrerPolicy,
    audit_pack,
)
from smoke.config import AUDIT_CHECKS, AuditSettings, MutationSettings
from smoke.model import Answer
from smoke.pack import PackError
from smoke.runner import run_pack

ENV = {"HT": "ready-token-1", "MT": "metrics-token-2"}
FULL = AuditSettings(
    enabled=True,
    ready_token_env="HT",
    metrics_token_env="MT",
    cors_allowed_origin="https://app.example",
    mutation=MutationSettings(path="/api/items", body={"name": "a", "price_cents": 1}),
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.lock = threading.Lock()

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds


def good_app(request: httpx.Request) -> httpx.Response:
    """Answers the way the seed checklists ask for."""
    headers = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Strict-Transport-Security": "max-age=31536000",
        "X-Request-Id": request.headers.get("x-request-id", "generated-1"),
    }
    if request.headers.get("origin") == "https://app.example":
        headers["Access-Control-Allow-Origin"] = "https://app.example"
    path = request.url.path
    if path == "/health/ready":
        ok = request.headers.get("x-health-token") == ENV["HT"]
        return httpx.Response(200 if ok else 401, headers=headers)
    if path == "/metrics":
        if request.headers.get("authorization") != f"Bearer {ENV['MT']}":
            return httpx.Response(401, headers=headers)
        headers["Content-Type"] = "text/plain; version=0.0.4"
        return httpx.Response(200, headers=headers, text="# TYPE up gauge\nup 1\n")
    if path == "/api/items" and request.method == "POST":
        body = json.loads(request.content)
        return httpx.Response(400 if set(body) - {"name", "price_cents"} else 201, headers=headers)
    return httpx.Response(200, headers=headers, json={"status": "live"})


def run(settings: AuditSettings, handler, base_url: str = "http://app"):
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return run_pack(
        audit_pack(settings, environ=ENV), base_url=base_url, client=client, clock=Clock()
    )


def test_full_settings_produce_every_check() -> None:
    pack = audit_pack(FULL, environ=ENV)
    assert [c.name for c in pack.checks] == list(AUDIT_CHECKS)
    assert pack.name == "readiness-audit"
    assert set(pack.secret_values()) == {"ready-token-1", "metrics-token-2"}
    mutation = pack.checks[-1]
    assert mutation.retry.attempts == 1  # a write is never repeated
    assert mutation.request.json_body == {"name": "a", "price_cents": 1, UNKNOWN_FIELD: True}


def test_defaults_omit_what_is_not_configured() -> None:
    names = [c.name for c in audit_pack(AuditSettings(enabled=True), environ={}).checks]
    assert "ready-with-token" not in names
    assert "cors-allowed-origin" not in names
    assert "mutation-rejects-unknown-fields" not in names
    assert {"ready-refuses-anonymous", "metrics-refuses-anonymous", "cors-other-origin"} <= set(
        names
    )
    no_metrics = AuditSettings(enabled=True, metrics_path=None)
    assert not any(c.name.startswith("metrics") for c in audit_pack(no_metrics, environ={}).checks)


def test_per_check_modes() -> None:
    settings = FULL.model_copy(
        update={"mode": "warn", "checks": {"header-hsts": "off", "live-open": "enforce"}}
    )
    pack = audit_pack(settings, environ=ENV)
    modes = {c.name: c.mode for c in pack.checks}
    assert "header-hsts" not in modes
    assert modes["live-open"] == "enforce"
    assert modes["cors-other-origin"] == "warn"


def test_unknown_check_name_in_settings_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        AuditSettings(checks={"no-such-check": "off"})  # type: ignore[dict-item]
    assert "live-open" in str(exc.value)


def test_missing_token_variable_is_a_pack_error() -> None:
    with pytest.raises(PackError) as exc:
        audit_pack(FULL, environ={"HT": "ready-token-1"})
    assert "smoke.audit.metrics_token_env" in exc.value.message
    assert "MT, which is not set" in exc.value.message
    assert "ready-token-1" not in exc.value.message


def test_good_app_passes_everything() -> None:
    result = run(FULL, good_app)
    assert result.ok, result.lines(all_checks=True)
    assert len(result.checks) == len(AUDIT_CHECKS)
    hsts = next(c for c in result.checks if c.name == "header-hsts")
    assert "not applicable over http" in hsts.detail
    assert run(FULL, good_app, base_url="https://app").ok


def misbehaving(**changes):
    """good_app with some response headers changed (None removes) or statuses overridden."""

    def handler(request: httpx.Request) -> httpx.Response:
        response = good_app(request)
        key = (request.method, request.url.path)
        status = changes.get("status", {}).get(key, response.status_code)
        headers = dict(response.headers)
        for name, value in changes.get("headers", {}).items():
            headers.pop(name.lower(), None)
            if value is not None:
                headers[name] = value
        text = changes.get("text", {}).get(key, response.text)
        return httpx.Response(status, headers=headers, text=text)

    return handler


@pytest.mark.parametrize(
    ("check", "handler", "detail"),
    [
        ("live-open", misbehaving(status={("GET", "/health/live"): 401}), "got 401"),
        (
            "ready-refuses-anonymous",
            misbehaving(status={("GET", "/health/ready"): 200}),
            "expected status 401 or 403 got 200",
        ),
        ("header-nosniff", misbehaving(headers={"X-Content-Type-Options": None}), "nosniff"),
        ("header-frame-policy", misbehaving(headers={"X-Frame-Options": None}), "clickjacking"),
        ("header-frame-policy", misbehaving(headers={"X-Frame-Options": "ALLOW"}), "'ALLOW'"),
        ("header-referrer-policy", misbehaving(headers={"Referrer-Policy": None}), "no such"),
        (
            "header-referrer-policy",
            misbehaving(headers={"Referrer-Policy": "unsafe-url"}),
            "full URLs leak",
        ),
        ("cors-other-origin", misbehaving(headers={"Access-Control-Allow-Origin": "*"}), "any"),
        (
            "request-id-echoed",
            misbehaving(headers={"X-Request-Id": "other"}),
            "expected header X-Request-Id = 'rg-audit-",
        ),
        ("metrics-refuses-anonymous", misbehaving(status={("GET", "/metrics"): 200}), "got 200"),
        (
            "metrics-prometheus",
            misbehaving(text={("GET", "/metrics"): '{"up": 1}'}),
            "expected body matching",
        ),
        (
            "mutation-rejects-unknown-fields",
            misbehaving(status={("POST", "/api/items"): 201}),
            f"the unknown field '{UNKNOWN_FIELD}' must be rejected",
        ),
    ],
)
def test_each_check_catches_its_misbehaviour(check: str, handler, detail: str) -> None:
    result = run(FULL, handler)
    failed = {c.name: c.detail for c in result.failed_enforced}
    assert check in failed, result.lines(all_checks=True)
    assert detail in failed[check]


def test_hsts_over_https() -> None:
    result = run(FULL, misbehaving(headers={"Strict-Transport-Security": None}), "https://app")
    assert [c.name for c in result.failed_enforced] == ["header-hsts"]
    assert "expected header Strict-Transport-Security" in result.failed_enforced[0].detail


def answer(headers: dict[str, str], scheme: str = "http") -> Answer:
    return Answer(200, httpx.Headers(headers), "", 1.0, scheme)


def test_frame_policy_accepts_csp_frame_ancestors() -> None:
    assert FramePolicy().check(answer({"X-Frame-Options": "sameorigin"})) is None
    csp = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"}
    assert FramePolicy().check(answer(csp)) is None


def test_hsts_needs_positive_max_age() -> None:
    bad = answer({"Strict-Transport-Security": "max-age=0"}, "https")
    assert "max-age > 0" in (Hsts().check(bad) or "")
    assert Hsts().note(bad) is None


def test_cors_expectations() -> None:
    origin = "https://app.example"
    assert CorsAllows(origin).check(answer({"Access-Control-Allow-Origin": "*"})) is None
    assert "no such header" in (CorsAllows(origin).check(answer({})) or "")
    assert CorsRefuses(origin).check(answer({})) is None
    other = {"Access-Control-Allow-Origin": "https://elsewhere.example"}
    assert CorsRefuses(origin).check(answer(other)) is None  # not the requester: harmless
    reflected = CorsRefuses(origin).check(answer({"Access-Control-Allow-Origin": origin}))
    assert reflected is not None and "it is reflected" in reflected


def test_referrer_policy() -> None:
    assert ReferrerPolicy().check(answer({"Referrer-Policy": "strict-origin"})) is None
