"""Perf thresholds: percentiles, error rate, breaches, and the run against a MockTransport
with a fake timer (scripted latencies, no waiting)."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import httpx
import pytest

from smoke.commands import run_perf
from smoke.model import HotEndpoint, Thresholds
from smoke.pack import parse_pack
from smoke.perf import Sample, percentile, summarize
from smoke.perf import run_perf as measure

PACK = """
version: 1
name: api
checks:
  - {name: items, request: {path: /items}, expect: {status: 200}}
  - {name: other, request: {path: /other}}
perf:
  requests: 10
  concurrency: 1
  warmup: 2
  endpoints:
    - {check: items, p50_ms: 20, p95_ms: 50, p99_ms: 90, max_error_rate: 0.1}
"""


class Timer:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert percentile([1.0, 2.0], 50) == 1
    assert percentile([], 50) is None


def hot(**th) -> HotEndpoint:
    pack = parse_pack(textwrap.dedent(PACK), source=Path("api.yml"), environ={})
    return HotEndpoint(check=pack.checks[0], thresholds=Thresholds(**th))


def test_summarize_within_thresholds() -> None:
    samples = [Sample(ms=float(i), ok=True) for i in range(1, 101)]
    stats = summarize("api", hot(p50_ms=50, p95_ms=95, p99_ms=99), samples, 4)
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms) == (50, 95, 99)
    assert (stats.min_ms, stats.max_ms, stats.mean_ms) == (1, 100, 50.5)
    assert stats.ok and stats.breaches == () and stats.errors == 0


def test_summarize_breaches_and_errors() -> None:
    samples = [Sample(ms=float(i), ok=True) for i in range(1, 91)]
    samples += [Sample(ms=1.0, ok=False, detail="expected status 200 got 500")] * 10
    stats = summarize("api", hot(p95_ms=50, max_error_rate=0.05), samples, 4)
    assert stats.errors == 10 and stats.error_rate == 0.1
    assert stats.p95_ms == 86  # over the 90 successful requests only
    assert stats.breaches == ("p95 86.0 ms > 50 ms", "error rate 10.0% > 5.0%")
    assert stats.first_error == "expected status 200 got 500"


def test_summarize_all_failed() -> None:
    samples = [Sample(ms=1.0, ok=False, detail="ConnectError: refused")] * 3
    stats = summarize("api", hot(p95_ms=50), samples, 1)
    assert stats.p95_ms is None
    assert stats.breaches[0] == "p95: no successful request to measure (limit 50 ms)"


def scripted(timer: Timer, latencies_ms: list[float], statuses: list[int] | None = None):
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        i = calls["n"]
        calls["n"] += 1
        timer.t += latencies_ms[i % len(latencies_ms)] / 1000
        status = statuses[i % len(statuses)] if statuses else 200
        return httpx.Response(status, text="{}")

    return handler, calls


def test_run_perf_measures_the_hot_endpoints_only() -> None:
    pack = parse_pack(textwrap.dedent(PACK), source=Path("api.yml"), environ={})
    timer = Timer()
    handler, calls = scripted(timer, [10, 10, 10, 10, 10, 10, 10, 10, 10, 100])
    result = measure(
        [pack],
        base_url="http://app",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        timer=timer,
    )
    assert calls["n"] == 12  # 2 warm-up + 10 measured, and nothing for `other`
    (stats,) = result.endpoints
    assert (stats.endpoint, stats.requests, stats.concurrency) == ("items", 10, 1)
    assert stats.p50_ms == pytest.approx(10)
    assert stats.p99_ms == pytest.approx(100)
    assert stats.breaches == ("p95 100.0 ms > 50 ms", "p99 100.0 ms > 90 ms")
    assert result.exit_code("blocking") == 1 and result.exit_code("informational") == 0


def test_run_perf_counts_unexpected_statuses_as_errors() -> None:
    pack = parse_pack(textwrap.dedent(PACK), source=Path("api.yml"), environ={})
    timer = Timer()
    handler, _ = scripted(timer, [5], [200, 200, 200, 500])
    result = measure(
        [pack],
        base_url="http://app",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        timer=timer,
        requests=8,
    )
    (stats,) = result.endpoints
    assert stats.requests == 8
    assert stats.errors == 2
    assert "error rate 25.0% > 10.0%" in stats.breaches
    assert stats.first_error.startswith("expected status 200 got 500")


def test_run_perf_command_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "api.yml"
    path.write_text(textwrap.dedent(PACK))

    def run(mode: str, status: int = 200, **kw) -> tuple[int, str]:
        out = io.StringIO()
        err = io.StringIO()
        code = run_perf(
            base_url="http://app",
            packs=[path],
            mode=mode,
            out=out,
            err=err,
            client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(status))),
            environ={},
            **kw,
        )
        return code, out.getvalue() + err.getvalue()

    assert run("blocking")[0] == 0
    assert run("informational", 500)[0] == 0
    code, text = run("blocking", 500)
    assert code == 1 and "error rate 100.0% > 10.0%" in text
    code, text = run("blocking", json_out=True, requests=3, concurrency=2)
    records = [json.loads(line) for line in text.splitlines()]
    assert (records[0]["requests"], records[0]["concurrency"]) == (3, 2)
    assert (records[-1]["event"], records[-1]["op"]) == ("outcome", "perf")
    assert run("sometimes")[0] == 2
    assert run("blocking", requests=0)[0] == 2


def test_pack_without_perf_section_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "plain.yml"
    path.write_text("version: 1\nchecks: [{name: a, request: {path: /a}}]\n")
    err = io.StringIO()
    assert run_perf(base_url="http://app", packs=[path], err=err, environ={}) == 2
    assert "nothing to measure: none of the packs has a perf: section" in err.getvalue()
