"""Invoke tasks of this repository: every `releasegate` command (`invoke deploy prod`,
`invoke rollback prod --to ID`, `invoke sandbox.up` …), generated from the Click commands by
deploy/tasks.py, plus `invoke test` for developers.

An app repository needs only the one line of docs/cli.md: `from deploy.tasks import ns`.
"""

from __future__ import annotations

import sys

from invoke import Context, task

from deploy.tasks import build_namespace


@task
def test(c: Context) -> None:
    """The whole suite, integration tests included (needs root: they boot the sandbox)."""
    c.run(f"{sys.executable} -m pytest", pty=False)


ns = build_namespace()
ns.add_task(test)
