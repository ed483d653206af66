"""`releasegate ci github`: GitHub Actions workflows for one environment, rendered from
templates/ci/github/ into the repository's .github/workflows/.

    releasegate-<env>.yml           on push to the branch (or by hand): a deploy job in a
                                    concurrency group that is never cancelled, then a
                                    post-deploy job that runs the smoke pack and uploads JUnit
    releasegate-rollback-<env>.yml  by hand (workflow_dispatch, optional release id): rollback
    releasegate-perf-nightly-<smoke env>.yml
                                    nightly (schedule): blocking perf against the committed
                                    baseline, history in the Actions cache, an issue on failure
    releasegate-perf-pr-<smoke env>.yml
                                    on pull requests: informational perf, never fails the PR

`plan` reads the inventories and decides what the workflows need (the secrets to map, the
pinned host keys, what will not work on a runner); `render` turns the plan into file texts;
`write` refuses to overwrite a file without --force. `run_github` is the command behind both
doors (deploy.cli and tasks.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import paramiko

from deploy import install_source, inventory, ssh_config, templates
from deploy.errors import ConfigError, ReleasegateError
from deploy.inventory import HostConfig, Inventory
from deploy.model import Outcome
from deploy.operations import Options, make_reporter
from deploy.redact import Redactor
from deploy.report import Reporter
from smoke.commands import pack_paths
from smoke.secrets import ENV_REF

SSH_KEY_SECRET = "RELEASEGATE_SSH_KEY"  # noqa: S105 (the name of a secret, not one)
LOCK_WAIT = 600  # seconds a CI deploy or rollback waits for another one's lock
PYTHON = "3.12"
# deploy.model.RELEASE_ID, spelled for bash's [[ =~ ]] (POSIX ERE has no \d).
RELEASE_ID_ERE = "^[0-9]{14}-[0-9a-f]{7,40}$"
# One pip requirement (a name with a version, `name @ url`, or a path): no quotes, $, `, ;,
# |, & or newlines, and not an option.
PIP_SPEC = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9._\-\[\],=<>!~+@:/# ]{0,299}\Z")
BRANCH = re.compile(r"^(?!-)[A-Za-z0-9._/*-]{1,200}\Z")
PERF_CRON = "17 3 * * *"  # nightly, off the hour (GitHub delays runs scheduled on the hour)
PERF_ROUNDS = 3  # perf rounds per nightly run = the policy's consecutive runs
PERF_BASELINE = "perf/baseline-{env}.json"  # committed, relative to the repository root
PERF_SECTION = re.compile(r"^perf:", re.MULTILINE)


@dataclass(frozen=True)
class Actions:
    """The actions the workflows use: GitHub's own, on majors that run on Node 24 (the
    Node 20 runtime was removed from runners in September 2026). Pin them to commit SHAs
    in your copy if your policy asks for it."""

    checkout: str = "actions/checkout@v5"
    setup_python: str = "actions/setup-python@v6"
    upload_artifact: str = "actions/upload-artifact@v6"
    cache_restore: str = "actions/cache/restore@v5"
    cache_save: str = "actions/cache/save@v5"


def version() -> str:
    try:
        return metadata.version("releasegate")
    except metadata.PackageNotFoundError:
        return "dev"


@dataclass(frozen=True)
class Settings:
    """Everything the templates need; every value is validated before it gets here."""

    env: str
    smoke_env: str
    branch: str
    install: str  # the pip requirement the runner installs (deploy.install_source)
    inventories: str  # relative to the repository root
    known_hosts: str  # the deploy environment's pinned host keys, relative to the root
    smoke_known_hosts: str
    pin_name: str  # the host's name in known_hosts: `address`, or `[address]:port`
    smoke_pin_name: str
    deploy_vars: tuple[str, ...]  # environment variables the deploy/rollback reads (secrets)
    smoke_vars: tuple[str, ...]
    smoke_ssh: bool  # the smoke job tunnels over SSH (no smoke.base_url)
    build: bool  # app.build runs on the runner
    version: str = "dev"
    install_origin: str = "as given with --install"
    python: str = PYTHON
    lock_wait: int = LOCK_WAIT
    ssh_key_secret: str = SSH_KEY_SECRET
    release_pattern: str = RELEASE_ID_ERE
    actions: Actions = field(default_factory=Actions)
    perf_cron: str = PERF_CRON
    perf_rounds: int = PERF_ROUNDS
    perf_baseline: str = ""  # relative to the repository root; PERF_BASELINE when empty

    def __post_init__(self) -> None:
        if not self.perf_baseline:
            object.__setattr__(self, "perf_baseline", PERF_BASELINE.format(env=self.smoke_env))

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.ssh_key_secret, *self.deploy_vars, *self.smoke_vars)))

    @property
    def perf_secrets(self) -> tuple[str, ...]:
        key = (self.ssh_key_secret,) if self.smoke_ssh else ()
        return tuple(dict.fromkeys((*key, *self.smoke_vars)))


@dataclass(frozen=True)
class Plan:
    settings: Settings
    notes: tuple[str, ...] = field(default=())  # what the user must do or know


def file_names(env: str) -> tuple[str, str]:
    return f"releasegate-{env}.yml", f"releasegate-rollback-{env}.yml"


def perf_file_names(smoke_env: str) -> tuple[str, str]:
    return f"releasegate-perf-nightly-{smoke_env}.yml", f"releasegate-perf-pr-{smoke_env}.yml"


# ---------------------------------------------------------------------------- deciding


def variables(inv: Inventory, *, deploy: bool) -> tuple[str, ...]:
    """Environment variables the operation reads on the runner, each mapped from a secret
    of the same name: tokens, secrets.from_env, required_env, webhook URLs, and the
    `${ENV:NAME}` references of the smoke packs."""
    names: list[str] = []
    if inv.health.token_env:
        names.append(inv.health.token_env)
    audit = inv.smoke.audit
    if audit.enabled:
        names += [n for n in (audit.ready_token_env, audit.metrics_token_env) if n]
    for path in pack_paths(inv.smoke, inv.base_dir):
        if path.is_file():
            names += ENV_REF.findall(path.read_text(encoding="utf-8"))
    if deploy:
        names += inv.secrets.from_env
        names += inv.preflight.required_env
        names += [w.url_env for w in inv.notify.webhooks]
    return tuple(dict.fromkeys(names))


def _relative(path: Path, root: Path, what: str, fix: str) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ConfigError(
            f"{what} {path} is outside the repository {root}; the workflow only has this "
            f"repository's checkout. {fix}"
        ) from None


def _pin_names(inv: Inventory) -> str:
    """Every host's name in known_hosts, space-separated (the workflow checks each)."""
    return " ".join(ssh_config.pin_name(h.address, h.port) for h in inv.hosts)


def _pinned(pin_file: Path, inv: Inventory, host: HostConfig) -> bool:
    if not pin_file.is_file():
        return False
    keys = paramiko.HostKeys()
    try:
        keys.load(str(pin_file))
    except (OSError, paramiko.SSHException):
        return False
    return keys.lookup(ssh_config.pin_name(host.address, host.port)) is not None


def _environment_notes(inv: Inventory, root: Path) -> list[str]:
    src = inv.source
    notes = []
    for index, host in enumerate(inv.hosts):  # many hosts: each
        if not _pinned(inv.pin_file(), inv, host):
            notes.append(
                f"{inv.pin_file()} pins no key for "
                f"{ssh_config.pin_name(host.address, host.port)}: run `releasegate trust-host "
                f"{inv.env}` and commit the file, or the workflow stops before connecting"
            )
        if host.identity_file:
            notes.append(
                f"{src}: hosts[{index}].identity_file is set, but on the runner the key comes "
                f"from ssh-agent (secret {SSH_KEY_SECRET}) and that file will not exist; remove "
                f"it (ssh-agent and ~/.ssh/config are used when it is unset)"
            )
    if inv.ssh.accept_unknown_hosts:
        notes.append(
            f"{src}: ssh.accept_unknown_hosts is true: a runner would pin an unverified key "
            f"on every run (it starts with none); set it to false and commit the pinned key"
        )
    if inv.secrets.from_file:
        notes.append(
            f"{src}: secrets.from_file ({inv.secrets.from_file}) is not in the repository "
            f"checkout; in CI use secrets.from_env with repository secrets"
        )
    try:
        inv.repo_path().relative_to(root.resolve())
    except ValueError:
        notes.append(
            f"{src}: app.repo is {inv.repo_path()}, outside this repository; in CI only "
            f"this repository is checked out"
        )
    return notes


def plan(
    env: str,
    *,
    smoke_env: str | None,
    inventories: Path,
    root: Path,
    branch: str,
    install: str,
) -> Plan:
    """Read the inventories and decide the workflows' settings; ConfigError (exit 2) when
    they cannot work from this repository."""
    if not BRANCH.match(branch):
        raise ConfigError(
            f"--branch {branch!r} is not a branch name or pattern (letters, digits, . _ / * -)"
        )
    if not PIP_SPEC.match(install):
        raise ConfigError(
            f"--install {install!r} is not `git` or a pip requirement such as "
            f"'releasegate @ git+https://github.com/you/releasegate@v0.1.0' or "
            f"./ci/releasegate-0.1.0-py3-none-any.whl (no quotes, $, `, ; | & or newlines)"
        )
    inv = inventory.load(env, inventories)
    smoke_inv = inv if smoke_env in (None, env) else inventory.load(str(smoke_env), inventories)
    rel_inventories = _relative(
        inventories, root, "the inventories directory", "Run from the repository that holds it."
    )
    fix = "Keep the pinned host keys in the repository (ssh.known_hosts)."
    known_hosts = _relative(inv.pin_file(), root, "the known_hosts file", fix)
    smoke_known_hosts = _relative(smoke_inv.pin_file(), root, "the known_hosts file", fix)
    source = install_source.decide(install, root=root)
    notes = [*source.warnings, *_environment_notes(inv, root)]
    smoke_ssh = smoke_inv.smoke.base_url is None
    if smoke_inv is not inv and smoke_ssh:
        notes += _environment_notes(smoke_inv, root)[:1]
    if inv.app.build:
        notes.append(
            f"app.build ({inv.app.build}) runs on the runner: add the toolchain it needs "
            f"(e.g. actions/setup-node) before the Deploy step"
        )
    if not smoke_inv.smoke.packs and not smoke_inv.smoke.audit.enabled:
        notes.append(
            f"{smoke_inv.source}: smoke.packs is empty and the audit is off, so the "
            f"post-deploy smoke job has nothing to run (exit 2); add a pack"
        )
    perf_packs = [
        p
        for p in pack_paths(smoke_inv.smoke, smoke_inv.base_dir)
        if p.is_file() and PERF_SECTION.search(p.read_text(encoding="utf-8"))
    ]
    if not perf_packs:
        notes.append(
            f"{smoke_inv.source}: none of smoke.packs has a perf: section, so the perf "
            f"workflows have nothing to measure (exit 2); name the hot endpoints in a pack "
            f"(docs/smoke.md, 'Perf thresholds') or delete the two perf workflows"
        )
    baseline = PERF_BASELINE.format(env=smoke_inv.env)
    if perf_packs and not (root / baseline).is_file():
        notes.append(
            f"the perf workflows compare with {baseline}, which is not in the repository yet: "
            f"save it with `releasegate perf {smoke_inv.env} --save-baseline {baseline}` (see "
            f"docs/ci.md, 'The performance workflows') and commit it; until then the nightly "
            f"checks the thresholds only"
        )
    deploy_vars = variables(inv, deploy=True)
    smoke_vars = variables(smoke_inv, deploy=False)
    for name in (*deploy_vars, *smoke_vars):
        if name.upper().startswith("GITHUB_"):
            notes.append(
                f"{name}: GitHub refuses secret names starting with GITHUB_; rename the "
                f"variable in the inventory"
            )
    settings = Settings(
        env=inv.env,
        smoke_env=smoke_inv.env,
        branch=branch,
        install=source.spec,
        install_origin=source.origin,
        inventories=rel_inventories,
        known_hosts=known_hosts,
        smoke_known_hosts=smoke_known_hosts,
        pin_name=_pin_names(inv),
        smoke_pin_name=_pin_names(smoke_inv),
        deploy_vars=deploy_vars,
        smoke_vars=smoke_vars,
        smoke_ssh=smoke_ssh,
        build=inv.app.build is not None,
        version=version(),
    )
    return Plan(settings=settings, notes=tuple(dict.fromkeys(notes)))


def _gh(expression: str) -> str:
    return "${{ " + expression + " }}"


def _quote(value: object) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(str(value), ensure_ascii=False)


def render(settings: Settings) -> dict[str, str]:
    """File name → workflow text."""
    deploy_name, rollback_name = file_names(settings.env)
    nightly_name, pr_name = perf_file_names(settings.smoke_env)
    values = {"s": settings, "gh": _gh, "q": _quote}
    return {
        deploy_name: templates.render("ci/github/deploy.yml.j2", **values),
        rollback_name: templates.render("ci/github/rollback.yml.j2", **values),
        nightly_name: templates.render("ci/github/perf-nightly.yml.j2", **values),
        pr_name: templates.render("ci/github/perf-pr.yml.j2", **values),
    }


# ---------------------------------------------------------------------------- doing


def write(files: dict[str, str], directory: Path, *, force: bool) -> list[Path]:
    """Write every file, or none: existing files are refused unless force."""
    paths = [directory / name for name in files]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"{', '.join(str(p) for p in existing)} already exist(s); nothing was written. "
            f"Pass --force to overwrite (then review the change with `git diff`)."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in zip(paths, files.values(), strict=True):
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"could not write the workflows into {directory}: {exc}") from None
    return paths


def repository_root(cwd: Path) -> Path:
    """The git work tree holding cwd (GitHub reads .github/workflows there), else cwd."""
    res = subprocess.run(
        ["git", "-C", str(cwd), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    return Path(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip() else cwd


def run_github(
    opts: Options,
    *,
    env: str,
    smoke_env: str | None = None,
    directory: Path | None = None,
    force: bool = False,
    branch: str = "main",
    install: str | None = None,
    reporter: Reporter | None = None,
    cwd: Path | None = None,
) -> int:
    """`releasegate ci github`: plan, render and write the workflows; report what the user
    must still do (secrets to add, keys to pin). Returns the exit code (0, or 2)."""
    reporter = reporter or make_reporter(opts, Redactor())
    here = (cwd or Path.cwd()).resolve()
    root = repository_root(here)
    target = (here / (directory or Path(".github/workflows"))).resolve()
    try:
        decided = plan(
            env,
            smoke_env=smoke_env,
            inventories=here / opts.inventories,
            root=root,
            branch=branch,
            install=install or install_source.GIT,
        )
        paths = write(render(decided.settings), target, force=force)
    except ReleasegateError as exc:
        reporter.error(exc.message, exc.evidence, exit_code=exc.exit_code)
        reporter.finish("ci", exc.exit_code)
        return exc.exit_code
    s = decided.settings
    for path in paths:
        reporter.info(f"wrote {path}")
    if target != (root / ".github" / "workflows").resolve():
        reporter.warn(
            f"GitHub only runs workflows from {root / '.github' / 'workflows'}; move the files "
            f"there (or run from the repository root without --dir)"
        )
    for note in decided.notes:
        reporter.warn(note)
    reporter.info(
        f"the workflows install {s.install} ({s.install_origin}; choose another source "
        f"with --install)"
    )
    outcome = Outcome(
        op="ci",
        result="ok",
        exit_code=0,
        release=None,
        live=None,
        message=(
            f"wrote {len(paths)} workflows for {s.env} into {target}; add these repository "
            f"(or environment {s.env}) secrets, then commit and push"
        ),
        evidence=tuple(
            f"{name}: "
            + (
                "the deploy user's private SSH key (e.g. the contents of ~/.ssh/id_ed25519)"
                if name == s.ssh_key_secret
                else "the value of the environment variable the inventory names"
            )
            for name in s.secrets
        ),
    )
    reporter.outcome(outcome)
    reporter.finish("ci", 0)
    return 0
