"""releasegate benchmarks on the sandbox VPS (issue 6): how long a deploy takes, how fast a bad
release is undone, whether users see errors meanwhile, and how chatty a deploy is.

    python -m bench.run --iterations 5 --json bench/results/latest.json
    python -m bench.run --quick --json /tmp/bench.json      # one iteration, short windows

Needs root (it boots its own sandbox VPS, `rgbench` at 10.231.16.2 unless --sandbox says
otherwise, and removes it at the end). Each figure is the median and range over the runs;
a table and a Markdown version for docs/performance.md are printed, everything is saved as
JSON. Method and caveats: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import figures
from bench.load import Hit, Load, fetch, final_run_start, tail_is
from bench.rig import App, DelayProxy, Rig, Run, known_hosts_for, machine
from deploy import sandbox

# The flow ships one file per deploy over SFTP (the artifact, which also carries the smoke packs;
# the secrets for the release's env snapshot would be a second one, the bench configures none).
# Uploads do not pass the reporter's `command` hook, so this is the flow's count, not an
# observation: see docs/performance.md ("hooks").
UPLOADS_PER_DEPLOY = 1


class BenchError(Exception):
    """A scenario did not behave as releasegate promises; the figures would be meaningless."""


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        self.iterations: int = args.iterations or (1 if args.quick else 5)
        # Good deploys under load: a request lost in a reload is rare (docs/performance.md),
        # so this one can be raised on its own to measure the rate.
        self.good_deploys: int = args.good_deploys or self.iterations
        self.quick: bool = args.quick
        self.pm2_sched: str = args.pm2_sched
        self.rate: float = args.rate
        self.delay_ms: float = args.delay_ms
        # Load before a deploy starts (in requests) and answers in a row that count as "serving".
        self.lead_in = int(self.rate * (0.3 if self.quick else 1.0))
        self.settle = 10
        self.start_samples = 3 if self.quick else 10
        self.health: dict[str, Any] = {
            "deadline": 5.0,
            "interval": 0.25,
            "successes": 3,
            "probe_timeout": 2.0,
            # the stability window (no restart, every instance up) adds to every gated deploy
            # and rollback; stated here so the figures say which window they were measured with
            "stable_for": 2.0,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "good_deploys_under_load": self.good_deploys,
            "quick": self.quick,
            "load_rate_per_s": self.rate,
            "proxy_delay_ms_each_way": self.delay_ms,
            "health": self.health,
            "app": "examples/sampleapp under PM2, cluster mode, 2 instances",
            "load": "GET /version, a new TCP connection per request (Connection: close)",
            "pm2_daemon_sched_policy": self.pm2_sched,
        }


def until(check: Callable[[], bool], deadline: float, step: float = 0.05) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(step)
    return check()


class Bench:
    def __init__(self, rig: Rig, cfg: Settings, say: Callable[[str], None]) -> None:
        self.rig = rig
        self.cfg = cfg
        self.say = say
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.details: dict[str, Any] = {}
        self.ssh_windows: dict[str, list[Run]] = defaultdict(list)
        self.started_wall = time.time()

    # ------------------------------------------------------------------ helpers

    def expect(self, run: Run, code: int, what: str) -> Run:
        if run.code != code:
            raise BenchError(
                f"{what}: {run.op} exited {run.code}, expected {code}. Last lines:\n{run.failure()}"
            )
        return run

    def serving(self, app: App) -> str:
        hit = fetch(app.rig.vps.address, app.port, "/version", 2.0)
        if not hit.ok or hit.release is None:
            raise BenchError(f"{app.name} does not answer /version: {hit.error or hit.status}")
        return hit.release

    def lead_in(self, load: Load) -> None:
        if not load.wait_for(lambda hits: len(hits) >= self.cfg.lead_in, deadline=10):
            raise BenchError("the load generator did not get going within 10 s")

    def record(self, key: str, value: float) -> None:
        self.samples[key].append(value)

    # ------------------------------------------------------------------ scenarios

    def cold(self) -> None:
        runs = []
        for i in range(self.cfg.iterations):
            # A first deploy to a fresh host: no deploy root, no PM2 daemon yet.
            self.rig.ssh("pm2 kill >/dev/null 2>&1; true")
            app = self.rig.app(f"bcold{i}")
            run = self.expect(app.deploy(), 0, f"cold deploy {i + 1}")
            self.record("cold_deploy_s", run.seconds)
            self.record("remote_commands_cold", run.commands)
            self.ssh_windows["cold"].append(run)
            runs.append(run)
            self.say(f"cold deploy {i + 1}/{self.cfg.iterations}: {run.seconds:.2f} s")
            app.remove()
        self.details["cold_stage_seconds"] = median_stages(runs)

    def warm(self, app: App) -> None:
        runs = []
        for i in range(self.cfg.iterations):
            app.commit()
            run = self.expect(app.deploy(), 0, f"warm redeploy {i + 1}")
            self.record("warm_deploy_s", run.seconds)
            self.record("remote_commands_warm", run.commands)
            self.record("probes_warm", run.probes)
            self.record("uploads_warm", UPLOADS_PER_DEPLOY)
            self.record("round_trips_warm", run.commands + UPLOADS_PER_DEPLOY)
            self.ssh_windows["warm"].append(run)
            runs.append(run)
            self.say(
                f"warm redeploy {i + 1}/{self.cfg.iterations}: {run.seconds:.2f} s, "
                f"{run.commands} remote commands, {run.probes} probes"
            )
        self.details["warm_stage_seconds"] = median_stages(runs)
        self.details["warm_commands_per_stage"] = runs[-1].commands_per_stage()
        self.details["warm_commands"] = [d for _, d in runs[-1].rep.sent if not d.startswith("+")]

    def rollback(self, app: App) -> None:
        # A plain rollback never returns to the release it left (it is `rolled-back`), so
        # after the first one the iterations go back and forth between the two releases
        # with `--to`: the same gated manual rollback, to a release known to be healthy.
        left: str | None = None
        for i in range(self.cfg.iterations):
            before = app.live
            with Load(*app.url("/health/ready"), rate=self.cfg.rate, max_seconds=60) as load:
                run = self.expect(app.rollback(to=left), 0, f"manual rollback {i + 1}")
                target = run.rep.outcomes[-1].release or ""
                if not load.wait_for(tail_is(target, self.cfg.settle), deadline=10):
                    raise BenchError(f"rollback {i + 1}: {target} does not answer ready outside")
            hits = load.stop()
            left = before
            first = first_ready(hits, target, run.start)
            steady = final_run_start(hits, target)
            if first is None or steady is None:
                raise BenchError(f"rollback {i + 1}: no ready answer from {target} seen")
            self.record("rollback_ready_s", first.done - run.start)
            self.record("rollback_serving_s", max(0.0, steady.done - run.start))
            self.record("rollback_command_s", run.seconds)
            self.record("remote_commands_rollback", run.commands)
            self.ssh_windows["rollback"].append(run)
            self.say(
                f"manual rollback {i + 1}/{self.cfg.iterations}: first ready answer after "
                f"{first.done - run.start:.2f} s, only {target} from "
                f"{steady.done - run.start:.2f} s, command {run.seconds:.2f} s"
            )

    def good_under_load(self, app: App) -> None:
        errors: list[str] = []
        offsets: list[float] = []
        n = self.cfg.good_deploys
        for i in range(n):
            app.commit()
            with Load(*app.url("/version"), rate=self.cfg.rate, max_seconds=120) as load:
                self.lead_in(load)
                run = self.expect(app.deploy(), 0, f"good deploy under load {i + 1}")
                new = run.rep.outcomes[-1].release or ""
                if not load.wait_for(tail_is(new, self.cfg.settle), deadline=10):
                    raise BenchError(f"after the good deploy {i + 1}, {new} does not serve")
            hits = load.stop()
            failed = [h for h in hits if not h.ok]
            errors += [h.error or f"HTTP {h.status}" for h in failed]
            activated = run.rep.span("activate ").start
            offsets += [round(h.sent - activated, 2) for h in failed]
            self.record("failed_requests_good", len(failed))
            self.record("requests_good", len(hits))
            self.say(
                f"good deploy under {self.cfg.rate:g} req/s {i + 1}/{n}: "
                f"{len(failed)} of {len(hits)} requests failed ({run.seconds:.2f} s)"
            )
        self.details["failed_request_errors_good"] = sorted(set(errors))[:10]
        # When the failed requests were sent, in seconds after the activate stage began.
        self.details["failed_request_offsets_good"] = offsets[:50]

    def bad(self, app: App, fault: str) -> None:
        errors: list[str] = []
        offsets: list[float] = []
        displaced = []
        runs = []
        key = fault.replace(":", "_")
        for i in range(self.cfg.iterations):
            previous = self.serving(app)
            app.commit(fault)
            with Load(*app.url("/version"), rate=self.cfg.rate, max_seconds=120) as load:
                self.lead_in(load)
                run = self.expect(app.deploy(), 3, f"{fault} deploy {i + 1}")
                if not load.wait_for(tail_is(previous, self.cfg.settle), deadline=10):
                    raise BenchError(f"after the {fault} deploy {i + 1}, {previous} is not back")
            hits = load.stop()
            activated = run.rep.span("activate ").start
            rolled = run.rep.span("roll back to ").start
            back = final_run_start(hits, previous)
            if back is None:
                raise BenchError(f"{fault} deploy {i + 1}: {previous} does not serve at the end")
            # Did anything but the previous release answer after activation (errors, or the
            # bad release itself)? Under PM2 reload the old workers may keep serving a while.
            displaced.append(back.sent > activated)
            failed = [h for h in hits if not h.ok]
            errors += [h.error or f"HTTP {h.status}" for h in failed]
            offsets += [round(h.sent - activated, 2) for h in failed]
            self.record(f"{key}_restore_s", max(0.0, back.done - activated))
            self.record(f"{key}_detect_s", rolled - activated)
            self.record(f"{key}_rollback_s", max(0.0, back.done - rolled))
            self.record(f"failed_requests_{key}", len(failed))
            if fault == "ready_503":
                self.record("remote_commands_bad", run.commands)
            self.ssh_windows[key].append(run)
            runs.append(run)
            self.say(
                f"{fault} deploy {i + 1}/{self.cfg.iterations}: rollback began "
                f"{rolled - activated:.2f} s after activation, {previous} served again after "
                f"{max(0.0, back.done - activated):.2f} s; {len(failed)} of {len(hits)} "
                f"requests failed"
            )
        self.details[f"{key}_previous_displaced"] = displaced
        self.details[f"{key}_stage_seconds"] = median_stages(runs)
        self.details[f"{key}_process_state"] = [
            line for line in runs[-1].rep.outcomes[-1].evidence if line.startswith("process:")
        ]
        self.details[f"failed_request_errors_{key}"] = sorted(set(errors))[:10]
        self.details[f"failed_request_offsets_{key}"] = offsets[:100]

    def wan(self, app: App) -> None:
        vps = self.rig.vps
        with DelayProxy((vps.address, vps.port), self.cfg.delay_ms) as proxy:
            pins = known_hosts_for(vps, f"[127.0.0.1]:{proxy.port}", app.dir / "known_hosts_wan")
            app.inventory("benchwan", address="127.0.0.1", port=proxy.port, known_hosts=pins)
            for i in range(self.cfg.iterations):
                app.commit()
                run = self.expect(app.deploy("benchwan"), 0, f"warm redeploy via proxy {i + 1}")
                conns, turns = proxied(proxy, run)
                self.record("warm_deploy_wan_s", run.seconds)
                self.record("ssh_connections_wan", conns)
                self.record("wire_turns_wan", turns)
                self.say(
                    f"warm redeploy via {self.cfg.delay_ms:g} ms proxy {i + 1}/"
                    f"{self.cfg.iterations}: {run.seconds:.2f} s, {conns} connection(s), "
                    f"{turns} turns"
                )

    def app_start(self, app: App) -> None:
        for seconds in self.rig.app_start_seconds(f"{app.root}/current", self.cfg.start_samples):
            self.record("app_start_s", seconds)
        self.say(f"app start: median {statistics.median(self.samples['app_start_s']):.3f} s")

    def ssh_connections(self) -> None:
        """Logins of the deploy user in each run's time window (from the sshd journal)."""
        logins = self.rig.ssh_logins(self.started_wall, self.rig.vps.user)
        per_kind: dict[str, list[int]] = {}
        for kind, runs in self.ssh_windows.items():
            per_kind[kind] = [
                sum(1 for t in logins if run.wall_start <= t <= run.wall_end) for run in runs
            ]
        self.samples["ssh_connections_warm"] = [float(n) for n in per_kind.get("warm", [])]
        self.details["ssh_connections_per_operation"] = per_kind

    # ------------------------------------------------------------------ all of it

    def run(self) -> None:
        n = self.cfg.iterations
        self.say(f"{n} iteration(s){' (quick)' if self.cfg.quick else ''}")
        self.cold()
        if self.cfg.pm2_sched != "default":
            # The PM2 daemon is the cluster primary: its environment picks how new connections
            # reach the workers (Node's round-robin handoff, or the workers accept themselves).
            self.rig.ssh(
                f"pm2 kill >/dev/null 2>&1; NODE_CLUSTER_SCHED_POLICY={self.cfg.pm2_sched} "
                f"pm2 ping >/dev/null"
            )
            self.say(f"PM2 daemon restarted with NODE_CLUSTER_SCHED_POLICY={self.cfg.pm2_sched}")
        app = self.rig.app("bmain")
        self.expect(app.deploy(), 0, "first deploy of the main app")
        if not self.cfg.quick:
            app.commit()
            self.expect(app.deploy(), 0, "warm-up deploy")  # not measured
        self.warm(app)
        self.rollback(app)
        self.good_under_load(app)
        self.bad(app, "boot_crash")
        self.bad(app, "ready_503")
        self.wan(app)
        self.app_start(app)
        self.ssh_connections()
        app.remove()


def proxied(proxy: DelayProxy, run: Run) -> tuple[int, int]:
    """Connections the proxy accepted during `run`, and their request→reply turns (read when
    the proxy reports them closed)."""
    conns = {e["conn"] for e in proxy.events("accept") if run.start <= e["t"] <= run.end}

    def closed() -> list[dict[str, Any]]:
        return [e for e in proxy.events("close") if e["conn"] in conns]

    if not until(lambda: len(closed()) == len(conns), deadline=10):
        raise BenchError("the proxied SSH connections did not close after the deploy")
    return len(conns), sum(int(e["turns"]) for e in closed())


def first_ready(hits: list[Hit], release: str | None, after: float) -> Hit | None:
    ready = [h for h in hits if h.ok and h.release == release and h.sent >= after]
    return min(ready, key=lambda h: h.done) if ready else None


def median_stages(runs: list[Run]) -> dict[str, float]:
    per: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for name, seconds in run.stage_seconds().items():
            per[name].append(seconds)
    return {name: round(statistics.median(v), 3) for name, v in per.items()}


# ---------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--iterations", type=int, default=0, help="runs per figure (default 5; 1 quick)")
    p.add_argument(
        "--good-deploys", type=int, default=0, help="good deploys under load (default: iterations)"
    )
    p.add_argument("--quick", action="store_true", help="one iteration, short windows (CI smoke)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument(
        "--sandbox",
        default=os.environ.get("RELEASEGATE_BENCH_SANDBOX", "rgbench:16"),
        help="NAME:INDEX of the sandbox VPS to boot (default rgbench:16 → 10.231.16.2)",
    )
    p.add_argument(
        "--pm2-sched",
        choices=("default", "rr", "none"),
        default="default",
        help="start the sandbox's PM2 daemon with NODE_CLUSTER_SCHED_POLICY=rr|none",
    )
    p.add_argument("--rate", type=float, default=50.0, help="load in requests per second")
    p.add_argument("--delay-ms", type=float, default=25.0, help="proxy delay, each way")
    args = p.parse_args(argv)
    if not 0 <= args.iterations <= 50:
        p.error("--iterations must be between 1 and 50")
    if not 0 <= args.good_deploys <= 200:
        p.error("--good-deploys must be between 1 and 200")
    if not 1 <= args.rate <= 200:
        p.error("--rate must be between 1 and 200 requests per second")
    if not 0 <= args.delay_ms <= 500:
        p.error("--delay-ms must be between 0 and 500")
    _, _, index = args.sandbox.partition(":")
    if not index.isdigit() or not 1 <= int(index) <= 254:
        p.error("--sandbox must be NAME:INDEX with INDEX 1..254, e.g. rgbench:16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Settings(args)
    if os.geteuid() != 0:
        print("bench: needs root (it boots the sandbox VPS)", file=sys.stderr)
        return 2
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {text}", file=sys.stderr, flush=True)

    name, _, index = args.sandbox.partition(":")
    with tempfile.TemporaryDirectory(prefix="releasegate-bench-") as tmp:
        spec = sandbox.SandboxSpec(name=name, index=int(index), state_root=Path(tmp) / "state")
        rig = Rig(spec, Path(tmp) / "work", cfg.health)
        (Path(tmp) / "work").mkdir()
        try:
            rig.up()
            say(f"sandbox {name} up at {rig.vps.address}")
            bench = Bench(rig, cfg, say)
            bench.run()
        except (BenchError, sandbox.SandboxError, RuntimeError, LookupError) as exc:
            # BenchError: releasegate misbehaved; RuntimeError/LookupError: the rig could not
            # look at the sandbox or a stage it times is missing (the message says which).
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            rig.down()
            say(f"sandbox {name} down")
    summary = figures.summarise(bench.samples)
    verdicts = figures.judge(summary)
    result = {
        "schema": "releasegate-bench/1",
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - began, 1),
        "settings": cfg.as_dict(),
        "machine": machine(),
        "figures": summary,
        "targets": [v.as_dict() for v in verdicts],
        "details": bench.details,
    }
    print(figures.text_table(summary))
    print()
    print("Markdown (docs/performance.md):\n")
    print(figures.markdown_table(summary))
    print()
    print(figures.markdown_targets(verdicts))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
