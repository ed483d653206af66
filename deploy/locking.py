"""An operation's hold on a host's lock: take it (wait, break a stale one), keep its lease,
release it; `releasegate lock` and `unlock`. The lock record itself: deploy/lock.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from deploy import lock
from deploy.deps import Deps, host_ops, report
from deploy.errors import ConfigError, LockHeld, ReleasegateError
from deploy.host import HostOps
from deploy.interrupts import shielded
from deploy.model import Outcome


@contextlib.contextmanager
def locked(d: Deps, host: HostOps, op: str) -> Iterator[None]:
    with d.reporter.stage(f"connect {host.label} and lock"):
        take_lock(d, host, op)
    # The lease is renewed in the background while the operation runs (lock.LeaseKeeper).
    keeper = None if d.dry_run else host.keep_lease()
    try:
        yield
    finally:
        with shielded(d.reporter):
            if keeper is not None:
                keeper.stop()
            try:
                if not host.release_lock():
                    d.reporter.warn(
                        f"the lock {host.layout.lock} on {host.label} was no longer ours when "
                        f"this run ended: it was forced (`unlock --force`) or our lease lapsed"
                        + (f" ({keeper.lost})" if keeper is not None and keeper.lost else "")
                        + " and another run broke it"
                    )
            except ReleasegateError as exc:
                d.reporter.error(
                    f"could not release the lock {host.layout.lock} on {host.label}: "
                    f"{exc.message}. Remove it once you have checked the host "
                    f"(`releasegate status {d.inventory.env}`)."
                )


def take_lock(d: Deps, host: HostOps, op: str, message: str = "") -> None:
    """Take the host lock; wait up to d.lock_wait for an automated holder (never for a manual
    lock). Break a holder's lock — journaled — once its lease has ended (it stopped renewing:
    killed, or its machine is gone), or at once when its process is known dead (same machine,
    pid gone). A live lease is never broken."""
    if d.dry_run:
        held = host.read_state().lock_raw
        if held:
            holder = lock.assess(held, d.clock.now(), d.machine)
            if not (holder.dead or holder.expired) and (holder.manual or d.lock_wait <= 0):
                # what the real run would do, with its exit code (docs/exit-codes.md)
                raise LockHeld(
                    f"dry run: {host.layout.lock} on {host.label} is held by "
                    f"{holder.describe()}, so a real {op} would stop here with exit 4; "
                    f"nothing was changed."
                    + (
                        f" Ask its holder, or `releasegate unlock {d.inventory.env}`."
                        if holder.manual
                        else " Retry later, or wait for it with --lock-wait SECONDS."
                    )
                )
            d.reporter.warn(
                f"the lock is held by {holder.describe()}: a real {op} would wait "
                f"(--lock-wait) or break it once its holder is gone"
            )
    deadline = d.clock.monotonic() + d.lock_wait
    tried_to_break: set[str] = set()
    while True:
        raw = host.try_lock(op, d.clock.now(), message)
        if raw is None:
            return
        holder = lock.assess(raw, d.clock.now(), d.machine)
        if (holder.dead or holder.expired) and holder.key not in tried_to_break:
            tried_to_break.add(holder.key)
            if host.break_lock(holder, force=holder.dead):
                lease = holder.lease
                reason = (
                    "owner process is gone"
                    if holder.dead or lease is None
                    else f"lease expired: no renewal for {lease.age_s}s (lease {lease.ttl_s}s)"
                )
                host.record(
                    d.clock.now(), "lock-broken", None, None, holder=holder.owner, reason=reason
                )
                d.reporter.warn(f"broke a stale lock: {holder.describe()}")
            continue
        remaining = deadline - d.clock.monotonic()
        if holder.manual or remaining <= 0:
            hint = (
                "It is a manual lock: ask its holder, or `releasegate unlock "
                f"{d.inventory.env}` (its holder) / `--force --reason …`."
                if holder.manual
                else "Wait for it (--lock-wait SECONDS): a holder that stopped renewing its "
                "lease loses the lock when the lease ends. If you are sure it is gone, "
                f"`releasegate unlock {d.inventory.env} --force --reason …` after checking "
                f"`releasegate status {d.inventory.env}`."
            )
            raise LockHeld(
                f"{host.layout.lock} on {host.label} is held by {holder.describe()}; nothing "
                f"was changed. {hint}"
            )
        d.reporter.info(f"waiting for the lock held by {holder.describe()}")
        left = holder.lease.left_s if holder.lease else None
        # wake up right after the lease ends rather than up to 2 s later
        pause = min(2.0, remaining, max(0.2, left + 0.2) if left is not None else 2.0)
        d.clock.sleep(pause)


def lock_manually(d: Deps, message: str) -> Outcome:
    host = host_ops(d)
    host.prepare()
    take_lock(d, host, lock.MANUAL, message)
    host.record(d.clock.now(), "lock", None, None, message=message)
    host.lock_token = None  # stays held after we exit: that is the point
    return report(
        d,
        Outcome(
            op="lock",
            result="locked",
            exit_code=0,
            release=None,
            live=None,
            message=f"deploys to {host.label} are blocked: {message!r}",
        ),
    )


def unlock(d: Deps, *, force: bool, reason: str | None) -> Outcome:
    host = host_ops(d)
    state = host.read_state()
    if state.lock_raw is None:
        return report(
            d,
            Outcome(
                op="unlock",
                result="not-locked",
                exit_code=0,
                release=None,
                live=state.current,
                message=f"{host.layout.lock} is not held",
            ),
        )
    holder = lock.assess(state.lock_raw, d.clock.now(), d.machine)
    own_manual = holder.manual and holder.owner.get("actor") == d.actor
    if not own_manual and not force:
        raise LockHeld(
            f"{host.layout.lock} is held by {holder.describe()}; only its holder unlocks it. "
            f"If you are sure it is abandoned: `releasegate unlock {d.inventory.env} --force "
            f'--reason "…"` (the reason goes in the journal).'
        )
    if force and not own_manual and not reason:
        raise ConfigError('--force needs --reason "…": it is recorded in the journal')
    if not host.break_lock(holder, force=True):
        raise LockHeld(f"{host.layout.lock} changed hands while unlocking; look again")
    host.record(
        d.clock.now(),
        "unlock",
        None,
        None,
        holder=holder.owner,
        forced=force and not own_manual,
        reason=reason or "",
    )
    return report(
        d,
        Outcome(
            op="unlock",
            result="unlocked",
            exit_code=0,
            release=None,
            live=state.current,
            message=f"released the lock of {holder.describe()}",
        ),
    )
