"""The performance workflows `ci github` writes: the nightly one (scheduled, blocking, history
in the Actions cache, an issue on failure) and the pull-request one (informational: every
step continue-on-error, exit 0). YAML parsed; permissions least-privilege; values reach `run:`
only through env; actions as pinned as the other workflows; the shell steps run for real with
bash against a stand-in `releasegate` that records each call."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy import ci
from tests.unit.test_ci import generate, load, repo, step

__all__ = ["repo"]  # the fixture, shared with test_ci.py

NIGHTLY = ".github/workflows/releasegate-perf-nightly-prod.yml"
PR = ".github/workflows/releasegate-perf-pr-prod.yml"
EXPRESSION = re.compile(r"\$\{\{")


def workflows(repo: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    code, rep = generate(repo)
    assert code == 0, rep.lines
    return load(repo / NIGHTLY), load(repo / PR)


def all_steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in doc["jobs"].values() for s in job["steps"]]


def test_the_nightly_is_scheduled_blocking_and_least_privilege(repo: Path) -> None:
    nightly, _ = workflows(repo)
    assert nightly["on"] == {"schedule": [{"cron": "17 3 * * *"}], "workflow_dispatch": None}
    assert nightly["permissions"] == {"contents": "read"}
    perf, notify = nightly["jobs"]["perf"], nightly["jobs"]["notify"]
    assert "permissions" not in perf  # the workflow's contents: read
    assert "continue-on-error" not in perf
    assert not any(s.get("continue-on-error") for s in perf["steps"])
    assert perf["concurrency"] == {"group": "releasegate-perf-prod", "cancel-in-progress": False}
    run = step(perf, "Perf against prod (blocking)")
    assert '--mode "$mode" --history "$PERF_HISTORY"' in run["run"]
    assert nightly["env"]["PERF_BASELINE"] == "perf/baseline-prod.json"
    assert nightly["env"]["PERF_ROUNDS"] == str(ci.PERF_ROUNDS)
    assert run["env"]["HEALTH_TOKEN"] == "${{ secrets.HEALTH_TOKEN }}"
    # the history survives a failing run, and feeds the chart
    for name in ("Draw the p95 trend", "Save the perf history", "Keep the history"):
        assert step(perf, name)["if"] == "always()"
    restore, save = step(perf, "Restore the perf history"), step(perf, "Save the perf history")
    assert restore["uses"].startswith("actions/cache/restore@")
    assert save["uses"].startswith("actions/cache/save@")
    assert restore["with"]["key"] == save["with"]["key"]
    assert restore["with"]["restore-keys"] == "releasegate-perf-prod-"
    assert "releasegate perf-trend" in step(perf, "Draw the p95 trend")["run"]
    # only the notify job writes, only issues, and only when the gate failed
    assert notify["needs"] == "perf" and notify["if"] == "failure()"
    assert notify["permissions"] == {"issues": "write"}
    issue = step(notify, "Open or update the perf issue")
    assert issue["env"]["GH_TOKEN"] == "${{ github.token }}"


def test_the_pull_request_workflow_never_fails_the_pull_request(repo: Path) -> None:
    _, pr = workflows(repo)
    assert pr["on"] == {"pull_request": {"branches": ["main"]}}
    assert pr["permissions"] == {"contents": "read"}
    (job,) = pr["jobs"].values()
    # step-level: a job-level continue-on-error still reports the job's check as failed
    assert all(s.get("continue-on-error") is True for s in job["steps"])
    run = step(job, "Perf against prod (informational)")
    assert "--mode informational" in run["run"] and run["run"].rstrip().endswith("exit 0")
    assert "blocking" not in run["run"]
    # read-only use of the nightly history: nothing a pull request runs is saved
    uses = [s.get("uses", "") for s in job["steps"]]
    assert not any(u.startswith(("actions/cache/save", "actions/cache@")) for u in uses)


def test_no_expression_is_interpolated_into_a_run_script(repo: Path) -> None:
    for doc in workflows(repo):
        for s in all_steps(doc):
            assert not EXPRESSION.search(s.get("run", "")), s["name"]
    text = (repo / NIGHTLY).read_text() + (repo / PR).read_text()
    assert "pull_request_target" not in text  # secrets never meet a fork's code


def test_actions_are_the_pinned_set_the_other_workflows_use(repo: Path) -> None:
    pinned = set(vars(ci.Actions()).values())
    for doc in workflows(repo):
        for s in all_steps(doc):
            if "uses" in s:
                assert s["uses"] in pinned, s["uses"]
                assert re.search(r"@(v\d+|[0-9a-f]{40})$", s["uses"])


# ---------------------------------------------------------------- the shell steps, for real


def fake_releasegate(bin_dir: Path, codes: list[int]) -> Path:
    """A `releasegate` on PATH that appends its arguments (one call per line) to `calls` and
    exits with the next scripted code."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "codes").write_text("".join(f"{c}\n" for c in codes))
    exe = bin_dir / "releasegate"
    exe.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{bin_dir}/calls"\n'
        f'code=$(head -n 1 "{bin_dir}/codes"); sed -i 1d "{bin_dir}/codes"\n'
        'echo "perf output $code"\n'
        'exit "${code:-0}"\n'
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_step(
    doc: dict[str, Any], job: str, name: str, repo: Path, tmp_path: Path, codes: list[int]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    s = step(doc["jobs"][job], name)
    bin_dir = fake_releasegate(tmp_path / "bin", codes)
    env = {
        **doc["env"],
        **{k: v for k, v in s.get("env", {}).items() if "${{" not in v},
        "RUNNER_TEMP": str(tmp_path / "runner"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    env.update(
        {
            "NEW_BASELINE": str(tmp_path / "runner/releasegate-perf/baseline-prod.json"),
            "PERF_PR_HISTORY": str(tmp_path / "runner/releasegate-perf/history.jsonl"),
        }
    )
    res = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", s["run"]],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
    )
    calls = bin_dir / "calls"
    return res, calls.read_text().splitlines() if calls.exists() else []


def commit_baseline(repo: Path) -> None:
    (repo / "perf").mkdir(exist_ok=True)
    (repo / "perf" / "baseline-prod.json").write_text("{}")


def test_nightly_rounds_report_then_the_last_one_blocks(repo: Path, tmp_path: Path) -> None:
    nightly, _ = workflows(repo)
    commit_baseline(repo)
    name = "Perf against prod (blocking)"
    res, calls = run_step(nightly, "perf", name, repo, tmp_path, [0, 0, 1])
    assert res.returncode == 1, res.stderr  # a regression on the last round fails the job
    assert len(calls) == 3
    assert ["--mode informational" in c for c in calls] == [True, True, False]
    assert "--mode blocking" in calls[-1]
    for call in calls:
        assert "--baseline perf/baseline-prod.json" in call
        assert "--history .releasegate-perf/history-prod.jsonl --consecutive 3" in call
        assert "--save-baseline" not in call
    res, _ = run_step(nightly, "perf", name, repo, tmp_path / "ok", [1, 1, 0])
    assert res.returncode == 0  # only the last round decides (its streak counts the others)


def test_nightly_stops_at_a_bad_configuration(repo: Path, tmp_path: Path) -> None:
    nightly, _ = workflows(repo)
    commit_baseline(repo)
    res, calls = run_step(nightly, "perf", "Perf against prod", repo, tmp_path, [2, 0, 0])
    assert res.returncode == 2 and len(calls) == 1


def test_nightly_without_a_baseline_saves_one_to_upload(repo: Path, tmp_path: Path) -> None:
    nightly, _ = workflows(repo)
    res, calls = run_step(nightly, "perf", "Perf against prod", repo, tmp_path, [0, 0, 0])
    assert res.returncode == 0
    assert "::warning title=no perf baseline::perf/baseline-prod.json" in res.stdout
    assert not any("--baseline " in c for c in calls)
    assert "--save-baseline" not in calls[0]
    saved = str(tmp_path / "runner/releasegate-perf/baseline-prod.json")
    assert f"--save-baseline {saved} --baseline-runs 3" in calls[-1]
    keep = step(nightly["jobs"]["perf"], "Keep the history")
    assert "/releasegate-perf" in keep["with"]["path"]


def test_pull_request_step_exits_0_even_when_perf_fails(repo: Path, tmp_path: Path) -> None:
    _, pr = workflows(repo)
    commit_baseline(repo)
    (repo / ".releasegate-perf").mkdir()
    (repo / ".releasegate-perf" / "history-prod.jsonl").write_text("")
    name = "Perf against prod (informational)"
    res, calls = run_step(pr, "perf", name, repo, tmp_path, [1, 0])
    assert res.returncode == 0
    assert "::warning title=perf did not run::releasegate perf ended with exit 1" in res.stdout
    history = str(tmp_path / "runner/releasegate-perf/history.jsonl")
    assert calls[0].endswith(
        f"perf prod --mode informational --history {history} --baseline perf/baseline-prod.json"
    )
    assert calls[1] == f"perf-trend {history} --baseline perf/baseline-prod.json"
    # the nightly history is copied, never written by a pull request
    assert (repo / ".releasegate-perf" / "history-prod.jsonl").read_text() == ""
    assert (tmp_path / "summary.md").read_text() == "perf output 0\n"


def test_a_pack_without_a_perf_section_is_a_note(repo: Path) -> None:
    code, rep = generate(repo)
    assert code == 0
    assert any("none of smoke.packs has a perf: section" in line for line in rep.lines)
    pack = repo / "smoke" / "contract.yml"
    pack.write_text(pack.read_text() + "perf:\n  endpoints:\n    - {check: items, p95_ms: 100}\n")
    code, rep = generate(repo, force=True)
    assert code == 0
    assert not any("perf: section" in line for line in rep.lines)
    # now the perf workflows can run: the one thing missing is the committed baseline
    assert any(
        "compare with perf/baseline-prod.json, which is not in the repository yet" in line
        for line in rep.lines
    )
    commit_baseline(repo)
    code, rep = generate(repo, force=True)
    assert not any("perf/baseline-prod.json" in line for line in rep.lines)


@pytest.mark.parametrize(
    ("open_issue", "expected"), [("", "issue create"), ("7", "issue comment 7")]
)
def test_a_failed_nightly_opens_an_issue_or_comments_on_the_open_one(
    repo: Path, tmp_path: Path, open_issue: str, expected: str
) -> None:
    nightly, _ = workflows(repo)
    issue = step(nightly["jobs"]["notify"], "Open or update the perf issue")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{bin_dir}/calls"\n'
        f'if [ "$1 $2" = "issue list" ]; then echo "{open_issue}"; fi\n'
    )
    gh.chmod(gh.stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RUN_URL": "https://github.com/acme/shop/actions/runs/42",
        "TITLE": issue["env"]["TITLE"],
    }
    res = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", issue["run"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    calls = (bin_dir / "calls").read_text().splitlines()
    assert calls[0].startswith(
        'issue list --state open --search in:title "perf nightly prod failed"'
    )
    assert calls[1].startswith(expected)
    assert "https://github.com/acme/shop/actions/runs/42" in calls[1]
