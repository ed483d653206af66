"""Notifications and the GitHub Actions surfaces of real operations on the sandbox VPS: the
`releasegate` process runs as a CI job would (`--json`, GITHUB_ACTIONS=true, a step summary
file), and its webhooks reach a real HTTP receiver on 127.0.0.1 — with no secret anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import demo
from tests.integration.conftest import Target
from tests.unit.test_notify import URL_TOKEN, Receiver, closed_port_url

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CANARY = "canary-81c4e0a7-notify-health-token"


def run_ci(t: Target, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "--json", "--inventories", str(t.inv_dir), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    lines = [json.loads(line) for line in res.stdout.splitlines()]  # stdout: JSON lines only
    assert lines and lines[-1]["event"] == "outcome", res.stdout + res.stderr
    return res


def test_outcomes_reach_webhooks_step_summary_and_annotations(target: Target, tmp_path: Path):
    target.data["secrets"] = {"from_env": ["HEALTH_TOKEN"]}
    target.data["health"]["token_env"] = "HEALTH_TOKEN"
    target.data["smoke"] = {"packs": [str(ROOT / "examples" / "sampleapp" / "smoke.yml")]}
    target.data["notify"] = {
        "webhooks": [
            {"url_env": "RG_HOOK_URL", "format": "json"},
            {
                "url_env": "RG_SLACK_URL",
                "format": "slack",
                "events": ["rolled-back", "rollback-failed"],
            },
            {"url_env": "RG_DEAD_URL", "timeout": 2},  # nothing listens there
        ]
    }
    target.write()
    summary = tmp_path / "step-summary.md"
    with Receiver() as receiver:
        env = {
            "HEALTH_TOKEN": CANARY,
            "RG_HOOK_URL": receiver.url(),
            "RG_SLACK_URL": receiver.url(f"/slack/{URL_TOKEN}"),
            "RG_DEAD_URL": closed_port_url(),
            "GITHUB_ACTIONS": "true",
            "GITHUB_STEP_SUMMARY": str(summary),
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_REPOSITORY": "acme/shop",
            "GITHUB_RUN_ID": "4242",
        }
        good = run_ci(target, env, "deploy", "test")
        assert good.returncode == 0, good.stdout + good.stderr  # a dead webhook changes nothing
        good_id = target.current()

        demo.commit_fault(target.repo, "wrong_contract")
        bad = run_ci(target, env, "deploy", "test")
        assert bad.returncode == 3, bad.stdout + bad.stderr
        assert target.current() == good_id

        # only one good release exists: a manual rollback has nowhere to go (a human is needed)
        stuck = run_ci(target, env, "rollback", "test")
        assert stuck.returncode == 6, stuck.stdout + stuck.stderr

    promoted, rolled_back, slack_back, stuck_json, slack_stuck = receiver.bodies()
    assert promoted == {
        **promoted,
        "event": "promoted",
        "env": "test",
        "op": "deploy",
        "exit_code": 0,
        "release": good_id,
        "run_url": "https://github.com/acme/shop/actions/runs/4242",
    }
    assert rolled_back["event"] == "rolled-back" and rolled_back["live"] == good_id
    assert rolled_back["exit_code"] == 3 and "smoke gate failed" in rolled_back["message"]
    assert any(c.startswith("FAIL") for c in rolled_back["failed_checks"])
    assert "*rolled-back*" in slack_back["text"] and "Failed checks" in slack_back["text"]
    assert stuck_json["event"] == "rollback-failed" and stuck_json["op"] == "rollback"
    assert "no good release other than the current one" in stuck_json["message"]
    assert slack_stuck["text"].startswith(":rotating_light: <!channel> *HUMAN NEEDED*")

    # the dead webhook was a warning in the JSON lines, naming its variable, never its URL
    warnings = [
        json.loads(line)["message"]
        for line in good.stdout.splitlines()
        if json.loads(line)["event"] == "warning"
    ]
    assert any("notify.webhooks[2] (RG_DEAD_URL)" in w and "not delivered" in w for w in warnings)

    # annotations on stderr for the failures, none for the promotion
    assert "::error" not in good.stderr
    assert "::error title=releasegate deploy test%3A rolled-back (exit 3)::" in bad.stderr
    assert "::error title=failed check (releasegate deploy test)::FAIL" in bad.stderr
    assert "::error title=releasegate rollback test%3A error (exit 6)::" in stuck.stderr

    text = summary.read_text()
    assert text.count("### ") == 3
    assert "### ✅ releasegate deploy test: promoted (exit 0)" in text
    assert "### ❌ releasegate deploy test: rolled-back (exit 3)" in text
    assert "### 🚨 releasegate rollback test: error (exit 6)" in text

    surfaces = [r["body"] for r in receiver.requests] + [text]
    surfaces += [p.stdout + p.stderr for p in (good, bad, stuck)]
    for surface in surfaces:
        assert CANARY not in surface
        assert URL_TOKEN not in surface
