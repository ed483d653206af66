"""The options every command shares (both doors build one): a plain value, cheap to import."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_INVENTORIES = Path("inventories")


@dataclass(frozen=True)
class Options:
    inventories: Path = DEFAULT_INVENTORIES
    plain: bool = False
    verbose: bool = False
    lock_wait: float = 0.0
    json: bool = False
    dry_run: bool = False
    clean_install: bool = False
    across_schema: bool = False  # rollback: cross a schema change (deploy/migrations.py)
