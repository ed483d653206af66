"""Which releases to remove after a promotion: decided from the journal, never from mtime."""

from __future__ import annotations

from dataclasses import dataclass

from deploy.journal import HostState
from deploy.model import ReleaseState


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[str, ...]  # release ids and <id>.partial names, bad/partial first
    keep: tuple[str, ...]
    warnings: tuple[str, ...]


def plan(state: HostState, keep_good: int) -> PrunePlan:
    """Keep `keep_good` releases that can be gone back to — good ones (newest good first),
    then ones a manual rollback left (`rolled-back`, most recently left first) — plus
    `current`, the last good one and what a blue/green slot runs; remove bad and partial
    releases first, then the older
    ones beyond that count; never touch what we don't recognise (unknown names, or release
    dirs whose state the journal does not say)."""
    # blue/green: whatever a slot runs (live, warm, paused) stays
    protected = {r for r in (state.current, state.last_good(), *state.slot_links.values()) if r}
    bad: list[str] = []
    old: list[str] = []
    keep: list[str] = []
    warnings: list[str] = []
    returnable = [*state.good_releases(), *state.rolled_back_releases()]
    kept = [r for r in returnable if r in protected]
    for rid in returnable:
        if rid in protected:
            continue
        if len(kept) < keep_good:
            kept.append(rid)
        else:
            old.append(rid)
    for rid in sorted(state.release_dirs - set(returnable)):
        if rid in protected:
            keep.append(rid)
        elif state.state_of(rid) == ReleaseState.BAD:
            bad.append(rid)
        else:
            keep.append(rid)
            warnings.append(
                f"releases/{rid} is {state.state_of(rid) or 'not in the journal'}; left in place"
            )
    remove = [*sorted(state.partial_dirs), *bad, *old]
    for name in sorted(state.other_dirs):
        warnings.append(f"releases/{name} is not a release releasegate made; left in place")
    keep.extend(kept)
    return PrunePlan(remove=tuple(remove), keep=tuple(sorted(set(keep))), warnings=tuple(warnings))
