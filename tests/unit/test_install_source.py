"""Where the generated workflows install releasegate from: never `releasegate==<version>` from
an index that does not have it; a git URL pinned to a commit, or a wheel in the repository,
decided at generation time — and exit 2 with the way to choose when it cannot be told."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import ci, install_source
from deploy.errors import ConfigError
from deploy.operations import Options
from deploy.report import RecordingReporter
from tests.conftest import git
from tests.unit.test_ci import load, repo  # noqa: F401  (the app repository fixture)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A releasegate checkout (editable install) whose origin is on GitHub."""
    where = tmp_path / "releasegate"
    where.mkdir()
    git(where, "init", "-q", "-b", "main")
    (where / "README.md").write_text("releasegate\n")
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", "first")
    return where


def editable(where: Path) -> dict[str, object]:
    return {"url": f"file://{where}", "dir_info": {"editable": True}}


@pytest.mark.parametrize(
    ("origin", "url"),
    [
        ("git@github.com:acme/releasegate.git", "https://github.com/acme/releasegate.git"),
        ("ssh://git@github.com/acme/releasegate", "https://github.com/acme/releasegate"),
        ("https://ci:t0ken@github.com/acme/releasegate", "https://github.com/acme/releasegate"),
    ],
)
def test_a_checkout_gives_its_origin_pinned_to_its_commit(
    checkout: Path, tmp_path: Path, origin: str, url: str
):
    git(checkout, "remote", "add", "origin", origin)
    got = install_source.decide("git", root=tmp_path, direct_url=editable(checkout))
    sha = git(checkout, "rev-parse", "HEAD")
    assert got.spec == f"releasegate @ git+{url}@{sha}"
    assert "t0ken" not in got.spec
    assert any("on no branch of a remote" in w for w in got.warnings)  # not pushed yet


def test_a_git_url_install_is_reused_pinned():
    info = {
        "url": "https://github.com/acme/releasegate",
        "vcs_info": {"vcs": "git", "commit_id": "a" * 40, "requested_revision": "v0.1.0"},
    }
    got = install_source.decide("git", root=Path("."), direct_url=info)
    assert got.spec == f"releasegate @ git+https://github.com/acme/releasegate@{'a' * 40}"


@pytest.mark.parametrize(
    "info",
    [
        {"url": "file:///tmp/releasegate-0.1.0-py3-none-any.whl", "archive_info": {}},
        {"url": "file:///nonexistent", "dir_info": {}},
    ],
    ids=["installed from a wheel", "not a checkout"],
)
def test_an_unknown_source_is_exit_2_saying_how_to_choose(info):
    with pytest.raises(ConfigError, match="--install") as caught:
        install_source.decide("git", root=Path("."), direct_url=info)
    assert caught.value.exit_code == 2


def test_a_checkout_without_origin_is_refused(checkout: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="no `origin` remote"):
        install_source.decide("git", root=tmp_path, direct_url=editable(checkout))


def test_a_wheel_must_be_in_the_repository(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such wheel"):
        install_source.decide("./ci/releasegate-0.1.0-py3-none-any.whl", root=tmp_path)
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "releasegate-0.1.0-py3-none-any.whl").write_bytes(b"PK")
    got = install_source.decide("./ci/releasegate-0.1.0-py3-none-any.whl", root=tmp_path)
    assert got.spec == "./ci/releasegate-0.1.0-py3-none-any.whl"


def test_the_workflow_never_installs_an_unpinned_name(repo: Path):  # noqa: F811
    """This checkout has no origin a runner could reach: generating without --install stops
    (exit 2) instead of writing `releasegate==0.1.0`, which no index has."""
    rep = RecordingReporter()
    code = ci.run_github(Options(), env="prod", reporter=rep, cwd=repo)
    if code == 0:  # a checkout with a reachable origin: pinned to a commit, never a bare name
        doc = load(repo / ".github/workflows/releasegate-prod.yml")
        assert "git+https://" in doc["env"]["RELEASEGATE_PIP"]
        assert "==" not in doc["env"]["RELEASEGATE_PIP"]
    else:
        assert code == 2 and "--install" in "\n".join(rep.lines)
        assert not (repo / ".github").exists()
