"""Jinja2 rendering of the files releasegate puts on hosts (templates/ at the project root)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jinja2

from deploy.errors import ConfigError

SOURCE_TREE = Path(__file__).resolve().parent.parent / "templates"


def templates_dir() -> Path:
    """templates/ of a source checkout, else the installed `releasegate_templates` data."""
    if SOURCE_TREE.is_dir():
        return SOURCE_TREE
    # A data-only (namespace) package: its directory is its search location.
    spec = importlib.util.find_spec("releasegate_templates")
    locations = list(spec.submodule_search_locations or []) if spec else []
    installed = Path(locations[0]) if locations else SOURCE_TREE
    if not installed.is_dir():
        raise ConfigError(
            f"releasegate's templates are missing (looked in {SOURCE_TREE} and the installed "
            f"releasegate_templates package); reinstall releasegate"
        )
    return installed


def render(name: str, **values: object) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # we render JS/INI, not HTML; values go through |tojson  # noqa: S701
        keep_trailing_newline=True,
    )
    return env.get_template(name).render(**values)
