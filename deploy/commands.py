"""Remote commands as data: pure builders that return `Cmd` values. Nothing here runs anything.

Every value that reaches the remote shell goes through `Cmd.render`, the one place that
quotes (shlex). Multi-step host logic is a constant `sh -c` script whose inputs arrive as
quoted positional parameters ($1, $2, …), so no value is ever spliced into script text.
Each builder has a `name` (what tests and the fake host key on) and a masked `display`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from deploy.model import RELEASE_ID, TOKEN, Layout, Manifest

# Exit code our scripts use to say "the lock is held" (EX_TEMPFAIL), distinct from failures.
LOCK_HELD = 75
# Exit code for "checksum mismatch" from the extract script.
CHECKSUM_MISMATCH = 76
# Seconds between the host's TERM and its KILL for a step bounded with `bounded` (timeout -k).
KILL_AFTER = 5
# Exit codes of coreutils `timeout` when it stopped the command (TERM, then KILL).
TIMED_OUT = (124, 137)
# Seconds past the end of a lease before anyone may break the lock. The holder renews only a
# lease that has not ended, so between the last possible renewal and the first possible break
# there are always these seconds: a break never races a renewal (see LOCK_RENEW_SCRIPT).
LEASE_GRACE = 2


@dataclass(frozen=True)
class Cmd:
    name: str
    argv: tuple[str, ...]
    display: str
    cwd: str | None = None
    steps: tuple[Cmd, ...] = ()  # a batch: these run in order, in one round trip
    # What the command reads on stdin (journal records): data that must not be visible in
    # `ps` on the host travels here, never in argv. A batch reads its steps' stdin in order.
    stdin: str | None = field(default=None, repr=False)
    # Seconds the host lets this step run (it runs under coreutils `timeout`, see `bounded`).
    limit: float | None = None

    def render(self) -> str:
        if self.steps:
            # Each step in its own subshell (a `cd` stays local), announced on stderr so a
            # failure can be pinned to its step; the first failure stops the batch. A step
            # that reads no stdin gets /dev/null, so it cannot swallow a later step's input.
            return " && ".join(
                f"echo {STEP_MARK}{step.name} >&2 && ( {step.render()} )"
                + ("" if step.stdin is not None else " </dev/null")
                for step in self.steps
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
    stdin = "".join(step.stdin for step in flat if step.stdin is not None)
    return Cmd(
        name=name,
        argv=(),
        display=display,
        steps=tuple(flat),
        stdin=stdin if any(step.stdin is not None for step in flat) else None,
    )


def bounded(cmd: Cmd, seconds: float) -> Cmd:
    """`cmd` under the host's coreutils `timeout`: TERM to its whole process group after
    `seconds`, KILL KILL_AFTER seconds later. The client waits a little longer than that
    (`client_deadline`), so a step the client gave up on — deadline, signal, lost link —
    cannot run on on the host: the host stops it by itself."""
    if cmd.steps:
        raise ValueError("bound the steps of a batch, not the batch")
    if not 0 < seconds <= 86400:
        raise ValueError(f"a host-side limit must be 0 < seconds <= 86400, not {seconds}")
    return replace(
        cmd,
        argv=("timeout", "-k", str(KILL_AFTER), f"{seconds:g}", *cmd.argv),
        limit=seconds,
    )


def client_deadline(cmd: Cmd, short: float) -> float:
    """How long the client waits for `cmd`: `short` for the round trip and its quick steps,
    plus each bounded step's host-side limit and kill grace — so the host's `timeout` fires
    (and names the step) before the client gives up."""
    return short + sum(s.limit + KILL_AFTER for s in (cmd.steps or (cmd,)) if s.limit is not None)


def shown(cmd: Cmd) -> tuple[str, ...]:
    """What `-v` prints for `cmd`: every command that runs on the host (each step of a batch),
    as it runs — its real arguments (the reporter masks secrets) and working directory, with
    a constant script named instead of spelled out (`<script NAME>`; its text is in the
    source) so that one line stays one line."""
    lines = []
    for step in cmd.steps or (cmd,):
        argv = list(step.argv)
        line = shlex.join(argv)
        for i in range(len(argv) - 3):
            if argv[i : i + 2] == ["sh", "-c"] and argv[i + 3] == "releasegate":
                before, after = shlex.join(argv[:i]), shlex.join(argv[i + 4 :])
                line = " ".join(
                    part for part in (before, f"sh -c <script {step.name}>", after) if part
                )
                break
        if step.cwd is not None:
            line = f"cd {shlex.quote(step.cwd)} && {line}"
        lines.append(line)
    return tuple(lines)


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


# The holder of a lock as one owner.json line and one `lease <instance> <age> <ttl>` line (age
# since the last renewal by the host's own clock, so two machines' clocks never disagree).
# `lease <instance> - -`: no lease (a manual lock). A lock made by an older releasegate
# (lock/owner.json, no instance) prints its owner line only.
LOCK_VIEW = r"""
lock_view() {
  for d in "$1"/*/; do
    [ -f "${d}owner.json" ] || continue
    id=${d%/}; id=${id##*/}
    tr -d '\n' < "${d}owner.json"; echo
    if [ -f "${d}lease" ]; then
      echo "lease $id $(( $(date +%s) - $(stat -c %Y -- "${d}lease") )) $(cat -- "${d}lease")"
    else
      echo "lease $id - -"
    fi
    return 0
  done
  if [ -f "$1/owner.json" ]; then tr -d '\n' < "$1/owner.json"; echo; fi
  return 0
}
"""

STATE_SCRIPT = (
    LOCK_VIEW
    + r"""
cd -- "$1" 2>/dev/null || { echo "@@missing-root"; exit 0; }
echo "@@current"; readlink current 2>/dev/null || true
# `current` that is not a link (made by hand): no switch can replace a directory
if [ ! -L current ] && [ -e current ]; then
  echo "@@current-kind"; if [ -d current ]; then echo directory; else echo file; fi
fi
echo "@@releases"; ls -1 releases 2>/dev/null || true
# a release directory without its manifest (written last) cannot be activated
echo "@@incomplete"
for d in releases/*/; do
  d=${d%/}; d=${d#releases/}
  case "$d" in *.partial|"*") continue ;; esac
  [ -f "releases/$d/.release.json" ] || echo "$d"
done
echo "@@lock"; lock_view .releasegate/lock
echo "@@journal"; cat .releasegate/journal.jsonl 2>/dev/null || true
printf '\n@@smoke\n'; seen=" "  # (a newline first: the journal may end in a torn line)
for f in releases/*/.releasegate/smoke.json; do
  [ -f "$f" ] || continue
  rid=${f#releases/}; rid=${rid%%/*}
  case "$rid" in *.partial) continue ;; esac
  sum=$(sha256sum < "$f" | cut -c1-64)
  recorded=$(sed -n 's/^ *"smoke_sha256": "\([0-9a-f]*\)".*/\1/p' \
    "releases/$rid/.release.json" 2>/dev/null)
  echo "$rid $sum ${recorded:--}"
  case "$seen" in *" $sum "*) ;; *) seen="$seen$sum "; echo "=$sum"; head -n 1 -- "$f" ;; esac
done
echo "@@slots"  # blue/green: the release each slot runs (deploy/slots.py)
for s in blue green; do echo "$s $(readlink ".releasegate/slots/$s" 2>/dev/null)"; done
# blue/green: the front door's upstream file (deploy/proxy.py); no section without one
f=.releasegate/nginx/upstream.conf
if [ -f "$f" ]; then echo "@@upstream"; cat -- "$f"; echo; fi
"""
)


def read_state(layout: Layout) -> Cmd:
    """One round trip for everything the flow decides from: current, releases, lock, journal,
    and the smoke packs each release carries (each distinct bundle once, with its hash and the
    hash its manifest recorded), so that any release can be gated by its own packs."""
    return _script("state.read", STATE_SCRIPT, [_p(layout.root)], f"read state of {layout.root}")


# The lock is `.releasegate/lock/<instance>/` (token, owner.json, lease). The instance name
# is what makes every change of the lock a single rename(2) that can only ever touch one
# holder: acquiring renames a complete staging directory onto `lock`, which the kernel allows
# only while `lock` is absent or empty; releasing and breaking rename `lock/<instance>` away,
# which fails if that holder is already gone — a newer holder lives under another name.
# Nothing is ever checked and then removed by a fixed name.

LOCK_SCRIPT = (
    LOCK_VIEW
    + r"""
lock="$1"; id="$2"; stage="$1.new-$2"
rm -rf -- "$stage"
if ! { mkdir -p -- "$stage/$id" && printf '%s\n' "$3" > "$stage/$id/token" \
       && printf '%s\n' "$4" > "$stage/$id/owner.json" \
       && { [ "$5" = 0 ] || printf '%s\n' "$5" > "$stage/$id/lease"; }; }; then
  rm -rf -- "$stage"; echo "could not prepare $stage"; exit 1
fi
for attempt in 1 2 3; do
  if mv -T -- "$stage" "$lock" 2>/dev/null; then exit 0; fi
  [ -d "$lock" ] && break
done
rm -rf -- "$stage"
if [ -e "$lock" ] && [ ! -d "$lock" ]; then
  # not a holder that will ever go away, and nothing `unlock --force` may remove
  echo "$lock is a file, not a lock releasegate made (its locks are directories); nothing" \
    "was changed. Look at it, remove it on the host (rm -- $lock) and run again" >&2
  exit 1
fi
lock_view "$lock"
exit 75
"""
)


def lock_instance(token: str) -> str:
    """The lock's directory name for a token: public (breaking needs it), while the token that
    releases the lock stays secret."""
    if not TOKEN.match(token):
        raise ValueError("lock token must be 32 hex digits")
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _instance(instance: str) -> str:
    if len(instance) != 16 or any(c not in "0123456789abcdef" for c in instance):
        raise ValueError(f"not a lock instance: {instance!r}")
    return instance


def acquire_lock(layout: Layout, token: str, owner: dict[str, object], lease_s: int = 0) -> Cmd:
    """Take the lock with a lease of `lease_s` seconds (0: none — a manual lock, held until
    unlocked). On contention: exit LOCK_HELD and the holder's `lock_view` on stdout."""
    if not 0 <= lease_s <= 86400:
        raise ValueError(f"lease must be 0..86400 seconds, not {lease_s}")
    return _script(
        "lock.acquire",
        LOCK_SCRIPT,
        [
            _p(layout.lock),
            lock_instance(token),
            token,
            json.dumps(owner, sort_keys=True),
            str(int(lease_s)),
        ],
        f"acquire lock {layout.lock}",
    )


RELEASE_LOCK_SCRIPT = r"""
lock="$1"; id="$2"; grave="$1.released-$4"
[ "$(cat -- "$lock/$id/token" 2>/dev/null)" = "$3" ] || { echo "@@gone"; exit 0; }
mv -T -- "$lock/$id" "$grave" 2>/dev/null || { echo "@@gone"; exit 0; }
rmdir -- "$lock" 2>/dev/null
rm -rf -- "$grave"
echo "@@released"
"""
LOCK_GONE = "@@gone"


def release_lock(layout: Layout, token: str, nonce: str) -> Cmd:
    """Only the owner (who knows the token) removes its own lock instance; prints LOCK_GONE
    when it was no longer there (broken after the lease lapsed)."""
    if not TOKEN.match(nonce):
        raise ValueError("nonce must be 32 hex digits")
    return _script(
        "lock.release",
        RELEASE_LOCK_SCRIPT,
        [_p(layout.lock), lock_instance(token), token, nonce],
        f"release lock {layout.lock}",
    )


BREAK_LOCK_SCRIPT = r"""
lock="$1"; id="$2"; mode="$3"; grave="$1.broken-$4"; grace="$5"
if [ -z "$id" ]; then
  # A lock made by an older releasegate (no instance, no lease): by force only, and only if
  # it still has the owner record the caller judged.
  [ "$mode" = any ] || { echo "no lease: held until unlocked"; exit 75; }
  [ "$(tr -d '\n' < "$lock/owner.json" 2>/dev/null)" = "$6" ] \
    || { echo "the lock changed hands"; exit 75; }
  mv -T -- "$lock" "$grave" || exit 75
  rm -rf -- "$grave"; echo "@@broken"; exit 0
fi
[ -d "$lock/$id" ] || { echo "@@gone"; exit 0; }
if [ "$mode" = expired ]; then
  [ -f "$lock/$id/lease" ] || { echo "no lease: held until unlocked"; exit 75; }
  ttl=$(cat -- "$lock/$id/lease") || exit 75
  age=$(( $(date +%s) - $(stat -c %Y -- "$lock/$id/lease") ))
  [ "$age" -gt $(( ttl + grace )) ] \
    || { echo "the lease is live for $(( ttl + grace - age ))s more"; exit 75; }
fi
mv -T -- "$lock/$id" "$grave" 2>/dev/null || { echo "@@gone"; exit 0; }
rmdir -- "$lock" 2>/dev/null
rm -rf -- "$grave"
echo "@@broken"
"""
LOCK_BROKEN = "@@broken"


def break_lock(
    layout: Layout, instance: str | None, nonce: str, *, force: bool, legacy_owner: str = ""
) -> Cmd:
    """Remove one holder's lock instance in one rename: only once its lease has ended (by the
    host's clock, LEASE_GRACE included), or with `force` (its process is known dead, or an
    operator said so). Prints LOCK_BROKEN when it removed it; a newer holder is never touched.
    `instance=None`: a lock made by an older releasegate, matched by its owner record."""
    if not TOKEN.match(nonce):
        raise ValueError("nonce must be 32 hex digits")
    return _script(
        "lock.break",
        BREAK_LOCK_SCRIPT,
        [
            _p(layout.lock),
            _instance(instance) if instance is not None else "",
            "any" if force else "expired",
            nonce,
            str(LEASE_GRACE),
            legacy_owner,
        ],
        f"break lock {layout.lock}" + ("" if force else " (if its lease has ended)"),
    )


LOCK_RENEW_SCRIPT = r"""
f="$1/$2/lease"
ttl=$(cat -- "$f" 2>/dev/null) \
  || { echo "the lock is no longer ours (released or broken)"; exit 75; }
age=$(( $(date +%s) - $(stat -c %Y -- "$f") ))
# An ended lease is never revived: once anyone may break it, it stays breakable.
[ "$age" -le "$ttl" ] \
  || { echo "the lease ended ${age}s after its last renewal (${ttl}s)"; exit 75; }
touch -c -- "$f"
"""


def renew_lease(layout: Layout, token: str) -> Cmd:
    """Extend the lease by touching it (its mtime, by the host's clock, is the last renewal);
    fails (LOCK_HELD) when the lock is no longer ours or its lease already ended."""
    return _script(
        "lock.renew",
        LOCK_RENEW_SCRIPT,
        [_p(layout.lock), lock_instance(token)],
        f"renew the lease of {layout.lock}",
    )


JOURNAL_APPEND_SCRIPT = r"""
j="$1"; n="$2"; records=""
while [ "$n" -gt 0 ]; do
  IFS= read -r line || { echo "expected $2 journal record(s) on stdin"; exit 3; }
  records="$records$line
"
  n=$((n - 1))
done
# A writer killed mid-line leaves a torn last line: start on a fresh line, so only the torn
# record is lost and this one stays whole.
if [ -s "$j" ] && [ -n "$(tail -c 1 -- "$j")" ]; then records="
$records"; fi
[ -e "$j" ] || new=1
printf '%s' "$records" >> "$j" || exit 1
# Durable before anything that depends on it (the switch of `current`) runs.
sync -- "$j" || exit 1
if [ -n "$new" ]; then sync -- "$(dirname -- "$j")"; fi
"""


def append_journal(layout: Layout, entries: Iterable[dict[str, object]]) -> Cmd:
    """Append records; they travel on stdin (never in argv, which `ps` shows on the host)."""
    lines = [json.dumps(e, sort_keys=True, separators=(",", ":")) for e in entries]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError("journal lines must not contain newlines")
    return Cmd(
        name="journal.append",
        argv=(
            "sh",
            "-c",
            JOURNAL_APPEND_SCRIPT,
            "releasegate",
            _p(layout.journal),
            str(len(lines)),
        ),
        display=f"append {len(lines)} entr{'y' if len(lines) == 1 else 'ies'} to {layout.journal}",
        stdin="".join(line + "\n" for line in lines),
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


# $1 marker, then a read-only command: "<marker> <its exit code>", then its stdout; never a
# failure of the batch it ends (the activation: its outcome is the reload's; the gate judges
# the read, and a read the host's `timeout` stopped is a process manager that did not answer).
QUIET_READ_SCRIPT = r"""
marker="$1"; shift
out=$("$@" 2>/dev/null); code=$?
printf '%s %s\n%s\n' "$marker" "$code" "$out"
exit 0
"""


def quiet_read(read: Cmd, marker: str, seconds: float) -> Cmd | None:
    """`read` at the end of a batch, bounded on the host by `seconds`, its exit code and
    output after `marker` (QUIET_READ_SCRIPT); None when `read` cannot be wrapped."""
    if read.steps or read.cwd is not None:
        return None
    if not marker or not all(c.isalnum() or c in "@-" for c in marker):
        raise ValueError(f"a marker is a plain word, not {marker!r}")
    inner = bounded(read, seconds)
    cmd = _script("read.quiet", QUIET_READ_SCRIPT, [marker, *inner.argv], read.display)
    return replace(cmd, limit=seconds)


# The file arrives on stdin (binary; the client writes it and closes stdin): created
# owner-only, its mode set only once it is complete; a transfer cut short leaves no file.
RECEIVE_SCRIPT = r"""
umask 077
if cat > "$1.part" && chmod "$2" -- "$1.part" && mv -f -- "$1.part" "$1"; then exit 0; fi
rm -f -- "$1.part"; exit 1
"""


def receive_file(path: PurePosixPath, mode: int) -> Cmd:
    """Receive an upload on stdin into `path` with `mode` (an exec session: two round trips
    fewer than an SFTP session's open, init, open, write, close and chmod)."""
    if not 0 <= mode <= 0o777:
        raise ValueError(f"a file mode is 0..0o777, not {mode:o}")
    return _script("file.receive", RECEIVE_SCRIPT, [_p(path), f"{mode:04o}"], f"upload {path}")


# One shell session carries every command of a connection (deploy/session.py): one exec
# instead of one per command, so a command costs one round trip on the wire (no channel to
# open, no exec to answer, no window to wait for before its stdin, no CHANNEL_CLOSE to answer).
# $1 is the session's nonce; `$2 $3` (a limit and a command line) are the first command, which
# rides on the exec request itself. Each later command arrives on stdin as a frame:
#     "<limit> <line bytes> <stdin bytes>\n" <line> <stdin>
# read with GNU `head -c`, which never reads past its count, so a command that leaves its stdin
# unread cannot swallow the next frame (the rest is drained). A command reads exactly its own
# stdin (none: /dev/null), runs as `sh -c <line>` — what an exec request would run — under
# `timeout` with the client's deadline (the host stops what the client gave up on), and is
# followed by "\n@@rg-done:<nonce>:<exit>\n" on stdout and on stderr, so the client knows where
# its output ends, whatever bytes came before. Stdin's EOF (the client left) ends the loop.
SESSION_SCRIPT = r"""
n=$1; shift
end() { printf '\n@@rg-done:%s:%s\n' "$n" "$1"; printf '\n@@rg-done:%s:%s\n' "$n" "$1" >&2; }
if [ $# -ge 2 ]; then timeout -k 5 "$1" sh -c "$2" </dev/null; end $?; fi
while IFS=' ' read -r limit clen slen; do
  line=$(head -c "$clen"; printf x); line=${line%x}
  [ "$(head -c 32)" = "$n" ] || exit 1
  if [ "$slen" -gt 0 ]; then
    head -c "$slen" | { timeout -k 5 "$limit" sh -c "$line"; rc=$?; cat >/dev/null; exit "$rc"; }
  else
    timeout -k 5 "$limit" sh -c "$line" </dev/null
  fi
  end $?
done
"""
DONE_MARK = "@@rg-done:"


def shell_session(nonce: str, first: str | None = None, limit: int = 0) -> Cmd:
    """The long-lived shell session (SESSION_SCRIPT), optionally running `first` (a rendered
    command line with no stdin) at once, bounded by `limit` seconds on the host."""
    if not (len(nonce) == 32 and nonce.isalnum()):
        raise ValueError(f"a session nonce is letters and digits, not {nonce!r}")
    args = [nonce] if first is None else [nonce, str(max(1, limit)), first]
    return _script("session", SESSION_SCRIPT, args, "shell session")


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


DEPS_SCRIPT = r"""
src="$1"; partial="$2"; lockfile="$3"; manifest="$4"; dir="$5"; install="$6"; shift 6
cd -- "$partial" || exit 1
digest() { if [ -f "$1" ]; then sha256sum < "$1" | cut -c1-64; else echo absent; fi; }
key=$({
  echo "releasegate deps key 1"
  printf 'install %s\ndir %s\nsystem %s\n' "$install" "$dir" "$(uname -sm)"
  printf 'lockfile %s %s\nmanifest %s %s\n' "$lockfile" "$(digest "$lockfile")" \
    "$manifest" "$(digest "$manifest")"
  for runtime in "$@"; do
    printf 'runtime %s %s\n' "$runtime" "$("$runtime" --version 2>/dev/null | head -n 1)"
  done
} | sha256sum | cut -c1-64)
mkdir -p .releasegate
if [ -n "$src" ] && [ "$(cat -- "$src/.releasegate/deps.key" 2>/dev/null)" = "$key" ]; then
  if [ ! -e "$src/$dir" ]; then
    printf '%s\n' "$key" > .releasegate/deps.key; echo "@@deps-reused none"; exit 0
  fi
  rm -rf -- "$dir"
  if cp -a --reflink=auto -- "$src/$dir" "$dir"; then
    printf '%s\n' "$key" > .releasegate/deps.key; echo "@@deps-reused copy"; exit 0
  fi
  rm -rf -- "$dir"
fi
sh -c "$install" || exit $?
printf '%s\n' "$key" > .releasegate/deps.key
"""
DEPS_REUSED = "@@deps-reused"


def reuse_or_install(
    source: PurePosixPath | None,
    partial: PurePosixPath,
    install: str,
    *,
    lockfile: str,
    manifest: str,
    deps_dir: str,
    runtimes: Sequence[str] = (),
) -> Cmd:
    """Install the release's dependencies, or reuse those of `source` (a good release) when
    both have the same dependency key: the lockfile, the package manifest, the install
    command, the deps dir, the runtimes' versions on the host and the system. The key is
    stored in the release (DEPS_KEY). A reused tree is a copy (`cp -a --reflink=auto`:
    copy-on-write where the filesystem can), so writing into the new release's tree can never
    change the rollback target's; with no deps dir in `source`, nothing is copied (nothing to
    install). `source=None` forces the install."""
    for name in runtimes:
        if not name.replace("-", "").replace("_", "").isalnum() or name.startswith("-"):
            raise ValueError(f"not a runtime name: {name!r}")
    reuse = (
        f"reuse {deps_dir} of {source.name} if the dependency key is the same, else: "
        if source
        else ""
    )
    return _script(
        "release.install",
        DEPS_SCRIPT,
        [
            _p(source) if source else "",
            _p(partial),
            _p(lockfile),
            _p(manifest),
            _p(deps_dir),
            install,
            *runtimes,
        ],
        f"(in {partial.name}) " + reuse + install,
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


def remove_uploads(uploads: Sequence[PurePosixPath]) -> Cmd:
    return _cmd("upload.remove", ["rm", "-f", "--", *(_p(u) for u in uploads)])


CLEAN_UPLOADS_SCRIPT = r"""
cd -- "$1" || exit 0
shift
for f in * .[!.]*; do
  [ -e "$f" ] || continue
  keep=no
  for mine in "$@"; do [ "$f" = "$mine" ] && keep=yes; done
  [ "$keep" = yes ] || { rm -rf -- "$f"; echo "removed leftover upload $f"; }
done
exit 0
"""


def clean_uploads(layout: Layout, keep: Sequence[PurePosixPath]) -> Cmd:
    """Under the lock, anything in the uploads dir but this run's own files is a leftover of
    a run that died mid-ship (an artifact, an env file with secrets): remove it."""
    names = [PurePosixPath(_p(k)).name for k in keep]
    return _script(
        "uploads.clean",
        CLEAN_UPLOADS_SCRIPT,
        [_p(layout.uploads), *names],
        f"remove leftover uploads in {layout.uploads}",
    )


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


# $1 deploy root, $2 release id. Exit 3 (and what it points to) when `current` is elsewhere.
CURRENT_CHECK_SCRIPT = r"""
now=$(readlink -- "$1/current") || now=""
[ "$now" = "releases/$2" ] && exit 0
echo "current points to ${now:-nothing}"
exit 3
"""


def current_is(layout: Layout, release_id: str) -> Cmd:
    """Fails unless `current` still points to the release: someone may have switched it by
    hand while the release was being gated."""
    return _script(
        "current.check",
        CURRENT_CHECK_SCRIPT,
        [_p(layout.root), _release(release_id)],
        f"check that current -> releases/{release_id}",
    )


# $1 deploy root, $2 slot, $3 release id, $4 the slot's port, $5 nonce. The env file first
# (the slot's processes read it when they start), then the link, renamed over the old one.
LINK_SLOT_SCRIPT = r"""
set -e
cd -- "$1"
slot="$2"; rid="$3"; port="$4"; nonce="$5"; dir=.releasegate/slots
if [ ! -f "releases/$rid/.release.json" ]; then
  echo "releases/$rid is not a complete release" >&2; exit 3
fi
mkdir -p -- "$dir"
printf '# set by releasegate for the %s slot, read after the release env snapshot\n' "$slot" \
  > "$dir/$slot.env.$nonce"
printf 'PORT=%s\nRELEASEGATE_SLOT=%s\n' "$port" "$slot" >> "$dir/$slot.env.$nonce"
mv -f -- "$dir/$slot.env.$nonce" "$dir/$slot.env"
ln -s -- "../../releases/$rid" "$dir/$slot.$nonce"
mv -T -- "$dir/$slot.$nonce" "$dir/$slot"
"""


def link_slot(layout: Layout, slot: str, release_id: str, port: int, nonce: str) -> Cmd:
    """Point the slot at a complete release (`slots/<slot>` -> ../../releases/<id>, renamed
    over the old link) and write its env file (PORT); the process manager then starts it."""
    if not TOKEN.match(nonce):
        raise ValueError("nonce must be 32 hex digits")
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"not a TCP port: {port!r}")
    return _script(
        "slot.link",
        LINK_SLOT_SCRIPT,
        [_p(layout.root), layout.slot_link(slot).name, _release(release_id), str(port), nonce],
        f"point slot {slot} (:{port}) at releases/{release_id}",
    )


def unlink_slot(layout: Layout, slot: str) -> Cmd:
    """The slot runs nothing any more (after its processes were stopped)."""
    return _cmd("slot.unlink", ["rm", "-f", "--", _p(layout.slot_link(slot))])


# $1 release directory, then pids. The directory is resolved on the host (`pwd -P`), so a
# deploy root reached through a symlink (/srv/app -> /data/srv/app) compares equal to what
# /proc/<pid>/cwd shows; the manifest says which revision (and tags) the release was built from.
IDENTITY_SCRIPT = r"""
dir="$1"; shift
echo "@@release $(cd -P -- "$dir" 2>/dev/null && pwd -P || echo -)"
for p in "$@"; do printf '%s %s\n' "$p" "$(readlink "/proc/$p/cwd" 2>/dev/null || echo -)"; done
echo "@@current $(readlink -- "$dir/../../current" 2>/dev/null || echo -)"
echo "@@manifest"
cat -- "$dir/.release.json" 2>/dev/null || true
"""


def process_identity(release_dir: PurePosixPath, pids: Sequence[int]) -> Cmd:
    """One read for the identity check: the release directory as the host resolves it, the
    cwd of every pid, where the deploy root's `current` points, and the release's manifest."""
    args = [str(int(p)) for p in pids]
    return _script(
        "process.identity",
        IDENTITY_SCRIPT,
        [_p(release_dir), *args],
        f"read cwd of pids {' '.join(args) or '(none)'} and the manifest of {release_dir.name}",
    )


def echo_marker(marker: str) -> Cmd:
    """A line that separates two steps' output in a batch (a word of letters, digits, @, -)."""
    if not marker or not all(c.isalnum() or c in "@-" for c in marker):
        raise ValueError(f"a marker is a plain word, not {marker!r}")
    return _cmd("batch.marker", ["echo", marker], display=f"echo {marker}")


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


PREFLIGHT_SCRIPT = (
    LOCK_VIEW
    + r"""
root="$1"; manager="$2"; migration="$3"; limit="$4"; shift 4
existing="$root"
while [ ! -d "$existing" ]; do existing=$(dirname -- "$existing"); done
if [ -d "$root" ]; then
  if [ -w "$root" ]; then echo root=writable; else echo root=not-writable; fi
elif [ -w "$existing" ]; then echo root=creatable; else echo root=not-creatable; fi
echo "free_kb=$(df -Pk -- "$existing" 2>/dev/null | awk 'NR==2 {print $4}')"
if [ -d "$root/.releasegate/lock" ]; then
  lock_view "$root/.releasegate/lock" | sed -e '1s/^/lock=/' -e '2s/^lease /lock_lease=/'
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
  # Bounded on the host: a hung check is stopped (with everything it started), not left behind.
  out=$(timeout -k 5 "$limit" sh -c "$migration" 2>&1 </dev/null); code=$?
  echo "migration_exit=$code"; echo "migration_tail=$(printf '%s\n' "$out" | tail -n 1)"
fi
exit 0
"""
)


def preflight_probe(
    layout: Layout,
    *,
    manager: str,
    shared_files: Sequence[str],
    runtimes: Sequence[str],
    migration_check: str | None,
    migration_timeout: float = 120,
) -> Cmd:
    """One read-only round trip for every host-side preflight fact (deploy.preflight judges).
    The migration check runs under the host's `timeout` (exit 124 when it took too long)."""
    items = [f"shared:{_p(f)}" for f in shared_files]
    for name in runtimes:
        if not name.replace("-", "").replace("_", "").isalnum() or name.startswith("-"):
            raise ValueError(f"not a runtime name: {name!r}")
        items.append(f"runtime:{name}")
    if not 0 < migration_timeout <= 86400:
        raise ValueError(f"migration timeout must be 0 < seconds <= 86400: {migration_timeout}")
    cmd = _script(
        "preflight.probe",
        PREFLIGHT_SCRIPT,
        [_p(layout.root), _p(manager), migration_check or "", f"{migration_timeout:g}", *items],
        f"preflight probe of {layout.root}"
        + (f" (runs the migration check `{migration_check}`)" if migration_check else ""),
    )
    return replace(cmd, limit=migration_timeout) if migration_check else cmd


RELEASE_ENV_SCRIPT = r"""
set -e; umask 077
dest="$1"; upload="$2"; shared="$3"; settings="$4"
{
  if [ -n "$upload" ]; then
    cat -- "$upload"; echo
  elif [ -n "$shared" ] && [ -f "$shared" ]; then
    printf '# copied from %s when this release was shipped\n' "$shared"
    cat -- "$shared"; echo
  fi
  printf '%s' "$settings"
} > "$dest.tmp"
chmod 0600 -- "$dest.tmp"
mv -f -- "$dest.tmp" "$dest"
if [ -n "$upload" ]; then rm -f -- "$upload"; fi
"""


def install_release_env(
    dest: PurePosixPath,
    *,
    settings: str,
    upload: PurePosixPath | None = None,
    shared_env: PurePosixPath | None = None,
) -> Cmd:
    """The release's env snapshot (mode 0600): the uploaded secrets (a command's stdin into
    the 0700 uploads dir; moved, never on a command line) — or else a copy of a hand-maintained
    `shared_env` if there is one — then releasegate's `settings` (no secrets), which win."""
    origin = (
        ": uploaded secrets"
        if upload
        else f": a copy of {shared_env} if it exists"
        if shared_env
        else ""
    )
    return _script(
        "release.env",
        RELEASE_ENV_SCRIPT,
        [
            _p(dest),
            _p(upload) if upload else "",
            _p(shared_env) if shared_env else "",
            settings,
        ],
        f"write {dest.parent.name}/{dest.name} (mode 0600" + origin + " + release settings)",
    )


# The release's env snapshot read the way systemd's EnvironmentFile= and the PM2 config read it
# (templates/pm2/ecosystem.config.js.j2, the same state machine), printed as `export K='v'`
# lines that the caller evals: values reach the environment of the migration, never a command
# line, and nothing in the file is ever run as shell code.
ENV_FILE_AWK = r"""
function emit(k, v,   i, c, r) {
  r = ""
  for (i = 1; i <= length(v); i++) { c = substr(v, i, 1); r = r (c == q ? q "\\" q q : c) }
  printf "export %s=%s%s%s\n", k, q, r, q
}
function push(   name) {
  name = key; sub(/^[ \t\r\n]+/, "", name); sub(/[ \t\r\n]+$/, "", name)
  sub(/^export[ \t]+/, "", name)
  if (name ~ /^[A-Za-z_][A-Za-z0-9_]*$/) emit(name, val)
  key = ""; val = ""; trail = -1; st = "pre-key"
}
function blank(c) { return c == " " || c == "\t" || c == "\n" || c == "\r" }
BEGIN { q = sprintf("%c", 39); st = "pre-key"; key = ""; val = ""; trail = -1 }
{
  text = $0 "\n"
  for (i = 1; i <= length(text); i++) {
    c = substr(text, i, 1); nl = (c == "\n" || c == "\r")
    if (st == "pre-key") {
      if (c == "#" || c == ";") st = "comment"; else if (!blank(c)) { st = "key"; key = c }
    } else if (st == "key") {
      if (nl) { st = "pre-key"; key = "" }
      else if (c == "=") { st = "pre-value"; val = ""; trail = -1 }
      else key = key c
    } else if (st == "pre-value") {
      if (nl) push()
      else if (c == q) st = "single"
      else if (c == "\"") st = "double"
      else if (c == "\\") st = "escape"
      else if (!blank(c)) { st = "value"; val = val c }
    } else if (st == "value") {
      if (nl) { if (trail >= 0) val = substr(val, 1, trail); push() }
      else if (c == "\\") { st = "escape"; trail = -1 }
      else { if (!blank(c)) trail = -1; else if (trail < 0) trail = length(val); val = val c }
    } else if (st == "escape") {
      st = "value"; if (!nl) val = val c
    } else if (st == "single") {
      if (c == q) st = "pre-value"; else val = val c
    } else if (st == "double") {
      if (c == "\"") st = "pre-value"; else if (c == "\\") st = "double-escape"; else val = val c
    } else if (st == "double-escape") {
      st = "double"
      if (c == "\"" || c == "\\" || c == "`" || c == "$") val = val c
      else if (c != "\n") val = val "\\" c
    } else if (st == "comment") {
      if (c == "\\") st = "comment-escape"; else if (nl) st = "pre-key"
    } else if (st == "comment-escape") {
      st = nl ? "pre-key" : "comment"
    }
  }
}
END {
  if (st == "value" && trail >= 0) val = substr(val, 1, trail)
  if (st == "pre-value" || st == "value" || st == "escape" || st == "single" ||
      st == "double" || st == "double-escape") push()
}
"""

MIGRATE_EXIT = "@@migrate-exit="
SCHEMA_MARK = "@@schema-"  # @@schema-before=<exit> <version>, @@schema-after=…

MIGRATE_SCRIPT = r"""
exec 2>&1
rg_dir="$1"; rg_limit="$2"; rg_version="$3"; rg_migrate="$4"; rg_awk="$5"
cd -- "$rg_dir" || exit 90
if [ -f .releasegate.env ]; then
  rg_vars=$(awk "$rg_awk" .releasegate.env) || exit 91
  eval "$rg_vars"
fi
rg_schema() {
  rg_v=$(timeout -k 5 "$rg_limit" sh -c "$rg_version" </dev/null); rg_c=$?
  rg_v=$(printf '%s\n' "$rg_v" | sed -e 's/\r$//' -e '/^[[:space:]]*$/d' | tail -n 1)
  printf '%s%s=%s %s\n' "@@schema-" "$1" "$rg_c" "$rg_v"
  return $rg_c
}
rg_schema before || exit 0
timeout -k 5 "$rg_limit" sh -c "$rg_migrate" </dev/null; rg_code=$?
echo "@@migrate-exit=$rg_code"
rg_schema after || true
"""


def migrate(
    release_dir: PurePosixPath, *, command: str, version_command: str, seconds: float
) -> Cmd:
    """In `release_dir`, with that release's env snapshot: the schema version, the migration,
    the schema version again — each under the host's `timeout`. Always exits 0 once it could
    enter the release (exit 90: no such release, 91: unreadable env snapshot); the outcome is
    in the `@@` marker lines, the rest of stdout is what the commands printed."""
    if not 0 < seconds <= 86400:
        raise ValueError(f"migration timeout must be 0 < seconds <= 86400: {seconds}")
    cmd = _script(
        "release.migrate",
        MIGRATE_SCRIPT,
        [_p(release_dir), f"{seconds:g}", version_command, command, ENV_FILE_AWK],
        f"run the migration `{command}` in {release_dir.name} (with its env snapshot)",
    )
    # three bounded commands: the client waits for all of them and their kill grace
    return replace(cmd, limit=3 * seconds + 2 * KILL_AFTER)


# ---------------------------------------------------------------- who holds the app's port

# $1 the port. First `@@pm2 <pid>`: PM2's daemon, from its pid file. Then one line per process
# listening on the port: pid, parent pid, cwd, command line (tab-separated, tabs and newlines
# in them made spaces: a process names itself). /proc shows the deploy user's own processes; a
# listener `ss` cannot attribute (another user's process) is a line with pid `-`.
PORT_HOLDERS_SCRIPT = r"""
port="$1"
printf '@@pm2 %s\n' "$(cat "${PM2_HOME:-$HOME/.pm2}/pm2.pid" 2>/dev/null)"
lines=$(ss -Hltnp "( sport = :$port )" 2>/dev/null) || exit 0
[ -n "$lines" ] || exit 0
pids=$(printf '%s\n' "$lines" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un)
[ -n "$pids" ] || { printf -- '-\t\t\t\n'; exit 0; }
flat() { tr '\000\t\n' '   ' | cut -c1-200; }
for pid in $pids; do
  ppid=$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
  printf '%s\t%s\t%s\t%s\n' "$pid" "$ppid" "$(readlink "/proc/$pid/cwd" 2>/dev/null | flat)" \
    "$(flat < "/proc/$pid/cmdline" 2>/dev/null)"
done
"""


def port_holders(port: int) -> Cmd:
    """The processes listening on `port` (forensics of a gate that failed: a process a release
    left behind can hold the app's port, and then no release can bind it)."""
    return _script(
        "port.holders", PORT_HOLDERS_SCRIPT, [str(int(port))], f"who listens on port {port}"
    )
