"""The built-in readiness audit pack: the items of the seed checklists that can be observed
from outside, as live checks against a deployed app.

    live-open                        /health/live answers 200 without credentials
    ready-refuses-anonymous          /health/ready refuses without its token (401/403)
    ready-with-token                 … and answers 200 with it        (when ready_token_env is set)
    header-nosniff                   X-Content-Type-Options: nosniff
    header-frame-policy              X-Frame-Options DENY/SAMEORIGIN, or CSP frame-ancestors
    header-referrer-policy           Referrer-Policy present, not unsafe-url
    header-hsts                      Strict-Transport-Security with max-age > 0 (https only)
    cors-allowed-origin              an allow-listed Origin gets Access-Control-Allow-Origin
    cors-other-origin                another Origin does not (nor `*`)
    request-id-echoed                X-Request-Id sent → the same value comes back
    request-id-generated             no X-Request-Id sent → one is generated
    metrics-refuses-anonymous        /metrics refuses without credentials (401/403)
    metrics-prometheus               /metrics with credentials serves Prometheus text
    mutation-rejects-unknown-fields  a write with an unknown JSON field gets 400/422

The pack is built in code from AuditSettings (paths, origins, token variables, per-check
mode); it is an ordinary Pack, run and reported like any other.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from smoke import secrets
from smoke.config import AuditSettings
from smoke.expect import BodyMatches, HeaderRule, StatusIn
from smoke.model import Answer, Check, Expectation, Pack, Request, RetryPolicy
from smoke.pack import DEFAULT_USER_AGENT, PackError

PACK_NAME = "readiness-audit"
UNKNOWN_FIELD = "releasegate_audit_unknown_field"
NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Hinted:
    """Another expectation, with what its failure means for readiness appended."""

    inner: Expectation
    hint: str

    def check(self, answer: Answer) -> str | None:
        failure = self.inner.check(answer)
        return None if failure is None else f"{failure} — {self.hint}"


@dataclass(frozen=True)
class FramePolicy:
    def check(self, answer: Answer) -> str | None:
        xfo = answer.headers.get("x-frame-options")
        csp = answer.headers.get("content-security-policy", "")
        if xfo is not None and xfo.strip().upper() in {"DENY", "SAMEORIGIN"}:
            return None
        if "frame-ancestors" in csp.lower():
            return None
        got = f"X-Frame-Options {answer.show(xfo, 60)!r}" if xfo is not None else "neither"
        return (
            "expected a frame policy (X-Frame-Options DENY or SAMEORIGIN, or a "
            f"Content-Security-Policy with frame-ancestors) got {got} — pages can be framed "
            "(clickjacking)"
        )


@dataclass(frozen=True)
class ReferrerPolicy:
    def check(self, answer: Answer) -> str | None:
        value = answer.headers.get("referrer-policy")
        if value is None:
            return "expected header Referrer-Policy (e.g. no-referrer) got no such header"
        if "unsafe-url" in value.lower():
            return (
                f"expected a Referrer-Policy that keeps URLs private got "
                f"{answer.show(value, 60)!r} — full URLs leak to other sites"
            )
        return None


@dataclass(frozen=True)
class Hsts:
    """Judged over https only: browsers ignore HSTS sent over plain http."""

    def check(self, answer: Answer) -> str | None:
        if answer.scheme != "https":
            return None
        value = answer.headers.get("strict-transport-security")
        if value is None:
            return "expected header Strict-Transport-Security (max-age=…) got no such header"
        match = re.search(r"max-age\s*=\s*\"?(\d+)", value, re.I)
        if not match or int(match.group(1)) <= 0:
            return (
                f"expected Strict-Transport-Security with max-age > 0 got "
                f"{answer.show(value, 60)!r}"
            )
        return None

    def note(self, answer: Answer) -> str | None:
        if answer.scheme != "https":
            return "not applicable over http (HSTS only counts over https)"
        return None


@dataclass(frozen=True)
class CorsAllows:
    origin: str

    def check(self, answer: Answer) -> str | None:
        value = answer.headers.get("access-control-allow-origin")
        if value in {self.origin, "*"}:
            return None
        got = "no such header" if value is None else repr(answer.show(value, 80))
        return (
            f"expected Access-Control-Allow-Origin {self.origin!r} for that allow-listed "
            f"Origin got {got} — check the app's CORS allowlist (e.g. CORS_ORIGINS)"
        )


@dataclass(frozen=True)
class CorsRefuses:
    origin: str

    def check(self, answer: Answer) -> str | None:
        value = answer.headers.get("access-control-allow-origin")
        if value is None or value.strip() not in {self.origin, "*"}:
            return None
        why = "any origin may read responses" if value.strip() == "*" else "it is reflected"
        return (
            f"expected no Access-Control-Allow-Origin for the origin {self.origin!r} (not on "
            f"the allowlist) got {answer.show(value, 80)!r} — {why}; allow listed origins only"
        )


def audit_pack(settings: AuditSettings, *, environ: Mapping[str, str] | None = None) -> Pack:
    """The audit checks enabled by `settings` as a Pack. Raises PackError when a token
    variable it names is unset (the message names the variable, never a value)."""
    env = os.environ if environ is None else environ
    used: list[str] = []

    def token(field: str, name: str | None) -> str | None:
        if name is None:
            return None
        try:
            value, values = secrets.resolve(f"${{ENV:{name}}}", env)
        except secrets.SecretError as exc:
            raise PackError(f"smoke.audit.{field}: {exc}.") from None
        used.extend(values)
        return value

    ready_token = token("ready_token_env", settings.ready_token_env)
    metrics_token = token("metrics_token_env", settings.metrics_token_env)
    modes: dict[str, Literal["enforce", "warn", "off"]] = {
        str(name): mode for name, mode in settings.checks.items()
    }
    checks = []
    for check in _checks(settings, ready_token, metrics_token):
        mode = modes.get(check.name, settings.mode)
        if mode != "off":
            checks.append(replace(check, mode=mode, timeout=settings.timeout))
    return Pack(
        name=PACK_NAME,
        checks=tuple(checks),
        source="built-in readiness audit (smoke.audit)",
        description="production-readiness audit from the seed checklists",
        secrets=tuple(sorted(set(used))),
    )


def _get(path: str, *headers: tuple[str, str]) -> Request:
    return Request(method="GET", path=path, headers=(("User-Agent", DEFAULT_USER_AGENT), *headers))


def _check(
    name: str,
    request: Request,
    status: Expectation,
    *expectations: Expectation,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen, immutable)
) -> Check:
    return Check(name=name, request=request, status=status, expectations=expectations, retry=retry)


def _checks(s: AuditSettings, ready_token: str | None, metrics_token: str | None) -> list[Check]:
    ok = StatusIn(codes=frozenset({200}))
    refused = StatusIn(codes=frozenset({401, 403}))
    out = [
        _check(
            "live-open",
            _get(s.live_path),
            Hinted(ok, "liveness must answer without credentials or dependencies"),
        ),
        _check(
            "ready-refuses-anonymous",
            _get(s.ready_path),
            Hinted(
                refused, f"{s.ready_path} is internal: require a token ({s.ready_token_header})"
            ),
        ),
    ]
    if ready_token is not None:
        out.append(
            _check(
                "ready-with-token",
                _get(s.ready_path, (s.ready_token_header, ready_token)),
                Hinted(
                    ok,
                    f"the app is not ready (a dependency it checks, such as its database, "
                    f"may be down), or does not accept {s.ready_token_header}",
                ),
            )
        )
    page = _get(s.headers_path)
    out += [
        _check(
            "header-nosniff",
            page,
            ok,
            HeaderRule("X-Content-Type-Options", matches=re.compile(r"(?i)^\s*nosniff\s*$")),
        ),
        _check("header-frame-policy", page, ok, FramePolicy()),
        _check("header-referrer-policy", page, ok, ReferrerPolicy()),
        _check("header-hsts", page, ok, Hsts()),
    ]
    if s.cors_allowed_origin is not None:
        out.append(
            _check(
                "cors-allowed-origin",
                _get(s.headers_path, ("Origin", s.cors_allowed_origin)),
                ok,
                CorsAllows(s.cors_allowed_origin),
            )
        )
    out.append(
        _check(
            "cors-other-origin",
            _get(s.headers_path, ("Origin", s.cors_other_origin)),
            ok,
            CorsRefuses(s.cors_other_origin),
        )
    )
    request_id = f"rg-audit-{uuid.uuid4().hex}"
    out += [
        _check(
            "request-id-echoed",
            _get(s.headers_path, (s.request_id_header, request_id)),
            ok,
            HeaderRule(s.request_id_header, equals=request_id),
        ),
        _check(
            "request-id-generated",
            page,
            ok,
            HeaderRule(s.request_id_header, matches=re.compile(r"\S")),
        ),
    ]
    if s.metrics_path is not None:
        auth = f"{s.metrics_auth_scheme} {metrics_token}".strip() if metrics_token else None
        with_auth = ((s.metrics_auth_header, auth),) if auth else ()
        out += [
            _check(
                "metrics-refuses-anonymous",
                _get(s.metrics_path),
                Hinted(refused, f"{s.metrics_path} is internal: require credentials"),
            ),
            _check(
                "metrics-prometheus",
                _get(s.metrics_path, *with_auth),
                ok,
                HeaderRule(
                    "Content-Type",
                    matches=re.compile(r"(?i)^(text/plain|application/openmetrics-text)"),
                ),
                BodyMatches(re.compile(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* ", re.M)),
            ),
        ]
    if s.mutation is not None:
        m = s.mutation
        out.append(
            _check(
                "mutation-rejects-unknown-fields",
                Request(
                    method=m.method,
                    path=m.path,
                    headers=(("User-Agent", DEFAULT_USER_AGENT),),
                    json_body={**m.body, UNKNOWN_FIELD: True},
                    has_json=True,
                ),
                Hinted(
                    StatusIn(codes=frozenset({400, 422})),
                    f"a body with the unknown field {UNKNOWN_FIELD!r} must be rejected "
                    f"(strict validation)",
                ),
                retry=NO_RETRY,  # never repeat a write
            )
        )
    return out
