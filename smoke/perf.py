"""Perf thresholds for the hot endpoints a pack names in its `perf:` section.

For each endpoint (a check of the pack, reusing its request): a few unmeasured warm-up
requests, then N requests at concurrency C. Latency percentiles (nearest rank) are taken over
the requests that succeeded; a request is an error when it got no answer or a status the
check does not accept. Endpoints run one after another so they do not skew each other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from smoke.answer import UnusableAnswer, receive
from smoke.model import Answer, Check, HotEndpoint, Pack, Thresholds, all_secrets
from smoke.runner import check_base_url, url_secrets
from smoke.secrets import Redactor


@dataclass(frozen=True)
class Sample:
    ms: float
    ok: bool
    detail: str = ""
    release: str = ""  # what the app said it runs (X-Release-Id / X-Revision), if anything
    revision: str = ""


@dataclass(frozen=True)
class EndpointStats:
    pack: str
    endpoint: str
    method: str
    path: str
    requests: int
    concurrency: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    min_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    thresholds: Thresholds
    breaches: tuple[str, ...] = ()
    first_error: str = ""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ok(self) -> bool:
        return not self.breaches


@dataclass(frozen=True)
class PerfResult:
    base_url: str
    endpoints: tuple[EndpointStats, ...]
    duration_ms: float
    secret_values: tuple[str, ...] = field(default=(), repr=False)
    release: str | None = None  # as the app reported it (X-Release-Id), for baselines
    revision: str | None = None

    @property
    def breached(self) -> tuple[EndpointStats, ...]:
        return tuple(e for e in self.endpoints if not e.ok)

    def exit_code(self, mode: str) -> int:
        """informational: always 0 (report only); blocking: 1 on any breach."""
        return 1 if mode == "blocking" and self.breached else 0


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (0 < q <= 100) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(
    pack: str, hot: HotEndpoint, samples: Sequence[Sample], concurrency: int
) -> EndpointStats:
    """Decide: percentiles and error rate of the samples against the endpoint's thresholds."""
    good = sorted(s.ms for s in samples if s.ok)
    errors = [s for s in samples if not s.ok]
    p50, p95, p99 = (percentile(good, q) for q in (50, 95, 99))
    th = hot.thresholds
    breaches: list[str] = []
    measured = (("p50", p50, th.p50_ms), ("p95", p95, th.p95_ms), ("p99", p99, th.p99_ms))
    for label, got, limit in measured:
        if limit is None:
            continue
        if got is None:
            breaches.append(f"{label}: no successful request to measure (limit {limit:g} ms)")
        elif got > limit:
            breaches.append(f"{label} {got:.1f} ms > {limit:g} ms")
    rate = len(errors) / len(samples) if samples else 0.0
    if rate > th.max_error_rate:
        breaches.append(f"error rate {rate:.1%} > {th.max_error_rate:.1%}")
    return EndpointStats(
        pack=pack,
        endpoint=hot.check.name,
        method=hot.check.request.method,
        path=hot.check.request.path,
        requests=len(samples),
        concurrency=concurrency,
        errors=len(errors),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        min_ms=good[0] if good else None,
        max_ms=good[-1] if good else None,
        mean_ms=sum(good) / len(good) if good else None,
        thresholds=th,
        breaches=tuple(breaches),
        first_error=errors[0].detail if errors else "",
    )


def perf_packs(packs: Iterable[Pack]) -> list[Pack]:
    return [p for p in packs if p.perf is not None]


def run_perf(
    packs: Sequence[Pack],
    *,
    base_url: str,
    client: httpx.Client | None = None,
    requests: int | None = None,
    concurrency: int | None = None,
    timer: Callable[[], float] = time.perf_counter,
    extra_secrets: Iterable[str] = (),
) -> PerfResult:
    """Measure every hot endpoint of every pack with a perf: section. `requests` and
    `concurrency` override the packs' own numbers."""
    base = check_base_url(base_url)
    secrets = tuple(sorted({*all_secrets(packs), *extra_secrets, *url_secrets(base)}))
    redact = Redactor(secrets)
    own = client is None
    http = client or httpx.Client(
        trust_env=False, limits=httpx.Limits(max_connections=256, max_keepalive_connections=256)
    )
    started = timer()
    stats: list[EndpointStats] = []
    seen: list[Sample] = []
    try:
        for pack in perf_packs(packs):
            assert pack.perf is not None
            n = requests or pack.perf.requests
            c = concurrency or pack.perf.concurrency
            for hot in pack.perf.endpoints:
                for _ in range(pack.perf.warmup):
                    _one(http, base, hot.check, timer, redact)
                samples = _measure(http, base, hot.check, n, c, timer, redact)
                seen += samples[:1]
                stats.append(summarize(pack.name, hot, samples, c))
    finally:
        if own:
            http.close()
    return PerfResult(
        base_url=redact(base),
        endpoints=tuple(stats),
        duration_ms=(timer() - started) * 1000,
        secret_values=secrets,
        release=next((s.release for s in seen if s.release), None),
        revision=next((s.revision for s in seen if s.revision), None),
    )


def _measure(
    http: httpx.Client,
    base: str,
    check: Check,
    n: int,
    c: int,
    timer: Callable[[], float],
    redact: Callable[[str], str],
) -> list[Sample]:
    with ThreadPoolExecutor(max_workers=min(c, n), thread_name_prefix="perf") as pool:
        return list(pool.map(lambda _: _one(http, base, check, timer, redact), range(n)))


def _one(
    http: httpx.Client,
    base: str,
    check: Check,
    timer: Callable[[], float],
    redact: Callable[[str], str],
) -> Sample:
    started = timer()
    try:
        received = receive(http, base, check, _TimerClock(timer))
    except httpx.HTTPError as exc:
        ms = (timer() - started) * 1000
        return Sample(ms=ms, ok=False, detail=f"{type(exc).__name__}: {redact(str(exc))[:120]}")
    except UnusableAnswer as exc:
        ms = (timer() - started) * 1000
        return Sample(ms=ms, ok=False, detail=redact(exc.detail)[:160])
    ms = (timer() - started) * 1000
    response = received.response
    answer = Answer(
        status=response.status_code,
        headers=response.headers,
        text=received.text,
        elapsed_ms=ms,
        redact=redact,
    )
    failure = check.status.check(answer)
    return Sample(
        ms=ms,
        ok=failure is None,
        detail=failure or "",
        release=redact(response.headers.get("x-release-id", ""))[:100],
        revision=redact(response.headers.get("x-revision", ""))[:100],
    )


@dataclass(frozen=True)
class _TimerClock:
    """perf measures with a bare timer; the answer's deadline needs only its monotonic()."""

    timer: Callable[[], float]

    def monotonic(self) -> float:
        return self.timer()

    def sleep(self, seconds: float) -> None:  # never called while receiving
        raise NotImplementedError
