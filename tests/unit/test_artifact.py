"""Artifacts: git archive of a revision, dirty-tree refusal, members that escape."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from deploy import commands
from deploy.artifact import Source, build, check_members
from deploy.errors import ShipError
from deploy.model import Layout
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


# ---------------------------------------------------------------------------- link chains


def _sym(name: str, target: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = tarfile.SYMTYPE
    m.linkname = target
    return m


def _hard(name: str, target: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = tarfile.LNKTYPE
    m.linkname = target
    return m


def _dir(name: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = tarfile.DIRTYPE
    m.mode = 0o755
    return m


def _file(name: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.mode = 0o644
    return m


@pytest.mark.parametrize(
    "members, named",
    [
        # the issue's chain: each link looks inside on its own, together they reach /
        ([_sym("a/b/c/up", "../.."), _sym("x", "a/b/c/up/../../../..")], ["'x'", "a/b/c/up"]),
        # `..` is taken from where a link really leads, not from the link's name
        ([_dir("a/b"), _sym("s1", "a/b"), _sym("s2", "s1/../.."), _sym("s3", "s2/..")], ["'s3'"]),
        # a link through a linked directory
        ([_dir("a/b"), _sym("d", "a/b"), _sym("y", "d/../../..")], ["'y'", "d -> a/b"]),
        # a hard link to a symlink is that symlink again, read from its new place
        ([_sym("a/b/c/s", "../../.."), _hard("h", "a/b/c/s")], ["'h'"]),
        # a hard link through a link that leads outside
        ([_dir("a/b"), _sym("a/b/up", "../.."), _hard("h", "a/b/up/../etc/passwd")], ["'h'"]),
        # loops never resolve
        ([_sym("p", "q"), _sym("q", "p"), _sym("z", "p/x")], ["loop"]),
        ([_sym("r", "r/r")], ["loop"]),
        # `..` out of something the archive does not make a directory (a file, nothing)
        ([_file("f"), _sym("z", "f/../..")], ["'z'", "'f'"]),
        ([_sym("z", "node_modules/../..")], ["'z'", "'node_modules'"]),
        # one path twice: what tar then does depends on its version and options
        ([_dir("p/q"), _sym("p", "s")], ["'p'", "at the same path"]),
    ],
)
def test_link_chains_that_leave_the_release_are_refused(members, named):
    with pytest.raises(ShipError) as err:
        check_members(_tar(*members))
    for text in named:
        assert text in err.value.message
    assert any(w in err.value.message for w in ("outside the release", "loop", "same path"))


@pytest.mark.parametrize(
    "members",
    [
        [_dir("a/b"), _sym("s1", "a/b"), _sym("s2", "s1/../.."), _file("f"), _sym("g", "s2/f")],
        [_dir("pkg/bin"), _file("pkg/bin/x"), _sym("node_modules/.bin/x", "../../pkg/bin/x")],
        [_dir("a"), _sym("l1", "l2"), _sym("l2", "a"), _file("l1/written-through")],
        [_sym("dangling", "not/there/yet"), _sym("self-dir", ".")],
        [_file("f"), _hard("h", "f"), _sym("a/b/c/up", "../.."), _sym("x", "a/b/c/up/..")],
    ],
)
def test_links_that_stay_inside_are_accepted(members):
    assert check_members(_tar(*members)) == len(members)


def test_links_through_a_path_the_host_links_in_from_shared_are_judged_opaque():
    members = [_dir("sub/uploads"), _sym("x", "sub/uploads/../..")]
    assert check_members(_tar(*members)) == 2  # inside, as far as the archive goes
    # but sub/uploads becomes a link into shared/: `..` out of it reaches shared/
    with pytest.raises(ShipError, match=r"'x'.*sub/uploads"):
        check_members(_tar(*members), replaced_on_host=["sub/uploads"])


# ------------------------------------------------- real extraction, as the host does it

NAMES = ("a", "b", "up", "x")


def _random_members(rng: random.Random) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    used: list[str] = []
    for _ in range(rng.randint(1, 7)):
        name = "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 3)))
        if name in used:
            continue
        kind = rng.choice(["dir", "file", "sym", "sym", "sym", "hard"])
        if kind == "sym":
            parts = rng.choices((*NAMES, "..", "..", "."), k=rng.randint(1, 5))
            members.append(_sym(name, "/".join(parts)))
        elif kind == "hard" and used:
            members.append(_hard(name, rng.choice(used)))
        elif kind == "dir":
            members.append(_dir(name))
        else:
            members.append(_file(name))
        used.append(name)
    return members


def _everything(top: Path) -> set[str]:
    out = set()
    for base, dirs, files in os.walk(top):
        out.update(os.path.join(base, n) for n in (*dirs, *files))
    return out


def _host(box: Path) -> Layout:
    layout = Layout(root=PurePosixPath(box / "root"))
    cmd = commands.prepare_layout(layout)
    subprocess.run(["sh", "-c", cmd.render()], check=True, capture_output=True)
    return layout


def _ship_for_real(layout: Layout, members: list[tarfile.TarInfo], shared: tuple[str, ...]) -> Path:
    """Extract (and link shared paths) with the host's own scripts, run by sh; returns the
    release directory."""
    partial = layout.partial("20261122120000-abcdef1")
    upload = layout.uploads / "a.tar.gz"
    data = gzip.compress(_tar(*members))
    Path(str(upload)).write_bytes(data)
    steps = [commands.verify_and_extract(upload, hashlib.sha256(data).hexdigest(), partial)]
    if shared:
        steps.append(commands.link_shared(layout, partial, [], list(shared)))
    for cmd in steps:
        # tar may refuse a member (e.g. a file below a file): then the deploy would stop here
        if subprocess.run(["sh", "-c", cmd.render()], capture_output=True).returncode:
            break
    return Path(str(partial))


def _outside(release: Path, allowed: list[Path]) -> list[str]:
    """Entries of the extracted release that resolve outside it (or outside what the host
    linked in from shared/)."""
    bad = []
    for entry in sorted(_everything(release)):
        real = Path(os.path.realpath(entry))
        if not any(real == a or a in real.parents for a in allowed):
            bad.append(f"{entry} -> {real}")
    return bad


def test_every_accepted_archive_stays_inside_once_really_extracted(tmp_path: Path):
    rng = random.Random(20261122)
    accepted = with_dotdot = 0
    for n in range(300):
        members = _random_members(rng)
        shared = ("a/b",) if n % 3 == 0 else ()
        try:
            check_members(_tar(*members), replaced_on_host=shared)
        except ShipError:
            continue
        accepted += 1
        with_dotdot += any(m.issym() and ".." in m.linkname for m in members)
        box = tmp_path / f"box{n}"
        (box / "victim").mkdir(parents=True)
        layout = _host(box)
        before = _everything(box)
        release = _ship_for_real(layout, members, shared)
        root = box / "root"
        allowed = [release, *(root / "shared" / s for s in shared)]
        assert _outside(release, allowed) == [], [(m.name, m.linkname) for m in members]
        created = _everything(box) - before
        strays = [
            p
            for p in created
            if not any(Path(p) == a or a in Path(p).parents for a in allowed)
            and not Path(p).is_relative_to(root / "releases")
            and Path(p) not in {root / "shared" / "a", root / ".releasegate/uploads/a.tar.gz"}
        ]
        assert strays == [], [(m.name, m.linkname) for m in members]
    assert accepted >= 60 and with_dotdot >= 15, (accepted, with_dotdot)


def test_the_real_extraction_check_sees_the_issues_escape(tmp_path: Path):
    """The harness above would catch an escape: the chain from the issue, extracted for
    real without the check, resolves outside the release."""
    members = [_sym("a/b/c/up", "../.."), _sym("x", "a/b/c/up/../../../..")]
    release = _ship_for_real(_host(tmp_path), members, ())
    assert any(line.startswith(f"{release}/x ->") for line in _outside(release, [release]))


@pytest.mark.parametrize(
    "build_cmd", [None, "mkdir -p .releasegate && echo x > .releasegate/deps.key"]
)
def test_a_file_under_releasegates_reserved_directory_is_refused_by_name(
    app_repo: Path, tmp_path: Path, build_cmd: str | None
):
    # releasegate writes .releasegate/smoke.json (and deps.key) into every release: a file of
    # the revision (or of app.build) at that path used to fail as "each path once", unnamed.
    if build_cmd is None:
        (app_repo / ".releasegate").mkdir()
        (app_repo / ".releasegate" / "smoke.json").write_text("{}\n")
        git(app_repo, "add", "-A")
        git(app_repo, "commit", "-q", "-m", "reserved")
    source = Source(repo=app_repo, revision="HEAD", build=build_cmd)
    with pytest.raises(ShipError) as exc:
        build(source, tmp_path, NOW, extra={".releasegate/smoke.json": b"{}"})
    msg = str(exc.value)
    named = ".releasegate/smoke.json" if build_cmd is None else ".releasegate/deps.key"
    assert named in msg and "reserved" in msg
    assert ("app.build" in msg) == (build_cmd is not None)
    assert "git rm" in msg or "app.build" in msg
    assert "each path once" not in msg
