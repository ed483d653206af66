"""Preflight judgement from host facts, version constraints, and the secret sources."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploy import secrets
from deploy.inventory import parse
from deploy.preflight import judge_host, parse_probe, satisfies

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BASE = """
hosts: [{name: web1, address: h, root: /srv/app}]
app: {name: app, shared_files: [.env, config/app.json]}
process: {command: server.js, port: 3000}
preflight: {min_free_mb: 100, runtimes: {node: ">=18 <23"}, migration_check: "npm run db:check"}
"""
GOOD_FACTS = {
    "root": "writable",
    "free_kb": str(900 * 1024),
    "manager": "/usr/bin/pm2",
    "shared..env": "600",
    "shared.config/app.json": "644",
    "version.node": "v20.20.2",
    "migration_exit": "0",
}


def judge(facts, size=1024):
    inv = parse(BASE, source=Path("/i/prod.yml"), env="prod")
    return {c.name: c for c in judge_host(inv, facts, size, NOW)}


def test_all_good():
    checks = judge(GOOD_FACTS)
    assert all(c.ok for c in checks.values()), [c.line() for c in checks.values() if not c.ok]


@pytest.mark.parametrize(
    "change, name, words",
    [
        ({"free_kb": str(50 * 1024)}, "free disk", "need 100 MiB"),
        ({"shared..env": "644"}, "shared file .env", "chmod 600"),
        ({"shared.config/app.json": "666"}, "shared file config/app.json", "writable by every"),
        ({"shared..env": None}, "shared file .env", "does not exist"),
        ({"version.node": "v16.20.0"}, "runtime node", "wanted >=18 <23"),
        ({"version.node": None}, "runtime node", "not on the host's PATH"),
        ({"manager": ""}, "process manager", "not found"),
        ({"root": "not-creatable"}, "deploy root", "releasegate setup prod"),
        (
            {"migration_exit": "3", "migration_tail": "pending destructive migration"},
            "migration safety",
            "pending destructive migration",
        ),
        ({"migration_exit": "124"}, "migration safety", "did not finish within 120s"),
    ],
)
def test_each_failure_names_the_fix(change, name, words):
    facts = {**GOOD_FACTS, **change}
    facts = {k: v for k, v in facts.items() if v is not None}
    check = judge(facts)[name]
    assert not check.ok
    assert words in check.line()


def test_artifact_size_raises_the_disk_floor():
    checks = judge({**GOOD_FACTS, "free_kb": str(300 * 1024)}, size=200 * 1024 * 1024)
    assert not checks["free disk"].ok and "need 400 MiB" in checks["free disk"].detail


def test_held_lock_is_reported_not_failed():
    facts = {**GOOD_FACTS, "lock": '{"actor": "ci", "op": "deploy", "host": "x", "pid": 5}'}
    check = judge(facts)["lock"]
    assert check.ok and "held by ci" in check.detail


def test_held_lock_says_when_its_lease_ends():
    owner = '{"actor": "ci", "op": "deploy", "host": "x", "pid": 5}'
    live = judge({**GOOD_FACTS, "lock": owner, "lock_lease": "0123456789abcdef 10 60"})["lock"]
    assert "its lease expires in 52s" in live.detail and "waits" in live.detail
    ended = judge({**GOOD_FACTS, "lock": owner, "lock_lease": "0123456789abcdef 90 60"})["lock"]
    assert "lease ended 28s ago" in ended.detail and "it will be broken" in ended.detail


@pytest.mark.parametrize(
    "found, constraint, ok",
    [
        ("v20.1.0", ">=18", True),
        ("v16.9.1", ">=18", False),
        ("20.1", ">=18 <21", True),
        ("21.0.0", ">=18 <21", False),
        ("Python 3.11.7", "^3.10", True),
        ("3.9.1", "~3.9", True),
        ("3.10.0", "~3.9", False),
        ("18.2.0", "18", True),
        ("19.0.0", "18", False),
    ],
)
def test_version_constraints(found, constraint, ok):
    assert satisfies(found, constraint) is ok


def test_probe_parsing():
    facts = parse_probe("root=writable\nnoise line\nfree_kb=123\nversion.node=v20.1.0\n")
    assert facts == {"root": "writable", "free_kb": "123", "version.node": "v20.1.0"}


CANARY = "canary-3b1f9e77-value"


def test_secret_sources_never_show_values(tmp_path: Path):
    env_file = tmp_path / "prod.env"
    env_file.write_text(
        f"export DB_PASSWORD='{CANARY}'\n# comment\nAPI_KEY=abc123\nbroken line {CANARY}\n"
    )
    built, problems = secrets.build(("HEALTH_TOKEN", "MISSING"), env_file, {"HEALTH_TOKEN": CANARY})
    assert any("prod.env:4" in p for p in problems)
    assert any("MISSING is not set" in p for p in problems)
    assert all(CANARY not in p for p in problems)
    env_file.write_text(f"export DB_PASSWORD='{CANARY}'\nAPI_KEY=abc123\n")
    built, problems = secrets.build(("HEALTH_TOKEN",), env_file, {"HEALTH_TOKEN": CANARY})
    assert problems == []
    assert built.render().splitlines()[1:] == [
        f"DB_PASSWORD={CANARY}",
        "API_KEY=abc123",
        f"HEALTH_TOKEN={CANARY}",
    ]
    assert CANARY not in repr(built)
    assert set(built.values()) == {CANARY, "abc123"}


def test_a_disk_short_by_less_than_a_mebibyte_says_how_much_in_kib():
    # min_free_mb: 0 and a 60 KiB artifact: it used to read "0 MiB free ..., need 0 MiB" — and fail
    inv = parse(
        BASE.replace("min_free_mb: 100", "min_free_mb: 0"), source=Path("/i/prod.yml"), env="prod"
    )
    checks = {c.name: c for c in judge_host(inv, {**GOOD_FACTS, "free_kb": "60"}, 60 * 1024, NOW)}
    detail = checks["free disk"].detail
    assert not checks["free disk"].ok
    assert "60 KiB free" in detail and "need 120 KiB" in detail
