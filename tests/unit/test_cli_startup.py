"""Start fast: `releasegate --help` and a mistyped environment import only click and a few
light modules. SSH, HTTP, validation and rendering libraries are imported by the command that
needs them (docs/performance.md has the figures). Checked by module, not by stopwatch, so the
test is deterministic on a loaded machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = (
    "paramiko",
    "fabric",
    "httpx",
    "jsonschema",
    "pydantic",
    "yaml",
    "rich",
    "jinja2",
    "deploy.flow",
    "deploy.deps",
    "deploy.inventory",
    "smoke.commands",
    "smoke.baseline",
)

PROBE = """
import json, sys
{body}
heavy = {heavy!r}
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def imported_heavy(body: str, cwd: Path) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=60
    )
    assert res.returncode == 0, res.stderr
    loaded: list[str] = json.loads(res.stdout.strip().splitlines()[-1])
    return loaded


def run_cli(args: list[str]) -> str:
    return f"""
from deploy.cli import main
try:
    main({args!r}, prog_name="releasegate")
except SystemExit:
    pass
"""


def test_importing_the_cli_pulls_in_no_ssh_http_or_validation_library(tmp_path: Path):
    assert imported_heavy("import deploy.cli", tmp_path) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["deploy", "--help"],
        ["smoke", "--help"],
        ["deploy", "nosuch"],
        ["--json", "rollback", "nosuch", "--lock-wait", "1.5"],
        ["status", "Not-An-Env"],
    ],
    ids=["help", "deploy-help", "smoke-help", "missing-env", "missing-env-json", "bad-env-name"],
)
def test_help_and_a_mistyped_environment_import_nothing_heavy(tmp_path: Path, args: list[str]):
    assert imported_heavy(run_cli(args), tmp_path) == []


def test_the_invoke_tasks_import_nothing_heavy_until_a_task_runs(tmp_path: Path):
    # Invoke itself reads YAML config files, so it imports yaml; nothing else heavy.
    assert imported_heavy("import deploy.tasks", tmp_path) in ([], ["yaml"])
