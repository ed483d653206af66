"""One human-readable renderer (smoke.render) draws deploy's tables and smoke's results: at 80
columns each row is one line with its detail wrapped under it, at 200 a table; the same
verdict colours, the same indentation, the same masking, for both packages."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from deploy.model import Outcome
from deploy.redact import MASK, Redactor
from deploy.report import RichReporter
from smoke import report
from smoke.model import CheckResult, PackResult

CANARY = "s3cr3t-canary-value"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG = (
    "expected body matching the inline schema got a mismatch at $.items[0]: 'id' is a required "
    f"property (token {CANARY})"
)
FIX = "free space on the data volume or lower preflight.min_free_mb in the inventory"


def deploy_output(columns: int, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    rep = RichReporter(Redactor([CANARY]), stream=out)
    rep.table(
        "preflight of prod (web1)",
        ["result", "check", "detail", "fix"],
        [["ok", "inventory", "inventories/prod.yml is valid", ""], ["FAIL", "disk", LONG, FIX]],
    )
    rep.outcome(Outcome("preflight", "failed", 2, None, None, f"1 of 2 checks failed {CANARY}"))
    return out.getvalue()


def smoke_output(columns: int, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    checks = (
        CheckResult("api", "live", "enforce", "pass", 1, 6.0, "200 in 6 ms", "GET", "/live", 200),
        CheckResult("api", "items", "enforce", "fail", 3, 612.0, LONG, "GET", "/items", 500),
    )
    result = PackResult(("api",), "http://127.0.0.1:1", checks, 620.0, (CANARY,), "prod (web1)")
    out = io.StringIO()
    report.smoke_result(result, out, "rich")
    return out.getvalue()


def plain(text: str) -> list[str]:
    return [ANSI.sub("", line) for line in text.splitlines()]


def style_of(text: str, word: str) -> str:
    """The escape sequence a word is drawn with."""
    found = re.search(r"((?:\x1b\[[0-9;]*m)+)" + re.escape(word), text)
    assert found, text
    return found[1]


@pytest.mark.parametrize("output", [deploy_output, smoke_output])
def test_at_80_columns_a_row_is_a_line_and_its_detail_is_wrapped_under_it(output, monkeypatch):
    text = output(80, monkeypatch)
    lines = plain(text)
    assert all(len(line) <= 80 for line in lines), lines
    (row,) = [line for line in lines if line.startswith("FAIL  ")]
    under = lines[lines.index(row) + 1 :]
    detail = []
    for line in under:
        if not line.startswith("      ") or line.startswith("      fix:"):
            break
        detail.append(line.strip())
    assert " ".join(detail) == LONG.replace(CANARY, MASK)  # whole, wrapped, masked
    assert CANARY not in text and "┃" not in text  # no table squeezed into 80 columns


def test_at_80_columns_deploy_shows_the_fix_under_the_detail(monkeypatch):
    lines = plain(deploy_output(80, monkeypatch))
    fix = [line for line in lines if line.startswith("      fix: ")]
    assert fix and "free space on the data volume" in fix[0]
    assert lines[0] == "preflight of prod (web1)"


@pytest.mark.parametrize(
    ("output", "header"),
    [
        (deploy_output, ("result", "check", "detail", "fix")),
        (smoke_output, ("result", "check", "request", "tries", "ms", "detail")),
    ],
)
def test_at_200_columns_the_rows_are_a_table(output, header, monkeypatch):
    text = output(200, monkeypatch)
    lines = plain(text)
    assert all(len(line) <= 200 for line in lines)
    assert [line for line in lines if all(f" {name} " in line for name in header)]
    (row,) = [line for line in lines if " FAIL " in line]
    assert "│ expected body matching the inline schema got a mismatch" in row  # beside its check
    assert MASK in text and CANARY not in text


def test_deploy_and_smoke_draw_verdicts_and_outcomes_alike(monkeypatch):
    for columns in (80, 200):
        deploy, smoke = deploy_output(columns, monkeypatch), smoke_output(columns, monkeypatch)
        assert style_of(deploy, "FAIL") == style_of(smoke, "FAIL")
        assert style_of(deploy, "ok") == style_of(smoke, "PASS")
    assert plain(smoke_output(80, monkeypatch))[0] == "smoke against prod (web1)"
    assert plain(deploy_output(80, monkeypatch))[-1] == (
        f"preflight failed (exit 2): 1 of 2 checks failed {MASK}"
    )


def test_the_narrow_sample_in_docs_smoke_md_is_what_the_renderer_draws(monkeypatch):
    doc = (Path(__file__).parents[2] / "docs" / "smoke.md").read_text()
    sample = re.search(r"```\n(smoke against prod \(web1.*?)```", doc, re.S)
    assert sample, "docs/smoke.md lost its narrow-terminal sample"
    monkeypatch.setenv("COLUMNS", "80")
    schema = "expected body matching the inline schema got a mismatch at $: 'items' is a "
    checks = (
        CheckResult(
            "sampleapp", "live", "enforce", "pass", 1, 6.0, "200 in 6 ms", "GET", "/health/live",
            200,
        ),
        CheckResult(
            "sampleapp", "items-list", "enforce", "fail", 1, 9.0,
            schema + "required property", "GET", "/api/items", 200,
        ),
    )  # fmt: skip
    where = "prod (web1, 127.0.0.1:3000 through an SSH tunnel)"
    out = io.StringIO()
    result = PackResult(("sampleapp",), "http://x", checks, 15.0, (), where)
    report.smoke_result(result, out, "rich")
    assert [line.rstrip() for line in plain(out.getvalue())] == sample[1].splitlines()
