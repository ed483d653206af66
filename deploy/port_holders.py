"""Who holds the app's port when a gate failed, judged from `commands.port_holders`.

A PM2 app's port is held by PM2's daemon (cluster mode: it listens for the workers) or by one
of its children (fork mode) — judged by pid against PM2's own pid file, never by a process's
name, which a process chooses itself. A listener that is neither escaped PM2 — typically a daemon
the release started with a double fork and `setsid`: `pm2 stop`/`delete` never reaches it, it
keeps the port after its release stopped, and no release can bind it any more (each start
crashes on EADDRINUSE; rolling back fails the same way). Naming it is the whole fix.
"""

from __future__ import annotations

from dataclasses import dataclass

PM2_MARK = "@@pm2 "


@dataclass(frozen=True)
class Holder:
    pid: str  # "-": a process `ss` could not attribute (another user's)
    ppid: str
    cwd: str
    args: str
    under_pm2: bool  # PM2's daemon itself, or one of its children


def parse(stdout: str) -> list[Holder]:
    lines = stdout.splitlines()
    god = next((line[len(PM2_MARK) :].strip() for line in lines if line.startswith(PM2_MARK)), "")
    holders = []
    for line in lines:
        fields = [f.strip() for f in line.split("\t")]
        if line.startswith(PM2_MARK) or len(fields) != 4 or not fields[0]:
            continue
        pid, ppid, cwd, args = fields
        holders.append(Holder(pid, ppid, cwd, args, under_pm2=bool(god) and god in (pid, ppid)))
    return holders


def stray_note(holders: list[Holder], *, port: int, app: str, host: str) -> str:
    """The sentence for the operator when something outside PM2 holds the port, else ""."""
    strays = [h for h in holders if not h.under_pm2]
    if not strays:
        return ""
    named = "; ".join(
        f"pid {h.pid} (`{h.args or '?'}`, cwd {h.cwd or '?'}, parent pid {h.ppid or '?'})"
        if h.pid != "-"
        else f"a process of another user (`sudo ss -ltnp 'sport = :{port}'` names it)"
        for h in strays
    )
    pids = " ".join(h.pid for h in strays if h.pid != "-")
    kill = f"`kill {pids}` on {host}" if pids else "stop it"
    return (
        f"port {port} on {host} is held by {named}, which is not a PM2 process of {app}: a "
        f"process a release left behind (a daemon started with a double fork or setsid "
        f"escapes PM2's stop), so no release can bind the port. Fix: stop it ({kill}), "
        f"then redeploy or roll back."
    )
