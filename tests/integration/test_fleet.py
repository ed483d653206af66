"""Many hosts: a rolling deploy and its all-or-nothing rollback over real SSH to three sandbox
VPSs (the session's, and two more booted here), checked on each host itself."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

from deploy import demo, inventory, operations, proxy, sandbox
from deploy.model import Layout
from deploy.operations import Options
from deploy.report import RecordingReporter
from tests.integration.conftest import SANDBOX, booted

pytestmark = pytest.mark.integration

PORTS = itertools.count(4650)
SLOT_PORTS = itertools.count(4670, 2)
PUBLIC_PORTS = itertools.count(8690)


def extra_specs(base: str, state_root: Path) -> list[sandbox.SandboxSpec]:
    """The two sandboxes beside the session's: RELEASEGATE_TEST_FLEET=name:index,name:index,
    or derived from RELEASEGATE_TEST_SANDBOX (name + b/c, index + 100/101: clear of the
    fixed indexes other tests boot)."""
    given = os.environ.get("RELEASEGATE_TEST_FLEET")
    if given:
        pairs = [item.partition(":") for item in given.split(",")]
        named = [(n, int(i)) for n, _, i in pairs]
    else:
        name, _, index = base.partition(":")
        named = [
            (f"{name[:9]}{suffix}", (int(index) + 99 + k) % 254 + 1)
            for k, suffix in ((1, "b"), (2, "c"))
        ]
    return [sandbox.SandboxSpec(name=n, index=i, state_root=state_root / n) for n, i in named]


@pytest.fixture(scope="session")
def fleet_vps(
    vps: sandbox.SandboxInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[sandbox.SandboxInfo]]:
    with booted(extra_specs(SANDBOX, tmp_path_factory.mktemp("fleet"))) as extra:
        yield [vps, *extra]


@dataclass
class Fleet:
    hosts: list[sandbox.SandboxInfo]
    data: dict[str, Any]
    dir: Path
    repo: Path

    @property
    def inv_dir(self) -> Path:
        return self.dir / "inventories"

    @property
    def root(self) -> str:
        return str(self.data["host_defaults"]["root"])

    @property
    def app(self) -> str:
        return str(self.data["app"]["name"])

    def write(self) -> None:
        self.inv_dir.mkdir(parents=True, exist_ok=True)
        (self.inv_dir / "test.yml").write_text(yaml.safe_dump(self.data))
        for i, host in enumerate(self.data["hosts"]):  # one single-host inventory per host
            alone = {**self.data, "hosts": [host]}
            (self.inv_dir / f"web{i + 1}.yml").write_text(yaml.safe_dump(alone))

    def ssh(self, i: int, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Look at host i with the plain ssh client, independent of releasegate's code."""
        res = subprocess.run(
            self.hosts[i].ssh_argv(command), capture_output=True, text=True, timeout=60
        )
        if check:
            assert res.returncode == 0, f"{command}: {res.stderr}"
        return res

    def current(self, i: int) -> str | None:
        res = self.ssh(i, f"readlink {self.root}/current", check=False)
        return res.stdout.strip().rsplit("/", 1)[-1] if res.returncode == 0 else None

    def serving(self, i: int) -> str:
        url = f"http://{self.hosts[i].service_address}:{self.data['process']['port']}/version"
        return str(httpx.get(url, timeout=5).json()["release"])

    def pm2_pids(self, i: int) -> str:
        return self.ssh(i, f"pm2 pid {self.app}").stdout.strip()

    def journal(self, i: int) -> str:
        return self.ssh(i, f"cat {self.root}/.releasegate/journal.jsonl", check=False).stdout

    def listing(self, i: int) -> str:
        return self.ssh(i, f"ls -a {self.root} {self.root}/releases 2>&1; true").stdout


@pytest.fixture
def fleet(fleet_vps: list[sandbox.SandboxInfo], tmp_path: Path) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:8]
    repo = demo.make_app_repo(tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text("".join(info.known_hosts.read_text() for info in fleet_vps))
    data: dict[str, Any] = {
        "host_defaults": {"root": f"/srv/f-{tag}"},
        "hosts": [
            {
                "name": f"web{i + 1}",
                "address": info.address,
                "port": info.port,
                "user": info.user,
                "identity_file": str(info.identity_file),
            }
            for i, info in enumerate(fleet_vps)
        ],
        "rollout": {"batch": 1},
        "ssh": {"known_hosts": str(known)},
        "app": {
            "name": f"app-{tag}",
            "repo": str(repo),
            "install": "npm ci --omit=dev --offline --no-audit --no-fund",
        },
        "process": {
            "command": "server.js",
            "port": next(PORTS),
            "instances": 1,
            "env": {"HOST": "0.0.0.0"},
        },
        "health": {"deadline": 8, "interval": 0.3, "successes": 2, "stable_for": 1},
    }
    f = Fleet(hosts=fleet_vps, data=data, dir=tmp_path, repo=repo)
    f.write()
    try:
        yield f
    finally:
        for i in range(len(fleet_vps)):
            f.ssh(i, f"pm2 delete {f.app} >/dev/null 2>&1; rm -rf {f.root}", check=False)


def run(op: str, f: Fleet, env: str = "test", **kw: Any) -> tuple[int, RecordingReporter]:
    rep = RecordingReporter()
    opts = Options(inventories=f.inv_dir)
    if op == "deploy":
        code = operations.run_deploy(env, opts, reporter=rep)
    elif op == "status":
        code = operations.run_status(env, opts, reporter=rep)
    elif op == "lock":
        code = operations.run_lock(env, opts, reporter=rep, **kw)
    elif op == "setup":
        code = operations.run_setup(env, opts, reporter=rep)
    else:
        raise AssertionError(op)
    return code, rep


def test_rolling_deploy_then_failure_on_host_two_puts_every_switched_host_back(fleet: Fleet):
    code, rep = run("deploy", fleet)
    assert code == 0, rep.lines
    good = rep.outcomes[-1].release
    assert good and [fleet.current(i) for i in range(3)] == [good] * 3
    assert [fleet.serving(i) for i in range(3)] == [good] * 3
    pids_three = fleet.pm2_pids(2)

    # host two's own environment makes the next release fail its gate there, and only there
    fleet.ssh(1, f"echo FAULT=ready_503 > {fleet.root}/shared/.env")
    code, rep = run("deploy", fleet)
    out = rep.outcomes[-1]
    bad = out.release
    assert code == 3, rep.lines
    assert out.result == "rolled-back" and bad and bad != good
    # every host serves the previous release, verified over HTTP here
    assert [fleet.current(i) for i in range(3)] == [good] * 3
    assert [fleet.serving(i) for i in range(3)] == [good] * 3
    assert [(h.host, h.result, h.verified) for h in out.hosts] == [
        ("web1", "rolled-back", True),
        ("web2", "rolled-back", True),
        ("web3", "untouched", True),
    ]
    # host three was never switched: same processes, no trace of the release it never ran
    assert fleet.pm2_pids(2) == pids_three
    assert bad not in fleet.listing(2)
    assert '"state": "active-unverified"' not in fleet.journal(2).split(bad)[-1]
    assert all(
        fleet.ssh(i, f"test -d {fleet.root}/.releasegate/lock", check=False).returncode
        for i in range(3)
    )

    # a host changed by hand: status shows each host and flags the drift
    link = f"{fleet.root}/current"
    fleet.ssh(0, f"ln -sfn releases/{bad} {link}.tmp && mv -T {link}.tmp {link}")
    code, rep = run("status", fleet)
    assert code == 0, rep.lines
    drift = next(line for line in rep.lines if "drift" in line)
    assert f"web1 on {bad}" in drift and f"web2, web3 on {good}" in drift
    assert [row[1] for row in rep.tables[-1][1]] == [bad, good, good]


def test_unreachable_third_host_changes_nothing_anywhere(fleet: Fleet):
    fleet.data["hosts"][2]["port"] = 2  # nothing listens there: connection refused
    fleet.write()
    code, rep = run("deploy", fleet)
    assert code == 5, rep.lines
    assert any("web3" in line and "nothing was changed on any host" in line for line in rep.lines)
    for i in range(3):
        assert "No such file" in fleet.listing(i)  # not even the deploy root was created
    # `preflight` goes through every host and names the one it cannot reach
    rep = RecordingReporter()
    code = operations.run_preflight("test", Options(inventories=fleet.inv_dir), reporter=rep)
    assert code == 5
    rows = {row[1]: row[0] for row in rep.tables[-1][1]}
    assert rows["web1: host"] == rows["web2: host"] == "ok" and rows["web3: host"] == "FAIL"
    assert rows["web1: deploy root"] == "ok"


def test_manual_lock_on_host_two_exit_4_and_no_host_changed(fleet: Fleet):
    code, rep = run("lock", fleet, env="web2", message="db migration by hand")
    assert code == 0, rep.lines
    code, rep = run("deploy", fleet)
    assert code == 4, rep.lines
    assert any("web2" in line and "db migration by hand" in line for line in rep.lines)
    assert [fleet.current(i) for i in range(3)] == [None, None, None]
    assert fleet.ssh(0, f"test -d {fleet.root}/.releasegate/lock", check=False).returncode != 0
    assert fleet.ssh(1, f"test -d {fleet.root}/.releasegate/lock", check=False).returncode == 0
    assert "No such file" in fleet.listing(2)  # host three was never locked
    assert all(
        "releases:\n.\n..\n" in fleet.listing(i) or "No such file" in fleet.listing(i)
        for i in range(2)
    )


def test_blue_green_per_host_failure_on_host_two_puts_host_one_back(fleet: Fleet):
    blue, public = next(SLOT_PORTS), next(PUBLIC_PORTS)
    fleet.data["strategy"] = {
        "kind": "blue-green",
        "slots": {"blue": blue, "green": blue + 1},
        "public_port": public,
        "bake": {"seconds": 1},
    }
    fleet.data["process"]["env"] = {}  # the slots listen on loopback; nginx is the front door
    fleet.write()
    code, rep = run("setup", fleet)
    assert code == 0, rep.lines
    for i, info in enumerate(fleet.hosts):  # what root does once per host
        demo.install_site(info, inventory.load(f"web{i + 1}", fleet.inv_dir))

    def front_door(i: int) -> str:
        url = f"http://{fleet.hosts[i].service_address}:{public}/version"
        return str(httpx.get(url, timeout=5).json()["release"])

    try:
        code, rep = run("deploy", fleet)
        assert code == 0, rep.lines
        good = rep.outcomes[-1].release
        assert [front_door(i) for i in range(3)] == [good] * 3

        fleet.ssh(1, f"echo FAULT=ready_503 > {fleet.root}/shared/.env")
        code, rep = run("deploy", fleet)
        out = rep.outcomes[-1]
        assert code == 3, rep.lines
        assert [(h.host, h.result, h.live) for h in out.hosts] == [
            ("web1", "rolled-back", good),
            ("web2", "rejected", good),  # failed in its idle slot: never took traffic
            ("web3", "untouched", good),
        ]
        assert [front_door(i) for i in range(3)] == [good] * 3
    finally:
        site = proxy.proxy_paths(Layout(PurePosixPath(fleet.root)), fleet.app).site
        for i, info in enumerate(fleet.hosts):
            fleet.ssh(i, f"pm2 delete {fleet.app}-blue {fleet.app}-green >/dev/null 2>&1", False)
            subprocess.run(
                info.ssh_argv(f"rm -f {site}; nginx -t -q && systemctl reload nginx", user="root"),
                capture_output=True,
                timeout=60,
            )


def test_sigterm_once_host_one_switched_puts_every_host_back(fleet: Fleet):
    code, rep = run("deploy", fleet)
    assert code == 0, rep.lines
    good = rep.outcomes[-1].release
    demo.commit_fault(fleet.repo, "")  # a new commit: a new release
    argv = ["deploy", "test", "--plain", "--inventories", str(fleet.inv_dir)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while fleet.current(0) == good:  # each look is an SSH round trip: no sleep needed
            assert proc.poll() is None and time.monotonic() < deadline, "host one never switched"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    assert [fleet.current(i) for i in range(3)] == [good] * 3, output
    assert [fleet.serving(i) for i in range(3)] == [good] * 3
    assert all(
        fleet.ssh(i, f"test -d {fleet.root}/.releasegate/lock", check=False).returncode
        for i in range(3)
    ), output
