"""The only smoke module that prints: rows on a terminal (drawn by smoke.render, the renderer
deploy's tables use too), plain lines otherwise, JSON lines (`--json`), and JUnit XML
(`--junit`). Every text passes the redaction filter, seeded with the secrets of the packs that
ran, on its way out."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET  # only builds XML; never parses untrusted input
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from smoke.baseline import Comparison, EndpointVerdict, comparison_lines
from smoke.jsonlines import JsonLines
from smoke.model import CheckResult, PackResult
from smoke.perf import EndpointStats, PerfResult
from smoke.render import Column, Renderer, Rows
from smoke.secrets import Redactor

Style = Literal["rich", "plain", "json"]
_XML_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def choose_style(out: IO[str], *, json_out: bool, plain: bool) -> Style:
    if json_out:
        return "json"
    if not plain and _isatty(out):
        return "rich"
    return "plain"


def _isatty(out: IO[str]) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def error(
    message: str,
    err: IO[str],
    secrets: Iterable[str] = (),
    *,
    lines: JsonLines | None = None,
    op: str = "smoke",
    exit_code: int = 2,
) -> None:
    """A problem that stops the run (bad pack, bad arguments): one paragraph on stderr and,
    with --json, an `error` event and the `outcome` on stdout (never an empty stdout)."""
    secrets = tuple(secrets)
    print(f"error: {Redactor(secrets)(message)}", file=err, flush=True)
    if lines is not None and not lines.ended:
        lines.redact.add(*secrets)
        lines.error(message)
        lines.outcome(op=op, result="error", exit_code=exit_code, message=message)


# ------------------------------------------------------------------ smoke results --


def smoke_result(
    result: PackResult, out: IO[str], style: Style, lines: JsonLines | None = None
) -> None:
    redact = Redactor(result.secret_values)
    if style == "json":
        write_smoke_json(result, lines or JsonLines(out))
    elif style == "rich":
        Renderer(out, redact).rows(smoke_rows(result))
    else:
        print(redact(f"smoke against {result.target}"), file=out)
        for check in result.checks:
            print(redact(check.line()), file=out)
        print(redact(result.summary()), file=out, flush=True)


# What a smoke run shows as rows (smoke.render draws them, as it draws deploy's tables).
SMOKE_COLUMNS = (
    Column("result", "verdict"),
    Column("check"),
    Column("request"),
    Column("tries", "number", "x"),
    Column("ms", "number", " ms"),
    Column("detail", "detail"),
)


def smoke_rows(result: PackResult) -> Rows:
    multi = len(result.packs) > 1
    return Rows(
        title=f"smoke against {result.target}",
        columns=SMOKE_COLUMNS,
        rows=[
            (
                c.verdict,
                f"{c.pack}/{c.name}" if multi else c.name,
                f"{c.method} {c.path}",
                str(c.attempts),
                f"{c.duration_ms:.0f}",
                c.detail,
            )
            for c in result.checks
        ],
        summary=result.summary(),
        failed=bool(result.failed_enforced),
    )


def check_record(c: CheckResult) -> dict[str, Any]:
    return {
        "pack": c.pack,
        "check": c.name,
        "mode": c.mode,
        "outcome": c.outcome,
        "verdict": c.verdict,
        "passed": c.passed,
        "method": c.method,
        "path": c.path,
        "status": c.status,
        "attempts": c.attempts,
        "duration_ms": round(c.duration_ms, 1),
        "detail": c.detail,
    }


def summary_record(result: PackResult) -> dict[str, Any]:
    return {
        "packs": list(result.packs),
        "base_url": result.base_url,
        "total": len(result.checks),
        "passed": len(result.passed),
        "failed": len(result.failed_enforced),
        "warned": len(result.warned),
        "failed_checks": [c.name for c in result.failed_enforced],
        "warned_checks": [c.name for c in result.warned],
        "duration_ms": round(result.duration_ms, 1),
    }


def write_smoke_json(result: PackResult, lines: JsonLines, *, defer_outcome: bool = False) -> None:
    """A `check` event per check, then the outcome (`smoke` holds the summary). With
    defer_outcome the caller writes the outcome (a JUnit file that could not be written)."""
    lines.redact.add(*result.secret_values)
    for c in result.checks:
        lines.emit("check", **check_record(c))
    if defer_outcome:
        return
    lines.outcome(
        op="smoke",
        result="passed" if result.exit_code == 0 else "failed",
        exit_code=result.exit_code,
        message=result.summary(),
        evidence=[c.line() for c in result.failed_enforced],
        smoke=summary_record(result),
    )


def smoke_json_lines(result: PackResult) -> list[str]:
    """The JSON lines of a smoke run: one `check` event per check, then the outcome."""
    buffer = io.StringIO()
    write_smoke_json(result, JsonLines(buffer))
    return buffer.getvalue().splitlines()


def junit_xml(result: PackResult, *, timestamp: datetime | None = None) -> str:
    """JUnit XML: one <testsuite> per pack, one <testcase> per check. A failed enforced check
    is a <failure> (wrong answer) or an <error> (no answer); a warn-mode check that did not
    pass is <skipped> with the detail, so CI shows it without turning red."""
    redact = Redactor(result.secret_values)

    def clean(text: str) -> str:
        return _XML_BAD.sub("?", redact(text))

    when = (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S")
    root = ET.Element("testsuites", name="releasegate smoke")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for pack in result.packs:
        checks = [c for c in result.checks if c.pack == pack]
        counts = {
            "tests": len(checks),
            "failures": sum(1 for c in checks if c.verdict == "FAIL"),
            "errors": sum(1 for c in checks if c.verdict == "ERROR"),
            "skipped": sum(1 for c in checks if c.verdict == "WARN"),
        }
        suite = ET.SubElement(
            root,
            "testsuite",
            attrib={
                "name": clean(pack),
                **{k: str(v) for k, v in counts.items()},
                "time": f"{sum(c.duration_ms for c in checks) / 1000:.3f}",
                "timestamp": when,
            },
        )
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="base_url", value=clean(result.base_url))
        for c in checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=clean(f"smoke.{pack}"),
                name=clean(c.name),
                time=f"{c.duration_ms / 1000:.3f}",
            )
            body = clean(
                f"{c.method} {c.path}: {c.detail} (mode {c.mode}, {c.attempts} attempt(s))"
            )
            if c.verdict == "FAIL":
                ET.SubElement(case, "failure", message=clean(c.detail), type="fail").text = body
            elif c.verdict == "ERROR":
                ET.SubElement(case, "error", message=clean(c.detail), type="no-answer").text = body
            elif c.verdict == "WARN":
                ET.SubElement(case, "skipped", message=clean(f"warn (not blocking): {c.detail}"))
            ET.SubElement(case, "system-out").text = body
        for k, v in counts.items():
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{result.duration_ms / 1000:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(result: PackResult, path: Path) -> None:
    path.write_text(junit_xml(result), encoding="utf-8")


# ------------------------------------------------------------------ GitHub Actions --
# Workflow commands (`::error title=…::message`) become annotations on the run; the runner
# reads them from stdout and stderr alike, so they go to stderr and `--json` stdout stays
# pure JSON. A command must start its line; data and properties are escaped per the spec.

ACTIONS_MAX_ANNOTATIONS = 10  # GitHub shows at most 10 error annotations per step


def actions_escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def actions_escape_property(text: str) -> str:
    return actions_escape_data(text).replace(":", "%3A").replace(",", "%2C")


def actions_error(title: str, message: str) -> str:
    """One `::error` workflow command line (an annotation titled `title`)."""
    return actions_command("error", title, message)


def actions_command(kind: str, title: str, message: str) -> str:
    """One `::error` / `::warning` / `::notice` annotation line."""
    return f"::{kind} title={actions_escape_property(title)}::{actions_escape_data(message)}"


def smoke_annotations(result: PackResult) -> list[str]:
    """One `::error` per failed enforced check (at most 10, then one that counts the rest)."""
    redact = Redactor(result.secret_values)
    failed = result.failed_enforced
    lines = [
        actions_error(
            redact(f"smoke check failed: {c.pack}/{c.name}"),
            redact(f"{c.method} {c.path}: {c.detail}"),
        )
        for c in failed[:ACTIONS_MAX_ANNOTATIONS]
    ]
    if len(failed) > ACTIONS_MAX_ANNOTATIONS:
        lines[-1] = actions_error(
            "smoke checks failed",
            redact(
                f"{len(failed) - ACTIONS_MAX_ANNOTATIONS + 1} more failed checks: "
                + ", ".join(c.name for c in failed[ACTIONS_MAX_ANNOTATIONS - 1 :])
            ),
        )
    return lines


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def smoke_step_summary(result: PackResult) -> str:
    """Markdown for the step summary: verdict, then one table row per check."""
    redact = Redactor(result.secret_values)
    mark = "❌" if result.failed_enforced else "✅"
    rows = [
        f"| {c.verdict} | {_md_cell(redact(c.name))} "
        f"| `{_md_cell(redact(f'{c.method} {c.path}'))}` "
        f"| {c.attempts} | {c.duration_ms:.0f} | {_md_cell(redact(c.detail))} |"
        for c in result.checks
    ]
    return "\n".join(
        [
            f"### {mark} {_md_cell(redact(result.summary()))}",
            "",
            "| result | check | request | tries | ms | detail |",
            "|---|---|---|---:|---:|---|",
            *rows,
            "",
            "",
        ]
    )


def actions_smoke(result: PackResult, err: IO[str], summary: Path | None) -> None:
    """Under GitHub Actions: annotations for failed checks on stderr, and the Markdown table
    appended to the step summary file."""
    for line in smoke_annotations(result):
        print(line, file=err, flush=True)
    if summary is not None:
        with summary.open("a", encoding="utf-8") as out:
            out.write(smoke_step_summary(result))


# ------------------------------------------------------------------ perf results --


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _limits(e: EndpointStats) -> str:
    th = e.thresholds
    parts = [
        f"{label} {limit:g} ms"
        for label, limit in (("p50", th.p50_ms), ("p95", th.p95_ms), ("p99", th.p99_ms))
        if limit is not None
    ]
    return ", ".join([*parts, f"errors {th.max_error_rate:.1%}"])


def perf_line(e: EndpointStats) -> str:
    verdict = "OK" if e.ok else "BREACH"
    line = (
        f"{verdict:6} {e.endpoint}  {e.method} {e.path}  n={e.requests} c={e.concurrency} "
        f"errors={e.errors} ({e.error_rate:.1%})  p50 {_ms(e.p50_ms)}  p95 {_ms(e.p95_ms)}  "
        f"p99 {_ms(e.p99_ms)}  (limits: {_limits(e)})"
    )
    if e.breaches:
        line += "  breach: " + "; ".join(e.breaches)
    if e.first_error:
        line += f"  first error: {e.first_error}"
    return line


def perf_summary(
    result: PerfResult, mode: str, comparison: Comparison | None = None, code: int | None = None
) -> str:
    code = result.exit_code(mode) if code is None else code
    regressed = (
        f", {len(comparison.regressed)} regressed against the baseline"
        if comparison is not None
        else ""
    )
    return (
        f"perf: {len(result.endpoints)} endpoint(s), {len(result.breached)} breached "
        f"thresholds{regressed} in {result.duration_ms / 1000:.1f} s ({mode}: exit {code})"
    )


def perf_record(e: EndpointStats, comparison: Comparison | None = None) -> dict[str, Any]:
    th = e.thresholds
    verdict = comparison.of(f"{e.pack}/{e.endpoint}") if comparison is not None else None
    return {
        "pack": e.pack,
        "endpoint": e.endpoint,
        "method": e.method,
        "path": e.path,
        "requests": e.requests,
        "concurrency": e.concurrency,
        "errors": e.errors,
        "error_rate": round(e.error_rate, 6),
        "p50_ms": _round(e.p50_ms),
        "p95_ms": _round(e.p95_ms),
        "p99_ms": _round(e.p99_ms),
        "min_ms": _round(e.min_ms),
        "max_ms": _round(e.max_ms),
        "mean_ms": _round(e.mean_ms),
        "thresholds": {
            "p50_ms": th.p50_ms,
            "p95_ms": th.p95_ms,
            "p99_ms": th.p99_ms,
            "max_error_rate": th.max_error_rate,
        },
        "breaches": list(e.breaches),
        "first_error": e.first_error or None,
        "ok": e.ok,
        "baseline": verdict.as_json() if verdict is not None else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def write_perf_json(
    result: PerfResult,
    mode: str,
    lines: JsonLines,
    *,
    started_at: datetime | None = None,
    comparison: Comparison | None = None,
    code: int | None = None,
) -> None:
    """A `perf` event per endpoint, then the outcome (`perf` holds the summary)."""
    lines.redact.add(*result.secret_values)
    when = (started_at or datetime.now(UTC)).isoformat(timespec="seconds")
    for e in result.endpoints:
        lines.emit("perf", **perf_record(e, comparison))
    regressed = comparison.regressed if comparison is not None else ()
    lines.outcome(
        op="perf",
        result="breached" if result.breached else "regressed" if regressed else "passed",
        exit_code=result.exit_code(mode) if code is None else code,
        message=perf_summary(result, mode, comparison, code),
        evidence=[
            *(f"{e.endpoint}: " + "; ".join(e.breaches) for e in result.breached),
            *(comparison_lines(comparison) if comparison is not None else []),
        ],
        perf={
            "base_url": result.base_url,
            "started_at": when,
            "mode": mode,
            "endpoints": len(result.endpoints),
            "breached": [e.endpoint for e in result.breached],
            "duration_ms": round(result.duration_ms, 1),
            "release": result.release,
            "revision": result.revision,
            "baseline": comparison.as_json() if comparison is not None else None,
        },
    )


def perf_json_lines(
    result: PerfResult,
    mode: str,
    *,
    started_at: datetime | None = None,
    comparison: Comparison | None = None,
    code: int | None = None,
) -> list[str]:
    buffer = io.StringIO()
    write_perf_json(
        result, mode, JsonLines(buffer), started_at=started_at, comparison=comparison, code=code
    )
    return buffer.getvalue().splitlines()


def perf_result(
    result: PerfResult,
    mode: str,
    out: IO[str],
    style: Style,
    *,
    comparison: Comparison | None = None,
    kept: Sequence[str] = (),
    code: int | None = None,
    lines: JsonLines | None = None,
) -> None:
    """The run's table (or JSON lines), then the baseline comparison and what was saved."""
    redact = Redactor(result.secret_values)
    if style == "json":
        write_perf_json(result, mode, lines or JsonLines(out), comparison=comparison, code=code)
        return
    extra = [*(comparison_lines(comparison) if comparison is not None else []), *kept]
    if style == "rich":
        render = Renderer(out, redact)
        render.rows(perf_rows(result, mode))
        for e in result.breached:
            render.line(f"{e.endpoint}: " + "; ".join(e.breaches), "red")
        for line in extra:
            bad = line.startswith(("REGRESSED", "regressed"))
            render.line(line, "bold red" if bad else "")
        render.line(perf_summary(result, mode, comparison, code))
        return
    print(redact(f"perf against {result.base_url} ({mode})"), file=out)
    for e in result.endpoints:
        print(redact(perf_line(e)), file=out)
    for line in extra:
        print(redact(line), file=out)
    print(redact(perf_summary(result, mode, comparison, code)), file=out, flush=True)


PERF_COLUMNS = (
    Column("result", "verdict"),
    Column("endpoint"),
    Column("n", "number"),
    Column("c", "number"),
    Column("errors"),
    Column("p50", "number"),
    Column("p95", "number"),
    Column("p99", "number"),
    Column("limits", "detail"),
)


def perf_rows(result: PerfResult, mode: str) -> Rows:
    return Rows(
        title=f"perf against {result.base_url} ({mode})",
        columns=PERF_COLUMNS,
        rows=[
            (
                "OK" if e.ok else "BREACH",
                f"{e.endpoint} ({e.method} {e.path})",
                str(e.requests),
                str(e.concurrency),
                f"{e.errors} ({e.error_rate:.1%})",
                _ms(e.p50_ms),
                _ms(e.p95_ms),
                _ms(e.p99_ms),
                _limits(e),
            )
            for e in result.endpoints
        ],
    )


def _against(v: EndpointVerdict, consecutive: int) -> tuple[str, str]:
    """The step summary's baseline p95 and verdict cells for one endpoint."""
    if v.status == "new":
        return "—", "new (not in the baseline)"
    change = "" if v.p95_delta_ms is None else f"{v.p95_delta_ms:+.1f} ms"
    if v.p95_delta_pct is not None:
        change += f" ({v.p95_delta_pct:+.0f} %)"
    label = {"over": f"over ({v.streak}/{consecutive})", "regressed": "**regressed**"}.get(
        v.status, v.status
    )
    return _ms(v.baseline_p95_ms), f"{label} {change}".strip()


def actions_perf(
    result: PerfResult,
    mode: str,
    comparison: Comparison | None,
    err: IO[str],
    summary: Path | None,
    *,
    code: int,
) -> None:
    """Under GitHub Actions: an annotation per breach or regression (`::error` in blocking
    mode, `::warning` in informational mode) and a step summary table."""
    redact = Redactor(result.secret_values)
    command = "error" if mode == "blocking" else "warning"
    problems = [(f"perf threshold: {e.endpoint}", "; ".join(e.breaches)) for e in result.breached]
    if comparison is not None:
        problems += [
            (
                f"perf regression: {v.endpoint}",
                f"{'; '.join(v.reasons)} (baseline {comparison.baseline.source})",
            )
            for v in comparison.regressed
        ]
    for title, message in problems[:ACTIONS_MAX_ANNOTATIONS]:
        print(actions_command(command, redact(title), redact(message)), file=err, flush=True)
    if summary is None:
        return
    mark = "✅" if not problems else ("❌" if code else "⚠️")
    rows = [
        "| endpoint | n | errors | p50 | p95 | p99 | thresholds | baseline p95 | vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result.endpoints:
        base, against = "—", "—"
        v = comparison.of(f"{e.pack}/{e.endpoint}") if comparison is not None else None
        if comparison is not None and v is not None:
            base, against = _against(v, comparison.policy.consecutive)
        rows.append(
            "| "
            + " | ".join(
                _md_cell(redact(x))
                for x in (
                    f"{e.endpoint} ({e.method} {e.path})",
                    str(e.requests),
                    f"{e.errors} ({e.error_rate:.1%})",
                    _ms(e.p50_ms),
                    _ms(e.p95_ms),
                    _ms(e.p99_ms),
                    "ok" if e.ok else "breached: " + "; ".join(e.breaches),
                    base,
                    against,
                )
            )
            + " |"
        )
    out = [
        f"### {mark} releasegate perf ({mode}): exit {code}",
        "",
        _md_cell(redact(perf_summary(result, mode, comparison, code))),
        "",
        *rows,
        "",
    ]
    if comparison is not None:
        out += [f"- {_md_cell(redact(line))}" for line in comparison_lines(comparison)[:1]]
        out += [f"- {_md_cell(redact(n))}" for n in comparison.notes]
        out += [f"- missing from this run: {_md_cell(k)}" for k in comparison.missing]
        out.append("")
    with summary.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")
