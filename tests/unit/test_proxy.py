"""The nginx front door (deploy/proxy.py): rendered files, exact commands and allowlist, the
switch script run for real against a temp deploy root with the REAL nginx binary (its config
test, and a real master on a temp prefix for the reload), the access-log counts from what
that nginx really logs, and the preflight judgement.

`sudo` is a fake on PATH that enforces the allowlist word for word (as sudoers would) and
runs the real /usr/sbin/nginx with `-c <temp conf> -p <temp prefix>` added, so nothing here
needs the machine's own nginx config, port 80 or root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest

from deploy import proxy
from deploy.commands import Cmd
from deploy.model import Layout
from tests.conftest import wait_until

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin") or proxy.NGINX
# Never skipped: scripts/setup.sh installs nginx, and a missing one fails these tests.
PATHS = proxy.proxy_paths(Layout(PurePosixPath("/srv/shop")), "shop")


# ---------------------------------------------------------------------------- rendered files


def test_upstream_file_is_server_lines_for_the_live_slot_and_the_backup():
    text = proxy.upstream_text(PATHS, proxy.Upstream(live=3001, backup=3002))
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert body == ["server 127.0.0.1:3001;", "server 127.0.0.1:3002 backup;"]
    alone = proxy.upstream_text(PATHS, proxy.Upstream(live=3002))
    assert [ln for ln in alone.splitlines() if not ln.startswith("#")] == ["server 127.0.0.1:3002;"]


@pytest.mark.parametrize(
    "upstream", [proxy.Upstream(3001), proxy.Upstream(3001, 3002), proxy.Upstream(80, 65535)]
)
def test_upstream_file_reads_back_as_the_ports_written(upstream):
    assert proxy.parse_upstream(proxy.upstream_text(PATHS, upstream)) == upstream


def test_reading_an_upstream_file_that_is_not_ours_says_how_to_fix_it():
    assert proxy.parse_upstream("@@missing\n") is None
    for text in (
        "server 10.0.0.5:3001;\n",
        "server 127.0.0.1:3001;\nserver 127.0.0.1:3002;\n",
        "server 127.0.0.1:3001 backup;\n",
        "include /etc/shadow;\n",
    ):
        with pytest.raises(proxy.UpstreamUnreadable, match="switch again"):
            proxy.parse_upstream(text)


@pytest.mark.parametrize("live, backup", [(0, None), (70000, None), (3001, 3001), (True, None)])
def test_upstream_ports_are_validated(live, backup):
    with pytest.raises(ValueError):
        proxy.Upstream(live, backup)


def test_paths_live_where_the_deploy_user_and_root_each_own_them():
    assert PATHS.upstream == PurePosixPath("/srv/shop/.releasegate/nginx/upstream.conf")
    assert PATHS.site == PurePosixPath("/etc/nginx/conf.d/releasegate-shop.conf")
    # Root's nginx writes the log: never in a directory the deploy user controls.
    assert PATHS.access_log == PurePosixPath("/var/log/nginx/releasegate-shop.access.log")
    with pytest.raises(ValueError):
        proxy.proxy_paths(Layout(PurePosixPath("/srv/x")), "Bad Name;")


def test_site_config_includes_our_upstream_and_retries_only_unanswered_requests():
    site = proxy.site_config(PATHS, public_port=8080)
    lines = [ln.strip() for ln in site.splitlines() if not ln.strip().startswith("#")]
    start = lines.index("upstream releasegate_shop {")
    assert lines[start + 1] == "include /srv/shop/.releasegate/nginx/upstream.conf;"
    assert "listen 8080 default_server;" in lines
    assert "proxy_pass http://releasegate_shop;" in lines
    # connection errors and timeouts only: never a 5xx answer, never a non-idempotent
    # request that reached a server (nginx's default without `non_idempotent`)
    assert "proxy_next_upstream error timeout;" in lines
    directives = " ".join(lines)
    assert "non_idempotent" not in directives and "http_5" not in directives
    # keep-alive to the slots
    assert {"keepalive 16;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";'} <= set(
        lines
    )
    assert "access_log /var/log/nginx/releasegate-shop.access.log releasegate_shop;" in lines
    for field in ("$status", "$upstream_addr", "$upstream_status", "$request_time"):
        assert field in site
    assert "escape=json" in site


def test_allowlist_is_exactly_the_two_nginx_commands():
    assert proxy.sudoers_lines("deploy") == [
        "deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -t",
        "deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -s reload",
    ]


def test_every_sudo_in_the_host_scripts_is_in_the_allowlist():
    allowed = {line.split("NOPASSWD: ", 1)[1] for line in proxy.sudoers_lines("deploy")}
    used = set()
    for script in (proxy.SWITCH_SCRIPT, proxy.PROBE_SCRIPT):
        code = "\n".join(ln for ln in script.splitlines() if not ln.strip().startswith("echo"))
        calls = re.findall(r"sudo -n (?:-l )?(\S+) (-t|-s reload)", code)
        assert len(calls) == code.count("sudo -n")
        used |= {
            f"{binary.replace(chr(34) + '$nginx' + chr(34), proxy.NGINX)} {args}"
            for binary, args in calls
        }
    assert used == allowed


# ---------------------------------------------------------------------------- exact commands


def test_switch_is_one_script_with_the_file_text_and_log_as_arguments():
    cmd = proxy.switch(PATHS, proxy.Upstream(3002, 3001))
    argv = shlex.split(cmd.render())
    assert argv[:2] == ["sh", "-c"] and argv[2] == proxy.SWITCH_SCRIPT
    assert argv[3:] == [
        "releasegate",
        "/srv/shop/.releasegate/nginx/upstream.conf",
        proxy.upstream_text(PATHS, proxy.Upstream(3002, 3001)),
        "/var/log/nginx/releasegate-shop.access.log",
        "/run/nginx.pid",
        "500",
    ]
    assert cmd.name == "proxy.switch"
    assert cmd.display == (
        "switch shop's front door to live 127.0.0.1:3002, backup 127.0.0.1:3001 (nginx -t, reload)"
    )


def test_read_commands():
    assert shlex.split(proxy.read_upstream(PATHS).render())[3:] == [
        "releasegate",
        "/srv/shop/.releasegate/nginx/upstream.conf",
    ]
    argv = shlex.split(proxy.read_access_log(PATHS, 1234).render())
    assert argv[3:] == [
        "releasegate",
        "/var/log/nginx/releasegate-shop.access.log",
        "1234",
        str(proxy.LOG_CHUNK),
    ]
    with pytest.raises(ValueError):
        proxy.read_access_log(PATHS, -1)
    probe = shlex.split(proxy.probe(PATHS, public_port=80, slot_ports=(3001, 3002)).render())
    assert probe[3:] == [
        "releasegate",
        "/srv/shop/.releasegate/nginx/upstream.conf",
        "/var/log/nginx/releasegate-shop.access.log",
        "/etc/nginx",
        "/run/nginx.pid",
        "80",
        "3001",
        "3002",
    ]


# ---------------------------------------------------------------------------- parsers


def log_line(status=200, addr="127.0.0.1:3001", up_status="200", header="0.001", **extra):
    entry = {
        "time": "2026-11-30T07:00:00+00:00",
        "status": status,
        "method": "GET",
        "request_time": 0.002,
        "upstream_addr": addr,
        "upstream_status": up_status,
        "upstream_header_time": header,
        **extra,
    }
    return json.dumps(entry, separators=(",", ":"))


def test_access_log_counts_requests_5xx_and_unanswered_attempts():
    lines = [
        log_line(),
        log_line(status=500, up_status="500"),
        # the live slot refused, the backup answered: no failed request, one upstream error
        log_line(addr="127.0.0.1:3001, 127.0.0.1:3002", up_status="502, 200", header="-, 0.002"),
        # no upstream answered at all: nginx's own 502
        log_line(status=502, addr="127.0.0.1:3001", up_status="502", header="-"),
        # answered by nginx itself, no upstream
        log_line(status=400, addr="", up_status="", header=""),
        "not json",
    ]
    text = "\n".join(lines) + "\n"
    sample = proxy.parse_access_log(f"@@range 100 {100 + len(text)}\n{text}")
    assert (sample.requests, sample.server_errors, sample.upstream_errors) == (5, 2, 2)
    assert sample.unparsed == 1 and sample.error_ratio == pytest.approx(0.4)
    assert sample.of_port(3001) == proxy.UpstreamTally(answered=2, server_errors=1, failed=2)
    assert sample.of_port(3002) == proxy.UpstreamTally(answered=1)
    assert sample.of_port(9) == proxy.UpstreamTally()
    assert (sample.start_offset, sample.next_offset) == (100, 100 + len(text))


def test_access_log_partial_last_line_is_left_for_the_next_read():
    first = log_line() + "\n"
    partial = log_line(status=503)[:20]
    sample = proxy.parse_access_log(f"@@range 0 {len(first) + 20}\n{first}{partial}")
    assert sample.requests == 1 and sample.server_errors == 0
    assert sample.next_offset == len(first)


def test_access_log_rotated_missing_unreadable():
    rotated = proxy.parse_access_log("@@rotated\n@@range 0 0\n")
    assert rotated.rotated and rotated.requests == 0 and rotated.next_offset == 0
    assert proxy.parse_access_log("@@missing\n").problem == "missing"
    assert proxy.parse_access_log("@@unreadable\n").problem == "unreadable"
    with pytest.raises(ValueError):
        proxy.parse_access_log("garbage\n")


@pytest.mark.parametrize(
    "code, stdout, reason, ok, consistent",
    [
        (0, "@@log_offset=42\n@@switched\n", "switched", True, True),
        (81, "", "refused", False, True),
        (82, "", "reload-failed", False, True),
        (83, "", "not-allowed", False, True),
        (80, "", "write-failed", False, True),
        (84, "", "restore-failed", False, False),
        (0, "", "unknown", False, False),
        (255, "", "unknown", False, False),
    ],
)
def test_switch_results(code, stdout, reason, ok, consistent):
    report = proxy.parse_switch(code, stdout, "why")
    assert (report.reason, report.ok, report.consistent) == (reason, ok, consistent)
    if ok:
        assert report.log_offset == 42


# ------------------------------------------------------------------------ host scripts, for real

FAKE_SUDO = r"""#!/bin/sh
# sudo as sudoers would behave with exactly the lines in $ALLOW: `-n` required, the command
# must match a line word for word; `-l CMD` only answers. /usr/sbin/nginx runs the real nginx
# on the test's own config and prefix.
[ "$1" = -n ] || { echo "fake sudo: -n missing, would prompt" >&2; exit 2; }
shift
listing=
if [ "$1" = -l ]; then listing=1; shift; echo "sudo -l $*" >>"$LOG.listing"; fi
if ! grep -qxF -- "$*" "$ALLOW"; then echo "sudo: a password is required" >&2; exit 1; fi
[ -n "$listing" ] && { echo "$*"; exit 0; }
echo "sudo $*" >>"$LOG"
[ "$1" = /usr/sbin/nginx ] || exit 3
shift
# a reload that nginx takes but never applies
[ "$*" = "-s reload" ] && [ -n "${RELOAD_IGNORED:-}" ] && exit 0
exec /usr/sbin/nginx -c "$NGINX_CONF" -p "$NGINX_PREFIX/" "$@"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Box:
    """A deploy root, an nginx prefix with the real site config, a fake sudo, and the log."""

    tmp: Path
    paths: proxy.ProxyPaths
    prefix: Path
    access_log: Path
    allow: Path
    log: Path
    env: dict[str, str]
    public_port: int

    @property
    def upstream(self) -> Path:
        return Path(self.paths.upstream)

    def local(self, cmd: Cmd) -> Cmd:
        """The command with host paths moved into this box."""
        moved = {
            str(self.paths.access_log): str(self.access_log),
            str(proxy.CONF_DIR): str(self.prefix / "conf"),
            str(proxy.PID_FILE): str(self.prefix / "nginx.pid"),
        }
        return dataclasses.replace(cmd, argv=tuple(moved.get(a, a) for a in cmd.argv))

    def run(self, cmd: Cmd) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        return subprocess.run(
            ["sh", "-c", self.local(cmd).render()],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )

    def sudo_calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def sudo_listings(self) -> list[str]:
        listing = self.log.with_name(self.log.name + ".listing")
        return listing.read_text().splitlines() if listing.exists() else []

    def nginx(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NGINX, "-c", self.env["NGINX_CONF"], "-p", f"{self.prefix}/", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    root = tmp_path / "srv" / "shop"
    (root / ".releasegate").mkdir(parents=True, mode=0o700)
    paths = proxy.proxy_paths(Layout(PurePosixPath(root)), "shop")
    prefix = tmp_path / "nginx"
    (prefix / "conf" / "conf.d").mkdir(parents=True)
    access_log = prefix / "releasegate-shop.access.log"
    public_port = free_port()
    site = proxy.site_config(paths, public_port=public_port)
    site = site.replace(f"{proxy.LOG_DIR}/", f"{prefix}/")  # nothing of the machine's own
    site = site.replace(f"listen {public_port} ", f"listen 127.0.0.1:{public_port} ")
    (prefix / "conf" / "conf.d" / "releasegate-shop.conf").write_text(site)
    conf = prefix / "conf" / "nginx.conf"
    conf.write_text(
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log;\n"
        "worker_processes 1;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "  access_log off;\n"
        f"  include {prefix}/conf/conf.d/*.conf;\n"
        "}\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text(FAKE_SUDO)
    (bin_dir / "sudo").chmod(0o755)
    allow = tmp_path / "allow"
    allow.write_text(
        "".join(line.split("NOPASSWD: ", 1)[1] + "\n" for line in proxy.sudoers_lines("deploy"))
    )
    log = tmp_path / "sudo.log"
    env = {
        "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/bin",
        "ALLOW": str(allow),
        "LOG": str(log),
        "NGINX_CONF": str(conf),
        "NGINX_PREFIX": str(prefix),
        "LC_ALL": "C",
    }
    b = Box(tmp_path, paths, prefix, access_log, allow, log, env, public_port)
    try:
        yield b
    finally:
        # By pid, not `nginx -s stop`: that parses the config, which a test may have broken.
        pid_file = prefix / "nginx.pid"
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        if text:  # (`nginx -t` leaves an empty pid file)
            pid = int(text)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            wait_until(lambda: gone(pid), 10, f"the test's nginx master {pid} to stop")


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def write_upstream(box: Box, upstream: proxy.Upstream) -> None:
    res = box.run(proxy.write_upstream(box.paths, upstream))
    assert res.returncode == 0, res.stderr


def test_the_site_config_passes_the_real_nginx_config_test(box: Box):
    write_upstream(box, proxy.Upstream(3001, 3002))
    res = box.nginx("-t")
    assert res.returncode == 0, res.stderr


def test_a_bad_upstream_is_refused_by_nginx_and_the_previous_file_is_back(box: Box):
    write_upstream(box, proxy.Upstream(3001))
    before = box.upstream.read_text()
    cmd = proxy.switch(box.paths, proxy.Upstream(3002))
    # A file nginx refuses (the builder cannot produce one): the script must not care why.
    bad = dataclasses.replace(
        cmd,
        argv=tuple(
            "server 127.0.0.1:3002 weight=zero;\n" if a.startswith("#") else a for a in cmd.argv
        ),
    )
    res = box.run(bad)
    assert res.returncode == proxy.SWITCH_REFUSED, res.stderr
    assert "weight=zero" in res.stderr and "previous one is back" in res.stderr
    assert box.upstream.read_text() == before
    assert sorted(p.name for p in box.upstream.parent.iterdir()) == ["upstream.conf"]
    assert box.sudo_calls() == ["sudo /usr/sbin/nginx -t"]  # tested, never reloaded
    report = proxy.parse_switch(res.returncode, res.stdout, res.stderr)
    assert report.reason == "refused" and report.consistent


def test_a_broken_nginx_config_elsewhere_refuses_the_switch_too(box: Box):
    write_upstream(box, proxy.Upstream(3001))
    (box.prefix / "conf" / "conf.d" / "other.conf").write_text("server { listen x; }\n")
    res = box.run(proxy.switch(box.paths, proxy.Upstream(3002, 3001)))
    assert res.returncode == proxy.SWITCH_REFUSED
    assert proxy.parse_upstream(box.upstream.read_text()) == proxy.Upstream(3001)


def test_the_first_switch_refused_leaves_no_upstream_file(box: Box):
    (box.prefix / "conf" / "conf.d" / "other.conf").write_text("server { listen x; }\n")
    res = box.run(proxy.switch(box.paths, proxy.Upstream(3002)))
    assert res.returncode == proxy.SWITCH_REFUSED
    assert not box.upstream.exists()


def test_a_failed_reload_puts_the_previous_file_back(box: Box):
    write_upstream(box, proxy.Upstream(3001))
    # no nginx master runs on the prefix: the config is valid, the reload cannot be sent
    res = box.run(proxy.switch(box.paths, proxy.Upstream(3002, 3001)))
    assert res.returncode == proxy.SWITCH_RELOAD_FAILED, res.stderr
    assert "previous upstream is back" in res.stderr
    assert proxy.parse_upstream(box.upstream.read_text()) == proxy.Upstream(3001)
    assert box.sudo_calls() == [
        "sudo /usr/sbin/nginx -t",
        "sudo /usr/sbin/nginx -s reload",
        "sudo /usr/sbin/nginx -s reload",  # reloading back
    ]


def test_a_reload_nginx_does_not_apply_is_a_failed_switch(box: Box, slots: dict[str, int]):
    write_upstream(box, proxy.Upstream(slots["blue"]))
    assert box.nginx().returncode == 0
    box.env["RELOAD_IGNORED"] = "1"
    res = box.run(proxy.switch(box.paths, proxy.Upstream(slots["green"]), confirm_within=0.3))
    assert res.returncode == proxy.SWITCH_RELOAD_FAILED, res.stderr
    assert "did not apply the reload" in res.stderr
    assert proxy.parse_upstream(box.upstream.read_text()) == proxy.Upstream(slots["blue"])
    assert get(box) == "blue"


@pytest.mark.parametrize(
    "allowed, ran",
    [
        ("/usr/sbin/nginx -t\n", ["sudo /usr/sbin/nginx -t"]),  # the reload line is missing
        ("/usr/sbin/nginx -s reload\n", []),  # the test line is missing
        ("", []),
    ],
)
def test_without_the_allowlist_nothing_changes(box: Box, allowed: str, ran: list[str]):
    # The allowlist is only asked about once a sudo call failed (a switch must not pay for
    # `sudo -l` twice): the previous file is back and nginx was never reloaded.
    write_upstream(box, proxy.Upstream(3001))
    box.allow.write_text(allowed)
    res = box.run(proxy.switch(box.paths, proxy.Upstream(3002)))
    assert res.returncode == proxy.SWITCH_NOT_ALLOWED, res.stderr
    assert "docs/blue-green.md" in res.stderr
    assert proxy.parse_upstream(box.upstream.read_text()) == proxy.Upstream(3001)
    assert box.sudo_calls() == ran
    assert not (box.upstream.parent / "upstream.conf.prev").exists()


def test_a_switch_asks_sudo_for_nothing_but_the_test_and_the_reload(
    box: Box, slots: dict[str, int]
):
    write_upstream(box, proxy.Upstream(slots["blue"]))
    assert box.nginx().returncode == 0
    res = box.run(proxy.switch(box.paths, proxy.Upstream(slots["green"])))
    assert res.returncode == 0, res.stderr
    assert box.sudo_calls() == ["sudo /usr/sbin/nginx -t", "sudo /usr/sbin/nginx -s reload"]
    assert box.sudo_listings() == []


def test_an_unwritable_upstream_directory_changes_nothing(box: Box):
    box.upstream.parent.parent.mkdir(parents=True, exist_ok=True)
    box.upstream.parent.write_text("a file where the directory should be")
    res = box.run(proxy.switch(box.paths, proxy.Upstream(3002)))
    assert res.returncode == proxy.SWITCH_WRITE_FAILED
    assert box.sudo_calls() == []


class _Slot(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"release": self.server.release}).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slots() -> Iterator[dict[str, int]]:
    servers = {}
    for release in ("blue", "green"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Slot)
        server.release = release  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers[release] = server
    try:
        yield {name: int(s.server_address[1]) for name, s in servers.items()}
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()


def get(box: Box) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", box.public_port, timeout=5)
    try:
        conn.request("GET", "/version")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return str(json.loads(body)["release"])
    finally:
        conn.close()


def test_switch_moves_real_traffic_and_the_backup_catches_a_dead_live_slot(
    box: Box, slots: dict[str, int]
):
    write_upstream(box, proxy.Upstream(slots["blue"]))
    started = box.nginx()
    assert started.returncode == 0, started.stderr
    assert get(box) == "blue"

    res = box.run(proxy.switch(box.paths, proxy.Upstream(slots["green"], slots["blue"])))
    report = proxy.parse_switch(res.returncode, res.stdout, res.stderr)
    assert report.ok, res.stderr
    assert report.log_offset is not None
    # A confirmed switch: from its end on, every new connection gets the new upstream.
    assert [get(box) for _ in range(5)] == ["green"] * 5
    read = box.run(proxy.read_upstream(box.paths))
    assert proxy.parse_upstream(read.stdout) == proxy.Upstream(slots["green"], slots["blue"])

    # The live slot dies: nothing listens on its port any more; its backup answers.
    dead = free_port()
    res = box.run(proxy.switch(box.paths, proxy.Upstream(dead, slots["blue"])))
    assert proxy.parse_switch(res.returncode, res.stdout, res.stderr).ok, res.stderr
    offset = proxy.parse_switch(res.returncode, res.stdout, res.stderr).log_offset
    assert offset is not None
    assert [get(box) for _ in range(5)] == ["blue"] * 5

    def sample() -> proxy.TrafficSample:
        out = box.run(proxy.read_access_log(box.paths, offset)).stdout
        return proxy.parse_access_log(out)

    got = wait_until(lambda: (s := sample()).requests >= 5 and s, 5, "five logged requests")
    assert got.server_errors == 0
    # nginx tried the dead port at least once (then marks it down for a while)
    assert got.of_port(dead).failed >= 1 and got.of_port(dead).answered == 0
    assert got.upstream_errors == got.of_port(dead).failed
    assert got.of_port(slots["blue"]).answered >= 5
    assert got.next_offset == box.access_log.stat().st_size


def test_the_access_log_reader_continues_where_it_stopped_and_survives_rotation(box: Box):
    box.access_log.write_text(log_line() + "\n" + log_line(status=503) + "\n")
    first = proxy.parse_access_log(
        box.run(proxy.read_access_log(box.paths, 0, max_bytes=10)).stdout
    )
    assert first.requests == 0 and first.next_offset == 0  # no complete line in 10 bytes
    whole = proxy.parse_access_log(box.run(proxy.read_access_log(box.paths, 0)).stdout)
    assert (whole.requests, whole.server_errors) == (2, 1)
    box.access_log.write_text(log_line() + "\n")  # rotated: smaller than the offset
    again = proxy.parse_access_log(
        box.run(proxy.read_access_log(box.paths, whole.next_offset)).stdout
    )
    assert again.rotated and again.requests == 1


# ---------------------------------------------------------------------------- preflight

GOOD = {
    "nginx": "/usr/sbin/nginx",
    "nginx_version": "nginx version: nginx/1.22.1",
    "sudo_test": "yes",
    "sudo_reload": "yes",
    "config": "ok",
    "running": "yes",
    "site": "/etc/nginx/conf.d/releasegate-shop.conf",
    "upstream": "present",
    "access_log": "readable",
    "public_port": "other",
    "port.3001": "own:77:/srv/shop/releases/20261130070000-abcdef1",
    "port.3002": "free",
}


def judge(facts: dict[str, str | None], idle: int = 3002) -> dict[str, proxy.Check]:
    text = "\n".join(f"{k}={v}" for k, v in facts.items() if v is not None)
    checks = proxy.judge(
        proxy.parse_facts(text),
        paths=PATHS,
        user="deploy",
        env="prod",
        public_port=80,
        idle_port=idle,
    )
    return {c.name: c for c in checks}


def test_preflight_all_good():
    checks = judge(GOOD)
    assert all(c.ok for c in checks.values()), [c.line() for c in checks.values() if not c.ok]
    assert "free" in checks["idle slot port"].detail
    ours = judge(GOOD, idle=3001)["idle slot port"]
    assert ours.ok and "20261130070000-abcdef1" in ours.detail


@pytest.mark.parametrize(
    "change, name, words",
    [
        ({"nginx": "", "config": "untested"}, "nginx", "apt-get install nginx"),
        (
            {"sudo_reload": "no"},
            "nginx allowlist",
            "deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -s reload",
        ),
        (
            {"sudo_test": "no", "config": "untested"},
            "nginx allowlist",
            "may not run `sudo -n /usr/sbin/nginx -t`",
        ),
        (
            {"config": "failed", "config_error": 'nginx: [emerg] unknown directive "x"'},
            "nginx config",
            'unknown directive "x"',
        ),
        ({"running": "no"}, "nginx running", "systemctl enable --now nginx"),
        ({"site": ""}, "front door site", "releasegate setup prod"),
        ({"upstream": "missing"}, "upstream file", "releasegate setup prod"),
        ({"access_log": "unreadable"}, "access log", "usermod -aG adm deploy"),
        ({"access_log": "missing"}, "access log", "reload nginx"),
        ({"public_port": "free"}, "public port", "reload nginx"),
        ({"public_port": "own:91:/srv/shop/current"}, "public port", "nginx must own"),
        ({"port.3002": "other"}, "idle slot port", "strategy.slots"),
    ],
)
def test_each_preflight_failure_names_the_fix(change, name, words):
    checks = judge({**GOOD, **change})
    failed = {c.name: c for c in checks.values() if not c.ok}
    # nothing else fails, except the config test that could not run without nginx or sudo
    assert set(failed) - {"nginx config"} == {name} - {"nginx config"}, failed
    assert words in failed[name].line()


def test_the_probe_runs_for_real_and_finds_every_fact(box: Box, slots: dict[str, int]):
    write_upstream(box, proxy.Upstream(slots["blue"]))
    assert box.nginx().returncode == 0
    idle = free_port()
    cmd = proxy.probe(box.paths, public_port=box.public_port, slot_ports=(slots["blue"], idle))
    res = box.run(cmd)
    assert res.returncode == 0, res.stderr
    facts = proxy.parse_facts(res.stdout)
    assert facts.nginx == "/usr/sbin/nginx" and "nginx/" in facts.version
    assert facts.sudo_test and facts.sudo_reload and facts.config == "ok" and facts.running
    assert facts.site.endswith("conf.d/releasegate-shop.conf")
    assert facts.upstream == "present" and facts.access_log == "readable"
    assert facts.public_port.state != "free"
    assert facts.ports[idle].state == "free"
    assert facts.ports[slots["blue"]].state == "own"  # this test's own process listens there
    assert box.sudo_calls() == ["sudo /usr/sbin/nginx -t"]  # read-only: no reload

    (box.prefix / "conf" / "conf.d" / "other.conf").write_text("server { listen x; }\n")
    box.allow.write_text("/usr/sbin/nginx -t\n")
    broken = proxy.parse_facts(box.run(cmd).stdout)
    assert broken.config == "failed" and "listen" in broken.config_error
    assert broken.sudo_test and not broken.sudo_reload


def test_docs_show_the_site_config_upstream_and_allowlist_the_code_renders():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "blue-green.md").read_text()
    shop = proxy.proxy_paths(Layout(PurePosixPath("/srv/shop-api")), "shop-api")
    assert f"```nginx\n{proxy.site_config(shop, public_port=80)}```" in docs
    assert f"```nginx\n{proxy.upstream_text(shop, proxy.Upstream(3002, 3001))}```" in docs
    for line in proxy.sudoers_lines("deploy"):
        assert f"\n  {line}\n" in docs
