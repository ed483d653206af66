"""The demo's own deciding code: the inventory it deploys (local.yml for the booted sandbox)
and its verdict on what users saw."""

from __future__ import annotations

from pathlib import Path

from deploy import inventory, sandbox
from deploy.demo import SETTLE, Step, _serving, demo_inventory
from deploy.traffic import Hit, Tally

ROOT = Path(__file__).resolve().parents[2]


def info(tmp: Path) -> sandbox.SandboxInfo:
    return sandbox.SandboxInfo(
        name="rgx",
        address="10.231.40.2",
        port=22,
        user="deploy",
        identity_file=tmp / "id_ed25519",
        known_hosts=tmp / "known_hosts",
        pid1=1,
        state_dir=tmp,
    )


def test_the_demo_deploys_local_yml_blue_green_on_the_booted_sandbox(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    here = demo_inventory(ROOT / "inventories" / "local.yml", info(tmp_path), repo, tmp_path / "i")
    inv = inventory.load("local", here)
    assert inv.host.address == "10.231.40.2"
    assert inv.identity_path() == tmp_path / "id_ed25519"
    assert inv.known_hosts_files() == (tmp_path / "known_hosts",)
    assert inv.repo_path() == repo and inv.app.path is None
    # the copy lives elsewhere: the sample app's pack is named by its absolute path
    assert inv.smoke.packs == (str(ROOT / "examples" / "sampleapp" / "smoke.yml"),)
    assert inv.strategy.kind == "blue-green" and inv.strategy.public_port == 80
    assert inv.health.deadline == 8.0
    # the sample app's database: its URL a secret, its migrations run by every deploy
    assert "DATABASE_URL" in inv.secrets.from_env
    assert inv.migrations.command == "node db/migrate.js up"
    assert inv.migrations.schema_version_command == "node db/migrate.js version"
    # everything else is local.yml's
    local = inventory.load("local", ROOT / "inventories")
    assert inv.strategy == local.strategy and inv.process == local.process


def hits(*releases: str | None) -> list[Hit]:
    return [Hit(n, n + 0.01, 200 if r else None, r) for n, r in enumerate(releases)]


def test_serving_is_one_release_answering_the_last_requests() -> None:
    rid = "20261130081800-dd146e1"
    assert _serving(hits(*[rid] * SETTLE)) == rid
    assert _serving(hits(*[rid] * (SETTLE - 1))) is None
    assert _serving(hits(*[rid] * (SETTLE - 1), None)) is None
    assert _serving(hits("20261130081747-7597264", *[rid] * (SETTLE - 1))) is None


def test_a_step_holds_only_when_no_user_noticed() -> None:
    bad = "20261130081812-1ae8e5c"
    good = "20261130081800-dd146e1"
    clean = Tally(100, 0, {good: 100})
    assert Step("boot_crash", 3, 3, "1ae8e5c", good, True, clean).held
    # a failed request, a wrong exit code, the wrong release serving, or an answer from the
    # rejected release: the promise did not hold
    assert not Step("boot_crash", 3, 3, "1ae8e5c", good, True, Tally(100, 1, {good: 99})).held
    assert not Step("boot_crash", 0, 3, "1ae8e5c", good, True, clean).held
    assert not Step("boot_crash", 3, 3, "1ae8e5c", None, False, clean).held
    served = Tally(100, 0, {good: 97, bad: 3})
    step = Step("wrong_contract", 3, 3, "1ae8e5c", good, True, served)
    assert step.bad_answers == 3 and not step.held
    assert step.row() == ["wrong_contract", "3", "100", "0", "3", "rejected, previous serves"]
