"""The reference files errors point to: inventories/example.yml (every inventory key) and
docs/*.md, and what `releasegate demo` deploys: inventories/local.yml and the sample app
(examples/sampleapp). A source checkout has them at the top of the tree; a wheel installs them
as the data-only packages `releasegate_examples`, `releasegate_docs` and
`releasegate_sampleapp` (pyproject.toml), so a message names a file the user really has and
the demo runs from a plain `pip install`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parent.parent


def _find(package: str, source_dir: str, name: str) -> Path:
    source = SOURCE_TREE / source_dir / name
    if source.is_file():
        return source
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        installed = Path(location) / name
        if installed.is_file():
            return installed
    return source  # named anyway: the message still says which file is meant


def _find_dir(package: str, source_dir: str) -> Path:
    source = SOURCE_TREE / source_dir
    if source.is_dir():
        return source
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        return Path(location)
    return source


def sample_app() -> Path:
    """The sample app the demo (and the integration tests) deploy."""
    return _find_dir("releasegate_sampleapp", "examples/sampleapp")


def demo_inventory() -> Path:
    """inventories/local.yml: the sandbox environment the demo deploys to."""
    return _find("releasegate_examples", "inventories", "local.yml")


def example_inventory() -> Path:
    """The commented reference inventory (also what `releasegate init` starts from)."""
    return _find("releasegate_examples", "inventories", "example.yml")


def doc(name: str) -> Path:
    return _find("releasegate_docs", "docs", name)


def shown(path: Path) -> str:
    """A path as a user would type it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def example_hint() -> str:
    return shown(example_inventory())
