"""A host left in a state releasegate did not make — a `current` that is a directory, a
release without its manifest, a file where the lock should be — refused before anything
changes, with the path and the fix; the live release keeps serving, untouched."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Target
from tests.integration.test_deploy import deploy, released, rollback

pytestmark = pytest.mark.integration


def pids(t: Target) -> str:
    return t.ssh(f"pm2 pid {t.app}").stdout.strip()


def releases(t: Target) -> set[str]:
    return set(t.ssh(f"ls -1 {t.root}/releases").stdout.split())


def test_a_current_made_by_hand_is_refused_before_the_ship_and_the_rollback(target: Target):
    code, rep = deploy(target)
    assert code == 0, rep.lines
    live = released(rep)
    before_pids, before_journal = pids(target), target.journal()
    # someone copied a release into place instead of linking it
    target.ssh(f"cd {target.root} && rm current && cp -r releases/{live} current")

    (target.repo / "n.txt").write_text("next")
    code, rep = deploy(target, "")
    assert code == 5, rep.lines
    message = "\n".join(rep.lines)
    assert f"{target.root}/current on sandbox is a directory" in message
    assert f"mv {target.root}/current" in message
    # nothing shipped, nothing journaled, nothing restarted, no lock left
    assert releases(target) == {live}
    assert target.journal() == before_journal
    assert pids(target) == before_pids and target.version()["release"] == live
    target.ssh(f"test -d {target.root}/current && test ! -L {target.root}/current")
    assert not target.lock_exists()

    code, rep = rollback(target)
    assert code == 5, rep.lines
    assert target.journal() == before_journal and pids(target) == before_pids
    assert not target.lock_exists()


def test_rollback_to_a_release_without_its_manifest_is_refused_before_anything(target: Target):
    code, rep = deploy(target)
    assert code == 0, rep.lines
    old = released(rep)
    (target.repo / "n.txt").write_text("second")
    code, rep = deploy(target, "")
    assert code == 0, rep.lines
    live = released(rep)
    target.ssh(f"rm {target.root}/releases/{old}/.release.json")
    before_pids, before_journal = pids(target), target.journal()

    code, rep = rollback(target, to=old)
    assert code == 2, rep.lines
    text = "\n".join(rep.lines)
    assert f"release {old} on sandbox is incomplete" in text and ".release.json" in text
    # before: the switch refused it after the point of no return, the live release was
    # restarted as an automatic rollback, and the run ended as a failed rollback (exit 3/6)
    assert target.current() == live and pids(target) == before_pids
    assert target.journal() == before_journal
    assert not target.lock_exists()
    # and a plain rollback never picks it as the last good release either
    code, rep = rollback(target)
    assert code == 6, rep.lines
    assert target.current() == live and target.journal() == before_journal


def test_a_file_where_the_lock_should_be_is_named_with_its_fix(target: Target):
    code, rep = deploy(target)
    assert code == 0, rep.lines
    live = released(rep)
    lock = f"{target.root}/.releasegate/lock"
    target.ssh(f"printf 'leftover' > {lock}")

    (target.repo / "n.txt").write_text("next")
    code, rep = deploy(target, "")
    assert code == 5, rep.lines
    text = "\n".join(rep.lines)
    assert f"{lock} is a file, not a lock releasegate made" in text and f"rm -- {lock}" in text
    assert "unknown owner" not in text  # before: a holder `unlock --force` could not find
    assert releases(target) == {live} and target.current() == live
    assert target.ssh(f"cat {lock}").stdout == "leftover"
    assert target.ssh(f"ls -a {target.root}/.releasegate").stdout.count("lock.new-") == 0
