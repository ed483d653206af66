"""PM2: an ecosystem file per release, cwd through `current`, startOrReload --update-env."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deploy.commands import Cmd, _cmd
from deploy.inventory import Inventory
from deploy.model import Layout, ProcessSnapshot
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
        return _cmd("pm2.save", [self._bin, "save", "--force"])


def parse_jlist(stdout: str, app: str) -> ProcessSnapshot:
    """Aggregate PM2's per-instance entries for one app into a single snapshot."""
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
    mine = [p for p in procs if p.get("name") == app]
    if not mine:
        return ProcessSnapshot(status="missing", pids=(), restarts=0)
    statuses = [str(p.get("pm2_env", {}).get("status", "unknown")) for p in mine]
    failed = [s for s in statuses if s in FAILED]
    if failed:
        status = failed[0]
    elif all(s == "online" for s in statuses):
        status = "online"
    else:
        status = next(s for s in statuses if s != "online")
    pids = tuple(int(p["pid"]) for p in mine if int(p.get("pid") or 0) > 0)
    restarts = sum(int(p.get("pm2_env", {}).get("restart_time", 0) or 0) for p in mine)
    return ProcessSnapshot(status=status, pids=pids, restarts=restarts)
