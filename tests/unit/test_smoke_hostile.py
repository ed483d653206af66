"""The runner against a hostile or broken server: every answer is judged within the check's
deadline and a byte cap, whatever the server streams, and redirects never leave the base URL's
origin. httpx.MockTransport with generator bodies and the fake clock; no sockets, no waiting."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import httpx
import pytest

from deploy.errors import GateFailed
from deploy.gate import probe_http, reported_version
from deploy.inventory import VersionConfig
from deploy.metrics import MetricsUnreadable, http_reader
from smoke.answer import MAX_BODY_BYTES
from smoke.perf import run_perf
from tests.unit.test_smoke_runner import FakeClock, one_check, pack, run

CHUNK = 64 * 1024


class Body(httpx.SyncByteStream):
    """A body that arrives as the server pleases, counting what the client pulled."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.pulled += len(chunk)
            yield chunk


def endless(limit: int = 64 * 1024 * 1024) -> Iterator[bytes]:
    # "Endless" up to 64 MiB, so the code before the fix finishes (and fails the test).
    for _ in range(limit // CHUNK):
        yield b"x" * CHUNK


def test_an_endless_body_is_a_fail_after_the_cap_not_a_memory_blowup() -> None:
    body = Body(endless())
    result = run(one_check("status: 200"), lambda r: httpx.Response(200, stream=body))
    check = result.checks[0]
    assert (check.outcome, check.attempts, check.status) == ("fail", 1, 200)
    assert check.detail.startswith("expected a body that ends within 8 MiB got 200 still sending")
    assert body.pulled <= MAX_BODY_BYTES + CHUNK


def test_a_body_trickling_past_the_deadline_fails_at_the_deadline() -> None:
    clock = FakeClock()
    bodies: list[Body] = []

    def trickle() -> Iterator[bytes]:
        for _ in range(1000):  # one byte every half second: each read is "on time"
            clock.advance(0.5)
            yield b"x"

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(Body(trickle()))
        return httpx.Response(200, stream=bodies[-1])

    p = one_check("status: 200", extra="timeout: 2")
    check = run(p, handler, clock).checks[0]
    assert (check.outcome, check.attempts, check.status) == ("fail", 1, 200)
    assert check.detail.startswith("expected a body that ends within 2 s got 200 still sending")
    assert len(bodies) == 1 and bodies[0].pulled <= 5
    assert clock.t - 100.0 <= 2.5


def _bomb(size: int) -> bytes:
    return gzip.compress(b"\0" * size, compresslevel=9)


def test_a_gzip_bomb_is_refused_at_the_cap_once_decompressed() -> None:
    bomb = _bomb(64 * 1024 * 1024)  # ~64 KiB on the wire
    assert len(bomb) < MAX_BODY_BYTES
    for encoding, wire in (("gzip", bomb), ("gzip, gzip", gzip.compress(bomb))):
        headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
        check = run(
            one_check("status: 200, body_contains: zzz"),
            lambda r, h=headers, w=wire: httpx.Response(200, headers=h, stream=Body(iter([w]))),
        ).checks[0]
        assert check.outcome == "fail", encoding
        assert "with more once decompressed (gzip; stopped there)" in check.detail


def test_compressed_answers_are_still_read() -> None:
    doc = b'{"items": [1, 2, 3]}'
    for encoding, wire in (
        ("gzip", gzip.compress(doc)),
        ("deflate", zlib.compress(doc)),
        ("deflate", zlib.compress(doc)[2:-4]),  # raw deflate, as some servers send it
        ("identity", doc),
    ):
        headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
        check = run(
            one_check("status: 200, body_contains: '\"items\"', schema: {required: [items]}"),
            lambda r, h=headers, w=wire: httpx.Response(200, headers=h, stream=Body(iter([w]))),
        ).checks[0]
        assert check.passed, (encoding, check.detail)


def test_an_unreadable_encoding_is_a_fail_with_the_reason() -> None:
    for encoding, wire, said in (
        ("br", b"\x1b\x00", "expected a body in an encoding smoke reads (gzip, deflate) got"),
        ("gzip", b"not gzip at all", "expected a body in valid gzip (its Content-Encoding)"),
    ):
        headers = {"Content-Encoding": encoding}
        check = run(
            one_check("status: 200"),
            lambda r, h=headers, w=wire: httpx.Response(200, headers=h, stream=Body(iter([w]))),
        ).checks[0]
        assert (check.outcome, check.attempts) == ("fail", 1)
        assert check.detail.startswith(said)


def test_a_redirect_off_the_base_origin_is_never_followed() -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        if request.url.host == "app":
            return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/"})
        return httpx.Response(200, text="instance secrets")

    p = pack(
        """
        version: 1
        defaults: {headers: {X-Api-Key: "${ENV:KEY}"}}
        checks:
          - {name: c, request: {path: /go, follow_redirects: true}, expect: {status: 200}}
        """,
        environ={"KEY": "s3cret-key"},
    )
    check = run(p, handler).checks[0]
    assert [u.host for u in seen] == ["app"]
    assert (check.outcome, check.attempts, check.status) == ("fail", 1, 302)
    assert check.detail == (
        "expected redirects to stay on http://app got 302 to http://169.254.169.254 (not followed)"
    )


def test_a_redirect_loop_ends_with_a_fail() -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(302, headers={"Location": "/loop"})

    check = run(one_check("status: 200", "{path: /loop, follow_redirects: true}"), handler)
    assert check.checks[0].outcome == "fail"
    assert "redirects got more (a redirect loop?)" in check.checks[0].detail
    assert len(seen) == 11


def test_redirects_on_the_same_origin_are_followed_like_a_browser() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.read()))
        if request.url.path == "/form":
            return httpx.Response(303, headers={"Location": "/done?x=1"})
        if request.url.path == "/done":
            return httpx.Response(307, headers={"Location": "http://app/final"})
        return httpx.Response(200, text="ok")

    p = one_check(
        "status: 200, body_contains: ok",
        "{method: POST, path: /form, json: {a: 1}, follow_redirects: true}",
    )
    assert run(p, handler).checks[0].passed
    assert seen == [
        ("POST", "http://app/form", b'{"a":1}'),
        ("GET", "http://app/done?x=1", b""),
        ("GET", "http://app/final", b""),
    ]


def test_json_nested_too_deeply_is_a_fail_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for expect in ("schema: {type: array}", "schema: {type: array, items: {$ref: '#'}}"):
        check = run(
            one_check(f"status: 200, {expect}"),
            lambda r: httpx.Response(
                200, content=deep, headers={"Content-Type": "application/json"}
            ),
        ).checks[0]
        assert check.outcome == "fail"
        assert check.detail.startswith("expected a JSON body matching the inline schema got")
    nested = b"[" * 900 + b"]" * 900  # parses; a recursive schema may still be too deep
    check = run(
        one_check("status: 200, schema: {type: array, items: {$ref: '#'}}"),
        lambda r: httpx.Response(200, content=nested),
    ).checks[0]
    assert check.outcome in ("pass", "fail")


def test_perf_samples_stop_at_the_cap_too() -> None:
    bodies: list[Body] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(Body(endless(16 * 1024 * 1024)))
        return httpx.Response(200, stream=bodies[-1])

    p = pack(
        """
        version: 1
        checks: [{name: c, request: {path: /a}}]
        perf: {requests: 3, concurrency: 1, warmup: 0, endpoints: [{check: c, p95_ms: 1000}]}
        """
    )
    client = httpx.Client(transport=httpx.MockTransport(handler))
    result = run_perf([p], base_url="http://app", client=client)
    assert "expected a body that ends within 8 MiB" in result.endpoints[0].first_error
    assert all(b.pulled <= MAX_BODY_BYTES + CHUNK for b in bodies)


# ------------------------------------------------ the deploy gate's own probes --


def _app(handler) -> httpx.Client:
    return httpx.Client(base_url="http://app", transport=httpx.MockTransport(handler), timeout=2)


def test_the_version_probe_survives_a_hostile_answer() -> None:
    deep = b'{"release": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for stream, said in (
        (lambda: Body(endless()), "went on past 1024 KiB"),
        (lambda: Body(iter([deep])), "did not answer JSON"),
    ):
        c = _app(lambda r, s=stream: httpx.Response(200, stream=s()))
        with pytest.raises(GateFailed) as failed:
            reported_version(c, VersionConfig(field="release"), {})
        assert said in failed.value.reason


def test_a_metrics_page_that_streams_forever_is_unreadable_not_a_hang() -> None:
    c = _app(lambda r: httpx.Response(200, stream=Body(endless(32 * 1024 * 1024))))
    with pytest.raises(MetricsUnreadable, match="expected a body that ends within 16 MiB"):
        http_reader(c, "/metrics")()


def test_control_characters_from_the_server_never_reach_the_terminal() -> None:
    """A body or header that carries escape sequences (clear the line, set the title, NUL,
    a bidi override) is shown escaped: it cannot overwrite a FAIL with a fake PASS."""
    evil = '{"e": "\r\x1b[2K\x1b[32mPASS\x1b]0;t\x07 \x00 \u202e"}'
    check = run(
        one_check("status: 200, headers: {X-Evil: ok}"),
        lambda r: httpx.Response(500, text=evil),
    ).checks[0]
    shown = check.detail
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in shown), repr(shown)
    assert "\\x1b[2K\\x1b[32mPASS" in shown and "\\u202e" in shown
    check = run(
        one_check("status: 200, headers: {X-Evil: ok}"),
        lambda r: httpx.Response(200, headers={"X-Evil": "\x1b[31mred"}),
    ).checks[0]
    assert check.detail == "expected header X-Evil = 'ok' got '\\x1b[31mred'"
    outcome, detail = probe_http(_app(lambda r: httpx.Response(503, text=evil)), "/r", {})
    assert outcome == "fail" and "\x1b" not in detail and "\\x1b[2K" in detail
