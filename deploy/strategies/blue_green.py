"""Blue/green behind nginx on one host (docs/blue-green.md).

Two slots, each on its own loopback port, each running one release directory of its own. A
release starts afresh in the idle slot and is gated there, on its own port, while the live
slot keeps all the traffic; the switch (the point of no return) rewrites nginx's upstream —
the previous slot kept as `backup` — and `current`, in one round trip; then the front door is
verified and the bake window watches real traffic (deploy/bake.py). A revert is the same switch
the other way, to a slot that is still running. Retiring drops the backup from the upstream and
stops the old slot once nginx has drained it (`after-bake`), or keeps it running without
traffic for an instant manual rollback (`keep-warm`).

Slot roles are read from the host, never remembered here (deploy/slots.py): this object keeps
the slot links and the upstream as it found them at the lock and as its own steps changed them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from deploy import bake, commands, metrics, proxy
from deploy.clock import Clock
from deploy.commands import Cmd
from deploy.errors import GateFailed, NotSwitched, PreflightFailed, RemoteCommandError
from deploy.gate import (
    Expected,
    ReadyPolicy,
    check_version,
    probe_http,
    reported_version,
    wait_ready,
)
from deploy.host import HostOps, new_token
from deploy.inventory import StrategyConfig
from deploy.journal import HostState
from deploy.model import ProcessSnapshot, ReleaseState, SlotRole
from deploy.preflight import Check
from deploy.process.systemd import Systemd
from deploy.report import Reporter
from deploy.slots import SLOT, Slot, Slots, SlotView, views
from deploy.strategies.base import GateTarget, Start
from smoke.answer import UnusableAnswer
from smoke.answer import get as bounded_get
from smoke.model import printable

HttpFactory = Callable[[str, float], httpx.Client]
# Seconds the retire waits for nginx to close its last connection to the old slot.
DRAIN_SECONDS = 10.0
# Marker lines of the blue/green part of the preflight round trip.
PREFLIGHT_MARK = "@@blue-green"
UPSTREAM_MARK = "@@upstream-file"
RETURNABLE = (ReleaseState.GOOD, ReleaseState.ROLLED_BACK)


@dataclass
class BlueGreen:
    host: HostOps
    state: HostState  # as read at the lock
    http: HttpFactory
    clock: Clock
    reporter: Reporter
    headers: dict[str, str] = field(default_factory=dict)  # readiness (health token)
    check_signal: Callable[[], None] = lambda: None
    name: str = "blue-green"
    gates_before_traffic: bool = True
    links: dict[str, str] = field(init=False)
    upstream: proxy.Upstream | None = field(init=False)
    log_offset: int | None = field(init=False, default=None)  # of the last switch

    def __post_init__(self) -> None:
        self.links = dict(self.state.slot_links)
        self.upstream = _upstream(self.state.upstream_text)

    # ------------------------------------------------------------------ facts

    @property
    def config(self) -> StrategyConfig:
        return self.host.inventory.strategy

    @property
    def slots(self) -> Slots:
        return slots_of(self.config)

    @property
    def paths(self) -> proxy.ProxyPaths:
        return proxy.proxy_paths(self.host.layout, self.host.inventory.app.name)

    def live_slot(self) -> Slot | None:
        return self.slots.by_port(self.upstream.live) if self.upstream else None

    def idle_slot(self) -> Slot:
        live = self.live_slot()
        return live.other(self.slots) if live is not None else self.slots.green

    def slot_of(self, rid: str) -> Slot | None:
        live = self.live_slot()
        if live is not None and self.links.get(live.name) == rid:
            return live
        return next((s for s in self.slots if self.links.get(s.name) == rid), None)

    def _slot_of(self, rid: str) -> Slot:
        slot = self.slot_of(rid)
        if slot is None:
            raise AssertionError(f"{rid} runs in no slot")
        return slot

    def _state_of(self, rid: str | None) -> str | None:
        return self.state.state_of(rid) if rid else None

    def _record(self, rid: str | None, slot: Slot, role: str, **detail: object) -> Cmd:
        return self.host.journal_cmd(
            self.clock.now(), SLOT, rid, None, slot=slot.name, port=slot.port, role=role, **detail
        )

    # ------------------------------------------------------------------ the strategy

    def start(self, rid: str) -> Start:
        """Fresh start of `rid` in the idle slot — unless a slot already runs it without
        traffic (warm, or the backup of a bake being reverted: nothing to start; the switch
        checks that something listens there, and the front door proves it answers) or it is
        live. No process read here: a revert must not wait for one."""
        slot = self.slot_of(rid)
        if slot is not None and slot == self.live_slot():
            return "live"
        if slot is not None and self._state_of(rid) in RETURNABLE:
            return "warm"
        idle = self.idle_slot()
        steps = [*self.host.lease_guard()]
        replaced = self.links.get(idle.name)
        if replaced:
            steps.append(self._record(replaced, idle, "stopped", reason=f"{rid} starts there"))
        steps.append(self._record(rid, idle, "started"))
        steps += self.host.slot_start_steps(idle, rid)
        self.links.pop(idle.name, None)
        self.host.run_batch("slot", steps, f"start {rid} in slot {idle.describe()}")
        self.links[idle.name] = rid
        return "started"

    def target(self, rid: str) -> GateTarget:
        slot, host = self._slot_of(rid), self.host
        return GateTarget(
            port=slot.port,
            smoke_port=slot.port,
            label=f"slot {slot.describe()}",
            snapshot=lambda timeout: host.slot_snapshot(slot, timeout=timeout),
            forensics=lambda lines: host.slot_forensics(slot, lines),
            public_url=False,
            closing=lambda timeout, pids: host.slot_snapshot_with_identity(
                slot, rid, pids, timeout
            ),
        )

    def reject(self, rid: str, *, pause: bool) -> None:
        """Before traffic: stop the slot (or leave it paused, without traffic)."""
        self.take_out(rid, pause=pause)

    def take_out(self, rid: str, *, pause: bool) -> None:
        slot = self.slot_of(rid)
        if slot is None:
            return
        if pause:
            self.host.run_batch(
                "slot", [self._record(rid, slot, "paused")], f"pause {rid} in slot {slot.name}"
            )
            return
        steps = [*self.host.slot_stop_steps(slot), self._record(rid, slot, "stopped")]
        self.host.run_batch("slot", steps, f"stop slot {slot.describe()} ({rid})")
        self.links.pop(slot.name, None)

    def stop(self, rid: str) -> None:
        """Nothing to go back to: stop it (first deploy)."""
        self.take_out(rid, pause=False)

    def send_traffic(self, rid: str, records: list[Cmd], *, keep_previous: bool) -> str:
        """THE POINT OF NO RETURN, one round trip: the flow's records, the slot records,
        nginx's upstream switched to `rid`'s slot (the other slot as `backup` when
        `keep_previous` and it runs a good release), `current` switched. A switch nginx refuses
        is put back by the switch script: NotSwitched, nothing live changed."""
        new = self._slot_of(rid)
        other = new.other(self.slots)
        previous = self.links.get(other.name)
        keep = keep_previous and previous is not None and self._state_of(previous) in RETURNABLE
        target = proxy.Upstream(new.port, other.port if keep else None)
        switch = proxy.switch(self.paths, target)
        steps = [listening(new.port), *records, self._record(rid, new, "live")]
        if keep:
            steps.append(self._record(previous, other, "backup"))
        steps += [
            switch,
            commands.switch_current(self.host.layout, rid, new_token()),
        ]
        try:
            res = self.host.run_batch("switch", steps, f"switch the front door to {rid}")
        except RemoteCommandError as exc:
            if exc.failure.display != switch.display:
                raise
            report = proxy.parse_switch(exc.failure.exit_code, "", exc.failure.stderr_tail)
            if not report.consistent:
                raise
            raise NotSwitched(
                f"nginx did not switch to {rid} on {self.host.label} ({report.reason}): "
                f"{report.detail}. The previous upstream is back; nothing live changed.",
                reason=report.reason,
            ) from None
        self.upstream = target
        self.log_offset = proxy.parse_switch(0, res.stdout, "").log_offset
        return res.stdout

    def watch(self, rid: str, *, bake_window: bool) -> list[str]:
        """After a switch: the front door answers with `rid` (readiness, identity, and the
        access log naming its slot), then — with `bake_window` — the bake."""
        inv = self.host.inventory
        health = inv.health
        new = self._slot_of(rid)
        backup = self.upstream.backup if self.upstream else None
        offset = self.log_offset
        tally = bake.Traffic(new.port, backup)

        def traffic() -> proxy.TrafficSample:
            nonlocal offset
            if offset is None:
                return proxy.TrafficSample(0, 0, problem="unknown (no offset)")
            cmd = proxy.read_access_log(self.paths, offset)
            sample = proxy.parse_access_log(self.host.remote.run(cmd).stdout)
            if sample.problem is None:
                offset = sample.next_offset
            return sample

        with (
            self.host.remote.tunnel(self.config.public_port) as port,
            self.http(f"http://127.0.0.1:{port}", health.probe_timeout) as client,
        ):

            def probe() -> tuple[str, str]:
                self.check_signal()
                return probe_http(client, health.path, self.headers)

            policy = ReadyPolicy(
                deadline=health.deadline,
                interval=health.interval,
                successes=health.successes,
                max_restarts=0,
            )
            history, _ = wait_ready(
                probe, None, policy, self.clock, on_probe=lambda p: self.reporter.command(p.line())
            )
            evidence = [f"front door: {p.line()}" for p in history]
            evidence.append(f"front door identity: {self._identity(client, rid)}")
            tally.add(traffic())
            if tally.failed or (offset is not None and not tally.answered):
                raise GateFailed(
                    "front door",
                    f"the answers through the front door did not all come from slot "
                    f"{new.describe()}: {tally.line()}",
                    evidence=tuple(evidence),
                )
            evidence.append(f"front door: {tally.line()}")
            self.reporter.info(f"front door: {rid} answers through :{self.config.public_port}")
            if not bake_window:
                return evidence
            seconds = self.config.bake.seconds
            self.reporter.info(
                f"bake: {seconds:g}s of real traffic"
                + (f", 127.0.0.1:{backup} kept as backup" if backup else "")
            )
            policy_b = bake.BakePolicy(
                seconds=seconds,
                interval=max(health.interval, 0.2),
                max_error_ratio=self.config.bake.max_error_ratio,
                min_requests=self.config.bake.min_requests,
            )
            with contextlib.ExitStack() as stack:
                evidence += bake.watch(
                    probe,
                    lambda: self.host.slot_snapshot(new, timeout=self._read_timeout()),
                    traffic,
                    policy_b,
                    self.clock,
                    tally,
                    instances=inv.expected_instances,
                    on_event=self.reporter.command,
                    metrics=self._metrics_watch(stack, new),
                )
        return evidence

    def _metrics_watch(
        self, stack: contextlib.ExitStack[bool | None], slot: Slot
    ) -> metrics.MetricsWatch | None:
        """The app's request counter on the new slot's own port (through its own tunnel, as
        the gate probes readiness), when strategy.bake.metrics is configured."""
        config = self.config.bake.metrics
        if config is None:
            return None
        port = stack.enter_context(self.host.remote.tunnel(slot.port))
        timeout = self.host.inventory.health.probe_timeout
        client = stack.enter_context(self.http(f"http://127.0.0.1:{port}", timeout))
        policy = metrics.MetricsPolicy(
            counter=config.counter,
            status_label=config.status_label,
            max_error_ratio=config.max_error_ratio,
            min_requests=config.min_requests,
        )
        return metrics.MetricsWatch(metrics.http_reader(client, config.path), policy)

    def _identity(self, client: httpx.Client, rid: str) -> str:
        """Which code answers through the front door: health.version when configured, else
        the X-Release-Id header when the app sends one."""
        health = self.host.inventory.health
        if health.version is not None:
            reported = reported_version(client, health.version, self.headers)
            manifest = self.host.identity_facts(rid, ()).manifest
            revision = manifest.get("revision")
            tags = manifest.get("tags")
            expected = Expected(
                release_id=rid,
                revision=revision if isinstance(revision, str) else None,
                tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
            )
            return check_version(reported, health.version.expect, expected, health.version.source)
        try:
            answer = bounded_get(client, health.path, headers=self.headers).response
        except httpx.HTTPError as exc:
            raise GateFailed("front door", f"no answer: {type(exc).__name__}") from None
        except UnusableAnswer as exc:
            raise GateFailed("front door", exc.detail) from None
        said = answer.headers.get("X-Release-Id")
        said = printable(said) if said is not None else None
        if said is None:
            return "the app sends no X-Release-Id header; the access log names the slot"
        if said.strip() != rid:
            raise GateFailed(
                "front door",
                f"X-Release-Id through the front door is {said.strip()[:80]!r}, not {rid}: "
                f"other code answers",
                evidence=(f"reported: {said.strip()[:80]}", f"expected: {rid}"),
            )
        return f"X-Release-Id {rid} through :{self.config.public_port}"

    def retire(self, rid: str) -> None:
        """After promotion: the upstream names the live slot alone; the other slot is stopped
        once nginx has no connection to it left (after-bake, bounded) or kept warm."""
        new = self._slot_of(rid)
        old = new.other(self.slots)
        previous = self.links.get(old.name)
        steps: list[Cmd] = []
        if self.upstream != proxy.Upstream(new.port):
            steps.append(proxy.switch(self.paths, proxy.Upstream(new.port)))
        if previous is not None:
            if self.config.retire == "after-bake" or self._state_of(previous) not in RETURNABLE:
                steps.append(wait_drained(old.port, DRAIN_SECONDS))
                steps += self.host.slot_stop_steps(old)
                steps.append(self._record(previous, old, "stopped", reason="retired"))
            else:
                steps.append(self._record(previous, old, "warm"))
        persist = self.host.manager.persist_slot(new)
        if persist is not None:
            steps.append(persist)
        if not steps:
            return
        self.host.run_batch("retire", steps, f"retire slot {old.describe()}")
        self.upstream = proxy.Upstream(new.port)
        if self.config.retire == "after-bake" or self._state_of(previous) not in RETURNABLE:
            self.links.pop(old.name, None)

    def persist(self, rid: str) -> None:
        slot = self.slot_of(rid)
        cmd = self.host.manager.persist_slot(slot) if slot is not None else None
        if cmd is not None:
            self.host.remote.run(cmd, check=False)

    # ------------------------------------------------------------------ resolve, view

    def settle(self) -> list[str]:
        """Before anything else, after a run that was killed: `current` follows the release
        the front door serves; a retire that did not finish is finished; a slot that runs
        neither the live release, the backup, a warm nor a paused one is stopped. Returns what
        it did (for the reporter)."""
        done: list[str] = []
        live = self.live_slot()
        served = self.links.get(live.name) if live else None
        current = self.state.current
        self._refuse_a_hand_edited_upstream(live, served, current)
        if live is not None and served is not None and served != current:
            steps = [
                *self.host.lease_guard(),
                self._record(served, live, "live", reason="current follows the front door"),
                commands.switch_current(self.host.layout, served, new_token()),
            ]
            self.host.run_batch(
                "settle", steps, f"point current at {served}, which the front door serves"
            )
            done.append(
                f"the front door serves {served} but current named {current or 'nothing'} (a run "
                f"was killed mid-switch): current now points at {served}"
            )
            current = served
        # no process read: a run must not wait for one before it can act (a rollback)
        for view in self.views(processes=False):
            if view.role == "stray" and view.release is not None:
                steps = [
                    *self.host.slot_stop_steps(view.slot),
                    self._record(view.release, view.slot, "stopped", reason="left by a killed run"),
                ]
                self.host.run_batch("settle", steps, f"stop stray slot {view.slot.name}")
                self.links.pop(view.slot.name, None)
                done.append(
                    f"stopped slot {view.slot.describe()}: it ran {view.release} without "
                    f"traffic, left by a run that was killed before it could stop it"
                )
        if (
            current is not None
            and self.upstream is not None
            and self.upstream.backup is not None
            and self._state_of(current) in RETURNABLE
            and self.slot_of(current) == live
        ):
            self.retire(current)
            done.append(f"finished retiring the backup of {current} (a run was killed mid-retire)")
        return done

    def _refuse_a_hand_edited_upstream(
        self, live: Slot | None, served: str | None, current: str | None
    ) -> None:
        """The upstream file names as live a slot that runs nothing, while `current` runs in
        the other one. No run leaves that (a switch only names a slot it started, and a run
        killed mid-switch leaves the new slot's link): the file was changed by hand, and nginx
        may still send every request to the slot it calls idle — where the deploy would start
        the new release over the one that serves. Stop before anything changes."""
        if live is None or served is not None or current is None:
            return
        home = next((s for s in self.slots if self.links.get(s.name) == current), None)
        if home is None or home == live:
            return
        raise PreflightFailed(
            f"{self.paths.upstream} names slot {live.describe()} as live, but that slot runs "
            f"nothing: `current` ({current}) runs in slot {home.describe()}. The file was "
            f"changed outside releasegate (it is replaced at each switch), and nginx may be "
            f"serving slot {home.name} still; nothing was changed. Put the file back "
            f"(`server 127.0.0.1:{home.port};`), check it and reload nginx (`sudo nginx -t && "
            f"sudo nginx -s reload`), then run again"
        )

    def views(self, processes: bool = True) -> tuple[SlotView, ...]:
        snaps: dict[str, ProcessSnapshot | None] = {
            s.name: self.host.slot_snapshot(s, timeout=self._read_timeout()) if processes else None
            for s in self.slots
        }
        states = {rid: self._state_of(rid) for rid in self.links.values()}
        up = self.upstream
        return views(
            self.slots,
            links=self.links,
            processes=snaps,
            live_port=up.live if up else None,
            backup_port=up.backup if up else None,
            journal=self.state.journal,
            states=states,
        )

    def roles(self) -> tuple[SlotRole, ...]:
        """The slots that run something, as this run left them (no process read)."""
        return tuple(
            SlotRole(v.slot.name, v.slot.port, v.role, v.release)
            for v in self.views(processes=False)
            if v.role != "idle"
        )

    def _read_timeout(self) -> float:
        return self.host.inventory.ssh.command_timeout

    # ------------------------------------------------------------------ preflight, setup

    def preflight_probe(self) -> list[Cmd]:
        """Steps added to the preflight's one read-only round trip."""
        manager = self.host.manager
        slots_allowlist = manager.slots_allowlist_probe() if isinstance(manager, Systemd) else []
        return [
            *slots_allowlist,  # its own marked section, before ours
            _mark(PREFLIGHT_MARK),
            proxy.probe(
                self.paths,
                public_port=self.config.public_port,
                slot_ports=(self.slots.blue.port, self.slots.green.port),
            ),
            _mark(UPSTREAM_MARK),
            proxy.read_upstream(self.paths),
        ]

    def preflight_checks(self, stdout: str) -> list[Check]:
        inv = self.host.inventory
        _, _, ours = stdout.partition(PREFLIGHT_MARK + "\n")
        facts_text, _, upstream_text = ours.partition(UPSTREAM_MARK + "\n")
        facts = proxy.parse_facts(facts_text)
        checks = []
        try:
            upstream = proxy.parse_upstream(upstream_text)
            live = self.slots.by_port(upstream.live) if upstream else None
            if upstream is not None and live is None:
                checks.append(
                    Check(
                        "front door upstream",
                        False,
                        f"{self.paths.upstream} names 127.0.0.1:{upstream.live}, which is not a "
                        f"slot of strategy.slots ({self.slots.blue.port}, {self.slots.green.port})",
                        f"`releasegate setup {inv.env}` after removing the file, or fix "
                        f"strategy.slots",
                    )
                )
        except proxy.UpstreamUnreadable as exc:
            live = None
            checks.append(
                Check(
                    "front door upstream",
                    False,
                    str(exc),
                    f"remove {self.paths.upstream} and run `releasegate setup {inv.env}`",
                )
            )
        idle = live.other(self.slots) if live else self.slots.green
        checks += proxy.judge(
            facts,
            paths=self.paths,
            user=inv.host.user,
            env=inv.env,
            public_port=self.config.public_port,
            idle_port=idle.port,
        )
        if isinstance(self.host.manager, Systemd):
            checks += self.host.manager.judge_slots_allowlist(stdout)
        return checks

    def cluster_note(self) -> str | None:
        """`releasegate setup`, PM2 cluster mode: the PM2 daemon is Node's cluster primary; with
        Node's default round-robin scheduling, a worker that dies while the daemon hands it a
        connection leaves that request unanswered (docs/blue-green.md)."""
        inv = self.host.inventory
        if inv.process.manager != "pm2" or inv.process.instances < 2:
            return None
        return (
            f"PM2 cluster mode (instances: {inv.process.instances}): start the PM2 daemon with "
            "NODE_CLUSTER_SCHED_POLICY=none in its environment (in the unit `pm2 startup` "
            "wrote: `Environment=NODE_CLUSTER_SCHED_POLICY=none`, then `pm2 kill` and start "
            "that unit). With Node's default round-robin, a worker that crashes while the "
            "daemon hands it a connection leaves that request unanswered until nginx's "
            "proxy_read_timeout (60 s): a release that crashes after the switch can then cost "
            "one request, where it costs none in fork mode (docs/blue-green.md)"
        )

    def setup_steps(self) -> list[Cmd]:
        """`releasegate setup`: the first upstream file (the blue slot), only if none exists."""
        return [proxy.ensure_upstream(self.paths, proxy.Upstream(self.slots.blue.port))]


def slots_of(config: StrategyConfig) -> Slots:
    if config.slots is None:
        raise ValueError("strategy.slots is missing for kind: blue-green")
    return Slots.of(config.slots.blue, config.slots.green)


def _upstream(text: str | None) -> proxy.Upstream | None:
    if text is None:
        return None
    with contextlib.suppress(proxy.UpstreamUnreadable):
        return proxy.parse_upstream(text)
    return None


def _mark(text: str) -> Cmd:
    return commands._cmd("mark", ["echo", text])


LISTENING_SCRIPT = r"""
ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && exit 0
echo "nothing listens on 127.0.0.1:$1: the slot's release is not running" >&2
exit 1
"""


def listening(port: int) -> Cmd:
    """The first step of a switch: something listens on the slot's port (else nothing is
    switched)."""
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"not a TCP port: {port!r}")
    return commands._script(
        "slot.listening", LISTENING_SCRIPT, [str(port)], f"check that :{port} listens"
    )


WAIT_DRAINED_SCRIPT = r"""
port="$1"; ticks="$2"; n=0
while ss -Htn state established "( sport = :$port )" 2>/dev/null | grep -q .; do
  n=$((n + 1))
  if [ "$n" -gt "$ticks" ]; then echo "connections to :$port still open; stopping anyway"; break; fi
  sleep 0.1
done
exit 0
"""


def wait_drained(port: int, seconds: float) -> Cmd:
    """Wait (bounded) until nothing holds a connection to the slot's port: nginx's old
    workers finished the requests they had sent there."""
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"not a TCP port: {port!r}")
    return commands._script(
        "slot.drain",
        WAIT_DRAINED_SCRIPT,
        [str(port), str(max(1, round(seconds * 10)))],
        f"wait until nginx has no connection to :{port} left (at most {seconds:g}s)",
    )
