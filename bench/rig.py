"""The benchmark rig: the sandbox VPS, apps on it, and deploys/rollbacks driven in-process.

Releasegate is driven exactly as a user's `releasegate deploy bench` would drive it
(`deploy.operations.run_deploy` with an inventory file), with a reporter that also notes
*when* each stage began and ended and when each remote command was sent. Nothing in
releasegate is patched: remote commands are counted through the reporter's `command` lines
(every remote command is reported once; readiness probes are the lines starting with "+"),
SSH connections through the sandbox's sshd journal (or the delay proxy's accept events).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from deploy import demo, inventory, operations, proxy, sandbox
from deploy.model import Layout
from deploy.operations import Options
from deploy.process import Systemd, manager_for
from deploy.report import RecordingReporter

PROJECT = Path(__file__).resolve().parent.parent
GIT = ("git", "-C", str(PROJECT))
INSTALL = "npm ci --omit=dev --offline --no-audit --no-fund"


@dataclass
class Span:
    name: str
    start: float  # time.monotonic()
    end: float | None = None


class TimedReporter(RecordingReporter):
    """A RecordingReporter that also notes when stages ran and when commands were sent."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[Span] = []
        self.sent: list[tuple[float, str]] = []
        self.said: list[tuple[float, str]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        span = Span(name, time.monotonic())
        self.spans.append(span)
        self.stages.append(name)
        try:
            yield
        finally:
            span.end = time.monotonic()

    def command(self, display: str) -> None:
        super().command(display)
        self.sent.append((time.monotonic(), display))

    def info(self, text: str) -> None:
        super().info(text)
        self.said.append((time.monotonic(), text))

    def said_at(self, prefix: str) -> float:
        """When the first info line starting with `prefix` was reported."""
        for at, text in self.said:
            if text.startswith(prefix):
                return at
        raise LookupError(f"no line starting with {prefix!r} was reported")

    def span(self, prefix: str) -> Span:
        """The first stage whose name starts with `prefix` (stage names: deploy/flow.py)."""
        for span in self.spans:
            if span.name.startswith(prefix):
                return span
        raise LookupError(
            f"no stage starting with {prefix!r} was reported (stages: "
            f"{', '.join(s.name for s in self.spans)}); did deploy/flow.py rename it?"
        )


@dataclass
class Run:
    """One deploy or rollback as the bench saw it."""

    op: str
    code: int
    start: float  # monotonic
    end: float
    wall_start: float  # time.time(), to match the sshd journal
    wall_end: float
    rep: TimedReporter

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def commands(self) -> int:
        return sum(1 for _, display in self.rep.sent if not display.startswith("+"))

    @property
    def probes(self) -> int:
        return sum(1 for _, display in self.rep.sent if display.startswith("+"))

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage, release ids replaced by <id> so runs can be compared."""
        out: dict[str, float] = {}
        for span in self.rep.spans:
            if span.end is not None:
                name = " ".join("<id>" if _looks_like_id(w) else w for w in span.name.split())
                out[name] = out.get(name, 0.0) + span.end - span.start
        return out

    def commands_per_stage(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for at, display in self.rep.sent:
            if display.startswith("+"):
                continue
            owner = "(outside any stage)"
            for span in self.rep.spans:
                if span.start <= at <= (span.end if span.end is not None else at):
                    owner = " ".join("<id>" if _looks_like_id(w) else w for w in span.name.split())
            out[owner] = out.get(owner, 0) + 1
        return out

    def failure(self) -> str:
        return "\n".join(self.rep.lines[-25:])


def _looks_like_id(word: str) -> bool:
    head, _, tail = word.partition("-")
    return len(head) == 14 and head.isdigit() and len(tail) >= 7


@dataclass(frozen=True)
class Kind:
    """How an app runs: its process manager and its deploy strategy."""

    manager: str = "pm2"  # pm2 | systemd (system scope)
    instances: int = 2  # PM2: 2 = cluster mode, 1 = fork mode
    strategy: str = "in-place"  # in-place | blue-green
    retire: str = "keep-warm"  # blue-green: after-bake | keep-warm
    bake_s: float = 3.0  # blue-green: strategy.bake.seconds

    @property
    def blue_green(self) -> bool:
        return self.strategy == "blue-green"

    def label(self) -> str:
        if self.manager == "systemd":
            return "systemd"
        return "PM2 cluster" if self.instances > 1 else "PM2 fork"


@dataclass
class App:
    """One app (deploy root, process names, ports) on the sandbox, with its own git repository.
    In-place, users reach the app's port directly; blue/green, nginx's public port."""

    rig: Rig
    name: str
    port: int
    dir: Path
    repo: Path
    kind: Kind = Kind()
    slots: tuple[int, int] = (0, 0)  # blue/green: the blue and green loopback ports
    public_port: int = 0  # blue/green: nginx
    stamp: int = 0
    live: str | None = None  # the release `current` points to, as the last outcome said

    @property
    def root(self) -> str:
        return f"/srv/{self.name}"

    @property
    def inventories(self) -> Path:
        return self.dir / "inventories"

    def inventory(self, env: str, *, address: str, port: int, known_hosts: Path) -> None:
        """Write inventories/<env>.yml for this app, reaching sshd at address:port."""
        rig = self.rig
        process: dict[str, Any] = {"command": "server.js", "port": self.port}
        if not self.kind.blue_green:
            process["env"] = {"HOST": "0.0.0.0"}  # the load generator reaches it over the veth
        if self.kind.manager == "systemd":
            process.update(
                manager="systemd",
                interpreter="node",
                systemd={"scope": "system", "restart_sec": 0.5},
            )
        else:
            process["instances"] = self.kind.instances
        data: dict[str, Any] = {
            "hosts": [
                {
                    "name": "sandbox",
                    "address": address,
                    "port": port,
                    "user": rig.vps.user,
                    "root": self.root,
                    "identity_file": str(rig.vps.identity_file),
                }
            ],
            "ssh": {"known_hosts": str(known_hosts)},
            "app": {"name": self.name, "repo": str(self.repo), "install": INSTALL},
            "process": process,
            "health": dict(rig.health),
            # the sample app's contract pack: what rejects a wrong_contract release
            "smoke": {"packs": [str(PROJECT / "examples" / "sampleapp" / "smoke.yml")]},
        }
        if self.kind.blue_green:
            data["strategy"] = {
                "kind": "blue-green",
                "slots": {"blue": self.slots[0], "green": self.slots[1]},
                "public_port": self.public_port,
                "bake": {"seconds": self.kind.bake_s},
                "retire": self.kind.retire,
            }
        self.inventories.mkdir(parents=True, exist_ok=True)
        (self.inventories / f"{env}.yml").write_text(yaml.safe_dump(data))

    def prepare_host(self) -> None:
        """What an operator does once, as root: the systemd allowlist of the app, and for
        blue/green `releasegate setup` (the upstream file) plus the nginx site."""
        inv = inventory.load("bench", self.inventories)
        if self.kind.manager == "systemd":
            m = manager_for(inv, Layout(PurePosixPath(self.root)))
            assert isinstance(m, Systemd)
            lines = "\n".join(m.sudoers()) + "\n"
            path = f"/etc/sudoers.d/rg-{self.name}"
            self.rig.ssh(
                f"cat > {path}.tmp && chmod 0440 {path}.tmp && visudo -cq -f {path}.tmp && "
                f"mv {path}.tmp {path}",
                user="root",
                stdin=lines,
            )
        if self.kind.blue_green:
            opts = Options(inventories=self.inventories, plain=True)
            rep = TimedReporter()
            if operations.run_setup("bench", opts, reporter=rep) != 0:
                raise RuntimeError(f"releasegate setup failed:\n{chr(10).join(rep.lines[-10:])}")
            demo.install_site(self.rig.vps, inv)

    def commit(self, fault: str = "") -> None:
        """A new commit with unchanged dependencies (and the given fault; "" is healthy)."""
        self.stamp += 1
        (self.repo / "BENCH_STAMP").write_text(f"{self.stamp}\n")
        demo.commit_fault(self.repo, fault)

    def deploy(self, env: str = "bench") -> Run:
        return self._run("deploy", env)

    def rollback(self, env: str = "bench", to: str | None = None) -> Run:
        return self._run("rollback", env, to)

    def _run(self, op: str, env: str, to: str | None = None) -> Run:
        rep = TimedReporter()
        opts = Options(inventories=self.inventories, plain=True)
        wall_start, start = time.time(), time.monotonic()
        if op == "deploy":
            code = operations.run_deploy(env, opts, reporter=rep)
        else:
            code = operations.run_rollback(env, opts, to=to, reporter=rep)
        end, wall_end = time.monotonic(), time.time()
        if rep.outcomes and rep.outcomes[-1].live:
            self.live = rep.outcomes[-1].live
        return Run(op, code, start, end, wall_start, wall_end, rep)

    def url(self, path: str) -> tuple[str, int, str]:
        """Where users reach the app: nginx's public port in blue/green, else the app's."""
        port = self.public_port if self.kind.blue_green else self.port
        return self.rig.vps.service_address, port, path

    def remove(self) -> None:
        names = [self.name, f"{self.name}-blue", f"{self.name}-green"]
        self.rig.ssh(
            f"pm2 delete {' '.join(names)} >/dev/null 2>&1; rm -rf {self.root}", check=False
        )
        units = [f"{self.name}.service", f"{self.name}@blue.service", f"{self.name}@green.service"]
        paths = proxy.proxy_paths(Layout(PurePosixPath(self.root)), self.name)
        self.rig.ssh(
            f"systemctl disable --now {' '.join(units)} >/dev/null 2>&1; "
            f"rm -f /etc/systemd/system/{self.name}.service "
            f"/etc/systemd/system/{self.name}@.service /etc/sudoers.d/rg-{self.name} "
            f"{paths.site} {paths.access_log}; systemctl daemon-reload; "
            "nginx -t -q && systemctl reload nginx; true",
            user="root",
            check=False,
        )


class Rig:
    """The sandbox VPS for one benchmark run and the apps deployed on it."""

    def __init__(
        self,
        spec: sandbox.SandboxSpec,
        work: Path,
        health: dict[str, Any],
        log: Callable[[str], None] | None = None,
        provider: str | None = None,
    ) -> None:
        self.spec = spec
        self.provider = provider
        self.work = work
        self.health = health
        self._log: Callable[[str], None] = log or (lambda text: None)
        self._vps: sandbox.SandboxInfo | None = None
        self._ports = iter(range(4700 + 40 * (spec.index % 50), 65000))
        self._public = iter(range(8800 + 20 * (spec.index % 50), 9900))

    @property
    def vps(self) -> sandbox.SandboxInfo:
        if self._vps is None:
            raise RuntimeError("the sandbox is not up")
        return self._vps

    def up(self) -> sandbox.SandboxInfo:
        self._vps = sandbox.up(self.spec, log=self._log, provider_name=self.provider)
        return self._vps

    def down(self) -> None:
        sandbox.down(self.spec, log=self._log)
        self._vps = None

    def app(self, name: str, kind: Kind | None = None) -> App:
        where = self.work / name
        where.mkdir(parents=True)
        kind = kind or Kind()
        app = App(rig=self, name=name, port=next(self._ports), dir=where, repo=Path(), kind=kind)
        if kind.blue_green:
            app.slots = (next(self._ports), next(self._ports))
            app.public_port = next(self._public)
        app.repo = demo.make_app_repo(where)
        app.inventory(
            "bench", address=self.vps.address, port=self.vps.port, known_hosts=self.vps.known_hosts
        )
        app.prepare_host()
        return app

    def ssh(
        self,
        command: str,
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float = 60,
        stdin: str | None = None,
    ) -> str:
        """A look at the sandbox with the plain ssh client (never during a timed run: it is
        an SSH connection of its own)."""
        res = subprocess.run(
            self.vps.ssh_argv(command, user=user),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"ssh {command!r} on the sandbox failed: {res.stderr.strip()}")
        return res.stdout

    def ssh_logins(self, since_wall: float, user: str) -> list[float]:
        """When `user` logged in over SSH (wall-clock seconds), from the sandbox's sshd journal."""
        out = self.ssh(
            f"journalctl -u ssh -o json --no-pager --since @{int(since_wall) - 1}", user="root"
        )
        logins = []
        for line in out.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith(f"Accepted publickey for {user} "):
                logins.append(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
        return logins

    def app_start_seconds(self, release_dir: str, samples: int) -> list[float]:
        """How long the sample app takes from `node server.js` to listening, on the sandbox."""
        script = (
            "const t=process.hrtime.bigint();"
            "const c=require('child_process').spawn(process.execPath,['server.js'],"
            "{env:{...process.env,PORT:'0',HOST:'127.0.0.1'}});"
            "let out='';c.stdout.on('data',d=>{out+=d;if(out.includes('listening')){"
            "console.log(Number(process.hrtime.bigint()-t)/1e9);c.kill();}});"
            "setTimeout(()=>{c.kill();process.exit(1);},10000).unref();"
        )
        times = []
        for _ in range(samples):
            out = self.ssh(f'cd {release_dir} && node -e "{script}"')
            times.append(float(out.strip().splitlines()[-1]))
        return times


# ---------------------------------------------------------------------------- proxy


@dataclass
class ProxyEvent:
    event: str
    data: dict[str, Any]


class DelayProxy:
    """bench/delayproxy.py as a child process; its JSON-lines events are collected here."""

    def __init__(self, target: tuple[str, int], delay_ms: float, turn_events: bool = False) -> None:
        self._argv = [
            sys.executable,
            "-m",
            "bench.delayproxy",
            "--listen",
            "127.0.0.1:0",
            "--target",
            f"{target[0]}:{target[1]}",
            "--delay-ms",
            str(delay_ms),
            *(["--turn-events"] if turn_events else []),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self._events: list[ProxyEvent] = []
        self._lock = threading.Lock()
        self.port = 0

    def __enter__(self) -> DelayProxy:
        self._proc = subprocess.Popen(
            self._argv,
            stdout=subprocess.PIPE,
            text=True,
            cwd=PROJECT,
            env={**os.environ, "PYTHONPATH": str(PROJECT)},
        )
        assert self._proc.stdout is not None
        first = json.loads(self._proc.stdout.readline() or "{}")
        if first.get("event") != "listening":
            self.__exit__()
            raise RuntimeError(f"the delay proxy did not start: {first}")
        self.port = int(first["port"])
        threading.Thread(target=self._read, daemon=True, name="bench-proxy").start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                with self._lock:
                    self._events.append(ProxyEvent(str(data.get("event")), data))

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e.data for e in self._events if e.event == kind]

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None


def known_hosts_for(vps: sandbox.SandboxInfo, name: str, into: Path) -> Path:
    """A known_hosts pinning the sandbox's host key under another name (e.g. [127.0.0.1]:N)."""
    lines = []
    for line in vps.known_hosts.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            lines.append(" ".join([name, *parts[1:]]))
    if not lines:
        raise RuntimeError(f"no host key in {vps.known_hosts}")
    into.write_text("\n".join(lines) + "\n")
    return into


# ---------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or "unknown",
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "node": _output(["node", "--version"]),
        "pm2": _pm2_version(),
        "releasegate_revision": _output([*GIT, "rev-parse", "--short=12", "HEAD"]),
        "releasegate_tree": _tree_state(),
    }


def load_average() -> str:
    """The machine's load while the bench ran (1, 5, 15 minutes): the figures depend on it."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def _output(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else "unknown"


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def _pm2_version() -> str:
    """From PM2's package.json: running `pm2 --version` would start a PM2 daemon here."""
    pm2 = shutil.which("pm2")
    if pm2 is None:
        return "unknown"
    package = Path(pm2).resolve().parent.parent / "package.json"
    with contextlib.suppress(OSError, ValueError):
        return str(json.loads(package.read_text())["version"])
    return "unknown"


def _tree_state() -> str:
    """clean, or which product files differ from the commit (the figures are for that tree)."""
    try:
        res = subprocess.run(
            [*GIT, "status", "--porcelain", "--", "deploy", "smoke", "templates"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if res.returncode != 0:
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in res.stdout.splitlines() if line.strip()]
    return "modified: " + ", ".join(changed) if changed else "clean"
