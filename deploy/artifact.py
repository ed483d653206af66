"""Build the artifact for a release: git archive of the revision (+ optional local build).

The archive is checked here, member by member, before it leaves the machine: nothing may
escape the release directory (absolute paths, `..`, links pointing outside, devices). The
host verifies the sha256 before extracting, so what it extracts is exactly what was checked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from deploy.errors import ShipError
from deploy.model import Artifact, new_release_id


@dataclass(frozen=True)
class Source:
    repo: Path
    revision: str
    path: str | None = None  # subdirectory of the repo that is the app
    build: str | None = None
    allow_dirty: bool = False


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)


def resolve(source: Source) -> str:
    """The full commit sha of the revision; refuses a dirty tree unless allowed."""
    if not (source.repo / ".git").exists() and _git(source.repo, "rev-parse").returncode != 0:
        raise ShipError(
            f"{source.repo} is not a git repository: set app.repo in the inventory to the "
            f"app's git checkout (relative paths start at the inventory's directory)."
        )
    res = _git(source.repo, "rev-parse", "--verify", "--quiet", f"{source.revision}^{{commit}}")
    if res.returncode != 0:
        raise ShipError(
            f"revision {source.revision!r} does not exist in {source.repo}: commit or fetch it, "
            f"or set app.revision (or --revision) to an existing branch, tag or sha."
        )
    sha = res.stdout.decode().strip()
    if not source.allow_dirty:
        scope = [source.path] if source.path else []
        status = _git(
            source.repo, "status", "--porcelain", "--untracked-files=normal", "--", *scope
        )
        dirty = status.stdout.decode().strip()
        if dirty:
            first = dirty.splitlines()[0]
            raise ShipError(
                f"the working tree of {source.repo} has uncommitted changes (e.g. `{first}`); "
                f"a release is built from the commit, so those changes would silently not ship. "
                f"Commit or stash them, or pass --allow-dirty to ship the commit anyway."
            )
    return sha


def build(source: Source, out_dir: Path, now: datetime) -> Artifact:
    sha = resolve(source)
    release_id = new_release_id(sha, now)
    treeish = f"{sha}:{source.path}" if source.path else sha
    res = _git(source.repo, "archive", "--format=tar", treeish)
    if res.returncode != 0:
        raise ShipError(
            f"git archive of {treeish} in {source.repo} failed: "
            f"{res.stderr.decode(errors='replace').strip()}. Check app.path in the inventory."
        )
    tar_bytes = res.stdout
    if source.build:
        tar_bytes = _run_build(tar_bytes, source.build)
    members = check_members(tar_bytes)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{release_id}.tar.gz"
    # mtime=0 keeps the gzip bytes a function of the content only.
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(tar_bytes)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Artifact(
        path=str(path),
        sha256=digest,
        size=path.stat().st_size,
        revision=sha,
        release_id=release_id,
        members=members,
        tags=tags_of(source.repo, sha),
    )


def tags_of(repo: Path, sha: str) -> tuple[str, ...]:
    """The tags that point at the commit: the manifest records them, so a release's version
    identity may be its tag (health.version.expect: tag), on rollbacks too."""
    res = _git(repo, "tag", "--points-at", sha)
    if res.returncode != 0:
        return ()
    return tuple(sorted(t for t in res.stdout.decode(errors="replace").split() if t))


def _run_build(tar_bytes: bytes, command: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="releasegate-build-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            tar.extractall(tree, filter="data")
        res = subprocess.run(["sh", "-c", command], cwd=tree, capture_output=True, check=False)
        if res.returncode != 0:
            tail = "\n".join(res.stderr.decode(errors="replace").strip().splitlines()[-8:])
            raise ShipError(
                f"the local build command (app.build: {command!r}) exited {res.returncode}; "
                f"nothing was shipped. Its last lines:\n{tail}"
            )
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for item in sorted(tree.rglob("*")):
                tar.add(item, arcname=item.relative_to(tree).as_posix(), recursive=False)
        return buf.getvalue()


def check_members(tar_bytes: bytes) -> int:
    """Refuse archives whose members could land outside the release directory."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            count += 1
            _check_member(member)
    return count


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ShipError(f"archive member {member.name!r} would escape the release directory")
    if member.isdev() or member.isfifo():
        raise ShipError(f"archive member {member.name!r} is a device or fifo; refusing it")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        resolved = target if member.islnk() else name.parent / target
        if target.is_absolute() or _escapes(resolved):
            raise ShipError(
                f"archive member {member.name!r} links to {member.linkname!r}, outside the "
                f"release directory; remove the link from the repository"
            )


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False
