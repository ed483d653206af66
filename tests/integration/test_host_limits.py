"""The host runs out of disk space mid-deploy, and the promise holds: the deploy fails with
an error that says so and how to fix it (exit 5), `current` keeps pointing at the complete,
healthy release, the lock is released, no partial release is left, the journal stays
readable, and the next deploy once space is back works. The deploy root is a small tmpfs on
the sandbox, so filling it touches nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Target
from tests.integration.test_deploy import deploy, released
from tests.integration.test_migrations_db import as_root

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(target: Target) -> Iterator[Target]:
    root = target.root
    as_root(target, f"mkdir -p {root} && mount -t tmpfs -o size=16m tmpfs {root}")
    as_root(target, f"chown {target.vps.user}: {root}")
    # the preflight floor would refuse a 16 MiB disk outright; the test is what happens
    # when space runs out after the preflight (another writer, a big install)
    target.update("preflight", min_free_mb=0)
    try:
        yield target
    finally:
        target.ssh(f"pm2 delete {target.app} >/dev/null 2>&1", check=False)
        as_root(target, f"umount -l {root}")


def fill(t: Target, leave_kb: int) -> None:
    t.ssh(
        f"a=$(df -Pk {t.root} | awk 'NR==2 {{print $4}}'); "
        f"dd if=/dev/zero of={t.root}/shared/filler bs=1K count=$((a - {leave_kb})) 2>/dev/null;"
        f" true"
    )


def test_a_disk_that_fills_during_the_ship_aborts_cleanly_and_the_next_deploy_works(
    small_disk: Target,
):
    t = small_disk
    code, rep = deploy(t)
    assert code == 0, rep.lines
    live = released(rep)

    # room for the upload and the extraction, not for the dependencies
    fill(t, leave_kb=300)
    (t.repo / "n.txt").write_text("next")
    code, rep = deploy(t, "")
    assert code == 5, rep.lines
    error = [line for line in rep.lines if line.startswith("error:")][-1]
    assert "no space left" in error.lower() and f"{t.root}" in error
    assert "free space" in error and "releasegate releases test" in error and "df -h" in error
    # the live release serves, untouched; nothing half-made is left to become a target
    assert t.current() == live and t.version()["release"] == live
    assert not t.lock_exists()
    assert t.ssh(f"ls -A {t.root}/releases").stdout.split() == [live]
    assert t.ssh(f"ls -A {t.root}/.releasegate/uploads").stdout.split() == []
    for line in t.ssh(f"cat {t.root}/.releasegate/journal.jsonl").stdout.splitlines():
        json.loads(line)

    t.ssh(f"rm -f {t.root}/shared/filler")
    (t.repo / "n.txt").write_text("again")
    code, rep = deploy(t, "")
    assert code == 0, rep.lines
    assert t.current() == released(rep) != live
    assert t.version()["release"] == released(rep)
