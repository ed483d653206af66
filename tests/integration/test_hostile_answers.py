"""Releases that answer HTTP in hostile ways, deployed through the CLI onto the sandbox: an API
whose body never ends (the smoke pack in the gate) and a readiness endpoint that trickles one
byte every 100 ms (the readiness probe). The gate must stop reading, fail, and roll back to the
healthy release within its deadlines, the deploy process's memory bounded, no traceback, and
the lock free afterwards."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import demo
from tests.integration.conftest import Target

pytestmark = pytest.mark.integration

CLI = (sys.executable, "-m", "deploy.cli")
PACK = Path(__file__).resolve().parents[2] / "examples" / "sampleapp" / "smoke.yml"


def deploy_cli(t: Target, fault: str | None = None) -> tuple[int, list[dict], str, float]:
    """`releasegate deploy test --json` as a user runs it; the JSON lines, stderr, seconds."""
    if fault is not None:
        demo.commit_fault(t.repo, fault)
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "--json", "--inventories", str(t.inv_dir), "deploy", "test"],
        capture_output=True,
        text=True,
        timeout=240,
        # the deploy process may not use more than 1 GiB: an unbounded read would die here
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),
    )
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, records, proc.stderr, time.monotonic() - started


def outcome(records: list[dict]) -> dict:
    found = [r for r in records if r["event"] == "outcome"]
    assert found, records
    return found[-1]


@pytest.fixture
def live(target: Target) -> tuple[Target, str]:
    target.data["smoke"] = {"packs": [str(PACK)]}
    target.write()
    code, records, err, _ = deploy_cli(target)
    assert code == 0, (records, err)
    return target, str(outcome(records)["release"])


def test_an_api_body_that_never_ends_fails_the_smoke_gate_and_rolls_back(live):
    t, good = live
    code, records, err, took = deploy_cli(t, "endless_api")
    out = outcome(records)
    assert code == 3, (out, err)
    assert out["result"] == "rolled-back" and out["live"] == good
    assert "smoke gate failed" in out["message"] and "items-list" in out["message"]
    said = "expected a body that ends within 8 MiB"
    assert any(said in line for line in out["evidence"]), out["evidence"]
    assert "Traceback" not in err
    assert took < 120, took
    assert t.current() == good and t.version()["release"] == good
    assert t.state_of(str(out["release"])) == "bad"
    assert not t.lock_exists()


def test_a_readiness_answer_that_never_completes_fails_the_gate_at_its_deadline(live):
    t, good = live
    t.update("health", deadline=6, probe_timeout=1)
    code, records, err, took = deploy_cli(t, "trickle_ready")
    out = outcome(records)
    assert code == 3, (out, err)
    assert out["result"] == "rolled-back" and out["live"] == good
    assert "readiness" in out["message"] or "ready" in out["message"], out["message"]
    assert any("still coming after 1s" in line for line in out["evidence"]), out["evidence"]
    assert "Traceback" not in err
    assert took < 120, took
    assert t.current() == good and t.version()["release"] == good
    assert not t.lock_exists()
