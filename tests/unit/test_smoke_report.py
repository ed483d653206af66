"""Output formats: plain lines, the Rich table, JSON lines and JUnit XML (field names are a
contract with CI; docs/smoke.md lists them)."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from smoke import report
from smoke.model import CheckResult, PackResult, Thresholds
from smoke.perf import EndpointStats, PerfResult


def check(name: str, outcome: str = "pass", mode: str = "enforce", pack: str = "api", **kw):
    base = dict(
        pack=pack,
        name=name,
        mode=mode,
        outcome=outcome,
        attempts=1,
        duration_ms=12.0,
        detail="200 in 12 ms" if outcome == "pass" else "expected status 200 got 500",
        method="GET",
        path=f"/{name}",
        status=200 if outcome == "pass" else 500,
    )
    base.update(kw)
    return CheckResult(**base)  # type: ignore[arg-type]


RESULT = PackResult(
    packs=("api", "readiness-audit"),
    base_url="http://127.0.0.1:3000",
    checks=(
        check("ok"),
        check("broken", "fail"),
        check(
            "down",
            "error",
            detail="expected an answer got ConnectError: refused",
            status=None,
            attempts=3,
        ),
        check("slow", "fail", mode="warn", detail="expected an answer within 5 ms got 9 ms"),
        check("live-open", pack="readiness-audit"),
    ),
    duration_ms=1234.5,
)


def test_plain_lines() -> None:
    out = io.StringIO()
    report.smoke_result(RESULT, out, "plain")
    lines = out.getvalue().splitlines()
    assert lines[0] == "smoke against http://127.0.0.1:3000"
    assert lines[1] == "PASS  ok  GET /ok  200 in 12 ms"
    assert lines[2] == "FAIL  broken  GET /broken  expected status 200 got 500"
    assert lines[3] == (
        "ERROR down  GET /down  expected an answer got ConnectError: refused  (3 attempts in 12 ms)"
    )
    assert lines[4].startswith("WARN  slow")
    assert lines[-1] == ("smoke api, readiness-audit: 2/5 passed, 2 failed, 1 warned in 1234 ms")


def test_rich_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    out = io.StringIO()
    report.smoke_result(RESULT, out, "rich")
    text = out.getvalue()
    for word in ("result", "check", "PASS", "FAIL", "ERROR", "WARN", "api/broken", "2/5 passed"):
        assert word in text


def test_a_narrow_terminal_gets_the_detail_under_each_row(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "60")
    long = (
        "expected body matching the inline schema got a mismatch at $.items[0]: 'id' is a "
        "required property"
    )
    result = PackResult(
        packs=("api",),
        base_url="http://x",
        duration_ms=5,
        checks=(check("items", "fail", detail=long),),
    )
    out = io.StringIO()
    report.smoke_result(result, out, "rich")
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in out.getvalue().splitlines()]
    assert lines[1].startswith("FAIL  items  GET /")
    details = [ln for ln in lines[2:-1]]
    assert len(details) >= 2 and all(ln.startswith("      ") for ln in details)
    assert all(len(ln) <= 60 for ln in lines)
    assert " ".join(ln.strip() for ln in details) == long


def test_choose_style() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert report.choose_style(io.StringIO(), json_out=False, plain=False) == "plain"
    assert report.choose_style(Tty(), json_out=False, plain=False) == "rich"
    assert report.choose_style(Tty(), json_out=False, plain=True) == "plain"
    assert report.choose_style(Tty(), json_out=True, plain=False) == "json"


def test_json_lines() -> None:
    records = [json.loads(line) for line in report.smoke_json_lines(RESULT)]
    assert len(records) == 6
    first = records[0]
    assert isinstance(first.pop("t"), float | int)
    assert first == {
        "event": "check",
        "pack": "api",
        "check": "ok",
        "mode": "enforce",
        "outcome": "pass",
        "verdict": "PASS",
        "passed": True,
        "method": "GET",
        "path": "/ok",
        "status": 200,
        "attempts": 1,
        "duration_ms": 12.0,
        "detail": "200 in 12 ms",
    }
    assert records[2]["outcome"] == "error" and records[2]["status"] is None
    assert records[3]["verdict"] == "WARN"
    outcome = records[-1]
    outcome.pop("t")
    assert outcome == {
        "event": "outcome",
        "op": "smoke",
        "result": "failed",
        "exit_code": 1,
        "release": None,
        "live": None,
        "message": RESULT.summary(),
        "evidence": [c.line() for c in RESULT.failed_enforced],
        "smoke": {
            "packs": ["api", "readiness-audit"],
            "base_url": "http://127.0.0.1:3000",
            "total": 5,
            "passed": 2,
            "failed": 2,
            "warned": 1,
            "failed_checks": ["broken", "down"],
            "warned_checks": ["slow"],
            "duration_ms": 1234.5,
        },
    }


def test_junit_xml() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    root = ET.fromstring(report.junit_xml(RESULT, timestamp=when))
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "5",
        "failures": "1",
        "errors": "1",
        "skipped": "1",
    }
    api, audit = root.findall("testsuite")
    assert (api.get("name"), api.get("tests"), api.get("timestamp")) == (
        "api",
        "4",
        "2026-01-02T03:04:05",
    )
    assert api.find("properties/property").attrib == {  # type: ignore[union-attr]
        "name": "base_url",
        "value": "http://127.0.0.1:3000",
    }
    cases = {c.get("name"): c for c in api.findall("testcase")}
    assert cases["ok"].get("classname") == "smoke.api"
    assert cases["ok"].get("time") == "0.012"
    assert cases["ok"].find("failure") is None
    failure = cases["broken"].find("failure")
    assert failure is not None and failure.get("message") == "expected status 200 got 500"
    assert "GET /broken" in (failure.text or "")
    assert cases["down"].find("error").get("type") == "no-answer"  # type: ignore[union-attr]
    skipped = cases["slow"].find("skipped")
    assert skipped is not None
    assert skipped.get("message", "").startswith("warn (not blocking): expected an answer")
    assert audit.get("tests") == "1" and audit.get("failures") == "0"


def test_junit_strips_characters_xml_cannot_hold() -> None:
    bad = PackResult(
        packs=("p",),
        base_url="http://x",
        checks=(check("c", "fail", pack="p", detail="got \x00\x07 bytes"),),
        duration_ms=1,
    )
    ET.fromstring(report.junit_xml(bad))


STATS = EndpointStats(
    pack="api",
    endpoint="items-list",
    method="GET",
    path="/api/items",
    requests=200,
    concurrency=8,
    errors=2,
    p50_ms=3.0,
    p95_ms=120.0,
    p99_ms=140.0,
    min_ms=1.0,
    max_ms=150.0,
    mean_ms=10.0,
    thresholds=Thresholds(p95_ms=100, p99_ms=250, max_error_rate=0.05),
    breaches=("p95 120.0 ms > 100 ms",),
    first_error="expected status 200 got 500",
)
PERF = PerfResult(base_url="http://x", endpoints=(STATS,), duration_ms=2500)


def test_perf_plain_and_exit_codes() -> None:
    out = io.StringIO()
    report.perf_result(PERF, "blocking", out, "plain")
    lines = out.getvalue().splitlines()
    assert lines[0] == "perf against http://x (blocking)"
    assert lines[1].startswith(
        "BREACH items-list  GET /api/items  n=200 c=8 errors=2 (1.0%)  p50 3.0 ms  p95 120.0 ms"
    )
    assert "(limits: p95 100 ms, p99 250 ms, errors 5.0%)" in lines[1]
    assert "breach: p95 120.0 ms > 100 ms" in lines[1]
    assert lines[2] == "perf: 1 endpoint(s), 1 breached thresholds in 2.5 s (blocking: exit 1)"
    assert PERF.exit_code("blocking") == 1 and PERF.exit_code("informational") == 0


def test_perf_json_and_rich() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    records = [
        json.loads(x) for x in report.perf_json_lines(PERF, "informational", started_at=when)
    ]
    assert records[0]["event"] == "perf"
    assert records[0]["p95_ms"] == 120.0
    assert records[0]["error_rate"] == 0.01
    assert records[0]["thresholds"] == {
        "p50_ms": None,
        "p95_ms": 100,
        "p99_ms": 250,
        "max_error_rate": 0.05,
    }
    assert records[0]["breaches"] == ["p95 120.0 ms > 100 ms"]
    assert records[0]["ok"] is False
    assert (records[1]["event"], records[1]["op"], records[1]["result"]) == (
        "outcome",
        "perf",
        "breached",
    )
    assert records[1]["exit_code"] == 0
    assert records[1]["evidence"] == ["items-list: p95 120.0 ms > 100 ms"]
    assert records[1]["perf"] == {
        "base_url": "http://x",
        "started_at": "2026-01-02T00:00:00+00:00",
        "mode": "informational",
        "endpoints": 1,
        "breached": ["items-list"],
        "duration_ms": 2500,
        "release": None,
        "revision": None,
        "baseline": None,
    }
    assert records[0]["baseline"] is None
    out = io.StringIO()
    report.perf_result(PERF, "informational", out, "rich")
    assert "BREACH" in out.getvalue() and "items-list" in out.getvalue()


def test_error_is_masked() -> None:
    err = io.StringIO()
    report.error("bad token s3cr3t-value", err, ["s3cr3t-value"])
    assert err.getvalue() == "error: bad token ********\n"
