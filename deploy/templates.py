"""Jinja2 rendering of the files releasegate puts on hosts (templates/ at the project root)."""

from __future__ import annotations

from pathlib import Path

import jinja2

from deploy.errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def render(name: str, **values: object) -> str:
    if not TEMPLATES.is_dir():
        raise ConfigError(
            f"the templates directory {TEMPLATES} is missing; install releasegate from its "
            f"source tree (pip install -e .) so templates/ sits beside deploy/"
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # we render JS/INI, not HTML; values go through |tojson  # noqa: S701
        keep_trailing_newline=True,
    )
    return env.get_template(name).render(**values)
