"""Verdicts on the sandbox: a rollback that fails because of a shared dependency stops the
tool until a human clears the mark; a manual rollback never returns to where it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import demo, operations
from deploy.operations import Options
from deploy.report import RecordingReporter
from tests.integration.conftest import Target

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def deploy(t: Target, fault: str = "") -> tuple[int, RecordingReporter]:
    """A new commit (so a new release) each time."""
    count = t.repo / "deploys.txt"
    count.write_text(str(int(count.read_text()) + 1 if count.exists() else 1))
    demo.commit_fault(t.repo, fault)
    rep = RecordingReporter()
    return operations.run_deploy("test", Options(inventories=t.inv_dir), reporter=rep), rep


def rollback(t: Target, to: str | None = None) -> tuple[int, RecordingReporter]:
    rep = RecordingReporter()
    return operations.run_rollback("test", Options(inventories=t.inv_dir), to=to, reporter=rep), rep


def door(t: Target, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**os.environ, "RELEASEGATE_ACTOR": "oncall@example"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def host_view(t: Target) -> tuple[str | None, str, str]:
    """What a refused operation must leave alone: current, the journal, the releases."""
    journal = t.ssh(f"cat {t.root}/.releasegate/journal.jsonl").stdout
    return t.current(), journal, t.ssh(f"ls -A {t.root}/releases").stdout


def test_a_shared_outage_stops_at_one_failed_rollback_until_a_human_resolves(target: Target):
    db = f"{target.root}/shared/db-up"
    target.update("process", env={"HOST": "0.0.0.0", "READY_REQUIRES": db})
    target.update("health", deadline=3, interval=0.3, successes=3)
    target.ssh(f"mkdir -p {target.root}/shared && touch {db}")
    code, rep = deploy(target)
    assert code == 0, rep.lines
    live = rep.outcomes[-1].release
    assert live

    target.ssh(f"rm {db}")  # the database goes down: every release's readiness answers 503
    code, rep = deploy(target, "")
    assert code == 6, rep.lines
    out = rep.outcomes[-1]
    assert out.result == "rollback-failed" and out.live == live == target.current()
    assert f"{live} failed its gate the same way {out.release} did" in out.message
    assert "readiness answered HTTP 503" in out.message
    marks = [e for e in target.journal() if e["op"] == "needs-human"]
    assert len(marks) == 1 and marks[0]["detail"]["live"] == live
    assert not target.lock_exists()

    before = host_view(target)
    code, rep = deploy(target, "")
    assert code == 6 and rep.outcomes[-1].result == "needs-human", rep.lines
    assert any(f"resolve test --mark-good {live}" in line for line in rep.outcomes[-1].evidence)
    code, rep = rollback(target)
    assert code == 6 and rep.outcomes[-1].result == "needs-human", rep.lines
    assert host_view(target) == before  # nothing shipped, switched or journaled
    assert not target.lock_exists()

    status = door(
        target,
        "-m",
        "deploy.cli",
        "--plain",
        "--inventories",
        str(target.inv_dir),
        "status",
        "test",
    )
    assert "NEEDS HUMAN since" in status.stdout, status.stdout + status.stderr

    target.ssh(f"touch {db}")  # fixed
    res = door(
        target,
        "-m",
        "deploy.cli",
        "--plain",
        "--inventories",
        str(target.inv_dir),
        "resolve",
        "test",
        "--mark-good",
        live,
        "--reason",
        "database restarted",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    resolved = target.journal()[-1]
    assert resolved["op"] == "resolve" and resolved["actor"] == "oncall@example"
    assert resolved["detail"]["reason"] == "database restarted"
    assert target.state_of(live) == "good"
    # the other door: nothing left to resolve
    res = door(
        target,
        "-m",
        "invoke",
        "--search-root",
        str(ROOT),
        "resolve",
        "test",
        "--inventories",
        str(target.inv_dir),
        "--plain",
    )
    assert res.returncode == 0 and "not-needed" in res.stdout, res.stdout + res.stderr

    code, rep = deploy(target, "")
    assert code == 0, rep.lines
    assert target.current() == rep.outcomes[-1].release


def test_rolling_back_twice_does_not_return_to_where_you_started(target: Target):
    code, rep = deploy(target)
    assert code == 0, rep.lines
    first = rep.outcomes[-1].release
    code, rep = deploy(target)
    assert code == 0, rep.lines
    second = rep.outcomes[-1].release

    code, rep = rollback(target)
    assert code == 0 and target.current() == first, rep.lines
    assert target.state_of(second) == "rolled-back"
    code, rep = rollback(target)
    assert code == 6, rep.lines
    assert target.current() == first == target.version()["release"]
    assert f"--to {second}" in rep.lines[-1]
    code, rep = rollback(target, to=second)
    assert code == 0, rep.lines
    assert target.current() == second == target.version()["release"]
    assert target.state_of(first) == "rolled-back"
