"""Reporters: JSON lines are parseable with a final outcome; secrets never reach any output."""

from __future__ import annotations

import io
import json

from deploy.model import Outcome
from deploy.redact import Redactor
from deploy.report import JsonReporter, PlainReporter

CANARY = "canary-7f3e9a1d-secret"


def test_json_lines_end_with_one_outcome():
    out = io.StringIO()
    rep = JsonReporter(stream=out, redact=Redactor([CANARY]))
    with rep.stage("ship"):
        rep.info(f"token is {CANARY}")
    rep.outcome(
        Outcome(
            op="deploy",
            result="promoted",
            exit_code=0,
            release="r",
            live="r",
            message="ok",
            evidence=(f"header {CANARY}",),
        )
    )
    rep.finish("deploy", 0)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["stage", "info", "stage", "outcome"]
    assert records[-1]["exit_code"] == 0 and records[-1]["result"] == "promoted"
    assert CANARY not in out.getvalue()


def test_json_error_becomes_the_final_outcome():
    out = io.StringIO()
    rep = JsonReporter(stream=out)
    rep.error("lock held", ("by alice",), exit_code=4)
    rep.finish("deploy", 4)
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last == {
        **last,
        "event": "outcome",
        "op": "deploy",
        "exit_code": 4,
        "message": "lock held",
        "evidence": ["by alice"],
    }


def test_plain_reporter_redacts(capsys):
    out = io.StringIO()
    rep = PlainReporter(stream=out, redact=Redactor([CANARY]))
    rep.info(f"x {CANARY} y")
    rep.error(f"failed with {CANARY}", (CANARY,))
    rep.table("t", ["a"], [[CANARY]])
    assert CANARY not in out.getvalue() + capsys.readouterr().err
