"""The nginx front door of the blue/green strategy: one job, pure builders and parsers.

nginx (from the distribution, run by the host's systemd) owns the public port. Per app,
releasegate owns exactly one small file, the *upstream file* under the deploy root
(`<root>/.releasegate/nginx/upstream.conf`): `server 127.0.0.1:<port>;` for the live slot and,
while a new release bakes, the previous slot as `backup`. The site config (rendered here from
templates/nginx/, installed once by root) includes that file inside its `upstream` block, so
whatever is written there can only be upstream directives (docs/blue-green.md says what the
allowlist grants).

A switch is one host script in one round trip (`switch`): write the new upstream beside the
live one, rename it over, `sudo -n nginx -t`, graceful reload, then wait until nginx's old
workers stop accepting (so "switched" means every new connection gets the new upstream); on
any failure the previous file is renamed back, nginx is not reloaded (or reloaded back), and
the script exits with a code of its own (`SWITCH_*`). `parse_switch` turns the result into a
`SwitchReport`; the strategy decides what a failure means (before or after the point of no
return).

The bake window reads this app's JSON access log from a byte offset (`read_access_log`) and
`parse_access_log` counts requests, 5xx answers and attempts no upstream answered. The
preflight probe (`probe`) gathers every nginx fact in one read-only round trip; `judge` says
ok/fail with the fix, in deploy.preflight's `Check` words.

Root is needed for exactly two commands, allowed by an exact sudoers allowlist
(`sudoers_lines`): `/usr/sbin/nginx -t` and `/usr/sbin/nginx -s reload`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from deploy.commands import Cmd, _p, _script
from deploy.model import Layout
from deploy.preflight import Check
from deploy.templates import render

# Absolute paths: sudoers matches them literally (Debian/Ubuntu).
NGINX = "/usr/sbin/nginx"
CONF_DIR = PurePosixPath("/etc/nginx")
SITE_DIR = CONF_DIR / "conf.d"
LOG_DIR = PurePosixPath("/var/log/nginx")
PID_FILE = PurePosixPath("/run/nginx.pid")
# The two root commands releasegate runs, word for word (the allowlist has no wildcards).
TEST_ARGV = (NGINX, "-t")
RELOAD_ARGV = (NGINX, "-s", "reload")

# Exit codes of SWITCH_SCRIPT. Every one but SWITCH_RESTORE_FAILED means: the upstream file
# names what it named before and nginx serves what it served before.
SWITCH_WRITE_FAILED = 80  # the new file could not be written; nothing changed
SWITCH_REFUSED = 81  # `nginx -t` refused the new upstream; previous file back, no reload
SWITCH_RELOAD_FAILED = 82  # the reload failed; previous file back and reloaded back
SWITCH_NOT_ALLOWED = 83  # the sudo allowlist is missing; previous file back, no reload
SWITCH_RESTORE_FAILED = 84  # the previous file could not be put back: state unknown
SWITCHED = "@@switched"

# Bytes of access log read per round trip; `TrafficSample.next_offset` continues from there.
LOG_CHUNK = 4 * 1024 * 1024

_APP = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
_SERVER_LINE = re.compile(r"^server 127\.0\.0\.1:(\d{1,5})( backup)?;\Z")


@dataclass(frozen=True)
class ProxyPaths:
    """Where one app's front-door files live on the host."""

    app: str
    root: PurePosixPath

    @property
    def upstream(self) -> PurePosixPath:
        # Under the deploy root's 0700 state dir: the deploy user writes it without root,
        # root's nginx reads it; nothing of root's ever writes there.
        return self.root / ".releasegate" / "nginx" / "upstream.conf"

    @property
    def site(self) -> PurePosixPath:
        return SITE_DIR / f"releasegate-{self.app}.conf"

    @property
    def access_log(self) -> PurePosixPath:
        # In nginx's own log directory (root-owned): root's nginx must never open a file for
        # writing in a directory the deploy user controls (a symlink there would let the deploy
        # user append to any file as root). Readable through Debian's `adm` group.
        return LOG_DIR / f"releasegate-{self.app}.access.log"


def proxy_paths(layout: Layout, app: str) -> ProxyPaths:
    if not _APP.match(app):
        raise ValueError(f"not an app name: {app!r}")
    return ProxyPaths(app=app, root=PurePosixPath(_p(layout.root)))


@dataclass(frozen=True)
class Upstream:
    """What the upstream file names: the live slot's port, and the backup's during a bake."""

    live: int
    backup: int | None = None

    def __post_init__(self) -> None:
        for port in (self.live, self.backup):
            if port is not None and (isinstance(port, bool) or not 1 <= int(port) <= 65535):
                raise ValueError(f"not a TCP port: {port!r}")
        if self.backup == self.live:
            raise ValueError(f"the backup must be another port than the live one ({self.live})")

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.live,) if self.backup is None else (self.live, self.backup)

    def describe(self) -> str:
        backup = f", backup 127.0.0.1:{self.backup}" if self.backup is not None else ""
        return f"live 127.0.0.1:{self.live}{backup}"


class UpstreamUnreadable(ValueError):
    """The upstream file holds something releasegate did not write."""


# ---------------------------------------------------------------------- rendered files


def upstream_text(paths: ProxyPaths, upstream: Upstream) -> str:
    return render(
        "nginx/upstream.conf.j2", app=paths.app, live=upstream.live, backup=upstream.backup
    )


def site_config(paths: ProxyPaths, *, public_port: int) -> str:
    """The site config root installs once at `paths.site` (`releasegate setup` prints it)."""
    if isinstance(public_port, bool) or not 1 <= public_port <= 65535:
        raise ValueError(f"not a TCP port: {public_port!r}")
    return render(
        "nginx/site.conf.j2",
        app=paths.app,
        site_path=str(paths.site),
        upstream_path=str(paths.upstream),
        access_log=str(paths.access_log),
        public_port=public_port,
    )


def sudoers_lines(user: str) -> list[str]:
    """The allowlist for the deploy user: test the config, reload gracefully. Nothing else."""
    return [f"{user} ALL=(root) NOPASSWD: {shlex.join(argv)}" for argv in (TEST_ARGV, RELOAD_ARGV)]


# ---------------------------------------------------------------------- host commands

SWITCH_SCRIPT = r"""
trap '' HUP PIPE
file="$1"; text="$2"; log="$3"; pidfile="$4"; ticks="$5"
prev="$file.prev"; next="$file.next"
# The allowlist is asked about (`sudo -l`, ~15-40 ms each) only when a sudo call failed: a
# revert must not pay for it. Until the reload ran, putting the previous file back is all it
# takes for nothing to have changed.
not_allowed() {
  sudo -n -l /usr/sbin/nginx -t >/dev/null 2>&1 &&
    sudo -n -l /usr/sbin/nginx -s reload >/dev/null 2>&1 && return 1
  echo "sudo -n may not run '/usr/sbin/nginx -t' and '/usr/sbin/nginx -s reload' as" \
    "$(id -un) here: install the sudoers allowlist (docs/blue-green.md)" >&2
}
mkdir -p -- "${file%/*}" || exit 80
had=0
if [ -e "$file" ]; then cp -p -- "$file" "$prev" || exit 80; had=1; fi
if ! { printf '%s' "$text" >"$next" && chmod 0644 -- "$next" && mv -f -- "$next" "$file"; }; then
  rm -f -- "$next" "$prev"
  echo "could not write $file; the upstream is unchanged" >&2
  exit 80
fi
restore() {
  if [ "$had" = 1 ]; then mv -f -- "$prev" "$file"; else rm -f -- "$file"; fi
}
if ! out=$(sudo -n /usr/sbin/nginx -t 2>&1); then
  if not_allowed; then restore || exit 84; exit 83; fi
  if ! restore; then
    printf 'nginx -t refused the new upstream and %s could not be put back:\n%s\n' \
      "$file" "$out" >&2
    exit 84
  fi
  printf '%s\n%s\n' "nginx -t refused the new upstream; the previous one is back, nginx was" \
    "not reloaded: $out" >&2
  exit 81
fi
offset=$(stat -c %s -- "$log" 2>/dev/null || echo 0)
old=$(pgrep -P "$(cat -- "$pidfile" 2>/dev/null)" 2>/dev/null | tr '\n' ' ')
applied=; ran=
if out=$(sudo -n /usr/sbin/nginx -s reload 2>&1); then
  ran=1
  # nginx starts new workers, gives them 100 ms, then tells the old ones to stop accepting
  # ("worker process is shutting down"). Waiting for that makes a switch that returns mean
  # "every new connection gets the new upstream", and turns a reload nginx did not apply
  # (its error log says why) into a failed switch.
  n=0
  while :; do
    pending=
    for w in $old; do
      t=$(tr '\0' ' ' 2>/dev/null <"/proc/$w/cmdline") || continue
      case "$t" in *"shutting down"* | "") ;; *) pending=$w; break ;; esac
    done
    if [ -z "$pending" ]; then applied=1; break; fi
    n=$((n + 1))
    if [ "$n" -gt "$ticks" ]; then
      out="nginx did not apply the reload within $((ticks * 10)) ms: worker $pending"
      out="$out still runs the old configuration (nginx's error log says why)"
      break
    fi
    sleep 0.01
  done
fi
if [ -z "$applied" ]; then
  if [ -z "$ran" ] && not_allowed; then restore || exit 84; exit 83; fi
  if ! restore; then
    printf 'nginx reload failed and %s could not be put back:\n%s\n' "$file" "$out" >&2
    exit 84
  fi
  back=$(sudo -n /usr/sbin/nginx -s reload 2>&1) && back="reloaded back" ||
    back="reloading it back failed too: $back"
  printf 'nginx reload failed; the previous upstream is back (%s):\n%s\n' "$back" "$out" >&2
  exit 82
fi
rm -f -- "$prev"
echo "@@log_offset=$offset"
echo "@@switched"
"""


def switch(paths: ProxyPaths, upstream: Upstream, *, confirm_within: float = 5.0) -> Cmd:
    """Point the front door at `upstream`: atomic replace, `nginx -t`, graceful reload, and
    wait (at most `confirm_within` seconds) until nginx's old workers stopped accepting, so
    that from the command's end every new connection gets the new upstream. Any failure puts
    the previous file back (see the SWITCH_* exit codes). Idempotent: switching to what the
    file already names re-tests and reloads, which is how a run after a crash makes nginx
    match the file."""
    if not 0 < confirm_within <= 600:
        raise ValueError("confirm_within must be in (0, 600] seconds")
    return _script(
        "proxy.switch",
        SWITCH_SCRIPT,
        [
            _p(paths.upstream),
            upstream_text(paths, upstream),
            _p(paths.access_log),
            str(PID_FILE),
            str(max(1, round(confirm_within * 100))),  # 10 ms ticks
        ],
        f"switch {paths.app}'s front door to {upstream.describe()} (nginx -t, reload)",
    )


WRITE_UPSTREAM_SCRIPT = r"""
set -e
mkdir -p -- "${1%/*}"
printf '%s' "$2" >"$1.next"; chmod 0644 -- "$1.next"; mv -f -- "$1.next" "$1"
"""


def write_upstream(paths: ProxyPaths, upstream: Upstream) -> Cmd:
    """The first upstream file, before the site that includes it is installed (setup): no
    test, no reload (nginx cannot load a site whose include is missing)."""
    return _script(
        "proxy.write_upstream",
        WRITE_UPSTREAM_SCRIPT,
        [_p(paths.upstream), upstream_text(paths, upstream)],
        f"write {paths.upstream} ({upstream.describe()})",
    )


ENSURE_UPSTREAM_SCRIPT = r"""
set -e
if [ -e "$1" ]; then echo "@@exists"; exit 0; fi
mkdir -p -- "${1%/*}"
printf '%s' "$2" >"$1.next"; chmod 0644 -- "$1.next"; mv -f -- "$1.next" "$1"
echo "@@written"
"""


def ensure_upstream(paths: ProxyPaths, upstream: Upstream) -> Cmd:
    """`releasegate setup`: write the first upstream file unless one exists (a live one is
    never overwritten by setup); prints @@written or @@exists."""
    return _script(
        "proxy.ensure_upstream",
        ENSURE_UPSTREAM_SCRIPT,
        [_p(paths.upstream), upstream_text(paths, upstream)],
        f"write {paths.upstream} ({upstream.describe()}) unless it exists",
    )


MISSING = "@@missing"
READ_UPSTREAM_SCRIPT = r"""
[ -e "$1" ] || { echo "@@missing"; exit 0; }
cat -- "$1"
"""


def read_upstream(paths: ProxyPaths) -> Cmd:
    return _script(
        "proxy.read_upstream",
        READ_UPSTREAM_SCRIPT,
        [_p(paths.upstream)],
        f"read {paths.upstream}",
    )


def parse_upstream(stdout: str) -> Upstream | None:
    """The ports `read_upstream` found; None when there is no upstream file yet."""
    lines = [ln.strip() for ln in stdout.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if lines == [MISSING]:
        return None
    live: list[int] = []
    backup: list[int] = []
    for line in lines:
        m = _SERVER_LINE.match(line)
        if not m:
            raise UpstreamUnreadable(
                f"unexpected line in the upstream file: {line!r} (releasegate writes only "
                "`server 127.0.0.1:<port>;` lines; switch again to rewrite it)"
            )
        (backup if m.group(2) else live).append(int(m.group(1)))
    if len(live) != 1 or len(backup) > 1:
        raise UpstreamUnreadable(
            f"the upstream file names {len(live)} live and {len(backup)} backup servers; "
            "releasegate writes one live and at most one backup (switch again to rewrite it)"
        )
    return Upstream(live=live[0], backup=backup[0] if backup else None)


READ_LOG_SCRIPT = r"""
log="$1"; offset="$2"; max="$3"
[ -e "$log" ] || { echo "@@missing"; exit 0; }
[ -r "$log" ] || { echo "@@unreadable"; exit 0; }
size=$(stat -c %s -- "$log") || exit 1
if [ "$size" -lt "$offset" ]; then echo "@@rotated"; offset=0; fi
end=$size
if [ $((end - offset)) -gt "$max" ]; then end=$((offset + max)); fi
echo "@@range $offset $end"
if [ "$end" -gt "$offset" ]; then
  tail -c +"$((offset + 1))" -- "$log" | head -c "$((end - offset))"
fi
exit 0
"""


def read_access_log(paths: ProxyPaths, offset: int, *, max_bytes: int = LOG_CHUNK) -> Cmd:
    """This app's access log from byte `offset` (at most `max_bytes`; a log that shrank was
    rotated and is read from its start). `parse_access_log` counts what is there."""
    if isinstance(offset, bool) or offset < 0 or max_bytes < 1:
        raise ValueError("offset must be >= 0 and max_bytes >= 1")
    return _script(
        "proxy.read_log",
        READ_LOG_SCRIPT,
        [_p(paths.access_log), str(int(offset)), str(int(max_bytes))],
        f"read {paths.access_log} from byte {offset}",
    )


@dataclass(frozen=True)
class UpstreamTally:
    """One upstream server's part of the traffic (keyed by `127.0.0.1:<port>`)."""

    answered: int = 0
    server_errors: int = 0  # 5xx answers it gave
    failed: int = 0  # attempts it did not answer (refused, reset, timed out)


@dataclass(frozen=True)
class TrafficSample:
    """What the front door served in a stretch of this app's access log."""

    start_offset: int
    next_offset: int  # where the next read continues (complete lines only)
    requests: int = 0
    server_errors: int = 0  # 5xx answers sent to clients
    upstream_errors: int = 0  # requests where some upstream attempt got no answer
    unparsed: int = 0
    rotated: bool = False
    problem: str | None = None  # "missing" | "unreadable": nothing could be counted
    by_upstream: Mapping[str, UpstreamTally] = field(default_factory=dict)

    @property
    def error_ratio(self) -> float:
        """5xx answers per request (0.0 without requests)."""
        return self.server_errors / self.requests if self.requests else 0.0

    def of_port(self, port: int) -> UpstreamTally:
        return self.by_upstream.get(f"127.0.0.1:{port}", UpstreamTally())


def parse_access_log(stdout: str) -> TrafficSample:
    """Count what `read_access_log` returned (the JSON lines of templates/nginx/site.conf.j2)."""
    head, _, body = stdout.partition("\n")
    rotated = False
    if head == "@@rotated":
        rotated = True
        head, _, body = body.partition("\n")
    if head in ("@@missing", "@@unreadable"):
        return TrafficSample(0, 0, problem=head[2:])
    m = re.fullmatch(r"@@range (\d+) (\d+)", head)
    if not m:
        raise ValueError(f"unexpected answer from the access log reader: {head[:80]!r}")
    start = int(m.group(1))
    complete, _, _partial = body.rpartition("\n")
    requests = server_errors = upstream_errors = unparsed = 0
    tallies: dict[str, list[int]] = {}
    for line in complete.split("\n") if complete else []:
        try:
            entry = json.loads(line)
            status = int(entry["status"])
            attempts = list(
                zip(
                    _attempts(entry["upstream_addr"]),
                    _attempts(entry["upstream_status"]),
                    _attempts(entry["upstream_header_time"]),
                    strict=False,
                )
            )
        except (ValueError, KeyError, TypeError):
            unparsed += 1
            continue
        requests += 1
        server_errors += status >= 500
        failed_any = False
        for addr, code, header_time in attempts:
            tally = tallies.setdefault(addr, [0, 0, 0])
            if header_time == "-":  # no response header: refused, reset or timed out
                tally[2] += 1
                failed_any = True
            else:
                tally[0] += 1
                tally[1] += code.isdigit() and int(code) >= 500
        upstream_errors += failed_any
    consumed = len(complete.encode()) + 1 if complete else 0
    return TrafficSample(
        start_offset=start,
        next_offset=start + consumed,
        requests=requests,
        server_errors=server_errors,
        upstream_errors=upstream_errors,
        unparsed=unparsed,
        rotated=rotated,
        by_upstream={a: UpstreamTally(*t) for a, t in tallies.items()},
    )


def _attempts(value: object) -> list[str]:
    # nginx lists one value per server tried: ", " between servers of a group, " : " when
    # the request moved to another group (an internal redirect). "" without any upstream.
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return [part for part in re.split(r"\s*[,:]\s+", value.strip()) if part]


SwitchReason = Literal[
    "switched",
    "write-failed",
    "refused",
    "reload-failed",
    "not-allowed",
    "restore-failed",
    "unknown",
]


@dataclass(frozen=True)
class SwitchReport:
    """How a `switch` ended. Whether it worked or not, the upstream file and nginx agree,
    except after SWITCH_RESTORE_FAILED or an unknown end (`consistent` is False: look)."""

    ok: bool
    exit_code: int
    reason: SwitchReason
    detail: str
    log_offset: int | None = None  # the access log's size just before the reload

    @property
    def consistent(self) -> bool:
        return self.reason not in ("restore-failed", "unknown")


_REASONS: dict[int, SwitchReason] = {
    SWITCH_WRITE_FAILED: "write-failed",
    SWITCH_REFUSED: "refused",
    SWITCH_RELOAD_FAILED: "reload-failed",
    SWITCH_NOT_ALLOWED: "not-allowed",
    SWITCH_RESTORE_FAILED: "restore-failed",
}


def parse_switch(exit_code: int, stdout: str, stderr: str) -> SwitchReport:
    """Run `switch` with check=False and hand its result here."""
    offset = re.search(r"^@@log_offset=(\d+)$", stdout, re.M)
    log_offset = int(offset.group(1)) if offset else None
    detail = stderr.strip()
    if exit_code == 0 and SWITCHED in stdout.splitlines():
        return SwitchReport(True, 0, "switched", "", log_offset)
    reason: SwitchReason = _REASONS.get(exit_code, "unknown")
    if exit_code == 0:  # exit 0 without the mark: the script did not run to its end
        detail = detail or "the switch script ended without confirming the switch"
    return SwitchReport(False, exit_code, reason, detail or f"exit {exit_code}", log_offset)


# ---------------------------------------------------------------------- preflight

PROBE_SCRIPT = r"""
upstream="$1"; log="$2"; conf="$3"; pidfile="$4"; public="$5"; shift 5
nginx=/usr/sbin/nginx
if [ -x "$nginx" ]; then
  echo "nginx=$nginx"
  echo "nginx_version=$("$nginx" -v 2>&1 | head -n 1)"
else
  echo "nginx="
fi
t=no; r=no
sudo -n -l "$nginx" -t >/dev/null 2>&1 && t=yes
sudo -n -l "$nginx" -s reload >/dev/null 2>&1 && r=yes
echo "sudo_test=$t"; echo "sudo_reload=$r"
if [ -x "$nginx" ] && [ "$t" = yes ]; then
  if out=$(sudo -n "$nginx" -t 2>&1); then
    echo "config=ok"
  else
    echo "config=failed"
    echo "config_error=$(printf '%s\n' "$out" | grep -m 1 -E 'emerg|alert|crit|error' ||
      printf '%s\n' "$out" | head -n 1)"
  fi
else
  echo "config=untested"
fi
pid=$(cat -- "$pidfile" 2>/dev/null)
if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then echo "running=yes"; else echo "running=no"; fi
echo "site=$(grep -rlF -- "include $upstream;" "$conf" 2>/dev/null | head -n 1)"
if [ ! -e "$upstream" ]; then echo "upstream=missing"
elif [ -r "$upstream" ]; then echo "upstream=present"
else echo "upstream=unreadable"; fi
if [ ! -e "$log" ]; then echo "access_log=missing"
elif [ -r "$log" ]; then echo "access_log=readable"
else echo "access_log=unreadable"; fi
port_state() {
  line=$(ss -Hltnp "sport = :$1" 2>/dev/null | head -n 1)
  if [ -z "$line" ]; then echo free; return; fi
  pid=$(printf '%s\n' "$line" | sed -n 's/.*pid=\([0-9][0-9]*\).*/\1/p')
  if [ -n "$pid" ]; then echo "own:$pid:$(readlink "/proc/$pid/cwd" 2>/dev/null)"
  else echo other; fi
}
echo "public_port=$(port_state "$public")"
for p in "$@"; do echo "port.$p=$(port_state "$p")"; done
exit 0
"""


def probe(paths: ProxyPaths, *, public_port: int, slot_ports: tuple[int, ...]) -> Cmd:
    """Every nginx fact for the blue/green preflight, read-only, in one round trip. The only
    root command it runs is `sudo -n nginx -t` (when allowed)."""
    ports = [public_port, *slot_ports]
    for port in ports:
        if isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValueError(f"not a TCP port: {port!r}")
    return _script(
        "proxy.probe",
        PROBE_SCRIPT,
        [
            _p(paths.upstream),
            _p(paths.access_log),
            str(CONF_DIR),
            str(PID_FILE),
            *(str(p) for p in ports),
        ],
        f"probe nginx for {paths.app} (nginx -t, allowlist, site, ports)",
    )


@dataclass(frozen=True)
class PortHolder:
    state: Literal["free", "own", "other"]
    pid: int | None = None
    cwd: str = ""

    def describe(self) -> str:
        if self.state == "free":
            return "free"
        if self.state == "other":
            return "taken by another user's process"
        return f"held by pid {self.pid} of the deploy user (cwd {self.cwd or '?'})"


@dataclass(frozen=True)
class ProxyFacts:
    """What the probe found on the host."""

    nginx: str  # path of the binary, "" if absent
    version: str
    sudo_test: bool
    sudo_reload: bool
    config: Literal["ok", "failed", "untested"]
    config_error: str
    running: bool
    site: str  # the config file that includes our upstream file, "" if none
    upstream: Literal["present", "missing", "unreadable"]
    access_log: Literal["readable", "missing", "unreadable"]
    public_port: PortHolder
    ports: Mapping[int, PortHolder]


def parse_facts(stdout: str) -> ProxyFacts:
    raw: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.match(r"^[a-z_][a-z0-9_.]*\Z", key):
            raw[key] = value.strip()

    def holder(text: str) -> PortHolder:
        if text.startswith("own:"):
            pid, _, cwd = text[4:].partition(":")
            return PortHolder("own", int(pid) if pid.isdigit() else None, cwd)
        return PortHolder("other") if text == "other" else PortHolder("free")

    def pick(key: str, allowed: tuple[str, ...], default: str) -> str:
        value = raw.get(key, default)
        return value if value in allowed else default

    return ProxyFacts(
        nginx=raw.get("nginx", ""),
        version=raw.get("nginx_version", ""),
        sudo_test=raw.get("sudo_test") == "yes",
        sudo_reload=raw.get("sudo_reload") == "yes",
        config=pick("config", ("ok", "failed", "untested"), "untested"),  # type: ignore[arg-type]
        config_error=raw.get("config_error", ""),
        running=raw.get("running") == "yes",
        site=raw.get("site", ""),
        upstream=pick("upstream", ("present", "missing", "unreadable"), "missing"),  # type: ignore[arg-type]
        access_log=pick("access_log", ("readable", "missing", "unreadable"), "missing"),  # type: ignore[arg-type]
        public_port=holder(raw.get("public_port", "free")),
        ports={
            int(k[5:]): holder(v)
            for k, v in raw.items()
            if k.startswith("port.") and k[5:].isdigit()
        },
    )


def judge(
    facts: ProxyFacts,
    *,
    paths: ProxyPaths,
    user: str,
    env: str,
    public_port: int,
    idle_port: int,
) -> list[Check]:
    """The blue/green preflight checks; any failure means exit 5 with the host unchanged."""
    setup = f"`releasegate setup {env}` (docs/blue-green.md)"
    allowlist = "; ".join(sudoers_lines(user))
    checks: list[Check] = []
    checks.append(
        Check(
            "nginx",
            bool(facts.nginx),
            f"{facts.version or 'nginx'} at {facts.nginx}" if facts.nginx else f"{NGINX} not found",
            "apt-get install nginx (as root)",
        )
    )
    allowed = facts.sudo_test and facts.sudo_reload
    missing = [
        shlex.join(argv)
        for argv, ok in ((TEST_ARGV, facts.sudo_test), (RELOAD_ARGV, facts.sudo_reload))
        if not ok
    ]
    checks.append(
        Check(
            "nginx allowlist",
            allowed,
            f"{user} may run `sudo -n {NGINX} -t` and `sudo -n {NGINX} -s reload`"
            if allowed
            else f"{user} may not run {' nor '.join(f'`sudo -n {m}`' for m in missing)}",
            f"as root, put these lines in /etc/sudoers.d/releasegate-nginx (mode 0440, check "
            f"with visudo -cf): {allowlist}",
        )
    )
    if facts.config == "ok":
        checks.append(Check("nginx config", True, "`nginx -t` passes"))
    elif facts.config == "failed":
        checks.append(
            Check(
                "nginx config",
                False,
                f"`nginx -t` fails: {facts.config_error or '(no message)'}",
                "fix the configuration it names (as root: nginx -t); a switch is refused "
                "while the configuration is invalid",
            )
        )
    else:
        checks.append(
            Check(
                "nginx config",
                False,
                "not tested: needs nginx and the allowlist",
                "install nginx and the allowlist first",
            )
        )
    checks.append(
        Check(
            "nginx running",
            facts.running,
            "nginx's master process runs" if facts.running else f"no nginx runs ({PID_FILE})",
            "as root: systemctl enable --now nginx",
        )
    )
    checks.append(
        Check(
            "front door site",
            bool(facts.site),
            f"{facts.site} includes {paths.upstream}"
            if facts.site
            else f"no file under /etc/nginx has `include {paths.upstream};`",
            f"install the site config that {setup} prints as {paths.site}, then reload nginx",
        )
    )
    checks.append(
        Check(
            "upstream file",
            facts.upstream == "present",
            f"{paths.upstream} is {facts.upstream}",
            f"{setup} writes it (the live slot's port)"
            if facts.upstream == "missing"
            else f"it must be readable by {user}: chown {user} {paths.upstream}",
        )
    )
    checks.append(
        Check(
            "access log",
            facts.access_log == "readable",
            f"{paths.access_log} is {facts.access_log}"
            + (f" by {user}" if facts.access_log == "unreadable" else ""),
            f"as root: usermod -aG adm {user} (Debian's group for reading logs)"
            if facts.access_log == "unreadable"
            else "nginx opens it when it loads the site: install the site, then reload nginx",
        )
    )
    public = facts.public_port
    checks.append(
        Check(
            "public port",
            public.state == "other",
            f":{public_port} is listening (not as {user}: nginx's master runs as root)"
            if public.state == "other"
            else f"nothing listens on :{public_port}"
            if public.state == "free"
            else f":{public_port} is {public.describe()}, not nginx",
            f"the site listens on :{public_port} once nginx has loaded it (reload nginx)"
            if public.state == "free"
            else f"stop what {user} runs on :{public_port} (pid {public.pid}); nginx must own "
            "the public port",
        )
    )
    holder = facts.ports.get(idle_port, PortHolder("free"))
    checks.append(
        Check(
            "idle slot port",
            holder.state != "other",
            f"127.0.0.1:{idle_port} is {holder.describe()}",
            f"stop what listens on {idle_port}, or choose other ports in strategy.slots",
        )
    )
    return checks
