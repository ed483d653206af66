"""PM2: an ecosystem file per release, cwd through `current`, startOrReload --update-env."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deploy.commands import Cmd, _cmd, _script, write_file
from deploy.inventory import Inventory
from deploy.model import Instance, Layout, ProcessSnapshot
from deploy.slots import Slot
from deploy.templates import render

CONFIG_NAME = ".releasegate-pm2.config.js"
FAILED = {"errored", "stopped", "stopping"}


@dataclass(frozen=True)
class Pm2:
    inventory: Inventory
    layout: Layout
    name: str = "pm2"

    @property
    def _bin(self) -> str:
        return self.inventory.process.pm2

    @property
    def _app(self) -> str:
        return self.inventory.app.name

    def render_config(self, release_id: str, slot: Slot | None = None) -> str:
        """The release's PM2 config (in place: cwd through `current`), or a slot's app
        (`<app>-<slot>`, cwd the release directory itself, the slot's env file last)."""
        proc = self.inventory.process
        return render(
            "pm2/ecosystem.config.js.j2",
            release_id=release_id,
            app_name=self._app if slot is None else slot_app(self._app, slot),
            cwd=str(self.layout.current if slot is None else self.layout.release(release_id)),
            script=proc.script,
            args=list(proc.args),
            interpreter=proc.interpreter,
            instances=proc.instances,
            kill_timeout_ms=proc.kill_timeout_ms,
            env_file=str(self.layout.release_env(release_id)),
            slot_env_file=str(self.layout.slot_env(slot.name)) if slot is not None else "",
        )

    def config_files(self, release_id: str) -> dict[str, str]:
        return {CONFIG_NAME: self.render_config(release_id)}

    def activate(self, release_id: str) -> list[Cmd]:
        """startOrReload (a graceful reload in cluster mode) with --update-env, so the
        release's variables reach the new processes. PM2 only ever *adds* variables on a
        reload (measured: a key missing from the new config keeps its old value), so when the
        variables PM2 was last given include one this release's snapshot lacks, the app is
        deleted and started instead — a short outage, reported (ENV_RESTART) — and the
        process environment is exactly the release's again."""
        return [
            _script(
                "pm2.activate",
                PM2_ACTIVATE_SCRIPT,
                [
                    self._bin,
                    str(self.layout.release(release_id) / CONFIG_NAME),
                    self._app,
                    str(self.layout.release_env(release_id)),
                    str(self.layout.pm2_env_keys()),
                ],
                f"pm2 startOrReload {release_id}/{CONFIG_NAME} --update-env --only {self._app} "
                f"(delete + start instead if a variable was removed)",
            )
        ]

    def snapshot(self) -> Cmd:
        return _cmd("pm2.jlist", [self._bin, "jlist"])

    def parse_snapshot(self, stdout: str) -> ProcessSnapshot:
        return parse_jlist(stdout, self._app)

    def stop(self) -> Cmd:
        return _cmd("pm2.delete", [self._bin, "delete", self._app])

    def persist(self) -> Cmd | None:
        # dump.pm2 holds every process's environment, secrets included:
        # owner-only, whatever the umask (pm2 keeps an existing file's mode, so chmod too).
        return _script(
            "pm2.save", PM2_SAVE_SCRIPT, [self._bin], f"{self._bin} save --force (dump mode 0600)"
        )

    def logs(self, lines: int) -> Cmd:
        # The log files themselves: `pm2 logs --nostream` splits stdout and stderr across
        # our two streams and may spawn the daemon. merge_logs (our template) means one
        # <app>-out.log and one <app>-error.log for all instances.
        if not 1 <= lines <= 10000:
            raise ValueError(f"logs: lines must be 1..10000, not {lines}")
        return _script(
            "pm2.logs",
            PM2_LOGS_SCRIPT,
            [self._app, str(lines)],
            f"tail -n {lines} the PM2 logs of {self._app}",
        )

    def describe(self) -> Cmd:
        # jlist, summarised by parse_describe: `pm2 describe` prints environment variables.
        return _cmd("pm2.describe", [self._bin, "jlist"])

    def parse_describe(self, stdout: str) -> str:
        return describe_jlist(stdout, self._app)


    # ------------------------------------------------------------------ blue/green slots

    def start_slot(self, slot: Slot, release_id: str) -> list[Cmd]:
        """Write the slot's config, delete the slot's app if PM2 has it, start it afresh
        (a fresh start reads the whole environment again: no reload, no merged variables)."""
        config = self.layout.slot_pm2_config(slot.name)
        app = slot_app(self._app, slot)
        return [
            write_file(config, self.render_config(release_id, slot), label=f"slots/{config.name}"),
            _script(
                "pm2.start_slot",
                PM2_START_SLOT_SCRIPT,
                [self._bin, str(config), app],
                f"pm2 delete {app} (if present); pm2 start slots/{config.name} --only {app}",
            ),
        ]

    def stop_slot(self, slot: Slot) -> Cmd:
        app = slot_app(self._app, slot)
        return _script(
            "pm2.stop_slot", PM2_STOP_SLOT_SCRIPT, [self._bin, app], f"pm2 delete {app}"
        )

    def slot_snapshot(self, slot: Slot) -> Cmd:
        return self.snapshot()

    def parse_slot_snapshot(self, slot: Slot, stdout: str) -> ProcessSnapshot:
        return parse_jlist(stdout, slot_app(self._app, slot))

    def persist_slot(self, slot: Slot) -> Cmd | None:
        return self.persist()

    def slot_logs(self, slot: Slot, lines: int) -> Cmd:
        if not 1 <= lines <= 10000:
            raise ValueError(f"logs: lines must be 1..10000, not {lines}")
        app = slot_app(self._app, slot)
        return _script(
            "pm2.logs", PM2_LOGS_SCRIPT, [app, str(lines)], f"tail -n {lines} the PM2 logs of {app}"
        )

    def slot_describe(self, slot: Slot) -> Cmd:
        return self.describe()

    def parse_slot_describe(self, slot: Slot, stdout: str) -> str:
        return describe_jlist(stdout, slot_app(self._app, slot))


def slot_app(app: str, slot: Slot) -> str:
    """The PM2 app of a blue/green slot."""
    return f"{app}-{slot.name}"


# $1 pm2, $2 the slot's config, $3 the slot's app. Whatever the slot ran is deleted first: a
# slot always starts fresh (PM2's reload keeps a process's recorded cwd and adds variables).
PM2_START_SLOT_SCRIPT = r"""
pm2="$1"; config="$2"; app="$3"
"$pm2" delete "$app" >/dev/null 2>&1 || true
exec "$pm2" start "$config" --only "$app"
"""

# $1 pm2, $2 the slot's app. Nothing to stop is success.
PM2_STOP_SLOT_SCRIPT = r"""
out=$("$1" delete "$2" 2>&1) && exit 0
case "$out" in *"not found"*) exit 0 ;; esac
printf '%s\n' "$out" >&2
exit 1
"""


# $1 the pm2 executable. PM2_HOME is honoured like pm2 itself does.
PM2_SAVE_SCRIPT = r"""
umask 077
"$1" save --force || exit $?
d="${PM2_HOME:-$HOME/.pm2}"
chmod 0600 -- "$d/dump.pm2" || exit 1
if [ -f "$d/dump.pm2.bak" ]; then chmod 0600 -- "$d/dump.pm2.bak"; fi
"""

# Printed by PM2_ACTIVATE_SCRIPT when it restarted instead of reloading, with the removed names.
ENV_RESTART = "@@env-restart"
# Printed when the release has no env snapshot (shipped before releases carried one).
ENV_LEGACY = "@@env-legacy"

# $1 pm2, $2 the release's config, $3 app, $4 the release's env snapshot, $5 the list of
# variable names PM2 was last given (names only, never values).
PM2_ACTIVATE_SCRIPT = r"""
pm2="$1"; config="$2"; app="$3"; envfile="$4"; record="$5"
if [ ! -f "$envfile" ]; then
  # an older release reads shared/.env itself; what PM2 holds afterwards is unknown
  echo "@@env-legacy"; rm -f -- "$record"
  exec "$pm2" startOrReload "$config" --update-env --only "$app"
fi
names=$(sed -e 's/^[[:space:]]*//; s/^export[[:space:]][[:space:]]*//' -- "$envfile" \
  | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)[[:space:]]*=.*/\1/p' | LC_ALL=C sort -u)
removed=""
if [ -f "$record" ]; then
  removed=$(printf '%s\n' "$names" | LC_ALL=C comm -13 - "$record" | tr '\n' ' ')
elif "$pm2" pid "$app" 2>/dev/null | grep -qx '[0-9][0-9]*'; then
  # (a pid line, not PM2's "Spawning PM2 daemon" banner: it has digits too)
  removed="(unknown: PM2 runs $app with variables releasegate did not record)"
fi
# Until PM2 confirms, it may hold the old names and the new: record both.
{ printf '%s\n' "$names"; cat -- "$record" 2>/dev/null; } | LC_ALL=C sort -u > "$record.tmp"
mv -f -- "$record.tmp" "$record"
if [ -n "$removed" ]; then
  echo "@@env-restart $removed"
  "$pm2" delete "$app" >/dev/null 2>&1 || true
  "$pm2" start "$config" --only "$app" || exit $?
else
  "$pm2" startOrReload "$config" --update-env --only "$app" || exit $?
fi
printf '%s\n' "$names" > "$record.tmp" && mv -f -- "$record.tmp" "$record"
"""

def activation_notes(stdout: str) -> list[str]:
    """What the user must hear about an activation's environment (PM2_ACTIVATE_SCRIPT)."""
    notes = []
    for line in stdout.splitlines():
        if line.startswith(ENV_RESTART):
            names = line[len(ENV_RESTART) :].strip()
            notes.append(
                f"the release's environment no longer has {names}; a PM2 reload would have "
                f"kept the old values, so the app was deleted and started instead (a short "
                f"outage) and those variables are really gone"
            )
        elif line.startswith(ENV_LEGACY):
            notes.append(
                "this release has no env snapshot (it was shipped by an older releasegate): "
                "its PM2 config reads shared/.env, and variables PM2 already held remain"
            )
    return notes


# $1 app name, $2 lines. PM2_HOME is honoured like pm2 itself does.
PM2_LOGS_SCRIPT = r"""
d="${PM2_HOME:-$HOME/.pm2}/logs"
for f in "$d/$1-out.log" "$d/$1-error.log"; do
  echo "==> $f <=="
  # a release that logs megabytes in one line must not bring them over the link: such a line
  # is replaced whole (cut, a secret in it could escape redaction half-masked)
  if [ -f "$f" ]; then
    tail -n "$2" -- "$f" \
      | awk 'length($0) > 65536 { print "(a line of " length($0) " bytes)"; next } 1'
  else echo "(no such file)"; fi
done
"""


def _jlist_entries(stdout: str, app: str) -> list[dict[str, Any]]:
    procs: list[dict[str, Any]] = []
    # PM2 may print "[PM2] Spawning PM2 daemon…" lines first; the list is one JSON line.
    for line in reversed(stdout.splitlines()):
        if line.startswith("["):
            try:
                loaded = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(loaded, list):
                procs = [p for p in loaded if isinstance(p, dict)]
                break
    return [p for p in procs if p.get("name") == app]


def parse_jlist(stdout: str, app: str) -> ProcessSnapshot:
    """PM2's per-instance entries for one app: each instance, and their aggregate status."""
    mine = _jlist_entries(stdout, app)
    if not mine:
        return ProcessSnapshot(status="missing", pids=(), restarts=0)
    instances = tuple(_instance(p, index) for index, p in enumerate(mine))
    statuses = [i.status for i in instances]
    failed = [s for s in statuses if s in FAILED]
    if failed:
        status = failed[0]
    elif all(s == "online" for s in statuses):
        status = "online"
    else:
        status = next(s for s in statuses if s != "online")
    return ProcessSnapshot.of(instances, status)


def _instance(entry: dict[str, Any], index: int) -> Instance:
    raw = entry.get("pm2_env")
    env: dict[str, Any] = raw if isinstance(raw, dict) else {}
    pm_id = entry.get("pm_id", env.get("pm_id", index))
    return Instance(
        id=_int(pm_id, index),
        status=str(env.get("status", "unknown")),
        pid=max(0, _int(entry.get("pid"), 0)),
        restarts=max(0, _int(env.get("restart_time"), 0)),
    )


def _int(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return default


def describe_jlist(stdout: str, app: str) -> str:
    """One line per instance from a few named fields of `pm2 jlist`. Only these fields:
    PM2 copies the app's environment (secrets included) into pm2_env."""
    mine = _jlist_entries(stdout, app)
    if not mine:
        return f"PM2 has no process named {app}"
    lines = []
    for p in mine:
        raw = p.get("pm2_env")
        env: dict[str, Any] = raw if isinstance(raw, dict) else {}
        parts = [f"pid {p.get('pid') or '-'}", f"{env.get('restart_time', '?')} restarts"]
        if env.get("unstable_restarts"):
            parts.append(f"{env['unstable_restarts']} unstable")
        if env.get("exit_code") is not None:
            parts.append(f"last exit code {env['exit_code']}")
        parts.append(str(env.get("exec_mode", "?")).removesuffix("_mode") + " mode")
        uptime = env.get("pm_uptime")
        if isinstance(uptime, int | float) and uptime > 0:
            since = datetime.fromtimestamp(uptime / 1000, tz=UTC)
            parts.append(f"since {since:%Y-%m-%dT%H:%M:%SZ}")
        if env.get("pm_cwd"):
            parts.append(f"cwd {env['pm_cwd']}")
        lines.append(
            f"{app}[{env.get('pm_id', '?')}] {env.get('status', 'unknown')}: {', '.join(parts)}"
        )
    return "\n".join(lines)
