"""The docker provider's image: one recipe, built once and cached under a hash of the recipe.

The recipe is a Dockerfile over a Debian 12 base plus the sandbox's own setup script
(image_setup.sh). Where no image registry is reachable the base is built from Debian packages
with debootstrap (root, Linux) and imported; elsewhere it is ``debian:bookworm``. Node, npm and
PM2 are this machine's own when it has them (the namespaces provider runs the same ones; no
registry needed), otherwise the build installs them from Debian and npm.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from deploy.sandbox.base import Log, SandboxError, sudoers_text

REPOSITORY = "releasegate-sandbox"
BASE_REPOSITORY = "releasegate-sandbox-base"
LABEL = "dev.releasegate.sandbox"
SETUP_SCRIPT = Path(__file__).with_name("image_setup.sh")
SUITE = "bookworm"
# Debian packages of the sandbox VPS (the same programs the namespaces provider borrows from
# this machine). nodejs/npm only when this machine has no Node to copy in.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "dbus-user-session",
    "libpam-systemd",
    "openssh-server",
    "sudo",
    "nginx",
    "iproute2",
    "procps",
    "curl",
    "python3-minimal",
    "postgresql",  # the sample app's real database (docs/design.md, "Migrations")
)
PM2_VERSION = "7.0.4"
# Where no registry is reachable, the env var names a local mirror to debootstrap from.
DEFAULT_MIRROR = "http://deb.debian.org/debian"

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
ARG PACKAGES
ARG PM2_VERSION
ENV container=docker
# A debootstrapped base has the packages already; debian:bookworm gets them from apt.
RUN command -v sshd >/dev/null 2>&1 || command -v /usr/sbin/sshd >/dev/null 2>&1 || \\
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\
     --no-install-recommends $PACKAGES && rm -rf /var/lib/apt/lists/*)
COPY node/ /usr/local/
RUN [ -x /usr/local/bin/node ] || \\
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\
     --no-install-recommends nodejs npm && npm install -g pm2@$PM2_VERSION && \\
     rm -rf /var/lib/apt/lists/*)
COPY image_setup.sh sudoers user /tmp/rg/
RUN bash /tmp/rg/image_setup.sh && rm -rf /tmp/rg
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
"""


def ensure(client: Any, user: str, log: Log) -> str:
    """The tag of the sandbox image for `user`, built first if this recipe was never built."""
    node = _host_node()
    recipe = _recipe_hash(user, node)
    tag = f"{REPOSITORY}:{recipe}"
    if _exists(client, tag):
        return tag
    start = time.monotonic()
    base = _base(client, log)
    log(f"sandbox image {tag}: building on {base} (once per recipe)")
    with tempfile.TemporaryDirectory(prefix="rg-sandbox-ctx-") as tmp:
        context = _context(Path(tmp), user, node)
        try:
            client.images.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                buildargs={
                    "BASE": base,
                    "PACKAGES": " ".join(PACKAGES),
                    "PM2_VERSION": PM2_VERSION,
                },
                labels={LABEL: "image"},
                rm=True,
                forcerm=True,
                network_mode="none" if node else None,
            )
        except Exception as exc:  # docker.errors.BuildError / APIError
            log_lines = "".join(
                str(chunk.get("stream", "")) for chunk in getattr(exc, "build_log", [])
            )
            raise SandboxError(
                f"Building the sandbox image {tag} failed: {exc}\n{log_lines[-3000:]}"
            ) from exc
        finally:
            context.close()
    log(f"sandbox image {tag}: built in {time.monotonic() - start:.1f}s")
    return tag


def _exists(client: Any, ref: str) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def _base(client: Any, log: Log) -> str:
    """A Debian 12 base image: debootstrapped here when possible, else debian:bookworm."""
    explicit = os.environ.get("RELEASEGATE_SANDBOX_BASE")
    if explicit:
        return explicit
    if not (platform.system() == "Linux" and os.geteuid() == 0 and shutil.which("debootstrap")):
        return f"debian:{SUITE}"
    mirror = os.environ.get("RELEASEGATE_SANDBOX_MIRROR", DEFAULT_MIRROR)
    tag = f"{BASE_REPOSITORY}:{_digest([SUITE, mirror, *PACKAGES])}"
    if _exists(client, tag):
        return tag
    start = time.monotonic()
    log(f"sandbox base {tag}: debootstrap {SUITE} from {mirror} (once)")
    with tempfile.TemporaryDirectory(prefix="rg-sandbox-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp, "rootfs")
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise SandboxError(
                f"debootstrap of the sandbox's Debian base failed (status {result.returncode}); "
                f"check that {mirror} is reachable (RELEASEGATE_SANDBOX_MIRROR names another "
                f"mirror):\n{(result.stdout + result.stderr)[-2000:]}"
            )
        log(f"sandbox base: debootstrap took {time.monotonic() - start:.1f}s; importing")
        tarball = Path(tmp, "rootfs.tar")
        with tarfile.open(tarball, "w") as tar:
            tar.add(rootfs, arcname=".", filter=_rootfs_member)
        repository, _, version = tag.partition(":")
        with open(tarball, "rb") as data:
            client.api.import_image_from_data(data, repository=repository, tag=version)
    log(f"sandbox base {tag}: ready after {time.monotonic() - start:.1f}s")
    return tag


def _rootfs_member(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    # Runtime mounts and apt's download cache do not belong in an image.
    for skip in ("./proc/", "./sys/", "./dev/", "./var/cache/apt/archives/"):
        if info.name.startswith(skip) and info.name != skip.rstrip("/"):
            return None
    return info


def _host_node() -> tuple[Path, Path] | None:
    """This machine's node binary and its global node_modules (npm, pm2), if usable on Linux."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    node = shutil.which("node", path="/usr/local/bin:/usr/bin")
    if node is None:
        return None
    modules = Path(node).resolve().parent.parent / "lib" / "node_modules"
    if not (modules / "npm").is_dir() or not (modules / "pm2").is_dir():
        return None
    return Path(node).resolve(), modules


def _recipe_hash(user: str, node: tuple[Path, Path] | None) -> str:
    parts = [DOCKERFILE, SETUP_SCRIPT.read_text(), sudoers_text(user), user, *PACKAGES]
    if node is not None:
        binary, modules = node
        stat = binary.stat()
        parts += [str(stat.st_size), str(int(stat.st_mtime))]
        for name in ("npm", "pm2"):
            parts.append((modules / name / "package.json").read_text())
    else:
        parts.append(f"pm2@{PM2_VERSION}")
    return _digest(parts)


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _context(tmp: Path, user: str, node: tuple[Path, Path] | None) -> io.BufferedRandom:
    """The build context as a tar file: Dockerfile, setup script, sudoers, node/ tree."""
    path = tmp / "context.tar"
    with tarfile.open(path, "w") as tar:
        _add_bytes(tar, "Dockerfile", DOCKERFILE.encode())
        _add_bytes(tar, "image_setup.sh", SETUP_SCRIPT.read_bytes(), 0o755)
        _add_bytes(tar, "sudoers", sudoers_text(user).encode(), 0o440)
        _add_bytes(tar, "user", user.encode())
        node_dir = tarfile.TarInfo("node")
        node_dir.type = tarfile.DIRTYPE
        node_dir.mode = 0o755
        tar.addfile(node_dir)
        if node is not None:
            binary, modules = node
            tar.add(binary, arcname="node/bin/node")
            for name in ("npm", "pm2"):
                tar.add(modules / name, arcname=f"node/lib/node_modules/{name}")
    return open(path, "rb+")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))
