"""`releasegate init`: start a project — a commented inventory written from the same source as
inventories/example.yml (every key stays documented), a starter smoke pack for the app's health
endpoint, and .gitignore lines for what must stay local. Never overwrites a file; asks nothing
when stdin is not a terminal (the defaults below, or the options given)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy import inventory, reference
from deploy.errors import ConfigError
from deploy.model import Outcome
from deploy.operations import Options, make_reporter
from deploy.redact import Redactor
from deploy.report import Reporter

GITIGNORE = (
    "# releasegate: local secrets files and reports stay out of git "
    "(commit inventories/ and its known_hosts)",
    "/secrets/",
    "/reports/",
)
APP_NAME = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True)
class Answers:
    address: str = "web1.example.com"
    app: str = "app"
    port: int = 3000
    health: str = "/health/ready"


@dataclass(frozen=True)
class Written:
    inventory: Path
    pack: Path
    gitignore: Path | None  # None: its lines were already there


def default_app(cwd: Path) -> str:
    name = APP_NAME.sub("-", cwd.name.lower()).strip("-_")
    return name if name and name[0].isalnum() else "app"


def ask(answers: Answers, prompt: Callable[[str, object], object]) -> Answers:
    """On a terminal: each value, with the given one as the default."""
    return Answers(
        address=str(prompt("Host (address or ~/.ssh/config alias)", answers.address)),
        app=str(prompt("App name (PM2 process / systemd unit)", answers.app)),
        port=int(str(prompt("Port the app listens on (127.0.0.1)", answers.port))),
        health=str(prompt("Health endpoint path", answers.health)),
    )


def inventory_text(env: str, a: Answers) -> str:
    """example.yml with this project's values on its lines; every comment kept."""
    text = reference.example_inventory().read_text(encoding="utf-8")
    body = text[text.index("\nhosts:") + 1 :]
    head = (
        f"# inventories/{env}.yml — written by `releasegate init` from releasegate's reference\n"
        f"# inventory; every key is documented below. Fill in the host, check the rest, then:\n"
        f"#   releasegate trust-host {env}    (pin the host key; commit inventories/known_hosts)\n"
        f"#   releasegate preflight {env}\n"
        f"#   releasegate deploy {env} --dry-run\n\n"
    )
    for key, old, new in (
        ("address", "web1.example.com", a.address),
        ("root", "/srv/shop-api", f"/srv/{a.app}"),
        ("name", "shop-api", a.app),
        ("port", "3000", str(a.port)),
        ("path", "/health/ready", a.health),
        ("packs", "[]", "[../smoke/health.yml]"),
    ):
        body = _set(body, key, old, new)
    return head + body


def _set(text: str, key: str, old: str, new: str) -> str:
    """Replace the value of the first `key: old` line, keeping its comment in its column."""
    line = re.compile(rf"^(\s*(?:- )?{re.escape(key)}: ){re.escape(old)}( *)(#.*)?$", re.M)
    found = line.search(text)
    if found is None:
        raise ConfigError(f"releasegate's example.yml has no `{key}: {old}` line; reinstall")
    pad = " " * max(1, len(old) + len(found.group(2)) - len(new))
    comment = found.group(3) or ""
    replaced = found.group(1) + new + (pad + comment if comment else "")
    return text[: found.start()] + replaced + text[found.end() :]


def pack_text(a: Answers) -> str:
    return (
        "# A starter contract smoke pack, written by `releasegate init`: it runs after readiness\n"
        "# in every deploy and rollback, and standalone (`releasegate smoke ENV`). Add the\n"
        "# checks your clients depend on (status, headers, body, JSON Schema, latency):\n"
        "# the format is in docs/smoke.md.\n"
        "version: 1\n"
        f"name: {a.app}-health\n"
        "checks:\n"
        "  - name: health\n"
        f"    request: {{path: {a.health}}}\n"
        "    expect:\n"
        "      status: 2xx\n"
        "      latency_ms: 1000\n"
    )


def write(env: str, inventories: Path, root: Path, answers: Answers) -> Written:
    """Write everything or nothing: an existing file is never overwritten (exit 2)."""
    inventory.inventory_path(env, inventories)  # validates the name (exit 2)
    if not inventory.ADDRESS.match(answers.address):
        raise ConfigError(f"host {answers.address!r} is not a hostname, IP address or alias")
    if not inventory.APP_NAME.match(answers.app):
        raise ConfigError(
            f"app name {answers.app!r}: use lowercase letters, digits, '-' or '_' (--app NAME)"
        )
    if not 1 <= answers.port <= 65535 or not answers.health.startswith("/"):
        raise ConfigError("--port must be 1-65535 and --health a path starting with /")
    inv_path = inventories / f"{env}.yml"
    pack_path = inventories.parent / "smoke" / "health.yml"
    existing = [p for p in (inv_path, pack_path) if p.exists()]
    if existing:
        raise ConfigError(
            f"{', '.join(str(p) for p in existing)} already exist(s); releasegate init never "
            f"overwrites a file, and wrote nothing. Edit the file, remove it, or start another "
            f"environment (`releasegate init staging`)."
        )
    inv_text = inventory_text(env, answers)
    inventory.parse(inv_text, source=inv_path, env=env)  # what we write is a valid inventory
    inv_path.parent.mkdir(parents=True, exist_ok=True)
    pack_path.parent.mkdir(parents=True, exist_ok=True)
    inv_path.write_text(inv_text, encoding="utf-8")
    pack_path.write_text(pack_text(answers), encoding="utf-8")
    return Written(inventory=inv_path, pack=pack_path, gitignore=_gitignore(root / ".gitignore"))


def _gitignore(path: Path) -> Path | None:
    """Add the lines that are missing (the file is kept, never replaced)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    have = text.splitlines()
    if all(line in have for line in GITIGNORE if not line.startswith("#")):
        return None
    missing = [line for line in GITIGNORE if line not in have]
    sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
    path.write_text(text + sep + "\n".join(missing) + "\n", encoding="utf-8")
    return path


def run(
    opts: Options,
    env: str,
    *,
    given: Answers,
    prompt: Callable[[str, object], object] | None,
    cwd: Path | None = None,
    reporter: Reporter | None = None,
) -> int:
    """`prompt` None (stdin is not a terminal): nothing is asked, `given` is used as is."""
    rep = reporter or make_reporter(opts, Redactor())
    here = (cwd or Path.cwd()).resolve()
    try:
        answers = ask(given, prompt) if prompt is not None else given
        done = write(env, here / opts.inventories, here, answers)
    except (ConfigError, ValueError) as exc:
        message = exc.message if isinstance(exc, ConfigError) else f"init: {exc}"
        rep.error(message, exit_code=2)
        rep.finish("init", 2)
        return 2
    rep.info(f"wrote {reference.shown(done.inventory)} (every key documented; fill in the host)")
    rep.info(f"wrote {reference.shown(done.pack)} (a starter smoke pack: {answers.health})")
    if done.gitignore is not None:
        rep.info(f"added local state (secrets/, reports/) to {reference.shown(done.gitignore)}")
    rep.outcome(
        Outcome(
            op="init",
            result="ok",
            exit_code=0,
            release=None,
            live=None,
            message=f"project started for {env}; next: `releasegate trust-host {env}`, "
            f"then `releasegate preflight {env}`",
        )
    )
    rep.finish("init", 0)
    return 0
