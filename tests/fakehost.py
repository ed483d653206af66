"""A fake host for unit tests of the flow: a Remote that interprets our commands by name
against an in-memory host (releases, current, lock, journal, one PM2 app), plus an HTTP
handler for httpx.MockTransport that answers like the app the fake host is running."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import httpx

from deploy.commands import CHECKSUM_MISMATCH, LEASE_GRACE, LOCK_HELD, Cmd, lock_instance
from deploy.errors import CommandFailure, RemoteCommandError
from deploy.model import SMOKE_BUNDLE
from deploy.remote import Result


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.wall = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.wall += timedelta(seconds=seconds)

    def now(self) -> datetime:
        self.wall += timedelta(milliseconds=1)
        return self.wall


@dataclass
class SlotProc:
    release: str
    pids: tuple[int, ...]
    started_at: float
    answered: dict[int, int] = field(default_factory=dict)  # status -> count (its /metrics)

    def metrics(self) -> str:
        lines = ["# TYPE http_requests_total counter"]
        lines += [
            f'http_requests_total{{route="/api/items",status="{status}"}} {n}'
            for status, n in sorted(self.answered.items())
        ]
        return "\n".join(lines) + "\n"


def app_status(fault: str, path: str) -> int:
    if path == "/health/ready" and fault == "ready_503":
        return 503
    if path.startswith("/api") and fault == "errors_5xx":
        return 500
    return 200


@dataclass
class FakeHost:
    root: str = "/srv/app"
    releases: set[str] = field(default_factory=set)
    partials: set[str] = field(default_factory=set)
    current: str | None = None
    lock: tuple[str, str] | None = None  # (token, owner json)
    log_noise: str = ""  # a line the running app logged (after its fault line)
    lease: int | None = None  # seconds; None: no lease (a manual lock, held until unlocked)
    lease_renewed: float = 0.0  # fake clock time of the last renewal
    journal: list[str] = field(default_factory=list)
    running: str | None = None  # release the app processes run
    pids: tuple[int, ...] = ()
    restarts: int = 0
    faults: dict[str, str] = field(default_factory=dict)  # release id -> fault
    extracted_faults: dict[str, str] = field(default_factory=dict)
    next_pid: int = 100
    stale_cwd: bool = False  # simulate PM2 keeping the old code after a reload
    # The deploy root is a symlink to this directory: /proc/<pid>/cwd shows paths under it.
    real_root: str | None = None
    manifests: dict[str, dict[str, object]] = field(default_factory=dict)  # id -> .release.json
    activated_at: float = 0.0  # fake-clock time of the last (re)start of the app
    # what each release carries (keyed by release id, partial or complete)
    bundles: dict[str, str] = field(default_factory=dict)  # .releasegate/smoke.json
    recorded: dict[str, str | None] = field(default_factory=dict)  # manifest's smoke_sha256
    envs: dict[str, str] = field(default_factory=dict)  # how its env snapshot was made
    upload_files: set[str] = field(default_factory=set)  # files in .releasegate/uploads
    activation_stdout: str = ""  # what `pm2.activate` prints (its env notes)
    # blue/green: the slots (PM2 apps app-blue/app-green), nginx's upstream and access log
    slot_links: dict[str, str] = field(default_factory=dict)  # slot -> release id
    slot_ports: dict[str, int] = field(default_factory=lambda: {"blue": 3001, "green": 3002})
    slot_procs: dict[str, SlotProc] = field(default_factory=dict)  # slot -> what runs there
    public_port: int = 8080
    upstream: tuple[int, int | None] | None = None  # (live port, backup port)
    access_log: str = ""  # nginx's JSON lines for this app
    nginx_refuses: bool = False  # `nginx -t` fails at the next switch
    user_requests: int = 0  # requests real users send through the front door per log read
    user_path: str = "/api/items"
    # the database of deploy/migrations.py: its schema version, and whether it answers
    schema: str = "1"
    db_up: bool = True
    migrated: list[str] = field(default_factory=list)  # release dirs migrations ran in
    # what `port.holders` prints: the processes listening on the app's port (tab-separated)
    port_holders: str = ""

    def fault_of_running(self) -> str:
        return self.faults.get(self.running or "", "")

    def slot_at(self, port: int | None) -> str | None:
        return next((name for name, p in self.slot_ports.items() if p == port), None)

    def slot_pids(self, slot: str, now: float) -> tuple[tuple[int, ...], int, str]:
        """(pids, restarts, status) of a slot's processes at fake-clock time `now`."""
        proc = self.slot_procs.get(slot)
        if proc is None:
            return (), 0, "missing"
        fault = self.faults.get(proc.release, "")
        if fault == "boot_crash":
            return tuple(0 for _ in proc.pids), 3, "errored"
        crashes = 0
        if fault.startswith("crash_after:"):
            crashes = int((now - proc.started_at) // float(fault.split(":")[1]))
        return tuple(p + 1000 * crashes for p in proc.pids), crashes, "online"

    def serving(self, port: int, now: float) -> str | None:
        """The release that answers on a slot port (None: refused)."""
        slot = self.slot_at(port)
        proc = self.slot_procs.get(slot or "")
        if proc is None or self.faults.get(proc.release) == "boot_crash":
            return None
        fault = self.faults.get(proc.release, "")
        if fault.startswith("crash_after:") and now - proc.started_at >= float(fault.split(":")[1]):
            return None  # it died and nginx meets a refused connection
        return proc.release

    def front_door(self, path: str, now: float) -> tuple[str | None, int]:
        """Route one request like nginx: the live slot, the backup when the live one does not
        answer; log it. (release that answered, status)."""
        assert self.upstream is not None, "no upstream file: nginx has no site for this app"
        live, backup = self.upstream
        tried: list[tuple[int, str, str]] = []
        answered: str | None = None
        status = 502
        for port in (live, backup):
            if port is None:
                continue
            rid = self.serving(port, now)
            if rid is None:
                tried.append((port, "502", "-"))
                continue
            status = app_status(self.faults.get(rid, ""), path)
            proc = self.slot_procs[self.slot_at(port) or ""]
            proc.answered[status] = proc.answered.get(status, 0) + 1
            tried.append((port, str(status), "0.001"))
            answered = rid
            break
        entry = {
            "status": status,
            "upstream_addr": ", ".join(f"127.0.0.1:{p}" for p, _, _ in tried),
            "upstream_status": ", ".join(c for _, c, _ in tried),
            "upstream_header_time": ", ".join(t for _, _, t in tried),
        }
        self.access_log += json.dumps(entry) + "\n"
        return answered, status

    def hold(self, token: str, owner: dict[str, object], lease: int | None, now: float) -> None:
        """Plant a lock as another run would have taken it."""
        self.lock = (token, json.dumps(owner))
        self.lease, self.lease_renewed = lease, now


class Hung(BaseException):
    """A command that never answers was run without a timeout: a real run would wait forever.
    A BaseException, so nothing in the flow can swallow it (as nothing could end a real hang)."""


class FakeRemote:
    host_label = "deploy@fake:22"

    def __init__(self, host: FakeHost, clock: FakeClock) -> None:
        self.host = host
        self.clock = clock
        self.log: list[Cmd] = []
        self.fail: dict[str, int] = {}  # command name -> exit code
        self.interrupt_on: dict[str, type[BaseException]] = {}
        self.uploads: list[PurePosixPath] = []
        self.next_fault = ""  # fault of the next extracted release
        # the next migration: the schema version it moves the database to (None: none), its
        # exit code, and what it prints (the host runs the real script in the unit tests of
        # test_migrations.py; here only its report)
        self.next_migration: tuple[str | None, int, str] = (None, 0, "")
        self.corrupt = False
        # SIGKILL stand-in: after this command nothing more reaches the host (the orchestrator
        # is dead); later calls return success without effect, so the flow runs on blind.
        self.dies_after: str | None = None
        self.dead = False
        self.facts = {"root": "writable", "free_kb": "10000000", "manager": "/usr/bin/pm2"}
        self.round_trips = 0
        # command name -> how many more times it hangs (never answers): a timeout ends it like
        # SshRemote does (exit 124 / RemoteCommandError) after advancing the clock by it.
        self.hang: dict[str, int] = {}
        self.timeouts: list[tuple[str, float | None]] = []  # (command, timeout) of every run
        self.stdin_seen: list[str] = []  # every stdin the host was sent, as sent
        self._stdin: list[str] = []  # lines of the running command's stdin not yet read
        self.local_of: dict[str, Path] = {}  # upload path on the host -> the local file
        self.proxy_facts: list[str] = []  # extra key=value lines of proxy.probe (later win)

    # Remote protocol -------------------------------------------------------------------------
    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> Result:
        self.round_trips += 1
        self.timeouts.append((cmd.name, timeout))
        if self.hang.get(cmd.name, 0) > 0:
            self.hang[cmd.name] -= 1
            self.log.append(cmd)
            if timeout is None:
                raise Hung(f"{cmd.name} never answers and was run without a timeout")
            self.clock.sleep(timeout)
            if check:
                raise RemoteCommandError(
                    CommandFailure(
                        display=cmd.display,
                        exit_code=124,
                        stderr_tail=f"no result after {timeout:g}s; the command was abandoned",
                        host=self.host_label,
                    )
                )
            return Result("", f"timed out after {timeout}s", 124)
        feed = stdin if stdin is not None else cmd.stdin
        if feed is not None:
            self.stdin_seen.append(feed)
        self._stdin = (feed or "").splitlines()
        failed: Cmd | None = None
        if cmd.steps:
            out: list[str] = []
            res = Result("", "", 0)
            for step in cmd.steps:
                res = self._one(step)
                out.append(res.stdout)
                if not res.ok:
                    failed = step
                    break
            res = Result(
                "".join(out), res.stderr, res.exit_code, step=failed.name if failed else None
            )
        else:
            res = self._one(cmd)
        if check and not res.ok:
            raise RemoteCommandError(
                CommandFailure(
                    display=(failed or cmd).display,
                    exit_code=res.exit_code,
                    stderr_tail=res.stderr,
                    host=self.host_label,
                )
            )
        return res

    def _one(self, cmd: Cmd) -> Result:
        self.log.append(cmd)
        if self.dead:
            return Result("[]" if cmd.name == "pm2.jlist" else "", "", 0)
        if cmd.name == self.dies_after:
            self.dead = True
        if cmd.name in self.interrupt_on:
            raise self.interrupt_on.pop(cmd.name)()
        if cmd.name in self.fail:
            return Result("", f"{cmd.name} failed", self.fail[cmd.name])
        return self._apply(cmd)

    def put(self, local: Path, remote: PurePosixPath) -> None:
        if "put" in self.interrupt_on:
            self.host.upload_files.add(str(remote))  # a transfer cut half-way leaves a file
            raise self.interrupt_on.pop("put")()
        self.uploads.append(remote)
        self.host.upload_files.add(str(remote))
        self.local_of[str(remote)] = local

    @contextlib.contextmanager
    def tunnel(self, port: int) -> Iterator[int]:
        yield 40000 + port

    def close(self) -> None:
        pass

    def names(self) -> list[str]:
        return [c.name for c in self.log]

    # host behaviour --------------------------------------------------------------------------
    def _apply(self, cmd: Cmd) -> Result:
        h = self.host
        argv = cmd.argv[4:] if cmd.argv[:1] == ("timeout",) else cmd.argv  # commands.bounded
        args = argv[4:] if argv[:2] == ("sh", "-c") else argv
        ok = Result("", "", 0)
        match cmd.name:
            case "layout.prepare" | "release.link_shared" | "release.install":
                return ok
            case "release.migrate":
                h.migrated.append(args[0])
                to, code, printed = self.next_migration

                def schema(when: str) -> str:
                    return f"@@schema-{when}=0 {h.schema}" if h.db_up else f"@@schema-{when}=1 "

                out = [schema("before")]
                if h.db_up:
                    out.append(printed)
                    if to is not None:
                        h.schema = to
                    out += [f"@@migrate-exit={code}", schema("after")]
                return Result("\n".join(out) + "\n", "", 0)
            case "file.write":
                path = PurePosixPath(args[0])
                if path.name == ".release.json":
                    manifest = json.loads(args[1])
                    h.manifests[_rid(path.parent)] = manifest
                    h.recorded[_rid(path.parent)] = manifest.get("smoke_sha256")
                return ok
            case "release.env":
                dest, upload, shared, settings = args[0], args[1], args[2], args[3]
                rid = _rid(PurePosixPath(dest).parent)
                if upload:
                    assert upload in h.upload_files, "the env upload is missing"
                    h.upload_files.discard(upload)
                h.envs[rid] = ("secrets upload" if upload else f"copy of {shared}") + settings
                return ok
            case "uploads.clean":
                keep = set(args[1:])
                h.upload_files = {u for u in h.upload_files if PurePosixPath(u).name in keep}
                return ok
            case "upload.remove":
                h.upload_files -= set(args[3:])
                return ok
            case "state.read":
                lines = ["@@current"]
                if h.current:
                    lines.append(f"releases/{h.current}")
                lines.append("@@releases")
                lines += sorted(h.releases) + sorted(f"{p}.partial" for p in h.partials)
                lines.append("@@lock")
                lines += self._lock_view()
                lines.append("@@journal")
                lines += h.journal
                lines.append("@@smoke")
                seen: set[str] = set()
                for rid in sorted(h.releases):
                    if rid not in h.bundles:
                        continue
                    text = h.bundles[rid]
                    sha = hashlib.sha256(text.encode()).hexdigest()
                    lines.append(f"{rid} {sha} {h.recorded.get(rid) or '-'}")
                    if sha not in seen:
                        seen.add(sha)
                        lines += [f"={sha}", text.rstrip("\n")]
                lines.append("@@slots")
                lines += [
                    f"{name} ../../releases/{h.slot_links[name]}" if name in h.slot_links else name
                    for name in ("blue", "green")
                ]
                if h.upstream is not None:
                    lines += ["@@upstream", *self._upstream_lines()]
                return Result("\n".join(lines) + "\n", "", 0)
            case "lock.acquire":
                if h.lock:
                    return Result("\n".join(self._lock_view()) + "\n", "", LOCK_HELD)
                assert args[1] == lock_instance(args[2])
                h.hold(args[2], json.loads(args[3]), int(args[4]) or None, self.clock.t)
                return ok
            case "lock.break":
                instance, mode = args[1], args[2]
                if h.lock is None or lock_instance(h.lock[0]) != instance:
                    return Result("@@gone\n", "", 0)
                if mode == "expired":
                    age = int(self.clock.t - h.lease_renewed)
                    if h.lease is None or age <= h.lease + LEASE_GRACE:
                        return Result("the lease is live\n", "", LOCK_HELD)
                h.lock = None
                return Result("@@broken\n", "", 0)
            case "lock.release":
                if h.lock is None or h.lock[0] != args[2]:
                    return Result("@@gone\n", "", 0)
                h.lock = None
                return Result("@@released\n", "", 0)
            case "lock.renew":
                held = h.lock is not None and lock_instance(h.lock[0]) == args[1]
                if not held or h.lease is None:
                    return Result("the lock is no longer ours\n", "", LOCK_HELD)
                if int(self.clock.t - h.lease_renewed) > h.lease:
                    return Result("the lease ended\n", "", LOCK_HELD)
                h.lease_renewed = self.clock.t
                return ok
            case "journal.append":
                count = int(args[1])
                assert len(self._stdin) >= count, "journal records must arrive on stdin"
                h.journal.extend(self._stdin[:count])
                del self._stdin[:count]
                return ok
            case "release.extract":
                if self.corrupt:
                    return Result("sha256 mismatch", "", CHECKSUM_MISMATCH)
                rid = PurePosixPath(args[2]).name.removesuffix(".partial")
                h.partials.add(rid)
                h.faults[rid] = self.next_fault
                local = self.local_of.get(args[0])
                if local is not None and local.exists():
                    with tarfile.open(local) as tar:
                        try:
                            member = tar.extractfile(SMOKE_BUNDLE)
                        except KeyError:
                            member = None
                        if member is not None:
                            h.bundles[rid] = member.read().decode()
                h.upload_files.discard(args[0])
                return ok
            case "release.finalize":
                rid = PurePosixPath(args[-1]).name
                h.partials.discard(rid)
                h.releases.add(rid)
                return ok
            case "release.remove_partial":
                rid = PurePosixPath(args[-1]).name.removesuffix(".partial")
                h.partials.discard(rid)
                h.bundles.pop(rid, None)
                return ok
            case "current.check":
                if h.current == args[1]:
                    return ok
                return Result(f"current points to releases/{h.current}\n", "", 3)
            case "current.switch":
                assert args[1] in h.releases, "switch to an incomplete release"
                h.current = args[1]
                return ok
            case "pm2.activate":
                if not h.stale_cwd or h.running is None:
                    h.running = h.current
                h.next_pid += 10
                h.pids = (h.next_pid, h.next_pid + 1)
                h.activated_at = self.clock.t
                return Result(h.activation_stdout, "", 0)
            case "pm2.jlist":
                slots = [
                    {
                        "name": f"app-{slot}",
                        "pm_id": 10 + 2 * n + index,
                        "pid": pid,
                        "pm2_env": {
                            "status": status,
                            "restart_time": restarts,
                            "pm_id": 10 + 2 * n + index,
                        },
                    }
                    for n, slot in enumerate(sorted(h.slot_procs))
                    for pids, restarts, status in [h.slot_pids(slot, self.clock.t)]
                    for index, pid in enumerate(pids)
                ]
                if h.running is None:
                    return Result(json.dumps(slots), "", 0)
                fault = self.host.fault_of_running()
                crash = fault == "boot_crash"
                status = "errored" if crash else "online"
                # crash_after:N — every instance exits N s after it starts and PM2 restarts it
                # at once: a new pid and one more restart each time.
                crashes = 0
                if fault.startswith("crash_after:"):
                    crashes = int((self.clock.t - h.activated_at) // float(fault.split(":")[1]))
                procs = [
                    {
                        "name": "app",
                        "pm_id": index,
                        "pid": 0 if crash else pid + 1000 * crashes,
                        "pm2_env": {
                            "status": status,
                            "restart_time": h.restarts + crashes,
                            "pm_id": index,
                        },
                    }
                    for index, pid in enumerate(h.pids)
                ]
                return Result(json.dumps(procs + slots), "", 0)
            case "process.identity":
                root = h.real_root or h.root
                rid = PurePosixPath(args[0]).name
                lines = [f"@@release {root}/releases/{rid}" if rid in h.releases else "@@release -"]
                cwd = {
                    pid: proc.release
                    for slot, proc in h.slot_procs.items()
                    for pid in h.slot_pids(slot, self.clock.t)[0]
                }
                lines += [f"{p} {root}/releases/{cwd.get(int(p), h.running)}" for p in args[1:]]
                lines.append(f"@@current releases/{h.current}" if h.current else "@@current -")
                lines.append("@@manifest")
                if rid in h.manifests:
                    lines.append(json.dumps(h.manifests[rid], indent=2))
                return Result("\n".join(lines) + "\n", "", 0)
            case "pm2.delete":
                h.running = None
                h.pids = ()
                return ok
            case "release.prune":
                for name in args[1:]:
                    h.releases.discard(name)
                    h.partials.discard(name.removesuffix(".partial"))
                return ok
            case "pm2.logs" if args[0] != "app":
                proc = h.slot_procs.get(args[0].rsplit("-", 1)[1])
                fault = h.faults.get(proc.release, "") if proc else ""
                return Result(f"==> {args[0]}-error.log <==\nsampleapp: fault {fault}\n", "", 0)
            case "pm2.logs":
                fault = self.host.fault_of_running()
                return Result(
                    f"==> app-out.log <==\nsampleapp {h.running} listening\n"
                    f"==> app-error.log <==\nsampleapp: fault {fault}\n"
                    + (f"{h.log_noise}\n" if h.log_noise else ""),
                    "",
                    0,
                )
            case "pm2.describe":
                return Result("[]", "", 0)
            case "preflight.probe":
                facts = dict(self.facts)
                view = self._lock_view()
                if view:
                    facts["lock"] = view[0]
                    facts["lock_lease"] = view[1].removeprefix("lease ")
                return Result("".join(f"{k}={v}\n" for k, v in facts.items()), "", 0)
            case "pm2.save":
                return ok
            # ---- blue/green
            case "slot.link":
                _root, slot, rid, port = args[0], args[1], args[2], int(args[3])
                if rid not in h.releases:
                    return Result("", f"releases/{rid} is not a complete release", 3)
                h.slot_links[slot] = rid
                h.slot_ports[slot] = port
                return ok
            case "slot.unlink":
                slot = PurePosixPath(args[-1]).name
                h.slot_links.pop(slot, None)
                return ok
            case "pm2.start_slot":
                slot = args[2].rsplit("-", 1)[1]
                rid = h.slot_links[slot]
                h.next_pid += 10
                h.slot_procs[slot] = SlotProc(rid, (h.next_pid, h.next_pid + 1), self.clock.t)
                return ok
            case "pm2.stop_slot":
                h.slot_procs.pop(args[1].rsplit("-", 1)[1], None)
                return ok
            case "mark":
                return Result(args[-1] + "\n", "", 0)
            case "proxy.read_upstream":
                if h.upstream is None:
                    return Result("@@missing\n", "", 0)
                return Result("\n".join(self._upstream_lines()) + "\n", "", 0)
            case "proxy.ensure_upstream":
                if h.upstream is not None:
                    return Result("@@exists\n", "", 0)
                h.upstream = _parse_upstream(args[1])
                return Result("@@written\n", "", 0)
            case "proxy.switch":
                if h.nginx_refuses:
                    refused = "nginx -t refused the new upstream; the previous one is back"
                    return Result("", refused, 81)
                offset = len(h.access_log.encode())
                h.upstream = _parse_upstream(args[1])
                return Result(f"@@log_offset={offset}\n@@switched\n", "", 0)
            case "proxy.read_log":
                offset = int(args[1])
                for _ in range(h.user_requests):
                    h.front_door(h.user_path, self.clock.t)
                data = h.access_log.encode()
                return Result(f"@@range {offset} {len(data)}\n" + data[offset:].decode(), "", 0)
            case "proxy.probe":
                lines = [
                    "nginx=/usr/sbin/nginx",
                    "nginx_version=nginx version: nginx/1.22.1",
                    "sudo_test=yes",
                    "sudo_reload=yes",
                    "config=ok",
                    "running=yes",
                    "site=/etc/nginx/conf.d/releasegate-app.conf",
                    f"upstream={'present' if h.upstream else 'missing'}",
                    "access_log=readable",
                    "public_port=other",
                ]
                for port in args[5:]:
                    slot = h.slot_at(int(port))
                    held = slot is not None and slot in h.slot_procs
                    lines.append(f"port.{port}=" + (f"own:100:{h.root}" if held else "free"))
                lines += self.proxy_facts
                return Result("\n".join(lines) + "\n", "", 0)
            case "slot.drain":
                return ok
            case "batch.marker":
                return Result(f"{args[-1]}\n", "", 0)
            case "read.quiet":
                # the wrapped read, under the host's `timeout`: "<marker> <exit code>" and its
                # output; a read that would hang is stopped by the host after the limit (124)
                inner = args[5:]
                name = {"jlist": "pm2.jlist", "show": "systemd.show"}.get(inner[1], "?")
                read = Cmd(name=name, argv=tuple(inner), display=name)
                self.log.append(read)
                if self.hang.get(name, 0) > 0:
                    self.hang[name] -= 1
                    self.clock.sleep(cmd.limit or 0)
                    return Result(f"{args[0]} 124\n\n", "", 0)
                if name in self.fail:
                    return Result(f"{args[0]} {self.fail[name]}\n\n", "", 0)
                out = self._apply(read)
                return Result(f"{args[0]} {out.exit_code}\n{out.stdout}\n", "", 0)
            case "port.holders":
                return Result(h.port_holders, "", 0)
            case "slot.listening":
                slot = h.slot_at(int(args[0]))
                if slot is None or slot not in h.slot_procs:
                    return Result("", f"nothing listens on 127.0.0.1:{args[0]}", 1)
                return ok
        raise AssertionError(f"fake host does not know {cmd.name}")

    def _upstream_lines(self) -> list[str]:
        assert self.host.upstream is not None
        live, backup = self.host.upstream
        lines = ["# releasegate: fake", f"server 127.0.0.1:{live};"]
        if backup is not None:
            lines.append(f"server 127.0.0.1:{backup} backup;")
        return lines

    def _lock_view(self) -> list[str]:
        """Like commands.LOCK_VIEW: the owner line and `lease <instance> <age> <ttl>`."""
        h = self.host
        if h.lock is None:
            return []
        token, owner = h.lock
        instance = lock_instance(token) if len(token) == 32 else "0" * 16
        if h.lease is None:
            return [owner, f"lease {instance} - -"]
        return [owner, f"lease {instance} {int(self.clock.t - h.lease_renewed)} {h.lease}"]


def _parse_upstream(text: str) -> tuple[int, int | None]:
    live: int | None = None
    backup: int | None = None
    for line in text.splitlines():
        m = re.match(r"^server 127\.0\.0\.1:(\d+)( backup)?;$", line.strip())
        if m and m.group(2):
            backup = int(m.group(1))
        elif m:
            live = int(m.group(1))
    assert live is not None, text
    return live, backup


def _rid(release_dir: PurePosixPath) -> str:
    return release_dir.name.removesuffix(".partial")


def app_handler(remote: FakeRemote) -> httpx.MockTransport:
    """Answers like the sample app the fake host runs, per its fault."""

    def handle(request: httpx.Request) -> httpx.Response:
        h = remote.host
        port = (request.url.port or 80) - 40000  # the fake tunnel's local port
        running = h.running
        if port == h.public_port:
            running, status = h.front_door(request.url.path, remote.clock.t)
            if running is None:
                return httpx.Response(status)  # nginx: 502, no upstream answered
        elif h.slot_at(port) is not None:
            running = h.serving(port, remote.clock.t)
        fault = h.faults.get(running or "", "")
        if running is None or fault == "boot_crash":
            raise httpx.ConnectError("connection refused", request=request)
        manifest = h.manifests.get(running, {})
        release, revision = running, str(manifest.get("revision", ""))
        tags = manifest.get("tags")
        tag = tags[0] if isinstance(tags, list) and tags else None
        if fault == "wrong_version":  # a stale build answers: it reports another version
            release, revision, tag = "19700101000000-0000000", "0" * 40, "v0.0.0-stale"
        stamp = {"X-Release-Id": release, "X-Revision": revision}
        if request.url.path == "/health/ready":
            if fault == "ready_503":
                return httpx.Response(503, json={"status": "not-ready"}, headers=stamp)
            return httpx.Response(200, json={"status": "ready", "release": release}, headers=stamp)
        if request.url.path == "/version":
            return httpx.Response(
                200, json={"release": release, "revision": revision, "tag": tag}, headers=stamp
            )
        if request.url.path == "/metrics" and (slot := h.slot_at(port)) is not None:
            return httpx.Response(200, text=h.slot_procs[slot].metrics())
        if request.url.path.startswith("/api"):
            status = app_status(fault, request.url.path)
            return httpx.Response(status, json={"items": []}, headers=stamp)
        return httpx.Response(404)

    return httpx.MockTransport(handle)
