"""Inventory files (inventories/<env>.yml) → typed, validated, frozen models.

Validation is strict because every value here ends up in a remote shell or decides what runs
in production: unknown keys are errors, and each error names the file, the key path and the
fix. `inventories/example.yml` documents every key; a test keeps it valid.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deploy import reference, ssh_config
from deploy.errors import ConfigError
from deploy.inventory_files import inventory_path as inventory_path
from deploy.inventory_files import locate
from deploy.release_env import RESERVED as RESERVED_ENV
from smoke import yamlfile
from smoke.config import SmokeSettings

APP_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
ADDRESS = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z|^\[?[0-9a-fA-F:]+\]?\Z")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")
SAFE_PATH = re.compile(r"^[A-Za-z0-9._@+/-]+\Z")
REVISION = re.compile(r"^(?!-)[A-Za-z0-9._/@^~-]{1,200}\Z")
RUNTIME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# a file of the app, relative to its directory in the repository; no `..` segment
DECLARATION = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9._@+/-]{1,200}\Z")


def _abs_posix_path(value: str) -> str:
    _check_path(value, absolute=True)
    return str(PurePosixPath(value))


def _relative_to(base: str) -> AfterValidator:
    """A relative path; `base` says relative to what, in the error of an absolute one: the
    keys that take a relative path are relative to different places."""

    def check(value: str) -> str:
        _check_path(value, absolute=False, base=base)
        return str(PurePosixPath(value))

    return AfterValidator(check)


def _check_path(value: str, *, absolute: bool, base: str = "") -> None:
    if not SAFE_PATH.match(value):
        raise ValueError(
            "may only contain letters, digits and . _ @ + / - (no spaces or shell characters)"
        )
    p = PurePosixPath(value)
    if absolute and not p.is_absolute():
        raise ValueError("must be an absolute path such as /srv/shop-api")
    if not absolute and p.is_absolute():
        raise ValueError(f"must be {base}; an absolute path is refused")
    if ".." in p.parts:
        raise ValueError("must not contain '..'")
    if value.startswith("-") or any(part.startswith("-") for part in p.parts):
        raise ValueError("no path component may start with '-'")
    if absolute and p == PurePosixPath("/"):
        raise ValueError("must not be / itself: use a directory such as /srv/shop-api")


def _pattern(regex: re.Pattern[str], hint: str) -> AfterValidator:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(hint)
        return value

    return AfterValidator(check)


AbsPath = Annotated[str, AfterValidator(_abs_posix_path)]
# app.path: a directory of the repository, the part of it that is the app
RepoPath = Annotated[
    str,
    _relative_to(
        "a directory of the repository, relative to its top (app.repo), such as services/api"
    ),
]
# shared_files / shared_dirs: linked into each release from the deploy root's shared/
SharedPath = Annotated[
    str, _relative_to("relative to the deploy root's shared/ directory, such as .env or uploads")
]
# deps_*: files of the release, i.e. of the app's directory in the repository
RELEASE_DIR = "relative to the release directory (the app's directory in the repository)"
ReleasePath = Annotated[str, _relative_to(f"{RELEASE_DIR}, such as package.json")]
AppName = Annotated[
    str, _pattern(APP_NAME, "use lowercase letters, digits, '-' and '_' (max 64), e.g. shop-api")
]
UserName = Annotated[str, _pattern(USER, "use a plain Unix user name such as deploy")]
Address = Annotated[
    str, _pattern(ADDRESS, "use a hostname or an IP address, e.g. web1.example.com or 10.0.0.5")
]
HeaderName = Annotated[str, _pattern(HEADER, "use a header name such as X-Health-Token")]
EnvKey = Annotated[str, _pattern(ENV_KEY, "use an environment variable name such as API_TOKEN")]


def _not_bool(value: object) -> object:
    # YAML's `true` would otherwise pass as the number 1 (pydantic's lax int)
    if isinstance(value, bool):
        raise ValueError("must be a port number such as 3000, not true/false")
    return value


Port = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=65535)]


_HOST_DEFAULTS = ("port", "user", "root", "identity_file")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class HostConfig(Strict):
    name: AppName
    address: Address
    # port and user: the inventory's value, else ~/.ssh/config's Port/User for the address
    # (filled in by `parse`), else 22 and deploy
    port: Port = 22
    user: UserName = "deploy"
    root: AbsPath
    identity_file: str | None = None
    # The local sandbox VPS that address, port and key came from (deploy/sandbox/hosts.py).
    sandbox: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _ssh_config_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        lookup = (info.context or {}).get("ssh_config")
        if lookup is None or not isinstance(data, dict) or not isinstance(data.get("address"), str):
            return data
        route = lookup(data["address"])
        filled = dict(data)
        if "port" not in data and route.port is not None:
            filled["port"] = route.port
        if "user" not in data and route.user:
            filled["user"] = route.user
        return filled

    @property
    def label(self) -> str:
        return f"{self.name} ({self.user}@{self.address}:{self.port})"


class SshConfig(Strict):
    known_hosts: str | None = None
    connect_timeout: float = Field(10, gt=0, le=300)
    # Every remote call has a deadline: a short command (and the quick steps of one batch)
    # gets command_timeout; install, activation and the migration check have their own,
    # enforced on the host with `timeout`; an upload gets upload_timeout.
    command_timeout: float = Field(60, gt=0, le=3600)
    upload_timeout: float = Field(600, gt=0, le=86400)
    # SSH keepalive interval; a link that stops answering is dropped after ~3 of these.
    keepalive: float = Field(15, ge=1, le=300)
    # Opt-in only: pins an unknown key on first contact (TOFU). Changed keys are always refused.
    accept_unknown_hosts: bool = False


class AppConfig(Strict):
    name: AppName
    repo: str = "."
    path: RepoPath | None = None
    revision: Annotated[
        str, _pattern(REVISION, "use a branch, tag or commit such as main, v1.4.0 or HEAD")
    ] = "HEAD"
    build: str | None = None
    install: str | None = None
    shared_files: tuple[SharedPath, ...] = ()
    shared_dirs: tuple[SharedPath, ...] = ()
    keep_releases: int = Field(5, ge=2, le=100)
    # Dependencies are copied from the last good release when its dependency key is the same
    # (lockfile, manifest, install command, deps dir, runtimes' versions on the host): then
    # the install command is skipped. `deploy --clean-install` forces a fresh install.
    reuse_deps: bool = True
    deps_lockfile: ReleasePath = "package-lock.json"
    deps_manifest: ReleasePath = "package.json"
    deps_dir: ReleasePath = "node_modules"
    deps_runtimes: tuple[
        Annotated[str, _pattern(RUNTIME, "use a command name such as node or python3")], ...
    ] = ("node",)
    # The install step (or dependency reuse) runs under the host's `timeout`: past this, it is
    # stopped with everything it started and the deploy aborts (exit 5).
    install_timeout: float = Field(900, gt=0, le=86400)

    @field_validator("build", "install")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None:
            if "\n" in value or "\r" in value or "\x00" in value:
                raise ValueError("must be a single line; chain steps with && instead")
            if not value.strip():
                raise ValueError("must not be empty; remove the key to skip this step")
        return value


class SystemdConfig(Strict):
    """process.systemd: how the app's unit is installed and driven (docs/systemd.md)."""

    # system: /etc/systemd/system/<app>.service, driven with `sudo -n` limited to an exact
    # allowlist; user: ~/.config/systemd/user/<app>.service under the deploy user's own
    # manager (`systemctl --user`, needs linger). Required: the two differ in who needs root.
    scope: Literal["system", "user"]
    # system scope only: Group= of the service. User= is always the deploy user (hosts[].user):
    # the identity gate reads /proc/<MainPID>/cwd, which only the process's own user may read.
    group: UserName | None = None
    restart: Literal["always", "on-failure", "on-abnormal", "no"] = "always"
    restart_sec: float = Field(1, ge=0, le=3600)

    @model_validator(mode="after")
    def _scope_keys(self) -> SystemdConfig:
        if self.scope == "user" and self.group is not None:
            raise ValueError(
                "group: only applies to scope: system (a user unit runs as the deploy user "
                "with its own groups); remove it or use scope: system"
            )
        return self


class ProcessConfig(Strict):
    manager: Literal["pm2", "systemd"] = "pm2"
    command: str
    interpreter: str | None = None
    port: Port
    instances: int = Field(1, ge=1, le=64)
    env: dict[EnvKey, str] = Field(default_factory=dict)
    pm2: str = "pm2"
    kill_timeout_ms: int = Field(5000, ge=100, le=120000)
    # switch + reload/restart, run under the host's `timeout`
    activate_timeout: float = Field(120, gt=0, le=3600)
    systemd: SystemdConfig | None = None

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must be a single line without control characters")
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split into words ({exc})") from None
        if not argv:
            raise ValueError("must name the script to run, e.g. server.js")
        _check_path(
            argv[0],
            absolute=False,
            base=f"the script to run, {RELEASE_DIR}, such as server.js (an interpreter such "
            f"as /usr/bin/node goes in process.interpreter)",
        )
        return value

    @field_validator("pm2", "interpreter")
    @classmethod
    def _executable(cls, value: str | None) -> str | None:
        if value is not None and (not SAFE_PATH.match(value) or value[0] in "-@+"):
            raise ValueError("must be a command name or path such as pm2 or /usr/bin/node")
        return value

    @field_validator("env")
    @classmethod
    def _env_values(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if "\n" in item or "\r" in item or "\x00" in item:
                raise ValueError(f"{key}: values must be single-line strings")
            if key in RESERVED_ENV:
                raise ValueError(f"{key} is set by releasegate; remove it from process.env")
        return value

    @model_validator(mode="after")
    def _manager_keys(self) -> ProcessConfig:
        # Keys of the other manager are refused rather than ignored: a setting that silently
        # does nothing (instances: 4 under systemd) is a production surprise.
        if self.manager == "systemd":
            if self.systemd is None:
                raise ValueError(
                    "manager: systemd needs a systemd: section choosing the scope, e.g. "
                    "`systemd: {scope: system}` (sudo allowlist) or `systemd: {scope: user}` "
                    "(systemctl --user with linger); see "
                    + reference.shown(reference.doc("systemd.md"))
                )
            if self.instances != 1:
                raise ValueError(
                    f"instances: {self.instances} is PM2 cluster mode; a systemd unit runs one "
                    "main process. Remove instances (or use manager: pm2)"
                )
            if "pm2" in self.model_fields_set:
                raise ValueError("pm2: only applies to manager: pm2; remove it")
        elif self.systemd is not None:
            raise ValueError(
                "systemd: only applies to manager: systemd; remove the section or set "
                "manager: systemd"
            )
        return self

    @property
    def script(self) -> str:
        return shlex.split(self.command)[0]

    @property
    def args(self) -> tuple[str, ...]:
        return tuple(shlex.split(self.command)[1:])


# `//host/x` would be read as another host's URL by an HTTP client: one leading slash only
UrlPath = Annotated[
    str,
    _pattern(re.compile(r"^/(?!/)[A-Za-z0-9._~/-]*\Z"), "use a URL path such as /health/ready"),
]
JSON_FIELD = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")


class VersionConfig(Strict):
    """health.version: prove *which code* answers, not only that something does. The value the
    app reports (a JSON field of `path`, or a response header) must equal the release's id,
    its revision (full or short sha) or one of its commit's tags."""

    path: UrlPath = "/version"
    field: (
        Annotated[
            str, _pattern(JSON_FIELD, "use a JSON field name, dotted for nesting, e.g. build.sha")
        ]
        | None
    ) = None
    header: HeaderName | None = None
    expect: Literal["release_id", "revision", "tag"] = "release_id"

    @model_validator(mode="after")
    def _one_source(self) -> VersionConfig:
        if (self.field is None) == (self.header is None):
            raise ValueError(
                "name exactly one of field: (a JSON field of the answer, e.g. release) or "
                "header: (a response header, e.g. X-Release-Id)"
            )
        return self

    @property
    def source(self) -> str:
        return f"header {self.header}" if self.header else f"field {self.field!r}"


DEFAULT_STABLE_FOR = 5.0


class HealthConfig(Strict):
    path: UrlPath = "/health/ready"
    port: Port | None = None
    token_env: EnvKey | None = None
    token_header: HeaderName = "X-Health-Token"  # noqa: S105 (a header name, not a secret)
    deadline: float = Field(60, gt=0, le=3600)
    interval: float = Field(0.5, gt=0, le=60)
    probe_timeout: float = Field(2, gt=0, le=60)
    successes: int = Field(3, ge=1, le=100)
    max_restarts: int = Field(2, ge=0, le=100)
    # Seconds during which no instance may restart or change pid, at whose end every expected
    # instance is online; runs together with the consecutive successes, inside the deadline.
    # Unset: DEFAULT_STABLE_FOR, shortened to fit a shorter deadline (see `window`).
    stable_for: float | None = Field(None, ge=0, le=600)
    version: VersionConfig | None = None

    @property
    def window(self) -> float:
        """The stability window in seconds, as the gate runs it."""
        if self.stable_for is not None:
            return self.stable_for
        return max(0.0, min(DEFAULT_STABLE_FOR, self.deadline - self.interval))

    @model_validator(mode="after")
    def _window_fits(self) -> HealthConfig:
        if self.stable_for is not None and self.stable_for + self.interval > self.deadline:
            raise ValueError(
                f"stable_for ({self.stable_for:g}s) plus one interval ({self.interval:g}s) must "
                f"fit in deadline ({self.deadline:g}s): the stability window runs inside the "
                f"gate's deadline. Raise deadline or lower stable_for"
            )
        return self


_CLAUSE = r"(?:>=|<=|==|>|<|\^|~)?v?\d+(?:\.\d+){0,2}"
CONSTRAINT = re.compile(rf"^{_CLAUSE}(?: +{_CLAUSE})*$")


class PreflightConfig(Strict):
    """Checks run before anything changes (deploy.preflight); any failure is exit 5."""

    min_free_mb: int = Field(500, ge=0, le=10_000_000)
    runtimes: dict[
        Annotated[str, _pattern(RUNTIME, "use a command name such as node or python3")],
        Annotated[
            str, _pattern(CONSTRAINT, "use a version constraint such as '>=18' or '>=18 <23'")
        ],
    ] = Field(default_factory=dict)
    migration_check: str | None = None  # runs on the host in <root>/current; non-zero blocks
    migration_timeout: float = Field(120, gt=0, le=86400)  # host-side `timeout` for it
    required_env: tuple[EnvKey, ...] = ()  # local environment variables that must be set

    @field_validator("migration_check")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\n" in value or "\x00" in value or not value.strip()):
            raise ValueError("must be a single non-empty command line")
        return value


class MigrationsConfig(Strict):
    """Database migrations run by the deploy (deploy/migrations.py): on the host, in the new
    release's directory with that release's env snapshot, under the lock, after the ship and
    before the release takes traffic. Off unless `command` is set."""

    command: str | None = None  # e.g. `npm run -s db:migrate`; non-zero = the migration failed
    # prints the database's schema version (last line of stdout); run before and after
    schema_version_command: str | None = None
    timeout: float = Field(300, gt=0, le=86400)  # host-side `timeout` for each of them
    # the release's own declaration, a JSON file in the app's repository read at the revision
    # being deployed: {"backward_compatible": true} lets an automatic rollback cross its change
    declaration: Annotated[
        str, _pattern(DECLARATION, "use a path inside the app such as releasegate-migration.json")
    ] = "releasegate-migration.json"
    down_command: str | None = None  # shown in the choices when a rollback is refused

    @field_validator("command", "schema_version_command", "down_command")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\n" in value or "\x00" in value or not value.strip()):
            raise ValueError("must be a single non-empty command line")
        return value

    @model_validator(mode="after")
    def _needs_version(self) -> MigrationsConfig:
        if self.command is not None and self.schema_version_command is None:
            raise ValueError(
                "migrations.command needs migrations.schema_version_command: releasegate "
                "records the schema version each release ran and refuses a rollback across "
                "a change it cannot see"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.command is not None


class SecretsConfig(Strict):
    """Secrets built locally from these sources into each release's env snapshot (0600)."""

    from_env: tuple[EnvKey, ...] = ()  # local environment variables copied into the snapshot
    from_file: str | None = None  # a local KEY=VALUE file, relative to the inventory

    @property
    def enabled(self) -> bool:
        return bool(self.from_env or self.from_file)


class LockConfig(Strict):
    """The host lock of deploy/rollback: a lease its holder renews every lease/3 seconds while
    it runs. A holder that stops renewing (killed CI runner, lost machine) loses the lock
    `lease` seconds later: the next run breaks it (journaled). Manual locks never expire."""

    lease: int = Field(60, ge=3, le=86400)


NotifyEvent = Literal["promoted", "rolled-back", "rollback-failed", "aborted"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("promoted", "rolled-back", "rollback-failed", "aborted")


class WebhookConfig(Strict):
    """notify.webhooks[]: where an outcome of deploy/rollback is POSTed (deploy.notify)."""

    # The URL is a secret (a Slack webhook URL is a credential): it is read from this local
    # environment variable when the operation starts and joins the redaction filter.
    url_env: EnvKey
    format: Literal["json", "slack"] = "json"
    events: tuple[NotifyEvent, ...] = NOTIFY_EVENTS
    timeout: float = Field(5, gt=0, le=30)

    @field_validator("events")
    @classmethod
    def _some_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(
                "is empty, so this webhook would never be called; list events "
                f"({', '.join(NOTIFY_EVENTS)}) or remove the webhook"
            )
        return value


class NotifyConfig(Strict):
    """Notifications of deploy/rollback outcomes; a failed notification never fails a deploy."""

    webhooks: tuple[WebhookConfig, ...] = ()


class SlotsConfig(Strict):
    """strategy.slots: the two loopback ports a blue/green app alternates between."""

    blue: Port
    green: Port

    @model_validator(mode="after")
    def _two_ports(self) -> SlotsConfig:
        if self.blue == self.green:
            raise ValueError(
                f"blue and green are both {self.blue}: each slot needs its own port, e.g. "
                "{blue: 3001, green: 3002}"
            )
        return self


MetricName = Annotated[
    str,
    _pattern(
        re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]{0,199}\Z"),
        "use a Prometheus metric name such as http_requests_total",
    ),
]
LabelName = Annotated[
    str,
    _pattern(re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}\Z"), "use a label name such as status"),
]


class BakeMetricsConfig(Strict):
    """strategy.bake.metrics: the app's own request counter (Prometheus text), read on the new
    slot's port at the start of the bake and at each round (deploy/metrics.py)."""

    path: UrlPath = "/metrics"
    counter: MetricName = "http_requests_total"  # a counter with a status label
    status_label: LabelName = "status"
    # 5xx per request counted by the app since the bake started, above which it fails
    max_error_ratio: float = Field(0.05, ge=0, le=1)
    min_requests: int = Field(20, ge=1, le=1_000_000)  # judged early once it counted this many


class BakeConfig(Strict):
    """strategy.bake: how long the new release serves with the old one kept as backup."""

    seconds: float = Field(30, ge=0, le=3600)
    # The new slot's 5xx answers per request above which the bake fails (judged once it
    # served min_requests, and at the end of the window over whatever it served).
    max_error_ratio: float = Field(0.01, ge=0, le=1)
    min_requests: int = Field(20, ge=1, le=1_000_000)
    metrics: BakeMetricsConfig | None = None  # off unless configured


StrategyKind = Literal["in-place", "blue-green"]
_BLUE_GREEN_KEYS = ("slots", "public_port", "bake", "retire", "on_failure")


class StrategyConfig(Strict):
    """How a release starts, takes traffic and is reverted (docs/blue-green.md)."""

    # in-place: switch `current`, reload the process manager (the default).
    # blue-green: start the release in the idle slot on its own port, gate it there, switch
    # the nginx upstream, bake with the previous slot as backup, then retire or keep it warm.
    kind: StrategyKind = "in-place"
    slots: SlotsConfig | None = None
    public_port: Port = 80
    bake: BakeConfig = BakeConfig()
    retire: Literal["after-bake", "keep-warm"] = "after-bake"
    on_failure: Literal["rollback", "pause"] = "rollback"

    @model_validator(mode="after")
    def _kind_keys(self) -> StrategyConfig:
        if self.kind == "in-place":
            # Refused rather than ignored, as process.systemd under pm2 is.
            extra = [k for k in _BLUE_GREEN_KEYS if k in self.model_fields_set]
            if extra:
                verb = "applies" if len(extra) == 1 else "apply"
                raise ValueError(
                    f"{', '.join(extra)} only {verb} to kind: blue-green; remove "
                    f"{'it' if len(extra) == 1 else 'them'} or set kind: blue-green"
                )
            return self
        if self.slots is None:
            raise ValueError(
                "kind: blue-green needs slots: the two loopback ports the app alternates "
                "between, e.g. `slots: {blue: 3001, green: 3002}`"
            )
        if self.public_port in (self.slots.blue, self.slots.green):
            raise ValueError(
                f"public_port {self.public_port} is also a slot port: nginx listens on the "
                "public port and passes requests to the slots, so they must differ"
            )
        return self


class HostDefaults(Strict):
    """host_defaults: what every host of a many-host inventory shares; a host's own key wins."""

    port: Port | None = None
    user: UserName | None = None
    root: AbsPath | None = None
    identity_file: str | None = None


class RolloutConfig(Strict):
    """rollout: how a deploy to many hosts proceeds (deploy.fleet). Hosts are taken in the
    order they are listed; one host is always one batch."""

    # 1: one host at a time; N: N hosts at a time; all: every host at once
    batch: int | Literal["all"] = 1
    # hosts that may fail their gate (each rolled back alone) before the whole fleet is
    # rolled back; 0: all or nothing
    max_failed: int = Field(0, ge=0, le=1000)

    @field_validator("batch")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 1 or more hosts, or all")
        return value

    def batches(self, count: int) -> list[range]:
        """Indexes of the hosts, batch by batch, in listed order."""
        size = count if self.batch == "all" else min(int(self.batch), count)
        return [range(i, min(i + size, count)) for i in range(0, count, size)]


class Inventory(Strict):
    """One environment. `env` and `source` are filled in by `load`, not by the file."""

    env: str = ""
    source: str = ""
    host_defaults: HostDefaults = HostDefaults()
    hosts: tuple[HostConfig, ...]
    rollout: RolloutConfig = RolloutConfig()
    ssh: SshConfig = SshConfig()
    app: AppConfig
    process: ProcessConfig
    health: HealthConfig = HealthConfig()
    smoke: SmokeSettings = SmokeSettings()
    preflight: PreflightConfig = PreflightConfig()
    migrations: MigrationsConfig = MigrationsConfig()
    secrets: SecretsConfig = SecretsConfig()
    notify: NotifyConfig = NotifyConfig()
    strategy: StrategyConfig = StrategyConfig()
    lock: LockConfig = LockConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_host_defaults(cls, data: Any) -> Any:
        """host_defaults fill each host's missing keys before the hosts are validated, so an
        error still names the host (hosts[1].root) and a host's own key always wins."""
        if not isinstance(data, dict):
            return data
        defaults, hosts = data.get("host_defaults"), data.get("hosts")
        if not isinstance(defaults, dict) or not isinstance(hosts, list | tuple):
            return data
        shared = {k: v for k, v in defaults.items() if v is not None and k in _HOST_DEFAULTS}
        merged = [{**shared, **h} if isinstance(h, dict) else h for h in hosts]
        return {**data, "hosts": merged}

    @model_validator(mode="after")
    def _hosts(self) -> Inventory:
        if not self.hosts:
            raise ValueError(
                f"hosts: is empty; list the host to deploy to (see {reference.example_hint()})"
            )
        names = [h.name for h in self.hosts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"hosts: the name {', '.join(twice)} is used more than once; each host needs "
                "its own name (it labels the host in output, locks and the journal)"
            )
        places = [(h.address, h.port, h.root) for h in self.hosts]
        same = sorted({f"{a}:{p}{r}" for a, p, r in places if places.count((a, p, r)) > 1})
        if same:
            raise ValueError(
                f"hosts: {', '.join(same)} is listed more than once (same address, port and "
                "root): two entries would deploy to, and lock, the same deploy root"
            )
        return self

    def for_host(self, name: str) -> Inventory:
        """This inventory narrowed to one of its hosts: what the single-host flow runs on."""
        host = next((h for h in self.hosts if h.name == name), None)
        if host is None:
            raise ConfigError(
                f"{self.source}: no host named {name!r}; hosts: "
                f"{', '.join(h.name for h in self.hosts)}"
            )
        return self.model_copy(update={"hosts": (host,)})

    @property
    def many(self) -> bool:
        return len(self.hosts) > 1

    @model_validator(mode="after")
    def _migrations_one_host(self) -> Inventory:
        if self.migrations.enabled and len(self.hosts) > 1:
            raise ValueError(
                "migrations: cannot be used with more than one host yet: the hosts share the "
                "database, so a fleet deploy would have to migrate it once and every host's "
                "journal would have to know. Keep migrations in a one-host inventory (or run "
                "them outside releasegate) for now"
            )
        return self

    @model_validator(mode="after")
    def _strategy_available(self) -> Inventory:
        if self.strategy.kind != "blue-green":
            return self
        if self.health.port is not None:
            raise ValueError(
                f"health.port ({self.health.port}) cannot be used with strategy.kind: "
                "blue-green: each slot answers readiness on its own port (strategy.slots). "
                "Remove health.port"
            )
        if self.strategy.bake.metrics is not None and self.expected_instances > 1:
            raise ValueError(
                f"strategy.bake.metrics cannot be used with process.instances: "
                f"{self.process.instances}: each PM2 cluster worker keeps its own counters and "
                "a read reaches one of them at random, so the bake could not tell a restart "
                "from another worker. Remove strategy.bake.metrics (the access log still "
                "counts 5xx answers) or run one instance"
            )
        return self

    @property
    def host(self) -> HostConfig:
        return self.hosts[0]

    @property
    def expected_instances(self) -> int:
        """How many processes must be online for the gate: PM2's instances, systemd's one."""
        return 1 if self.process.manager == "systemd" else self.process.instances

    @property
    def health_port(self) -> int:
        return self.health.port or self.process.port

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def repo_path(self) -> Path:
        return (self.base_dir / Path(self.app.repo).expanduser()).resolve()

    def known_hosts_files(self) -> tuple[Path, ...]:
        """Keys are checked against ssh.known_hosts alone when it is set; otherwise against
        the project-local inventories/known_hosts and the user's ~/.ssh/known_hosts."""
        if self.ssh.known_hosts:
            return (self.pin_file(),)
        return (self.pin_file(), Path("~/.ssh/known_hosts").expanduser())

    def pin_file(self) -> Path:
        """Where `trust-host` pins keys."""
        if self.ssh.known_hosts:
            return (self.base_dir / Path(self.ssh.known_hosts).expanduser()).resolve()
        return self.base_dir / "known_hosts"

    def identity_path(self) -> Path | None:
        if self.host.identity_file is None:
            return None
        return (self.base_dir / Path(self.host.identity_file).expanduser()).resolve()


def load(env: str, directory: Path) -> Inventory:
    path = locate(env, directory)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8 ({reference.example_hint()} shows the expected "
            f"shape)."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot be read ({exc.strerror}); check its permissions."
        ) from None
    return parse(text, source=path, env=env)


def parse(
    text: str,
    *,
    source: Path,
    env: str,
    ssh: Callable[[str], ssh_config.Route] | None = ssh_config.lookup,
) -> Inventory:
    """`ssh`: where hosts' Port and User come from when the inventory does not set them
    (default: the user's SSH configuration; None: only the inventory's defaults)."""
    try:
        data = yamlfile.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{source}: is not valid YAML{where} ({getattr(exc, 'problem', exc)}). "
            f"Fix the syntax; {reference.example_hint()} shows the expected shape."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: must be a mapping with hosts, app, process and health sections "
            f"(see {reference.example_hint()})."
        )
    for reserved in ("env", "source"):
        if reserved in data:
            raise ConfigError(f"{source}: {reserved}: is not an inventory key; remove it.")
    from deploy.sandbox import hosts as sandbox_hosts  # reads only a local record

    data = sandbox_hosts.resolve(data, source)
    try:
        return Inventory.model_validate(
            {**data, "env": env, "source": str(source)}, context={"ssh_config": ssh}
        )
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc)) from None


def format_errors(source: Path, exc: ValidationError) -> str:
    lines = [f"{source}: invalid inventory ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        lines.append(f"  - {_key_path(err['loc'])}: {_explain(err)}")
    return "\n".join(lines)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"function-after[check(), str]", "function-after[_abs_posix_path(), str]"}:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _explain(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return (
            "unknown key; remove it or fix its spelling "
            f"({reference.example_hint()} lists every key)"
        )
    if kind == "missing":
        return f"is required; add it ({reference.example_hint()} shows an example)"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    shown = "" if isinstance(got, dict | list | tuple) or got is None else f" (got {got!r})"
    return f"{msg}{shown}"
