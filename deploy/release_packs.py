"""The smoke packs a release carries (`releases/<id>/.releasegate/smoke.json`).

A release is gated, on every activation, by the packs it was deployed with: a rollback to an
older release runs *its* checks, not today's. At deploy time `collect` reads the inventory's
packs — from the revision being deployed when the file is inside the app's repository
(`git show <sha>:<path>`), from the working tree otherwise, built-in packs from releasegate —
with the schema files they reference and the readiness-audit settings, into one `Bundle`. The
bundle holds raw files: `${ENV:…}` references stay references and are resolved on this machine
by `load` each time the release is gated. It travels inside the artifact and its sha256 is
recorded in the release's manifest.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smoke import yamlfile
from smoke.audit import audit_pack
from smoke.config import AuditSettings, SmokeSettings
from smoke.model import Pack
from smoke.pack import BUILTIN_DIR, PackError, parse_pack, resolve_ref

FORMAT = 1


@dataclass(frozen=True)
class PackFile:
    source: str  # where it came from, for messages: <sha12>:<path>, a path, builtin:<name>
    text: str  # the file as written (never resolved)
    schemas: tuple[tuple[str, str], ...] = ()  # (schema_file as written in the pack, its text)


@dataclass(frozen=True)
class Bundle:
    packs: tuple[PackFile, ...] = ()
    audit: Mapping[str, Any] | None = None  # smoke.audit settings when the audit is enabled

    def to_json(self) -> bytes:
        """One line of JSON (the host's state read relies on that), keys sorted: the same
        packs always give the same bytes, hence the same hash."""
        data = {
            "format": FORMAT,
            "packs": [
                {"source": p.source, "text": p.text, "schemas": dict(p.schemas)} for p in self.packs
            ],
            "audit": dict(self.audit) if self.audit is not None else None,
        }
        return (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> Bundle:
        """Raises ValueError for anything that is not a bundle this version can read."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a smoke bundle of format 1")
        packs = []
        for item in data.get("packs") or []:
            schemas = item.get("schemas") or {}
            if not isinstance(item.get("text"), str) or not isinstance(schemas, dict):
                raise ValueError("malformed pack entry")
            packs.append(
                PackFile(
                    source=str(item.get("source", "pack")),
                    text=item["text"],
                    schemas=tuple(sorted((str(k), str(v)) for k, v in schemas.items())),
                )
            )
        audit = data.get("audit")
        if audit is not None and not isinstance(audit, dict):
            raise ValueError("malformed audit settings")
        return cls(packs=tuple(packs), audit=audit)

    def names(self) -> tuple[str, ...]:
        out = [Path(p.source.rsplit(":", 1)[-1]).stem for p in self.packs]
        if self.audit is not None:
            out.append("readiness-audit")
        return tuple(out)


# ---------------------------------------------------------------------------- collect


def collect(settings: SmokeSettings, *, base_dir: Path, repo: Path, revision: str) -> Bundle:
    """The inventory's packs as they are at `revision` (files in the app's repository) or
    on disk (files elsewhere, built-in packs). Raises PackError naming the file and the fix."""
    reader = _Reader(repo, revision)
    packs = []
    for ref in settings.packs:
        path = resolve_ref(ref, base_dir)
        text, source = reader.read(path, what=f"smoke pack {ref}")
        schemas = {}
        for schema_ref in _schema_refs(text):
            target = Path(schema_ref)
            if not target.is_absolute():
                target = Path(posixpath.normpath(str(path.parent / target)))
            schemas[schema_ref], _ = reader.read(
                target, what=f"schema {schema_ref} of the smoke pack {ref}"
            )
        packs.append(PackFile(source=source, text=text, schemas=tuple(sorted(schemas.items()))))
    audit = settings.audit.model_dump(mode="json") if settings.audit.enabled else None
    return Bundle(packs=tuple(packs), audit=audit)


class _Reader:
    """Reads a local file from the revision when it lies inside the repository."""

    def __init__(self, repo: Path, revision: str) -> None:
        self.repo = repo
        self.revision = revision
        self._top: Path | None = None

    def toplevel(self) -> Path | None:
        if self._top is None:
            res = subprocess.run(
                ["git", "-C", str(self.repo), "rev-parse", "--show-toplevel"],
                capture_output=True,
                text=True,
                check=False,
            )
            if res.returncode != 0:
                return None
            self._top = Path(res.stdout.strip()).resolve()
        return self._top

    def read(self, path: Path, *, what: str) -> tuple[str, str]:
        """The file's text and where it came from (for messages and the pack's name)."""
        resolved = path.resolve()
        if resolved.is_relative_to(BUILTIN_DIR.resolve()):
            return _read_file(resolved, what), f"builtin:{resolved.name}"
        top = self.toplevel()
        if top is not None and resolved.is_relative_to(top):
            rel = resolved.relative_to(top).as_posix()
            res = subprocess.run(
                ["git", "-C", str(top), "show", f"{self.revision}:{rel}"],
                capture_output=True,
                check=False,
            )
            if res.returncode != 0:
                raise PackError(
                    f"{path}: the {what} is inside the app's repository but not in revision "
                    f"{self.revision[:12]}: packs in the repository are taken from the revision "
                    f"being deployed. Commit it, or keep it outside the repository."
                )
            try:
                return res.stdout.decode("utf-8"), f"{self.revision[:12]}:{rel}"
            except UnicodeDecodeError:
                raise PackError(f"{path}: the {what} is not UTF-8 text.") from None
        return _read_file(resolved, what), str(path)


def _read_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackError(
            f"{path}: no such file (the {what}). Fix the path in the inventory's smoke.packs "
            f"(relative to the inventory's directory) or the pack's schema_file."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PackError(f"{path}: the {what} cannot be read ({exc}).") from None


def _schema_refs(text: str) -> list[str]:
    """`expect.schema_file` values of a pack's checks (a broken pack has none: `load`
    reports what is wrong with it)."""
    try:
        data = yamlfile.load(text)
    except yaml.YAMLError:
        return []
    refs: list[str] = []
    checks = data.get("checks") if isinstance(data, dict) else None
    for check in checks if isinstance(checks, list) else []:
        expect = check.get("expect") if isinstance(check, dict) else None
        ref = expect.get("schema_file") if isinstance(expect, dict) else None
        if isinstance(ref, str) and ref not in refs:
            refs.append(ref)
    return refs


# ---------------------------------------------------------------------------- load


def load(bundle: Bundle, environ: Mapping[str, str]) -> tuple[Pack, ...]:
    """The bundle's packs, validated, with `${ENV:…}` resolved from `environ` (this machine).
    Raises PackError."""
    packs = [
        parse_pack(
            p.text,
            source=Path(p.source.removeprefix("builtin:")),
            environ=environ,
            schema_files=dict(p.schemas),
        )
        for p in bundle.packs
    ]
    if bundle.audit is not None:
        try:
            settings = AuditSettings.model_validate(dict(bundle.audit))
        except ValueError as exc:
            raise PackError(f"smoke.audit settings carried by the release: {exc}") from None
        packs.append(audit_pack(settings, environ=environ))
    names = [p.name for p in packs]
    for name in names:
        if names.count(name) > 1:
            raise PackError(
                f"two packs are named {name!r}; give each pack its own name: (results and "
                f"JUnit suites are keyed by it)"
            )
    return tuple(packs)
