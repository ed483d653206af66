"""Releases that attack the host they are deployed to — here, one that re-points or removes
`current` as it starts: it must not be promoted with `current` leading elsewhere; it is
rolled back and `current` names the previous release again."""

from __future__ import annotations

import pytest

from tests.conftest import git
from tests.integration.conftest import Target
from tests.integration.test_deploy import deploy, released

pytestmark = pytest.mark.integration

# Prepended to the sample app's server.js: at start, replace the deploy root's `current`
# (two levels up from the release directory node resolves __dirname to).
HIJACK = """\
const hijackFs = require('fs'), hijackPath = require('path');
const hijackLink = hijackPath.join(__dirname, '..', '..', 'current');
try { hijackFs.unlinkSync(hijackLink); } catch (e) {}
{target}
"""


def commit_hostile(t: Target, target_js: str) -> None:
    server = t.repo / "server.js"
    server.write_text(HIJACK.replace("{target}", target_js) + server.read_text())
    git(t.repo, "commit", "-qam", "hostile: moves current at start")


@pytest.mark.parametrize(
    "target_js",
    [
        "try { hijackFs.symlinkSync('releases/nonexistent', hijackLink); } catch (e) {}",
        "",  # removes it
    ],
    ids=["re-points", "removes"],
)
def test_a_release_that_moves_current_is_rolled_back_not_promoted(target: Target, target_js):
    # one instance: with two, the second cannot start once `current` is gone and the gate
    # already failed on the crash loop; one instance starts before it moves the link
    target.update("process", instances=1)
    code, rep = deploy(target)
    assert code == 0, rep.lines
    good = released(rep)

    commit_hostile(target, target_js)
    code, rep = deploy(target)
    # before: promoted (exit 0) with `current` dangling or gone
    assert code == 3, rep.lines
    bad = released(rep)
    said = "\n".join([*rep.lines, rep.outcomes[-1].message, *rep.outcomes[-1].evidence])
    assert f"current no longer names {bad}" in said, said
    assert target.current() == good
    assert target.version()["release"] == good
    assert target.state_of(bad) == "bad" and target.state_of(good) == "good"
    assert not target.lock_exists()
