"""PM2: an ecosystem file per release, cwd through `current`, startOrReload --update-env."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deploy.commands import Cmd, _cmd, _script
from deploy.inventory import Inventory
from deploy.model import Instance, Layout, ProcessSnapshot
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

    def render_config(self, release_id: str) -> str:
        proc = self.inventory.process
        env = {**proc.env, "RELEASE_ID": release_id, "PORT": str(proc.port)}
        return render(
            "pm2/ecosystem.config.js.j2",
            release_id=release_id,
            app_name=self._app,
            cwd=str(self.layout.current),
            script=proc.script,
            args=list(proc.args),
            interpreter=proc.interpreter,
            instances=proc.instances,
            kill_timeout_ms=proc.kill_timeout_ms,
            env=env,
            env_file=str(self.layout.shared / ".env"),
        )

    def config_files(self, release_id: str) -> dict[str, str]:
        return {CONFIG_NAME: self.render_config(release_id)}

    def activate(self, release_id: str) -> list[Cmd]:
        config = str(self.layout.release(release_id) / CONFIG_NAME)
        # startOrReload: starts on first deploy, graceful reload (cluster) afterwards;
        # --update-env so RELEASE_ID and env changes reach the new processes.
        return [
            _cmd(
                "pm2.activate",
                [self._bin, "startOrReload", config, "--update-env", "--only", self._app],
            )
        ]

    def snapshot(self) -> Cmd:
        return _cmd("pm2.jlist", [self._bin, "jlist"])

    def parse_snapshot(self, stdout: str) -> ProcessSnapshot:
        return parse_jlist(stdout, self._app)

    def stop(self) -> Cmd:
        return _cmd("pm2.delete", [self._bin, "delete", self._app])

    def persist(self) -> Cmd | None:
        # dump.pm2 holds every process's environment, secrets from shared/.env included:
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


# $1 the pm2 executable. PM2_HOME is honoured like pm2 itself does.
PM2_SAVE_SCRIPT = r"""
umask 077
"$1" save --force || exit $?
d="${PM2_HOME:-$HOME/.pm2}"
chmod 0600 -- "$d/dump.pm2" || exit 1
if [ -f "$d/dump.pm2.bak" ]; then chmod 0600 -- "$d/dump.pm2.bak"; fi
"""

# $1 app name, $2 lines. PM2_HOME is honoured like pm2 itself does.
PM2_LOGS_SCRIPT = r"""
d="${PM2_HOME:-$HOME/.pm2}/logs"
for f in "$d/$1-out.log" "$d/$1-error.log"; do
  echo "==> $f <=="
  if [ -f "$f" ]; then tail -n "$2" -- "$f"; else echo "(no such file)"; fi
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
    PM2 copies the app's environment (secrets from shared/.env included) into pm2_env."""
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
