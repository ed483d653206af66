"""One reporter format, one redaction filter, one clock for deploy/ and smoke/: each is
defined once (in smoke/, which never imports deploy/) and deploy uses that one."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from deploy import clock as deploy_clock
from deploy import redact as deploy_redact
from deploy.model import Outcome
from deploy.report import JsonReporter
from smoke import clock as smoke_clock
from smoke import jsonlines, report
from smoke import secrets as smoke_secrets

ROOT = Path(__file__).resolve().parents[2]


def definitions(name: str) -> list[str]:
    found = []
    for path in sorted([*ROOT.glob("deploy/**/*.py"), *ROOT.glob("smoke/**/*.py")]):
        if re.search(rf"^class {name}\b", path.read_text(), re.M):
            found.append(str(path.relative_to(ROOT)))
    return found


def test_one_redaction_filter_and_one_system_clock():
    assert deploy_redact.Redactor is smoke_secrets.Redactor
    assert deploy_redact.MASK == smoke_secrets.MASK
    assert deploy_clock.SystemClock is smoke_clock.SystemClock
    assert definitions("Redactor") == ["smoke/secrets.py"]
    assert definitions("SystemClock") == ["smoke/clock.py"]
    assert definitions("JsonLines") == ["smoke/jsonlines.py"]


def test_deploy_and_smoke_write_the_same_line_shape_through_the_one_writer():
    out = io.StringIO()
    rep = JsonReporter(stream=out, redact=smoke_secrets.Redactor(["tok-secret"]))
    rep.info("token tok-secret")
    rep.outcome(Outcome("deploy", "promoted", 0, "r1", "r1", "ok"))
    rep.finish("deploy", 0)
    deploy_lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "tok-secret" not in out.getvalue()
    smoke_lines = [json.loads(line) for line in report.smoke_json_lines(_result())]
    for lines in (deploy_lines, smoke_lines):
        assert all(set(r) >= {"event", "t"} for r in lines)
        assert lines[-1]["event"] == "outcome"
        assert set(lines[-1]) >= {"op", "result", "exit_code", "release", "live", "message"}
    assert jsonlines.SCHEMA.is_file()


def _result():  # a one-check pack result
    from smoke.model import CheckResult, PackResult

    check = CheckResult(
        pack="p",
        name="live",
        mode="enforce",
        outcome="pass",
        method="GET",
        path="/live",
        status=200,
        attempts=1,
        duration_ms=3.0,
        detail="200 in 3 ms",
    )
    return PackResult(
        packs=("p",), base_url="http://x", checks=(check,), duration_ms=3.0, secret_values=()
    )
