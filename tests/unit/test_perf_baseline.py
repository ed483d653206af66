"""Perf baselines and regression detection: synthetic runs around each edge of the policy
(p95 percentage and milliseconds, error rate, consecutive runs), endpoints missing on either
side, unusable baseline and history files (exit 2), and the `perf` command saving, comparing
and keeping its history against a MockTransport with a scripted timer."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from smoke import trend
from smoke.baseline import (
    BASELINE_FORMAT,
    Baseline,
    BaselineError,
    Figures,
    Policy,
    Run,
    baseline_from,
    compare,
    kept_history,
    parse_baseline,
    parse_history,
    run_line,
)
from smoke.cli import main as smoke_cli
from smoke.commands import BaselineOptions, run_perf, run_perf_trend

POLICY = Policy(p95_increase_pct=50, p95_increase_ms=10, error_rate_increase=0.01, consecutive=1)
KEY = "api/items"


def figures(p95: float | None = 20.0, error_rate: float = 0.0, key: str = KEY, **kw) -> Figures:
    values = {
        "method": "GET",
        "path": "/items",
        "requests": 200,
        "concurrency": 8,
        "errors": round(error_rate * 200),
        "p50_ms": 5.0,
        "p99_ms": 40.0,
        **kw,
    }
    return Figures(key=key, error_rate=error_rate, p95_ms=p95, **values)


def run(at: str = "2026-11-30T02:00:00+00:00", *endpoints: Figures) -> Run:
    return Run(at=at, endpoints={f.key: f for f in (endpoints or (figures(),))})


def base(*endpoints: Figures, saved_at: str = "2026-11-29T02:00:00+00:00") -> Baseline:
    return Baseline(
        source="perf/baseline.json",
        saved_at=saved_at,
        endpoints={f.key: f for f in (endpoints or (figures(),))},
    )


def status(now: Figures, policy: Policy = POLICY, history: tuple[Run, ...] = ()) -> str:
    comparison = compare(run("2026-11-30T02:00:00+00:00", now), base(), policy, history)
    verdict = comparison.of(KEY)
    assert verdict is not None
    return verdict.status


# ---------------------------------------------------------------- the policy's edges --


@pytest.mark.parametrize(
    ("p95", "expected"),
    [
        (30.0, "ok"),  # +10 ms exactly (+50 %): neither is "more than"
        (30.5, "regressed"),  # +10.5 ms and +52.5 %: both over
        (29.9, "ok"),  # just under both
    ],
)
def test_p95_needs_both_the_percentage_and_the_milliseconds(p95: float, expected: str) -> None:
    assert status(figures(p95=p95)) == expected


def test_p95_over_in_percent_but_not_in_ms_is_not_a_regression() -> None:
    policy = Policy(p95_increase_pct=50, p95_increase_ms=10, consecutive=1)
    small = Baseline(source="b.json", saved_at="2026-11-29", endpoints={KEY: figures(p95=2.0)})
    # 2 ms -> 11.9 ms is +495 % but only +9.9 ms: a fast endpoint's jitter, not a regression
    assert compare(run("2026-11-30", figures(p95=11.9)), small, policy).regressed == ()
    (verdict,) = compare(run("2026-11-30", figures(p95=12.1)), small, policy).regressed
    assert verdict.key == KEY


def test_p95_over_in_ms_but_not_in_percent_is_not_a_regression() -> None:
    slow = Baseline(source="b.json", saved_at="2026-11-29", endpoints={KEY: figures(p95=400.0)})
    # +100 ms on a 400 ms endpoint is +25 %: under the 50 % the policy asks for
    verdict = compare(run("2026-11-30", figures(p95=500.0)), slow, POLICY).of(KEY)
    assert verdict is not None and verdict.status == "ok"
    assert verdict.p95_delta_ms == pytest.approx(100) and verdict.p95_delta_pct == pytest.approx(25)


@pytest.mark.parametrize(
    ("error_rate", "expected"), [(0.01, "ok"), (0.015, "regressed"), (0.005, "ok")]
)
def test_error_rate_edge(error_rate: float, expected: str) -> None:
    assert status(figures(error_rate=error_rate)) == expected


def test_no_successful_request_is_over() -> None:
    comparison = compare(run("2026-11-30", figures(p95=None, error_rate=1.0)), base(), POLICY)
    verdict = comparison.of(KEY)
    assert verdict is not None and verdict.status == "regressed"
    assert verdict.reasons[0] == "p95: no successful request (baseline 20.0 ms)"


def test_reasons_name_the_figures_and_the_baseline() -> None:
    comparison = compare(run("2026-11-30", figures(p95=45.0)), base(), POLICY)
    (verdict,) = comparison.regressed
    assert verdict.reasons == ("p95 45.0 ms vs 20.0 ms: +25.0 ms (+125 %)",)
    assert comparison.as_json()["regressed"] == ["items"]
    assert comparison.as_json()["file"] == "perf/baseline.json"


# ---------------------------------------------------------------- consecutive runs --

THREE = Policy(p95_increase_pct=50, p95_increase_ms=10, consecutive=3)
SLOW = figures(p95=45.0)
FAST = figures(p95=21.0)


def history(*runs: Figures) -> tuple[Run, ...]:
    return tuple(run(f"2026-11-30T0{i}:00:00+00:00", f) for i, f in enumerate(runs))


def test_over_once_is_not_yet_a_regression() -> None:
    comparison = compare(run("2026-11-30T09:00:00+00:00", SLOW), base(), THREE, history(FAST))
    verdict = comparison.of(KEY)
    assert verdict is not None and (verdict.status, verdict.streak) == ("over", 1)
    assert comparison.regressed == ()


def test_two_in_a_row_of_three_is_over() -> None:
    comparison = compare(run("2026-11-30T09:00:00+00:00", SLOW), base(), THREE, history(SLOW))
    verdict = comparison.of(KEY)
    assert verdict is not None and (verdict.status, verdict.streak) == ("over", 2)


def test_three_in_a_row_is_a_regression() -> None:
    earlier = history(FAST, SLOW, SLOW)
    comparison = compare(run("2026-11-30T09:00:00+00:00", SLOW), base(), THREE, earlier)
    verdict = comparison.of(KEY)
    assert verdict is not None and (verdict.status, verdict.streak) == ("regressed", 3)


def test_a_good_run_in_between_resets_the_streak() -> None:
    earlier = history(SLOW, SLOW, FAST, SLOW)
    comparison = compare(run("2026-11-30T09:00:00+00:00", SLOW), base(), THREE, earlier)
    verdict = comparison.of(KEY)
    assert verdict is not None and (verdict.status, verdict.streak) == ("over", 2)


def test_runs_before_the_baseline_was_saved_do_not_count() -> None:
    earlier = history(SLOW, SLOW)  # 2026-11-30T00:00 and T01:00
    fresh = base(saved_at="2026-11-30T00:30:00+00:00")
    comparison = compare(run("2026-11-30T09:00:00+00:00", SLOW), fresh, THREE, earlier)
    verdict = comparison.of(KEY)
    assert verdict is not None and (verdict.status, verdict.streak) == ("over", 2)


def test_a_run_that_did_not_measure_the_endpoint_ends_the_streak() -> None:
    other = figures(key="api/other")
    earlier = (*history(SLOW, SLOW), run("2026-11-30T05:00:00+00:00", other))
    comparison = compare(run("2026-11-30T09:00:00+00:00", SLOW), base(), THREE, earlier)
    verdict = comparison.of(KEY)
    assert verdict is not None and verdict.streak == 1


# ---------------------------------------------------------------- endpoints on one side --


def test_endpoint_missing_from_the_baseline_is_new_not_a_regression() -> None:
    fresh = figures(key="api/fresh", p95=900.0)
    comparison = compare(run("2026-11-30", figures(), fresh), base(), POLICY)
    verdict = comparison.of("api/fresh")
    assert verdict is not None and verdict.status == "new"
    assert comparison.regressed == () and comparison.as_json()["new"] == ["fresh"]


def test_endpoint_missing_from_the_run_is_listed() -> None:
    old = figures(key="api/gone")
    comparison = compare(run("2026-11-30", figures()), base(figures(), old), POLICY)
    assert comparison.missing == ("api/gone",)
    assert comparison.as_json()["missing"] == ["gone"]


def test_different_settings_are_noted() -> None:
    comparison = compare(run("2026-11-30", figures(requests=50, concurrency=2)), base(), POLICY)
    assert comparison.notes == (
        "items: measured with n=50 c=2, the baseline with n=200 c=8; not like for like",
    )


# ---------------------------------------------------------------- files --


def document(*runs: Run) -> dict:
    return baseline_from(runs, saved_at="2026-11-30T03:00:00+00:00", machine={"cpus": 2})


def test_baseline_round_trips_and_takes_the_median_of_runs() -> None:
    runs = [run(f"2026-11-30T0{i}:00:00+00:00", figures(p95=p)) for i, p in enumerate((10, 50, 20))]
    doc = document(*runs)
    assert doc["format"] == BASELINE_FORMAT and doc["runs"] == 3
    assert doc["endpoints"][KEY]["p95_ms"] == 20  # the median, not the newest (20) by chance
    doc2 = document(*runs[:2])
    assert doc2["endpoints"][KEY]["p95_ms"] == 30
    parsed = parse_baseline(json.dumps(doc), "b.json")
    assert parsed.endpoints[KEY].p95_ms == 20 and parsed.runs == 3
    assert parsed.machine == {"cpus": 2} and parsed.saved_at == "2026-11-30T03:00:00+00:00"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "format is not 'releasegate-perf-baseline/1'"),
        (json.dumps({"format": BASELINE_FORMAT, "saved_at": "x"}), "endpoints is missing"),
        (
            json.dumps(
                {"format": BASELINE_FORMAT, "saved_at": "x", "endpoints": {KEY: {"method": "GET"}}}
            ),
            "endpoints.api/items.path is missing",
        ),
        (
            json.dumps(
                {
                    "format": BASELINE_FORMAT,
                    "saved_at": "x",
                    "endpoints": {KEY: {**figures().as_json(), "p95_ms": "fast"}},
                }
            ),
            "has a value that is not a number",
        ),
        (
            json.dumps({"format": BASELINE_FORMAT, "endpoints": {KEY: figures().as_json()}}),
            "saved_at is missing",
        ),
    ],
)
def test_corrupt_baseline_is_a_clear_error(text: str, says: str) -> None:
    with pytest.raises(BaselineError) as caught:
        parse_baseline(text, "perf/baseline.json")
    message = str(caught.value)
    assert message.startswith("baseline perf/baseline.json")
    assert says in message
    assert "--save-baseline" in message  # and how to fix it


def test_history_keeps_the_newest_runs_and_names_a_bad_line() -> None:
    lines: list[str] = []
    for i in range(5):
        lines = kept_history(lines, run(f"2026-11-30T0{i}:00:00+00:00"), keep=3).splitlines()
    runs = parse_history("\n".join(lines), "h.jsonl")
    assert [r.at[11:13] for r in runs] == ["02", "03", "04"]
    with pytest.raises(BaselineError, match=r"history h.jsonl line 2 is not valid JSON"):
        parse_history(run_line(run()) + "\n{oops\n", "h.jsonl")


# ---------------------------------------------------------------- the trend chart --


def test_trend_draws_p95_per_endpoint_with_the_baseline_line() -> None:
    runs = [
        run("2026-11-30T02:00:00+00:00", figures(p95=20.0), figures(key="api/b", p95=5.0)),
        run("2026-11-30T02:00:30+00:00", figures(p95=45.5), figures(key="api/b", p95=6.0)),
    ]
    text = trend.markdown(runs, base())
    assert text.count("```mermaid\nxychart-beta") == 2
    assert 'title "items p95 (ms)"' in text
    assert 'x-axis ["11-30 02:00", "11-30 02:00 #2"]' in text
    assert "line [20.0, 45.5]" in text and "line [20.0, 20.0]" in text
    assert "line [5.0, 6.0]" in text


def test_trend_labels_cannot_break_out_of_the_chart() -> None:
    evil = figures(key='api/x"]\n```\n# hi')
    text = trend.markdown([run("2026-11-30T02:00:00+00:00", evil)])
    assert text.count("```") == 2
    assert '"x_______# hi p95 (ms)"' in text


# ---------------------------------------------------------------- the perf command --

PACK = """
version: 1
name: api
checks:
  - {name: items, request: {path: /items}, expect: {status: 200}}
perf:
  requests: 20
  concurrency: 1
  warmup: 0
  endpoints:
    - {check: items, p95_ms: 1000}
"""


class Timer:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class App:
    """A MockTransport app whose latency (scripted on the fake timer) and status we set."""

    def __init__(self, ms: float = 10.0, status: int = 200) -> None:
        self.ms = ms
        self.status = status
        self.timer = Timer()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.timer.t += self.ms / 1000
        return httpx.Response(
            self.status, text="{}", headers={"X-Release-Id": "20261130020000-abcdef1"}
        )


def perf(tmp_path: Path, app: App, **kw) -> tuple[int, str, str]:
    pack = tmp_path / "api.yml"
    pack.write_text(textwrap.dedent(PACK))
    out, err = io.StringIO(), io.StringIO()
    code = run_perf(
        base_url="http://app",
        packs=[pack],
        out=out,
        err=err,
        plain=True,
        client=httpx.Client(transport=httpx.MockTransport(app)),
        timer=app.timer,
        environ={},
        now=lambda: datetime(2026, 11, 30, 2, 0, tzinfo=UTC),
        **kw,
    )
    return code, out.getvalue(), err.getvalue()


def test_save_then_compare_reports_the_regression_and_blocks(tmp_path: Path) -> None:
    saved = tmp_path / "baseline.json"
    code, out, _ = perf(tmp_path, App(ms=10), baseline=BaselineOptions(save=saved))
    assert code == 0 and f"saved the baseline {saved} from this run" in out
    doc = json.loads(saved.read_text())
    assert doc["endpoints"]["api/items"]["p95_ms"] == pytest.approx(10)
    assert doc["release"] == "20261130020000-abcdef1"
    assert doc["machine"]["cpus"] and doc["endpoints"]["api/items"]["requests"] == 20

    policy = Policy(consecutive=1)
    keep = BaselineOptions(compare=saved, policy=policy)
    code, out, _ = perf(tmp_path, App(ms=40), baseline=keep, mode="blocking")
    assert code == 1
    assert "REGRESSED items: p95 40.0 ms vs 10.0 ms: +30.0 ms (+300 %); 1/1" in out
    assert f"regressed against {saved}" in out
    code, _, _ = perf(tmp_path, App(ms=40), baseline=keep, mode="informational")
    assert code == 0
    code, out, _ = perf(tmp_path, App(ms=15), baseline=keep, mode="blocking")
    assert code == 0 and "OK        items: p95 15.0 ms vs 10.0 ms (+5.0 ms)" in out


def test_consecutive_runs_are_counted_through_the_history_file(tmp_path: Path) -> None:
    saved = tmp_path / "baseline.json"
    perf(tmp_path, App(ms=10), baseline=BaselineOptions(save=saved))
    keep = BaselineOptions(compare=saved, policy=Policy(consecutive=2))
    code, out, _ = perf(tmp_path, App(ms=40), baseline=keep, mode="blocking")
    assert code == 0 and "1/2 consecutive runs (not yet a regression)" in out
    code, out, _ = perf(tmp_path, App(ms=40), baseline=keep, mode="blocking")
    assert code == 1 and "2/2 consecutive runs" in out
    history = tmp_path / "baseline.history.jsonl"
    assert len(history.read_text().splitlines()) == 3  # the saving run and two compared


def test_json_output_carries_the_comparison(tmp_path: Path) -> None:
    saved = tmp_path / "baseline.json"
    perf(tmp_path, App(ms=10), baseline=BaselineOptions(save=saved))
    keep = BaselineOptions(compare=saved, policy=Policy(consecutive=1))
    code, out, _ = perf(tmp_path, App(ms=40), baseline=keep, mode="blocking", json_out=True)
    records = [json.loads(line) for line in out.splitlines()]
    endpoint, outcome = records
    summary = outcome["perf"]
    assert (outcome["event"], outcome["op"], outcome["result"]) == ("outcome", "perf", "regressed")
    assert endpoint["baseline"]["status"] == "regressed"
    assert endpoint["baseline"]["p95_ms"] == pytest.approx(10)
    assert endpoint["baseline"]["p95_delta_ms"] == pytest.approx(30)
    assert summary["baseline"]["regressed"] == ["items"]
    assert summary["baseline"]["file"] == str(saved)
    assert summary["baseline"]["policy"]["consecutive"] == 1
    assert outcome["exit_code"] == code == 1
    assert summary["release"] == "20261130020000-abcdef1"


def test_median_baseline_from_the_history(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    for ms in (10, 80):
        perf(tmp_path, App(ms=ms), baseline=BaselineOptions(history=history))
    saved = tmp_path / "b.json"
    keep = BaselineOptions(save=saved, history=history, save_runs=3)
    code, out, _ = perf(tmp_path, App(ms=20), baseline=keep)
    assert code == 0 and "from the median of the last 3 runs" in out
    assert json.loads(saved.read_text())["endpoints"]["api/items"]["p95_ms"] == pytest.approx(20)


def test_corrupt_baseline_is_exit_2_before_anything_is_contacted(tmp_path: Path) -> None:
    saved = tmp_path / "baseline.json"
    saved.write_text('{"format": "releasegate-perf-baseline/1", "endpoints": ')
    app = App()
    code, out, err = perf(tmp_path, app, baseline=BaselineOptions(compare=saved))
    assert code == 2 and out == ""
    assert f"baseline {saved} is not valid JSON" in err and "--save-baseline" in err
    assert app.timer.t == 0  # no request was sent
    code, _, err = perf(tmp_path, app, baseline=BaselineOptions(compare=tmp_path / "none.json"))
    assert code == 2 and "cannot read the baseline" in err


def test_under_actions_the_step_summary_shows_the_regression(tmp_path: Path) -> None:
    saved = tmp_path / "baseline.json"
    perf(tmp_path, App(ms=10), baseline=BaselineOptions(save=saved))
    summary = tmp_path / "summary.md"
    keep = BaselineOptions(compare=saved, policy=Policy(consecutive=1))
    environ = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    pack = tmp_path / "api.yml"
    app = App(ms=40)
    err = io.StringIO()
    code = run_perf(
        base_url="http://app",
        packs=[pack],
        mode="informational",
        out=io.StringIO(),
        err=err,
        client=httpx.Client(transport=httpx.MockTransport(app)),
        timer=app.timer,
        environ=environ,
        baseline=keep,
    )
    assert code == 0
    text = summary.read_text()
    assert "releasegate perf (informational): exit 0" in text
    assert "**regressed** +30.0 ms (+300 %)" in text
    assert err.getvalue().startswith("::warning title=perf regression%3A items::p95 40.0 ms")


def test_perf_trend_command(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    perf(tmp_path, App(ms=10), baseline=BaselineOptions(history=history))
    out = io.StringIO()
    assert run_perf_trend(history, out=out) == 0
    assert "xychart-beta" in out.getvalue() and "line [10.0]" in out.getvalue()
    err = io.StringIO()
    assert run_perf_trend(tmp_path / "missing.jsonl", err=err) == 2
    assert "cannot read the perf history" in err.getvalue()


def test_cli_options_reach_the_policy(tmp_path: Path) -> None:
    saved = tmp_path / "b.json"
    saved.write_text("not json")
    pack = tmp_path / "api.yml"
    pack.write_text(textwrap.dedent(PACK))
    result = CliRunner().invoke(
        smoke_cli,
        ["perf", "--base-url", "http://127.0.0.1:9", str(pack), "--baseline", str(saved)],
    )
    assert result.exit_code == 2 and "is not valid JSON" in result.output
    result = CliRunner().invoke(smoke_cli, ["perf", "--help"])
    for option in ("--save-baseline", "--history", "--consecutive", "--p95-increase-pct"):
        assert option in result.output


def test_the_invoke_door_takes_the_baseline_too(tmp_path: Path) -> None:
    saved = tmp_path / "b.json"
    saved.write_text("[]")
    pack = tmp_path / "api.yml"
    pack.write_text(textwrap.dedent(PACK))
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "--search-root",
            str(root),
            "perf",
            "http://127.0.0.1:9",
            "--pack",
            str(pack),
            "--baseline",
            str(saved),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"baseline {saved}: format is not" in res.stderr
