"""Smoke pack files (YAML) → a validated, resolved `Pack`.

Validation is strict: unknown fields are errors, and each error names the file, the check
(by name and index), the field and the fix — a bad pack is exit 2 before anything is
contacted. `${ENV:NAME}` references in header and query values are resolved here, so a
missing variable is found before a deploy starts; the resolved values are the pack's secrets.
docs/smoke.md is the format reference.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jsonschema.exceptions import SchemaError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from smoke import secrets, yamlfile
from smoke.expect import (
    BodyContains,
    BodyMatches,
    HeaderRule,
    LatencyBudget,
    SchemaMatches,
    StatusIn,
)
from smoke.model import (
    Check,
    Expectation,
    HotEndpoint,
    Mode,
    Pack,
    PerfPlan,
    Request,
    RetryPolicy,
    Thresholds,
)

BUILTIN_DIR = Path(__file__).resolve().parent / "packs"


def _docs() -> str:
    """docs/smoke.md of a source checkout, else the copy a wheel installs (releasegate_docs)."""
    source = Path(__file__).resolve().parent.parent / "docs" / "smoke.md"
    spec = None if source.is_file() else importlib.util.find_spec("releasegate_docs")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "smoke.md").is_file():
            return str(Path(location) / "smoke.md")
    try:
        return str(source.relative_to(Path.cwd()))
    except ValueError:
        return str(source)


DOCS = _docs()
CHECK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/()-]{0,99}\Z")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")
BUILTIN_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}\Z")
SENSITIVE_HEADER = re.compile(
    r"^(authorization|proxy-authorization|cookie|.*token.*|.*secret.*|.*api[-_]?key.*)$", re.I
)
DEFAULT_USER_AGENT = "releasegate-smoke/1"


class PackError(Exception):
    """A pack cannot be loaded. The message names the file, the check, the field and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ------------------------------------------------------------------ file format --


def _check_name(value: str) -> str:
    if not CHECK_NAME.match(value):
        raise ValueError(
            "use letters, digits, spaces and . _ : / ( ) - (max 100, starting with a letter "
            "or digit), e.g. items-list"
        )
    return value


def _url_path(value: str) -> str:
    if "://" in value:
        raise ValueError("must be a path, not a URL; the base URL comes from --base-url or ENV")
    if not value.startswith("/"):
        raise ValueError("must start with / (it is joined to the base URL), e.g. /api/items")
    if "?" in value or "#" in value:
        raise ValueError("must not contain ? or #; put query parameters under query:")
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain spaces; percent-encode them (%20)")
    return value


def _header_name(value: str) -> str:
    if not HEADER_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid header name such as X-Request-Id")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None
    return value


CheckName = Annotated[str, AfterValidator(_check_name)]
UrlPath = Annotated[str, AfterValidator(_url_path)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
Regex = Annotated[str, AfterValidator(_regex)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryModel(_Strict):
    attempts: int = Field(3, ge=1, le=10)
    backoff: float = Field(0.25, ge=0, le=30)
    max_backoff: float = Field(2.0, ge=0, le=60)


class RequestModel(_Strict):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    path: UrlPath
    query: dict[str, str | int | float | bool] = Field(default_factory=dict)
    headers: dict[HeaderName, str | None] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json")
    body: str | None = None
    follow_redirects: bool = False

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_body(self) -> RequestModel:
        if self.body is not None and "json_body" in self.model_fields_set:
            raise ValueError("give either json: or body:, not both")
        return self


class HeaderRuleModel(_Strict):
    present: bool | None = None
    equals: str | None = None
    matches: Regex | None = None
    contains: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"equals": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _something(self) -> HeaderRuleModel:
        given = [k for k in ("equals", "matches", "contains") if getattr(self, k) is not None]
        if self.present is None and not given:
            raise ValueError("say what to expect: present, equals, matches or contains")
        if self.present is False and given:
            raise ValueError("present: false (header absent) cannot be combined with a value")
        if len(given) > 1:
            raise ValueError(f"use one of equals, matches or contains (got {', '.join(given)})")
        return self


def _status(value: Any) -> tuple[frozenset[int], frozenset[int]]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("must not be empty")
    codes: set[int] = set()
    classes: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{item!r} is not a status")
        if isinstance(item, int) and 100 <= item <= 599:
            codes.add(item)
        elif isinstance(item, str) and re.fullmatch(r"[1-5]xx", item.strip().lower()):
            classes.add(int(item.strip()[0]))
        elif isinstance(item, str) and re.fullmatch(r"[1-5]\d\d", item.strip()):
            codes.add(int(item))
        else:
            raise ValueError(
                f"{item!r} is not a status: use a code 100-599, a class such as 4xx, or a list "
                f"of them such as [200, 201]"
            )
    return frozenset(codes), frozenset(classes)


class ExpectModel(_Strict):
    status: Any = "2xx"
    headers: dict[HeaderName, HeaderRuleModel] = Field(default_factory=dict)
    body_contains: list[str] = Field(default_factory=list)
    body_matches: Regex | None = None
    json_schema: dict[str, Any] | bool | None = Field(None, alias="schema")
    schema_file: str | None = None
    latency_ms: float | None = Field(None, gt=0, le=600_000)

    @field_validator("status")
    @classmethod
    def _status_ok(cls, value: Any) -> Any:
        _status(value)
        return value

    @field_validator("body_contains", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_schema(self) -> ExpectModel:
        if self.json_schema is not None and self.schema_file is not None:
            raise ValueError("give either schema: (inline) or schema_file:, not both")
        return self


class CheckModel(_Strict):
    name: CheckName
    request: RequestModel
    expect: ExpectModel = Field(default_factory=ExpectModel)
    mode: Literal["enforce", "warn"] | None = None
    timeout: float | None = Field(None, gt=0, le=300)
    retries: RetryModel | None = None


class DefaultsModel(_Strict):
    headers: dict[HeaderName, str] = Field(default_factory=dict)
    timeout: float = Field(5.0, gt=0, le=300)
    mode: Literal["enforce", "warn"] = "enforce"
    retries: RetryModel = Field(default_factory=RetryModel)


class PerfEndpointModel(_Strict):
    check: str
    p50_ms: float | None = Field(None, gt=0)
    p95_ms: float | None = Field(None, gt=0)
    p99_ms: float | None = Field(None, gt=0)
    max_error_rate: float = Field(0.01, ge=0, le=1)


class PerfModel(_Strict):
    requests: int = Field(100, ge=1, le=100_000)
    concurrency: int = Field(4, ge=1, le=256)
    warmup: int = Field(3, ge=0, le=1000)
    endpoints: list[PerfEndpointModel] = Field(min_length=1)


class PackModel(_Strict):
    version: Literal[1]
    name: Annotated[str, AfterValidator(_check_name)] | None = None
    description: str = ""
    defaults: DefaultsModel = Field(default_factory=DefaultsModel)
    checks: list[CheckModel] = Field(min_length=1)
    perf: PerfModel | None = None


# ------------------------------------------------------------------ loading --


def resolve_ref(ref: str, base_dir: Path) -> Path:
    """A pack given by path (relative to base_dir) or by the name of a built-in pack."""
    if BUILTIN_NAME.match(ref) and (BUILTIN_DIR / f"{ref}.yml").is_file():
        return BUILTIN_DIR / f"{ref}.yml"
    path = Path(ref).expanduser()
    return path if path.is_absolute() else base_dir / path


def builtin_packs() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in BUILTIN_DIR.glob("*.yml")))


def load_pack(path: Path, *, environ: Mapping[str, str] | None = None) -> Pack:
    """Read and validate one pack file; raise PackError (exit 2 material) if it is wrong."""
    if not path.is_file():
        builtins = ", ".join(builtin_packs()) or "none"
        raise PackError(
            f"{path}: no such pack file. Give the path of a smoke pack (YAML, see {DOCS}) "
            f"or the name of a built-in pack ({builtins})."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PackError(
            f"{path}: is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8 (see {DOCS})."
        ) from None
    except OSError as exc:
        raise PackError(f"{path}: cannot be read ({exc}). Check its permissions.") from None
    return parse_pack(text, source=path, environ=os.environ if environ is None else environ)


def parse_pack(
    text: str,
    *,
    source: Path,
    environ: Mapping[str, str],
    schema_files: Mapping[str, str] | None = None,
) -> Pack:
    """`schema_files` maps each `expect.schema_file` reference, as written in the pack, to the
    file's text; without it they are read from disk relative to the pack (a pack carried by a
    release brings its schemas along: deploy/release_packs.py)."""
    try:
        data = yamlfile.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PackError(
            f"{source}: is not valid YAML{where} ({getattr(exc, 'problem', exc)}). Fix the "
            f"syntax; {DOCS} shows the expected shape."
        ) from None
    if not isinstance(data, dict):
        raise PackError(f"{source}: must be a mapping with version: 1 and checks: (see {DOCS}).")
    try:
        model = PackModel.model_validate(data)
    except ValidationError as exc:
        raise PackError(format_errors(source, data, exc)) from None
    return _compile(model, data, source, environ, schema_files)


def format_errors(source: Path, data: dict[str, Any], exc: ValidationError) -> str:
    problems = exc.errors()
    lines = [f"{source}: invalid smoke pack ({len(problems)} problem(s)):"]
    for err in problems:
        where, field = _where(data, tuple(err["loc"]))
        lines.append(f"  - {where}{field}: {_explain(err)}")
    return "\n".join(lines)


_TYPE_TAG = re.compile(
    r"^(str|int|float|bool|none|list\[.*|dict\[.*|function-.*|union\[.*|literal\[.*|"
    r"tagged-union\[.*|[A-Z][A-Za-z]*Model)$"
)


def _where(data: dict[str, Any], loc: tuple[int | str, ...]) -> tuple[str, str]:
    """('checks', 2, 'expect', 'status') → ("check 'x' (checks[2]): ", "expect.status")."""
    parts = [p for p in loc if not (isinstance(p, str) and _TYPE_TAG.match(p))]
    prefix = ""
    if len(parts) >= 2 and parts[0] == "checks" and isinstance(parts[1], int):
        prefix = _check_label(data, parts[1]) + ": "
        parts = parts[2:]
    field = ""
    for part in parts:
        if isinstance(part, int):
            field += f"[{part}]"
        else:
            field += f".{part}" if field else str(part)
    if not field:
        field = "(the check itself)" if prefix else "(top level)"
    return prefix, field


def _check_label(data: dict[str, Any], index: int) -> str:
    checks = data.get("checks")
    name = None
    if isinstance(checks, list) and index < len(checks) and isinstance(checks[index], dict):
        name = checks[index].get("name")
    return f"check {name!r} (checks[{index}])" if isinstance(name, str) else f"checks[{index}]"


def _explain(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown field; remove it or fix its spelling ({DOCS} lists every field)"
    if kind == "missing":
        return f"is required; add it ({DOCS} shows an example)"
    if kind == "literal_error" and err["loc"] == ("version",):
        return "must be 1 (the only pack format version so far); add version: 1"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    shown = "" if isinstance(got, dict | list | tuple) or got is None else f" (got {got!r})"
    return f"{msg}{shown}"


# ------------------------------------------------------------------ model → Pack --


class _Secrets:
    """Resolves `${ENV:NAME}` where it is allowed, collects the values, refuses it elsewhere."""

    def __init__(self, source: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.values: list[str] = []

    def resolve(self, value: str, where: str) -> str:
        if not secrets.has_reference(value):
            return value
        try:
            resolved, used = secrets.resolve(value, self.environ)
        except secrets.SecretError as exc:
            raise PackError(f"{self.source}: {where}: {exc}.") from None
        self.values.extend(used)
        return resolved

    def sensitive(self, header: str, value: str) -> None:
        """Literal values of credential-looking headers are masked in output as well."""
        if SENSITIVE_HEADER.match(header):
            self.values.append(value)
            _, _, token = value.partition(" ")
            if token:
                self.values.append(token)


def _refuse_refs(value: Any, where: str, source: Path) -> None:
    if isinstance(value, str) and "${ENV:" in value:
        raise PackError(
            f"{source}: {where}: ${{ENV:…}} is only resolved in header and query values "
            f"(defaults.headers, request.headers, request.query); move the secret into a "
            f"header, or write the value literally."
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_refs(item, f"{where}.{key}", source)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_refs(item, f"{where}[{i}]", source)


def _compile(
    model: PackModel,
    data: dict[str, Any],
    source: Path,
    environ: Mapping[str, str],
    schema_files: Mapping[str, str] | None = None,
) -> Pack:
    vault = _Secrets(source, environ)
    defaults: dict[str, str] = {}
    for name, value in model.defaults.headers.items():
        defaults[name] = vault.resolve(value, f"defaults.headers.{name}")
        vault.sensitive(name, defaults[name])

    seen: dict[str, int] = {}
    checks: list[Check] = []
    for index, cm in enumerate(model.checks):
        label = _check_label(data, index)
        if cm.name in seen:
            raise PackError(
                f"{source}: {label}: name: {cm.name!r} is already the name of "
                f"checks[{seen[cm.name]}]; give every check its own name (results and JUnit "
                f"test cases are keyed by it)."
            )
        seen[cm.name] = index
        checks.append(_check(cm, label, defaults, model.defaults, vault, schema_files))

    perf = _perf(model.perf, {c.name: c for c in checks}, source) if model.perf else None
    return Pack(
        name=model.name or source.stem,
        checks=tuple(checks),
        source=str(source),
        description=model.description,
        perf=perf,
        secrets=tuple(sorted({v for v in vault.values if v})),
    )


def _check(
    cm: CheckModel,
    label: str,
    default_headers: dict[str, str],
    defaults: DefaultsModel,
    vault: _Secrets,
    schema_files: Mapping[str, str] | None = None,
) -> Check:
    source = vault.source
    req = cm.request
    _refuse_refs(req.path, f"{label}: request.path", source)
    _refuse_refs(req.json_body, f"{label}: request.json", source)
    _refuse_refs(req.body, f"{label}: request.body", source)
    _refuse_refs(cm.expect.model_dump(by_alias=True), f"{label}: expect", source)

    headers = {k.lower(): (k, v) for k, v in default_headers.items()}
    for name, value in req.headers.items():
        if value is None:
            headers.pop(name.lower(), None)
            continue
        resolved = vault.resolve(value, f"{label}: request.headers.{name}")
        vault.sensitive(name, resolved)
        headers[name.lower()] = (name, resolved)
    headers.setdefault("user-agent", ("User-Agent", DEFAULT_USER_AGENT))

    query = []
    for key, raw in req.query.items():
        text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
        query.append((key, vault.resolve(text, f"{label}: request.query.{key}")))

    request = Request(
        method=req.method,
        path=req.path,
        query=tuple(query),
        headers=tuple(headers.values()),
        json_body=req.json_body,
        has_json="json_body" in req.model_fields_set,
        content=req.body.encode("utf-8") if req.body is not None else None,
        follow_redirects=req.follow_redirects,
    )
    retry = cm.retries or defaults.retries
    mode: Mode = cm.mode or defaults.mode
    return Check(
        name=cm.name,
        request=request,
        status=StatusIn(*_status(cm.expect.status)),
        expectations=_expectations(cm.expect, label, source, schema_files),
        mode=mode,
        timeout=cm.timeout or defaults.timeout,
        retry=RetryPolicy(
            attempts=retry.attempts, backoff=retry.backoff, max_backoff=retry.max_backoff
        ),
    )


def _expectations(
    em: ExpectModel, label: str, source: Path, schema_files: Mapping[str, str] | None = None
) -> tuple[Expectation, ...]:
    out: list[Expectation] = []
    for name, rule in em.headers.items():
        out.append(
            HeaderRule(
                name=name,
                present=rule.present,
                equals=rule.equals,
                matches=re.compile(rule.matches) if rule.matches is not None else None,
                contains=rule.contains,
            )
        )
    out.extend(BodyContains(text) for text in em.body_contains)
    if em.body_matches is not None:
        out.append(BodyMatches(re.compile(em.body_matches, re.MULTILINE)))
    if em.json_schema is not None:
        out.append(_schema(em.json_schema, "inline schema", f"{label}: expect.schema", source))
    if em.schema_file is not None:
        out.append(_schema_from_file(em.schema_file, label, source, schema_files))
    if em.latency_ms is not None:
        out.append(LatencyBudget(em.latency_ms))
    return tuple(out)


def _schema(schema: Any, origin: str, where: str, source: Path) -> SchemaMatches:
    try:
        return SchemaMatches(schema=schema, origin=origin)
    except SchemaError as exc:
        raise PackError(
            f"{source}: {where}: is not a valid JSON Schema: at {exc.json_path}: "
            f"{exc.message}. Fix the schema (https://json-schema.org/understanding-json-schema)."
        ) from None


def _schema_from_file(
    ref: str, label: str, source: Path, schema_files: Mapping[str, str] | None = None
) -> SchemaMatches:
    where = f"{label}: expect.schema_file"
    path = Path(ref)
    if not path.is_absolute():
        path = source.parent / path
    if schema_files is not None:
        carried = schema_files.get(ref)
        if carried is None:
            raise PackError(
                f"{source}: {where}: {ref} was not carried with the pack; deploy the release "
                f"again so that its schemas travel with it, or inline the schema under schema:."
            )
        text = carried
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PackError(
                f"{source}: {where}: cannot read {path} ({type(exc).__name__}). The path is "
                f"relative to the pack's directory; fix it or inline the schema under schema:."
            ) from None
    try:
        schema = yamlfile.load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise PackError(
            f"{source}: {where}: {path} is not valid JSON/YAML ({getattr(exc, 'problem', exc)})."
        ) from None
    if not isinstance(schema, dict | bool):
        raise PackError(f"{source}: {where}: {path} must hold a JSON Schema object.")
    return _schema(schema, f"schema {path.name}", where, source)


def _perf(pm: PerfModel, checks: dict[str, Check], source: Path) -> PerfPlan:
    endpoints = []
    for i, ep in enumerate(pm.endpoints):
        if ep.check not in checks:
            known = ", ".join(sorted(checks))
            raise PackError(
                f"{source}: perf.endpoints[{i}].check: {ep.check!r} is not the name of a check "
                f"in this pack; name one of: {known}."
            )
        if ep.p50_ms is None and ep.p95_ms is None and ep.p99_ms is None:
            raise PackError(
                f"{source}: perf.endpoints[{i}] ({ep.check}): give at least one latency "
                f"threshold (p50_ms, p95_ms or p99_ms)."
            )
        endpoints.append(
            HotEndpoint(
                check=checks[ep.check],
                thresholds=Thresholds(
                    p50_ms=ep.p50_ms,
                    p95_ms=ep.p95_ms,
                    p99_ms=ep.p99_ms,
                    max_error_rate=ep.max_error_rate,
                ),
            )
        )
    return PerfPlan(
        endpoints=tuple(endpoints),
        requests=pm.requests,
        concurrency=pm.concurrency,
        warmup=pm.warmup,
    )
