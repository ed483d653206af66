"""Many hosts as one: deploy, rollback and status of an inventory that lists several hosts.

    connect + preflight every host (in parallel) ─ any failure: exit 5, no host changed
    → lock every host in listed order ─ one held: the locks taken are released, exit 4
    → ship the same release to every host (in parallel) ─ a failure: exit 5, nothing live
    → batch by batch (rollout.batch), in listed order: activate + gate (in parallel)
        a host fails its gate → the single-host flow rolls it back; then every host this
        deploy switched goes back to the release it was on, each verified (exit 3). Hosts
        never switched are left as they were.
      lost SSH to a host after its activation → the others are put back, exit 6 with what
      each host runs.

On each host the single-host procedure of deploy.flow runs unchanged (its phases as
callables: run_preflight, plan_deploy, ship_release, activate_release, rollback_locked) over
the host's own SSH connection, opened once for the whole operation. This module keeps the
order across hosts, the parallelism (one thread per host) and the all-or-nothing decision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

from deploy import artifact as artifacts
from deploy import commands, flow, stops
from deploy.deps import Deps, host_ops
from deploy.errors import (
    AbortedBeforeLive,
    ConfigError,
    GateFailed,
    HostKeyRefused,
    HostUnreachable,
    HumanNeeded,
    Interrupted,
    LockHeld,
    PreflightFailed,
    ReleasegateError,
    Signalled,
)
from deploy.flow import DeployPlan
from deploy.host import HostOps
from deploy.inventory import Inventory
from deploy.journal import HostState
from deploy.locking import lock_manually, locked, unlock
from deploy.model import HostLive, HostStatus, Outcome, ReleaseState, check_release_id
from deploy.remote import Remote
from deploy.report import Reporter
from deploy.rollback import rollback_locked
from deploy.status import host_status
from smoke.runner import run_packs

T = TypeVar("T")


@dataclass
class Member:
    """One host of the fleet: the single-host flow's Deps (the inventory narrowed to this
    host, its own SSH connection) and its HostOps, kept for the whole operation."""

    deps: Deps
    host: HostOps

    @property
    def name(self) -> str:
        return self.deps.inventory.host.name


@dataclass
class Fleet:
    inventory: Inventory  # every host
    members: list[Member]  # in listed order
    reporter: Reporter  # the operation's; each member has its own (HostReporter) over it
    # read-only operations (status, releases, history) go on without the hosts they cannot
    # reach: host name -> why (deploy and rollback never start without every host)
    unreachable: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- plumbing


class HostReporter:
    """One host's lines inside a many-host operation: prefixed with its name, stages as plain
    start/done lines (hosts run at once: no live display), its own outcome as lines — the
    fleet's outcome is the one that ends the operation."""

    def __init__(self, inner: Reporter, name: str, lock: threading.Lock) -> None:
        self._inner, self._name, self._lock = inner, name, lock

    def _p(self, text: str) -> str:
        return f"[{self._name}] {text}"

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self.info(f"{name} …")
        try:
            yield
        except BaseException:
            self.warn(f"{name} failed after {time.monotonic() - started:.1f}s")
            raise
        self.info(f"{name} done in {time.monotonic() - started:.1f}s")

    def info(self, text: str) -> None:
        with self._lock:
            self._inner.info(self._p(text))

    def warn(self, text: str) -> None:
        with self._lock:
            self._inner.warn(self._p(text))

    def command(self, display: str) -> None:
        with self._lock:
            self._inner.command(self._p(display))

    def error(
        self, text: str, evidence: tuple[str, ...] = (), *, exit_code: int | None = None
    ) -> None:
        with self._lock:  # never the operation's final error: that is the fleet's
            self._inner.error(self._p(text), evidence)

    def outcome(self, outcome: Outcome) -> None:
        self.info(f"{outcome.op} {outcome.result} (exit {outcome.exit_code}): {outcome.message}")
        if outcome.exit_code:
            for line in outcome.evidence[-8:]:
                self.info(f"| {line}")

    def status(self, status: HostStatus) -> None:
        with self._lock:
            self._inner.status(status)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        with self._lock:
            self._inner.table(self._p(title), columns, rows)

    def finish(self, op: str, exit_code: int) -> None:
        pass


def each(
    members: Sequence[Member], work: Callable[[Member], T], seen: list[int] | None = None
) -> list[T | BaseException]:
    """`work` on every member at once (a thread each), waiting for all of them; what each
    returned or raised, in the members' order. A signal that reaches this (main) thread
    meanwhile is handed to every member's flow, which takes its own safe path: no host is
    abandoned half-way (and noted in `seen`, for the caller to stop there)."""
    if not members:
        return []
    got: dict[str, T | BaseException] = {}
    with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="host") as pool:
        futures = {pool.submit(work, m): m for m in members}
        _wait(futures, seen, lambda m, res: got.__setitem__(m.name, res))
    for m in members:  # handled, or it came too late: it must not stop what comes next
        m.deps.signals.clear()
    return [got[m.name] for m in members]


def _wait(
    futures: Mapping[Future[T], Member],
    seen: list[int] | None,
    done: Callable[[Member, T | BaseException], None],
    *,
    forward: bool = True,
    then: Callable[[], None] | None = None,
) -> None:
    """Wait for every future, telling `done` each result as it comes (then calling `then`).
    A signal goes into `seen` — raised here, or recorded there by `_signals_recorded` at any
    moment, even before this wait began — and from there to the flows still running
    (`forward`)."""
    pending = set(futures)
    got: list[int] = seen if seen is not None else []
    forwarded = 0
    while pending:
        finished: set[Future[T]] = set()
        try:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        except (KeyboardInterrupt, Signalled) as exc:
            got.append(exc.signum if isinstance(exc, Signalled) else int(signal.SIGINT))
        for future in finished:
            error = future.exception()
            done(futures[future], error if error is not None else future.result())
        if then is not None:
            then()
        for signum in got[forwarded:] if forward else ():
            for future in pending:
                futures[future].deps.signals.append(signum)
        forwarded = len(got)


@contextlib.contextmanager
def _signals_recorded() -> Iterator[list[int]]:
    """While hosts are locked and switched: SIGINT/SIGTERM/SIGHUP are only recorded (the list
    yielded), never raised — an exception raised between two waits (in a callback, between
    batches, in a reporter call) would leave switched hosts behind. The waits and the batch
    loop read the list and take the safe path; the previous handlers come back at the end."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def record(signum: int, _frame: object) -> None:
        seen.append(signum)  # no print, no lock: it may run inside a reporter call

    with stops.handling(record):
        yield seen


def _stop_if_signalled(seen: list[int]) -> None:
    """Before anything live changed, a recorded signal stops the operation as a raised one
    would (the locks are released on the way out)."""
    if seen:
        raise Signalled(seen[0])


def connect(
    inv: Inventory, open_one: Callable[[Inventory], Remote]
) -> list[tuple[Inventory, Remote]]:
    """One SSH connection per host, opened in parallel, each for the whole operation. Any
    host that cannot be reached (or whose key is refused) stops everything before any host
    is touched."""
    opened, failed = connect_some(inv, open_one)
    if not failed:
        return opened
    for _part, remote in opened:
        with contextlib.suppress(Exception):
            remote.close()
    lines = tuple(f"{name}: {message}" for name, (message, _e) in failed.items())
    what = f"{', '.join(failed)} ({len(failed)} of {len(inv.hosts)} hosts)"
    if any(isinstance(e, HostKeyRefused) for _m, e in failed.values()):
        raise HostKeyRefused(
            f"the SSH key of {what} was refused; nothing was changed on any host", evidence=lines
        )
    raise HostUnreachable(
        f"could not connect to {what}; nothing was changed on any host. Check that the "
        f"host is up and its address, port, user and key in {inv.source}",
        evidence=lines,
    )


def connect_some(
    inv: Inventory, open_one: Callable[[Inventory], Remote]
) -> tuple[list[tuple[Inventory, Remote]], dict[str, tuple[str, ReleasegateError]]]:
    """Every host's connection, opened in parallel: those opened, and why each other one
    was not (host name -> message, error)."""
    parts = [host_part(inv, h.name) for h in inv.hosts]
    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="connect") as pool:
        futures = [pool.submit(open_one, part) for part in parts]
        wait(futures)
    opened, failed = [], {}
    for part, future in zip(parts, futures, strict=True):
        error = future.exception()
        if error is None:
            opened.append((part, future.result()))
        elif isinstance(error, ReleasegateError):
            failed[part.host.name] = (error.message, error)
        else:  # a bug of ours: not a host's state
            for _part, remote in opened:
                with contextlib.suppress(Exception):
                    remote.close()
            raise error
    return opened, failed


def host_part(inv: Inventory, name: str) -> Inventory:
    """What one host's flow runs on: the inventory narrowed to the host, without
    smoke.base_url — the load balancer reaches every host, so each host's gate (smoke pack
    included) goes through its own tunnel, and the base URL is smoked once every host
    switched (`_smoke_front_door`)."""
    part = inv.for_host(name)
    if part.smoke.base_url is None:
        return part
    return part.model_copy(update={"smoke": part.smoke.model_copy(update={"base_url": None})})


@contextlib.contextmanager
def opened(
    inv: Inventory,
    reporter: Reporter,
    open_one: Callable[[Inventory, Reporter], Remote],
    make_deps: Callable[[Inventory, Remote, Reporter, int], Deps],
    *,
    partial: bool = False,
) -> Iterator[Fleet]:
    """The fleet for one operation: its connections (closed at the end) and members. With
    `partial` (read-only operations), the hosts that cannot be reached are left out."""
    lock = threading.Lock()
    reporters = {h.name: HostReporter(reporter, h.name, lock) for h in inv.hosts}
    unreachable: dict[str, str] = {}
    with reporter.stage(f"connect {len(inv.hosts)} hosts"):
        if partial:
            pairs, failed = connect_some(
                inv, lambda part: open_one(part, reporters[part.host.name])
            )
            unreachable = {name: message for name, (message, _e) in failed.items()}
        else:
            pairs = connect(inv, lambda part: open_one(part, reporters[part.host.name]))
    for name, message in unreachable.items():
        reporter.warn(f"{name}: unreachable, left out: {message}")
    try:
        members = []
        for index, (part, remote) in enumerate(pairs):
            d = make_deps(part, remote, reporters[part.host.name], index)
            members.append(Member(d, host_ops(d)))
        yield Fleet(inventory=inv, members=members, reporter=reporter, unreachable=unreachable)
    finally:
        for _part, remote in pairs:
            with contextlib.suppress(Exception):
                remote.close()


@contextlib.contextmanager
def locked_all(fleet: Fleet, op: str) -> Iterator[None]:
    """Every host's lock, taken in listed order (two fleet runs meet at the first host, not
    crosswise); if one cannot be taken, those already taken are released and nothing runs."""
    with contextlib.ExitStack() as stack:
        for index, m in enumerate(fleet.members):
            try:
                stack.enter_context(locked(m.deps, m.host, op))
            except ReleasegateError as exc:
                taken = [x.name for x in fleet.members[:index]]
                stack.close()
                freed = f" The locks taken on {', '.join(taken)} were released;" if taken else ""
                text = f"{m.name}: {exc.message}{freed} no host was changed."
                if isinstance(exc, LockHeld):
                    raise LockHeld(text, evidence=exc.evidence) from None
                raise AbortedBeforeLive(f"locking {text}", evidence=exc.evidence) from None
        yield


def _all_done(results: Sequence[object], members: Sequence[Member], doing: str) -> None:
    """Before anything live changed: any host's failure stops the operation on every host."""
    failed = [(m, r) for m, r in zip(members, results, strict=True) if isinstance(r, BaseException)]
    if not failed:
        return
    for _m, exc in failed:
        if isinstance(exc, Interrupted | KeyboardInterrupt | Signalled):
            raise exc
        if not isinstance(exc, ReleasegateError):
            raise exc
    lines: list[str] = []
    for m, exc in failed:
        assert isinstance(exc, ReleasegateError)
        lines.append(f"{m.name}: {exc.message}")
        lines += [f"{m.name}: {line}" for line in exc.evidence]
    names = ", ".join(m.name for m, _ in failed)
    if any(isinstance(e, HumanNeeded) for _, e in failed):  # a host that needs a look
        raise HumanNeeded(f"{doing} failed on {names}", evidence=tuple(lines))
    message = f"{doing} failed on {names}; nothing live changed on any host"
    if all(isinstance(e, PreflightFailed) for _, e in failed):
        raise PreflightFailed(f"{message} (nothing was changed at all)", evidence=tuple(lines))
    if all(isinstance(e, LockHeld) for _, e in failed):
        raise LockHeld(message, evidence=tuple(lines))
    raise AbortedBeforeLive(message, evidence=tuple(lines))


# ---------------------------------------------------------------------------- deploy


def deploy(fleet: Fleet, source: artifacts.Source) -> Outcome:
    r = fleet.reporter
    members = fleet.members
    # built once, with the fleet's reporter; the packs it carries are shared by every member
    art, bundle = flow.build_release(dataclasses.replace(members[0].deps, reporter=r), source)
    rid = art.release_id
    with r.stage(f"preflight {len(members)} hosts"):
        checked = each(members, lambda m: flow.run_preflight(m.deps, m.host, art.size))
        _all_done(checked, members, "preflight")
    # from the first lock to the last host put back, a signal is recorded, not raised
    with _signals_recorded() as seen, locked_all(fleet, "deploy"):
        _stop_if_signalled(seen)
        planned = each(members, lambda m: flow.plan_deploy(m.deps, m.host, rid), seen)
        _all_done(planned, members, "reading the host state")
        _stop_if_signalled(seen)
        refused = [(m, p) for m, p in zip(members, planned, strict=True) if isinstance(p, Outcome)]
        if refused:
            return _report(
                fleet,
                Outcome(
                    op="deploy",
                    result="needs-human",
                    exit_code=6,
                    release=None,
                    live=None,
                    message=(
                        f"{', '.join(m.name for m, _ in refused)} "
                        f"{'is' if len(refused) == 1 else 'are'} marked needs-human: this "
                        f"deploy was refused and no host was changed"
                    ),
                    evidence=tuple(f"{m.name}: {line}" for m, o in refused for line in o.evidence),
                ),
            )
        plans = {m.name: p for m, p in zip(members, planned, strict=True)}
        with r.stage(f"ship {rid} to {len(members)} hosts"):
            shipped = each(
                members,
                lambda m: flow.ship_release(m.deps, m.host, _plan(plans, m), art, bundle),
                seen,
            )
            failed = [m for m, s in zip(members, shipped, strict=True) if s is not None]
            if failed:
                _withdraw([m for m in members if m not in failed], rid, "the ship failed elsewhere")
                _all_done(shipped, members, f"shipping {rid}")
        # a signal from here on stops the rollout (the batch loop): untouched hosts withdraw
        return _roll_out(fleet, rid, {m.name: _plan(plans, m) for m in members}, seen)


def _plan(plans: Mapping[str, object], m: Member) -> DeployPlan:
    plan = plans[m.name]
    assert isinstance(plan, DeployPlan)
    return plan


def _roll_out(
    fleet: Fleet, rid: str, plans: dict[str, DeployPlan], seen: list[int] | None = None
) -> Outcome:
    """Activate and gate batch by batch; too many failures, or a signal (recorded in
    `seen`), put back every host switched."""
    r = fleet.reporter
    rollout = fleet.inventory.rollout
    members = fleet.members
    batches = rollout.batches(len(members))
    with ThreadPoolExecutor(max_workers=2 * len(members), thread_name_prefix="host") as pool:
        run = _Rollout(fleet, rid, plans, pool, seen)
        stop = run.activate(batches)
        results, switched, failed, signals = run.results, run.switched, run.failed, run.signals
        reason = "; ".join(f"{m.name}: {_what(results[m.name])}" for m in failed)
        evidence: tuple[str, ...] = ()
        if not stop and not fleet.members[0].deps.dry_run:
            front = _smoke_front_door(fleet, rid)
            if front is not None and not signals:  # every host switched, users would see it fail
                stop = True
                reason = f"smoke.base_url ({fleet.inventory.smoke.base_url}): {front.message}"
                evidence = tuple(f"front door: {line}" for line in front.evidence)
        stop = stop or bool(signals)  # e.g. during the front door's smoke
        if signals and not failed:
            reason = f"the rollout: interrupted by {signal.Signals(signals[0]).name}"
        back: dict[str, Outcome | BaseException] = {}
        if stop:  # every host switched goes back (most are on their way already)
            run.put_back()
            if run.back:
                with r.stage(f"roll back {', '.join(run.back)} (switched by this deploy)"):
                    back = run.wait_back()
    before = {name: plan.state.current for name, plan in plans.items()}
    untouched = [m for m in members if m.name not in results]
    _withdraw(untouched, rid, "the rollout stopped before this host")
    if not stop and fleet.members[0].deps.dry_run:
        return _report(
            fleet,
            Outcome(
                op="deploy",
                result="planned",
                exit_code=0,
                release=rid,
                live=None,
                message=(
                    f"dry run: nothing was changed on any host; a real deploy would activate "
                    f"{rid} on {len(members)} hosts in {len(batches)} batch(es) of "
                    f"{rollout.batch}, rolling every host back if one fails its gate"
                ),
            ),
        )
    if not stop:
        hosts = tuple(_live_after(m.name, before[m.name], results[m.name]) for m in members)
        alone = [m.name for m in failed]
        return _report(
            fleet,
            Outcome(
                op="deploy",
                result="promoted",
                exit_code=0,
                release=rid,
                live=rid if not alone else None,
                message=f"promoted {rid} on {len(switched)} of {len(members)} hosts"
                + (
                    f"; {', '.join(alone)} failed and {'was' if len(alone) == 1 else 'were'} "
                    f"rolled back alone (rollout.max_failed: {rollout.max_failed})"
                    if alone
                    else ""
                ),
                hosts=hosts,
                evidence=tuple(h.line() for h in hosts),
            ),
        )
    # ---------------------------- all or nothing: every host switched went back ----------
    hosts = tuple(
        _live_after(m.name, before[m.name], back.get(m.name, results.get(m.name))) for m in members
    )
    safe = all(h.verified and h.live == before[h.host] for h in hosts)
    signum = (
        signals[0]
        if signals
        else next(
            (
                res.exit_code - 128
                for res in results.values()
                if isinstance(res, Outcome) and res.exit_code > 128
            ),
            0,
        )
    )
    evidence = (
        tuple(h.line() for h in hosts)
        + evidence
        + tuple(
            f"{m.name}: {line}"
            for m in failed
            if isinstance(results[m.name], Outcome | ReleasegateError)
            for line in _evidence(results[m.name])[-10:]
        )
    )
    never = [m.name for m in untouched]
    if safe:
        return _report(
            fleet,
            Outcome(
                op="deploy",
                result="rolled-back",
                exit_code=128 + signum if signum else 3,
                release=rid,
                live=_same(before[m.name] for m in members),
                message=(
                    f"{rid} failed on {reason}. Every host this deploy switched is back on the "
                    f"release it was on, verified"
                    + (f" ({', '.join(m.name for m in switched)} rolled back)" if switched else "")
                    + (f"; {', '.join(never)} never switched" if never else "")
                ),
                hosts=hosts,
                evidence=evidence,
            ),
        )
    wrong = [h for h in hosts if not (h.verified and h.live == before[h.host])]
    return _report(
        fleet,
        Outcome(
            op="deploy",
            result="rollback-failed",
            exit_code=6,
            release=rid,
            live=None,
            message=(
                f"{rid} failed on {reason}. Not every host could be put back on the release it "
                f"was on: {'; '.join(h.line() for h in wrong)}. A human is needed: check "
                f"`releasegate status {fleet.inventory.env}` (every host) before deploying again"
            ),
            hosts=hosts,
            evidence=evidence,
        ),
    )


def _smoke_front_door(fleet: Fleet, rid: str) -> GateFailed | None:
    """Once every host switched: the packs `rid` carries, through smoke.base_url (the load
    balancer: what users reach). Each host passed them through its own tunnel already."""
    inv = fleet.inventory
    base = inv.smoke.base_url
    d = fleet.members[0].deps
    packs = d.gate_packs.get(rid)
    if not base or packs is None or not packs.packs:
        return None
    r = fleet.reporter
    with r.stage(f"smoke {rid} through {base}"):
        with d.http(base, inv.health.probe_timeout) as client:
            result = run_packs(
                list(packs.packs),
                base_url=base,
                client=client,
                concurrency=inv.smoke.concurrency,
                clock=d.clock,
                extra_secrets=(d.health_token,) if d.health_token else (),
            )
        r.info(result.summary())
    for check in result.warned:
        r.warn(f"smoke (warn only): {check.line()}")
    if not result.failed_enforced:
        return None
    names = ", ".join(c.name for c in result.failed_enforced)
    return GateFailed(
        "smoke",
        f"{len(result.failed_enforced)} enforced check(s) failed: {names}",
        evidence=result.lines(),
    )


class _Rollout:
    """The activation of one release, batch by batch. Once more hosts failed than
    rollout.max_failed — counted the moment a host's release fails (Deps.on_failure), before
    that host's own rollback — every host already switched starts going back at once, beside
    it; a host of the batch that passes its gate after that goes back as soon as it is done."""

    def __init__(
        self,
        fleet: Fleet,
        rid: str,
        plans: dict[str, DeployPlan],
        pool: ThreadPoolExecutor,
        signals: list[int] | None = None,
    ) -> None:
        self.fleet, self.rid, self.plans, self.pool = fleet, rid, plans, pool
        self.max_failed = fleet.inventory.rollout.max_failed
        self.results: dict[str, Outcome | BaseException] = {}
        self.switched: list[Member] = []
        self.failed: list[Member] = []
        # every signal of the run: raised in a wait, or recorded by _signals_recorded
        self.signals: list[int] = signals if signals is not None else []
        self.back: dict[str, Future[Outcome]] = {}
        self._failing = 0
        self._lock = threading.Lock()
        self._too_many = threading.Event()

    def activate(self, batches: list[range]) -> bool:
        """Every batch in turn; True when the rollout stopped (the fleet goes back)."""
        members = self.fleet.members
        for number, batch in enumerate(batches, 1):
            if self._must_stop():  # e.g. a signal recorded after the ship, or between batches
                return True
            group = [members[i] for i in batch]
            names = ", ".join(m.name for m in group)
            for m in group:
                m.deps.on_failure = self._failed_now
            try:
                with self.fleet.reporter.stage(
                    f"activate {self.rid} on {names} (batch {number} of {len(batches)})"
                ):
                    futures = {
                        self.pool.submit(
                            flow.activate_release, m.deps, m.host, self.plans[m.name]
                        ): m
                        for m in group
                    }
                    _wait(futures, self.signals, self._activated, then=self._stopping)
            finally:
                for m in group:
                    m.deps.on_failure = None
                    m.deps.signals.clear()
            if self._must_stop():
                return True
        return False

    def _failed_now(self, _rid: str) -> None:  # in the failing host's thread
        with self._lock:
            self._failing += 1
            if self._failing > self.max_failed:
                self._too_many.set()

    def _activated(self, m: Member, res: Outcome | BaseException) -> None:
        self.results[m.name] = res
        ok = isinstance(res, Outcome) and res.exit_code == 0
        (self.switched if ok else self.failed).append(m)

    def _must_stop(self) -> bool:
        unsafe = [m for m in self.failed if not _back_safely(self.results[m.name])]
        return bool(unsafe or len(self.failed) > self.max_failed or self.signals)

    def _stopping(self) -> None:
        if self._too_many.is_set() or self._must_stop():
            self.put_back()

    def put_back(self) -> None:
        """Start putting back every switched host not on its way yet (a host without a
        release to go back to — its first deploy — keeps the new one, reported)."""
        for m in self.switched:
            previous = self.plans[m.name].previous_good
            if m.name not in self.back and previous is not None:
                self.back[m.name] = self.pool.submit(_put_back, m, previous)

    def wait_back(self) -> dict[str, Outcome | BaseException]:
        """Wait for the hosts going back; a signal now is noted, not obeyed (as a second
        signal while a single host is made safe)."""
        by_name = {m.name: m for m in self.fleet.members}
        got: dict[str, Outcome | BaseException] = {}
        futures = {future: by_name[name] for name, future in self.back.items()}
        _wait(futures, self.signals, lambda m, res: got.__setitem__(m.name, res), forward=False)
        return got


def _put_back(m: Member, previous: str | None) -> Outcome:
    """A host this deploy switched (its new release passed its gate) goes back to the release
    it was on, gated; the new one is recorded rolled-back there (never a plain rollback's
    target)."""
    m.host.state_at_lock = None  # read at the lock, before this deploy: read the host again
    return rollback_locked(m.deps, m.host, previous)


def _back_safely(res: Outcome | BaseException) -> bool:
    """A host that failed but is known to serve the release it was on, verified (its own
    automatic rollback; or it failed before anything live changed)."""
    if isinstance(res, Outcome):
        return res.exit_code == 3 or res.exit_code > 128
    return isinstance(res, AbortedBeforeLive)


def _live_after(name: str, before: str | None, res: Outcome | BaseException | None) -> HostLive:
    if res is None:
        return HostLive(name, before, before, "untouched", before is not None)
    if isinstance(res, AbortedBeforeLive):
        return HostLive(name, before, before, "not-switched", before is not None)
    if isinstance(res, BaseException):
        return HostLive(name, before, None, "unknown", False)
    if res.exit_code == 0:
        return HostLive(name, before, res.live, res.result, True)
    if res.exit_code == 3 or res.exit_code > 128:  # rolled back, or rejected before traffic
        return HostLive(name, before, res.live, res.result, res.live is not None)
    return HostLive(name, before, res.live, res.result, False)


def _what(res: Outcome | BaseException) -> str:
    if isinstance(res, Outcome):
        return res.message
    if isinstance(res, ReleasegateError):
        return res.message
    return f"{type(res).__name__}: {res}"


def _evidence(res: Outcome | BaseException) -> tuple[str, ...]:
    if isinstance(res, Outcome | ReleasegateError):
        return tuple(res.evidence)
    return ()


def _same(values: Iterable[str | None]) -> str | None:
    found = set(values)
    return found.pop() if len(found) == 1 else None


def _withdraw(members: Sequence[Member], rid: str, reason: str) -> None:
    """Hosts that shipped `rid` but will never run it: remove it (it never served), so they
    are left exactly as they were; journaled. Best effort: a leftover is pruned later."""

    def withdraw(m: Member) -> None:
        host = m.host
        now = m.deps.clock.now()
        steps = [
            commands.prune_releases(host.layout, [rid]),
            host.journal_cmd(now, "deploy", rid, None, result="withdrawn", reason=reason),
        ]
        host.run_batch("withdraw", steps, f"remove {rid}")

    for m, res in zip(members, each(members, withdraw), strict=True):
        if isinstance(res, ReleasegateError):
            m.deps.reporter.warn(f"could not remove the unused {rid}: {res.message}")


# ---------------------------------------------------------------------------- rollback


def rollback(fleet: Fleet, to: str | None = None) -> Outcome:
    """Every host to the newest release that is good on all of them (older than the newest
    one any host runs), or to `to`; each gated. Checked on every host before any changes."""
    inv = fleet.inventory
    members = fleet.members
    check_release_id(to, inv.env)
    with locked_all(fleet, "rollback"):
        read = each(members, lambda m: m.host.state_at_lock or m.host.read_state())
        _all_done(read, members, "reading the host state")
        states = {m.name: s for m, s in zip(members, read, strict=True) if isinstance(s, HostState)}
        marked = [name for name, s in states.items() if s.needs_human() is not None]
        if marked and to is None:
            return _report(
                fleet,
                Outcome(
                    op="rollback",
                    result="needs-human",
                    exit_code=6,
                    release=None,
                    live=None,
                    message=(
                        f"{', '.join(marked)} {'is' if len(marked) == 1 else 'are'} marked "
                        f"needs-human: a plain rollback was refused and no host was changed "
                        f"(`releasegate status {inv.env}` shows why; `rollback --to ID` goes "
                        f"to a release you choose)"
                    ),
                ),
            )
        target = to or common_target(states)
        if target is None:
            raise HumanNeeded(
                f"no release is good on every host and older than what they run "
                f"({_currents(states)}); nothing was changed. `releasegate releases {inv.env}` "
                f"lists each host's releases; `rollback --to ID` picks one"
            )
        absent = "absent"
        missing = [
            name
            for name, s in states.items()
            if s.state_of(target) not in (ReleaseState.GOOD, ReleaseState.ROLLED_BACK)
            and not (s.needs_human() is not None and s.current == target)
        ]
        if missing:
            raise ConfigError(
                f"release {target} is not good (or rolled back) on "
                f"{', '.join(f'{n} ({states[n].state_of(target) or absent})' for n in missing)}; "
                f"a fleet rollback only goes to a release every host can run. Nothing was changed"
            )
        before = {name: s.current for name, s in states.items()}
        with fleet.reporter.stage(f"roll back {len(members)} hosts to {target}"):
            done = each(members, lambda m: _put_back(m, target))
    hosts = tuple(
        _live_after(m.name, before[m.name], res) for m, res in zip(members, done, strict=True)
    )
    if all(h.live == target and h.verified for h in hosts):
        return _report(
            fleet,
            Outcome(
                op="rollback",
                result="rolled-back",
                exit_code=0,
                release=target,
                live=target,
                message=f"rolled back {len(hosts)} hosts to {target}, each verified",
                hosts=hosts,
                evidence=tuple(h.line() for h in hosts),
            ),
        )
    wrong = [h for h in hosts if not (h.live == target and h.verified)]
    return _report(
        fleet,
        Outcome(
            op="rollback",
            result="rollback-failed",
            exit_code=6,
            release=target,
            live=None,
            message=(
                f"the rollback to {target} did not end with every host on it, verified: "
                f"{'; '.join(h.line() for h in wrong)}. A human is needed "
                f"(`releasegate status {inv.env}`)"
            ),
            hosts=hosts,
            evidence=tuple(h.line() for h in hosts)
            + tuple(
                f"{m.name}: {line}"
                for m, res in zip(members, done, strict=True)
                for line in _evidence(res)[-6:]
            ),
        ),
    )


def common_target(states: dict[str, HostState]) -> str | None:
    """The newest release good on every host and older than the newest any host runs."""
    goods = [set(s.good_releases()) for s in states.values()]
    common = set.intersection(*goods) if goods else set()
    newest = max((s.current for s in states.values() if s.current), default=None)
    older = sorted((rid for rid in common if newest is None or rid < newest), reverse=True)
    return older[0] if older else None


# ---------------------------------------------------------------------------- lock


def lock(fleet: Fleet, message: str) -> Outcome:
    """`lock` on every host, in listed order: all of them, or none (the manual locks this
    command took are released again when one host cannot be locked)."""
    taken: list[Member] = []
    for m in fleet.members:
        try:
            lock_manually(m.deps, message)
        except ReleasegateError as exc:
            for held in reversed(taken):
                with contextlib.suppress(ReleasegateError):
                    unlock(held.deps, force=False, reason=None)
            freed = (
                f" The locks this command took on {', '.join(t.name for t in taken)} were "
                f"released again;"
                if taken
                else ""
            )
            text = f"{m.name}: {exc.message}{freed} no host was locked."
            if isinstance(exc, LockHeld):
                raise LockHeld(text, evidence=exc.evidence) from None
            raise AbortedBeforeLive(text, evidence=exc.evidence) from None
        taken.append(m)
    names = ", ".join(m.name for m in fleet.members)
    return _report(
        fleet,
        Outcome(
            op="lock",
            result="locked",
            exit_code=0,
            release=None,
            live=None,
            message=f"deploys to {names} are blocked: {message!r}",
        ),
    )


# ---------------------------------------------------------------------------- status


def status(fleet: Fleet) -> int:
    """Each host's status, a table of them all, and a warning when they run different
    releases (drift)."""
    members = fleet.members
    found = each(members, lambda m: host_status(m.deps))
    rows = [[name, "?", "?", "unreachable", "?"] for name in fleet.unreachable]
    currents: dict[str, str | None] = {}
    code = 5 if fleet.unreachable else 0  # the view is incomplete
    for m, st in zip(members, found, strict=True):
        if isinstance(st, BaseException):
            if not isinstance(st, ReleasegateError):
                raise st
            fleet.reporter.warn(f"{m.name}: status unavailable: {st.message}")
            rows.append([m.name, "?", "?", "?", "?"])
            code = max(code, st.exit_code)
            continue
        fleet.reporter.status(st)
        currents[m.name] = st.current
        holder = st.lock_holder
        rows.append(
            [
                m.name,
                st.current or "(none)",
                st.last_good or "(none)",
                f"held by {holder.get('actor', '?')}" if holder else "free",
                "YES" if st.needs_human else "no",
            ]
        )
    order = {h.name: i for i, h in enumerate(fleet.inventory.hosts)}
    rows.sort(key=lambda row: order[row[0]])
    fleet.reporter.table(
        f"hosts of {fleet.inventory.env}",
        ["host", "current", "last good", "lock", "needs human"],
        rows,
    )
    warn_drift(fleet, currents)
    return code


def warn_drift(fleet: Fleet, currents: dict[str, str | None] | None = None) -> str | None:
    """Hosts running different releases: said as a warning (and returned)."""
    if currents is None:
        read = each(fleet.members, lambda m: m.host.read_state().current)
        currents = {
            m.name: c
            for m, c in zip(fleet.members, read, strict=True)
            if not isinstance(c, BaseException)
        }
    text = drift(currents)
    if text:
        fleet.reporter.warn(text)
    return text


def drift(currents: dict[str, str | None]) -> str | None:
    groups: dict[str | None, list[str]] = {}
    for name, current in currents.items():
        groups.setdefault(current, []).append(name)
    if len(groups) < 2:
        return None
    parts = "; ".join(
        f"{', '.join(names)} on {rid or '(nothing)'}" for rid, names in groups.items()
    )
    return (
        f"drift: the hosts run different releases ({parts}). Deploy again, or roll every host "
        f"to one release with `rollback --to ID`"
    )


def _currents(states: dict[str, HostState]) -> str:
    return ", ".join(f"{n} on {s.current or '(nothing)'}" for n, s in states.items())


def _report(fleet: Fleet, outcome: Outcome) -> Outcome:
    """The fleet's outcome ends the operation: a table of the hosts, then the outcome."""
    if outcome.hosts:
        fleet.reporter.table(
            f"hosts after {outcome.op}",
            ["host", "before", "live", "result", "verified"],
            [
                [
                    h.host,
                    h.before or "(none)",
                    h.live or "?",
                    h.result,
                    "yes" if h.verified else "NO",
                ]
                for h in outcome.hosts
            ],
        )
    fleet.reporter.outcome(outcome)
    return outcome
