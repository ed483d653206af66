"""The secrets part of each release's env snapshot (deploy/release_env.py), built from local
secret sources. Values never reach a command line, output, the journal or an error message:
callers seed the redaction filter with `values()`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
BARE = re.compile(r"^[A-Za-z0-9_./:@%+=,-]*\Z")


class SecretSourceError(Exception):
    """A problem with a secret source; the message never contains a value."""


@dataclass(frozen=True)
class EnvFile:
    entries: dict[str, str] = field(default_factory=dict, repr=False)

    def values(self) -> tuple[str, ...]:
        return tuple(v for v in self.entries.values() if v)

    def render(self) -> str:
        # Read by two parsers (the PM2 config's and systemd's EnvironmentFile): plain values
        # go bare, others in single quotes, which both take literally.
        lines = ["# written by releasegate; edit the local secret sources, not this file"]
        for key, value in self.entries.items():
            lines.append(f"{key}={value}" if BARE.match(value) else f"{key}='{value}'")
        return "\n".join(lines) + "\n"


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (optional `export `, quotes, # comments). Errors name the line only."""
    if not path.is_file():
        raise SecretSourceError(f"{path} does not exist")
    out: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not KEY.match(key):
            raise SecretSourceError(f"{path}:{number}: expected KEY=VALUE (the value is not shown)")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def build(
    from_env: tuple[str, ...], from_file: Path | None, environ: Mapping[str, str]
) -> tuple[EnvFile, list[str]]:
    """The env file and the problems found (missing variables, unreadable file)."""
    problems: list[str] = []
    entries: dict[str, str] = {}
    if from_file is not None:
        try:
            entries.update(parse_env_file(from_file))
        except SecretSourceError as exc:
            problems.append(str(exc))
    for name in from_env:
        value = environ.get(name)
        if value is None:
            problems.append(f"environment variable {name} is not set")
        elif value == "":
            # set but empty: usually a CI secret that does not exist in this environment
            problems.append(f"environment variable {name} is set but empty")
        else:
            entries[name] = value
    for key, value in entries.items():
        if "\n" in value or "\x00" in value or "'" in value or "\\" in value:
            problems.append(
                f"{key}: the value has a newline, a single quote or a backslash, which "
                f"an env file cannot carry safely (the value is not shown)"
            )
    return EnvFile(entries), problems
