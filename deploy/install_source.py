"""Where a generated CI workflow installs releasegate from, decided at generation time.

No package index has releasegate, so `releasegate==<version>` would fail (or install whatever
later takes the name). `ci github --install` takes either `git` (the default: the git
repository this releasegate runs from, pinned to its commit) or an explicit pip requirement:
a git URL pinned to a tag or commit, or a wheel committed to the app repository. When the
source cannot be determined the command stops (exit 2) and says how to choose.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from deploy.errors import ConfigError

GIT = "git"
PROJECT = Path(__file__).resolve().parent.parent
SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9.-]+):(?!//)(.+)$")
SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class InstallSource:
    spec: str  # the pip requirement the workflow installs
    origin: str  # how it was decided, for the user
    warnings: tuple[str, ...] = ()


def choose_explicitly(reason: str) -> ConfigError:
    return ConfigError(
        f"cannot tell where the workflow should install releasegate from: {reason}. Choose it "
        f"with --install: a git URL pinned to a tag or commit, e.g. --install "
        f"'releasegate @ git+https://github.com/OWNER/releasegate@v0.1.0', or a wheel you "
        f"commit to this repository, e.g. --install ./ci/releasegate-0.1.0-py3-none-any.whl "
        f"(build it with `pip wheel --no-deps -w ci/ <releasegate checkout>`)."
    )


def decide(
    choice: str, *, root: Path, direct_url: dict[str, object] | None = None
) -> InstallSource:
    """`choice`: GIT or a pip requirement (already validated). `root`: the app repository
    (a wheel path is relative to it, as on the runner). `direct_url`: PEP 610 data of the
    installed releasegate (default: read from its metadata)."""
    if choice != GIT:
        return _explicit(choice, root)
    info = _direct_url() if direct_url is None else direct_url
    vcs = info.get("vcs_info") if info else None
    if isinstance(vcs, dict) and vcs.get("vcs") == "git" and info:
        url, commit = str(info.get("url", "")), str(vcs.get("commit_id", ""))
        if not SHA.match(commit):
            raise choose_explicitly(f"pip recorded no commit for {url}")
        return InstallSource(
            spec=f"releasegate @ git+{_https(url)}@{commit}",
            origin=f"the git URL releasegate was installed from, pinned to {commit[:12]}",
        )
    checkout = _checkout(info)
    if checkout is None:
        raise choose_explicitly(
            "this releasegate was not installed from a git URL or a git checkout"
        )
    return _from_checkout(checkout)


def _explicit(spec: str, root: Path) -> InstallSource:
    if spec.endswith(".whl") and "://" not in spec and "@" not in spec:
        wheel = (root / spec).resolve()
        if not wheel.is_file():
            raise ConfigError(
                f"--install {spec}: no such wheel in {root} (the runner installs it from the "
                f"checked-out repository); build it with `pip wheel --no-deps -w ci/ "
                f"<releasegate checkout>` and commit it, or give a git URL."
            )
        return InstallSource(spec=spec, origin="the wheel committed to this repository")
    if re.match(r"^releasegate\s*==", spec):
        return InstallSource(
            spec=spec,
            origin="a package index (as given)",
            warnings=(
                f"{spec}: no public package index has releasegate; this works only with an "
                f"index of your own configured on the runner (PIP_INDEX_URL)",
            ),
        )
    return InstallSource(spec=spec, origin="as given with --install")


def _direct_url() -> dict[str, object] | None:
    try:
        text = metadata.distribution("releasegate").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _checkout(info: dict[str, object] | None) -> Path | None:
    """The local directory releasegate was installed from (editable or not), else — running
    from source without an install — this source tree; None when neither is a git checkout."""
    where: Path | None = PROJECT if info is None else None
    if info and "dir_info" in info:
        url = urlparse(str(info.get("url", "")))
        if url.scheme == "file":
            where = Path(unquote(url.path))
    if where is None or _git(where, "rev-parse", "--is-inside-work-tree") != "true":
        return None
    return where


def _from_checkout(checkout: Path) -> InstallSource:
    remote = _git(checkout, "remote", "get-url", "origin")
    if not remote:
        raise choose_explicitly(f"the releasegate checkout {checkout} has no `origin` remote")
    url = _https(remote)
    if not url.startswith("https://"):
        raise choose_explicitly(
            f"the origin of {checkout} ({remote}) is not a URL a CI runner can reach"
        )
    commit = _git(checkout, "rev-parse", "HEAD")
    warnings = []
    if _git(checkout, "status", "--porcelain", "--untracked-files=no"):
        warnings.append(
            f"{checkout} has uncommitted changes: the workflow installs the commit "
            f"{commit[:12]}, without them"
        )
    if not _git(checkout, "branch", "-r", "--contains", commit):
        warnings.append(
            f"commit {commit[:12]} of {checkout} is on no branch of a remote: push it, or "
            f"the runner cannot install it"
        )
    return InstallSource(
        spec=f"releasegate @ git+{url}@{commit}",
        origin=f"the origin of the releasegate checkout {checkout}, pinned to {commit[:12]}",
        warnings=tuple(warnings),
    )


def _https(url: str) -> str:
    """A remote as an https URL a runner can fetch anonymously (public repositories); a
    token-free form of ssh remotes."""
    url = url.removeprefix("git+")
    if url.startswith("https://") and "@" in urlparse(url).netloc:
        parsed = urlparse(url)  # never a token from the remote into a committed workflow
        return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
    if url.startswith("ssh://"):
        parsed = urlparse(url)
        return f"https://{parsed.hostname}{parsed.path}"
    scp = SCP_LIKE.match(url)
    if scp and "://" not in url:
        return f"https://{scp.group(1)}/{scp.group(2)}"
    return url


def _git(repo: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    return res.stdout.strip() if res.returncode == 0 else ""
