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
    """Keep `keep_good` good releases (newest good first), `current` and the last good one;
    remove bad and partial releases first, then older good ones; never touch what we don't
    recognise (unknown names, or release dirs whose state the journal does not say)."""
    protected = {r for r in (state.current, state.last_good()) if r}
    bad: list[str] = []
    old_good: list[str] = []
    keep: list[str] = []
    warnings: list[str] = []
    good = state.good_releases()
    kept_good = [r for r in good if r in protected]
    for rid in good:
        if rid in protected:
            continue
        if len(kept_good) < keep_good:
            kept_good.append(rid)
        else:
            old_good.append(rid)
    for rid in sorted(state.release_dirs - set(good)):
        if rid in protected:
            keep.append(rid)
        elif state.state_of(rid) == ReleaseState.BAD:
            bad.append(rid)
        else:
            keep.append(rid)
            warnings.append(
                f"releases/{rid} is {state.state_of(rid) or 'not in the journal'}; left in place"
            )
    remove = [*sorted(state.partial_dirs), *bad, *old_good]
    for name in sorted(state.other_dirs):
        warnings.append(f"releases/{name} is not a release releasegate made; left in place")
    keep.extend(kept_good)
    return PrunePlan(remove=tuple(remove), keep=tuple(sorted(set(keep))), warnings=tuple(warnings))
