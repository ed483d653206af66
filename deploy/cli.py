"""`releasegate` console script (Click): a thin door onto deploy.operations, like tasks.py."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

# Only click and light modules at import time: every command imports what it needs when it
# runs (deploy.operations does the same), so --help and config errors start fast.
from deploy.options import Options
from smoke.cli import attach

if TYPE_CHECKING:
    from smoke.commands import Target

EXIT_CODES = """\b
Exit codes:
  0  success (promoted / rolled back / smoke passed)
  1  smoke pack or check failed
  2  invalid input or config; nothing contacted
  3  the new release failed a gate (before traffic, or after it and rolled back); the
     previous release serves, verified
  4  lock held by someone else
  5  failed before activation (preflight, ship); nothing live changed
  6  rollback failed or unsafe; a human is needed (then `resolve`)
  7  host key unknown or changed; refused
  130/143  interrupted by SIGINT/SIGTERM after the safe cleanup for that phase
"""


@click.group(epilog=EXIT_CODES)
@click.option(
    "--inventories",
    "inventories",
    type=click.Path(path_type=Path),
    default=Path("inventories"),
    show_default=True,
    help="Directory holding <env>.yml inventories.",
)
@click.option("--plain", is_flag=True, help="Plain lines even on a terminal.")
@click.option("-v", "--verbose", is_flag=True, help="Show every remote command (masked).")
@click.option("--json", "json_out", is_flag=True, help="JSON lines: events + a final outcome.")
@click.pass_context
def main(ctx: click.Context, inventories: Path, plain: bool, verbose: bool, json_out: bool) -> None:
    """Gated deploys with automatic rollback for apps on a VPS under PM2."""
    ctx.obj = Options(inventories=inventories, plain=plain, verbose=verbose, json=json_out)


DRY_RUN = click.option(
    "--dry-run",
    is_flag=True,
    help="Show every step and remote command (masked) that would run; change nothing.",
)
LOCK_WAIT = click.option(
    "--lock-wait",
    type=click.FloatRange(0, 3600),
    default=0,
    metavar="SECONDS",
    help="Wait this long for another deploy's lock (never for a manual lock).",
)


@main.command()
@click.argument("env")
@click.option("--revision", help="Branch, tag or sha to deploy (default: app.revision).")
@click.option("--allow-dirty", is_flag=True, help="Ship the commit even if the tree has changes.")
@click.option(
    "--clean-install",
    is_flag=True,
    help="Run the install command even if the lockfile is unchanged (no dependency reuse).",
)
@LOCK_WAIT
@DRY_RUN
@click.pass_obj
def deploy(
    opts: Options,
    env: str,
    revision: str | None,
    allow_dirty: bool,
    clean_install: bool,
    lock_wait: float,
    dry_run: bool,
) -> None:
    """Ship, activate and gate a release of ENV; roll back automatically if the gate fails."""
    from deploy import operations

    opts = replace(opts, lock_wait=lock_wait, dry_run=dry_run, clean_install=clean_install)
    sys.exit(operations.run_deploy(env, opts, revision=revision, allow_dirty=allow_dirty))


@main.command()
@click.argument("env")
@click.option("--to", "to", metavar="ID", help="Release id to go back to (default: previous good).")
@LOCK_WAIT
@DRY_RUN
@click.pass_obj
def rollback(opts: Options, env: str, to: str | None, lock_wait: float, dry_run: bool) -> None:
    """Activate the previous good release (or --to ID) and gate it like a deploy."""
    from deploy import operations

    opts = replace(opts, lock_wait=lock_wait, dry_run=dry_run)
    sys.exit(operations.run_rollback(env, opts, to=to))


@main.command()
@click.argument("env")
@click.option(
    "--mark-good",
    "mark_good",
    metavar="ID",
    help="Record this release good (your verdict, journaled) while clearing the mark.",
)
@click.option("--reason", help="Why it is safe to go on (recorded in the journal).")
@click.pass_obj
def resolve(opts: Options, env: str, mark_good: str | None, reason: str | None) -> None:
    """Clear ENV's needs-human mark left by a failed rollback, after you fixed the cause."""
    from deploy import operations

    sys.exit(operations.run_resolve(env, opts, mark_good=mark_good, reason=reason))


@main.command()
@click.argument("env")
@click.option("--revision", help="Branch, tag or sha to check (default: app.revision).")
@click.option("--allow-dirty", is_flag=True, help="Accept uncommitted changes in the tree.")
@click.pass_obj
def preflight(opts: Options, env: str, revision: str | None, allow_dirty: bool) -> None:
    """Run every preflight check and list ok/fail, detail and fix (exit 5 on a failure)."""
    from deploy import operations

    sys.exit(operations.run_preflight(env, opts, revision=revision, allow_dirty=allow_dirty))


@main.command()
@click.argument("env")
@click.pass_obj
def setup(opts: Options, env: str) -> None:
    """Create the deploy root's layout on the host (releases/, shared/, .releasegate/)."""
    from deploy import operations

    sys.exit(operations.run_setup(env, opts))


@main.command()
@click.argument("env")
@click.pass_obj
def releases(opts: Options, env: str) -> None:
    """Releases on the host: id, revision, state, created, actor, duration, markers."""
    from deploy import operations

    sys.exit(operations.run_releases(env, opts))


@main.command()
@click.argument("env")
@click.option("--op", help="Only entries of this operation (deploy, rollback, prune, unlock…).")
@click.option("--release", "release", metavar="ID", help="Only entries about this release.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.pass_obj
def history(opts: Options, env: str, op: str | None, release: str | None, limit: int) -> None:
    """The host's journal, newest first."""
    from deploy import operations

    sys.exit(operations.run_history(env, opts, op=op, release=release, limit=limit))


@main.command("lock")
@click.argument("env")
@click.option("--message", "-m", required=True, help="Why deploys are blocked.")
@click.pass_obj
def lock_cmd(opts: Options, env: str, message: str) -> None:
    """Take a manual lock that blocks deploys and rollbacks until `unlock`."""
    from deploy import operations

    sys.exit(operations.run_lock(env, opts, message=message))


@main.command()
@click.argument("env")
@click.option("--force", is_flag=True, help="Remove a lock you do not hold (needs --reason).")
@click.option("--reason", help="Recorded in the journal with a forced unlock.")
@click.pass_obj
def unlock(opts: Options, env: str, force: bool, reason: str | None) -> None:
    """Release your manual lock, or (--force --reason) an abandoned one."""
    from deploy import operations

    sys.exit(operations.run_unlock(env, opts, force=force, reason=reason))


@main.command()
@click.argument("env")
@click.pass_obj
def status(opts: Options, env: str) -> None:
    """Current release, last good, process state, lock holder and releases."""
    from deploy import operations

    sys.exit(operations.run_status(env, opts))


@main.command("trust-host")
@click.argument("env")
@click.option("--yes", is_flag=True, help="Pin without asking (you checked the fingerprint).")
@click.option("--replace", is_flag=True, help="Replace a pinned key that changed.")
@click.pass_obj
def trust_host(opts: Options, env: str, yes: bool, replace: bool) -> None:
    """Show the host's SHA256 key fingerprint and pin it in known_hosts."""
    from deploy import operations

    sys.exit(
        operations.run_trust_host(
            env,
            opts,
            yes=yes,
            replace=replace,
            confirm=lambda q: click.confirm(q, default=False),
        )
    )


@main.group()
def ci() -> None:
    """CI integration: workflows that deploy, smoke test and roll back (docs/ci.md)."""


@ci.command("github")
@click.option("--env", "env", default="prod", show_default=True, help="Environment to deploy.")
@click.option("--smoke-env", metavar="ENV", help="Environment the post-deploy smoke job tests.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".github/workflows"),
    show_default=True,
    help="Where to write the workflows.",
)
@click.option("--force", is_flag=True, help="Overwrite existing workflow files.")
@click.option("--branch", default="main", show_default=True, help="Deploy on pushes to it.")
@click.option("--install", metavar="SPEC", help="pip requirement for releasegate on the runner.")
@click.pass_obj
def ci_github(
    opts: Options,
    env: str,
    smoke_env: str | None,
    directory: Path,
    force: bool,
    branch: str,
    install: str | None,
) -> None:
    """Write GitHub Actions workflows for ENV into .github/workflows: deploy (one at a time)
    then a post-deploy smoke job with JUnit, and a manual rollback."""
    from deploy import ci as ci_mod

    sys.exit(
        ci_mod.run_github(
            opts,
            env=env,
            smoke_env=smoke_env,
            directory=directory,
            force=force,
            branch=branch,
            install=install,
        )
    )


@main.group()
def sandbox() -> None:
    """A throwaway local VPS (real systemd, sshd, PM2) in Linux namespaces; needs root."""


@sandbox.command("up")
@click.option("--name", default="rg-local", show_default=True)
@click.option("--index", default=5, show_default=True, help="Uses 10.231.<index>.0/24.")
def sandbox_up(name: str, index: int) -> None:
    """Boot the sandbox (idempotent)."""
    from deploy import sandbox_cli

    sys.exit(sandbox_cli.up(name, index))


@sandbox.command("down")
@click.option("--name", default="rg-local", show_default=True)
@click.option("--index", default=5, show_default=True)
def sandbox_down(name: str, index: int) -> None:
    """Stop the sandbox and remove everything it created on this machine."""
    from deploy import sandbox_cli

    sys.exit(sandbox_cli.down(name, index))


@sandbox.command("status")
@click.option("--name", default="rg-local", show_default=True)
@click.option("--index", default=5, show_default=True)
def sandbox_status(name: str, index: int) -> None:
    """Say whether the sandbox is up and how to reach it."""
    from deploy import sandbox_cli

    sys.exit(sandbox_cli.status(name, index))


@main.command()
@click.option(
    "--sandbox",
    "where",
    default="rg-local:5",
    show_default=True,
    metavar="NAME:INDEX",
    help="the sandbox VPS to boot (10.231.<INDEX>.2); inventories/local.yml names rg-local:5",
)
@click.pass_obj
def demo(opts: Options, where: str) -> None:
    """Boot the sandbox and deploy the sample app blue/green under a steady load: a good
    release, one that crashes at boot, one that breaks its API contract; failed requests
    are counted for each."""
    from deploy import demo as demo_mod
    from deploy import sandbox as sandbox_mod

    name, _, index = where.partition(":")
    if not index.isdigit():
        raise click.BadParameter("use NAME:INDEX, e.g. rg-local:5", param_hint="--sandbox")
    sys.exit(demo_mod.run(opts, sandbox_mod.SandboxSpec(name=name, index=int(index))))


def _smoke_target(env: str) -> AbstractContextManager[Target]:
    from deploy import operations

    opts = click.get_current_context().find_root().obj
    return operations.smoke_target(env, opts)


attach(main, resolve_env=_smoke_target)


if __name__ == "__main__":
    main()
