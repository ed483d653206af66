"""Shared test helpers: a tiny git repo of an app, and polling with a deadline."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll until predicate() is truthy; fail with `what` at the deadline. Not a sleep-as-sync:
    the loop ends as soon as the condition holds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "HOME": str(repo),
        "PATH": "/usr/bin:/bin:/usr/local/bin",
    }
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.fixture
def app_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "server.js").write_text("console.log('hi')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    return repo


# CI runs the suite on pytest-xdist workers, a whole file per worker (--dist loadfile
# --no-loadscope-reorder, pyproject.toml): files are handed out in collection order, so the
# longest integration files (measured, 2026-11-30: each 80-240 s, the rest of the suite under
# 60 s a file) are collected first and none of them starts last and alone. A file missing here
# only runs later; order changes nothing else (every test is order-independent).
SLOW_FILES_FIRST = (
    "integration/test_blue_green.py",
    "integration/test_systemd.py",
    "integration/test_safety.py",
    "integration/test_bench_smoke.py",
    "integration/test_release_unit.py",
    "integration/test_deploy.py",
    "integration/test_fleet.py",
    "integration/test_migrations_db.py",
    "integration/test_preflight_secrets.py",
    "integration/test_demo.py",
    "integration/test_gate.py",
    "integration/test_systemd_slots.py",
    "integration/test_sandbox.py",
    "packaging/test_wheel.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return  # a serial run keeps pytest's own order

    def rank(item: pytest.Item) -> tuple[int, int]:
        path = item.path.as_posix()
        for i, name in enumerate(SLOW_FILES_FIRST):
            if path.endswith("tests/" + name):
                return (0, i)
        return (1, 0) if "/tests/integration/" in path else (2, 0)

    items.sort(key=rank)  # stable: a file's tests keep their order
