"""Integration fixtures: one sandbox VPS per test session (real systemd, sshd, PM2), and per
test its own deploy root, app name and port so no test depends on another."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy import demo, inventory, sandbox
from deploy.inventory import Inventory

PORTS = itertools.count(4100)
# RELEASEGATE_TEST_PROVIDER=docker runs every integration test on the docker provider's sandbox.
PROVIDER = os.environ.get("RELEASEGATE_TEST_PROVIDER", "namespaces")
# Under pytest-xdist (CI runs `-n 4 --dist loadfile`) worker gwN, N > 0, boots a sandbox of its
# own: the name gets wN, the index N * 20 more. Default 7 -> 27, 47, 67 (fleet hosts +100/+101:
# 127/128, 147/148, 167/168), clear of the fixed sandboxes other tests and CI boot (9, 10, 17,
# 18, 41-43). Set here, at import, so every reader of the variable (the vps fixture,
# test_fleet.py's extra hosts) sees the worker's own.
WORKER_INDEX_STEP = 20


def worker_sandbox(base: str, worker: str) -> str:
    """The name:index worker `worker` (gw0, gw1, ...) uses for the base RELEASEGATE_TEST_SANDBOX."""
    n = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    if n == 0:
        return base
    name, _, index = base.partition(":")
    return f"{name[:7]}w{n}:{(int(index) - 1 + n * WORKER_INDEX_STEP) % 254 + 1}"


if "PYTEST_XDIST_WORKER" in os.environ:
    _worker = os.environ["PYTEST_XDIST_WORKER"]
    os.environ["RELEASEGATE_TEST_SANDBOX"] = worker_sandbox(
        os.environ.get("RELEASEGATE_TEST_SANDBOX", "rgit:7"), _worker
    )
    if "RELEASEGATE_TEST_FLEET" in os.environ:
        os.environ["RELEASEGATE_TEST_FLEET"] = ",".join(
            worker_sandbox(pair, _worker)
            for pair in os.environ["RELEASEGATE_TEST_FLEET"].split(",")
        )


# RELEASEGATE_TEST_SANDBOX=name:index lets two suites run side by side on one machine.
SANDBOX = os.environ.get("RELEASEGATE_TEST_SANDBOX", "rgit:7")


@contextlib.contextmanager
def booted(specs: list[sandbox.SandboxSpec]) -> Iterator[list[sandbox.SandboxInfo]]:
    """Boot `specs` side by side (the session's sandbox, or test_fleet's extra hosts), yield
    them in order, and take every one down afterwards — also when one failed to boot."""
    if PROVIDER == "namespaces":
        assert os.geteuid() == 0, "integration tests boot the sandbox VPS and need root"
    done: dict[str, sandbox.SandboxInfo | BaseException] = {}

    def boot(spec: sandbox.SandboxSpec) -> None:
        try:
            done[spec.name] = sandbox.up(spec, provider_name=PROVIDER)
        except BaseException as exc:  # re-raised below, in the fixture's thread
            done[spec.name] = exc

    threads = [threading.Thread(target=boot, args=(s,)) for s in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        infos = [done[s.name] for s in specs]
        for info in infos:
            if isinstance(info, BaseException):
                raise info
        yield [i for i in infos if isinstance(i, sandbox.SandboxInfo)]
    finally:
        for spec in specs:
            sandbox.down(spec)


@pytest.fixture(scope="session")
def vps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sandbox.SandboxInfo]:
    name, _, index = SANDBOX.partition(":")
    spec = sandbox.SandboxSpec(
        name=name, index=int(index), state_root=tmp_path_factory.mktemp("sandbox-state")
    )
    with booted([spec]) as (info,):
        yield info


@dataclass
class Target:
    """One app on the sandbox: its inventory (as object and as file) and ways to look at it."""

    vps: sandbox.SandboxInfo
    data: dict[str, Any]
    dir: Path
    repo: Path

    @property
    def inv_dir(self) -> Path:
        return self.dir / "inventories"

    @property
    def inv(self) -> Inventory:
        return inventory.load("test", self.inv_dir)

    @property
    def root(self) -> str:
        return str(self.data["hosts"][0]["root"])

    @property
    def port(self) -> int:
        return int(self.data["process"]["port"])

    @property
    def app(self) -> str:
        return str(self.data["app"]["name"])

    def write(self) -> None:
        self.inv_dir.mkdir(parents=True, exist_ok=True)
        (self.inv_dir / "test.yml").write_text(yaml.safe_dump(self.data))

    def update(self, section: str, **values: Any) -> None:
        self.data.setdefault(section, {}).update(values)
        self.write()

    def ssh(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Look at the host with the plain ssh client, independent of releasegate's code."""
        res = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.vps.identity_file),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={self.vps.known_hosts}",
                "-p",
                str(self.vps.port),
                f"{self.vps.user}@{self.vps.address}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert res.returncode == 0, f"{command}: {res.stderr}"
        return res

    def current(self) -> str | None:
        res = self.ssh(f"readlink {self.root}/current", check=False)
        return res.stdout.strip().rsplit("/", 1)[-1] if res.returncode == 0 else None

    def version(self) -> dict[str, Any]:
        r = httpx.get(f"http://{self.vps.service_address}:{self.port}/version", timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def pm2_cwds(self) -> set[str]:
        procs = json.loads(self.ssh("pm2 jlist").stdout)
        pids = [p["pid"] for p in procs if p["name"] == self.app and p["pid"]]
        assert pids, f"no running PM2 process for {self.app}"
        out = self.ssh(" ; ".join(f"readlink /proc/{pid}/cwd" for pid in pids)).stdout
        return set(out.split())

    def journal(self) -> list[dict[str, Any]]:
        text = self.ssh(f"cat {self.root}/.releasegate/journal.jsonl").stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def state_of(self, rid: str) -> str | None:
        states = [e["state"] for e in self.journal() if e["release"] == rid and e["state"]]
        return states[-1] if states else None

    def lock_exists(self) -> bool:
        return self.ssh(f"test -d {self.root}/.releasegate/lock", check=False).returncode == 0


@pytest.fixture
def target(vps: sandbox.SandboxInfo, tmp_path: Path) -> Iterator[Target]:
    tag = uuid.uuid4().hex[:8]
    repo = demo.make_app_repo(tmp_path)
    data = {
        "hosts": [
            {
                "name": "sandbox",
                "address": vps.address,
                "port": vps.port,
                "user": vps.user,
                "root": f"/srv/t-{tag}",
                "identity_file": str(vps.identity_file),
            }
        ],
        "ssh": {"known_hosts": str(vps.known_hosts)},
        "app": {
            "name": f"app-{tag}",
            "repo": str(repo),
            "install": "npm ci --omit=dev --offline --no-audit --no-fund",
        },
        "process": {
            "command": "server.js",
            "port": next(PORTS),
            "instances": 2,
            "env": {"HOST": "0.0.0.0"},
        },
        # a short stability window keeps the suite fast; test_gate.py widens it where a
        # test needs to catch a crash after start
        "health": {"deadline": 8, "interval": 0.3, "successes": 3, "stable_for": 1},
    }
    t = Target(vps=vps, data=data, dir=tmp_path, repo=repo)
    t.write()
    try:
        yield t
    finally:
        t.ssh(f"pm2 delete {t.app} >/dev/null 2>&1; rm -rf {t.root}", check=False)
