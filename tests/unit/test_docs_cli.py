"""The docs match the CLI: every `releasegate <command> … --option` that README.md or
docs/*.md mention (in prose, code blocks, and the README's command table) names a command
that exists and options that command accepts."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from deploy.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MENTION = re.compile(r"\breleasegate((?:[ \t]+[^\s`|;&<>\\]+)+)")
TABLE_ROW = re.compile(r"^\| `([a-z][a-z-]*(?: [^`]*)?)`")
STOP = re.compile(r"^(#|\$\(|\(|>|2>)")


def options_of(cmd: click.Command) -> set[str]:
    options = [p for p in cmd.params if isinstance(p, click.Option)]
    return {"--help"} | {o for p in options for o in (*p.opts, *p.secondary_opts)}


def mentions() -> list[tuple[str, int, list[str]]]:
    found = []
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            for m in MENTION.finditer(line):
                found.append((where, number, m.group(1).split()))
            if path.name == "README.md":
                row = TABLE_ROW.match(line)
                if row:  # the command table: `deploy ENV [--revision R] …` / `lock … / unlock …`
                    for part in re.split(r" / (?=[a-z])", row.group(1)):
                        found.append((where, number, part.split()))
    return found


def problems(tokens: list[str]) -> list[str]:
    """What in one mention does not exist in the CLI ([] when all of it does, or when the
    mention is prose such as `releasegate deploys …`)."""
    group: click.Command = main
    allowed = options_of(main)
    bad: list[str] = []
    seen_command = False
    for raw in tokens:
        if STOP.match(raw):
            break
        token = raw.strip("[](),.:…'\"")
        token = token.split("=", 1)[0]
        if not token:
            continue
        if token.startswith("--") or re.fullmatch(r"-[a-zA-Z]", token):
            if token not in allowed:
                bad.append(f"{token} (for `{group.name}`)")
            continue
        if isinstance(group, click.Group) and re.fullmatch(r"[a-z][a-z-]*", token):
            sub = group.commands.get(token)
            if sub is None:
                if not seen_command and any(t.startswith("--") for t in tokens):
                    bad.append(f"no command `{token}`")
                return bad if seen_command or bad else []
            group, seen_command = sub, True
            allowed = allowed | options_of(sub)
    return bad


def test_the_docs_mention_only_commands_and_options_that_exist():
    found = mentions()
    assert len(found) > 40  # the scan finds the docs' mentions at all
    wrong = [
        f"{where}: `{' '.join(t)}`: {', '.join(p)}" for where, _, t in found if (p := problems(t))
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("tokens", "bad"),
    [
        (["deploy", "prod", "--dry-run"], False),
        (["deploy", "prod", "--dry-runs"], True),
        (["sandbox", "status", "--name", "rg", "--index", "5"], False),
        (["frobnicate", "--now"], True),
        (["deploys", "every", "push"], False),
    ],
)
def test_the_check_itself_tells_good_from_bad(tokens: list[str], bad: bool):
    assert bool(problems(tokens)) is bad
