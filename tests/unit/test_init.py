"""`releasegate init`: a project started in an empty directory deploys-ready — a valid,
commented inventory written from the reference example.yml, a starter smoke pack the
inventory uses, .gitignore lines — asking nothing off a terminal and never overwriting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy import inventory, reference, scaffold
from deploy.cli import main
from deploy.operations import Options
from deploy.report import RecordingReporter
from smoke.commands import packs_from_settings


@pytest.fixture
def project(tmp_path: Path) -> Path:
    where = tmp_path / "shop-api"
    where.mkdir()
    return where


def init(project: Path, *args: str) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(project)
    try:
        res = CliRunner().invoke(main, ["--plain", "init", *args], input="")
    finally:
        os.chdir(cwd)
    return res.exit_code, res.output


def test_init_writes_a_valid_commented_inventory_a_pack_and_gitignore(project: Path):
    (project / ".gitignore").write_text("node_modules/")
    code, out = init(project, "staging", "--host", "web7.example.com", "--port", "8080")
    assert code == 0, out
    inv = inventory.load("staging", project / "inventories")
    assert (inv.host.address, inv.app.name, inv.process.port) == (
        "web7.example.com",
        "shop-api",
        8080,
    )
    assert inv.host.root == "/srv/shop-api" and inv.repo_path() == project.resolve()
    # every comment of the reference is there: each key stays documented
    text = (project / "inventories" / "staging.yml").read_text()
    example = reference.example_inventory().read_text()
    comments = [line.split("#", 1)[1] for line in example.splitlines()[3:] if "#" in line]
    assert all(c in text for c in comments)
    # the starter pack is the inventory's and checks the health endpoint
    (pack,) = packs_from_settings(inv.smoke, base_dir=inv.base_dir)
    assert [c.request.path for c in pack.checks] == ["/health/ready"]
    ignore = (project / ".gitignore").read_text().splitlines()
    assert ignore[0] == "node_modules/" and "/secrets/" in ignore and "/reports/" in ignore


def test_init_never_overwrites(project: Path):
    assert init(project)[0] == 0
    inv = project / "inventories" / "prod.yml"
    inv.write_text("# mine\n")
    code, out = init(project, "--host", "other.example.com")
    assert code == 2 and "never overwrites" in out
    assert inv.read_text() == "# mine\n"
    ignore = (project / ".gitignore").read_text()
    assert init(project, "staging")[0] == 2  # smoke/health.yml exists: nothing written
    assert not (project / "inventories" / "staging.yml").exists()
    assert (project / ".gitignore").read_text() == ignore


def test_init_asks_on_a_terminal_only(project: Path):
    asked: list[str] = []

    def prompt(question: str, default: object) -> object:
        asked.append(question)
        return {"Host": "10.0.0.7", "App": "shop"}.get(question.split(" ")[0], default)

    rep = RecordingReporter()
    given = scaffold.Answers(app="shop-api")
    assert (
        scaffold.run(Options(), "prod", given=given, prompt=prompt, cwd=project, reporter=rep) == 0
    )
    inv = inventory.load("prod", project / "inventories")
    assert (inv.host.address, inv.app.name) == ("10.0.0.7", "shop") and len(asked) == 4


def test_init_off_a_terminal_asks_nothing(project: Path):
    code, out = init(project)
    assert code == 0, out
    assert "Host (address" not in out and "App name" not in out
    assert inventory.load("prod", project / "inventories").host.address == "web1.example.com"
