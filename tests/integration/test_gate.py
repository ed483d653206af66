"""The gate against real PM2 on the sandbox: a release that crashes shortly after start, a
release that serves another version, a deploy root reached through a symlink, and a process
manager that never answers."""

from __future__ import annotations

import subprocess
import time

import pytest

from deploy import demo, operations
from deploy.operations import Options
from deploy.report import RecordingReporter
from tests.integration.conftest import Target

pytestmark = pytest.mark.integration


def deploy(t: Target, fault: str | None = None) -> tuple[int, RecordingReporter]:
    if fault is not None:
        demo.commit_fault(t.repo, fault)
    rep = RecordingReporter()
    code = operations.run_deploy("test", Options(inventories=t.inv_dir), reporter=rep)
    return code, rep


def outcome(rep: RecordingReporter):
    assert rep.outcomes, rep.lines
    return rep.outcomes[-1]


def test_release_that_exits_2s_after_listening_is_rolled_back(target: Target):
    """Ready at once, then every instance exits ~2 s after it started; PM2 restarts it and it
    answers ready again. Three probes in 0.6 s used to promote it (and journal it good)."""
    target.update("health", stable_for=4, deadline=15)
    code, rep = deploy(target)
    assert code == 0, rep.lines
    good = outcome(rep).release
    code, rep = deploy(target, "crash_after:2")
    bad = outcome(rep)
    assert code == 3, rep.lines
    assert bad.result == "rolled-back" and bad.live == good
    assert "restarted" in bad.message or "stability window" in bad.message, bad.message
    assert target.state_of(str(bad.release)) == "bad"
    assert target.current() == good
    # the good release serves again and stays up: no crash loop left behind
    assert target.version()["release"] == good
    assert target.pm2_cwds() == {f"{target.root}/releases/{good}"}


def test_release_serving_another_version_is_not_promoted(target: Target):
    target.update("health", version={"path": "/version", "field": "release"})
    code, rep = deploy(target)
    assert code == 0, rep.lines
    good = outcome(rep)
    assert any(line.startswith("version: field 'release' reports") for line in good.evidence)

    code, rep = deploy(target, "wrong_version")
    bad = outcome(rep)
    assert code == 3, rep.lines
    assert "identity gate failed" in bad.message
    assert "reported: 19700101000000-0000000" in bad.evidence
    assert f"expected: {bad.release}" in bad.evidence
    assert target.state_of(str(bad.release)) == "bad"
    assert target.current() == good.release
    assert target.version()["release"] == good.release


def test_header_identity_checks_the_rollback_target_too(target: Target):
    target.update("health", version={"path": "/health/live", "header": "X-Release-Id"})
    code, rep = deploy(target)
    assert code == 0, rep.lines
    good = str(outcome(rep).release)
    code, rep = deploy(target, "boot_crash")
    assert code == 3, rep.lines
    # the fallback was gated again, version included, against ITS own id
    assert any(
        line.startswith("rollback: version: header X-Release-Id") and good in line
        for line in outcome(rep).evidence
    ), outcome(rep).evidence


def test_deploy_root_reached_through_a_symlink(target: Target):
    """/srv/t-x -> /srv/data-x/srv/app: /proc/<pid>/cwd shows the physical path."""
    link = target.root
    physical = link.replace("/srv/t-", "/srv/data-") + "/srv/app"
    target.ssh(f"mkdir -p {physical} && ln -s {physical} {link}")
    try:
        code, rep = deploy(target)
        assert code == 0, rep.lines
        rid = outcome(rep).release
        assert target.current() == rid
        assert target.pm2_cwds() == {f"{physical}/releases/{rid}"}
        assert target.state_of(str(rid)) == "good"
    finally:
        data = physical.removesuffix("/srv/app")
        target.ssh(f"pm2 delete {target.app} >/dev/null 2>&1; rm -rf {data}", check=False)


HANGING_PM2 = r"""#!/bin/sh
# pm2, except that the next `jlist` after the flag file appears never answers.
here=$(dirname "$0")
if [ "$1" = jlist ] && [ -e "$here/hang-next-jlist" ]; then
  rm -f "$here/hang-next-jlist"
  echo $$ > "$here/hung.pid"
  exec sleep 120
fi
exec pm2 "$@"
"""


def test_hung_pm2_jlist_fails_the_gate_at_its_deadline_and_rolls_back(target: Target):
    bindir = target.root.replace("/srv/t-", "/srv/bin-")
    install(target, f"{bindir}/pm2", HANGING_PM2)
    target.update("process", pm2=f"{bindir}/pm2")
    target.update("health", deadline=6, stable_for=1)
    try:
        code, rep = deploy(target)
        assert code == 0, rep.lines
        good = outcome(rep).release
        demo.commit_fault(target.repo, "")
        target.ssh(f"touch {bindir}/hang-next-jlist")
        started = time.monotonic()
        code, rep = deploy(target)
        took = time.monotonic() - started
        bad = outcome(rep)
        assert code == 3, rep.lines
        assert "did not answer" in bad.message, bad.message
        assert target.ssh(f"test -e {bindir}/hung.pid", check=False).returncode == 0
        assert target.current() == good
        assert target.version()["release"] == good
        # the hung read was cut off at the gate's deadline (6 s), not waited out (the wrapper
        # sleeps 120 s): the whole deploy, its rollback and that gate included, took far less
        assert took < 45, took
    finally:
        target.ssh(
            f"kill $(cat {bindir}/hung.pid 2>/dev/null) 2>/dev/null; rm -rf {bindir}", check=False
        )


def install(target: Target, path: str, text: str) -> None:
    """Write an executable file on the host (its text on stdin)."""
    directory = path.rsplit("/", 1)[0]
    res = subprocess.run(
        target.vps.ssh_argv(f"mkdir -p {directory} && cat > {path} && chmod 0755 {path}"),
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
