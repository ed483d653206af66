"""Remote commands as data: pure builders that return `Cmd` values. Nothing here runs anything.

Every value that reaches the remote shell goes through `Cmd.render`, the one place that
quotes (shlex). Multi-step host logic is a constant `sh -c` script whose inputs arrive as
quoted positional parameters ($1, $2, …), so no value is ever spliced into script text.
Each builder has a `name` (what tests and the fake host key on) and a masked `display`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from deploy.model import RELEASE_ID, TOKEN, Layout, Manifest

# Exit code our scripts use to say "the lock is held" (EX_TEMPFAIL), distinct from failures.
LOCK_HELD = 75
# Exit code for "checksum mismatch" from the extract script.
CHECKSUM_MISMATCH = 76


@dataclass(frozen=True)
class Cmd:
    name: str
    argv: tuple[str, ...]
    display: str
    cwd: str | None = None
    steps: tuple[Cmd, ...] = ()  # a batch: these run in order, in one round trip

    def render(self) -> str:
        if self.steps:
            # Each step in its own subshell (a `cd` stays local), announced on stderr so a
            # failure can be pinned to its step; the first failure stops the batch.
            return " && ".join(
                f"echo {STEP_MARK}{step.name} >&2 && ( {step.render()} )" for step in self.steps
            )
        line = shlex.join(self.argv)
        if self.cwd is not None:
            return f"cd {shlex.quote(self.cwd)} && {line}"
        return line

    def failed_step(self, stderr: str) -> Cmd | None:
        """The step a batch stopped at, from the markers on its stderr."""
        names = [
            ln[len(STEP_MARK) :].strip() for ln in stderr.splitlines() if ln.startswith(STEP_MARK)
        ]
        if not self.steps or not names:
            return None
        index = len(names) - 1
        return self.steps[index] if index < len(self.steps) else None


STEP_MARK = "@@step:"


def batch(name: str, steps: Sequence[Cmd], display: str) -> Cmd:
    """Several commands in one round trip (the steps of one phase)."""
    flat: list[Cmd] = []
    for step in steps:
        flat.extend(step.steps or (step,))
    for step in flat:
        if not all(c.isalnum() or c in "._-" for c in step.name):
            raise ValueError(f"step names must be plain words: {step.name!r}")
    return Cmd(name=name, argv=(), display=display, steps=tuple(flat))


def without_marks(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(STEP_MARK))


def _cmd(name: str, argv: Sequence[str], display: str | None = None, cwd: str | None = None) -> Cmd:
    return Cmd(name=name, argv=tuple(argv), display=display or shlex.join(argv), cwd=cwd)


def _script(name: str, script: str, args: Sequence[str], display: str) -> Cmd:
    """A constant POSIX sh script; `args` become $1.. and are quoted by `Cmd.render`."""
    return _cmd(name, ["sh", "-c", script, "releasegate", *args], display=display)


def _p(path: PurePosixPath | str) -> str:
    text = str(path)
    if text.startswith("-"):
        raise ValueError(f"refusing a path that starts with '-': {text!r}")
    return text


def _release(release_id: str) -> str:
    if not RELEASE_ID.match(release_id):
        raise ValueError(f"not a release id: {release_id!r}")
    return release_id


# ---------------------------------------------------------------- layout, state, lock, journal


def prepare_layout(layout: Layout) -> Cmd:
    return _script(
        "layout.prepare",
        'set -e; mkdir -p -- "$1/releases" "$1/shared" "$1/.releasegate/uploads";'
        ' chmod 0700 -- "$1/.releasegate"',
        [_p(layout.root)],
        f"prepare {layout.root}/{{releases,shared,.releasegate}}",
    )


STATE_SCRIPT = r"""
cd -- "$1" 2>/dev/null || { echo "@@missing-root"; exit 0; }
echo "@@current"; readlink current 2>/dev/null || true
echo "@@releases"; ls -1 releases 2>/dev/null || true
echo "@@lock"; cat .releasegate/lock/owner.json 2>/dev/null || true
echo "@@journal"; cat .releasegate/journal.jsonl 2>/dev/null || true
"""


def read_state(layout: Layout) -> Cmd:
    """One round trip for everything the flow decides from: current, releases, lock, journal."""
    return _script("state.read", STATE_SCRIPT, [_p(layout.root)], f"read state of {layout.root}")


LOCK_SCRIPT = r"""
if mkdir -- "$1" 2>/dev/null; then
  printf '%s\n' "$2" > "$1/token" && printf '%s\n' "$3" > "$1/owner.json" && exit 0
  rm -rf -- "$1"; exit 1
fi
cat -- "$1/owner.json" 2>/dev/null; exit 75
"""


def acquire_lock(layout: Layout, token: str, owner: dict[str, object]) -> Cmd:
    if not TOKEN.match(token):
        raise ValueError("lock token must be 32 hex digits")
    return _script(
        "lock.acquire",
        LOCK_SCRIPT,
        [_p(layout.lock), token, json.dumps(owner, sort_keys=True)],
        f"acquire lock {layout.lock}",
    )


RELEASE_LOCK_SCRIPT = r"""
[ -d "$1" ] || exit 0
[ "$(cat -- "$1/token" 2>/dev/null)" = "$2" ] || { echo "lock is held by another owner"; exit 75; }
rm -rf -- "$1"
"""


def release_lock(layout: Layout, token: str) -> Cmd:
    """Only the owner (who knows the token) removes the lock."""
    if not TOKEN.match(token):
        raise ValueError("lock token must be 32 hex digits")
    return _script(
        "lock.release", RELEASE_LOCK_SCRIPT, [_p(layout.lock), token], f"release lock {layout.lock}"
    )


BREAK_LOCK_SCRIPT = r"""
[ -d "$1" ] || exit 0
[ "$(cat -- "$1/owner.json" 2>/dev/null)" = "$2" ] || { echo "the lock changed hands"; exit 75; }
mv -T -- "$1" "$1.broken-$3" && rm -rf -- "$1.broken-$3"
"""


def break_lock(layout: Layout, expected_owner: str, nonce: str) -> Cmd:
    """Remove a lock whose holder we judged (stale, or --force): only if it is still that
    holder's — the rename is atomic, so a new owner's lock is never removed."""
    if not TOKEN.match(nonce):
        raise ValueError("nonce must be 32 hex digits")
    return _script(
        "lock.break",
        BREAK_LOCK_SCRIPT,
        [_p(layout.lock), expected_owner, nonce],
        f"break lock {layout.lock}",
    )


def append_journal(layout: Layout, entries: Iterable[dict[str, object]]) -> Cmd:
    lines = [json.dumps(e, sort_keys=True, separators=(",", ":")) for e in entries]
    for line in lines:
        if "\n" in line:
            raise ValueError("journal lines must not contain newlines")
    return _script(
        "journal.append",
        'j="$1"; shift; printf \'%s\\n\' "$@" >> "$j"',
        [_p(layout.journal), *lines],
        f"append {len(lines)} entr{'y' if len(lines) == 1 else 'ies'} to {layout.journal}",
    )


# ---------------------------------------------------------------- ship

EXTRACT_SCRIPT = r"""
set -e
upload="$1"; sha="$2"; partial="$3"
actual=$(sha256sum -- "$upload" | cut -d' ' -f1)
if [ "$actual" != "$sha" ]; then
  echo "sha256 mismatch: expected $sha, got $actual"; rm -f -- "$upload"; exit 76
fi
rm -rf -- "$partial"; mkdir -p -- "$partial"
tar -xzf "$upload" -C "$partial" --no-same-owner --no-same-permissions --delay-directory-restore
rm -f -- "$upload"
"""


def verify_and_extract(upload: PurePosixPath, sha256: str, partial: PurePosixPath) -> Cmd:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return _script(
        "release.extract",
        EXTRACT_SCRIPT,
        [_p(upload), sha256, _p(partial)],
        f"verify sha256 {sha256[:12]}… and extract into {partial}",
    )


LINK_SHARED_SCRIPT = r"""
set -e
shared="$1"; release="$2"; shift 2
while [ $# -gt 0 ]; do
  kind="$1"; rel="$2"; shift 2
  if [ "$kind" = dir ]; then
    mkdir -p -- "$shared/$rel"
  elif [ ! -e "$shared/$rel" ]; then
    echo "shared file $shared/$rel does not exist: create it on the host (mode 0600 for secrets)"
    exit 3
  fi
  rm -rf -- "$release/$rel"
  mkdir -p -- "$(dirname -- "$release/$rel")"
  ln -s -- "$shared/$rel" "$release/$rel"
done
"""


def link_shared(
    layout: Layout, partial: PurePosixPath, files: Sequence[str], dirs: Sequence[str]
) -> Cmd:
    pairs: list[str] = []
    for d in dirs:
        pairs += ["dir", _p(d)]
    for f in files:
        pairs += ["file", _p(f)]
    return _script(
        "release.link_shared",
        LINK_SHARED_SCRIPT,
        [_p(layout.shared), _p(partial), *pairs],
        f"link shared {', '.join([*dirs, *files]) or '(nothing)'} into {partial.name}",
    )


WRITE_SCRIPT = r"""
set -e; umask 077
printf '%s' "$2" > "$1.tmp"; chmod "$3" "$1.tmp"; mv -f -- "$1.tmp" "$1"
"""


def write_file(path: PurePosixPath, content: str, *, mode: str = "0644", label: str = "") -> Cmd:
    if mode not in {"0600", "0640", "0644"}:
        raise ValueError(f"unexpected file mode {mode}")
    return _script(
        "file.write",
        WRITE_SCRIPT,
        [_p(path), content, mode],
        f"write {label or path}",
    )


def write_manifest(release_dir: PurePosixPath, manifest: Manifest) -> Cmd:
    body = json.dumps(manifest.as_dict(), indent=2, sort_keys=True) + "\n"
    return write_file(
        release_dir / ".release.json", body, label=f"{release_dir.name}/.release.json"
    )


def run_install(partial: PurePosixPath, install: str) -> Cmd:
    # The install command is the user's own shell line; it reaches the host as one quoted
    # argument of `sh -c`, never spliced into our text.
    return _cmd(
        "release.install",
        ["sh", "-c", install],
        display=f"(in {partial.name}) {install}",
        cwd=_p(partial),
    )


REUSE_OR_INSTALL_SCRIPT = r"""
prev="$1"; partial="$2"; lockfile="$3"; dir="$4"; install="$5"
if [ -n "$prev" ] && [ -d "$prev/$dir" ] && [ -f "$prev/$lockfile" ] \
   && [ -f "$partial/$lockfile" ] && cmp -s -- "$prev/$lockfile" "$partial/$lockfile"; then
  rm -rf -- "$partial/$dir"
  if cp -al -- "$prev/$dir" "$partial/$dir"; then echo "@@deps-reused"; exit 0; fi
  rm -rf -- "$partial/$dir"
fi
cd -- "$partial" && sh -c "$install"
"""
DEPS_REUSED = "@@deps-reused"


def reuse_or_install(
    previous: PurePosixPath | None,
    partial: PurePosixPath,
    install: str,
    *,
    lockfile: str,
    deps_dir: str,
) -> Cmd:
    """Hard-link the previous release's dependencies when its lockfile is byte-identical
    (no install at all), else run the install command. `previous=None` forces the install."""
    return _script(
        "release.install",
        REUSE_OR_INSTALL_SCRIPT,
        [_p(previous) if previous else "", _p(partial), _p(lockfile), _p(deps_dir), install],
        f"(in {partial.name}) "
        + (
            f"reuse {deps_dir} of {previous.name} if {lockfile} is unchanged, else: "
            if previous
            else ""
        )
        + install,
    )


def finalize_release(partial: PurePosixPath, release_dir: PurePosixPath) -> Cmd:
    return _cmd(
        "release.finalize",
        ["mv", "-T", "--", _p(partial), _p(release_dir)],
        display=f"mv -T {partial.name} {release_dir.name}",
    )


def remove_partial(partial: PurePosixPath) -> Cmd:
    if not partial.name.endswith(".partial"):
        raise ValueError(f"refusing to remove {partial}: not a partial release")
    return _cmd("release.remove_partial", ["rm", "-rf", "--", _p(partial)])


def remove_upload(upload: PurePosixPath) -> Cmd:
    return _cmd("upload.remove", ["rm", "-f", "--", _p(upload)])


# ---------------------------------------------------------------- activate

SWITCH_SCRIPT = r"""
set -e
cd -- "$1"
[ -f "releases/$2/.release.json" ] || { echo "releases/$2 is not a complete release"; exit 3; }
ln -s -- "releases/$2" "current.$3"
mv -T -- "current.$3" current
"""


def switch_current(layout: Layout, release_id: str, nonce: str) -> Cmd:
    """Atomic switch: a new link beside `current`, renamed over it (rename(2)); never ln -sfn."""
    if not TOKEN.match(nonce):
        raise ValueError("nonce must be 32 hex digits")
    return _script(
        "current.switch",
        SWITCH_SCRIPT,
        [_p(layout.root), _release(release_id), nonce],
        f"switch current -> releases/{release_id}",
    )


# $1 release directory, then pids. The directory is resolved on the host (`pwd -P`), so a
# deploy root reached through a symlink (/srv/app -> /data/srv/app) compares equal to what
# /proc/<pid>/cwd shows; the manifest says which revision (and tags) the release was built from.
IDENTITY_SCRIPT = r"""
dir="$1"; shift
echo "@@release $(cd -P -- "$dir" 2>/dev/null && pwd -P || echo -)"
for p in "$@"; do printf '%s %s\n' "$p" "$(readlink "/proc/$p/cwd" 2>/dev/null || echo -)"; done
echo "@@manifest"
cat -- "$dir/.release.json" 2>/dev/null || true
"""


def process_identity(release_dir: PurePosixPath, pids: Sequence[int]) -> Cmd:
    """One read for the identity check: the release directory as the host resolves it, the
    cwd of every pid, and the release's manifest."""
    args = [str(int(p)) for p in pids]
    return _script(
        "process.identity",
        IDENTITY_SCRIPT,
        [_p(release_dir), *args],
        f"read cwd of pids {' '.join(args) or '(none)'} and the manifest of {release_dir.name}",
    )


PRUNE_SCRIPT = r"""
set -e
cd -- "$1/releases"; shift
for id in "$@"; do rm -rf -- "$id"; done
"""


def prune_releases(layout: Layout, names: Sequence[str]) -> Cmd:
    """Remove releases (ids or <id>.partial) by name; every name is validated first."""
    checked = []
    for name in names:
        bare = name.removesuffix(".partial")
        checked.append(f"{_release(bare)}{name[len(bare) :]}")
    return _script(
        "release.prune",
        PRUNE_SCRIPT,
        [_p(layout.root), *checked],
        f"remove {len(checked)} old release(s): {' '.join(checked)}",
    )


PREFLIGHT_SCRIPT = r"""
root="$1"; manager="$2"; migration="$3"; shift 3
existing="$root"
while [ ! -d "$existing" ]; do existing=$(dirname -- "$existing"); done
if [ -d "$root" ]; then
  if [ -w "$root" ]; then echo root=writable; else echo root=not-writable; fi
elif [ -w "$existing" ]; then echo root=creatable; else echo root=not-creatable; fi
echo "free_kb=$(df -Pk -- "$existing" 2>/dev/null | awk 'NR==2 {print $4}')"
if [ -d "$root/.releasegate/lock" ]; then
  echo "lock=$(tr -d '\n' < "$root/.releasegate/lock/owner.json" 2>/dev/null || echo '{}')"
fi
echo "manager=$(command -v "$manager" 2>/dev/null)"
for item in "$@"; do
  case "$item" in
    shared:*) f="${item#shared:}"
      [ -e "$root/shared/$f" ] && echo "shared.$f=$(stat -L -c %a -- "$root/shared/$f")" ;;
    runtime:*) r="${item#runtime:}"
      command -v "$r" >/dev/null 2>&1 && echo "version.$r=$("$r" --version 2>&1 | head -n 1)" ;;
  esac
done
if [ -n "$migration" ]; then
  cd -- "$root/current" 2>/dev/null || cd -- "$root" 2>/dev/null || cd /
  out=$(sh -c "$migration" 2>&1); code=$?
  echo "migration_exit=$code"; echo "migration_tail=$(printf '%s\n' "$out" | tail -n 1)"
fi
exit 0
"""


def preflight_probe(
    layout: Layout,
    *,
    manager: str,
    shared_files: Sequence[str],
    runtimes: Sequence[str],
    migration_check: str | None,
) -> Cmd:
    """One read-only round trip for every host-side preflight fact (deploy.preflight judges)."""
    items = [f"shared:{_p(f)}" for f in shared_files]
    for name in runtimes:
        if not name.replace("-", "").replace("_", "").isalnum() or name.startswith("-"):
            raise ValueError(f"not a runtime name: {name!r}")
        items.append(f"runtime:{name}")
    return _script(
        "preflight.probe",
        PREFLIGHT_SCRIPT,
        [_p(layout.root), _p(manager), migration_check or "", *items],
        f"preflight probe of {layout.root}"
        + (f" (runs the migration check `{migration_check}`)" if migration_check else ""),
    )


INSTALL_ENV_SCRIPT = r"""
set -e
chmod 0600 -- "$1"
mkdir -p -- "$(dirname -- "$2")"
mv -f -- "$1" "$2"
"""


def install_env_file(upload: PurePosixPath, layout: Layout) -> Cmd:
    """Move an uploaded env file (in the 0700 uploads dir) to shared/.env, mode 0600."""
    return _script(
        "secrets.install",
        INSTALL_ENV_SCRIPT,
        [_p(upload), _p(layout.shared / ".env")],
        f"install {layout.shared}/.env (mode 0600)",
    )
