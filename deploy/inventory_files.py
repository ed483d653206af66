"""Where inventories live: `<dir>/<env>.yml`, which environments exist, and the one error for a
missing or misnamed one.

Kept free of pydantic and YAML so a mistyped environment is reported (and shell completion
answers) before the validation models are imported: that path is part of the CLI's start time.
"""

from __future__ import annotations

import re
from pathlib import Path

from deploy import reference
from deploy.errors import ConfigError

ENV_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")


def inventory_path(env: str, directory: Path) -> Path:
    if not ENV_NAME.match(env):
        raise ConfigError(
            f"environment name {env!r} is not valid: use lowercase letters, digits, '-' or '_' "
            f"(for example prod or staging); it names the file inventories/<env>.yml"
        )
    return directory / f"{env}.yml"


def known_environments(directory: Path) -> list[str]:
    """The environments that have an inventory file in `directory` (sorted)."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yml") if ENV_NAME.match(p.stem))


def locate(env: str, directory: Path) -> Path:
    """The inventory file of `env`; a ConfigError naming the known environments if none."""
    path = inventory_path(env, directory)
    if not path.is_file():
        known = known_environments(directory)
        hint = f"known environments: {', '.join(known)}" if known else "no inventories found"
        raise ConfigError(
            f"{path}: no such inventory file. Create it with `releasegate init {env}` (a "
            f"commented inventory, from {reference.example_hint()}), or pick an existing "
            f"environment ({hint})."
        )
    return path
