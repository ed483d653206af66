"""`releasegate demo`: the whole promise in one run against the local sandbox.

Boots the sandbox, prepares its front door (the upstream file with `releasegate setup`, the
nginx site config as root, as an operator does once) and an empty PostgreSQL database for the
sample app (its URL a secret; every deploy runs the release's migrations before it starts),
deploys the sample app blue/green (inventories/local.yml), then, under a steady load through
nginx (a new connection per request, as users arrive): a good release with a migration
(migrated, then promoted), a release that crashes at boot and one
that is ready but breaks its API contract (both rejected before any user meets them), each
with the number of requests that failed while it happened. Then status.
The sample app is copied into a throwaway git repository so each release is a real commit.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

from deploy import inventory, operations, proxy, reference, sandbox
from deploy.errors import ConfigError, ReleasegateError
from deploy.inventory import Inventory
from deploy.model import Layout
from deploy.operations import Options
from deploy.redact import Redactor
from deploy.report import Reporter
from deploy.traffic import Hit, Load, Tally

GIT_ENV = {
    "GIT_AUTHOR_NAME": "releasegate demo",
    "GIT_AUTHOR_EMAIL": "demo@releasegate.invalid",
    "GIT_COMMITTER_NAME": "releasegate demo",
    "GIT_COMMITTER_EMAIL": "demo@releasegate.invalid",
}
# The users of the demo: requests per second through nginx, each on a new connection.
RATE = 25.0
# Answers in a row from the expected release that count as "it serves" after a step.
SETTLE = 10


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
    )


def make_app_repo(into: Path) -> Path:
    """A throwaway git repository holding the sample app (from the checkout, or the copy
    installed with releasegate), its first commit the healthy release."""
    app = reference.sample_app()
    if not (app / "package.json").is_file():
        raise ConfigError(
            f"the sample app the demo deploys is not at {app}: this releasegate installation "
            f"is incomplete. Reinstall it (`pip install --force-reinstall releasegate`), or run "
            f"the demo from a checkout of the repository."
        )
    repo = into / "sampleapp"
    shutil.copytree(
        app,
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
DATABASE_URL = "DATABASE_URL"
DEMO_DB = "sampleapp"  # the demo's database and role on the sandbox's PostgreSQL
# A fresh database for each demo (the role's password is new each time too); SQL on stdin.
DATABASE_SQL = """\
SELECT 'CREATE ROLE {db} LOGIN' WHERE NOT EXISTS
  (SELECT FROM pg_roles WHERE rolname = '{db}')\\gexec
ALTER ROLE {db} PASSWORD '{password}';
DROP DATABASE IF EXISTS {db} WITH (FORCE);
CREATE DATABASE {db} OWNER {db};
"""


class FrontDoorError(Exception):
    """The sandbox's nginx could not be given the app's site."""


def install_site(info: sandbox.SandboxInfo, inv: Inventory) -> str:
    """As root on the sandbox, what docs/blue-green.md asks an operator to do once: install
    the site config releasegate renders (it includes the upstream file `releasegate setup`
    wrote), check it, reload nginx. Returns the site's path."""
    paths = proxy.proxy_paths(Layout(PurePosixPath(inv.host.root)), inv.app.name)
    site = proxy.site_config(paths, public_port=inv.strategy.public_port)
    target = shlex.quote(str(paths.site))
    command = (
        f"cat > {target}.tmp && chmod 0644 {target}.tmp && mv -f {target}.tmp {target} && "
        "nginx -t -q && systemctl reload nginx"
    )
    res = subprocess.run(
        info.ssh_argv(command, user="root"),
        input=site,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if res.returncode != 0:
        raise FrontDoorError(
            f"could not install {paths.site} on the sandbox: {res.stderr.strip() or res.stdout}"
        )
    return str(paths.site)


def prepare_database(info: sandbox.SandboxInfo) -> str:
    """As root on the sandbox: an empty database and its role for the sample app (the
    sandbox's systemd runs PostgreSQL). Returns the DATABASE_URL the app gets as a secret."""
    password = secrets.token_hex(16)
    res = subprocess.run(
        info.ssh_argv(
            "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres", user="root"
        ),
        input=DATABASE_SQL.format(db=DEMO_DB, password=password),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if res.returncode != 0:
        raise FrontDoorError(
            f"could not prepare the sample app's database on the sandbox: "
            f"{res.stderr.strip() or res.stdout.strip()}"
        )
    return f"postgres://{DEMO_DB}:{password}@127.0.0.1:5432/{DEMO_DB}"


# The demo's second release adds a column: the first release ignores it, so the change is
# declared backward compatible (releasegate-migration.json) and a rollback may cross it.
MIGRATION_2 = {
    "db/migrations/002_note_author.sql": "ALTER TABLE notes ADD COLUMN author text;\n",
    "db/migrations/002_note_author.down.sql": "ALTER TABLE notes DROP COLUMN author;\n",
    "releasegate-migration.json": '{"backward_compatible": true}\n',
}


@dataclass(frozen=True)
class Step:
    """One deploy of the demo and what users saw meanwhile."""

    what: str
    code: int
    expected: int
    commit: str  # the short sha of the release this deploy shipped (its id ends with it)
    serving: str | None  # the release that answered at the end (None: no single one)
    settled: bool  # the release that should serve now (new if promoted, else previous) does
    tally: Tally

    @property
    def rejected(self) -> bool:
        return self.expected != 0

    @property
    def bad_answers(self) -> int:
        """Successful answers that came from the release this deploy shipped."""
        return sum(n for rid, n in self.tally.by_release.items() if _of(rid, self.commit))

    @property
    def held(self) -> bool:
        """Exit code as promised, no failed request, the right release serving, and a
        rejected release never answered anyone."""
        return (
            self.code == self.expected
            and self.tally.failed == 0
            and self.settled
            and not (self.rejected and self.bad_answers)
        )

    def row(self) -> list[str]:
        outcome = {0: "promoted", 3: "rejected, previous serves"}.get(
            self.code, f"exit {self.code}"
        )
        return [
            self.what,
            str(self.code),
            str(self.tally.requests),
            str(self.tally.failed),
            str(self.bad_answers) if self.rejected else "-",
            outcome,
        ]


def _of(release: str | None, commit: str) -> bool:
    return bool(release) and str(release).endswith(f"-{commit}")


def _head(repo: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short=7", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _serving(hits: list[Hit]) -> str | None:
    """The release of the last SETTLE answers, if they all came from one release."""
    last = hits[-SETTLE:]
    releases = {h.release for h in last if h.ok}
    if len(last) == SETTLE and all(h.ok for h in last) and len(releases) == 1:
        return releases.pop()
    return None


def demo_inventory(source: Path, info: sandbox.SandboxInfo, repo: Path, into: Path) -> Path:
    """inventories/local.yml as the demo deploys it: the booted sandbox's address and keys,
    the throwaway repository, pack paths made absolute (the copy lives elsewhere), and a
    short readiness deadline. Returns the directory holding the copy (as `local.yml`)."""
    data = yaml.safe_load(source.read_text())
    host = data["hosts"][0]
    host.pop("sandbox", None)  # the booted sandbox is named by its address here
    host["address"] = info.address
    host["port"] = info.port
    host["identity_file"] = str(info.identity_file)
    data.setdefault("ssh", {})["known_hosts"] = str(info.known_hosts)
    data["app"]["repo"] = str(repo)
    data["app"].pop("path", None)
    smoke = data.get("smoke") or {}
    smoke["packs"] = [_pack(pack, source, repo) for pack in smoke.get("packs", [])]
    data.setdefault("health", {})["deadline"] = 8.0
    # the sample app's real database on the sandbox's PostgreSQL (prepare_database): its URL
    # travels as a secret, and each deploy runs the release's migrations before it starts
    secrets_cfg = data.setdefault("secrets", {})
    secrets_cfg["from_env"] = [*secrets_cfg.get("from_env", []), DATABASE_URL]
    data["migrations"] = {
        "command": "node db/migrate.js up",
        "schema_version_command": "node db/migrate.js version",
        "down_command": "node db/migrate.js down",
        "timeout": 60,
    }
    into.mkdir(parents=True, exist_ok=True)
    (into / "local.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return into


def _pack(pack: str, source: Path, repo: Path) -> str:
    """A pack path of local.yml, made absolute. Installed from a wheel, local.yml's
    `../examples/sampleapp/smoke.yml` has no checkout around it: the sample app's own pack is
    taken from the app (the repository copies it)."""
    beside = source.parent / pack
    if beside.is_file():
        return str(beside.resolve())
    shipped = repo / Path(pack).name
    if Path(pack).parent.name == "sampleapp" and shipped.is_file():
        return str(shipped)
    return pack


def local_inventory(directory: Path) -> Path:
    """The project's inventories/local.yml when it has one, else the one installed with
    releasegate (the sandbox environment the demo is written for)."""
    own = inventory.inventory_path("local", directory)
    return own if own.is_file() else reference.demo_inventory()


def _unbooted(spec: sandbox.SandboxSpec) -> sandbox.SandboxInfo:
    """Where the sandbox will be, as far as an inventory check needs to know before booting."""
    state_dir = spec.state_root / spec.name
    return sandbox.SandboxInfo(
        name=spec.name,
        address="127.0.0.1",
        port=22,
        user=spec.user,
        identity_file=state_dir / "id_ed25519",
        known_hosts=state_dir / "known_hosts",
        pid1=0,
        state_dir=state_dir,
    )


def run(
    opts: Options, spec: sandbox.SandboxSpec | None = None, provider: str | None = None
) -> int:
    spec = spec or sandbox.SandboxSpec()
    redact = Redactor()
    for name in DEMO_SECRETS:
        # Throwaway values for the sandbox only; never printed (they seed the redaction filter).
        if not os.environ.get(name):
            os.environ[name] = secrets.token_urlsafe(24)
        redact.add(os.environ[name])
    reporter = operations.make_reporter(opts, redact)
    with tempfile.TemporaryDirectory(prefix="releasegate-demo-") as tmp:
        try:
            # The app and a broken local.yml are found before booting: checked as the demo
            # will deploy them.
            source = local_inventory(opts.inventories)
            repo = make_app_repo(Path(tmp))
            reporter.info(
                f"sample app {reference.shown(reference.sample_app())}, environment "
                f"{reference.shown(source)}"
            )
            inventory.load("local", demo_inventory(source, _unbooted(spec), repo, Path(tmp) / "c"))
            with reporter.stage("sandbox up"):
                info = sandbox.up(spec, log=reporter.info, provider_name=provider)
                reporter.info(
                    f"sandbox ({info.provider}) at {info.user}@{info.address}:{info.port}"
                )
            with reporter.stage("database: an empty PostgreSQL database for the sample app"):
                os.environ[DATABASE_URL] = prepare_database(info)
                redact.add(os.environ[DATABASE_URL], urlsplit(os.environ[DATABASE_URL]).password)
            here = demo_inventory(source, info, repo, Path(tmp) / "inv")
            opts = dataclasses.replace(opts, inventories=here)
            inv = inventory.load("local", here)
            with reporter.stage("front door: upstream file and nginx site"):
                code = operations.run_setup("local", opts, reporter=reporter)
                if code != 0:
                    return code
                reporter.info(f"nginx serves {install_site(info, inv)}")
        except (ReleasegateError, sandbox.SandboxError, FrontDoorError) as exc:
            reporter.error(str(exc))
            return getattr(exc, "exit_code", 2)
        steps = _deploys(opts, reporter, inv, info, repo)
        operations.run_status("local", opts, reporter=reporter)
    return _verdict(reporter, inv, info, steps, default=spec == sandbox.SandboxSpec())


def _settled_on(hits: list[Hit], release: str) -> bool:
    """`release` (a full id, or a commit's short sha) answers the last SETTLE requests."""
    serving = _serving(hits)
    return serving is not None and (serving == release or _of(serving, release))


def _deploys(
    opts: Options, reporter: Reporter, inv: Inventory, info: sandbox.SandboxInfo, repo: Path
) -> list[Step]:
    def deploy() -> int:
        return operations.run_deploy("local", opts, reporter=reporter)

    front = (info.service_address, inv.strategy.public_port)
    url = f"http://{front[0]}:{front[1]}/version"
    reporter.info(f"1/4 deploying a healthy release: the first, nothing serves {url} yet")
    first = _head(repo)
    code = deploy()
    if code != 0:
        return [Step("first deploy", code, 0, first, None, False, Tally(0, 0, {}))]
    plan = [
        (
            "a good release",
            "",
            0,
            "a good release with a migration (schema 1 → 2, declared backward compatible): "
            "expect it migrated before it starts, then promoted",
        ),
        ("boot_crash", "boot_crash", 3, "a release that crashes at boot: expect it rejected"),
        (
            "wrong_contract",
            "wrong_contract",
            3,
            "a release that is ready but breaks the API contract (the smoke pack fails): "
            "expect it rejected",
        ),
    ]
    reporter.info(
        f"from now on, users: {RATE:g} requests per second through nginx to {url}, each on a "
        "new connection"
    )
    steps: list[Step] = []
    with Load(*front, "/version", rate=RATE, max_seconds=300, timeout=2.0) as load:
        if not load.wait_for(functools.partial(_settled_on, release=first), deadline=15):
            reporter.warn(f"the first release ({first}) does not answer through nginx yet")
        live = _serving(load.hits())
        for n, (what, fault, expected, say) in enumerate(plan, start=2):
            if n == 2:
                for rel, text in MIGRATION_2.items():
                    (repo / rel).write_text(text)
            commit_fault(repo, fault)
            commit = _head(repo)
            reporter.info(f"{n}/4 deploying {say}")
            began = time.monotonic()
            code = deploy()
            want = commit if code == 0 else (live or "")
            settled = load.wait_for(functools.partial(_settled_on, release=want), deadline=15)
            window = [h for h in load.hits() if h.sent >= began]
            serving = _serving(load.hits())
            step = Step(what, code, expected, commit, serving, settled, Tally.of(window))
            steps.append(step)
            bad = f", {step.bad_answers} answered by the new release" if step.rejected else ""
            reporter.info(
                f"   users sent {step.tally.requests} requests meanwhile: {step.tally.failed} "
                f"failed{bad}; {serving or 'no single release'} serves"
            )
            if code == 0:
                live = serving
    return steps


def _verdict(
    reporter: Reporter,
    inv: Inventory,
    info: sandbox.SandboxInfo,
    steps: list[Step],
    *,
    default: bool,
) -> int:
    if len(steps) < 3:
        first = steps[0] if steps else None
        reporter.error(f"demo failed: the first deploy exited {first.code if first else '?'}")
        return 1
    reporter.table(
        f"blue/green under {RATE:g} requests/s through nginx (new connection per request)",
        ["deploy", "exit", "requests", "failed", "answered by the bad release", "outcome"],
        [step.row() for step in steps],
    )
    if all(step.held for step in steps):
        explore = (
            "Explore with `releasegate status local`, or `curl "
            f"http://{info.service_address}:{inv.strategy.public_port}/version`; stop the "
            "sandbox with `releasegate sandbox down`."
            if default
            else f"The sandbox {info.name} keeps running at {info.address}."
        )
        reporter.info(
            "demo passed: every release was gated on its own port before nginx sent it a "
            "single request; the good one took over with no failed request, the two bad ones "
            "never served anyone and the previous release kept serving. " + explore
        )
        return 0
    broken = [
        f"{s.what}: exit {s.code} (want {s.expected}), {s.tally.failed} failed requests"
        for s in steps
        if not s.held
    ]
    reporter.error("demo failed: " + "; ".join(broken))
    return 1
