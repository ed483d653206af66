"""A release is a sealed unit: its env snapshot, its smoke packs and its dependency key travel
with it, and every activation uses the activated release's own (fake host, real flow)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from deploy import flow
from deploy.artifact import Source
from deploy.deps import Deps
from deploy.errors import AbortedBeforeLive, Interrupted
from deploy.inventory import parse
from deploy.model import Outcome
from deploy.report import RecordingReporter
from deploy.rollback import rollback
from tests.conftest import git
from tests.fakehost import FakeClock, FakeHost, FakeRemote, app_handler

INVENTORY = """
hosts: [{name: web1, address: 10.0.0.5, user: deploy, root: /srv/app}]
app: {name: app, repo: ., install: npm ci}
process: {command: server.js, port: 3000, instances: 2}
health: {deadline: 5, interval: 0.5, successes: 3}
"""

P1 = """
version: 1
name: contract
checks:
  - name: items
    request: {path: /api/items}
    expect: {status: 200, schema: {type: object, required: [items]}}
"""
NEW_ENDPOINT = """
  - name: new-endpoint
    request: {path: /new}
    expect: {status: 200}
"""


class World:
    def __init__(self, tmp_path: Path, repo: Path, smoke: str = "", environ=None) -> None:
        self.repo = repo
        self.pack = repo / "smoke" / "contract.yml"
        self.pack.parent.mkdir(exist_ok=True)
        self.pack.write_text(P1)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "contract pack")
        extra = smoke or f"smoke: {{packs: [{self.pack}]}}\n"
        inv = parse(INVENTORY + extra, source=tmp_path / "inv" / "prod.yml", env="prod")
        self.clock = FakeClock()
        self.host = FakeHost()
        self.remote = FakeRemote(self.host, self.clock)
        self.seen_tokens: list[str | None] = []
        app = app_handler(self.remote)

        def handle(request: httpx.Request) -> httpx.Response:
            fault = self.host.fault_of_running()
            if request.url.path == "/api/items":
                self.seen_tokens.append(request.headers.get("x-token"))
                return httpx.Response(
                    200, json={"data": []} if fault == "wrong_contract" else {"items": []}
                )
            return app.handle_request(request)

        self.deps = Deps(
            inventory=inv,
            remote=self.remote,
            reporter=RecordingReporter(),
            clock=self.clock,
            actor="tester",
            workdir=tmp_path / "work",
            http=lambda base, timeout: httpx.Client(
                base_url=base, transport=httpx.MockTransport(handle)
            ),
            environ=environ if environ is not None else {},
        )

    def commit(self, pack: str | None = None, note: str = "") -> str:
        if pack is not None:
            self.pack.write_text(pack)
        (self.repo / "version.txt").write_text(f"{note}{len(self.remote.log)}\n")
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", f"release {note}")
        return git(self.repo, "rev-parse", "HEAD")

    def deploy(self, fault: str = "", revision: str = "HEAD", dirty: bool = False) -> Outcome:
        self.remote.next_fault = fault
        self.clock.sleep(2)
        self.deps.gate_packs.clear()  # each run is a new process
        source = Source(repo=self.repo, revision=revision, allow_dirty=dirty)
        return flow.deploy(self.deps, source)

    def rollback(self) -> Outcome:
        self.clock.sleep(2)
        self.deps.gate_packs.clear()
        return rollback(self.deps)

    def warnings(self) -> list[str]:
        return [line for line in self.deps.reporter.lines if "warn" in line.lower()]


@pytest.fixture
def world(tmp_path: Path, app_repo: Path) -> World:
    return World(tmp_path, app_repo)


# ---------------------------------------------------------------------------- smoke packs


def test_automatic_rollback_gates_the_fallback_with_the_packs_it_carries(world: World):
    world.commit()
    good = world.deploy()
    assert good.exit_code == 0, good.evidence
    # the new release's pack checks an endpoint the old release does not have (nor does it)
    world.commit(P1 + NEW_ENDPOINT)
    out = world.deploy()
    assert out.exit_code == 3, out.evidence  # not 6: the fallback ran ITS checks and passed
    assert out.live == good.release == world.host.current
    assert "new-endpoint" in out.message
    assert not any("new-endpoint" in line for line in out.evidence if "rollback:" in line)


def test_manual_rollback_gates_the_target_with_its_own_packs(world: World):
    world.commit()
    old = world.deploy()
    # the new release changes its contract, and its pack with it: promoted
    world.commit(P1.replace("required: [items]", "required: [data]"))
    new = world.deploy(fault="wrong_contract")
    assert new.exit_code == 0, new.evidence
    out = world.rollback()
    assert out.exit_code == 0, out.evidence  # today's pack would have failed the old contract
    assert world.host.current == old.release


def test_deploy_of_an_older_revision_uses_that_revisions_packs(world: World):
    older = world.commit()
    world.commit(P1 + NEW_ENDPOINT)  # the working tree's pack would fail
    out = world.deploy(revision=older)
    assert out.exit_code == 0, out.evidence
    stored = json.loads(world.host.bundles[str(out.release)])
    assert stored["packs"][0]["text"] == P1
    assert stored["packs"][0]["source"] == f"{older[:12]}:smoke/contract.yml"


def test_a_pack_in_the_repository_must_exist_at_the_revision(world: World, tmp_path: Path):
    from deploy.errors import ConfigError

    world.pack.unlink()
    world.commit()
    world.pack.write_text(P1)  # back in the working tree, but not in the commit
    with pytest.raises(ConfigError, match="not in revision"):
        world.deploy(dirty=True)
    assert world.remote.log == []  # stopped before any host command


def test_a_release_shipped_before_releases_carried_packs_is_gated_on_readiness(world: World):
    world.commit()
    good = world.deploy()
    del world.host.bundles[str(good.release)]  # as an older releasegate left it
    world.commit(P1 + NEW_ENDPOINT)
    out = world.deploy()
    assert out.exit_code == 3, out.evidence
    assert any("shipped before releases carried their smoke packs" in w for w in world.warnings())


def test_stored_packs_changed_on_the_host_are_not_trusted(world: World):
    world.commit()
    good = world.deploy()
    world.host.bundles[str(good.release)] = world.host.bundles[str(good.release)].replace(
        "items", "itemz"
    )
    world.commit(P1 + NEW_ENDPOINT)
    out = world.deploy()
    assert out.exit_code == 3, out.evidence
    assert any("do not match the hash" in w for w in world.warnings())


def test_env_references_travel_unresolved_and_resolve_here_each_time(
    tmp_path: Path, app_repo: Path
):
    world = World(tmp_path, app_repo, environ={"SMOKE_TOKEN": "tok-first"})
    header = 'path: /api/items, headers: {X-Token: "${ENV:SMOKE_TOKEN}"}}'
    world.commit(P1.replace("path: /api/items}", header))
    good = world.deploy()
    assert good.exit_code == 0, good.evidence
    bundle = world.host.bundles[str(good.release)]
    assert "${ENV:SMOKE_TOKEN}" in bundle and "tok-first" not in bundle
    world.deps.environ = {"SMOKE_TOKEN": "tok-rotated"}
    world.commit(P1 + NEW_ENDPOINT)
    out = world.deploy()
    assert out.exit_code == 3, out.evidence
    assert world.seen_tokens[-1] == "tok-rotated"  # the fallback's pack, resolved now


# ---------------------------------------------------------------------------- env snapshot


def test_the_env_snapshot_is_made_inside_the_release_from_the_uploaded_secrets(world: World):
    world.deps.env_file = "API_KEY=s3cret\n"
    world.commit()
    out = world.deploy()
    assert out.exit_code == 0
    made = world.host.envs[str(out.release)]
    assert made.startswith("secrets upload") and f'RELEASE_ID="{out.release}"' in made
    assert 'REVISION="' in made and 'PORT="3000"' in made
    assert not any("shared/.env" in c.display for c in world.remote.log)
    assert world.host.upload_files == set()
    # the value only ever travelled as an upload (a command's stdin)
    assert not any("s3cret" in c.render() for c in world.remote.log)


def test_without_secrets_a_hand_maintained_shared_env_is_sealed_into_the_release(world: World):
    world.commit()
    out = world.deploy()
    assert world.host.envs[str(out.release)].startswith("copy of /srv/app/shared/.env")


def test_a_removed_variable_is_reported_when_pm2_restarts_instead_of_reloading(world: World):
    world.commit()
    world.deploy()
    world.host.activation_stdout = "@@env-restart OLD_FLAG \n"
    world.commit()
    out = world.deploy()
    assert out.exit_code == 0
    assert any("OLD_FLAG" in w and "deleted and started" in w for w in world.warnings())


# ---------------------------------------------------------------------------- uploads


def test_an_aborted_ship_removes_its_uploads(world: World):
    world.deps.env_file = "API_KEY=s3cret\n"
    world.commit()
    world.deploy()
    world.remote.fail["release.install"] = 1
    world.commit()
    with pytest.raises(AbortedBeforeLive):
        world.deploy()
    assert world.host.upload_files == set()


def test_a_signal_during_an_upload_removes_what_was_transferred(world: World):
    world.commit()
    world.remote.interrupt_on["put"] = KeyboardInterrupt
    with pytest.raises(Interrupted) as err:
        world.deploy()
    assert err.value.exit_code == 130
    assert world.host.upload_files == set() and world.host.lock is None


def test_uploads_left_by_a_dead_run_are_removed_by_the_next_ship(world: World):
    world.host.upload_files = {
        "/srv/app/.releasegate/uploads/20261122000000-abcdef1.tar.gz.dead",
        "/srv/app/.releasegate/uploads/env.dead",
    }
    world.commit()
    assert world.deploy().exit_code == 0
    assert world.host.upload_files == set()


# ---------------------------------------------------------------------------- dependencies


def reuse_source(world: World) -> str:
    install = [c for c in world.remote.log if c.name == "release.install"][-1]
    argv = list(install.argv)  # (under the host's `timeout`) sh -c SCRIPT releasegate SOURCE …
    return argv[argv.index("releasegate") + 1]


def test_dependencies_are_reused_only_from_a_good_release(world: World):
    world.commit()
    first = world.deploy(fault="ready_503")  # first deploy fails: current is bad
    assert first.exit_code == 6
    world.commit()
    good = world.deploy()
    assert good.exit_code == 0
    assert reuse_source(world) == ""  # never from the bad current
    world.commit()
    bad = world.deploy(fault="ready_503")
    assert bad.exit_code == 3
    assert reuse_source(world) == f"/srv/app/releases/{good.release}"
    world.commit()
    world.deps.clean_install = True
    world.deploy()
    assert reuse_source(world) == ""


def test_the_round_trips_of_a_deploy_did_not_grow(world: World):
    world.deps.env_file = "API_KEY=s3cret\n"
    world.commit()
    world.deploy()
    before_runs, before_puts = world.remote.round_trips, len(world.remote.uploads)
    world.commit()
    assert world.deploy().exit_code == 0
    trips = (world.remote.round_trips - before_runs) + (len(world.remote.uploads) - before_puts)
    assert trips <= 13, [c.name for c in world.remote.log[-30:]]
