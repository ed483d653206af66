"""`releasegate demo`: the whole promise in one run against the local sandbox.

Boots the sandbox, deploys a good release of the sample app (promoted), then a release whose
readiness answers 503 (rolled back automatically; the good one serves again), and shows status.
The sample app is copied into a throwaway git repository so each release is a real commit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from deploy import inventory, operations, sandbox
from deploy.errors import ReleasegateError
from deploy.operations import PROJECT, Options
from deploy.redact import Redactor

GIT_ENV = {
    "GIT_AUTHOR_NAME": "releasegate demo",
    "GIT_AUTHOR_EMAIL": "demo@releasegate.invalid",
    "GIT_COMMITTER_NAME": "releasegate demo",
    "GIT_COMMITTER_EMAIL": "demo@releasegate.invalid",
}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
    )


def make_app_repo(into: Path) -> Path:
    repo = into / "sampleapp"
    shutil.copytree(
        PROJECT / "examples" / "sampleapp",
        repo,
        ignore=shutil.ignore_patterns("node_modules", "FAULT"),
    )
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "sample app: healthy")
    return repo


def commit_fault(repo: Path, fault: str) -> None:
    (repo / "FAULT").write_text(f"{fault}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", f"sample app: {fault}")


DEMO_SECRETS = ("HEALTH_TOKEN", "METRICS_TOKEN")


def run(opts: Options) -> int:
    redact = Redactor()
    for name in DEMO_SECRETS:
        # Throwaway values for the sandbox only; never printed (they seed the redaction filter).
        if not os.environ.get(name):
            os.environ[name] = secrets.token_urlsafe(24)
        redact.add(os.environ[name])
    reporter = operations.make_reporter(opts, redact)
    inventories = opts.inventories if opts.inventories.is_dir() else PROJECT / "inventories"
    try:
        base = inventory.load("local", inventories)
        with reporter.stage("sandbox up"):
            info = sandbox.up(sandbox.SandboxSpec(), log=reporter.info)
            reporter.info(f"sandbox at {info.user}@{info.address}")
    except (ReleasegateError, sandbox.SandboxError) as exc:
        reporter.error(str(exc))
        return getattr(exc, "exit_code", 2)
    with tempfile.TemporaryDirectory(prefix="releasegate-demo-") as tmp:
        repo = make_app_repo(Path(tmp))
        inv = base.model_copy(
            update={
                "app": base.app.model_copy(update={"repo": str(repo), "path": None}),
                "health": base.health.model_copy(update={"deadline": 8.0}),
            }
        )
        reporter.info("1/2 deploying a healthy release: expect it to be promoted")
        first = operations.run_deploy("local", opts, reporter=reporter, inv_override=inv)
        commit_fault(repo, "ready_503")
        reporter.info("2/2 deploying a release whose /health/ready answers 503: expect rollback")
        second = operations.run_deploy("local", opts, reporter=reporter, inv_override=inv)
        operations.run_status("local", opts, reporter=reporter, inv_override=inv)
    if first == 0 and second == 3:
        reporter.info(
            "demo passed: the good release was promoted, the bad one rolled back automatically "
            "and the good one serves again. Explore with `releasegate status local`; stop the "
            "sandbox with `releasegate sandbox down`."
        )
        return 0
    reporter.error(f"demo failed: first deploy exited {first} (want 0), second {second} (want 3)")
    return 1
