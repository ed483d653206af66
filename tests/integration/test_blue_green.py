"""Blue/green on the sandbox VPS: its systemd runs nginx, root installs the site config
`releasegate setup` shows (as an operator would), PM2 runs the slots. Every deploy runs under a
steady load through the front door — a new connection per request at 50 req/s and a keep-alive
client at 20 req/s, both asking /version, so each answer names the release that gave it — and
what a user cares about is asserted: how many requests failed, and which release serves.

One module-scoped app carries its state from test to test; each test first makes sure a good
release is live (`App.good`), so none depends on another's order."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from bench.load import Hit, KeepAliveLoad, Load, tail_is
from deploy import demo, operations, proxy
from deploy.model import Layout
from deploy.operations import Options
from deploy.report import RecordingReporter
from deploy.sandbox import SandboxInfo
from tests.conftest import wait_until
from tests.integration.conftest import Target

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = itertools.count(8760)
SLOTS = itertools.count(4900, 2)
HEALTH = {"deadline": 8, "interval": 0.3, "successes": 3, "stable_for": 1, "probe_timeout": 1}
STRATEGY = {"bake": {"seconds": 2}, "retire": "after-bake", "on_failure": "rollback"}


class Clocked(RecordingReporter):
    """Also keeps when each command line (probe, bake event) was reported."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[tuple[float, str]] = []

    def command(self, display: str) -> None:
        self.at.append((time.monotonic(), display))
        super().command(display)


@dataclass
class Traffic:
    """The two clients' answers during one operation."""

    hits: list[Hit] = field(default_factory=list)
    kept: list[Hit] = field(default_factory=list)
    retried: int = 0

    @property
    def failed(self) -> list[Hit]:
        return [h for h in self.hits + self.kept if not h.ok]

    def releases(self) -> set[str | None]:
        return {h.release for h in self.hits + self.kept}

    def line(self) -> str:
        return (
            f"{len(self.hits)} new-connection + {len(self.kept)} keep-alive requests, "
            f"{len(self.failed)} failed ({self.retried} keep-alive reconnects)"
        )


@dataclass
class App:
    t: Target
    public_port: int
    slots: dict[str, int]
    pm2: str = "pm2"

    @property
    def paths(self) -> proxy.ProxyPaths:
        return proxy.proxy_paths(Layout(PurePosixPath(self.t.root)), self.t.app)

    def as_root(self, command: str, stdin: str | None = None) -> str:
        res = subprocess.run(
            self.t.vps.ssh_argv(command, user="root"),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, f"as root: {command}: {res.stderr}"
        return res.stdout

    def configure(self, **sections: dict[str, Any]) -> None:
        for name, values in sections.items():
            self.t.data.setdefault(name, {}).update(values)
        self.t.write()

    def deploy(self, fault: str = "") -> tuple[int, Clocked]:
        """A new commit (so a new release) each time."""
        count = self.t.repo / "deploys.txt"
        count.write_text(str(int(count.read_text()) + 1 if count.exists() else 1))
        demo.commit_fault(self.t.repo, fault)
        rep = Clocked()
        return operations.run_deploy("test", Options(inventories=self.t.inv_dir), reporter=rep), rep

    def rollback(self, to: str | None = None) -> tuple[int, Clocked]:
        rep = Clocked()
        code = operations.run_rollback(
            "test", Options(inventories=self.t.inv_dir), to=to, reporter=rep
        )
        return code, rep

    def upstream(self) -> proxy.Upstream | None:
        text = self.t.ssh(f"cat {self.paths.upstream} 2>/dev/null || echo @@missing").stdout
        return proxy.parse_upstream(text)

    def slot_links(self) -> dict[str, str]:
        out = self.t.ssh(
            f"cd {self.t.root}/.releasegate/slots 2>/dev/null && for s in blue green; do "
            f'[ -L $s ] && echo "$s $(readlink $s)"; done; true'
        ).stdout
        return {line.split()[0]: line.split()[1].rsplit("/", 1)[-1] for line in out.splitlines()}

    def slot_apps(self) -> dict[str, list[dict[str, Any]]]:
        procs = json.loads(self.t.ssh(f"{self.pm2} jlist").stdout)
        out: dict[str, list[dict[str, Any]]] = {}
        for p in procs:
            if p["name"].startswith(f"{self.t.app}-"):
                out.setdefault(p["name"].rsplit("-", 1)[1], []).append(p)
        return out

    def live(self) -> str | None:
        """The release every answer through the front door comes from, else None."""
        from bench.load import fetch

        seen = {
            fetch(self.t.vps.service_address, self.public_port, "/version", 3.0) for _ in range(6)
        }
        names = {h.release if h.ok else None for h in seen}
        return names.pop() if len(names) == 1 else None

    def good(self) -> str:
        """A good release is live, alone in the upstream, verified; deploy one if not."""
        current = self.t.current()
        up = self.upstream()
        links = self.slot_links()
        consistent = (
            current is not None
            and self.t.state_of(current) == "good"
            and up is not None
            and up.backup is None
            and links.get(_slot_at(self.slots, up.live) or "") == current
            and self.live() == current
        )
        if consistent:
            assert current is not None
            return current
        code, rep = self.deploy()
        assert code == 0, "\n".join(rep.lines)
        rid = rep.outcomes[-1].release
        assert rid is not None and self.live() == rid
        return rid

    @contextlib.contextmanager
    def traffic(self) -> Iterator[Traffic]:
        address = self.t.vps.service_address
        per_conn = Load(address, self.public_port, "/version", rate=50, max_seconds=240, timeout=5)
        keep = KeepAliveLoad(
            address, self.public_port, "/version", rate=20, max_seconds=240, timeout=5
        )
        seen = Traffic()
        with per_conn, keep:
            assert per_conn.wait_for(lambda hits: len(hits) >= 10, deadline=10)
            yield seen
            # a few more answers after the operation: who serves now
            n = len(per_conn.hits())
            assert per_conn.wait_for(lambda hits: len(hits) >= n + 10, deadline=10)
        seen.hits, seen.kept, seen.retried = per_conn.hits(), keep.hits(), keep.retried


def _slot_at(slots: dict[str, int], port: int) -> str | None:
    return next((name for name, p in slots.items() if p == port), None)


@contextlib.contextmanager
def _bg_app(vps: SandboxInfo, tmp: Path, pm2: str = "pm2") -> Iterator[App]:
    """A blue/green app on the sandbox, its site installed by root; gone afterwards."""
    tag = uuid.uuid4().hex[:6]
    repo = demo.make_app_repo(tmp)
    blue = next(SLOTS)
    slots = {"blue": blue, "green": blue + 1}
    public = next(PUBLIC)
    data = {
        "hosts": [
            {
                "name": "sandbox",
                "address": vps.address,
                "port": vps.port,
                "user": vps.user,
                "root": f"/srv/bg-{tag}",
                "identity_file": str(vps.identity_file),
            }
        ],
        "ssh": {"known_hosts": str(vps.known_hosts)},
        "app": {
            "name": f"bg-{tag}",
            "repo": str(repo),
            "install": "npm ci --omit=dev --offline --no-audit --no-fund",
        },
        "process": {"command": "server.js", "port": 4899, "instances": 2, "pm2": pm2},
        "health": dict(HEALTH),
        "smoke": {"packs": [str(repo / "smoke.yml")]},
        "strategy": {
            "kind": "blue-green",
            "slots": slots,
            "public_port": public,
            **json.loads(json.dumps(STRATEGY)),
        },
    }
    t = Target(vps=vps, data=data, dir=tmp, repo=repo)
    t.write()
    app = App(t, public, slots, pm2)
    rep = RecordingReporter()
    assert operations.run_setup("test", Options(inventories=t.inv_dir), reporter=rep) == 0
    assert "wrote" in rep.outcomes[-1].message, "\n".join(rep.lines)
    # what setup showed, installed by root as an operator would
    app.as_root(f"cat > {app.paths.site}", stdin=proxy.site_config(app.paths, public_port=public))
    app.as_root("nginx -t -q && systemctl reload nginx")
    try:
        yield app
    finally:
        t.ssh(
            f"{pm2} delete {t.app}-blue {t.app}-green >/dev/null 2>&1; {pm2} save --force",
            check=False,
        )
        with contextlib.suppress(AssertionError):
            app.as_root(
                f"rm -f {app.paths.site} {app.paths.access_log}; nginx -t -q && "
                f"systemctl reload nginx; rm -rf {t.root}"
            )


@pytest.fixture(scope="module")
def bg(vps: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with _bg_app(vps, tmp_path_factory.mktemp("bg")) as app:
        yield app


@pytest.fixture
def app(bg: App) -> App:
    """The module's app with this file's default settings, whatever a test changed."""
    bg.configure(health=dict(HEALTH), strategy=json.loads(json.dumps(STRATEGY)))
    bg.configure(process={"instances": 2})
    return bg


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


# ---------------------------------------------------------------------------- good deploys


@pytest.mark.parametrize("instances", [2, 1], ids=["cluster", "fork"])
def test_a_good_deploy_fails_no_request(
    app: App, instances: int, capsys: pytest.CaptureFixture[str]
):
    previous = app.good()
    app.configure(process={"instances": instances})
    with app.traffic() as seen:
        code, rep = app.deploy()
    assert code == 0, "\n".join(rep.lines)
    new = rep.outcomes[-1].release
    assert new is not None and new != previous
    assert seen.failed == [], seen.failed[:5]
    assert seen.releases() == {previous, new}
    assert tail_is(new, 10)(seen.hits) and app.live() == new
    # the new slot runs the release directory itself, in the mode configured; the old one is gone
    up = app.upstream()
    assert up is not None and up.backup is None
    slot = _slot_at(app.slots, up.live)
    assert app.slot_links() == {slot: new}
    procs = app.slot_apps()
    assert set(procs) == {slot} and len(procs[str(slot)]) == instances
    mode = "cluster_mode" if instances > 1 else "fork_mode"
    assert {p["pm2_env"]["exec_mode"] for p in procs[str(slot)]} == {mode}
    cwds = app.t.ssh(" ; ".join(f"readlink /proc/{p['pid']}/cwd" for p in procs[str(slot)])).stdout
    assert set(cwds.split()) == {f"{app.t.root}/releases/{new}"}
    assert app.t.current() == new and app.t.state_of(new) == "good"
    report(capsys, f"good deploy ({'cluster' if instances > 1 else 'fork'}): {seen.line()}")


# ---------------------------------------------------------------------- rejected before traffic


@pytest.mark.parametrize("fault", ["boot_crash", "ready_503", "ready_hang", "wrong_contract"])
def test_a_bad_release_is_rejected_before_it_takes_traffic(
    app: App, fault: str, capsys: pytest.CaptureFixture[str]
):
    good = app.good()
    with app.traffic() as seen:
        code, rep = app.deploy(fault)
    out = rep.outcomes[-1]
    assert code == 3 and out.result == "rejected", "\n".join(rep.lines)
    assert seen.failed == [], seen.failed[:5]
    assert seen.releases() == {good}  # the bad release never answered a user
    assert app.live() == good and app.t.current() == good
    assert app.t.state_of(str(out.release)) == "bad"
    up = app.upstream()
    assert (
        up is not None
        and up.backup is None
        and app.slot_links() == {_slot_at(app.slots, up.live): good}
    )
    assert set(app.slot_apps()) == {_slot_at(app.slots, up.live)}  # its slot was stopped
    assert "verified" in out.message
    report(capsys, f"{fault}: rejected before traffic; {seen.line()}")


# ---------------------------------------------------------------------------- after the switch


@pytest.mark.parametrize("fault", ["crash_after:7", "errors_after:7"])
def test_a_release_that_goes_bad_after_the_switch_is_caught_by_the_bake(
    app: App, fault: str, capsys: pytest.CaptureFixture[str]
):
    """Ready and stable through its gate, then 7 s after it started every instance exits
    (crash_after: nginx passes each request to the backup, PM2 restarts it) or it answers
    readiness 503 and its API 500 (errors_after). The bake catches it and switches back.

    crash_after runs in fork mode here: in PM2 cluster mode under Node's default round-robin,
    a worker that dies at the instant the daemon hands it a connection leaves that connection
    open in the daemon, unanswered (once in about a dozen runs); nginx then waits
    proxy_read_timeout before it retries on the backup. The cluster variant, under a daemon
    with NODE_CLUSTER_SCHED_POLICY=none, is test_a_cluster_release_that_crashes_… below
    (docs/blue-green.md, "PM2 cluster mode and a release that crashes")."""
    good = app.good()
    app.configure(strategy={"bake": {"seconds": 15}})
    if fault.startswith("crash_after"):
        app.configure(process={"instances": 1})
    with app.traffic() as seen:
        code, rep = app.deploy(fault)
    out = rep.outcomes[-1]
    assert code == 3 and out.result == "rolled-back", "\n".join(rep.lines)
    assert "bake gate failed" in out.message
    if seen.failed and os.environ.get("BG_TRACE"):
        t0 = seen.failed[0].sent
        report(capsys, "\n".join(f"{(at - t0) * 1000:7.0f} ms {line}" for at, line in rep.at))
    assert seen.failed == [], seen.failed[:5]
    assert app.live() == good and app.t.current() == good
    assert app.t.state_of(str(out.release)) == "bad"
    assert len(app.slot_apps()) == 1  # its slot was stopped
    decided = next(at for at, line in rep.at if "bake  FAIL" in line)
    # the switch back ends before the first probe of the front door that follows it
    switched = next(at for at, line in rep.at if at > decided and line.startswith("+"))
    if os.environ.get("BG_TRACE"):
        report(
            capsys,
            "\n".join(
                f"{(at - decided) * 1000:7.0f} ms {line}"
                for at, line in rep.at
                if at > decided - 0.5
            )[:3000],
        )
    late = [h for h in seen.hits if h.sent >= decided and h.release != good]
    only_old = (max(h.sent for h in late) - decided) if late else 0.0
    report(
        capsys,
        f"{fault}: reverted during the bake; revert decision -> switch back done "
        f"{(switched - decided) * 1000:.0f} ms, -> last answer of the new release "
        f"{only_old * 1000:.0f} ms (new connections, 20 ms apart); {seen.line()}",
    )


# PM2 with a daemon of its own whose cluster master leaves connections to the kernel
# (docs/blue-green.md, "PM2 cluster mode and a release that crashes").
PM2_SCHED_NONE = """#!/bin/sh
export NODE_CLUSTER_SCHED_POLICY=none PM2_HOME="$HOME/.pm2-sched-none"
exec pm2 "$@"
"""


@pytest.fixture(scope="module")
def bg_sched_none(vps: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    wrapper = f"/home/{vps.user}/bin/pm2-sched-none"
    install = subprocess.run(
        [*vps.ssh_argv(f"mkdir -p ~/bin && cat > {wrapper} && chmod 0755 {wrapper}")],
        input=PM2_SCHED_NONE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert install.returncode == 0, install.stderr
    try:
        with _bg_app(vps, tmp_path_factory.mktemp("bgnone"), pm2=wrapper) as app:
            yield app
    finally:
        subprocess.run([*vps.ssh_argv(f"{wrapper} kill")], capture_output=True, timeout=60)


def test_a_cluster_release_that_crashes_after_the_switch_fails_no_request_under_sched_none(
    bg_sched_none: App, capsys: pytest.CaptureFixture[str]
):
    """The cluster-mode variant of crash_after:7, with the PM2 daemon's cluster master set to
    leave connections to the kernel (NODE_CLUSTER_SCHED_POLICY=none): a worker that dies
    takes its connections with it (reset: nginx retries them on the backup) instead of
    leaving one open, unanswered, in the daemon. Every instance dies 7 s after it started."""
    app = bg_sched_none
    good = app.good()
    environ = "/proc/$(cat ~/.pm2-sched-none/pm2.pid)/environ"
    daemon = app.t.ssh(f"tr '\\0' '\\n' < {environ} | grep -cx NODE_CLUSTER_SCHED_POLICY=none")
    assert daemon.stdout.strip() == "1", "the test's PM2 daemon does not run with SCHED_NONE"
    app.configure(strategy={"bake": {"seconds": 15}})
    with app.traffic() as seen:
        code, rep = app.deploy("crash_after:7")
    out = rep.outcomes[-1]
    assert code == 3 and out.result == "rolled-back", "\n".join(rep.lines)
    assert "bake gate failed" in out.message
    assert seen.failed == [], seen.failed[:5]
    assert app.live() == good and app.t.current() == good
    procs = app.slot_apps()
    assert len(procs) == 1 and len(next(iter(procs.values()))) == 2  # cluster, its slot stopped
    report(capsys, f"crash_after:7 (cluster, SCHED_NONE): reverted by the bake; {seen.line()}")


def test_the_apps_own_counter_reverts_a_release_the_access_log_signal_does_not_judge(
    app: App, capsys: pytest.CaptureFixture[str]
):
    """flaky_after:7 answers 500 to one GET /api/items in three once it has run 7 s (after
    the switch), readiness staying 200. The access log's 5xx judgement is off
    (max_error_ratio: 1); the app's own /metrics, read on its slot's port, reverts it."""
    good = app.good()
    app.configure(
        process={"instances": 1},  # one process per slot: the counter is the slot's count
        strategy={
            "bake": {
                "seconds": 15,
                "max_error_ratio": 1,
                # the counter counts every request (/version traffic and probes too), so the
                # API's one-in-three 500s are a few percent of it: judge at 2 %
                "metrics": {"max_error_ratio": 0.02, "min_requests": 20},
            }
        },
    )
    address = app.t.vps.service_address
    api = Load(address, app.public_port, "/api/items", rate=20, max_seconds=240, timeout=5)
    with app.traffic() as seen, api:
        code, rep = app.deploy("flaky_after:7")
    out = rep.outcomes[-1]
    assert code == 3 and out.result == "rolled-back", "\n".join(rep.lines)
    assert re.search(
        r"bake gate failed: metrics: 5xx ratio 0\.\d+ > 0\.02 over \d+ requests", out.message
    ), out.message
    assert app.live() == good and app.t.current() == good
    assert app.t.state_of(str(out.release)) == "bad"
    assert seen.failed == [], seen.failed[:5]  # /version never failed
    # users of the API saw the 500s until the revert, and only 200s once the old slot served
    errors = [h for h in api.hits() if h.status == 500]
    assert errors, "the release never answered 500: the test proved nothing"
    assert {h.status for h in api.hits() if h.sent > errors[-1].done} <= {200}
    assert len(app.slot_apps()) == 1  # its slot was stopped
    report(
        capsys,
        f"flaky_after:7: reverted by the metrics signal; {len(errors)} API 500s; {seen.line()}",
    )


def test_nginx_refusing_the_switch_means_no_switch(app: App, capsys: pytest.CaptureFixture[str]):
    good = app.good()
    app.configure(health={"stable_for": 3, "deadline": 12})
    broken = f"/etc/nginx/conf.d/zz-broken-{app.t.app}.conf"
    journal = f"{app.t.root}/.releasegate/journal.jsonl"
    new_commit(app)
    try:
        with app.traffic() as seen:
            run = cli(app, "deploy", "test")
            # once the new release runs in its slot (its gate takes 3 s), nginx's config breaks
            wait_until(
                lambda: '"started"' in app.t.ssh(f"tail -n 3 {journal}").stdout,
                60,
                "the slot start",
            )
            app.as_root(f"echo 'server {{ listen nonsense; }}' > {broken}")
            output, _ = run.communicate(timeout=120)
        assert run.returncode == 5, output
    finally:
        app.as_root(f"rm -f {broken}")
    assert "nginx did not switch" in output and "nothing live changed" in output, output
    assert seen.failed == [] and seen.releases() == {good}
    assert app.live() == good and app.t.current() == good
    up = app.upstream()
    assert (
        up is not None
        and up.backup is None
        and app.slot_links() == {_slot_at(app.slots, up.live): good}
    )
    assert len(app.slot_apps()) == 1
    rid = next(e["release"] for e in reversed(app.t.journal()) if e["op"] == "deploy")
    assert app.t.state_of(rid) == "ready"  # not its fault: not bad
    report(capsys, f"nginx -t failing at the switch: no switch; {seen.line()}")


def new_commit(app: App) -> None:
    count = app.t.repo / "deploys.txt"
    count.write_text(str(int(count.read_text()) + 1 if count.exists() else 1))
    demo.commit_fault(app.t.repo, "")


def test_a_broken_nginx_config_stops_the_deploy_at_preflight(app: App):
    good = app.good()
    broken = f"/etc/nginx/conf.d/zz-broken-{app.t.app}.conf"
    root = app.t.root
    view = (
        f"cat {root}/.releasegate/journal.jsonl; ls -A {root}/releases; readlink {root}/current; "
        f"cat {app.paths.upstream}"
    )
    before = app.t.ssh(view).stdout
    app.as_root(f"echo 'server {{ listen nonsense; }}' > {broken}")
    try:
        code, rep = app.deploy()
    finally:
        app.as_root(f"rm -f {broken}")
    assert code == 5, "\n".join(rep.lines)
    assert any("nginx config" in line and "nonsense" in line for line in rep.lines), "\n".join(
        rep.lines
    )
    assert app.t.ssh(view).stdout == before and not app.t.lock_exists()
    assert app.live() == good


# ---------------------------------------------------------------------------- killed, rollback


def cli(app: App, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "--plain", "--inventories", str(app.t.inv_dir), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )


def test_a_run_killed_during_the_bake_is_resolved_by_the_next_run(
    app: App, capsys: pytest.CaptureFixture[str]
):
    good = app.good()
    app.configure(strategy={"bake": {"seconds": 60}})
    new_commit(app)
    with app.traffic() as seen:
        run = cli(app, "deploy", "test")
        up = wait_until(
            lambda: (u := app.upstream()) is not None and u.backup is not None and u,
            90,
            "the switch",
        )
        killed = app.t.current()
        run.send_signal(signal.SIGKILL)  # no cleanup: the lock, the backup and `current` stay
        run.wait(30)
        assert killed != good and app.t.state_of(str(killed)) == "active-unverified"
        assert app.upstream() == up and len(app.slot_apps()) == 2
        app.configure(strategy={"bake": {"seconds": 2}})
        code, rep = app.deploy()
    assert code == 0, "\n".join(rep.lines)
    newest = rep.outcomes[-1].release
    journal = app.t.journal()
    # before anything else, the killed run's release was watched again and promoted
    verdict = next(
        i for i, e in enumerate(journal) if e["release"] == killed and e["state"] == "good"
    )
    shipped = next(i for i, e in enumerate(journal) if e["release"] == newest)
    assert verdict < shipped
    assert seen.failed == [], seen.failed[:5]
    assert app.live() == newest and app.t.current() == newest
    up = app.upstream()
    assert up is not None and up.backup is None and len(app.slot_apps()) == 1
    assert not app.t.lock_exists()
    report(capsys, f"SIGKILL mid-bake, resolved by the next deploy: {seen.line()}")


def test_a_manual_rollback_to_a_warm_release_is_a_switch(
    app: App, capsys: pytest.CaptureFixture[str]
):
    app.configure(strategy={"retire": "keep-warm"})
    first = app.good()
    code, rep = app.deploy()
    assert code == 0, "\n".join(rep.lines)
    second = rep.outcomes[-1].release
    warm_slot = next(s for s, rid in app.slot_links().items() if rid == first)
    pids = sorted(p["pid"] for p in app.slot_apps()[warm_slot])
    # status knows the slots: which is live, which is warm
    shown = status_json(app)
    roles = {s["slot"]: (s["role"], s["release"]) for s in shown["slots"]}
    assert roles[warm_slot] == ("warm", first)
    with app.traffic() as seen:
        started = time.monotonic()
        code, rep = app.rollback()
        took = time.monotonic() - started
    assert code == 0 and rep.outcomes[-1].result == "rolled-back", "\n".join(rep.lines)
    assert seen.failed == [], seen.failed[:5]
    assert app.live() == first and app.t.current() == first
    assert sorted(p["pid"] for p in app.slot_apps()[warm_slot]) == pids  # nothing restarted
    assert app.t.state_of(str(second)) == "rolled-back"
    from bench.proxy import only_new_after

    only_prev = only_new_after(seen.hits, first, started)
    if os.environ.get("BG_TRACE"):
        report(capsys, "\n".join(f"{(at - started) * 1000:7.0f} ms {line}" for at, line in rep.at))
    report(
        capsys,
        f"keep-warm manual rollback: command start -> only the previous release answering "
        f"{(only_prev or 0) * 1000:.0f} ms (new connections); the command took {took:.1f}s "
        f"with its {2}s bake; {seen.line()}",
    )


JSON_CLI = (sys.executable, "-m", "deploy.cli", "--json", "--inventories")


def status_json(app: App) -> dict[str, Any]:
    res = subprocess.run(
        [*JSON_CLI, str(app.t.inv_dir), "status", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return dict(next(json.loads(x) for x in res.stdout.splitlines() if '"event": "status"' in x))


def test_pause_keeps_a_rejected_release_running_without_traffic_until_the_next_deploy(
    app: App, capsys: pytest.CaptureFixture[str]
):
    good = app.good()
    app.configure(strategy={"on_failure": "pause"})
    with app.traffic() as seen:
        code, rep = app.deploy("ready_503")
        out = rep.outcomes[-1]
        assert code == 3 and out.result == "rejected", "\n".join(rep.lines)
        assert "paused" in out.message
        paused_slot = next(s for s, rid in app.slot_links().items() if rid == out.release)
        procs = app.slot_apps()[paused_slot]
        assert procs and {p["pm2_env"]["status"] for p in procs} == {"online"}  # still runs
        roles = {s["slot"]: (s["role"], s["release"]) for s in status_json(app)["slots"]}
        assert roles[paused_slot] == ("paused", out.release)
        assert app.live() == good  # without traffic
        journal = [e for e in app.t.journal() if e["op"] == "slot" and e["release"] == out.release]
        assert journal[-1]["detail"]["role"] == "paused"
        code, rep = app.deploy()
    assert code == 0, "\n".join(rep.lines)
    assert out.release not in app.slot_links().values()  # the next deploy cleared it
    assert seen.failed == [] and seen.releases() == {good, rep.outcomes[-1].release}
    report(
        capsys, f"pause: rejected, kept without traffic, cleared by the next deploy; {seen.line()}"
    )
