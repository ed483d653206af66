"""Composition: the functions behind both doors (Click in deploy.cli; Invoke in deploy.tasks,
generated from the Click commands).

Each `run_*` reads the inventory, builds the real seams (SSH, clock, reporter), calls the
flow and returns the exit code. Errors a user can cause end here as one clear paragraph.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, TextIO

# Only what every command needs is imported here: SSH, validation models, HTTP and the flow
# are imported by the function that uses them, so `--help` and a config error start fast
# (docs/performance.md; tests/unit/test_cli_startup.py keeps it so).
from deploy.errors import (
    AbortedBeforeLive,
    ConfigError,
    HostKeyRefused,
    PreflightFailed,
    ReleasegateError,
    Signalled,
)
from deploy.inventory_files import locate
from deploy.options import DEFAULT_INVENTORIES as DEFAULT_INVENTORIES
from deploy.options import Options as Options
from deploy.redact import Redactor
from deploy.report import JsonReporter, PlainReporter, Reporter, RichReporter

if TYPE_CHECKING:
    import paramiko

    from deploy import fleet_ops, inventory, notify
    from deploy.artifact import Source
    from deploy.commands import Cmd
    from deploy.deps import Deps
    from deploy.inventory import Inventory
    from deploy.model import Outcome
    from deploy.preflight import Check
    from deploy.remote import SshRemote
    from smoke.commands import Target

PROJECT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """This machine's name in lock records: RELEASEGATE_MACHINE when set (containers that share
    a hostname; tests that play a second machine), else the hostname."""
    import socket

    return os.environ.get("RELEASEGATE_MACHINE") or socket.gethostname()


def actor() -> str:
    import getpass
    import socket

    who = os.environ.get("RELEASEGATE_ACTOR")
    if who:
        return who
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def make_reporter(
    opts: Options, redact: Redactor, *, env: str = "", environ: Mapping[str, str] | None = None
) -> Reporter:
    """JSON lines, Rich or plain; under GitHub Actions (GITHUB_ACTIONS=true) wrapped so the
    outcome also lands in the step summary and failures become `::error` annotations."""
    environ = os.environ if environ is None else environ
    inner: Reporter
    if opts.json:
        inner = JsonReporter(redact=redact)
    elif not opts.plain and sys.stdout.isatty():
        inner = RichReporter(redact=redact, verbose=opts.verbose)
    else:
        inner = PlainReporter(redact=redact, verbose=opts.verbose)
    if environ.get("GITHUB_ACTIONS") != "true":
        return inner
    from deploy import github

    summary = environ.get("GITHUB_STEP_SUMMARY")
    return github.ActionsReporter(
        inner, redact=redact, summary_path=Path(summary) if summary else None, env=env
    )


def health_token(inv: Inventory) -> str | None:
    name = inv.health.token_env
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"{inv.source}: health.token_env names the environment variable {name}, but it is "
            f"not set here. Export {name} with the readiness token, or remove health.token_env."
        )
    return value


def local_preflight(inv: Inventory, redact: Redactor) -> tuple[tuple[Check, ...], str | None]:
    """The checks made on this machine, and the secrets part of the release's env snapshot
    built from the secret sources (its values go into the redaction filter before anything
    else happens)."""
    from deploy import secrets
    from deploy.preflight import Check

    checks = [Check("inventory", True, f"{inv.source} is valid")]
    missing = [n for n in inv.preflight.required_env if not os.environ.get(n)]
    checks.append(
        Check(
            "required environment",
            not missing,
            f"missing: {', '.join(missing)}"
            if missing
            else f"{len(inv.preflight.required_env)} variable(s) set",
            "export them before deploying (values are never printed)",
        )
    )
    env_file = None
    if inv.secrets.enabled:
        from_file = (
            (inv.base_dir / Path(inv.secrets.from_file).expanduser())
            if inv.secrets.from_file
            else None
        )
        built, problems = secrets.build(inv.secrets.from_env, from_file, os.environ)
        redact.add(*built.values())
        checks.append(
            Check(
                "secrets",
                not problems,
                "; ".join(problems)
                if problems
                else f"{len(built.entries)} value(s) for the release's environment",
                "set the variables / fix the file named in secrets: (values are never printed)",
            )
        )
        env_file = built.render() if not problems else None
    return tuple(checks), env_file


@contextmanager
def smoke_target(env: str, opts: Options) -> Iterator[Target]:
    """`smoke ENV` / `perf ENV`: the environment's base URL, or a tunnel to its app port (with
    blue/green: to nginx's public port, so the live slot answers). Output names the
    environment; a tunnel whose connections the host refused is explained in one line."""
    from deploy import inventory
    from smoke import report as smoke_report
    from smoke.commands import TargetUnavailable, packs_from_settings, target_from_settings
    from smoke.pack import PackError

    _quiet_libraries()
    try:
        inv = inventory.load(env, opts.inventories)
        token = health_token(inv)
    except ReleasegateError as exc:
        raise TargetUnavailable(exc.message, exit_code=exc.exit_code) from None
    secrets = (token,) if token else ()
    try:  # a bad pack is exit 2 before the environment is contacted
        packs_from_settings(inv.smoke, base_dir=inv.base_dir)
    except PackError as exc:
        raise TargetUnavailable(f"{inv.source}: smoke.packs: {exc}", exit_code=2) from None
    if inv.smoke.base_url:
        yield target_from_settings(
            inv.smoke,
            base_dir=inv.base_dir,
            base_url=inv.smoke.base_url,
            secrets=secrets,
            label=f"{env} ({inv.smoke.base_url})",
        )
        return
    try:
        remote = open_remote(inv, Redactor(secrets))
    except ReleasegateError as exc:
        raise TargetUnavailable(exc.message, exit_code=exc.exit_code) from None
    # blue/green: through the front door (what users reach); in place: the app's port
    blue_green = inv.strategy.kind == "blue-green"
    app_port = inv.strategy.public_port if blue_green else inv.process.port
    try:
        with remote.tunnel(app_port) as port:
            yield target_from_settings(
                inv.smoke,
                base_dir=inv.base_dir,
                base_url=f"http://127.0.0.1:{port}",
                secrets=secrets,
                label=f"{env} ({inv.host.name}, 127.0.0.1:{app_port} through an SSH tunnel)",
            )
    finally:
        remote.close()
        if remote.tunnel_failure:
            smoke_report.error(
                f"{env}: nothing answered on 127.0.0.1:{app_port} on {inv.host.label} through "
                f"the SSH tunnel ({remote.tunnel_failure}); is the app running? "
                f"`releasegate status {env}` shows its process",
                sys.stderr,
                secrets,
            )


def check_identity(inv: Inventory) -> None:
    """Every key file the inventory names must exist: a config error (exit 2) before anything
    is contacted, not an SSH failure."""
    for index, host in enumerate(inv.hosts):
        if host.identity_file is None:
            continue
        path = (inv.base_dir / Path(host.identity_file).expanduser()).resolve()
        if not path.is_file():
            where = f"hosts[{index}].identity_file" + (
                f" (host {host.name})" if len(inv.hosts) > 1 or index else ""
            )
            raise ConfigError(
                f"{inv.source}: {where}: {path} does not exist or is not a file. Fix the path "
                f"(a relative path starts at the inventory's directory), or remove the key to "
                f"use ssh-agent and ~/.ssh/config. Nothing was contacted."
            )


def open_remote(inv: Inventory, redact: Redactor, reporter: Reporter | None = None) -> SshRemote:
    from deploy import ssh_config
    from deploy.remote import SshRemote, fingerprint

    check_identity(inv)
    host = inv.host
    pin = None
    if inv.ssh.accept_unknown_hosts:

        def pin(hostname: str, key: paramiko.PKey) -> None:
            _append_pin(inv.pin_file(), ssh_config.pin_name(host.address, host.port), key)
            if reporter is not None:
                reporter.warn(
                    f"ssh.accept_unknown_hosts: pinned the unknown key {fingerprint(key)} of "
                    f"{hostname} into {inv.pin_file()} without verification"
                )

    remote = SshRemote(
        address=host.address,
        port=host.port,
        user=host.user,
        known_hosts=inv.known_hosts_files(),
        identity_file=inv.identity_path(),
        connect_timeout=inv.ssh.connect_timeout,
        command_timeout=inv.ssh.command_timeout,
        upload_timeout=inv.ssh.upload_timeout,
        keepalive=inv.ssh.keepalive,
        redact=redact,
        env_name=inv.env,
        on_command=(lambda cmd: _show_command(reporter, cmd)) if reporter else None,
        pin_unknown=pin,
    )
    remote.open()
    return remote


def _show_command(reporter: Reporter, cmd: Cmd) -> None:
    """-v (and JSON `command` events): the commands as they run on the host, masked by the
    reporter."""
    from deploy import commands

    for line in commands.shown(cmd):
        reporter.command(line)


@contextmanager
def _signals_as_exceptions(seen: list[int] | None = None) -> Iterator[None]:
    """Ctrl-C, SIGTERM (a cancelled CI job, systemctl stop) and SIGHUP (the terminal or the
    SSH session closed) take the same safe path. Ctrl-C too is raised as Signalled, not as
    KeyboardInterrupt: Invoke's runner catches a KeyboardInterrupt while a remote command
    runs and only forwards it (a Ctrl-C during an install waited for the install to end), and
    one raised inside a weakref callback is dropped by Python, while `seen` keeps it."""
    from deploy import stops

    def on_term(signum: int, _frame: FrameType | None) -> None:
        if seen is not None:
            seen.append(signum)  # in case Python drops the exception (see deploy.deps.Deps.signals)
        raise Signalled(signum)

    with stops.handling(on_term):
        yield


def _guard(
    reporter: Reporter, body: Callable[[], int], op: str = "", seen: list[int] | None = None
) -> int:
    _quiet_libraries()
    code = _guarded(reporter, body, seen)
    reporter.finish(op, code)
    return code


def _quiet_libraries() -> None:
    """paramiko logs tracebacks of its transport thread to stderr (through logging's last
    resort handler); we report those failures ourselves, once, as an error paragraph."""
    for name in ("paramiko", "invoke", "fabric"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _guarded(reporter: Reporter, body: Callable[[], int], seen: list[int] | None = None) -> int:
    try:
        with _signals_as_exceptions(seen):
            return body()
    except ReleasegateError as exc:
        reporter.error(exc.message, exc.evidence, exit_code=exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        reporter.error("interrupted by SIGINT", exit_code=130)
        return 130
    except Signalled as exc:
        reporter.error(
            f"interrupted by {signal.Signals(exc.signum).name}", exit_code=128 + exc.signum
        )
        return 128 + exc.signum


def _operation(
    op: str,
    env: str,
    opts: Options,
    body: Callable[[Deps], Outcome | int],
    *,
    reporter: Reporter | None = None,
    inv_override: Inventory | None = None,
    validate: Callable[[Inventory], None] | None = None,
    fleet_body: fleet_ops.FleetBody | None = None,
) -> int:
    redact = Redactor()
    rep = reporter or make_reporter(opts, redact, env=env)

    seen: list[int] = []  # signals the handler saw (deploy.deps.Deps.signals)

    def run() -> int:
        if inv_override is None:
            locate(env, opts.inventories)  # a mistyped environment fails before the imports
        from deploy import inventory

        inv = inv_override or inventory.load(env, opts.inventories)
        check_identity(inv)  # a missing key file is exit 2, not "could not reach" (exit 5)
        if validate is not None:
            validate(inv)  # bad arguments are refused before any SSH connection
        hooks = _webhooks(op, inv, opts, redact)
        if not hooks:
            result = execute(inv)
            return result if isinstance(result, int) else result.exit_code
        try:
            result = execute(inv)
        except ReleasegateError as exc:
            _notify(hooks, _ended(op, exc.exit_code, exc.message, exc.evidence), inv, rep, redact)
            raise
        except (KeyboardInterrupt, Signalled) as exc:
            code = 128 + exc.signum if isinstance(exc, Signalled) else 130
            _notify(hooks, _ended(op, code, "interrupted", ()), inv, rep, redact)
            raise
        if isinstance(result, int):
            return result
        _notify(hooks, result, inv, rep, redact)
        return result.exit_code

    def execute(inv: Inventory) -> Outcome | int:
        import tempfile

        from deploy import fleet_ops
        from deploy.clock import SystemClock
        from deploy.deps import Deps
        from deploy.plan import PlanRemote

        token = health_token(inv)
        redact.add(token)
        checks, env_file = local_preflight(inv, redact)
        if inv.many:  # several hosts: deploy.fleet, one connection per host
            return fleet_ops.execute(
                op, inv, dry_run=opts.dry_run, lock_wait=opts.lock_wait,
                clean_install=opts.clean_install, reporter=rep, redact=redact,
                health_token=token, local_checks=checks, env_file=env_file,
                host_body=body, fleet_body=fleet_body,
            )  # fmt: skip
        remote = open_remote(inv, redact, rep)
        try:
            with tempfile.TemporaryDirectory(prefix="releasegate-") as work:
                deps = Deps(
                    inventory=inv,
                    remote=PlanRemote(remote, rep) if opts.dry_run else remote,
                    reporter=rep,
                    clock=SystemClock(),
                    actor=actor(),
                    machine=machine(),
                    workdir=Path(work),
                    health_token=token,
                    lock_wait=opts.lock_wait,
                    dry_run=opts.dry_run,
                    clean_install=opts.clean_install,
                    across_schema=opts.across_schema,
                    signals=seen,
                    redact=redact,
                    local_checks=checks,
                    env_file=env_file,
                    environ=os.environ,
                )
                return body(deps)
        finally:
            remote.close()

    return _guard(rep, run, op, seen)


def _fleet() -> ModuleType:
    """deploy.fleet, imported when a many-host inventory runs (it pulls in the flow)."""
    from deploy import fleet

    return fleet


def _webhooks(op: str, inv: Inventory, opts: Options, redact: Redactor) -> tuple[notify.Hook, ...]:
    """The webhooks a deploy or rollback announces its outcome to (none for a dry run).
    Their URLs are secrets and join the redaction filter before anything is printed."""
    from deploy import notify

    if op not in ("deploy", "rollback") or opts.dry_run:
        return ()
    hooks = notify.resolve(inv.notify, os.environ)
    for hook in hooks:
        redact.add(*hook.secret_values())
    return hooks


def _ended(op: str, exit_code: int, message: str, evidence: tuple[str, ...]) -> Outcome:
    """An operation that ended with an error, as an outcome to announce."""
    from deploy.model import Outcome

    return Outcome(
        op=op,
        result="error",
        exit_code=exit_code,
        release=None,
        live=None,
        message=message,
        evidence=evidence,
    )


def _notify(
    hooks: tuple[notify.Hook, ...],
    outcome: Outcome,
    inv: Inventory,
    rep: Reporter,
    redact: Redactor,
) -> None:
    """Announce the outcome; a webhook's failure is a warning, never a different exit code."""
    from deploy import github, notify
    from deploy.clock import SystemClock

    event = notify.event_for(outcome)
    if event is None:
        return
    context = notify.Context(
        env=inv.env,
        app=inv.app.name,
        host=", ".join(h.label for h in inv.hosts),
        actor=actor(),
        at=SystemClock().now().isoformat(timespec="seconds"),
        run_url=github.run_url(os.environ),
    )
    notice = notify.Notice(event=event, outcome=outcome, context=context)
    try:
        notify.announce(hooks, notice, reporter=rep, redact=redact)
    except (KeyboardInterrupt, Signalled):  # the operation is over; its exit code stands
        rep.warn("notifications interrupted by a signal; the result above stands")
    except Exception as exc:  # a bug in a notification must not turn a promotion red
        rep.warn(redact(f"notifications failed: {type(exc).__name__}: {exc}"))


def run_deploy(
    env: str,
    opts: Options,
    *,
    revision: str | None = None,
    allow_dirty: bool = False,
    reporter: Reporter | None = None,
    inv_override: Inventory | None = None,
) -> int:
    def source_of(inv: Inventory) -> Source:
        from deploy.artifact import Source

        app = inv.app
        return Source(
            repo=inv.repo_path(),
            revision=revision or app.revision,
            path=app.path,
            build=app.build,
            allow_dirty=allow_dirty,
            replaced_on_host=(*app.shared_files, *app.shared_dirs),
        )

    def body(d: Deps) -> Outcome:
        from deploy import flow

        return flow.deploy(d, source_of(d.inventory))

    def validate(inv: Inventory) -> None:
        from deploy import artifact as artifacts
        from deploy import inventory

        if revision is not None and not inventory.REVISION.match(revision):
            raise ConfigError(
                f"--revision {revision!r} is not a branch, tag or commit name: use letters, "
                f"digits and . _ / @ ^ ~ - only, not starting with '-' (e.g. main, v1.4.0, a1b2c3d)"
            )
        artifacts.check_revision(inv.repo_path(), revision or inv.app.revision)

    return _operation(
        "deploy", env, opts, body, reporter=reporter, inv_override=inv_override, validate=validate,
        fleet_body=lambda fl: _fleet().deploy(fl, source_of(fl.inventory)),
    )  # fmt: skip


def run_rollback(
    env: str, opts: Options, *, to: str | None = None, reporter: Reporter | None = None
) -> int:
    def body(d: Deps) -> Outcome:
        from deploy.rollback import rollback

        return rollback(d, to)

    def validate(inv: Inventory) -> None:
        from deploy.model import check_release_id

        check_release_id(to, inv.env)

    return _operation(
        "rollback", env, opts, body, reporter=reporter, validate=validate,
        fleet_body=lambda fl: _fleet().rollback(fl, to),
    )  # fmt: skip


def run_resolve(
    env: str,
    opts: Options,
    *,
    mark_good: str | None = None,
    reason: str | None = None,
    reporter: Reporter | None = None,
) -> int:
    """Clear the host's needs-human mark (optionally recording a release good), journaled
    with the actor and the reason."""

    def body(d: Deps) -> Outcome:
        from deploy.needs_human import resolve

        return resolve(d, mark_good=mark_good, reason=reason)

    def validate(inv: Inventory) -> None:
        from deploy.model import check_release_id

        check_release_id(mark_good, inv.env, option="--mark-good")

    return _operation("resolve", env, opts, body, reporter=reporter, validate=validate)


def run_preflight(
    env: str,
    opts: Options,
    *,
    revision: str | None = None,
    allow_dirty: bool = False,
    reporter: Reporter | None = None,
) -> int:
    """The whole catalogue, alone: every check listed with ok/fail, detail and fix."""
    redact = Redactor()
    rep = reporter or make_reporter(opts, redact)

    def run() -> int:
        locate(env, opts.inventories)
        import tempfile
        from dataclasses import replace

        from deploy import flow, inventory
        from deploy.artifact import Source
        from deploy.artifact import build as artifact_build
        from deploy.clock import SystemClock
        from deploy.deps import Deps, host_ops
        from deploy.preflight import Check

        inv = inventory.load(env, opts.inventories)
        check_identity(inv)
        checks, _env_file = local_preflight(inv, redact)
        results = list(checks)
        with tempfile.TemporaryDirectory(prefix="releasegate-") as work:
            app = inv.app
            source = Source(
                repo=inv.repo_path(),
                revision=revision or app.revision,
                path=app.path,
                build=app.build,
                allow_dirty=allow_dirty,
                replaced_on_host=(*app.shared_files, *app.shared_dirs),
            )
            size = 0
            try:
                art = artifact_build(source, Path(work), SystemClock().now())
                size = art.size
                results.append(
                    Check("revision", True, f"{art.revision[:12]} from a clean tree ({size} bytes)")
                )
            except ReleasegateError as exc:
                results.append(Check("revision", False, exc.message))
            for part in [inv.for_host(h.name) for h in inv.hosts]:  # many hosts: each
                on = f"{part.host.name}: " if inv.many else ""
                try:
                    remote = open_remote(part, redact, rep)
                except ReleasegateError as exc:
                    results.append(Check(f"{on}host", False, exc.message))
                    continue
                try:
                    results.append(Check(f"{on}host", True, f"{remote.host_label}, key verified"))
                    deps = Deps(
                        inventory=part,
                        remote=remote,
                        reporter=rep,
                        clock=SystemClock(),
                        actor=actor(),
                        workdir=Path(work),
                        redact=redact,
                    )
                    found = flow.preflight_checks(deps, host_ops(deps), size)
                    results += [replace(c, name=f"{on}{c.name}") for c in found]
                finally:
                    remote.close()
        failed = [c for c in results if not c.ok]
        rep.table(
            f"preflight of {env} ({', '.join(h.label for h in inv.hosts)})",
            ["result", "check", "detail", "fix"],
            [["ok" if c.ok else "FAIL", c.name, c.detail, "" if c.ok else c.fix] for c in results],
        )
        if failed:
            raise PreflightFailed(
                f"preflight: {len(failed)} of {len(results)} checks failed; nothing was changed",
                evidence=tuple(c.line() for c in failed),
            )
        return 0

    return _guard(rep, run, "preflight")


def run_setup(env: str, opts: Options, *, reporter: Reporter | None = None) -> int:
    """Create the deploy root's layout (releases/, shared/, .releasegate/ 0700)."""

    def body(d: Deps) -> Outcome:
        from deploy import flow
        from deploy.deps import host_ops
        from deploy.model import Outcome

        host = host_ops(d)
        try:
            host.prepare()
        except ReleasegateError as exc:
            raise AbortedBeforeLive(
                f"could not create {host.layout.root} as {d.inventory.host.user}: {exc.message}. "
                f"Create it once as root: `mkdir -p {host.layout.root} && chown "
                f"{d.inventory.host.user}: {host.layout.root}`, then run setup again."
            ) from None
        front = flow.setup_front_door(d, host)
        outcome = Outcome(
            op="setup",
            result="ok",
            exit_code=0,
            release=None,
            live=None,
            message=f"{host.layout.root} has releases/, shared/ and .releasegate/"
            + (f"; {front}" if front else ""),
        )
        d.reporter.outcome(outcome)
        return outcome

    return _operation("setup", env, opts, body, reporter=reporter)


def sudoers_text(inv: Inventory) -> str:
    """Every sudoers line this inventory's deploys need, as files root installs (comments name
    each file); "" when no root is needed (PM2, systemd user scope, in place)."""
    from deploy import proxy
    from deploy.process.systemd import sudoers_lines

    user, app = inv.host.user, inv.app.name
    blue_green = inv.strategy.kind == "blue-green"
    parts = []
    systemd = inv.process.systemd
    if inv.process.manager == "systemd" and systemd is not None and systemd.scope == "system":
        lines = sudoers_lines(
            user=user, app=app, root=PurePosixPath(inv.host.root), slots=blue_green
        )
        what = "the systemd slots' allowlist" if blue_green else "the systemd unit's allowlist"
        parts.append(
            f"# /etc/sudoers.d/releasegate-{app} (mode 0440; check with visudo -cf): "
            f"{what} (docs/systemd.md)\n" + "\n".join(lines)
        )
    if blue_green:
        parts.append(
            "# /etc/sudoers.d/releasegate-nginx (mode 0440; check with visudo -cf): nginx -t "
            f"and its reload (docs/blue-green.md); also `usermod -aG adm {user}` for its logs\n"
            + "\n".join(proxy.sudoers_lines(user))
        )
    return "\n\n".join(parts) + "\n" if parts else ""


def run_print_sudoers(
    env: str, opts: Options, *, out: TextIO | None = None, reporter: Reporter | None = None
) -> int:
    """`setup ENV --print-sudoers`: the allowlists, from the inventory alone (nothing is
    contacted), on stdout as sudoers text."""
    rep = reporter or make_reporter(opts, Redactor())

    def run() -> int:
        from deploy import inventory

        inv = inventory.load(env, opts.inventories)
        text = sudoers_text(inv)
        if not text:
            rep.info(
                f"{inv.source}: no sudoers lines needed ({inv.process.manager}"
                + (f", systemd scope {inv.process.systemd.scope}" if inv.process.systemd else "")
                + f", {inv.strategy.kind}): deploys run as {inv.host.user} alone"
            )
            return 0
        (out or sys.stdout).write(text)
        return 0

    return _guard(rep, run)


def run_lock(env: str, opts: Options, *, message: str, reporter: Reporter | None = None) -> int:
    if not message.strip():
        return _guard(reporter or make_reporter(opts, Redactor()), _needs_message, "lock")

    def body(d: Deps) -> Outcome:
        from deploy.locking import lock_manually

        return lock_manually(d, message)

    return _operation(
        "lock", env, opts, body, reporter=reporter,
        fleet_body=lambda fl: _fleet().lock(fl, message),
    )  # fmt: skip


def _needs_message() -> int:
    raise ConfigError('lock needs --message "why": it tells others why deploys are blocked')


def run_unlock(
    env: str, opts: Options, *, force: bool, reason: str | None, reporter: Reporter | None = None
) -> int:
    def body(d: Deps) -> Outcome:
        from deploy.locking import unlock

        return unlock(d, force=force, reason=reason)

    return _operation("unlock", env, opts, body, reporter=reporter)


def run_status(
    env: str,
    opts: Options,
    *,
    reporter: Reporter | None = None,
    inv_override: Inventory | None = None,
) -> int:
    def body(d: Deps) -> int:
        from deploy.status import host_status

        d.reporter.status(host_status(d))
        return 0

    return _operation(
        "status", env, opts, body, reporter=reporter, inv_override=inv_override,
        fleet_body=lambda fl: _fleet().status(fl),
    )  # fmt: skip


def run_releases(env: str, opts: Options, *, reporter: Reporter | None = None) -> int:
    def body(d: Deps) -> int:
        from deploy import journal
        from deploy.deps import host_ops, strategy_for

        host = host_ops(d)
        state = host.read_state()
        rows = journal.release_rows(state)
        # blue/green: which release runs in which slot, and what for (live, warm, paused)
        roles = {
            r.release: f"{r.role} in {r.slot}"
            for r in strategy_for(d, host, state).roles()
            if r.release
        }
        d.reporter.table(
            f"releases of {d.inventory.app.name} on {d.inventory.host.name}",
            ["id", "revision", "state", "created", "actor", "duration", "markers"],
            [
                [
                    r.id,
                    r.revision,
                    r.state,
                    r.created,
                    r.actor,
                    f"{r.duration_s:g}s" if r.duration_s is not None else "",
                    ", ".join(
                        [
                            *(
                                m
                                for m, on in (("current", r.current), ("last good", r.last_good))
                                if on
                            ),
                            *([roles[r.id]] if r.id in roles else []),
                        ]
                    ),
                ]
                for r in rows
            ],
        )
        return 0

    return _operation("releases", env, opts, body, reporter=reporter)


def run_history(
    env: str,
    opts: Options,
    *,
    op: str | None = None,
    release: str | None = None,
    limit: int = 50,
    reporter: Reporter | None = None,
) -> int:
    def body(d: Deps) -> int:
        from deploy import journal
        from deploy.deps import host_ops

        entries = journal.history(host_ops(d).read_state(), op=op, release=release, limit=limit)
        d.reporter.table(
            f"journal of {d.inventory.host.name}:{d.inventory.host.root} (newest first)",
            ["time", "op", "release", "state", "actor", "detail"],
            [
                [e.ts, e.op, e.release or "", e.state or "", e.actor, _detail(e.detail)]
                for e in entries
            ],
        )
        return 0

    return _operation("history", env, opts, body, reporter=reporter)


def _detail(detail: dict[str, object], width: int = 100) -> str:
    text = ", ".join(
        f"{k}={v}" for k, v in detail.items() if k not in ("evidence",) and v not in (None, "")
    )
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------- trust-host


def run_trust_host(
    env: str,
    opts: Options,
    *,
    yes: bool,
    replace: bool,
    confirm: Callable[[str], bool],
    interactive: bool = True,
    reporter: Reporter | None = None,
) -> int:
    """`interactive` False (stdin is not a terminal): nobody can answer the question, so
    without `yes` the key is shown and the command stops with exit 2 and the fix."""
    redact = Redactor()
    rep = reporter or make_reporter(opts, redact)

    def run() -> int:
        locate(env, opts.inventories)
        from deploy import inventory

        inv = inventory.load(env, opts.inventories)
        return max(trust(inv, host) for host in inv.hosts)  # many hosts: each in turn

    def trust(inv: Inventory, host: inventory.HostConfig) -> int:
        import paramiko

        from deploy import host_keys, reference, ssh_config
        from deploy.remote import fingerprint

        pin_file = inv.pin_file()

        def pin_jump(jump: str, key: paramiko.PKey) -> bool:
            # a jump host is pinned only by a person who saw its fingerprint, never by --yes
            rep.warn(f"the jump host {jump} is not pinned; it presents {fingerprint(key)}")
            if not interactive or not confirm(
                f"Pin {fingerprint(key)} for the jump host {jump} in {pin_file}?"
            ):
                return False
            _append_pin(pin_file, jump, key)
            rep.info(f"pinned {key.get_name()} {fingerprint(key)} for {jump} in {pin_file}")
            return True

        # ~/.ssh/config's HostName (and ProxyJump): the host the connection reaches
        key, jumps = host_keys.host_key(
            host.address,
            host.port,
            known_hosts=inv.known_hosts_files(),
            timeout=inv.ssh.connect_timeout,
            env=env,
            pin_jump=pin_jump,
        )
        name = ssh_config.pin_name(host.address, host.port)
        via = f" (read through the jump host {' -> '.join(jumps)}, verified)" if jumps else ""
        rep.info(f"{name} presents {key.get_name()} {fingerprint(key)}{via}")
        pinned = paramiko.HostKeys()
        for path in inv.known_hosts_files():
            if path.exists():
                pinned.load(str(path))
        existing = pinned.lookup(name) or {}
        if existing.get(key.get_name()) == key:
            rep.info(f"already trusted (in {', '.join(str(p) for p in inv.known_hosts_files())})")
            return 0
        if existing and not replace:
            old = ", ".join(f"{k} {fingerprint(v)}" for k, v in existing.items())
            raise HostKeyRefused(
                f"{name} is already pinned with a different key ({old}). If the host was "
                f"rebuilt and you verified the new fingerprint out of band, run "
                f"`releasegate trust-host {env} --replace`."
            )
        if not yes and not interactive:
            raise ConfigError(
                f"not pinned: stdin is not a terminal, so nobody can confirm the key. Check "
                f"that {fingerprint(key)} is the key of {name} (ask the host's owner, or run "
                f"`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on it), then run "
                f"`releasegate trust-host {env} --yes`."
            )
        if not yes and not confirm(f"Pin {fingerprint(key)} for {name} in {pin_file}?"):
            rep.warn("not pinned")
            return 7
        _append_pin(pin_file, name, key, replace=replace)
        rep.info(f"pinned {key.get_name()} {fingerprint(key)} for {name} in {pin_file}")
        rep.info(
            f"commit {reference.shown(pin_file)} so every machine and CI verifies the same key "
            f"(a deploy refuses an uncommitted tree; `deploy --dry-run` only warns)"
        )
        return 0

    return _guard(rep, run, "trust-host")


def _append_pin(path: Path, name: str, key: paramiko.PKey, *, replace: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines() if path.exists() else []
    if replace:
        lines = [line for line in lines if line.split(" ", 1)[0] != name]
    lines.append(f"{name} {key.get_name()} {key.get_base64()}")
    path.write_text("\n".join(lines) + "\n")
