"""The readiness poller with httpx.MockTransport and a fake clock: no sockets, no waiting."""

from __future__ import annotations

from pathlib import PurePosixPath

import httpx
import pytest

from deploy.errors import GateFailed
from deploy.gate import ReadyPolicy, check_identity, probe_http, wait_ready
from deploy.model import ProcessSnapshot
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
        wait_ready(lambda: probe_http(c, "/r", {}), lambda: next(snaps), POLICY, clock)
    assert clock.t - start < 1


def test_fail_fast_on_restart_loop():
    snaps = iter(ProcessSnapshot("online", (1,), n) for n in (5, 6, 7, 8, 9))
    c = client(answers("down"))
    with pytest.raises(GateFailed, match="restarted 3 times"):
        wait_ready(lambda: probe_http(c, "/r", {}), lambda: next(snaps), POLICY, FakeClock())


def test_token_header_is_sent():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        return httpx.Response(200)

    probe_http(client(handler), "/r", {"X-Health-Token": "s3cret-value"})
    assert seen["x-health-token"] == "s3cret-value"


def test_identity():
    rel = PurePosixPath("/srv/app/releases/20261122120000-abcdef1")
    ok = check_identity(ONLINE, {10: str(rel), 11: str(rel)}, rel)
    assert "2 process(es)" in ok
    with pytest.raises(GateFailed, match="pid 11 runs in /srv/app/releases/old"):
        check_identity(ONLINE, {10: str(rel), 11: "/srv/app/releases/old"}, rel)
    with pytest.raises(GateFailed, match="no running process"):
        check_identity(ProcessSnapshot("errored", (), 0), {}, rel)
