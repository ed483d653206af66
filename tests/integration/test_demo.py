"""The README's first command: `releasegate demo` boots a sandbox, prepares its front door,
and shows blue/green under load — a good release promoted, a boot_crash and a wrong_contract
release rejected before traffic — with 0 failed requests each. Run twice on the same sandbox,
as a newcomer would: the second run finds the front door and the slots of the first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import sandbox
from tests.integration.conftest import PROVIDER

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
# Its own sandbox, beside the suite's (rgit:7), the bench's (rgbench:16, rgbsmoke:17) and the
# demo's default (rg-local:5, which a developer may have running).
SANDBOX = os.environ.get("RELEASEGATE_DEMO_TEST_SANDBOX", "rgdemo:18")
ROWS = ("a good release", "boot_crash", "wrong_contract")


def run_demo() -> subprocess.CompletedProcess[str]:
    releasegate = Path(sys.executable).parent / "releasegate"
    return subprocess.run(
        [str(releasegate), "--plain", "demo", "--sandbox", SANDBOX, "--provider", PROVIDER],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k not in ("HEALTH_TOKEN", "METRICS_TOKEN")},
    )


def table(stdout: str) -> dict[str, list[str]]:
    """The demo's closing table: deploy -> [exit, requests, failed, bad answers, outcome]."""
    rows = {}
    for line in stdout.splitlines():
        for name in ROWS:
            if line.startswith(name + " "):
                rows[name] = re.split(r"\s{2,}", line[len(name) :].strip())
    return rows


def test_the_demo_shows_blue_green_with_no_failed_request() -> None:
    if PROVIDER == "namespaces":
        assert os.geteuid() == 0, "the demo boots the sandbox VPS and needs root"
    name, _, index = SANDBOX.partition(":")
    spec = sandbox.SandboxSpec(name=name, index=int(index))
    try:
        for attempt in ("first", "second"):
            res = run_demo()
            out = res.stdout + res.stderr
            assert res.returncode == 0, f"{attempt} run:\n{out[-6000:]}"
            rows = table(res.stdout)
            assert set(rows) == set(ROWS), out[-3000:]
            exits = {k: v[0] for k, v in rows.items()}
            assert exits == {"a good release": "0", "boot_crash": "3", "wrong_contract": "3"}
            for row in rows.values():
                requests, failed = int(row[1]), int(row[2])
                assert requests > 0 and failed == 0, rows
            assert rows["boot_crash"][3] == "0" and rows["wrong_contract"][3] == "0"
            assert "demo passed" in out
    finally:
        sandbox.down(spec)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"releasegate-{name}" not in [line.split()[0] for line in netns.splitlines() if line]
    if PROVIDER == "docker":
        import docker

        client = docker.from_env()
        label = f"dev.releasegate.sandbox={name}"
        assert not client.containers.list(all=True, filters={"label": label})
        assert not client.networks.list(filters={"label": label})
