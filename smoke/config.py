"""The `smoke:` section of an inventory. Lives in smoke/ (which never imports deploy/), so the
smoke pack stays usable on its own; deploy.inventory embeds it. docs/smoke.md documents it."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

AuditCheckName = Literal[
    "live-open",
    "ready-refuses-anonymous",
    "ready-with-token",
    "header-nosniff",
    "header-frame-policy",
    "header-referrer-policy",
    "header-hsts",
    "cors-allowed-origin",
    "cors-other-origin",
    "request-id-echoed",
    "request-id-generated",
    "metrics-refuses-anonymous",
    "metrics-prometheus",
    "mutation-rejects-unknown-fields",
]
AUDIT_CHECKS: tuple[str, ...] = get_args(AuditCheckName)


def _pattern(regex: str, hint: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(hint)
        return value

    return AfterValidator(check)


UrlPath = Annotated[
    str, _pattern(r"^/[A-Za-z0-9._~/%:@!$&'()*+,;=-]*$", "use a URL path such as /health/live")
]
EnvKey = Annotated[
    str,
    _pattern(
        r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", "use an environment variable name such as API_TOKEN"
    ),
]
HeaderName = Annotated[
    str, _pattern(r"^[A-Za-z0-9-]{1,64}$", "use a header name such as X-Health-Token")
]
Origin = Annotated[
    str,
    _pattern(
        r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$",
        "use an origin: scheme://host[:port] with no path, e.g. https://app.example.com",
    ),
]


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(
            "use an http:// or https:// URL with a host, e.g. https://staging.example.com"
        )
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MutationSettings(_Strict):
    """A write route and a body it accepts; the audit adds one unknown field and expects 4xx.
    (A correct app rejects it; an app that accepts unknown fields will store the record.)"""

    method: Literal["POST", "PUT", "PATCH"] = "POST"
    path: UrlPath = "/api/items"
    body: dict[str, Any] = Field(default_factory=dict)


class AuditSettings(_Strict):
    """The built-in readiness audit pack (smoke/audit.py): the seed checklists as live checks.
    Paths, origins and the environment variables holding tokens are configurable."""

    enabled: bool = False
    mode: Literal["enforce", "warn"] = "enforce"
    # Per-check override: enforce | warn | off (names in AUDIT_CHECKS, docs/smoke.md).
    checks: dict[AuditCheckName, Literal["enforce", "warn", "off"]] = Field(default_factory=dict)
    timeout: float = Field(5.0, gt=0, le=120)

    live_path: UrlPath = "/health/live"
    ready_path: UrlPath = "/health/ready"
    ready_token_env: EnvKey | None = None
    ready_token_header: HeaderName = "X-Health-Token"  # noqa: S105 (a header name)

    # Where secure headers, CORS and request ids are looked at.
    headers_path: UrlPath = "/health/live"
    request_id_header: HeaderName = "X-Request-Id"
    cors_allowed_origin: Origin | None = None  # an origin on the app's allowlist
    cors_other_origin: Origin = "https://not-allowed.releasegate.invalid"

    metrics_path: UrlPath | None = "/metrics"  # null: the app has no metrics endpoint
    metrics_token_env: EnvKey | None = None
    metrics_auth_header: HeaderName = "Authorization"
    metrics_auth_scheme: str = Field("Bearer", pattern=r"^[A-Za-z0-9._-]{0,32}$")

    mutation: MutationSettings | None = None  # null: no mutation check


class PerfSettings(_Strict):
    """Defaults for `releasegate perf ENV`; options on the command line win, then these,
    then the pack's perf: section."""

    mode: Literal["informational", "blocking"] = "informational"
    requests: int | None = Field(None, ge=1, le=100_000)
    concurrency: int | None = Field(None, ge=1, le=256)


class SmokeSettings(_Strict):
    # Pack files, relative to the inventory's directory, or names of built-in packs;
    # run by the gate after readiness and identity, and by `smoke ENV`.
    packs: tuple[str, ...] = ()
    # When set, the gate and `smoke ENV` use this URL instead of an SSH tunnel to the app port.
    base_url: Annotated[str, AfterValidator(_base_url)] | None = None
    concurrency: int = Field(4, ge=1, le=64)
    audit: AuditSettings = AuditSettings()
    perf: PerfSettings = PerfSettings()
