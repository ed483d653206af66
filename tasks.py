"""Invoke tasks: `invoke deploy prod`, `invoke rollback prod --to ID`, `invoke sandbox.up` …

A thin door onto deploy.operations, the same functions the `releasegate` console script calls.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from invoke import Collection, Context, Exit, task

from deploy import operations
from deploy.operations import Options


def _finish(code: int) -> None:
    if code:
        raise Exit(code=code)


def _opts(inventories: str, plain: bool, verbose: bool, lock_wait: float = 0) -> Options:
    return Options(
        inventories=Path(inventories), plain=plain, verbose=verbose, lock_wait=float(lock_wait)
    )


@task(
    help={
        "env": "environment (inventories/<env>.yml)",
        "revision": "branch, tag or sha",
        "allow_dirty": "ship the commit even with uncommitted changes",
    }
)
def deploy(
    c: Context,
    env: str,
    revision: str = "",
    allow_dirty: bool = False,
    clean_install: bool = False,
    dry_run: bool = False,
    lock_wait: float = 0,
    inventories: str = "inventories",
    plain: bool = False,
    verbose: bool = False,
) -> None:
    """Ship, activate and gate a release; roll back automatically if the gate fails."""
    opts = replace(
        _opts(inventories, plain, verbose, lock_wait),
        clean_install=clean_install,
        dry_run=dry_run,
    )
    _finish(
        operations.run_deploy(
            env,
            opts,
            revision=revision or None,
            allow_dirty=allow_dirty,
        )
    )


@task(help={"env": "environment", "to": "release id (default: the previous good release)"})
def rollback(
    c: Context,
    env: str,
    to: str = "",
    lock_wait: float = 0,
    inventories: str = "inventories",
    plain: bool = False,
    verbose: bool = False,
) -> None:
    """Activate the previous good release (or --to ID) and gate it."""
    opts = _opts(inventories, plain, verbose, lock_wait)
    _finish(operations.run_rollback(env, opts, to=to or None))


@task(
    help={
        "env": "environment",
        "mark_good": "record this release id good (your verdict) while clearing the mark",
        "reason": "why it is safe to go on (recorded in the journal)",
    }
)
def resolve(
    c: Context,
    env: str,
    mark_good: str = "",
    reason: str = "",
    inventories: str = "inventories",
    plain: bool = False,
) -> None:
    """Clear the needs-human mark a failed rollback left, after you fixed the cause."""
    _finish(
        operations.run_resolve(
            env,
            _opts(inventories, plain, False),
            mark_good=mark_good or None,
            reason=reason or None,
        )
    )


@task(help={"env": "environment", "revision": "branch, tag or sha to check"})
def preflight(
    c: Context,
    env: str,
    revision: str = "",
    allow_dirty: bool = False,
    inventories: str = "inventories",
    plain: bool = False,
) -> None:
    """Run every preflight check: ok/fail, detail and fix (exit 5 on a failure)."""
    _finish(
        operations.run_preflight(
            env,
            _opts(inventories, plain, False),
            revision=revision or None,
            allow_dirty=allow_dirty,
        )
    )


@task(help={"env": "environment"})
def setup(c: Context, env: str, inventories: str = "inventories") -> None:
    """Create the deploy root's layout on the host."""
    _finish(operations.run_setup(env, _opts(inventories, False, False)))


@task(help={"env": "environment"})
def releases(c: Context, env: str, inventories: str = "inventories", plain: bool = False) -> None:
    """Releases on the host with state, revision, actor and markers."""
    _finish(operations.run_releases(env, _opts(inventories, plain, False)))


@task(help={"env": "environment", "op": "only this operation", "release": "only this release"})
def history(
    c: Context,
    env: str,
    op: str = "",
    release: str = "",
    limit: int = 50,
    inventories: str = "inventories",
    plain: bool = False,
) -> None:
    """The host's journal, newest first."""
    _finish(
        operations.run_history(
            env,
            _opts(inventories, plain, False),
            op=op or None,
            release=release or None,
            limit=limit,
        )
    )


@task(name="lock", help={"env": "environment", "message": "why deploys are blocked"})
def lock_(c: Context, env: str, message: str = "", inventories: str = "inventories") -> None:
    """Take a manual lock that blocks deploys until `invoke unlock`."""
    _finish(operations.run_lock(env, _opts(inventories, False, False), message=message))


@task(
    help={
        "env": "environment",
        "force": "remove a lock you do not hold",
        "reason": "recorded in the journal with --force",
    }
)
def unlock(
    c: Context, env: str, force: bool = False, reason: str = "", inventories: str = "inventories"
) -> None:
    """Release your manual lock, or (--force --reason) an abandoned one."""
    _finish(
        operations.run_unlock(
            env, _opts(inventories, False, False), force=force, reason=reason or None
        )
    )


@task(help={"env": "environment"})
def status(c: Context, env: str, inventories: str = "inventories", plain: bool = False) -> None:
    """Current release, last good, process state and lock holder."""
    _finish(operations.run_status(env, _opts(inventories, plain, False)))


@task(name="trust-host", help={"env": "environment", "yes": "pin without asking"})
def trust_host(
    c: Context, env: str, yes: bool = False, replace: bool = False, inventories: str = "inventories"
) -> None:
    """Show the host key's SHA256 fingerprint and pin it."""

    def confirm(question: str) -> bool:
        return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}

    _finish(
        operations.run_trust_host(
            env, _opts(inventories, False, False), yes=yes, replace=replace, confirm=confirm
        )
    )


@task(
    iterable=["pack"],
    positional=["env"],
    help={
        "env": "environment (its tunnel or smoke.base_url), or any http(s):// URL",
        "pack": "pack file or built-in name (repeatable); default: the inventory's",
        "junit": "write JUnit XML here",
        "json": "JSON lines",
    },
)
def smoke(
    c: Context,
    env: str,
    pack: list[str] | None = None,
    junit: str = "",
    json: bool = False,
    audit: bool = False,
    inventories: str = "inventories",
    plain: bool = False,
) -> None:
    """Run the contract smoke pack against an environment or a URL (exit 0/1/2)."""
    from smoke.commands import run_smoke, run_smoke_env

    junit_path = Path(junit) if junit else None
    if env.startswith(("http://", "https://")):
        _finish(
            run_smoke(
                base_url=env,
                packs=pack or [],
                junit=junit_path,
                json_out=json,
                plain=plain,
                audit=None,
            )
        )
        return
    opts = _opts(inventories, plain, False)
    _finish(
        run_smoke_env(
            env,
            lambda e: operations.smoke_target(e, opts),
            packs=pack or [],
            audit=True if audit else None,
            junit=junit_path,
            json_out=json,
            plain=plain,
        )
    )


@task(
    iterable=["pack"],
    positional=["env"],
    help={
        "env": "environment, or any http(s):// URL",
        "mode": "informational or blocking",
        "baseline": "compare with this baseline file (docs/smoke.md)",
        "save-baseline": "save this run as a baseline here",
        "history": "the run history file [beside the baseline]",
    },
)
def perf(
    c: Context,
    env: str,
    pack: list[str] | None = None,
    mode: str = "",
    json: bool = False,
    inventories: str = "inventories",
    plain: bool = False,
    baseline: str = "",
    save_baseline: str = "",
    history: str = "",
) -> None:
    """Latency percentiles and error rate of the pack's hot endpoints against thresholds
    (and, with --baseline, regressions under the default policy)."""
    from smoke.commands import BaselineOptions, run_perf, run_perf_env

    keep = BaselineOptions(
        compare=Path(baseline) if baseline else None,
        save=Path(save_baseline) if save_baseline else None,
        history=Path(history) if history else None,
    )

    if env.startswith(("http://", "https://")):
        _finish(
            run_perf(
                base_url=env,
                packs=pack or [],
                mode=mode or "informational",
                json_out=json,
                plain=plain,
                baseline=keep,
            )
        )
        return
    opts = _opts(inventories, plain, False)
    _finish(
        run_perf_env(
            env,
            lambda e: operations.smoke_target(e, opts),
            packs=pack or [],
            mode=mode or None,
            json_out=json,
            plain=plain,
            baseline=keep,
        )
    )


@task
def demo(c: Context) -> None:
    """Boot the sandbox, deploy a good release, then a bad one that is rolled back."""
    from deploy import demo as demo_mod

    _finish(demo_mod.run(Options()))


@task
def test(c: Context) -> None:
    """The whole suite, integration tests included (needs root: they boot the sandbox)."""
    c.run(f"{sys.executable} -m pytest", pty=False)


@task(name="up")
def sandbox_up(c: Context, name: str = "rg-local", index: int = 5) -> None:
    """Boot the local sandbox VPS (idempotent)."""
    from deploy import sandbox_cli

    _finish(sandbox_cli.up(name, index))


@task(name="down")
def sandbox_down(c: Context, name: str = "rg-local", index: int = 5) -> None:
    """Stop the sandbox and remove everything it created."""
    from deploy import sandbox_cli

    _finish(sandbox_cli.down(name, index))


@task(name="status")
def sandbox_status(c: Context, name: str = "rg-local", index: int = 5) -> None:
    """Is the sandbox up, and how to reach it."""
    from deploy import sandbox_cli

    _finish(sandbox_cli.status(name, index))


@task(
    name="github",
    help={
        "env": "environment to deploy (inventories/<env>.yml)",
        "smoke_env": "environment the post-deploy smoke job tests (default: env)",
        "dir": "where to write the workflows",
        "force": "overwrite existing workflow files",
        "branch": "deploy on pushes to this branch",
        "install": "pip requirement for releasegate on the runner",
    },
)
def ci_github(
    c: Context,
    env: str = "prod",
    smoke_env: str = "",
    dir: str = ".github/workflows",
    force: bool = False,
    branch: str = "main",
    install: str = "",
    inventories: str = "inventories",
) -> None:
    """Write GitHub Actions workflows: deploy + post-deploy smoke, and a manual rollback."""
    from deploy import ci as ci_mod

    _finish(
        ci_mod.run_github(
            _opts(inventories, False, False),
            env=env,
            smoke_env=smoke_env or None,
            directory=Path(dir),
            force=force,
            branch=branch,
            install=install or None,
        )
    )


sandbox = Collection("sandbox", sandbox_up, sandbox_down, sandbox_status)
ci = Collection("ci", ci_github)
ns = Collection(
    deploy,
    rollback,
    resolve,
    status,
    preflight,
    setup,
    releases,
    history,
    lock_,
    unlock,
    smoke,
    perf,
    trust_host,
    demo,
    test,
    sandbox,
    ci,
)
