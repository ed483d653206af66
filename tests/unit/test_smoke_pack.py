"""Pack files: what loads, what it becomes, and the errors that name file, check, field, fix."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from smoke.expect import (
    BodyContains,
    BodyMatches,
    HeaderRule,
    LatencyBudget,
    SchemaMatches,
    StatusIn,
)
from smoke.pack import BUILTIN_DIR, PackError, builtin_packs, load_pack, resolve_ref

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "pack.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):
    return load_pack(write(tmp_path, text), environ=environ or {})


def error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(PackError) as exc:
        load(tmp_path, text, environ)
    return exc.value.message


MINIMAL = """
version: 1
checks:
  - name: live
    request: {path: /health/live}
"""


def test_minimal_pack_and_defaults(tmp_path: Path) -> None:
    pack = load(tmp_path, MINIMAL)
    assert pack.name == "pack"  # the file's stem
    (check,) = pack.checks
    assert check.name == "live"
    assert check.request.method == "GET"
    assert check.mode == "enforce"
    assert check.timeout == 5.0
    assert (check.retry.attempts, check.retry.backoff, check.retry.max_backoff) == (3, 0.25, 2.0)
    assert check.status == StatusIn(classes=frozenset({2}))  # default: any 2xx
    assert check.expectations == ()
    assert dict(check.request.headers) == {"User-Agent": "releasegate-smoke/1"}
    assert pack.perf is None
    assert pack.secret_values() == ()


def test_every_field(tmp_path: Path) -> None:
    (tmp_path / "item.json").write_text('{"type": "object", "required": ["id"]}')
    pack = load(
        tmp_path,
        """
        version: 1
        name: shop
        description: the shop API
        defaults:
          timeout: 2
          mode: warn
          headers: {Accept: application/json, X-Tenant: t1}
          retries: {attempts: 2, backoff: 0.1, max_backoff: 0.5}
        checks:
          - name: create
            mode: enforce
            timeout: 1.5
            retries: {attempts: 1}
            request:
              method: post
              path: /api/items
              query: {dry_run: true, limit: 5}
              headers: {X-Tenant: null, X-Extra: "1"}
              json: {name: x}
              follow_redirects: true
            expect:
              status: [201, "202", 3xx]
              headers:
                Location: {present: true}
                X-Gone: {present: false}
                Content-Type: {matches: "^application/json"}
                Cache-Control: {contains: no-store}
                X-Frame-Options: DENY
              body_contains: [id]
              body_matches: '"id":\\s*\\d+'
              schema_file: item.json
              latency_ms: 250
          - name: inline
            request: {path: /x, body: raw text}
            expect:
              body_contains: one
              schema: {type: object}
        """,
    )
    assert pack.name == "shop" and pack.description == "the shop API"
    create, inline = pack.checks
    assert create.mode == "enforce" and create.timeout == 1.5 and create.retry.attempts == 1
    assert inline.mode == "warn" and inline.timeout == 2 and inline.retry.attempts == 2
    req = create.request
    assert req.method == "POST"
    assert req.query == (("dry_run", "true"), ("limit", "5"))
    assert dict(req.headers) == {
        "Accept": "application/json",
        "X-Extra": "1",
        "User-Agent": "releasegate-smoke/1",
    }  # X-Tenant: null removed the default
    assert (req.has_json, req.json_body, req.follow_redirects) == (True, {"name": "x"}, True)
    assert create.status == StatusIn(codes=frozenset({201, 202}), classes=frozenset({3}))
    kinds = [type(e) for e in create.expectations]
    assert kinds == [
        HeaderRule,
        HeaderRule,
        HeaderRule,
        HeaderRule,
        HeaderRule,
        BodyContains,
        BodyMatches,
        SchemaMatches,
        LatencyBudget,
    ]
    rules = {e.name: e for e in create.expectations if isinstance(e, HeaderRule)}
    assert rules["X-Frame-Options"].equals == "DENY"  # the string shorthand
    assert rules["X-Gone"].present is False
    schema = next(e for e in create.expectations if isinstance(e, SchemaMatches))
    assert schema.origin == "schema item.json"
    assert inline.request.content == b"raw text" and not inline.request.has_json


def test_sampleapp_pack_and_builtin_packs_load() -> None:
    pack = load_pack(REPO / "examples" / "sampleapp" / "smoke.yml", environ={})
    assert pack.name == "sampleapp"
    assert {"items-list", "item-get", "version"} <= {c.name for c in pack.checks}
    assert pack.perf is not None
    assert [e.check.name for e in pack.perf.endpoints] == ["items-list", "item-get"]
    assert "health" in builtin_packs()
    for name in builtin_packs():
        load_pack(BUILTIN_DIR / f"{name}.yml", environ={})


def test_resolve_ref(tmp_path: Path) -> None:
    assert resolve_ref("health", tmp_path) == BUILTIN_DIR / "health.yml"
    assert resolve_ref("packs/api.yml", tmp_path) == tmp_path / "packs" / "api.yml"
    assert resolve_ref("/abs/api.yml", tmp_path) == Path("/abs/api.yml")
    assert resolve_ref("not-builtin", tmp_path) == tmp_path / "not-builtin"


# ------------------------------------------------------------------ errors --


def test_unknown_field_names_file_check_field_and_fix(tmp_path: Path) -> None:
    msg = error(
        tmp_path,
        """
        version: 1
        checks:
          - name: ok
            request: {path: /a}
          - name: items-list
            request: {path: /api/items, methd: GET}
        """,
    )
    assert str(tmp_path / "pack.yml") in msg
    assert "check 'items-list' (checks[1]): request.methd: unknown field" in msg
    assert "remove it or fix its spelling" in msg


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("request: {}", r"check 'c' \(checks\[0\]\): request.path: is required; add it"),
        ("request: {path: api}", r"request.path: must start with /"),
        ("request: {path: 'http://x/y'}", r"request.path: must be a path, not a URL"),
        ("request: {path: '/a?b=1'}", r"put query parameters under query:"),
        ("request: {path: /a, method: FETCH}", r"request.method: Input should be 'GET'"),
        ("request: {path: /a, json: {}, body: x}", r"request: give either json: or body:"),
        ("request: {path: /a}\n    expect: {status: 999}", r"expect.status: 999 is not a status"),
        ("request: {path: /a}\n    expect: {status: [200, 6xx]}", r"'6xx' is not a status"),
        ("request: {path: /a}\n    expect: {status: []}", r"expect.status: must not be empty"),
        ("request: {path: /a}\n    expect: {body_matches: '('}", r"not a valid regular expr"),
        ("request: {path: /a}\n    expect: {headers: {X-A: {}}}", r"expect.headers.X-A: say what"),
        (
            "request: {path: /a}\n    expect: {headers: {X-A: {present: false, equals: b}}}",
            r"cannot be combined",
        ),
        (
            "request: {path: /a}\n    expect: {headers: {X-A: {equals: a, contains: b}}}",
            r"use one of equals, matches or contains",
        ),
        ("request: {path: /a}\n    expect: {latency_ms: 0}", r"expect.latency_ms: Input should"),
        ("request: {path: /a}\n    timeout: -1", r"timeout: Input should be greater than 0"),
        ("request: {path: /a}\n    mode: block", r"mode: Input should be 'enforce' or 'warn'"),
        ("request: {path: /a}\n    retries: {attempts: 0}", r"retries.attempts: Input should"),
        ("request: {path: /a}\n    expect: {schema: {type: 12}}", r"not a valid JSON Schema"),
        (
            "request: {path: /a}\n    expect: {schema: {}, schema_file: s.json}",
            r"give either schema:",
        ),
        ("request: {path: /a}\n    expect: {schema_file: nope.json}", r"cannot read .*nope"),
    ],
)
def test_check_field_errors(tmp_path: Path, fragment: str, expected: str) -> None:
    msg = error(tmp_path, f"version: 1\nchecks:\n  - name: c\n    {fragment}\n")
    assert str(tmp_path / "pack.yml") in msg
    assert re.search(expected, msg), msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("checks: []", r"version: is required"),
        ("version: 2\nchecks: [{name: a, request: {path: /}}]", r"version: must be 1"),
        ("version: 1\nchecks: []", r"checks: List should have at least 1 item"),
        ("version: 1\nchecks: [{name: '', request: {path: /}}]", r"checks\[0\]\): name: use let"),
        ("version: 1\ncheks: []", r"cheks: unknown field"),
        ("version: 1\nchecks: [a", r"is not valid YAML at line 2"),
        ("- a\n- b", r"must be a mapping with version: 1 and checks:"),
    ],
)
def test_pack_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert re.search(expected, error(tmp_path, text))


def test_duplicate_names(tmp_path: Path) -> None:
    msg = error(
        tmp_path,
        """
        version: 1
        checks:
          - {name: a, request: {path: /a}}
          - {name: a, request: {path: /b}}
        """,
    )
    assert "check 'a' (checks[1]): name: 'a' is already the name of checks[0]" in msg


def test_perf_errors(tmp_path: Path) -> None:
    base = "version: 1\nchecks: [{name: a, request: {path: /a}}]\n"
    msg = error(tmp_path, base + "perf: {endpoints: [{check: b, p95_ms: 10}]}")
    assert (
        "perf.endpoints[0].check: 'b' is not the name of a check in this pack; name one of: a"
        in (msg)
    )
    msg = error(tmp_path, base + "perf: {endpoints: [{check: a}]}")
    assert "give at least one latency threshold" in msg
    msg = error(tmp_path, base + "perf: {endpoints: []}")
    assert "perf.endpoints: List should have at least 1 item" in msg
    msg = error(tmp_path, base + "perf: {endpoints: [{check: a, p95_ms: 1, max_error_rate: 2}]}")
    assert "perf.endpoints[0].max_error_rate: Input should be less than or equal to 1" in msg


def test_missing_file_lists_builtins(tmp_path: Path) -> None:
    with pytest.raises(PackError) as exc:
        load_pack(tmp_path / "nope.yml", environ={})
    assert "nope.yml: no such pack file" in exc.value.message
    assert "health" in exc.value.message


# ------------------------------------------------------------------ secrets --

SECRET_PACK = """
version: 1
defaults:
  headers:
    Authorization: "Bearer ${ENV:API_TOKEN}"
checks:
  - name: a
    request:
      path: /a
      query: {key: "${ENV:QUERY_KEY}"}
      headers: {X-Tenant: "t-${ENV:TENANT}"}
"""


def test_env_references_resolve_and_become_secrets(tmp_path: Path) -> None:
    env = {"API_TOKEN": "tok-aaaa", "QUERY_KEY": "qk-bbbb", "TENANT": "tenant-c"}
    pack = load(tmp_path, SECRET_PACK, env)
    (check,) = pack.checks
    headers = dict(check.request.headers)
    assert headers["Authorization"] == "Bearer tok-aaaa"
    assert headers["X-Tenant"] == "t-tenant-c"
    assert check.request.query == (("key", "qk-bbbb"),)
    assert {"tok-aaaa", "qk-bbbb", "tenant-c"} <= set(pack.secret_values())
    assert "tok-aaaa" not in repr(pack)


def test_missing_env_var_is_a_pack_error_naming_the_variable(tmp_path: Path) -> None:
    msg = error(tmp_path, SECRET_PACK, {"API_TOKEN": "tok-aaaa", "TENANT": "tenant-c"})
    assert "check 'a' (checks[0]): request.query.key" in msg
    assert "QUERY_KEY, which is not set; export QUERY_KEY" in msg
    msg = error(tmp_path, SECRET_PACK, {})
    assert "defaults.headers.Authorization" in msg and "API_TOKEN" in msg


def test_short_or_empty_secret_refused(tmp_path: Path) -> None:
    env = {"API_TOKEN": "abc", "QUERY_KEY": "qk-bbbb", "TENANT": "tenant-c"}
    assert "shorter than 4 characters" in error(tmp_path, SECRET_PACK, env)
    env["API_TOKEN"] = ""
    assert "API_TOKEN is empty" in error(tmp_path, SECRET_PACK, env)


@pytest.mark.parametrize(
    ("fragment", "where"),
    [
        ("request: {path: '/a/${ENV:T}'}", "request.path"),
        ("request: {path: /a, json: {k: '${ENV:T}'}}", "request.json.k"),
        ("request: {path: /a}\n    expect: {body_contains: '${ENV:T}'}", "expect.body_contains"),
    ],
)
def test_env_references_only_in_headers_and_query(
    tmp_path: Path, fragment: str, where: str
) -> None:
    msg = error(tmp_path, f"version: 1\nchecks:\n  - name: c\n    {fragment}\n", {"T": "tttt"})
    assert where in msg and "only resolved in header and query values" in msg


def test_malformed_reference(tmp_path: Path) -> None:
    text = "version: 1\nchecks:\n  - name: c\n    request: {path: /a, headers: {X: '${TOKEN}'}}\n"
    assert "'${TOKEN}' is not a valid reference; write ${ENV:NAME}" in error(tmp_path, text)


def test_literal_credentials_are_masked_too(tmp_path: Path) -> None:
    pack = load(
        tmp_path,
        """
        version: 1
        defaults: {headers: {Authorization: Basic dXNlcjpwYXNz, X-Api-Key: literal-key}}
        checks: [{name: a, request: {path: /a}}]
        """,
    )
    assert {"Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "literal-key"} <= set(pack.secret_values())
