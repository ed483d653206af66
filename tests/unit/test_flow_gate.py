"""The gate inside deploy/rollback against the fake host: the stability window, the version
identity, a symlinked deploy root and a process manager that never answers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from deploy import flow
from deploy.artifact import Source
from deploy.deps import Deps
from deploy.inventory import parse
from deploy.model import Outcome
from deploy.report import RecordingReporter
from tests.conftest import git
from tests.fakehost import FakeClock, FakeHost, FakeRemote, app_handler

INVENTORY = """
hosts: [{name: web1, address: 10.0.0.5, user: deploy, root: /srv/app}]
app: {name: app, repo: ., install: npm ci}
process: {command: server.js, port: 3000, instances: 2}
health: {deadline: 10, interval: 0.5, successes: 3, stable_for: 4}
"""


def world(tmp_path: Path, app_repo: Path, version: str = ""):
    text = INVENTORY.replace("stable_for: 4}", f"stable_for: 4, version: {version}}}")
    if not version:
        text = INVENTORY
    inv = parse(text, source=tmp_path / "inventories" / "prod.yml", env="prod")
    clock = FakeClock()
    host = FakeHost()
    remote = FakeRemote(host, clock)
    deps = Deps(
        inventory=inv,
        remote=remote,
        reporter=RecordingReporter(),
        clock=clock,
        actor="tester",
        workdir=tmp_path / "work",
        http=lambda base, timeout: httpx.Client(base_url=base, transport=app_handler(remote)),
    )
    return deps, host, remote


@pytest.fixture
def plain(tmp_path: Path, app_repo: Path):
    return (*world(tmp_path, app_repo), app_repo)


def ship(deps: Deps, repo: Path, fault: str = "", tag: str | None = None) -> Outcome:
    remote = deps.remote
    assert isinstance(remote, FakeRemote)
    remote.next_fault = fault
    (repo / "version.txt").write_text(f"{fault}{len(remote.log)}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"release {fault or 'good'}")
    if tag:
        git(repo, "tag", tag)
    deps.clock.sleep(2)  # release ids have a one-second resolution
    return flow.deploy(deps, Source(repo=repo, revision="HEAD"))


def states(host: FakeHost) -> list[tuple[str, str | None]]:
    return [(e["release"], e["state"]) for e in map(json.loads, host.journal) if e["state"]]


# ---------------------------------------------------------------- stability window


def test_release_that_crashes_after_start_is_rolled_back_not_promoted(plain):
    deps, host, remote, repo = plain
    good = ship(deps, repo).release
    out = ship(deps, repo, fault="crash_after:2")
    assert out.exit_code == 3 and out.result == "rolled-back", out.message
    assert (out.release, "bad") in states(host)
    assert (out.release, "good") not in states(host)
    assert host.current == good == host.running
    assert "restarted" in out.message or "stability window" in out.message


def test_healthy_release_passes_the_window_with_two_process_reads(plain):
    deps, host, remote, repo = plain
    before = len(remote.log)
    start = deps.clock.t + 2  # ship() waits 2 s first
    out = ship(deps, repo)
    assert out.exit_code == 0, out.message
    gate_reads = [c.name for c in remote.log[before:] if c.name == "pm2.jlist"]
    assert len(gate_reads) == 2
    assert deps.clock.t - start >= deps.inventory.health.window
    assert any(line.startswith("stable: 2 instance(s) online") for line in out.evidence)


# ---------------------------------------------------------------- the gate's deadline


def test_a_hung_pm2_jlist_fails_the_gate_within_its_deadline_and_rolls_back(plain):
    deps, host, remote, repo = plain
    good = ship(deps, repo).release
    remote.hang["pm2.jlist"] = 1  # the next jlist never answers
    deps.clock.sleep(2)
    started = deps.clock.t + 2
    out = ship(deps, repo)
    assert out.exit_code == 3 and out.result == "rolled-back", out.message
    assert "did not answer" in out.message
    assert host.current == good == host.running
    assert (out.release, "bad") in states(host)
    # every process read of every gate had a timeout no longer than the deadline: the ones of
    # their own (the closing read) on the client, the one ending the activation on the host
    reads = [t for name, t in remote.timeouts if name in ("pm2.jlist", "gate.close")]
    reads += [c.limit for c in remote.log if c.name == "read.quiet"]
    assert reads and all(t is not None and t <= deps.inventory.health.deadline for t in reads)
    # the failing gate ended at its deadline: the whole deploy (gate + rollback's gate) fits
    health = deps.inventory.health
    assert deps.clock.t - started <= health.deadline + health.deadline


# ---------------------------------------------------------------- version identity


def test_wrong_version_is_not_promoted_and_rollback_target_is_checked_too(tmp_path, app_repo):
    deps, host, remote = world(tmp_path, app_repo, "{field: release}")
    good = ship(deps, app_repo).release
    out = ship(deps, app_repo, fault="wrong_version")
    assert out.exit_code == 3 and out.result == "rolled-back", out.message
    assert "identity gate failed" in out.message
    assert "reported: 19700101000000-0000000" in out.evidence
    assert f"expected: {out.release}" in out.evidence
    assert host.current == good
    # the fallback's own version was checked against ITS id when it was gated again
    assert any(line.startswith("rollback: version:") and good in line for line in out.evidence)


def test_revision_expected_from_the_manifest_full_or_short(tmp_path, app_repo):
    deps, host, remote = world(tmp_path, app_repo, "{header: X-Revision, expect: revision}")
    out = ship(deps, app_repo)
    assert out.exit_code == 0, out.message
    revision = host.manifests[out.release]["revision"]
    assert any(f"= the revision of {out.release}" in line for line in out.evidence)
    assert isinstance(revision, str) and len(revision) == 40


def test_tag_of_the_commit_travels_in_the_manifest_and_gates_the_rollback(tmp_path, app_repo):
    deps, host, remote = world(tmp_path, app_repo, "{field: tag, expect: tag}")
    tagged = ship(deps, app_repo, tag="v2.0.0")
    assert tagged.exit_code == 0, tagged.message
    assert host.manifests[str(tagged.release)]["tags"] == ["v2.0.0"]
    untagged = ship(deps, app_repo)
    assert untagged.exit_code == 3 and "without a tag" in untagged.message
    # the rollback target was checked against the tag in ITS manifest
    assert host.current == tagged.release
    assert any("rollback: version:" in line and "v2.0.0" in line for line in untagged.evidence)


# ---------------------------------------------------------------- symlinked deploy root


def test_identity_passes_when_the_root_is_reached_through_a_symlink(plain):
    deps, host, remote, repo = plain
    host.real_root = "/data/srv/app"  # /srv/app -> /data/srv/app
    out = ship(deps, repo)
    assert out.exit_code == 0, out.message
    assert host.current == out.release
