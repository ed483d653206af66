"""The runner with httpx.MockTransport and a fake clock: every expectation kind, retries for
transient trouble only, warn mode, timeouts, bounded concurrency. No sockets, no waiting."""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from smoke.model import Pack, PackResult
from smoke.pack import parse_pack
from smoke.runner import BaseUrlError, check_base_url, run_pack, run_packs

Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    """monotonic() only moves when someone sleeps or advances it; sleeps are recorded."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.t += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds


def pack(text: str, environ: dict[str, str] | None = None) -> Pack:
    return parse_pack(textwrap.dedent(text), source=Path("t.yml"), environ=environ or {})


def one_check(expect: str = "", request: str = "{path: /a}", extra: str = "") -> Pack:
    return pack(
        f"""
        version: 1
        defaults: {{retries: {{attempts: 3, backoff: 0.5, max_backoff: 0.75}}}}
        checks:
          - name: c
            request: {request}
            expect: {{{expect}}}
            {extra}
        """
    )


def run(p: Pack, handler: Handler, clock: FakeClock | None = None, **kw) -> PackResult:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return run_pack(p, base_url="http://app", client=client, clock=clock or FakeClock(), **kw)


def answer(status: int = 200, **kw) -> Handler:
    return lambda request: httpx.Response(status, **kw)


def sequence(*steps) -> tuple[Handler, list[httpx.Request]]:
    """Answers in order (the last repeats): an int status, or an exception class to raise."""
    seen: list[httpx.Request] = []
    queue = list(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(step, type) and issubclass(step, Exception):
            raise step("boom", request=request)
        return httpx.Response(step, json={"ok": True})

    return handler, seen


# ------------------------------------------------------------------ expectations --


@pytest.mark.parametrize(
    ("expect", "status", "ok", "detail"),
    [
        ("status: 200", 200, True, "200 in 0 ms"),
        ("status: 200", 404, False, 'expected status 200 got 404 (body: {"ok":true})'),
        ("status: [200, 201]", 201, True, ""),
        ("status: [200, 201]", 204, False, "expected status 200 or 201 got 204"),
        ("status: 4xx", 422, True, ""),
        ("status: [401, 403]", 200, False, "expected status 401 or 403 got 200"),
        ("", 302, False, "expected status 2xx got 302"),
    ],
)
def test_status(expect: str, status: int, ok: bool, detail: str) -> None:
    result = run(one_check(expect), answer(status, json={"ok": True}))
    (c,) = result.checks
    assert c.passed is ok
    assert c.status == status
    assert detail in c.detail
    assert c.attempts == 1


HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store, private",
}


@pytest.mark.parametrize(
    ("rule", "detail"),
    [
        ("X-Frame-Options: DENY", None),
        ("x-frame-options: {present: true}", None),
        ("X-Missing: {present: false}", None),
        ("Content-Type: {matches: '^application/json'}", None),
        ("Cache-Control: {contains: no-store}", None),
        (
            "X-Frame-Options: SAMEORIGIN",
            "expected header X-Frame-Options = 'SAMEORIGIN' got 'DENY'",
        ),
        (
            "X-Request-Id: {present: true}",
            "expected header X-Request-Id present got no such header",
        ),
        ("X-Frame-Options: {present: false}", "expected no header X-Frame-Options got 'DENY'"),
        (
            "Content-Type: {matches: '^text/html'}",
            "expected header Content-Type matching '^text/html' "
            "got 'application/json; charset=utf-8'",
        ),
        (
            "Cache-Control: {contains: public}",
            "expected header Cache-Control containing 'public' got 'no-store, private'",
        ),
    ],
)
def test_headers(rule: str, detail: str | None) -> None:
    result = run(one_check(f"headers: {{{rule}}}"), answer(200, headers=HEADERS, text="{}"))
    (c,) = result.checks
    assert c.passed is (detail is None), c.detail
    if detail:
        assert c.detail == detail
        assert c.outcome == "fail"


def test_several_failures_in_one_line() -> None:
    result = run(
        one_check("headers: {X-A: {present: true}, X-B: {present: true}}"), answer(200, text="")
    )
    assert result.checks[0].detail == (
        "expected header X-A present got no such header; "
        "expected header X-B present got no such header"
    )


def test_body_contains_and_matches() -> None:
    body = "# HELP up 1\n# TYPE up gauge\nup 1\n"
    ok = run(one_check("body_contains: [HELP, TYPE], body_matches: '^up 1$'"), answer(text=body))
    assert ok.checks[0].passed
    bad = run(one_check("body_contains: nope"), answer(text=body))
    assert (
        bad.checks[0].detail
        == "expected body containing 'nope' got '# HELP up 1 # TYPE up gauge up 1'"
    )
    bad = run(one_check("body_matches: '^down'"), answer(text=body))
    assert bad.checks[0].detail.startswith("expected body matching '^down' got '# HELP up 1")


ITEMS_SCHEMA = """
  schema:
    type: object
    required: [items]
    properties:
      items:
        type: array
        items:
          type: object
          required: [id]
          properties: {id: {type: integer}}
"""


def test_schema_pass_and_failing_path() -> None:
    p = pack(
        "version: 1\nchecks:\n- name: items\n  request: {path: /api/items}\n  expect:"
        + textwrap.indent(ITEMS_SCHEMA, "  ")
    )
    assert run(p, answer(json={"items": [{"id": 1}, {"id": 2}]})).checks[0].passed
    result = run(p, answer(json={"items": [{"id": 1}, {"id": "2"}]}))
    assert result.checks[0].detail == (
        "expected body matching the inline schema got a mismatch at $.items[1].id: "
        "'2' is not of type 'integer'"
    )
    result = run(p, answer(json={"data": []}))
    assert "at $: 'items' is a required property" in result.checks[0].detail
    result = run(p, answer(text="<html>oops</html>", headers={"Content-Type": "text/html"}))
    assert result.checks[0].detail == (
        "expected a JSON body matching the inline schema got text/html '<html>oops</html>'"
    )


def test_schema_counts_further_errors() -> None:
    p = one_check("schema: {type: object, required: [a, b, c]}")
    detail = run(p, answer(json={})).checks[0].detail
    assert detail.endswith("(+2 more)")


def test_latency_budget_with_fake_clock() -> None:
    clock = FakeClock()

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(0.812)
        return httpx.Response(200, text="{}")

    result = run(one_check("latency_ms: 300"), slow, clock)
    (c,) = result.checks
    assert c.outcome == "fail"
    assert c.detail == "expected an answer within 300 ms got 812 ms (2.7x the budget)"
    assert c.attempts == 1  # slow is not transient: no retry
    assert run(one_check("latency_ms: 900"), slow, clock).checks[0].passed


def test_wrong_status_hides_other_expectations() -> None:
    result = run(one_check("status: 200, body_contains: x"), answer(500, text="oops"))
    assert result.checks[0].detail == "expected status 200 got 500 (body: oops)"


# ------------------------------------------------------------------ retries --


def test_transient_statuses_are_retried_with_backoff() -> None:
    clock = FakeClock()
    handler, seen = sequence(503, 502, 200)
    (c,) = run(one_check("status: 200"), handler, clock).checks
    assert (c.passed, c.attempts, len(seen)) == (True, 3, 3)
    assert clock.sleeps == [0.5, 0.75]  # 0.5, then doubled but capped at max_backoff
    assert c.duration_ms == pytest.approx(1250)


def test_transient_until_out_of_attempts() -> None:
    clock = FakeClock()
    handler, seen = sequence(504)
    (c,) = run(one_check("status: 200"), handler, clock).checks
    assert (c.outcome, c.attempts, len(seen)) == ("fail", 3, 3)
    assert c.detail.startswith("expected status 200 got 504")
    assert c.line().endswith("(3 attempts in 1250 ms)")


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError])
def test_connection_trouble_is_retried(error: type[Exception]) -> None:
    handler, seen = sequence(error, 200)
    (c,) = run(one_check(), handler).checks
    assert (c.passed, c.attempts) == (True, 2)


def test_no_answer_is_an_error_not_a_failure() -> None:
    handler, _ = sequence(httpx.ConnectError)
    (c,) = run(one_check(), handler).checks
    assert (c.outcome, c.verdict, c.attempts, c.status) == ("error", "ERROR", 3, None)
    assert c.detail == "expected an answer got ConnectError: boom"


def test_timeouts_are_retried_and_reported() -> None:
    handler, seen = sequence(httpx.ReadTimeout)
    (c,) = run(one_check(extra="timeout: 1.5"), handler).checks
    assert (c.outcome, c.attempts) == ("error", 3)
    assert c.detail == "expected an answer within 1.5 s got ReadTimeout (no answer)"
    # each request carries the check's own timeout
    assert seen[0].extensions["timeout"] == {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}


@pytest.mark.parametrize("status", [500, 404, 401])
def test_deterministic_statuses_are_not_retried(status: int) -> None:
    clock = FakeClock()
    handler, seen = sequence(status, 200)
    (c,) = run(one_check("status: 200"), handler, clock).checks
    assert (c.passed, c.attempts, len(seen), clock.sleeps) == (False, 1, 1, [])


def test_deterministic_failures_are_not_retried() -> None:
    handler, seen = sequence(200)
    (c,) = run(one_check("body_contains: missing"), handler).checks
    assert (c.attempts, len(seen)) == (1, 1)


def test_unsupported_protocol_is_not_retried() -> None:
    handler, seen = sequence(httpx.UnsupportedProtocol, 200)
    (c,) = run(one_check(), handler).checks
    assert (c.outcome, c.attempts) == ("error", 1)


def test_expected_503_is_a_pass_not_a_retry() -> None:
    handler, seen = sequence(503)
    (c,) = run(one_check("status: 503"), handler).checks
    assert (c.passed, c.attempts) == (True, 1)


def test_retries_can_be_turned_off() -> None:
    handler, seen = sequence(503, 200)
    (c,) = run(one_check(extra="retries: {attempts: 1}"), handler).checks
    assert (c.passed, len(seen)) == (False, 1)


# ------------------------------------------------------------------ modes, results --

TWO = """
version: 1
checks:
  - {name: contract, request: {path: /a}, expect: {status: 200}}
  - {name: budget, mode: warn, request: {path: /b}, expect: {status: 200}}
"""


def test_warn_mode_reports_but_never_blocks() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.path == "/a" else 500)

    result = run(pack(TWO), handler)
    assert result.ok and result.exit_code == 0
    assert [c.name for c in result.warned] == ["budget"]
    assert result.warned[0].verdict == "WARN"
    assert result.failed_enforced == ()
    assert result.summary().startswith("smoke t: 1/2 passed, 1 warned in")
    assert result.lines()[1] == "WARN  budget  GET /b  expected status 200 got 500"


def test_enforced_failure_lines_and_journal_detail() -> None:
    result = run(pack(TWO), answer(500, text="down"))
    assert not result.ok and result.exit_code == 1
    lines = result.lines()
    assert lines[0].startswith("smoke t: 0/2 passed, 1 failed, 1 warned in")
    assert lines[1] == "FAIL  contract  GET /a  expected status 200 got 500 (body: down)"
    assert len(result.lines(all_checks=True)) == 3
    detail = result.journal_detail()
    assert detail["failed"] == [
        {"check": "contract", "detail": "expected status 200 got 500 (body: down)"}
    ]
    assert detail["warned"][0]["check"] == "budget"
    assert (detail["total"], detail["passed"], detail["packs"]) == (2, 0, ["t"])
    json.dumps(detail)


def test_requests_carry_method_query_headers_and_body() -> None:
    p = pack(
        """
        version: 1
        defaults: {headers: {Accept: application/json}}
        checks:
          - name: post
            request:
              method: POST
              path: /api/items
              query: {dry: true, n: 3}
              headers: {X-Trace: t1}
              json: {name: x, price_cents: 1}
            expect: {status: 201}
          - name: raw
            request: {method: PUT, path: /raw, body: "a=b", headers: {Content-Type: text/plain}}
        """
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201 if request.method == "POST" else 200)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    base = "https://api.example/v1/"
    result = run_pack(p, base_url=base, client=client, clock=FakeClock(), concurrency=1)
    assert result.ok, result.lines()
    post, raw = seen
    assert str(post.url) == "https://api.example/v1/api/items?dry=true&n=3"
    assert post.headers["accept"] == "application/json"
    assert post.headers["x-trace"] == "t1"
    assert post.headers["user-agent"] == "releasegate-smoke/1"
    assert json.loads(post.content) == {"name": "x", "price_cents": 1}
    assert post.headers["content-type"] == "application/json"
    assert (raw.method, raw.content, raw.headers["content-type"]) == ("PUT", b"a=b", "text/plain")


def test_redirects_are_not_followed_unless_asked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(301, headers={"Location": "/new"})
        return httpx.Response(200)

    assert run(one_check("status: 301", "{path: /old}"), handler).checks[0].passed
    followed = one_check("status: 200", "{path: /old, follow_redirects: true}")
    assert run(followed, handler).checks[0].passed


def test_concurrency_is_bounded_and_order_kept() -> None:
    names = [f"c{i}" for i in range(6)]
    p = pack(
        "version: 1\nchecks:\n"
        + "".join(f"  - {{name: {n}, request: {{path: /{n}}}}}\n" for n in names)
    )
    state = {"now": 0, "max": 0}
    cond = threading.Condition()

    def handler(request: httpx.Request) -> httpx.Response:
        with cond:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            cond.notify_all()
            # hold until a second request is in flight (or a deadline): proves overlap
            cond.wait_for(lambda: state["max"] >= 2, timeout=5)
            state["now"] -= 1
        return httpx.Response(200)

    result = run(p, handler, concurrency=2)
    assert [c.name for c in result.checks] == names
    assert state["max"] == 2
    assert result.ok


def test_several_packs_in_one_result() -> None:
    a = pack("version: 1\nname: a\nchecks: [{name: x, request: {path: /x}}]")
    b = pack("version: 1\nname: b\nchecks: [{name: x, request: {path: /y}}]")
    client = httpx.Client(transport=httpx.MockTransport(answer(200)))
    result = run_packs([a, b], base_url="http://app", client=client, clock=FakeClock())
    assert result.packs == ("a", "b")
    assert [(c.pack, c.name, c.path) for c in result.checks] == [("a", "x", "/x"), ("b", "x", "/y")]


@pytest.mark.parametrize(
    "url", ["ftp://x", "127.0.0.1:3000", "http://", "https://x/?a=1", "http://x/#f", ""]
)
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(BaseUrlError):
        check_base_url(url)


def test_base_url_normalised() -> None:
    assert check_base_url("http://127.0.0.1:3000/") == "http://127.0.0.1:3000"
    assert check_base_url("https://x.example/app/") == "https://x.example/app"
