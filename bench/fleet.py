"""Many hosts (issue 15): a warm deploy to one host vs three (rollout batch all, and batch 1),
and a bad release on host two: how long until every host serves the previous release again.

    python -m bench.fleet --iterations 3 --json /tmp/fleet.json
    python -m bench.fleet --sandboxes rgh15a:29,rgh15b:30,rgh15c:31

Needs root: it boots three sandbox VPSs (default rgfa/rgfb/rgfc at 10.231.{40,41,42}.2) and
removes them at the end. Every deploy runs in-process through deploy.operations exactly as
`releasegate deploy` does; each figure is the median and range over the iterations. Method and
figures: docs/performance.md ("Many hosts").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.rig import INSTALL, TimedReporter, load_average
from deploy import demo, operations, sandbox
from deploy.operations import Options

HEALTH = {"deadline": 8, "interval": 0.25, "successes": 3, "stable_for": 2, "probe_timeout": 2}
ENVS = {
    "one": ("one host", None),
    "all": ("3 hosts, batch all", "all"),
    "rolling": ("3 hosts, batch 1", 1),
}


class Bench:
    def __init__(self, infos: list[sandbox.SandboxInfo], work: Path) -> None:
        self.infos = infos
        self.work = work
        self.repo = demo.make_app_repo(work)
        self.root = "/srv/rg-fleet-bench"
        self.app = "fleet-bench"
        self.port = 4890
        known = work / "known_hosts"
        known.write_text("".join(i.known_hosts.read_text() for i in infos))
        self.inventories = work / "inventories"
        self.inventories.mkdir()
        hosts = [
            {
                "name": f"web{n + 1}",
                "address": info.address,
                "user": info.user,
                "identity_file": str(info.identity_file),
            }
            for n, info in enumerate(infos)
        ]
        for env, (_label, batch) in ENVS.items():
            data: dict[str, Any] = {
                "host_defaults": {"root": self.root},
                "hosts": hosts[:1] if batch is None else hosts,
                "ssh": {"known_hosts": str(known)},
                "app": {"name": self.app, "repo": str(self.repo), "install": INSTALL},
                "process": {
                    "command": "server.js",
                    "port": self.port,
                    "instances": 2,
                    "env": {"HOST": "0.0.0.0"},
                },
                "health": HEALTH,
            }
            if batch is not None:
                data["rollout"] = {"batch": batch}
            (self.inventories / f"{env}.yml").write_text(yaml.safe_dump(data))
        self.stamp = 0

    def ssh(self, n: int, command: str) -> None:
        subprocess.run(self.infos[n].ssh_argv(command), check=True, capture_output=True, timeout=60)

    def commit(self) -> None:
        self.stamp += 1
        (self.repo / "BENCH_STAMP").write_text(f"{self.stamp}\n")
        demo.commit_fault(self.repo, "")

    def deploy(self, env: str, expect: int) -> tuple[float, TimedReporter]:
        self.commit()
        rep = TimedReporter()
        start = time.monotonic()
        code = operations.run_deploy(
            env, Options(inventories=self.inventories, plain=True), reporter=rep
        )
        seconds = time.monotonic() - start
        if code != expect:
            tail = "\n".join(rep.lines[-25:])
            raise SystemExit(f"deploy {env} exited {code}, expected {expect}:\n{tail}")
        return seconds, rep

    def serving(self, n: int) -> str | None:
        url = f"http://{self.infos[n].address}:{self.port}/version"
        try:
            return str(httpx.get(url, timeout=2).json()["release"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def bad_on_two(self, env: str) -> dict[str, float]:
        """A release that fails its gate on host two only (its shared/.env sets the sample
        app's FAULT): the deploy's start until every host answers with the previous release,
        watched from here over HTTP, and the same from the moment host two's rollback began."""
        previous = self.serving(0)
        self.ssh(1, f"echo FAULT=ready_503 > {self.root}/shared/.env")
        left: list[float] = []
        done = threading.Event()

        def watch() -> None:  # the last moment any host answered with something else
            while not done.is_set():
                if any(self.serving(n) != previous for n in range(len(self.infos))):
                    left.append(time.monotonic())
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        start = time.monotonic()
        watcher.start()
        try:
            seconds, rep = self.deploy(env, expect=3)
        finally:
            done.set()
            watcher.join()
            self.ssh(1, f"rm -f {self.root}/shared/.env")
        restored = max(left, default=start)
        failed_at = rep.said_at("[web2] roll back to ")
        return {
            "deploy_s": seconds,
            "all_previous_s": restored - start,
            "failure_to_all_previous_s": max(0.0, restored - failed_at),
            "failure_to_end_s": start + seconds - failed_at,
        }

    def remove(self) -> None:
        for n in range(len(self.infos)):
            subprocess.run(
                self.infos[n].ssh_argv(
                    f"pm2 delete {self.app} >/dev/null 2>&1; rm -rf {self.root}"
                ),
                capture_output=True,
                timeout=60,
            )


def breakdown(rep: TimedReporter, total: float) -> dict[str, float]:
    """Where a deploy's time went: build, ship, activate + gate (every batch), the rest
    (connect, preflight, lock, state reads, promote, unlock)."""

    def spent(*prefixes: str) -> float:
        return sum((s.end or s.start) - s.start for s in rep.spans if s.name.startswith(prefixes))

    parts = {
        "build": spent("build artifact"),
        "ship": spent("ship "),
        "activate_gate": spent("activate ", "gate "),
    }
    parts["rest"] = total - sum(parts.values())
    return parts


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--sandboxes", default="rgfa:40,rgfb:41,rgfc:42")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="leave the sandboxes running")
    args = parser.parse_args(argv)
    specs = []
    state = Path(tempfile.mkdtemp(prefix="rg-fleet-bench-"))
    for item in args.sandboxes.split(","):
        name, _, index = item.partition(":")
        specs.append(sandbox.SandboxSpec(name=name, index=int(index), state_root=state / name))
    figures: dict[str, Any] = {"load_before": load_average(), "iterations": args.iterations}
    try:
        infos = [sandbox.up(spec) for spec in specs]
        with tempfile.TemporaryDirectory(prefix="rg-fleet-") as work:
            bench = Bench(infos, Path(work))
            try:
                bench.deploy("rolling", expect=0)  # cold: installs everywhere
                runs: dict[str, list[float]] = {env: [] for env in ENVS}
                parts: dict[str, dict[str, list[float]]] = {env: {} for env in ENVS}
                for _ in range(args.iterations):
                    for env in ("one", "all", "rolling"):
                        seconds, rep = bench.deploy(env, expect=0)
                        runs[env].append(seconds)
                        for key, value in breakdown(rep, seconds).items():
                            parts[env].setdefault(key, []).append(value)
                    bench.deploy("rolling", expect=0)  # every host on one release again
                figures["warm_deploy_s"] = {ENVS[env][0]: summary(v) for env, v in runs.items()}
                figures["warm_deploy_breakdown_s"] = {
                    ENVS[env][0]: {k: summary(v) for k, v in by.items()}
                    for env, by in parts.items()
                }
                one = statistics.median(runs["one"])
                figures["ratio_all_vs_one"] = round(statistics.median(runs["all"]) / one, 2)
                figures["ratio_rolling_vs_one"] = round(statistics.median(runs["rolling"]) / one, 2)
                bad: dict[str, dict[str, list[float]]] = {"all": {}, "rolling": {}}
                for _ in range(args.iterations):
                    for env in ("all", "rolling"):
                        for key, value in bench.bad_on_two(env).items():
                            bad[env].setdefault(key, []).append(value)
                figures["bad_release_on_host_two"] = {
                    ENVS[env][0]: {k: summary(v) for k, v in by.items()} for env, by in bad.items()
                }
            finally:
                bench.remove()
    finally:
        if not args.keep:
            for spec in specs:
                sandbox.down(spec)
    figures["load_after"] = load_average()
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
