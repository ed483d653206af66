"""`releasegate` console script (Click): a thin door onto deploy.operations; deploy.tasks makes
the Invoke door from these same commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

# Only click and light modules at import time: every command imports what it needs when it
# runs (deploy.operations does the same), so --help and config errors start fast.
from deploy.options import DEFAULT_INVENTORIES, Options
from smoke.cli import FiniteFloatRange, attach

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
  6  rollback failed, unsafe or across an incompatible schema change; a human is needed
  7  host key unknown or changed; refused
  129/130/143  interrupted by SIGHUP/SIGINT/SIGTERM after the safe cleanup for that phase
"""


# The options every command takes, before or after its name (`releasegate -v status prod` and
# `releasegate status prod -v`): declared once, on the group and (see accept_global_options) as a
# copy on every command. Each maps to the Options field it sets.
GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], str, dict[str, Any]], ...] = (
    (
        ("--inventories", "inventories"),
        "inventories",
        {
            "type": click.Path(path_type=Path),
            "default": DEFAULT_INVENTORIES,
            "show_default": True,
            "help": "Directory holding <env>.yml inventories.",
        },
    ),
    (("--plain",), "plain", {"is_flag": True, "help": "Plain lines even on a terminal."}),
    (
        ("-v", "--verbose"),
        "verbose",
        {"is_flag": True, "help": "Show every remote command (masked)."},
    ),
    (
        ("--json", "json_out"),
        "json",
        {"is_flag": True, "help": "JSON lines: events, then one final outcome object."},
    ),
)


def _global_options(f: Callable[..., None]) -> Callable[..., None]:
    for decls, _field, kwargs in reversed(GLOBAL_OPTIONS):
        f = click.option(*decls, **kwargs)(f)
    return f


def complete_env(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion for ENV: the environments of the inventories directory in use."""
    from deploy.inventory_files import known_environments

    directory = ctx.find_root().params.get("inventories") or DEFAULT_INVENTORIES
    return [
        CompletionItem(env)
        for env in known_environments(Path(directory))
        if env.startswith(incomplete)
    ]


ENV = click.argument("env", shell_complete=complete_env)


@click.group(epilog=EXIT_CODES)
@click.version_option(package_name="releasegate", prog_name="releasegate")
@_global_options
@click.pass_context
def main(ctx: click.Context, inventories: Path, plain: bool, verbose: bool, json_out: bool) -> None:
    """Gated deploys with automatic rollback for apps on a VPS under PM2 or systemd."""
    from deploy import stops

    stops.sturdy_std_streams()  # a closed terminal or pipe must not stop a rollback halfway
    ctx.obj = Options(inventories=inventories, plain=plain, verbose=verbose, json=json_out)


DRY_RUN = click.option(
    "--dry-run",
    is_flag=True,
    help="Show every step and remote command (masked) that would run; change nothing.",
)
LOCK_WAIT = click.option(
    "--lock-wait",
    type=FiniteFloatRange(0, 3600),
    default=0,
    metavar="SECONDS",
    help="Wait this long for another deploy's lock (never for a manual lock).",
)


@main.command()
@ENV
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
@ENV
@click.option("--to", "to", metavar="ID", help="Release id to go back to (default: previous good).")
@click.option(
    "--across-schema",
    is_flag=True,
    help="Go back across a schema change not declared backward compatible (after you ran the "
    "down migration: the database matches the target again).",
)
@LOCK_WAIT
@DRY_RUN
@click.pass_obj
def rollback(
    opts: Options, env: str, to: str | None, across_schema: bool, lock_wait: float, dry_run: bool
) -> None:
    """Activate the previous good release (or --to ID) and gate it like a deploy."""
    from deploy import operations

    opts = replace(opts, lock_wait=lock_wait, dry_run=dry_run, across_schema=across_schema)
    sys.exit(operations.run_rollback(env, opts, to=to))


@main.command()
@ENV
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
@ENV
@click.option("--revision", help="Branch, tag or sha to check (default: app.revision).")
@click.option("--allow-dirty", is_flag=True, help="Accept uncommitted changes in the tree.")
@click.pass_obj
def preflight(opts: Options, env: str, revision: str | None, allow_dirty: bool) -> None:
    """Run every preflight check and list ok/fail, detail and fix (exit 5 on a failure)."""
    from deploy import operations

    sys.exit(operations.run_preflight(env, opts, revision=revision, allow_dirty=allow_dirty))


@main.command()
@ENV
@click.option(
    "--print-sudoers",
    is_flag=True,
    help="Only print the sudoers allowlists root installs (systemd system scope, nginx for "
    "blue/green), from the inventory; contact nothing.",
)
@click.pass_obj
def setup(opts: Options, env: str, print_sudoers: bool) -> None:
    """Create the deploy root's layout on the host (releases/, shared/, .releasegate/)."""
    from deploy import operations

    if print_sudoers:
        sys.exit(operations.run_print_sudoers(env, opts))
    sys.exit(operations.run_setup(env, opts))


@main.command()
@ENV
@click.pass_obj
def releases(opts: Options, env: str) -> None:
    """Releases on the host: id, revision, state, created, actor, duration, markers."""
    from deploy import operations

    sys.exit(operations.run_releases(env, opts))


@main.command()
@ENV
@click.option("--op", help="Only entries of this operation (deploy, rollback, prune, unlock…).")
@click.option("--release", "release", metavar="ID", help="Only entries about this release.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.pass_obj
def history(opts: Options, env: str, op: str | None, release: str | None, limit: int) -> None:
    """The host's journal, newest first."""
    from deploy import operations

    sys.exit(operations.run_history(env, opts, op=op, release=release, limit=limit))


@main.command("lock")
@ENV
@click.option("--message", "-m", required=True, help="Why deploys are blocked.")
@click.pass_obj
def lock_cmd(opts: Options, env: str, message: str) -> None:
    """Take a manual lock that blocks deploys and rollbacks until `unlock`."""
    from deploy import operations

    sys.exit(operations.run_lock(env, opts, message=message))


@main.command()
@ENV
@click.option("--force", is_flag=True, help="Remove a lock you do not hold (needs --reason).")
@click.option("--reason", help="Recorded in the journal with a forced unlock.")
@click.pass_obj
def unlock(opts: Options, env: str, force: bool, reason: str | None) -> None:
    """Release your manual lock, or (--force --reason) an abandoned one."""
    from deploy import operations

    sys.exit(operations.run_unlock(env, opts, force=force, reason=reason))


@main.command()
@ENV
@click.pass_obj
def status(opts: Options, env: str) -> None:
    """Current release, last good, process state, lock holder and releases."""
    from deploy import operations

    sys.exit(operations.run_status(env, opts))


@main.command("trust-host")
@ENV
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
            interactive=sys.stdin.isatty(),
        )
    )


@main.command()
@click.argument("env", default="prod")
@click.option("--host", metavar="ADDRESS", help="The host: address or ~/.ssh/config alias.")
@click.option("--app", metavar="NAME", help="App name (default: this directory's name).")
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option("--health", metavar="PATH", default="/health/ready", show_default=True)
@click.pass_obj
def init(
    opts: Options, env: str, host: str | None, app: str | None, port: int, health: str
) -> None:
    """Start a project here: a commented inventories/ENV.yml, a starter smoke pack for the
    health endpoint and .gitignore lines. Asks on a terminal (nothing otherwise); never
    overwrites a file (exit 2)."""
    from deploy import scaffold

    given = scaffold.Answers(
        address=host or scaffold.Answers.address,
        app=app or scaffold.default_app(Path.cwd()),
        port=port,
        health=health,
    )
    sys.exit(
        scaffold.run(
            opts,
            env,
            given=given,
            prompt=(lambda q, d: click.prompt(q, default=d)) if sys.stdin.isatty() else None,
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
@click.option(
    "--install",
    metavar="git|SPEC",
    default="git",
    show_default=True,
    help="Where the runner installs releasegate from: `git` (the git repository this "
    "releasegate runs from, pinned to its commit; exit 2 if it cannot tell), or a pip "
    "requirement: a git URL pinned to a tag or commit, or a wheel committed to the repository.",
)
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


_provider = click.option(
    "--provider",
    type=click.Choice(["namespaces", "docker"]),
    default=None,
    help="namespaces (root on Linux) or docker (docs/sandbox.md); default: namespaces as root",
)


@main.group()
def sandbox() -> None:
    """A throwaway local VPS (real systemd, sshd, PM2): Linux namespaces (root) or Docker."""


@sandbox.command("up")
@click.option("--name", default="rg-local", show_default=True)
@click.option("--index", default=5, show_default=True, help="Uses 10.231.<index>.0/24.")
@_provider
@click.pass_obj
def sandbox_up(opts: Options, name: str, index: int, provider: str | None) -> None:
    """Boot the sandbox (idempotent)."""
    from deploy.sandbox import cli as sandbox_cli

    sys.exit(sandbox_cli.up(name, index, json_out=opts.json, provider=provider))


@sandbox.command("down")
@click.option("--name", default="rg-local", show_default=True)
@click.option("--index", default=5, show_default=True)
@_provider
@click.pass_obj
def sandbox_down(opts: Options, name: str, index: int, provider: str | None) -> None:
    """Stop the sandbox and remove everything it created on this machine."""
    from deploy.sandbox import cli as sandbox_cli

    sys.exit(sandbox_cli.down(name, index, json_out=opts.json, provider=provider))


@sandbox.command("status")
@click.option("--name", default="rg-local", show_default=True)
@click.option("--index", default=5, show_default=True)
@_provider
@click.pass_obj
def sandbox_status(opts: Options, name: str, index: int, provider: str | None) -> None:
    """Say whether the sandbox is up and how to reach it."""
    from deploy.sandbox import cli as sandbox_cli

    sys.exit(sandbox_cli.status(name, index, json_out=opts.json, provider=provider))


@main.command()
@click.option(
    "--sandbox",
    "where",
    default="rg-local:5",
    show_default=True,
    metavar="NAME:INDEX",
    help="the sandbox VPS to boot (10.231.<INDEX>.2); inventories/local.yml names rg-local:5",
)
@_provider
@click.pass_obj
def demo(opts: Options, where: str, provider: str | None) -> None:
    """Boot the sandbox and deploy the sample app blue/green under a steady load: a good
    release, one that crashes at boot, one that breaks its API contract; failed requests
    are counted for each."""
    from deploy import demo as demo_mod
    from deploy import sandbox as sandbox_mod

    name, _, index = where.partition(":")
    if not index.isdigit():
        raise click.BadParameter("use NAME:INDEX, e.g. rg-local:5", param_hint="--sandbox")
    spec = sandbox_mod.SandboxSpec(name=name, index=int(index))
    sys.exit(demo_mod.run(opts, spec, provider=provider))


def _smoke_target(env: str) -> AbstractContextManager[Target]:
    from deploy import operations

    opts = click.get_current_context().find_root().obj
    return operations.smoke_target(env, opts)


attach(main, resolve_env=_smoke_target, complete_env=complete_env)


class LateGlobalOption(click.Option):
    """A global option repeated on a command so it may follow the command's name; it sets the
    same Options field (and the group's parameter) as the one before the name."""

    def __init__(self, decls: tuple[str, ...], field: str, kwargs: dict[str, Any]) -> None:
        self.options_field = field
        late = {**kwargs, "default": False if kwargs.get("is_flag") else None}
        late["show_default"] = False
        super().__init__(decls, expose_value=False, callback=self._store, **late)

    def _store(self, ctx: click.Context, param: click.Parameter, value: object) -> None:
        if value is None or value is False:
            return  # not given after the command: the group's value stands
        root = ctx.find_root()
        assert self.name is not None
        root.params[self.name] = value
        if isinstance(ctx.obj, Options):
            change: dict[str, Any] = {self.options_field: value}
            ctx.obj = root.obj = replace(ctx.obj, **change)


def accept_global_options(group: click.Group) -> None:
    """Give every command of the tree a copy of each global option it does not define itself
    (smoke and perf have their own --json and --plain, which read the group's too)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            accept_global_options(command)
            continue
        taken = {opt for p in command.params for opt in p.opts}
        for decls, field, kwargs in GLOBAL_OPTIONS:
            flags = tuple(d for d in decls if d.startswith("-"))
            if not taken.intersection(flags):
                command.params.append(LateGlobalOption(decls, field, kwargs))


accept_global_options(main)


if __name__ == "__main__":
    main()
