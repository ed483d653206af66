"""`releasegate status`: what a host runs, its releases and their verdicts, its lock."""

from __future__ import annotations

from deploy import migrations
from deploy.deps import Deps, host_ops, strategy_for
from deploy.model import HostStatus


def host_status(d: Deps) -> HostStatus:
    host = host_ops(d)
    state = host.read_state()
    slots = strategy_for(d, host, state).views() if state.root_exists else ()
    live = next((view for view in slots if view.role == "live"), None)
    snap = (live.process if live else None) if slots else None
    if not slots and state.root_exists:
        snap = host.snapshot()
    rels = sorted(
        state.release_dirs | {p.removesuffix(".partial") for p in state.partial_dirs}, reverse=True
    )
    return HostStatus(
        host=host.label,
        current=state.current,
        last_good=state.last_good(),
        needs_human=state.needs_human(),
        process=snap,
        lock_holder=state.lock_owner,
        slots=slots,
        schema=migrations.database_schema(state.journal),
        releases=tuple(
            (
                rid,
                state.state_of(rid)
                or ("partial" if f"{rid}.partial" in state.partial_dirs else "unknown"),
            )
            for rid in rels
        ),
    )
