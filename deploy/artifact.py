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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath

from deploy.errors import ConfigError, ShipError
from deploy.model import RELEASE_META, Artifact, new_release_id


@dataclass(frozen=True)
class Source:
    repo: Path
    revision: str
    path: str | None = None  # subdirectory of the repo that is the app
    build: str | None = None
    allow_dirty: bool = False
    # app.shared_files/shared_dirs: paths the host replaces with links into shared/
    replaced_on_host: tuple[str, ...] = ()


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)


def check_revision(repo: Path, revision: str) -> None:
    """Refuse, before anything is contacted, a repository or revision that does not exist
    (exit 2: a config or argument problem)."""
    if not (repo / ".git").exists() and _git(repo, "rev-parse").returncode != 0:
        raise ConfigError(
            f"{repo} is not a git repository: set app.repo in the inventory to the "
            f"app's git checkout (relative paths start at the inventory's directory). "
            f"Nothing was contacted."
        )
    res = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if res.returncode != 0:
        raise ConfigError(
            f"revision {revision!r} does not exist in {repo}: commit or fetch it, or set "
            f"app.revision (or --revision) to an existing branch, tag or sha. Nothing was "
            f"contacted."
        )


def uncommitted(source: Source) -> str | None:
    """The first uncommitted change in the tree (within app.path), or None when it is clean."""
    scope = [source.path] if source.path else []
    status = _git(source.repo, "status", "--porcelain", "--untracked-files=normal", "--", *scope)
    dirty = status.stdout.decode().strip()
    return dirty.splitlines()[0] if dirty else None


def for_preview(source: Source) -> tuple[Source, str | None]:
    """A dry run previews the commit even when the tree is dirty (e.g. right after trust-host
    wrote inventories/known_hosts): the source to plan with, and the warning to show."""
    first = None if source.allow_dirty else uncommitted(source)
    if first is None:
        return source, None
    return replace(source, allow_dirty=True), (
        f"the working tree of {source.repo} has uncommitted changes (e.g. `{first}`): this "
        f"plan ships the commit without them; a real deploy refuses (exit 5) until you "
        f"commit or stash them, or pass --allow-dirty"
    )


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
        first = uncommitted(source)
        if first:
            raise ShipError(
                f"the working tree of {source.repo} has uncommitted changes (e.g. `{first}`); "
                f"a release is built from the commit, so those changes would silently not ship. "
                f"Commit or stash them, or pass --allow-dirty to ship the commit anyway."
            )
    return sha


def build(
    source: Source,
    out_dir: Path,
    now: datetime,
    *,
    sha: str | None = None,
    extra: Mapping[str, bytes] | None = None,
) -> Artifact:
    """The tarball of the revision (`sha` when the caller resolved it already), plus `extra`
    files releasegate adds to the release (path inside the release -> content, mode 0600)."""
    sha = sha or resolve(source)
    release_id = new_release_id(sha, now)
    treeish = f"{sha}:{source.path}" if source.path else sha
    res = _git(source.repo, "archive", "--format=tar", treeish)
    if res.returncode != 0:
        raise ShipError(
            f"git archive of {treeish} in {source.repo} failed: "
            f"{res.stderr.decode(errors='replace').strip()}. Check app.path in the inventory."
        )
    tar_bytes = res.stdout
    _refuse_reserved(tar_bytes, treeish, None)
    if source.build:
        tar_bytes = _run_build(tar_bytes, source.build)
        _refuse_reserved(tar_bytes, treeish, source.build)
    if extra:
        tar_bytes = _append(tar_bytes, extra)
    members = check_members(tar_bytes, source.replaced_on_host)
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


def _refuse_reserved(tar_bytes: bytes, treeish: str, build_command: str | None) -> None:
    """releasegate writes its own files under RELEASE_META in every release (the smoke packs
    it was gated with, the dependency key): a file of the app at such a path would collide
    with them, or pass for them."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            parts = [p for p in PurePosixPath(member.name).parts if p != "."]
            if len(parts) < 2 or parts[0] != RELEASE_META or member.isdir():
                continue
            if build_command is None:
                origin = f"the revision {treeish}"
                fix = f"remove it from the repository (git rm -r {RELEASE_META}) and commit"
            else:
                origin = f"the local build command (app.build: {build_command!r})"
                fix = f"have app.build write its files elsewhere than {RELEASE_META}/"
            raise ShipError(
                f"{origin} holds {member.name!r}: {RELEASE_META}/ inside a release is reserved "
                f"for releasegate's own files (the smoke packs a release was gated with, its "
                f"dependency key); nothing was shipped. Fix: {fix}."
            )


def _append(tar_bytes: bytes, files: Mapping[str, bytes]) -> bytes:
    """Add releasegate's own files (owner-only: a smoke pack may hold a literal credential)."""
    buf = io.BytesIO(tar_bytes)
    with tarfile.open(fileobj=buf, mode="a", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(PurePosixPath(name).parent) for name in files} - {"."})
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(info)
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o600
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def check_members(tar_bytes: bytes, replaced_on_host: Iterable[str] = ()) -> int:
    """Refuse archives whose members could land outside the release directory, or whose
    links resolve outside it once extracted. `replaced_on_host` are the paths the host links
    in from shared/ after extraction: what lies beyond them is not judged from the archive."""
    tree = ReleaseTree()
    count = 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            count += 1
            _check_member(member)
            tree.add(member)
    tree.replace_on_host(replaced_on_host)
    tree.check_links()
    return count


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ShipError(f"archive member {member.name!r} would escape the release directory")
    if member.isdev() or member.isfifo():
        raise ShipError(f"archive member {member.name!r} is a device or fifo; refusing it")
    if (member.issym() or member.islnk()) and member.linkname.startswith("/"):
        raise ShipError(
            f"archive member {member.name!r} links to {member.linkname!r}, outside the "
            f"release directory; remove the link from the repository"
        )


# ---------------------------------------------------------------------------- links

MAX_LINK_HOPS = 40  # Linux follows at most 40 symlinks in one lookup, then fails (ELOOP)

Where = tuple[str, ...]  # a path inside the release directory, as its components


class _Outside(Exception):
    def __init__(self, why: str, chain: list[str], *, certain: bool = True) -> None:
        super().__init__(why)
        self.why = why
        self.chain = chain
        self.certain = certain  # False: where it leads cannot be known from the archive


class _Loop(Exception):
    def __init__(self, chain: list[str]) -> None:
        super().__init__("loop")
        self.chain = chain


@dataclass
class _Node:
    kind: str  # dir | file | link | opaque (not judged: replaced on the host)
    member: str = ""  # the archive member that made it
    target: str = ""  # a link's target, as written


class ReleaseTree:
    """The release directory as extracting the archive builds it, member after member:
    enough of a filesystem to resolve a path the way the kernel will — links followed where
    they appear (chains, links through linked directories), `..` taken from the directory a
    link really leads to, at most MAX_LINK_HOPS links per lookup."""

    def __init__(self) -> None:
        self.nodes: dict[Where, _Node] = {(): _Node("dir")}

    def add(self, member: tarfile.TarInfo) -> None:
        parts = tuple(p for p in PurePosixPath(member.name).parts if p != ".")
        if not parts:
            return
        try:
            parent = self.resolve((), "/".join(parts[:-1]), follow_last=True, create=True)
        except (_Outside, _Loop) as exc:
            raise _refusal(member.name, "is written through a link that", exc) from None
        where = (*parent, parts[-1])
        existing = self.nodes.get(where)
        if member.isdir() and (existing is None or existing.kind == "dir"):
            self.nodes[where] = _Node("dir", member.name)
            return
        if existing is not None:
            # What tar does then depends on its version and options (replace, follow, fail
            # on a non-empty directory); an archive made from git never holds a path twice.
            raise ShipError(
                f"archive member {member.name!r} would replace "
                f"{existing.member or '/'.join(where)!r} ({existing.kind}) at the same path; "
                f"an archive must hold each path once"
            )
        if member.issym():
            self.nodes[where] = _Node("link", member.name, member.linkname)
            self.check_link(where)
            return
        if member.islnk():
            # A hard link names an archive path; link(2) does not follow its last component,
            # so a hard link to a symlink is that symlink again, read from its new place.
            try:
                source = self.resolve((), member.linkname, follow_last=False)
            except (_Outside, _Loop) as exc:
                raise _refusal(
                    member.name, f"is a hard link to {member.linkname!r} that", exc
                ) from None
            node = self.nodes.get(source, _Node("file"))
            if node.kind == "dir":
                raise ShipError(
                    f"archive member {member.name!r} is a hard link to the directory "
                    f"{member.linkname!r}; refusing it"
                )
            self.nodes[where] = _Node(node.kind, member.name, node.target)
            if node.kind == "link":
                self.check_link(where, f"is a hard link to the symlink {member.linkname!r}")
            return
        self.nodes[where] = _Node("file", member.name)

    def replace_on_host(self, paths: Iterable[str]) -> None:
        """The host links these in from shared/ after extraction (`rm -rf`, then a link):
        from then on they are opaque, and so is everything that was below them."""
        for path in paths:
            parts = tuple(p for p in PurePosixPath(path).parts if p not in ("", "."))
            if not parts:
                continue
            try:
                parent = self.resolve((), "/".join(parts[:-1]), follow_last=True, create=True)
            except (_Outside, _Loop) as exc:
                raise _refusal(
                    path, "(linked in from shared/) is reached through a link that", exc
                ) from None
            where = (*parent, parts[-1])
            for below in [p for p in self.nodes if p[: len(where)] == where]:
                del self.nodes[below]
            self.nodes[where] = _Node("opaque", path)

    def check_links(self) -> None:
        """Every link, against the tree as extraction leaves it (a later member can change
        what an earlier link leads through)."""
        for where, node in sorted(self.nodes.items()):
            if node.kind == "link":
                self.check_link(where)

    def check_link(self, where: Where, what: str = "") -> None:
        node = self.nodes[where]
        try:
            self.resolve(where[:-1], node.target, follow_last=True)
        except (_Outside, _Loop) as exc:
            lead = f"{what}, so it links to" if what else "links to"
            raise _refusal(node.member, f"{lead} {node.target!r}, which", exc) from None

    def resolve(self, start: Where, path: str, *, follow_last: bool, create: bool = False) -> Where:
        """Where `path`, looked up from the directory `start`, leads inside the release.
        Raises _Outside when it leaves the release (or when `..` follows a component whose
        nature the archive does not fix), _Loop after MAX_LINK_HOPS links. With `create`,
        missing directories are made, as tar makes a member's parents."""
        if path.startswith("/"):
            raise _Outside(f"is absolute ({path})", [])
        current = list(start)
        todo = path.split("/")
        chain: list[str] = []
        unknown: str | None = None  # the first component the archive does not make a dir
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if unknown is not None:
                    raise _Outside(
                        f"goes `..` out of {unknown!r}, which the archive does not make a "
                        f"directory (it may not exist, or be a file or a link on the host)",
                        chain,
                        certain=False,
                    )
                if not current:
                    raise _Outside("resolves above the release directory", chain)
                current.pop()
                continue
            here = (*current, part)
            node = self.nodes.get(here) if unknown is None else None
            if node is not None and node.kind == "link" and (todo or follow_last):
                chain.append(f"{node.member} -> {node.target}")
                if len(chain) > MAX_LINK_HOPS:
                    raise _Loop(chain)
                if node.target.startswith("/"):
                    raise _Outside(f"reaches the absolute path {node.target}", chain)
                todo = node.target.split("/") + todo
                continue
            if node is None and create and unknown is None:
                self.nodes[here] = _Node("dir")
            elif (node is None or node.kind != "dir") and todo and unknown is None:
                unknown = "/".join(here)
            current.append(part)
        return tuple(current)


def _refusal(member: str, what: str, exc: _Outside | _Loop) -> ShipError:
    links = list(dict.fromkeys(exc.chain))  # a loop shows each link once
    via = f" (via {'; '.join(links)})" if links else ""
    if isinstance(exc, _Loop):
        return ShipError(
            f"archive member {member!r} {what} never resolves: a symlink loop{via}; "
            f"remove the link from the repository"
        )
    lead = "would" if exc.certain else "could"
    return ShipError(
        f"archive member {member!r} {what} {exc.why}{via}: it {lead} lead outside the release "
        f"directory once extracted; remove the link from the repository"
    )
