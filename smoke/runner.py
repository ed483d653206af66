"""Run packs against a base URL: checks concurrently (bounded), each with its own timeout,
retried with backoff only for transient trouble (no answer, 502/503/504).

The httpx.Client and the clock are injected (tests use httpx.MockTransport and a fake clock);
every detail line is masked with the packs' secrets before it leaves this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from smoke.answer import UnusableAnswer, receive
from smoke.clock import Clock, SystemClock
from smoke.model import (
    TRANSIENT_STATUSES,
    Answer,
    Check,
    CheckResult,
    Noting,
    Outcome,
    Pack,
    PackResult,
    all_secrets,
    printable,
)
from smoke.secrets import Redactor

# No answer at all, or a connection that broke: worth another try. Everything else
# (a wrong status, a schema mismatch, an invalid URL) is deterministic and fails at once.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


class BaseUrlError(ValueError):
    """--base-url (or the resolved environment URL) is not usable; exit 2 material."""


def check_base_url(url: str) -> str:
    """Validate a base URL (http or https, a host, no query or fragment); return it without
    a trailing slash. Paths in packs are appended to it, so a path prefix is allowed."""
    shown = Redactor(url_secrets(url))(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not 0..65535
    except ValueError as exc:
        raise BaseUrlError(
            f"base URL {shown!r} is not usable ({exc}): give an http:// or https:// URL with a "
            f"host, such as https://staging.example.com or http://127.0.0.1:3000"
        ) from None
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url) or port == 0:
        raise BaseUrlError(
            f"base URL {shown!r} is not usable: it has a space, a control character or port 0; "
            f"give a URL such as https://staging.example.com or http://127.0.0.1:3000"
        )
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise BaseUrlError(
            f"base URL {shown!r} is not usable: give an http:// or https:// URL with a host, "
            f"such as https://staging.example.com or http://127.0.0.1:3000"
        )
    if parts.query or parts.fragment:
        raise BaseUrlError(
            f"base URL {shown!r} must not have a query or fragment; checks add their own query"
        )
    return url.rstrip("/")


def url_secrets(url: str) -> tuple[str, ...]:
    """A password in the base URL (https://user:pass@host) is a secret like any other."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    return (password,) if password else ()


@dataclass(frozen=True)
class _Attempt:
    outcome: Outcome
    detail: str
    transient: bool
    status: int | None = None


def run_pack(
    pack: Pack,
    *,
    base_url: str,
    client: httpx.Client | None = None,
    concurrency: int = 4,
    clock: Clock | None = None,
    extra_secrets: Iterable[str] = (),
) -> PackResult:
    return run_packs(
        [pack],
        base_url=base_url,
        client=client,
        concurrency=concurrency,
        clock=clock,
        extra_secrets=extra_secrets,
    )


def run_packs(
    packs: Sequence[Pack],
    *,
    base_url: str,
    client: httpx.Client | None = None,
    concurrency: int = 4,
    clock: Clock | None = None,
    extra_secrets: Iterable[str] = (),
) -> PackResult:
    """Run every check of every pack; results keep the packs' order.

    `extra_secrets` are values the caller knows to be secret (a health token, say); they are
    masked along with the packs' own. Raises BaseUrlError for an unusable base URL.
    """
    base = check_base_url(base_url)
    clock = clock or SystemClock()
    secrets = tuple(sorted({*all_secrets(packs), *extra_secrets, *url_secrets(base)}))
    redact = Redactor(secrets)
    jobs = [(pack.name, check) for pack in packs for check in pack.checks]
    own_client = client is None
    http = client or httpx.Client(trust_env=False, follow_redirects=False)
    started = clock.monotonic()
    try:
        results = _run_all(jobs, base, http, max(1, concurrency), clock, redact)
    finally:
        if own_client:
            http.close()
    return PackResult(
        packs=tuple(p.name for p in packs),
        base_url=redact(base),
        checks=tuple(results),
        duration_ms=(clock.monotonic() - started) * 1000,
        secret_values=secrets,
    )


def _run_all(
    jobs: list[tuple[str, Check]],
    base: str,
    http: httpx.Client,
    concurrency: int,
    clock: Clock,
    redact: Redactor,
) -> list[CheckResult]:
    if not jobs:
        return []
    if concurrency == 1 or len(jobs) == 1:
        return [
            run_check(c, pack=p, base_url=base, client=http, clock=clock, redact=redact)
            for p, c in jobs
        ]
    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(jobs)), thread_name_prefix="smoke")
    try:
        futures: list[Future[CheckResult]] = [
            pool.submit(
                run_check, c, pack=p, base_url=base, client=http, clock=clock, redact=redact
            )
            for p, c in jobs
        ]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_check(
    check: Check,
    *,
    pack: str,
    base_url: str,
    client: httpx.Client,
    clock: Clock,
    redact: Callable[[str], str] = str,
) -> CheckResult:
    """One check with its retries. Never raises for anything the server does."""
    started = clock.monotonic()
    attempts = 0
    while True:
        attempts += 1
        attempt = _attempt(check, base_url, client, clock, redact)
        if attempt.outcome == "pass" or not attempt.transient:
            break
        if attempts >= check.retry.attempts:
            break
        clock.sleep(check.retry.delay(attempts))
    return CheckResult(
        pack=pack,
        name=check.name,
        mode=check.mode,
        outcome=attempt.outcome,
        attempts=attempts,
        duration_ms=(clock.monotonic() - started) * 1000,
        detail=redact(attempt.detail),
        method=check.request.method,
        path=redact(check.request.path),
        status=attempt.status,
    )


def _attempt(
    check: Check, base: str, client: httpx.Client, clock: Clock, redact: Callable[[str], str]
) -> _Attempt:
    started = clock.monotonic()
    try:
        received = receive(client, base, check, clock)
    except httpx.TimeoutException as exc:
        return _Attempt(
            "error",
            f"expected an answer within {check.timeout:g} s got {type(exc).__name__} (no answer)",
            transient=True,
        )
    except httpx.HTTPError as exc:
        reason = printable(" ".join(redact(str(exc)).split()))[:160] or "no detail"
        return _Attempt(
            "error",
            f"expected an answer got {type(exc).__name__}: {reason}",
            transient=isinstance(exc, TRANSIENT_ERRORS),
        )
    except UnusableAnswer as exc:
        return _Attempt(
            exc.outcome, exc.detail, transient=exc.outcome == "error", status=exc.status
        )
    elapsed_ms = (clock.monotonic() - started) * 1000
    answer = Answer(
        status=received.response.status_code,
        headers=received.response.headers,
        text=received.text,
        elapsed_ms=elapsed_ms,
        scheme=received.url.scheme,
        redact=redact,
    )
    return _judge(check, answer)


def _judge(check: Check, answer: Answer) -> _Attempt:
    """Status first: when it is wrong, the other expectations would only add noise."""
    wrong_status = check.status.check(answer)
    if wrong_status is not None:
        return _Attempt(
            "fail",
            wrong_status,
            transient=answer.status in TRANSIENT_STATUSES,
            status=answer.status,
        )
    failures = [f for f in (e.check(answer) for e in check.expectations) if f is not None]
    if failures:
        return _Attempt("fail", "; ".join(failures), transient=False, status=answer.status)
    notes = [
        n
        for e in (check.status, *check.expectations)
        if isinstance(e, Noting) and (n := e.note(answer)) is not None
    ]
    return _Attempt(
        "pass",
        "; ".join([f"{answer.status} in {answer.elapsed_ms:.0f} ms", *notes]),
        transient=False,
        status=answer.status,
    )
