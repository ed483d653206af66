"""Artifacts: git archive of a revision, dirty-tree refusal, members that escape."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploy.artifact import Source, build, check_members
from deploy.errors import ShipError
from tests.conftest import git

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def test_build_archive_of_revision(app_repo: Path, tmp_path: Path):
    art = build(Source(repo=app_repo, revision="HEAD"), tmp_path / "out", NOW)
    sha = git(app_repo, "rev-parse", "HEAD")
    assert art.revision == sha and art.release_id == f"20261122120000-{sha[:7]}"
    data = Path(art.path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == art.sha256
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        assert "server.js" in tar.getnames()


def test_dirty_tree_refused_unless_allowed(app_repo: Path, tmp_path: Path):
    (app_repo / "server.js").write_text("changed\n")
    with pytest.raises(ShipError, match="uncommitted changes"):
        build(Source(repo=app_repo, revision="HEAD"), tmp_path, NOW)
    build(Source(repo=app_repo, revision="HEAD", allow_dirty=True), tmp_path, NOW)


def test_unknown_revision_and_not_a_repo(app_repo: Path, tmp_path: Path):
    with pytest.raises(ShipError, match="does not exist"):
        build(Source(repo=app_repo, revision="nope"), tmp_path, NOW)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ShipError, match="not a git repository"):
        build(Source(repo=tmp_path / "plain", revision="HEAD"), tmp_path, NOW)


def test_subdirectory_and_local_build(app_repo: Path, tmp_path: Path):
    (app_repo / "svc").mkdir()
    (app_repo / "svc" / "index.js").write_text("1\n")
    git(app_repo, "add", "-A")
    git(app_repo, "commit", "-q", "-m", "svc")
    art = build(
        Source(repo=app_repo, revision="HEAD", path="svc", build="echo built > dist.txt"),
        tmp_path,
        NOW,
    )
    with tarfile.open(art.path) as tar:
        assert set(tar.getnames()) == {"index.js", "dist.txt"}


def test_failing_build_is_a_ship_error(app_repo: Path, tmp_path: Path):
    with pytest.raises(ShipError, match="exited 3"):
        build(Source(repo=app_repo, revision="HEAD", build="echo oops >&2; exit 3"), tmp_path, NOW)


def _tar(*members: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"") if m.isfile() else None)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, kind, link",
    [
        ("../evil", tarfile.REGTYPE, ""),
        ("/etc/passwd", tarfile.REGTYPE, ""),
        ("a/../../evil", tarfile.REGTYPE, ""),
        ("link", tarfile.SYMTYPE, "/etc"),
        ("d/link", tarfile.SYMTYPE, "../../etc"),
        ("hard", tarfile.LNKTYPE, "../x"),
        ("dev", tarfile.CHRTYPE, ""),
    ],
)
def test_escaping_members_refused(name, kind, link):
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    with pytest.raises(ShipError):
        check_members(_tar(m))


def test_inner_links_allowed():
    m = tarfile.TarInfo("d/link")
    m.type = tarfile.SYMTYPE
    m.linkname = "../other"
    assert check_members(_tar(m)) == 1
