"""How chatty a warm deploy is on the wire (issue 14), counted the way the benchmark counts it:
through bench/delayproxy.py, which reports the request→reply turns of every connection. A
count, not a timing (the proxy's 25 ms each way only keep racing packets in a fixed order)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.rig import DelayProxy, known_hosts_for
from deploy import demo, operations
from deploy.operations import Options
from deploy.report import RecordingReporter
from tests.conftest import wait_until
from tests.integration.conftest import Target
from tests.integration.test_deploy import deploy

pytestmark = pytest.mark.integration

# Before issue 14 a warm deploy with this gate (stable_for 1 s at 0.3 s: about 5 probes) took
# 43 turns: 3 per command (open, exec, close), an SFTP session of 6 for the artifact, a
# separate identity read and lock release; 29 once a command cost 2 (its channel opened with the
# previous one: the wait for its result, the answer to the host's CHANNEL_CLOSE, and one more
# for a command with stdin, which sshd lets follow only once the exec request is answered).
# Now every command travels on one shell session (deploy/session.py): one turn each. Besides the
# probes (one turn each, the gate's evidence): the SSH connection 3 (key exchange, new keys,
# authentication), the session's channel 1, the tunnel's channel 1, and the 7 commands
# (preflight — on the session's exec request —, lock, upload, ship, activate, the gate's closing
# read, promote + unlock) = 12 (measured: 12 in every run). One more is allowed for TCP chunking.
# The proxy delays 25 ms each way, as bench/turns.py does: without a delay the count depends on
# which of two racing packets arrives first (the host's banner or the client's key exchange; a
# probe's answer or the closing read that the end of the stability window sends beside it).
MAX_TURNS_BESIDES_PROBES = 13


def test_a_warm_deploy_through_the_proxy_takes_few_turns(target: Target, tmp_path: Path):
    code, rep = deploy(target)
    assert code == 0, rep.lines[-10:]
    (target.repo / "STAMP").write_text("warm\n")
    demo.commit_fault(target.repo, "")  # a new commit, same dependencies
    with DelayProxy((target.vps.address, target.vps.port), 25) as proxy:
        pins = known_hosts_for(target.vps, f"[127.0.0.1]:{proxy.port}", tmp_path / "kh")
        data = dict(target.data)
        data["hosts"] = [{**data["hosts"][0], "address": "127.0.0.1", "port": proxy.port}]
        data["ssh"] = {"known_hosts": str(pins)}
        (target.inv_dir / "wan.yml").write_text(yaml.safe_dump(data))
        rep = RecordingReporter()
        assert operations.run_deploy("wan", Options(inventories=target.inv_dir), reporter=rep) == 0
        closed = wait_until(
            lambda: proxy.events("close"), 10, "the proxied connection to close after the deploy"
        )
    assert len(proxy.events("accept")) == 1  # one SSH connection for the whole deploy
    turns = sum(int(e["turns"]) for e in closed)
    probes = sum(1 for line in rep.lines if line.startswith("$ +"))
    assert probes >= 3, rep.lines
    assert turns - probes <= MAX_TURNS_BESIDES_PROBES, (turns, probes, rep.lines)
    assert target.current() == rep.outcomes[-1].release
