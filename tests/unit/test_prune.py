"""Pruning decisions from a hostile history: never current, never the last good, never unknowns."""

from __future__ import annotations

import json

from deploy import journal, prune


def rid(n: int) -> str:
    return f"202611221200{n:02d}-abcdef{n % 10}"


def state(entries, dirs, current, partial=(), other=()):
    text = "\n".join(
        json.dumps({"ts": "t", "op": "deploy", "release": r, "state": s, "actor": "a"})
        for r, s in entries
    )
    return journal.HostState(
        root_exists=True,
        current=current,
        release_dirs=frozenset(dirs),
        partial_dirs=frozenset(partial),
        other_dirs=frozenset(other),
        lock_owner=None,
        journal=tuple(journal.parse(text)),
    )


def test_keeps_n_good_removes_bad_and_partial_first():
    entries = [(rid(i), "good") for i in range(1, 7)] + [(rid(7), "bad"), (rid(8), "bad")]
    st = state(
        entries, {rid(i) for i in range(1, 9)}, current=rid(6), partial={f"{rid(9)}.partial"}
    )
    p = prune.plan(st, keep_good=3)
    assert p.remove[:3] == (f"{rid(9)}.partial", rid(7), rid(8))
    assert set(p.remove[3:]) == {rid(1), rid(2), rid(3)}
    assert set(p.keep) == {rid(4), rid(5), rid(6)}


def test_rolled_back_current_and_last_good_survive():
    # current was activated by a manual rollback to an old release; the newest good is older
    entries = [(rid(i), "good") for i in range(1, 6)] + [(rid(2), "good")]
    entries += [(rid(i), "bad") for i in range(6, 12)]
    dirs = {rid(i) for i in range(1, 12)}
    st = state(entries, dirs, current=rid(2))
    p = prune.plan(st, keep_good=2)
    assert rid(2) in p.keep and rid(2) not in p.remove
    assert st.last_good() == rid(2)
    assert all(rid(i) in p.remove for i in range(6, 12))
    assert len([r for r in p.keep if st.state_of(r) == "good"]) == 2


def test_unknown_dirs_and_unjournaled_releases_are_left_with_a_warning():
    st = state([(rid(1), "good")], {rid(1), rid(2)}, current=rid(1), other={"backup-old", "x"})
    p = prune.plan(st, keep_good=2)
    assert p.remove == ()
    assert any("backup-old" in w for w in p.warnings)
    assert any(rid(2) in w and "not in the journal" in w for w in p.warnings)


def test_current_is_never_removed_even_when_bad():
    st = state([(rid(1), "good"), (rid(2), "bad")], {rid(1), rid(2)}, current=rid(2))
    p = prune.plan(st, keep_good=2)
    assert rid(2) not in p.remove and rid(1) not in p.remove


def test_releases_left_by_a_manual_rollback_are_kept_after_good_ones_then_pruned():
    # 1..4 good; 5 and 6 were left by manual rollbacks (6 most recently); current is 4
    entries = [(rid(i), "good") for i in range(1, 7)]
    entries += [(rid(5), "rolled-back"), (rid(6), "rolled-back")]
    st = state(entries, {rid(i) for i in range(1, 7)}, current=rid(4))
    assert st.rolled_back_releases() == [rid(6), rid(5)]
    p = prune.plan(st, keep_good=5)
    assert p.remove == (rid(5),) and p.warnings == ()
    assert set(p.keep) == {rid(i) for i in (1, 2, 3, 4, 6)}
    p = prune.plan(st, keep_good=2)
    assert set(p.keep) == {rid(4), rid(3)}
    assert set(p.remove) == {rid(1), rid(2), rid(5), rid(6)}


def test_a_release_a_slot_runs_is_never_pruned():
    from dataclasses import replace

    entries = [(rid(n), "good") for n in range(6)] + [(rid(9), "bad")]
    dirs = [rid(n) for n in range(6)] + [rid(9)]
    s = state(entries, dirs, current=rid(5))
    plain = prune.plan(s, 2)
    assert rid(0) in plain.remove and rid(9) in plain.remove
    # blue/green: a warm (old good) and a paused (bad) release still run in their slots
    kept = prune.plan(replace(s, slot_links={"blue": rid(0), "green": rid(9)}), 2)
    assert rid(0) not in kept.remove and rid(9) not in kept.remove
