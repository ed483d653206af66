"""The wheel, as a new user gets it: built from this tree without packaging warnings,
installed into a fresh virtualenv outside the checkout (with constraints.txt), then
`releasegate --version`, `init`, `ci github` and `smoke --base-url` against a local server,
run from an app repository that has nothing of releasegate's source."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import git

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    res = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin directory, the wheel)."""
    where = tmp_path_factory.mktemp("wheel")
    build = run(
        sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", where / "dist", ROOT,
        cwd=where,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    log = build.stdout + build.stderr
    for warning in ("Package would be ignored", "is absent from the `packages` configuration"):
        assert warning not in log, [line for line in log.splitlines() if warning in line][:5]
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch directory
    (wheel,) = (where / "dist").glob("releasegate-*.whl")
    venv = where / "venv"
    assert run(sys.executable, "-m", "venv", venv, cwd=where).returncode == 0
    pip = run(
        venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt",
        wheel, cwd=where,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return venv / "bin", wheel


@pytest.fixture
def health_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/health/ready"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}' if ok else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_wheel_installs_and_runs_outside_the_checkout(
    installed: tuple[Path, Path], tmp_path: Path, health_server: str
):
    bin_dir, wheel = installed
    app = tmp_path / "shop"
    app.mkdir()
    git(app, "init", "-q", "-b", "main")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }

    def releasegate(*args: str | Path):
        return run(bin_dir / "releasegate", "--plain", *args, cwd=app, env=env)

    # the code that runs is the installed copy, and every module of it imports
    probe = run(
        bin_dir / "python",
        "-c",
        "import importlib, pkgutil, deploy, smoke\n"
        "for pkg in (deploy, smoke):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(deploy.__file__)",
        cwd=app,
        env=env,
    )
    assert probe.returncode == 0, probe.stderr
    assert str(ROOT) not in probe.stdout and str(bin_dir.parent) in probe.stdout

    helped = run(bin_dir / "releasegate", "--help", cwd=app, env=env)
    assert helped.returncode == 0 and "PM2" in helped.stdout, helped.stderr
    version = run(bin_dir / "releasegate", "--version", cwd=app, env=env)
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr

    made = releasegate("init", "--host", "127.0.0.1")
    assert made.returncode == 0, made.stdout + made.stderr
    assert (app / "inventories" / "prod.yml").is_file() and (app / "smoke" / "health.yml").is_file()

    # the workflows install the wheel committed to the app repository
    (app / "ci").mkdir()
    shutil.copy(wheel, app / "ci" / wheel.name)
    wrote = releasegate("ci", "github", "--env", "prod", "--install", f"./ci/{wheel.name}")
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    workflow = (app / ".github" / "workflows" / "releasegate-prod.yml").read_text()
    assert f"./ci/{wheel.name}" in workflow

    smoked = releasegate("smoke", "--base-url", health_server, "smoke/health.yml")
    assert smoked.returncode == 0, smoked.stdout + smoked.stderr
    assert "1/1 passed" in smoked.stdout

    # an error names a reference file the user has: the installed example.yml
    missing = releasegate("deploy", "staging")
    assert missing.returncode == 2
    named = re.findall(r"(/\S+/example\.yml)", missing.stderr)
    assert named and Path(named[0]).is_file() and str(ROOT) not in named[0], missing.stderr


def test_the_demo_finds_its_app_and_environment_in_the_installed_wheel(
    installed: tuple[Path, Path], tmp_path: Path
):
    """`releasegate demo` from the wheel, in a directory with nothing of releasegate's: it finds
    the sample app and inventories/local.yml installed with it, copies the app into a git
    repository and checks the environment, and stops only at booting the sandbox (a Docker
    engine that does not exist here, under a sandbox name nothing else uses: no sandbox is
    booted, so it collides with nothing; the real demo from the wheel is the opt-in test
    below, from the checkout it is tests/integration/test_demo.py)."""
    bin_dir, _ = installed
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }
    res = run(
        bin_dir / "releasegate", "--plain", "demo", "--provider", "docker", "--sandbox",
        "rgwhlchk:56", cwd=tmp_path, env=env, timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    app = re.search(r"sample app (\S+), environment (\S+)", out)
    assert app, out
    site = str(bin_dir.parent)
    for shipped in app.groups():
        assert shipped.startswith(site) and str(ROOT) not in shipped, out
    sample = Path(app[1])
    for name in ("server.js", "package.json", "smoke.yml", "db/migrate.js"):
        assert (sample / name).is_file(), name
    assert list((sample / "vendor").glob("*.tgz")) and list((sample / "db/migrations").glob("*"))
    assert "sandbox up" in out and "Docker engine does not answer" in out, out


def test_the_demo_runs_from_the_installed_wheel(installed: tuple[Path, Path], tmp_path: Path):
    """The whole demo from the installed wheel, outside the checkout, on a sandbox of its own
    (rgwhl:19 unless RELEASEGATE_WHEEL_DEMO_SANDBOX=NAME:INDEX names another): the shipped app
    deploys, is gated and promoted, the two bad releases are rejected."""
    from deploy import sandbox

    bin_dir, _ = installed
    where = os.environ.get("RELEASEGATE_WHEEL_DEMO_SANDBOX", "rgwhl:19")
    name, _, index = where.partition(":")
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}
    try:
        res = run(
            bin_dir / "releasegate", "--plain", "demo", "--sandbox", where,
            cwd=tmp_path, env=env, timeout=900,
        )
    finally:
        sandbox.down(sandbox.SandboxSpec(name=name, index=int(index)))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "demo passed" in res.stdout and str(ROOT) not in res.stdout, out[-6000:]
