"""The one --json format in real runs: both doors, over real SSH to the sandbox, every line
valid against the packaged schema and ending in one outcome (tests/unit/test_json_output.py
does the same for every command on the fake host and through Click's runner)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import Target
from tests.unit.test_json_output import records

BIN = Path(sys.executable).parent


def run(target: Target, *args: str, door: str = "releasegate") -> tuple[int, list[dict[str, Any]]]:
    if door == "invoke":
        (target.dir / "tasks.py").write_text("from deploy.tasks import ns  # noqa: F401\n")
        argv = [str(BIN / "invoke"), *args, "--json"]
    else:
        argv = [str(BIN / "releasegate"), "--json", *args]
    res = subprocess.run(argv, cwd=target.dir, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, records(res.stdout)


def test_setup_preflight_deploy_status_releases_history_smoke_in_one_format(target: Target):
    code, got = run(target, "trust-host", "test", "--yes")  # the sandbox's key is pinned
    assert (code, got[-1]["op"], got[-1]["result"]) == (0, "trust-host", "ok")

    code, got = run(target, "setup", "test")
    assert code == 0 and got[-1]["result"] == "ok"

    code, got = run(target, "preflight", "test")
    assert code == 0, got[-1]
    table = next(r for r in got if r["event"] == "table")
    assert table["columns"][0] == "result" and all(row["result"] == "ok" for row in table["rows"])

    code, got = run(target, "deploy", "test", "--dry-run")
    assert (code, got[-1]["result"]) == (0, "planned")
    assert target.current() is None  # a dry run changed nothing

    code, got = run(target, "deploy", "test")
    assert (code, got[-1]["result"]) == (0, "promoted")
    live = got[-1]["live"]
    assert live == target.current()

    code, got = run(target, "status", "test", door="invoke")
    assert code == 0
    status = next(r for r in got if r["event"] == "status")
    assert status["current"] == live

    code, got = run(target, "releases", "test", door="invoke")
    rows = next(r for r in got if r["event"] == "table")["rows"]
    assert code == 0 and rows[0]["id"] == live and "current" in rows[0]["markers"]

    code, got = run(target, "history", "test")
    assert code == 0 and got[-1]["op"] == "history"

    code, got = run(target, "smoke", "test", "health")
    assert (code, got[-1]["op"], got[-1]["result"]) == (0, "smoke", "passed")
    assert {r["event"] for r in got[:-1]} == {"check"}
