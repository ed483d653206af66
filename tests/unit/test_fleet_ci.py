"""The generated GitHub workflow with many hosts: its pin check runs (for real, with bash)
for every host of the inventory before anything connects."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_ci import bash, generate, load, pinned_line, repo, step

__all__ = ["repo"]  # the fixture


def test_the_pin_check_covers_every_host(repo: Path):
    inventory = repo / "inventories" / "prod.yml"
    inventory.write_text(
        inventory.read_text().replace(
            "hosts: [{name: web1, address: 10.0.0.5, root: /srv/shop}]",
            "hosts: [{name: web1, address: 10.0.0.5, root: /srv/shop},"
            " {name: web2, address: 10.0.0.6, port: 2222, root: /srv/shop}]",
        )
    )
    pins = repo / "inventories" / "known_hosts"
    pins.write_text(pinned_line("10.0.0.5") + "\n")
    code, rep = generate(repo)
    assert code == 0, rep.lines
    assert any("pins no key for [10.0.0.6]:2222" in line for line in rep.lines)
    doc = load(repo / ".github/workflows/releasegate-prod.yml")
    check = step(doc["jobs"]["deploy"], "Check the pinned host key of prod")
    assert check["env"]["PIN_NAME"] == "10.0.0.5 [10.0.0.6]:2222"
    (repo / "0:2222").write_text("")  # what [10.0.0.6]:2222 matches as a glob
    res = bash(check["run"], check["env"], repo)
    assert res.returncode == 1 and "pins no key for [10.0.0.6]:2222" in res.stdout
    pins.write_text(pinned_line("10.0.0.5") + "\n" + pinned_line("[10.0.0.6]:2222") + "\n")
    res = bash(check["run"], check["env"], repo)
    assert res.returncode == 0, res.stdout + res.stderr
