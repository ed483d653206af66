"""The release's own environment snapshot (`releases/<id>/.releasegate.env`, mode 0600).

One file per release, made at ship time and never rewritten, read by both process managers:
systemd's `EnvironmentFile=` (through `current`) and the PM2 config, whose reader follows
systemd's rules (templates/pm2/ecosystem.config.js.j2). It holds, in this order (a later line
wins in both readers):

1. the secrets built locally (`secrets.from_env` / `from_file`), uploaded on a command's
   stdin — or, when `secrets:` is not configured, a copy of a hand-maintained `shared/.env`
   made on the host;
2. what releasegate sets: `process.env`, then `RELEASE_ID`, `REVISION` (the full git sha) and
   `PORT`, rendered here (no secret values: they travel as a command argument).

Activating a release (deploy, rollback, verify) gives the app exactly this file's variables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Set by releasegate for every release; an inventory may not set them in process.env.
RESERVED = ("RELEASE_ID", "REVISION", "PORT")


def quote(value: str) -> str:
    """A double-quoted value as systemd's EnvironmentFile= (and our PM2 reader) unquote it:
    backslash, double quote, backtick and dollar are escaped; nothing is expanded."""
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError("environment values must be single-line")
    escaped = "".join("\\" + ch if ch in '\\"`$' else ch for ch in value)
    return f'"{escaped}"'


def render_settings(*, release_id: str, revision: str, port: int, env: Mapping[str, str]) -> str:
    """Part 2 of the snapshot: the inventory's plain settings, then releasegate's own."""
    values = {**env, "RELEASE_ID": release_id, "REVISION": revision, "PORT": str(port)}
    lines = [f"# set by releasegate for release {release_id} (process.env, then its own)"]
    for key, value in values.items():
        if not KEY.match(key):
            raise ValueError(f"not an environment variable name: {key!r}")
        lines.append(f"{key}={quote(value)}")
    return "\n".join(lines) + "\n"
