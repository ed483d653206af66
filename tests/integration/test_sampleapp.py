"""Integration tests for the sample app in examples/sampleapp.

Each test runs ``node server.js`` from a private copy of the app (so FAULT files
never touch the repository) on a free loopback port and talks to it with httpx.
``npm ci --omit=dev --offline`` runs once per session against the vendored
tarball; no network is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_SRC = REPO_ROOT / "examples" / "sampleapp"
STARTUP_TIMEOUT = 10.0
# Variables the app reads; scrubbed from the inherited environment so the
# developer's shell cannot change what a test sees.
APP_ENV_VARS = (
    "PORT",
    "HOST",
    "RELEASE_ID",
    "APP_REVISION",
    "REVISION",
    "HEALTH_TOKEN",
    "METRICS_TOKEN",
    "CORS_ORIGINS",
    "READY_REQUIRES",
    "FAULT",
)
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class App:
    proc: subprocess.Popen
    port: int
    stdout_path: Path
    stderr_path: Path
    clients: list = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def client(self) -> httpx.Client:
        # trust_env=False: never route loopback traffic through a proxy from the env.
        c = httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False)
        self.clients.append(c)
        return c

    def get(self, path: str, **kw) -> httpx.Response:
        with httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False) as c:
            return c.get(path, **kw)

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        with httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False) as c:
            return c.request(method, path, **kw)

    def is_live(self) -> bool:
        try:
            return self.get("/health/live").status_code == 200
        except httpx.TransportError:
            return False

    def wait_exit(self, timeout: float) -> int:
        wait_until(lambda: self.proc.poll() is not None, timeout, what="process exit")
        return self.proc.returncode

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def _npm_ci(app_dir: Path) -> None:
    assert shutil.which("node") and shutil.which("npm"), (
        "node and npm must be installed (.ci/run does)"
    )
    result = subprocess.run(
        ["npm", "ci", "--omit=dev", "--offline", "--no-audit", "--no-fund"],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def installed_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the app with node_modules installed offline, once per session."""
    dest = tmp_path_factory.mktemp("sampleapp-installed") / "sampleapp"
    shutil.copytree(APP_SRC, dest, ignore=shutil.ignore_patterns("node_modules", "FAULT"))
    _npm_ci(dest)
    assert (dest / "node_modules" / "ms" / "package.json").is_file()
    return dest


@pytest.fixture
def app_dir(installed_app: Path, tmp_path: Path) -> Path:
    """A private, writable copy (including node_modules) for one test."""
    dest = tmp_path / "sampleapp"
    shutil.copytree(installed_app, dest, symlinks=True)
    return dest


@pytest.fixture
def start_app(app_dir: Path, tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Factory: start_app(env={...}, wait_live=True) -> App. Always killed on teardown."""
    apps: list[App] = []

    def _start(env: dict[str, str] | None = None, wait_live: bool = True) -> App:
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if k not in APP_ENV_VARS}
        full_env.update({"PORT": str(port), "RELEASE_ID": "r-test"})
        full_env.update(env or {})
        n = len(apps)
        out, err = tmp_path / f"stdout-{n}.log", tmp_path / f"stderr-{n}.log"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                ["node", "server.js"],
                cwd=app_dir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
            )
        app = App(proc=proc, port=port, stdout_path=out, stderr_path=err)
        apps.append(app)
        if wait_live:

            def live_or_dead() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"app exited with {proc.returncode}:\n{app.stderr}")
                return app.is_live()

            wait_until(live_or_dead, STARTUP_TIMEOUT, what="/health/live")
        return app

    yield _start
    for app in apps:
        app.stop()


@pytest.fixture
def app(start_app: Callable[..., App]) -> App:
    return start_app()


# --------------------------------------------------------------- basics --


def test_startup_log_line(app: App) -> None:
    line = wait_until(lambda: app.stdout.strip(), 5, what="startup log line")
    assert (
        line
        == f"sampleapp r-test listening on 127.0.0.1:{app.port} (pid {app.proc.pid}, fault none)"
    )


def test_live_and_ready(app: App) -> None:
    r = app.get("/health/live")
    assert (r.status_code, r.json()) == (200, {"status": "live"})
    r = app.get("/health/ready")
    assert (r.status_code, r.json()) == (200, {"status": "ready", "release": "r-test"})


def test_version(start_app: Callable[..., App]) -> None:
    app = start_app(env={"RELEASE_ID": "rel-42", "APP_REVISION": "abc1234"})
    body = app.get("/version").json()
    assert body["name"] == "sampleapp"
    assert body["release"] == "rel-42"
    assert body["revision"] == "abc1234"
    assert body["pid"] == app.proc.pid
    assert isinstance(body["uptime"], str) and re.search(r"\d", body["uptime"])
    assert set(body) == {"name", "release", "revision", "pid", "uptime"}


def test_version_reports_release_id_and_revision_in_body_and_headers(
    start_app: Callable[..., App],
) -> None:
    sha = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"
    app = start_app(env={"RELEASE_ID": "20261122143055-1a2b3c4", "REVISION": sha})
    r = app.get("/version")
    assert (r.json()["release"], r.json()["revision"]) == ("20261122143055-1a2b3c4", sha)
    assert r.headers["x-release-id"] == "20261122143055-1a2b3c4"
    assert r.headers["x-revision"] == sha
    # on every response, so any endpoint can carry the identity
    assert app.get("/health/live").headers["x-release-id"] == "20261122143055-1a2b3c4"


def test_version_defaults(start_app: Callable[..., App]) -> None:
    app = start_app(env={"RELEASE_ID": ""})
    body = app.get("/version").json()
    assert body["release"] == "dev"
    assert body["revision"] is None


def test_items_list_and_get(app: App) -> None:
    r = app.get("/api/items")
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 3
    assert items[0] == {"id": 1, "name": "anvil", "price_cents": 1999}
    for it in items:
        assert set(it) == {"id", "name", "price_cents"}
        assert isinstance(it["id"], int) and isinstance(it["price_cents"], int)

    r = app.get("/api/items/1")
    assert (r.status_code, r.json()) == (200, {"item": items[0]})
    for missing in ("/api/items/999", "/api/items/abc"):
        r = app.get(missing)
        assert (r.status_code, r.json()) == (404, {"error": "not_found"})


def test_post_item_creates(app: App) -> None:
    r = app.request("POST", "/api/items", json={"name": "dynamite", "price_cents": 500})
    assert r.status_code == 201
    item = r.json()["item"]
    assert item == {"id": item["id"], "name": "dynamite", "price_cents": 500}
    assert isinstance(item["id"], int)
    assert app.get(f"/api/items/{item['id']}").json() == {"item": item}
    assert len(app.get("/api/items").json()["items"]) == 4


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x", "price_cents": 1, "color": "red"},  # unknown field
        {"name": "x", "price_cents": "1"},  # wrong type
        {"name": "x", "price_cents": 1.5},  # not an integer
        {"name": 7, "price_cents": 1},  # wrong type
        {"name": "x"},  # missing field
        [{"name": "x", "price_cents": 1}],  # not an object
    ],
    ids=["unknown-field", "price-string", "price-float", "name-int", "missing", "array"],
)
def test_post_item_validation(app: App, payload: object) -> None:
    r = app.request("POST", "/api/items", json=payload)
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "validation"
    assert isinstance(body["detail"], str) and body["detail"]
    assert len(app.get("/api/items").json()["items"]) == 3


def test_post_invalid_json(app: App) -> None:
    r = app.request(
        "POST", "/api/items", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"] == "validation"


def test_unknown_route_is_404_json(app: App) -> None:
    r = app.get("/nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": "not_found"}


@pytest.mark.parametrize("path", ["/health/live", "/version", "/api/items", "/metrics", "/nope"])
def test_security_headers(app: App, path: str) -> None:
    r = app.get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["content-type"]


def test_request_id_echo_and_generation(app: App) -> None:
    assert (
        app.get("/health/live", headers={"X-Request-Id": "abc-123.X_y"}).headers["x-request-id"]
        == "abc-123.X_y"
    )
    generated = {app.get("/health/live").headers["x-request-id"] for _ in range(2)}
    assert len(generated) == 2 and all(UUID_RE.match(g) for g in generated)
    for bad in ("has space", "semi;colon", "x" * 129):
        rid = app.get("/health/live", headers={"X-Request-Id": bad}).headers["x-request-id"]
        assert rid != bad and UUID_RE.match(rid)


# ------------------------------------------------------------ auth/CORS --


def test_metrics_requires_bearer_token(start_app: Callable[..., App]) -> None:
    app = start_app(env={"METRICS_TOKEN": "m-secret"})
    app.get("/health/live")
    assert app.get("/metrics").status_code == 401
    assert app.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert app.get("/metrics", headers={"Authorization": "m-secret"}).status_code == 401
    r = app.get("/metrics", headers={"Authorization": "Bearer m-secret"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE http_requests_total counter" in r.text
    assert 'http_requests_total{method="GET",route="/health/live",status="200"}' in r.text
    assert 'http_requests_total{method="GET",route="/metrics",status="401"} 3' in r.text
    assert re.search(r"^process_uptime_seconds \d+(\.\d+)?$", r.text, re.M)


def test_metrics_open_without_token(app: App) -> None:
    app.get("/api/items/1")
    r = app.get("/metrics")
    assert r.status_code == 200
    assert 'http_requests_total{method="GET",route="/api/items/:id",status="200"} 1' in r.text


def test_health_token(start_app: Callable[..., App]) -> None:
    app = start_app(env={"HEALTH_TOKEN": "h-secret"})
    assert app.get("/health/live").status_code == 200  # liveness never needs credentials
    r = app.get("/health/ready")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/json")
    assert app.get("/health/ready", headers={"X-Health-Token": "nope"}).status_code == 401
    r = app.get("/health/ready", headers={"X-Health-Token": "h-secret"})
    assert (r.status_code, r.json()["status"]) == (200, "ready")


def test_tokens_never_logged(start_app: Callable[..., App]) -> None:
    app = start_app(env={"HEALTH_TOKEN": "h-secret-zzz", "METRICS_TOKEN": "m-secret-zzz"})
    app.get("/health/ready", headers={"X-Health-Token": "h-secret-zzz"})
    app.get("/metrics", headers={"Authorization": "Bearer m-secret-zzz"})
    app.get("/metrics", headers={"Authorization": "Bearer bad"})
    app.proc.send_signal(signal.SIGTERM)
    assert app.wait_exit(10) == 0
    logs = app.stdout + app.stderr
    assert "secret-zzz" not in logs


def test_cors_allow_and_deny(start_app: Callable[..., App]) -> None:
    app = start_app(env={"CORS_ORIGINS": "https://a.example, https://b.example"})
    r = app.get("/api/items", headers={"Origin": "https://b.example"})
    assert r.headers["access-control-allow-origin"] == "https://b.example"
    assert "Origin" in r.headers["vary"]
    r = app.get("/api/items", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in app.get("/api/items").headers


def test_cors_preflight(start_app: Callable[..., App]) -> None:
    app = start_app(env={"CORS_ORIGINS": "https://a.example"})
    headers = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    r = app.request("OPTIONS", "/api/items", headers=headers)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert "POST" in r.headers["access-control-allow-methods"]
    r = app.request("OPTIONS", "/api/items", headers={**headers, "Origin": "https://evil.example"})
    assert r.status_code == 204
    assert "access-control-allow-origin" not in r.headers


# --------------------------------------------------------------- faults --


def write_fault(app_dir: Path, value: str) -> None:
    (app_dir / "FAULT").write_text(value + "\n")


@pytest.mark.parametrize("source", ["file", "env"])
def test_fault_ready_503(start_app: Callable[..., App], app_dir: Path, source: str) -> None:
    if source == "file":
        write_fault(app_dir, "ready_503")
        app = start_app()
    else:
        app = start_app(env={"FAULT": "ready_503"})
    r = app.get("/health/ready")
    assert (r.status_code, r.json()) == (503, {"status": "not-ready"})
    assert app.get("/health/live").status_code == 200
    assert app.get("/api/items").status_code == 200
    assert f"(pid {app.proc.pid}, fault ready_503)" in wait_until(lambda: app.stdout, 5, what="log")


def test_fault_ready_hang_does_not_hold_up_a_graceful_stop(start_app: Callable[..., App]) -> None:
    app = start_app(env={"FAULT": "ready_hang"})
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as hung:
        hung.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")

        def read_by_the_app() -> bool:
            # the app's end of the connection has consumed the request (Recv-Q 0)
            out = subprocess.run(
                ["ss", "-Htn", "state", "established", f"( sport = :{app.port} )"],
                capture_output=True,
                text=True,
            ).stdout.split()
            return bool(out) and out[0] == "0"

        wait_until(read_by_the_app, 5, what="the app to read the readiness request")
        started = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        assert app.wait_exit(5) == 0
        assert time.monotonic() - started < 2
        assert hung.recv(100) == b""  # closed without an answer


@pytest.mark.parametrize("source", ["file", "env"])
def test_fault_boot_crash(start_app: Callable[..., App], app_dir: Path, source: str) -> None:
    if source == "file":
        write_fault(app_dir, "boot_crash")
        app = start_app(wait_live=False)
    else:
        app = start_app(env={"FAULT": "boot_crash"}, wait_live=False)
    assert app.wait_exit(5) == 1
    assert "sampleapp: boot_crash fault: refusing to start" in app.stderr
    assert "listening" not in app.stdout
    assert not app.is_live()


def test_fault_ready_hang(start_app: Callable[..., App]) -> None:
    app = start_app(env={"FAULT": "ready_hang"})
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"{app.base_url}/health/ready", timeout=1.0, trust_env=False)
    assert app.get("/health/live").status_code == 200
    assert app.get("/api/items").status_code == 200


def test_fault_errors_after(start_app: Callable[..., App]) -> None:
    app = start_app(env={"FAULT": "errors_after:1"})
    assert app.get("/health/ready").status_code == 200
    assert app.get("/api/items").status_code == 200
    wait_until(lambda: app.get("/health/ready").status_code == 503, 10, what="degraded")
    assert app.get("/api/items").status_code == 500
    assert app.get("/version").status_code == 200 and app.get("/health/live").status_code == 200


def test_fault_flaky_after(start_app: Callable[..., App]) -> None:
    from deploy import metrics

    # 3 s: six answers before the fault starts, also on a loaded machine (at 1 s the sixth
    # came late under a parallel CI run at load 12)
    app = start_app(env={"FAULT": "flaky_after:3"})
    assert [app.get("/api/items").status_code for _ in range(6)] == [200] * 6
    wait_until(lambda: app.get("/api/items").status_code == 500, 15, what="flaky")
    statuses = [app.get("/api/items").status_code for _ in range(30)]
    assert statuses.count(500) == 10 and statuses.count(200) == 20  # one in three
    assert app.get("/health/ready").status_code == 200  # readiness never shows it
    # the app's own counter says so, in text prometheus_client's parser reads
    reading = metrics.parse(app.get("/metrics").text, "http_requests_total", "status")
    errors = sum(v for k, v in reading.series.items() if reading.status_of(k) == "500")
    assert errors >= 11


def test_fault_slow_ready(start_app: Callable[..., App]) -> None:
    app = start_app(env={"FAULT": "slow_ready:2"})
    started = time.monotonic()
    r = app.get("/health/ready")
    assert (r.status_code, r.json()) == (503, {"status": "not-ready"})
    assert app.get("/health/live").status_code == 200
    wait_until(
        lambda: app.get("/health/ready").status_code == 200, 10, what="ready after slow_ready"
    )
    assert time.monotonic() - started > 1.0
    assert app.get("/health/ready").json() == {"status": "ready", "release": "r-test"}


def test_ready_requires_a_shared_file(start_app: Callable[..., App], tmp_path: Path) -> None:
    needed = tmp_path / "shared" / "db-up"
    app = start_app(env={"READY_REQUIRES": str(needed)})
    assert (app.get("/health/ready").status_code, app.get("/health/live").status_code) == (
        503,
        200,
    )
    needed.parent.mkdir()
    needed.write_text("")
    assert app.get("/health/ready").status_code == 200  # checked on every request
    needed.unlink()
    assert app.get("/health/ready").json() == {"status": "not-ready"}


def test_fault_crash_after(start_app: Callable[..., App]) -> None:
    app = start_app(env={"FAULT": "crash_after:1"})
    assert app.get("/health/ready").status_code == 200
    assert app.wait_exit(10) == 1
    assert "crash_after" in app.stderr


def test_fault_wrong_contract(start_app: Callable[..., App]) -> None:
    app = start_app(env={"FAULT": "wrong_contract", "RELEASE_ID": "bad-rel"})
    body = app.get("/api/items").json()
    assert "items" not in body
    assert body["data"][0] == {"id": "1", "title": "anvil"}
    version = app.get("/version").json()
    assert (version["name"], version["release"]) == ("sampleapp", "bad-rel")
    assert app.get("/health/ready").status_code == 200


def test_fault_wrong_version(start_app: Callable[..., App]) -> None:
    """A stale build: healthy and ready, but it reports a version it was not given."""
    app = start_app(env={"FAULT": "wrong_version", "RELEASE_ID": "new-rel", "REVISION": "f" * 40})
    r = app.get("/version")
    assert r.json()["release"] != "new-rel" and r.json()["revision"] != "f" * 40
    assert r.headers["x-release-id"] == r.json()["release"]
    assert r.headers["x-revision"] == r.json()["revision"]
    ready = app.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["release"] != "new-rel"


def test_fault_env_overrides_file(start_app: Callable[..., App], app_dir: Path) -> None:
    write_fault(app_dir, "boot_crash")
    app = start_app(env={"FAULT": "wrong_contract"})
    assert "data" in app.get("/api/items").json()


def test_fault_unknown_value_runs_healthy(start_app: Callable[..., App], app_dir: Path) -> None:
    write_fault(app_dir, "explode_sometimes")
    app = start_app()
    assert app.get("/health/ready").status_code == 200
    assert "explode_sometimes" in app.stderr and "warning" in app.stderr
    assert "fault none)" in app.stdout


# ------------------------------------------------------------- shutdown --


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_idle_keepalive(
    start_app: Callable[..., App], sig: signal.Signals
) -> None:
    app = start_app()
    client = app.client()  # holds an idle keep-alive connection open
    assert client.get("/health/live").status_code == 200
    started = time.monotonic()
    app.proc.send_signal(sig)
    assert app.wait_exit(6) == 0
    assert time.monotonic() - started < 5


def test_graceful_shutdown_finishes_in_flight_request(start_app: Callable[..., App]) -> None:
    app = start_app()
    body = b'{"name":"late","price_cents":1}'
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:5]
        )
        # A round trip on a later connection: node accepts connections in order, so
        # by now the POST's connection is accepted and its headers have been read.
        assert app.get("/health/live").status_code == 200
        app.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "received SIGTERM" in app.stdout, 5, what="shutdown log line")
        sock.sendall(body[5:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201")
    assert b"connection: close" in head.lower()
    assert b'"name":"late"' in payload
    assert app.wait_exit(6) == 0


def test_no_fault_file_in_repo() -> None:
    """A stray FAULT file in the source tree would break every deploy of it."""
    assert not (APP_SRC / "FAULT").exists()
