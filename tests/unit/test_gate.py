"""The readiness poller with httpx.MockTransport and a fake clock: no sockets, no waiting."""

from __future__ import annotations

import itertools
import math
from pathlib import PurePosixPath

import httpx
import pytest

from deploy.errors import CommandFailure, GateFailed, RemoteCommandError
from deploy.gate import (
    Expected,
    ReadyPolicy,
    check_identity,
    check_version,
    probe_http,
    reported_version,
    wait_ready,
)
from deploy.inventory import VersionConfig
from deploy.model import IdentityFacts, Instance, ProcessSnapshot
from tests.fakehost import FakeClock

POLICY = ReadyPolicy(deadline=10, interval=0.5, successes=3, max_restarts=2)
ONLINE = ProcessSnapshot(status="online", pids=(10, 11), restarts=0)


def client(handler) -> httpx.Client:
    return httpx.Client(base_url="http://app", transport=httpx.MockTransport(handler))


def answers(*codes):
    seq = list(codes)

    def handler(request: httpx.Request) -> httpx.Response:
        code = seq.pop(0) if len(seq) > 1 else seq[0]
        if code == "down":
            raise httpx.ConnectError("refused", request=request)
        if code == "slow":
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(code, text="body")

    return handler


def test_promotes_after_consecutive_successes():
    c = client(answers(503, 200, 503, 200, 200, 200))
    history, _ = wait_ready(lambda: probe_http(c, "/health/ready", {}), None, POLICY, FakeClock())
    assert [p.outcome for p in history] == ["fail", "ok", "fail", "ok", "ok", "ok"]


def test_fail_and_error_are_distinguished():
    c = client(answers("down", "slow", 503))
    with pytest.raises(GateFailed) as err:
        wait_ready(lambda: probe_http(c, "/r", {}), None, POLICY, FakeClock())
    ev = "\n".join(err.value.evidence)
    assert "error no answer: ConnectError" in ev
    assert "error no answer: timed out" in ev
    assert "fail  503" in ev
    assert "within 10s" in err.value.message


def test_deadline_is_respected_with_fake_clock():
    clock = FakeClock()
    start = clock.t
    c = client(answers(503))
    with pytest.raises(GateFailed):
        wait_ready(lambda: probe_http(c, "/r", {}), None, POLICY, clock)
    assert 9 <= clock.t - start <= 10


def test_fail_fast_on_errored_process():
    clock = FakeClock()
    start = clock.t
    snaps = iter([ONLINE, ProcessSnapshot("errored", (), 3)])
    c = client(answers(503))
    with pytest.raises(GateFailed, match="errored"):
        wait_ready(lambda: probe_http(c, "/r", {}), lambda _t: next(snaps), POLICY, clock)
    assert clock.t - start < 1


def test_fail_fast_on_restart_loop():
    snaps = iter(ProcessSnapshot("online", (1,), n) for n in (5, 6, 7, 8, 9))
    c = client(answers("down"))
    with pytest.raises(GateFailed, match="restarted 3 times"):
        wait_ready(lambda: probe_http(c, "/r", {}), lambda _t: next(snaps), POLICY, FakeClock())


def test_token_header_is_sent():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        return httpx.Response(200)

    probe_http(client(handler), "/r", {"X-Health-Token": "s3cret-value"})
    assert seen["x-health-token"] == "s3cret-value"


def test_identity():
    rel = PurePosixPath("/srv/app/releases/20261122120000-abcdef1")
    ok = check_identity(ONLINE, facts({10: str(rel), 11: str(rel)}), rel)
    assert "2 process(es)" in ok
    with pytest.raises(GateFailed, match="pid 11 runs in /srv/app/releases/old"):
        check_identity(ONLINE, facts({10: str(rel), 11: "/srv/app/releases/old"}), rel)
    with pytest.raises(GateFailed, match="no running process"):
        check_identity(ProcessSnapshot("errored", (), 0), facts({}), rel)


def facts(cwds: dict[int, str], release_dir: str | None = None, **manifest) -> IdentityFacts:
    return IdentityFacts(release_dir=release_dir, cwds=cwds, manifest=manifest)


def test_identity_compares_against_the_root_resolved_on_the_host():
    """/srv/app -> /data/srv/app: /proc/<pid>/cwd shows the physical path."""
    rel = PurePosixPath("/srv/app/releases/20261122120000-abcdef1")
    real = "/data/srv/app/releases/20261122120000-abcdef1"
    assert "2 process(es)" in check_identity(ONLINE, facts({10: real, 11: real}, real), rel)
    # a process in another release under the same physical root is still caught
    with pytest.raises(GateFailed, match=r"pid 11 runs in /data/srv/app/releases/old"):
        check_identity(ONLINE, facts({10: real, 11: "/data/srv/app/releases/old"}, real), rel)


# ------------------------------------------------------------------ the stability window


def inst(*states: tuple[str, int, int]) -> ProcessSnapshot:
    """A PM2-like snapshot: (status, pid, restarts) per instance, ids 0.."""
    instances = tuple(Instance(i, st, pid, r) for i, (st, pid, r) in enumerate(states))
    return ProcessSnapshot.of(instances, "online")


class Reads:
    """The process manager as the gate sees it: snapshots by fake time, every read recorded."""

    def __init__(self, clock: FakeClock, timeline):
        self.clock, self.start, self.timeline = clock, clock.t, timeline
        self.timeouts: list[float] = []

    def __call__(self, timeout: float) -> ProcessSnapshot:
        self.timeouts.append(timeout)
        return self.timeline(self.clock.t - self.start)


STABLE = ReadyPolicy(
    deadline=10, interval=0.5, successes=3, max_restarts=2, stable_for=3, instances=2
)
UP = inst(("online", 10, 1), ("online", 11, 1))


def test_healthy_gate_waits_out_the_window_with_two_process_reads():
    clock = FakeClock()
    reads = Reads(clock, lambda t: UP)
    c = client(answers(200))
    history, snap = wait_ready(lambda: probe_http(c, "/r", {}), reads, STABLE, clock)
    # 3 successes come at +1.0 s, but the window needs 3 s: both run together, not in series
    assert clock.t - reads.start == pytest.approx(3.0)
    assert len(reads.timeouts) == 2  # when the window opens and when it has lasted
    assert snap == UP


def test_crash_shortly_after_start_is_not_promoted():
    """Ready at once, every instance exits ~2 s after start and PM2 restarts it: 3 ok probes in
    1 s used to promote it; the window sees the restarts and the gate fails fast."""
    clock = FakeClock()

    def crash_every_2s(t: float) -> ProcessSnapshot:
        n = int(t // 2)
        return inst(("online", 10 + 100 * n, 1 + n), ("online", 11 + 100 * n, 1 + n))

    c = client(answers(200))
    with pytest.raises(GateFailed) as err:
        wait_ready(lambda: probe_http(c, "/r", {}), Reads(clock, crash_every_2s), STABLE, clock)
    assert "restarted" in err.value.message
    assert any("changed during the stability window" in line for line in err.value.evidence)


def test_a_restart_within_max_restarts_reopens_the_window():
    clock = FakeClock()
    # one restart of instance 1 at +0.2 s (a new pid), then steady
    reads = Reads(clock, lambda t: UP if t < 0.2 else inst(("online", 10, 1), ("online", 55, 2)))
    c = client(answers(200))
    history, snap = wait_ready(lambda: probe_http(c, "/r", {}), reads, STABLE, clock)
    assert snap is not None and snap.pids == (10, 55)
    # the first window (opened at +0) was spoiled at +3.0; the second one lasted 3 s more
    assert clock.t - reads.start == pytest.approx(6.0)
    assert any("changed during the stability window" in p.detail for p in history)


@pytest.mark.parametrize(
    "other",
    [("stopping", 11, 1), ("launching", 11, 1), ("waiting restart", 0, 2), ("online", 0, 1)],
)
def test_every_expected_instance_must_be_online_with_a_pid(other):
    clock = FakeClock()
    reads = Reads(clock, lambda t: inst(("online", 10, 1), other))
    c = client(answers(200))
    with pytest.raises(GateFailed, match="not every instance is online"):
        wait_ready(lambda: probe_http(c, "/r", {}), reads, STABLE, clock)


def test_fewer_instances_than_expected_is_not_ready():
    clock = FakeClock()
    c = client(answers(200))
    with pytest.raises(GateFailed, match=r"1 of 2 expected"):
        wait_ready(
            lambda: probe_http(c, "/r", {}),
            Reads(clock, lambda t: inst(("online", 10, 0))),
            STABLE,
            clock,
        )


def test_an_instance_that_comes_up_late_opens_the_window_then():
    clock = FakeClock()
    reads = Reads(clock, lambda t: inst(("online", 10, 1), ("launching", 0, 1)) if t < 1 else UP)
    c = client(answers(200))
    wait_ready(lambda: probe_http(c, "/r", {}), reads, STABLE, clock)
    assert clock.t - reads.start >= 1 + STABLE.stable_for


def test_restarts_are_counted_from_the_start_of_the_gate():
    """A reload counted restarts before the gate; only the ones during it count."""
    clock = FakeClock()
    reads = Reads(clock, lambda t: inst(("online", 10, 40), ("online", 11, 40)))
    c = client(answers(200))
    wait_ready(lambda: probe_http(c, "/r", {}), reads, STABLE, clock)


def test_every_process_read_is_bounded_by_the_time_left():
    clock = FakeClock()
    reads = Reads(clock, lambda t: UP)
    c = client(answers(503, 503, 200))
    wait_ready(lambda: probe_http(c, "/r", {}), reads, STABLE, clock)
    assert reads.timeouts[0] == pytest.approx(STABLE.deadline)
    assert reads.timeouts == sorted(reads.timeouts, reverse=True)
    assert all(0 < t <= STABLE.deadline for t in reads.timeouts)


def test_a_process_manager_that_does_not_answer_fails_the_gate():
    clock = FakeClock()

    def hung(timeout: float) -> ProcessSnapshot:
        clock.sleep(timeout)
        raise RemoteCommandError(CommandFailure("pm2 jlist", 124, "no answer", "h"))

    c = client(answers(200))
    start = clock.t
    with pytest.raises(GateFailed, match="process manager did not answer"):
        wait_ready(lambda: probe_http(c, "/r", {}), hung, STABLE, clock)
    assert clock.t - start <= STABLE.deadline


# ------------------------------------------------------------------ version identity

RID = "20261122120000-abcdef1"
SHA = "abcdef1234567890abcdef1234567890abcdef12"
EXPECTED = Expected(release_id=RID, revision=SHA, tags=("v1.4.0",))


@pytest.mark.parametrize(
    ("expect", "reported"),
    [("release_id", RID), ("revision", SHA), ("revision", SHA[:7]), ("tag", "v1.4.0")],
)
def test_version_matches(expect, reported):
    assert RID in check_version(reported, expect, EXPECTED, "field 'release'")


@pytest.mark.parametrize(
    ("expect", "reported"),
    [
        ("release_id", "19700101000000-0000000"),
        ("revision", "0" * 40),
        ("revision", SHA[:6]),  # too short to name a commit
        ("revision", SHA.upper()[:7] + "Z"),
        ("tag", "v1.3.9"),
    ],
)
def test_version_mismatch_fails_identity_with_both_values(expect, reported):
    with pytest.raises(GateFailed) as err:
        check_version(reported, expect, EXPECTED, "header X-Release-Id")
    assert err.value.gate == "identity"
    assert f"reported: {reported}" in err.value.evidence
    assert any(line.startswith("expected: ") for line in err.value.evidence)
    assert reported in err.value.message


def test_a_null_version_is_a_mismatch():
    c = version_client(body={"release": None})
    reported = reported_version(c, VersionConfig(field="release"), {})
    with pytest.raises(GateFailed) as err:
        check_version(reported, "release_id", EXPECTED, "field 'release'")
    assert "reported: (null)" in err.value.evidence


def test_tag_expected_but_the_commit_has_none():
    with pytest.raises(GateFailed, match="without a tag"):
        check_version("v1", "tag", Expected(RID, SHA), "field 'tag'")


def version_client(status: int = 200, body=None, headers=None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/version"
        return httpx.Response(status, json=body, headers=headers or {})

    return client(handler)


def test_reported_version_from_a_json_field_or_a_header():
    nested = VersionConfig(field="build.release")
    c = version_client(body={"build": {"release": RID}})
    assert reported_version(c, nested, {}) == RID
    by_header = VersionConfig(header="X-Release-Id")
    c = version_client(body={}, headers={"X-Release-Id": RID})
    assert reported_version(c, by_header, {}) == RID


@pytest.mark.parametrize(
    ("settings", "status", "body", "words"),
    [
        (VersionConfig(field="release"), 404, {}, "answered 404"),
        (VersionConfig(field="release"), 200, {"name": "x"}, "no field 'release'"),
        (VersionConfig(field="release"), 200, {"release": {"id": 1}}, "not a string"),
        (VersionConfig(header="X-Release-Id"), 200, {}, "no X-Release-Id header"),
    ],
)
def test_unreadable_version_fails_identity(settings, status, body, words):
    with pytest.raises(GateFailed, match=words) as err:
        reported_version(version_client(status, body), settings, {})
    assert err.value.gate == "identity"


# ------------------------------------------------------------------ how long a gate takes


@pytest.mark.parametrize(
    ("successes", "interval", "stable_for"),
    [(3, 0.5, 0), (3, 0.5, 3), (5, 0.25, 0.5), (3, 0.25, 5), (1, 0.5, 0.7), (10, 0.5, 2)],
)
def test_minimum_duration_is_the_longer_of_the_successes_and_the_window(
    successes, interval, stable_for
):
    """docs/design.md: gate >= max((successes - 1) * interval, ceil(stable_for / interval) *
    interval) plus the reads: the successes and the window run together, not in series."""
    clock = FakeClock()
    policy = ReadyPolicy(
        deadline=30,
        interval=interval,
        successes=successes,
        max_restarts=2,
        stable_for=stable_for,
        instances=2,
    )
    reads = Reads(clock, lambda t: UP)
    c = client(answers(200))
    wait_ready(lambda: probe_http(c, "/r", {}), reads, policy, clock)
    ticks = max(successes - 1, math.ceil(round(stable_for / interval, 9)))
    assert clock.t - reads.start == pytest.approx(ticks * interval)


def test_slow_probes_and_reads_do_not_stretch_the_cadence():
    """On a slow link each probe and each process read takes a round trip; the gate keeps
    its cadence (one probe every interval from the first) instead of adding that time to
    every interval, so its duration grows by one round trip, not by one per probe."""
    clock = FakeClock()
    rtt = 0.2
    snapshots = Reads(clock, lambda t: UP)

    def slow_read(timeout: float) -> ProcessSnapshot:
        clock.t += rtt
        return snapshots(timeout)

    c = client(answers(200))

    def slow_probe() -> tuple[str, str]:
        clock.t += rtt
        return probe_http(c, "/r", {})

    history, _ = wait_ready(slow_probe, slow_read, STABLE, clock)
    probes = [p for p in history if p.outcome == "ok"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(probes)]
    assert gaps == pytest.approx([STABLE.interval] * len(gaps))
    # the read that opens the window, the window, the last probe and the read that closes it
    assert clock.t - snapshots.start == pytest.approx(rtt + STABLE.stable_for + 2 * rtt)


def test_the_closing_read_replaces_the_last_process_read():
    """The read that may close the window is `closing`, given the window's pids (the flow
    reads their identity with it): a healthy gate reads the host twice, not three times."""
    clock = FakeClock()
    reads = Reads(clock, lambda t: UP)
    closing_reads: list[float] = []

    def closing(timeout: float, pids: tuple[int, ...]) -> ProcessSnapshot:
        closing_reads.append(timeout)
        assert pids == UP.pids  # the window's pids: their identity is read with it
        return UP

    c = client(answers(200))
    history, snap = wait_ready(
        lambda: probe_http(c, "/r", {}), reads, STABLE, clock, closing=closing
    )
    assert len(reads.timeouts) == 1 and len(closing_reads) == 1
    assert snap == UP


def test_a_gate_given_the_state_after_the_activation_starts_from_it():
    """In place, the activation's batch ends with a process read: the gate's window opens on
    it, and a healthy gate reads the host once more (the closing read), not twice."""
    clock = FakeClock()
    reads = Reads(clock, lambda t: UP)
    c = client(answers(200))
    history, snap = wait_ready(
        lambda: probe_http(c, "/r", {}), reads, STABLE, clock, first=lambda t: UP
    )
    assert len(reads.timeouts) == 1
    assert clock.t - reads.start == pytest.approx(STABLE.stable_for)
    assert snap == UP


def test_a_given_first_state_still_counts_restarts_and_changes():
    """The given state is the baseline: a restart after it spoils the window like any other."""
    clock = FakeClock()
    later = inst(("online", 10, 1), ("online", 56, 2))
    reads = Reads(clock, lambda t: later)
    c = client(answers(200))
    history, snap = wait_ready(
        lambda: probe_http(c, "/r", {}), reads, STABLE, clock, first=lambda t: UP
    )
    assert snap == later
    assert any("changed during the stability window" in p.detail for p in history)
