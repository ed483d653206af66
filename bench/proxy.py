"""Front-door figures: nginx upstream switches under load (python -m bench.proxy).

On a sandbox VPS (its systemd runs nginx), a throwaway app gets the releasegate site config
(installed as root, as an operator would), and two tiny HTTP servers - the slots `blue` and
`green`, started over SSH as the deploy user on two loopback ports - answer
`{"release": "<slot>"}`. Under a steady load through nginx (a new connection per request at
`--rate` req/s, and a keep-alive client), the upstream is switched back and forth with
`deploy.proxy.switch`, driven through releasegate's own SSH Remote. Printed per switch: how
long the switch command took, and the time from the command's start until only the new slot
answers, for each client; failed requests are counted over the whole run.

`FrontDoor` is also the rig of tests/integration/test_proxy.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bench.load import Hit, KeepAliveLoad, Load, final_run_start, tail_is
from deploy import commands, proxy, sandbox
from deploy.model import Layout
from deploy.remote import SshRemote

# One line of node: answers every request with the slot's name (and its pid).
SLOT_JS = """\
const http = require("http");
const [port, release] = process.argv.slice(2);
http.createServer((req, res) => {
  const body = JSON.stringify({ release, pid: process.pid });
  res.writeHead(200, { "content-type": "application/json", "content-length": body.length });
  res.end(body);
}).listen(Number(port), "127.0.0.1");
"""


@dataclass
class FrontDoor:
    """One app behind the sandbox's nginx: its site, its upstream file and two slot servers."""

    vps: sandbox.SandboxInfo
    app: str
    public_port: int
    slots: dict[str, int]  # slot name -> loopback port
    remote: SshRemote
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return Layout(PurePosixPath(f"/srv/{self.app}"))

    @property
    def paths(self) -> proxy.ProxyPaths:
        return proxy.proxy_paths(self.layout, self.app)

    def ssh(
        self, command: str, *, user: str | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The plain ssh client, independent of releasegate's code (root: an operator)."""
        return subprocess.run(
            self.vps.ssh_argv(command, user=user),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def as_root(self, command: str, stdin: str | None = None) -> str:
        res = self.ssh(command, user="root", stdin=stdin)
        if res.returncode != 0:
            raise RuntimeError(f"as root on the sandbox: {command}: {res.stderr.strip()}")
        return res.stdout

    def run(self, cmd: commands.Cmd) -> None:
        self.remote.run(cmd)

    def start_slot(self, name: str) -> None:
        port = self.slots[name]
        res = self.ssh(
            # only node in the background, its output away from ssh's: ssh returns at once
            f"cd {self.layout.root} || exit 1; setsid node slot.js {port} {name}"
            f" </dev/null >slot-{name}.log 2>&1 & echo $!"
        )
        if res.returncode != 0 or not res.stdout.strip().isdigit():
            raise RuntimeError(f"could not start slot {name}: {res.stderr.strip()}")
        self.pids[name] = int(res.stdout.strip())
        if not _until(lambda: self.slot_answers(name), 15):
            raise RuntimeError(f"slot {name} does not answer on 127.0.0.1:{port}")

    def slot_answers(self, name: str) -> bool:
        res = self.ssh(f"curl -sf -m 2 http://127.0.0.1:{self.slots[name]}/")
        return res.returncode == 0 and f'"release":"{name}"' in res.stdout

    def kill_slot(self, name: str) -> None:
        pid = self.pids.pop(name)
        self.ssh(f"kill -KILL {pid}")

    def install(self, live: str) -> None:
        """What `releasegate setup` and an operator will do: deploy root, the first upstream
        file (deploy user), the site config (root), nginx reloaded (root)."""
        self.run(commands.prepare_layout(self.layout))
        self.run(commands.write_file(self.layout.root / "slot.js", SLOT_JS, label="slot.js"))
        for name in self.slots:
            self.start_slot(name)
        self.run(proxy.write_upstream(self.paths, proxy.Upstream(self.slots[live])))
        site = proxy.site_config(self.paths, public_port=self.public_port)
        self.as_root(f"cat > {self.paths.site}", stdin=site)
        self.as_root("nginx -t -q && systemctl reload nginx")
        if not _until(lambda: self.answer() == live, 15):
            raise RuntimeError(f"nginx does not pass :{self.public_port} to {live}")

    def reset(self, live: str) -> None:
        """Every slot running again and `live` alone in the upstream."""
        for name in self.slots:
            if name not in self.pids:
                self.start_slot(name)
        if self.upstream() != proxy.Upstream(self.slots[live]):
            report, _, _ = self.switch(proxy.Upstream(self.slots[live]))
            if not report.ok:
                raise RuntimeError(f"could not switch back to {live}: {report.detail}")

    def answer(self) -> str | None:
        from bench.load import fetch

        hit = fetch(self.vps.service_address, self.public_port, "/", 2.0)
        return hit.release if hit.ok else None

    def switch(
        self, upstream: proxy.Upstream, confirm_within: float = 5.0
    ) -> tuple[proxy.SwitchReport, float, float]:
        """(report, start, seconds) of one switch command."""
        start = time.monotonic()
        res = self.remote.run(
            proxy.switch(self.paths, upstream, confirm_within=confirm_within), check=False
        )
        took = time.monotonic() - start
        return proxy.parse_switch(res.exit_code, res.stdout, res.stderr), start, took

    def upstream(self) -> proxy.Upstream | None:
        return proxy.parse_upstream(self.remote.run(proxy.read_upstream(self.paths)).stdout)

    def traffic(self, offset: int) -> proxy.TrafficSample:
        return proxy.parse_access_log(
            self.remote.run(proxy.read_access_log(self.paths, offset)).stdout
        )

    def remove(self) -> None:
        for name in list(self.pids):
            self.kill_slot(name)
        with contextlib.suppress(RuntimeError):
            self.as_root(
                f"rm -f {self.paths.site} {self.paths.access_log}; "
                f"nginx -t -q && systemctl reload nginx; rm -rf {self.layout.root}"
            )


@contextlib.contextmanager
def front_door(
    vps: sandbox.SandboxInfo,
    *,
    public_port: int,
    slots: dict[str, int],
    live: str = "blue",
    app: str | None = None,
) -> Iterator[FrontDoor]:
    remote = SshRemote(
        address=vps.address,
        port=vps.port,
        user=vps.user,
        known_hosts=(vps.known_hosts,),
        identity_file=vps.identity_file,
    )
    door = FrontDoor(vps, app or f"fd-{uuid.uuid4().hex[:6]}", public_port, slots, remote)
    try:
        door.install(live)
        yield door
    finally:
        door.remove()
        remote.close()


@dataclass(frozen=True)
class SwitchFigure:
    to: str
    command_s: float  # the switch command, over SSH
    only_new_s: dict[str, float]  # per client: command start -> only `to` answers


def only_new_after(hits: Sequence[Hit], release: str, start: float) -> float | None:
    run = final_run_start([h for h in hits if h.sent >= start - 1.0], release)
    return None if run is None else max(0.0, run.sent - start)


def switch_and_settle(
    door: FrontDoor,
    upstream: proxy.Upstream,
    to: str,
    clients: dict[str, Load | KeepAliveLoad],
    settle: int = 10,
) -> SwitchFigure:
    """Switch, then wait until every client's last `settle` answers came from `to`."""
    report, start, took = door.switch(upstream)
    if not report.ok:
        raise RuntimeError(f"switch to {to} failed ({report.reason}): {report.detail}")
    for name, client in clients.items():
        if not client.wait_for(tail_is(to, settle), deadline=15):
            raise RuntimeError(f"{name}: {to} did not take over after the switch")
    only_new: dict[str, float] = {}
    for name, client in clients.items():
        seconds = only_new_after(client.hits(), to, start)
        if seconds is None:
            raise RuntimeError(f"{name}: no unbroken run of {to} answers after the switch")
        only_new[name] = seconds
    return SwitchFigure(to, took, only_new)


def failed(hits: Sequence[Hit]) -> list[Hit]:
    return [h for h in hits if not h.ok]


def _until(check: object, deadline: float) -> bool:
    assert callable(check)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------- CLI


def summary(figures: Sequence[SwitchFigure]) -> list[str]:
    clients = list(figures[0].only_new_s)
    head = f"{'switch':<12}{'command':>10}" + "".join(f"{c + ' only-new':>22}" for c in clients)
    lines = [head]
    for n, fig in enumerate(figures, 1):
        lines.append(
            f"{f'{n:>2} -> {fig.to}':<12}{fig.command_s * 1000:>8.0f}ms"
            + "".join(f"{fig.only_new_s[c] * 1000:>20.0f}ms" for c in clients)
        )
    lines.append(
        f"{'median':<12}{statistics.median(f.command_s for f in figures) * 1000:>8.0f}ms"
        + "".join(
            f"{statistics.median(f.only_new_s[c] for f in figures) * 1000:>20.0f}ms"
            for c in clients
        )
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n")[0])
    p.add_argument("--switches", type=int, default=10)
    p.add_argument("--rate", type=float, default=50.0, help="new-connection requests per second")
    p.add_argument(
        "--sandbox",
        default=os.environ.get("RELEASEGATE_BENCH_SANDBOX", "rgbench:16"),
        help="NAME:INDEX of the sandbox VPS to boot (default rgbench:16)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.switches <= 100 or not 1 <= args.rate <= 200:
        p.error("--switches must be 1..100 and --rate 1..200")
    if os.geteuid() != 0:
        print("bench.proxy: needs root (it boots the sandbox VPS)", file=sys.stderr)
        return 2
    name, _, index = args.sandbox.partition(":")
    with tempfile.TemporaryDirectory(prefix="releasegate-bench-proxy-") as tmp:
        spec = sandbox.SandboxSpec(name=name, index=int(index), state_root=Path(tmp) / "state")
        vps = sandbox.up(spec)
        try:
            slots = {"blue": 4601, "green": 4602}
            with front_door(vps, public_port=8601, slots=slots) as door:
                per_conn = Load(vps.service_address, door.public_port, "/", rate=args.rate)
                keepalive = KeepAliveLoad(vps.service_address, door.public_port, "/", rate=20)
                clients: dict[str, Load | KeepAliveLoad] = {
                    "new-conn": per_conn,
                    "keep-alive": keepalive,
                }
                figures: list[SwitchFigure] = []
                with per_conn, keepalive:
                    for n in range(args.switches):
                        to, other = ("green", "blue") if n % 2 == 0 else ("blue", "green")
                        up = proxy.Upstream(slots[to], slots[other])
                        figures.append(switch_and_settle(door, up, to, clients))
                print("\n".join(summary(figures)))
                print(
                    f"requests: new-conn {len(per_conn.hits())} ({len(failed(per_conn.hits()))} "
                    f"failed), keep-alive {len(keepalive.hits())} "
                    f"({len(failed(keepalive.hits()))} failed, {keepalive.retried} retried on "
                    f"a new connection, {keepalive.connections} connections)"
                )
        except RuntimeError as exc:
            print(f"bench.proxy: {exc}", file=sys.stderr)
            return 1
        finally:
            sandbox.down(spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
