"""Deploys over real SSH to real PM2 on the sandbox VPS, checked on the host itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deploy import demo, operations
from deploy.operations import Options
from deploy.remote import known_hosts_name
from deploy.report import RecordingReporter
from tests.conftest import wait_until
from tests.integration.conftest import Target

pytestmark = pytest.mark.integration


def deploy(t: Target, fault: str | None = None) -> tuple[int, RecordingReporter]:
    if fault is not None:
        demo.commit_fault(t.repo, fault)
    rep = RecordingReporter()
    code = operations.run_deploy("test", Options(inventories=t.inv_dir), reporter=rep)
    return code, rep


def rollback(t: Target, to: str | None = None) -> tuple[int, RecordingReporter]:
    rep = RecordingReporter()
    return operations.run_rollback("test", Options(inventories=t.inv_dir), to=to, reporter=rep), rep


def released(rep: RecordingReporter) -> str:
    assert rep.outcomes, rep.lines
    rid = rep.outcomes[-1].release
    assert rid
    return rid


def cli(t: Target, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "--plain", "--inventories", str(t.inv_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env} if env else None,
    )


def test_good_deploy_is_promoted_and_really_runs(target: Target):
    code, rep = deploy(target)
    assert code == 0, rep.lines
    rid = released(rep)
    assert target.current() == rid
    assert target.version()["release"] == rid
    assert target.pm2_cwds() == {f"{target.root}/releases/{rid}"}
    assert target.state_of(rid) == "good"
    assert not target.lock_exists()
    manifest = target.ssh(f"cat {target.root}/releases/{rid}/.release.json").stdout
    assert rid in manifest and '"sha256"' in manifest
    # npm ci ran on the host: the vendored dependency is installed in the release
    target.ssh(f"test -f {target.root}/releases/{rid}/node_modules/ms/package.json")

    # a second good release replaces the first under PM2 (the symlink trap would keep the old)
    demo.commit_fault(target.repo, "")
    code, rep = deploy(target)
    assert code == 0, rep.lines
    second = released(rep)
    assert second != rid
    assert target.version()["release"] == second
    assert target.pm2_cwds() == {f"{target.root}/releases/{second}"}


@pytest.mark.parametrize("fault", ["ready_503", "boot_crash"])
def test_bad_release_is_rolled_back(target: Target, fault: str):
    code, rep = deploy(target)
    assert code == 0, rep.lines
    good = released(rep)
    code, rep = deploy(target, fault)
    assert code == 3, rep.lines
    bad = released(rep)
    assert bad != good
    assert rep.outcomes[-1].live == good
    assert target.current() == good
    assert target.version()["release"] == good
    assert target.pm2_cwds() == {f"{target.root}/releases/{good}"}
    assert target.state_of(bad) == "bad"
    assert target.state_of(good) == "good"
    assert not target.lock_exists()
    assert rep.outcomes[-1].evidence  # the probe history explains why


def test_first_deploy_failing_stops_the_app_exit_6(target: Target):
    code, rep = deploy(target, "boot_crash")
    assert code == 6, rep.lines
    bad = released(rep)
    assert target.state_of(bad) == "bad"
    assert target.ssh(f"pm2 describe {target.app}", check=False).returncode != 0
    assert not target.lock_exists()


def test_manual_rollback_and_to(target: Target):
    codes = []
    rids = []
    for n in range(3):
        (target.repo / "n.txt").write_text(str(n))
        demo.commit_fault(target.repo, "")
        code, rep = deploy(target)
        codes.append(code)
        rids.append(released(rep))
    assert codes == [0, 0, 0]
    code, rep = rollback(target)
    assert code == 0, rep.lines
    assert target.current() == rids[1] == target.version()["release"]
    code, rep = rollback(target, to=rids[0])
    assert code == 0, rep.lines
    assert target.current() == rids[0] == target.version()["release"]
    assert target.pm2_cwds() == {f"{target.root}/releases/{rids[0]}"}
    # a bad release is refused as a target, and nothing changes
    code, rep = deploy(target, "ready_503")
    assert code == 3
    bad = released(rep)
    code, rep = rollback(target, to=bad)
    assert code == 2
    assert target.current() == rids[0]


def test_held_lock_gives_exit_4_and_survives(target: Target):
    code, _ = deploy(target)
    assert code == 0
    before = target.current()
    lock = f"{target.root}/.releasegate/lock"
    target.ssh(
        f"mkdir {lock} && echo ffffffffffffffffffffffffffffffff > {lock}/token && "
        f'echo \'{{"actor": "alice@laptop", "op": "deploy"}}\' > {lock}/owner.json'
    )
    demo.commit_fault(target.repo, "")
    code, rep = deploy(target)
    assert code == 4
    assert any("alice@laptop" in line for line in rep.lines)
    assert target.ssh(f"cat {lock}/token").stdout.strip() == "f" * 32
    assert target.current() == before


def test_sigint_during_gate_rolls_back_and_unlocks(target: Target):
    code, rep = deploy(target)
    assert code == 0
    good = released(rep)
    target.update("health", deadline=60)
    demo.commit_fault(target.repo, "slow_ready:60")
    proc = cli(target, "deploy", "test")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    wait_until(lambda: any("gate" in line and "…" in line for line in lines), 60, "the gate stage")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 130, "".join(lines)
    reader.join(timeout=5)
    assert target.current() == good
    assert target.version()["release"] == good
    assert not target.lock_exists()
    bad = [e["release"] for e in target.journal() if e["state"] == "bad"]
    assert len(bad) == 1 and bad[0] != good


def test_unknown_host_key_exit_7_and_nothing_runs(target: Target, tmp_path: Path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    target.update("ssh", known_hosts=str(empty))
    proc = cli(target, "deploy", "test")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 7, out
    assert "not in" in out and "trust-host" in out
    # nothing ran on the host: the deploy root was never created
    assert target.ssh(f"test -e {target.root}", check=False).returncode != 0

    # trust-host pins the key after showing its fingerprint; then the deploy goes through
    proc = cli(target, "trust-host", "test", "--yes")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "SHA256:" in out
    assert target.vps.address in empty.read_text()
    proc = cli(target, "deploy", "test")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out


def test_changed_host_key_is_refused(target: Target, tmp_path: Path):
    wrong = tmp_path / "wrong_known_hosts"
    other = tmp_path / "otherkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pub = (other.with_suffix(".pub")).read_text().split()
    name = known_hosts_name(target.vps.address, target.vps.port)
    wrong.write_text(f"{name} {pub[0]} {pub[1]}\n")
    target.update("ssh", known_hosts=str(wrong))
    proc = cli(target, "status", "test")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 7, out
    assert "CHANGED" in out


def test_wrong_contract_release_is_rolled_back_by_the_smoke_gate(target: Target):
    pack = Path(__file__).resolve().parents[2] / "examples" / "sampleapp" / "smoke.yml"
    target.data["smoke"] = {"packs": [str(pack)]}
    target.write()
    code, rep = deploy(target)
    assert code == 0, rep.lines
    good = released(rep)
    assert any("smoke sampleapp: 9/9 passed" in line for line in rep.lines)
    code, rep = deploy(target, "wrong_contract")
    assert code == 3, rep.lines
    out = rep.outcomes[-1]
    assert "smoke gate failed" in out.message and "items-list" in out.message
    assert any("items-list" in line and "required property" in line for line in out.evidence)
    assert target.current() == good and target.version()["release"] == good
    smoke = {e["release"]: e["detail"] for e in target.journal() if e["op"] == "smoke"}
    assert smoke[out.release]["failed"] and not smoke[good]["failed"]
