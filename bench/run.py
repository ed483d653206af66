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
import dataclasses
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
from bench.rig import App, DelayProxy, Kind, Rig, Run, known_hosts_for, load_average, machine
from deploy import sandbox

# The flow ships one file per deploy, on the stdin of one command (the artifact, which also
# carries the smoke packs; the secrets for the release's env snapshot would be a second one,
# the bench configures none).
# Uploads do not pass the reporter's `command` hook, so this is the flow's count, not an
# observation: see docs/performance.md ("hooks").
UPLOADS_PER_DEPLOY = 1

# The bad releases of issue 10, as the sample app's faults. crash_after gets its delay at run
# time: late enough to pass the gate, early enough to crash inside the bake (see fault()).
BAD_KINDS = ("boot_crash", "ready_503", "ready_hang", "wrong_contract", "crash_after")

# Stage names of deploy/flow.py and the blue/green strategy the bench times from (prefixes).
ACTIVATE = "activate "  # in-place: switch current + reload
ROLL_BACK = "roll back to "  # in-place: the automatic rollback
BG_START = "start "  # blue/green: the new release starts in the idle slot (or is warm)
BG_GATE = "gate "  # blue/green: the gate on the slot's own port (absent for a warm release)
BG_SWITCH = "switch the front door to "  # blue/green: nginx's upstream to the new slot
# The switch script as `-v` shows it among the commands sent (deploy/commands.shown).
BG_SWITCH_COMMAND = "<script proxy.switch>"
BG_WATCH = "watch "  # blue/green: verified through the front door, then the bake
BG_BAKE_LINE = "bake: "  # the info line that opens the bake inside the watch stage
BG_REVERT = "roll back to "  # blue/green: begins right after the failed bake check


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
        # blue/green: strategy.bake.seconds (long enough for crash_after to land inside it)
        self.bake_s = 3.0
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
            "app": "examples/sampleapp with its contract smoke pack; PM2 cluster mode (2 "
            "instances) unless a figure says PM2 fork (1 instance) or systemd (system scope)",
            "blue_green": {"bake_s": self.bake_s, "retire": "keep-warm", "front": "nginx"},
            "load": "GET /version, a new TCP connection per request (Connection: close); "
            "in-place to the app's port, blue/green to nginx's public port",
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
        self.details["load_average_at_start"] = load_average()
        self.crash_later = 0.0  # seconds added to crash_after's delay after a miss

    # ------------------------------------------------------------------ helpers

    def expect(self, run: Run, code: int, what: str) -> Run:
        if run.code != code:
            raise BenchError(
                f"{what}: {run.op} exited {run.code}, expected {code}. Last lines:\n{run.failure()}"
            )
        return run

    def serving(self, app: App) -> str:
        host, port, path = app.url("/version")
        hit = fetch(host, port, path, 2.0)
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

    def good_under_load(self, app: App, key: str = "good") -> None:
        """Good deploys under load; `key` names the figures (failed_requests_<key>)."""
        prefix = "bg_" if app.kind.blue_green else ""
        errors: list[str] = []
        offsets: list[float] = []
        n = self.cfg.good_deploys
        for i in range(n):
            app.commit()
            with Load(*app.url("/version"), rate=self.cfg.rate, max_seconds=120) as load:
                self.lead_in(load)
                run = self.expect(app.deploy(), 0, f"good deploy under load {i + 1} ({key})")
                new = run.rep.outcomes[-1].release or ""
                if not load.wait_for(tail_is(new, self.cfg.settle), deadline=10):
                    raise BenchError(f"after the good deploy {i + 1}, {new} does not serve")
            hits = load.stop()
            failed = [h for h in hits if not h.ok]
            errors += [h.error or f"HTTP {h.status}" for h in failed]
            anchor = run.rep.span(BG_SWITCH if app.kind.blue_green else ACTIVATE).start
            offsets += [round(h.sent - anchor, 2) for h in failed]
            self.record(f"{prefix}failed_requests_{key}", len(failed))
            if key == "good":
                self.record(f"{prefix}requests_good", len(hits))
            self.say(
                f"{app.kind.strategy} good deploy ({app.kind.label()}) under {self.cfg.rate:g} "
                f"req/s {i + 1}/{n}: {len(failed)} of {len(hits)} requests failed "
                f"({run.seconds:.2f} s)"
            )
        self.details[f"{prefix}failed_request_errors_{key}"] = sorted(set(errors))[:10]
        # When the failed requests were sent, in seconds after activation (in-place) or the
        # switch (blue/green) began.
        self.details[f"{prefix}failed_request_offsets_{key}"] = offsets[:50]

    def fault(self, kind: str) -> str:
        if kind != "crash_after":
            return kind
        return f"crash_after:{self.crash_after_s:.1f}"

    @property
    def crash_after_s(self) -> float:
        """Seconds after its start at which a crash_after release exits: 0.8 s after the
        new slot took traffic in the good blue/green deploys (so it passes the gate and
        crashes in the bake), or 3.5 s before any were measured."""
        taken = self.samples.get("bg_start_to_traffic_s")
        base = statistics.median(taken) + 0.8 if taken else 3.5
        return round(base + self.crash_later, 1)

    def bad(self, app: App, kind: str) -> None:
        bg = app.kind.blue_green
        prefix = "bg_" if bg else ""
        errors: list[str] = []
        offsets: list[float] = []
        outcomes: list[str] = []
        runs = []
        for i in range(self.cfg.iterations):
            previous = self.serving(app)
            fault = self.fault(kind)
            app.commit(fault)
            with Load(*app.url("/version"), rate=self.cfg.rate, max_seconds=120) as load:
                self.lead_in(load)
                run = app.deploy()
                # In place, a release that crashes after its gate is promoted: users meet it
                # for as long as a bake would have watched it, then it is rolled back by hand.
                promoted_anyway = not bg and kind == "crash_after" and run.code == 0
                if not promoted_anyway:
                    self.expect(run, 3, f"{prefix}{fault} deploy {i + 1}")
                else:
                    time.sleep(self.cfg.bake_s)  # the window a bake would have watched it
                    load.stop()
                if not promoted_anyway and not load.wait_for(
                    tail_is(previous, self.cfg.settle), deadline=10
                ):
                    raise BenchError(f"after the {fault} deploy {i + 1}, {previous} is not back")
            hits = load.stop()
            shipped = run.rep.outcomes[-1].release if run.rep.outcomes else None
            anchor = run.rep.span(BG_START if bg else ACTIVATE).start
            failed = [h for h in hits if not h.ok]
            answered_by_bad = sum(1 for h in hits if h.ok and h.release == shipped)
            errors += [h.error or f"HTTP {h.status}" for h in failed]
            offsets += [round(h.sent - anchor, 2) for h in failed]
            self.record(f"{prefix}failed_requests_{kind}", len(failed))
            self.record(f"{prefix}bad_answers_{kind}", answered_by_bad)
            outcomes.append(_outcome_words(run))
            note = ""
            if promoted_anyway:
                note = "; promoted, rolled back by hand after the bake window"
                self.expect(app.rollback(), 0, f"manual rollback after {fault} {i + 1}")
            elif not bg and kind in ("boot_crash", "ready_503"):
                note = self._in_place_restore(kind, run, hits, previous)
            elif bg and kind == "crash_after":
                note = self._revert(run, hits, previous)
            self.ssh_windows[f"{prefix}{kind}"].append(run)
            runs.append(run)
            self.say(
                f"{app.kind.strategy} {fault} deploy {i + 1}/{self.cfg.iterations}: exit "
                f"{run.code}, {len(failed)} of {len(hits)} requests failed, "
                f"{answered_by_bad} answered by the bad release{note}"
            )
        self.details[f"{prefix}{kind}_outcomes"] = outcomes
        self.details[f"{prefix}{kind}_stage_seconds"] = median_stages(runs)
        self.details[f"{prefix}{kind}_process_state"] = [
            line for line in runs[-1].rep.outcomes[-1].evidence if line.startswith("process:")
        ]
        self.details[f"{prefix}failed_request_errors_{kind}"] = sorted(set(errors))[:10]
        self.details[f"{prefix}failed_request_offsets_{kind}"] = offsets[:100]

    def _in_place_restore(self, kind: str, run: Run, hits: list[Hit], previous: str) -> str:
        activated = run.rep.span(ACTIVATE).start
        rolled = run.rep.span(ROLL_BACK).start
        back = final_run_start(hits, previous)
        if back is None:
            raise BenchError(f"{kind}: {previous} does not serve at the end")
        self.record(f"{kind}_restore_s", max(0.0, back.done - activated))
        self.record(f"{kind}_detect_s", rolled - activated)
        self.record(f"{kind}_rollback_s", max(0.0, back.done - rolled))
        if kind == "ready_503":
            self.record("remote_commands_bad", run.commands)
        return (
            f"; rollback began {rolled - activated:.2f} s after activation, {previous} "
            f"served again after {max(0.0, back.done - activated):.2f} s"
        )

    def _revert(self, run: Run, hits: list[Hit], previous: str) -> str:
        """Blue/green crash_after: from the failed bake check to only the old release
        answering through the proxy."""
        try:
            decided = run.rep.span(BG_REVERT).start
        except LookupError:
            self.details.setdefault("bg_crash_after_not_in_bake", []).append(_outcome_words(run))
            return "; it crashed before the switch (rejected at the gate), no bake to time"
        back = final_run_start(hits, previous)
        if back is None:
            raise BenchError(f"crash_after: {previous} does not serve at the end")
        # Users: when only the old release answered (0 when nginx's backup already served
        # every request before the decision). Host: when the switch back was confirmed (the
        # next command is sent once the switch script returned: nginx reloaded, old workers
        # no longer accepting).
        seconds = max(0.0, back.done - decided)
        switched = [at for at, d in run.rep.sent if at >= decided and BG_SWITCH_COMMAND in d]
        confirmed = [at for at, _ in run.rep.sent if switched and at > switched[0]]
        if not confirmed:
            raise BenchError("crash_after: no switch back in the `roll back to` stage")
        self.record("bg_revert_serving_s", seconds)
        self.record("bg_revert_switch_s", confirmed[0] - decided)
        self.details.setdefault("bg_revert_only_old_from_s", []).append(
            round(back.done - decided, 3)
        )
        return (
            f"; the bake failed, {previous} alone answered {seconds:.2f} s later (the switch "
            f"back confirmed after {confirmed[0] - decided:.2f} s)"
        )

    def bg_warm(self, app: App) -> None:
        runs = []
        for i in range(self.cfg.iterations):
            app.commit()
            run = self.expect(app.deploy(), 0, f"blue/green warm redeploy {i + 1}")
            watch = run.rep.span(BG_WATCH)
            baked = (watch.end or run.end) - run.rep.said_at(BG_BAKE_LINE)
            self.record("bg_warm_deploy_s", run.seconds - baked)
            self.record("bg_bake_s", baked)
            self.record("remote_commands_bg_warm", run.commands)
            self._start_to_traffic(run)
            runs.append(run)
            self.say(
                f"blue/green warm redeploy {i + 1}/{self.cfg.iterations}: "
                f"{run.seconds - baked:.2f} s + bake {baked:.2f} s, {run.commands} commands"
            )
        self.details["bg_warm_stage_seconds"] = median_stages(runs)

    def _start_to_traffic(self, run: Run) -> None:
        started = run.rep.span(BG_START).end or run.end
        switched = run.rep.span(BG_SWITCH).end or run.end
        self.record("bg_start_to_traffic_s", switched - started)

    def bg_rollback(self, app: App) -> None:
        """Manual rollback to the warm previous release (keep-warm): a proxy switch."""
        left: str | None = None
        warm: list[bool] = []
        for i in range(self.cfg.iterations):
            before = app.live
            with Load(*app.url("/version"), rate=self.cfg.rate, max_seconds=60) as load:
                self.lead_in(load)
                run = self.expect(app.rollback(to=left), 0, f"blue/green rollback {i + 1}")
                target = run.rep.outcomes[-1].release or ""
                if not load.wait_for(tail_is(target, self.cfg.settle), deadline=10):
                    raise BenchError(f"rollback {i + 1}: {target} does not answer outside")
            hits = load.stop()
            left = before
            steady = final_run_start(hits, target)
            if steady is None:
                raise BenchError(f"rollback {i + 1}: no answer from {target} seen")
            failed = [h for h in hits if not h.ok]
            cold = any(s.name.startswith(BG_GATE) for s in run.rep.spans)
            warm.append(not cold)
            if not cold:  # the figure is the warm rollback's (a proxy switch)
                self.record("bg_rollback_serving_s", max(0.0, steady.done - run.start))
                self.record("bg_rollback_command_s", run.seconds)
            self.record("bg_failed_requests_rollback", len(failed))
            self.say(
                f"blue/green manual rollback {i + 1}/{self.cfg.iterations} "
                f"({'cold start' if cold else 'warm'}): only {target} from "
                f"{max(0.0, steady.done - run.start):.2f} s, command {run.seconds:.2f} s, "
                f"{len(failed)} failed requests"
            )
        self.details["bg_rollback_to_warm"] = warm
        if not any(warm):
            raise BenchError(
                "no manual rollback found its target warm (retire: keep-warm): every one "
                "started it afresh and gated it, so there is no warm rollback to time"
            )

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
        # in place (today's flow), PM2 cluster
        app = self.first(self.rig.app("bmain"))
        self.warm(app)
        self.rollback(app)
        self.good_under_load(app)
        # blue/green, PM2 cluster, keep-warm, behind the sandbox's nginx
        bg = self.first(self.rig.app("bgmain", Kind(strategy="blue-green", bake_s=self.cfg.bake_s)))
        self.bg_warm(bg)
        self.good_under_load(bg)
        self.bg_rollback(bg)
        for bad in BAD_KINDS:
            self.bad(bg, bad)
        for _ in range(2):
            # a crash_after release that crashed before the switch was rejected at the gate
            # (0 failed requests, but no bake to time): once more, crashing later
            if self.samples.get("bg_revert_serving_s"):
                break
            self.crash_later += 1.0
            self.bad(bg, "crash_after")
        for bad in BAD_KINDS:
            self.bad(app, bad)
        # the other process managers, good deploys only, both strategies
        for label, how in (
            ("fork", Kind(instances=1)),
            ("systemd", Kind(manager="systemd", instances=1)),
        ):
            for strategy in ("in-place", "blue-green"):
                k = dataclasses.replace(how, strategy=strategy, bake_s=self.cfg.bake_s)
                other = self.first(self.rig.app(f"b{'g' if k.blue_green else 'i'}{label}", k))
                self.good_under_load(other, f"good_{label}")
                other.remove()
        self.wan(app)
        self.app_start(app)
        self.ssh_connections()
        app.remove()
        bg.remove()

    def first(self, app: App) -> App:
        """The app's first deploy and, outside quick mode, a warm-up deploy (not measured)."""
        self.expect(app.deploy(), 0, f"first deploy of {app.name}")
        if not self.cfg.quick:
            app.commit()
            self.expect(app.deploy(), 0, f"warm-up deploy of {app.name}")
        return app


def _outcome_words(run: Run) -> str:
    out = run.rep.outcomes[-1] if run.rep.outcomes else None
    return f"exit {run.code}" + (f" ({out.result})" if out is not None else "")


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
        "schema": "releasegate-bench/2",
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - began, 1),
        "settings": cfg.as_dict(),
        "machine": {**machine(), "load_average": load_average()},
        "figures": summary,
        "targets": [v.as_dict() for v in verdicts],
        "details": bench.details,
    }
    print(figures.text_table(summary))
    print()
    print("in-place vs blue/green, this run:\n")
    print(figures.text_side_by_side(summary))
    print()
    print("Markdown (docs/performance.md):\n")
    print(figures.markdown_side_by_side(summary))
    print()
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
