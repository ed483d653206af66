"""Docker provider: the sandbox VPS as a container, on any machine with a Docker engine.

The image (image.py) boots systemd as PID 1 with sshd, nginx, the ``deploy`` user with its
lingering user manager, Node/npm/PM2 and the same sudo allowlist as the namespaces provider.
Each sandbox is one container on a network of its own (10.231.<index>.0/24, container .2);
SSH is published on 127.0.0.1 only. Keys are made and pinned as the namespaces provider does:
the client key and the sandbox's own host key live in the state dir and are copied into the
container before it starts, so known_hosts pins a key we generated ourselves.

Talks to the engine through the Docker SDK for Python; root is not needed, only access to
the engine.
"""

from __future__ import annotations

import io
import ipaddress
import tarfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from deploy.sandbox import image
from deploy.sandbox.base import (
    Log,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
    ensure_keys,
    locked,
    nolog,
    sshd_answers,
    validate,
    wait_system_running,
    wait_until,
)

__all__ = ["down", "status", "up"]

BOOT_TIMEOUT = 120.0
STOP_TIMEOUT = 20
LOOPBACK = "127.0.0.1"
# What systemd needs as PID 1 of a container (mounts), asked for by name: --privileged is refused on
# machines whose bounding set lacks some capabilities.
CAPABILITIES = ["SYS_ADMIN"]
TMPFS = {"/run": "mode=755,exec", "/run/lock": "mode=1777", "/tmp": "mode=1777,exec"}


def _container_name(spec: SandboxSpec) -> str:
    return f"releasegate-{spec.name}"


def _subnet(spec: SandboxSpec) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.231.{spec.index}.0/24")


def _state_dir(spec: SandboxSpec) -> Path:
    return spec.state_root / spec.name


def engine() -> Any:
    """A Docker SDK client of an engine that answers, or SandboxError with the fix."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a dependency of releasegate
        raise SandboxError(
            "The docker provider needs the Docker SDK for Python: pip install docker."
        ) from exc
    try:
        engine = docker.from_env(timeout=120)
        engine.ping()
    except Exception as exc:  # docker.errors.DockerException and socket errors alike
        raise SandboxError(
            f"The Docker engine does not answer ({exc}). Start it: on Linux `bash "
            "scripts/setup.sh` installs and starts it (or `systemctl start docker`); elsewhere "
            "start Docker Desktop. DOCKER_HOST names another engine."
        ) from exc
    return engine


# --------------------------------------------------------------------------- public API


def up(spec: SandboxSpec, log: Log = nolog, timeout: float = BOOT_TIMEOUT) -> SandboxInfo:
    """Start the sandbox container (or return the running one) and wait until systemd booted."""
    validate(spec)
    client = engine()
    state = _state_dir(spec)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    with locked(state):
        running = _status(client, spec)
        if running is not None:
            log(f"sandbox {spec.name} is already up at {running.address}:{running.port}")
            return running
        if _leftovers(client, spec):
            log(f"sandbox {spec.name}: removing leftovers of an earlier run")
            _teardown(client, spec, log)
        _ensure_keys(spec, log)
        tag = image.ensure(client, spec.user, log)
        start = time.monotonic()
        try:
            info = _start(client, spec, tag, log, start + timeout)
        except BaseException as exc:  # also Ctrl-C: never leave a half-built sandbox behind
            logs = _container_logs(client, spec)
            try:
                _teardown(client, spec, log)
            except SandboxError as cleanup_exc:
                log(f"cleanup after failed boot also failed: {cleanup_exc}")
            if not isinstance(exc, Exception):
                raise
            what = str(exc) if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}"
            raise SandboxError(
                f"{what}\nThe partly started sandbox was removed. Last lines of its output:\n{logs}"
            ) from exc
        log(f"sandbox {spec.name}: up after {time.monotonic() - start:.2f}s")
        return info


def down(spec: SandboxSpec, log: Log = nolog) -> None:
    """Remove the container, its network and its volumes; keys and known_hosts are kept."""
    validate(spec)
    client = engine()
    state = _state_dir(spec)
    if not state.is_dir():
        _teardown(client, spec, log)
        return
    with locked(state):
        _teardown(client, spec, log)


def status(spec: SandboxSpec) -> SandboxInfo | None:
    """The running sandbox's info, or None unless its container runs and sshd answers."""
    validate(spec)
    return _status(engine(), spec)


# --------------------------------------------------------------------------- internals


def _status(client: Any, spec: SandboxSpec) -> SandboxInfo | None:
    container = _find(client.containers, spec)
    if container is None or container.status != "running":
        return None
    info = _info(container, spec)
    if info is None or not sshd_answers(info.address, info.port, 1.0):
        return None
    return info


def _find(collection: Any, spec: SandboxSpec) -> Any:
    import docker.errors

    try:
        found = collection.get(_container_name(spec))
    except docker.errors.NotFound:
        return None
    labels = (found.attrs.get("Config") or {}).get("Labels") or found.attrs.get("Labels") or {}
    if labels.get(image.LABEL) != spec.name:
        raise SandboxError(
            f"A Docker {type(found).__name__.lower()} named {_container_name(spec)!r} exists but "
            f"was not made by releasegate's sandbox {spec.name!r}. Choose another sandbox name, "
            f"or remove it (docker rm -f / docker network rm {_container_name(spec)})."
        )
    return found


def _info(container: Any, spec: SandboxSpec) -> SandboxInfo | None:
    ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    published = [p for p in ports.get("22/tcp") or [] if p.get("HostIp") == LOOPBACK]
    if not published:
        return None
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    own = networks.get(_container_name(spec)) or {}
    state = _state_dir(spec)
    return SandboxInfo(
        name=spec.name,
        address=LOOPBACK,
        port=int(published[0]["HostPort"]),
        user=spec.user,
        identity_file=state / "id_ed25519",
        known_hosts=state / "known_hosts",
        pid1=int((container.attrs.get("State") or {}).get("Pid") or 0),
        state_dir=state,
        provider="docker",
        services_at=own.get("IPAddress") or None,
    )


def _start(client: Any, spec: SandboxSpec, tag: str, log: Log, deadline: float) -> SandboxInfo:
    import docker.types

    name = _container_name(spec)
    subnet = _subnet(spec)
    _check_subnet_free(spec, subnet)
    labels = {image.LABEL: spec.name}
    client.networks.create(
        name,
        driver="bridge",
        labels=labels,
        ipam=docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=str(subnet[1]))]
        ),
    )
    container = client.containers.create(
        tag,
        name=name,
        hostname=spec.name,
        labels=labels,
        network=name,
        ports={"22/tcp": (LOOPBACK, None)},
        cap_add=CAPABILITIES,
        cgroupns="private",
        tmpfs=TMPFS,
        security_opt=["apparmor=unconfined", "seccomp=unconfined"],
        environment={"container": "docker"},
        stop_signal="SIGRTMIN+3",
        detach=True,
    )
    container.put_archive("/", _keys_archive(spec))
    container.start()
    container.reload()
    info = _info(container, spec)
    if info is None:
        raise SandboxError(f"Docker did not publish SSH of {name} on {LOOPBACK}.")
    _write_known_hosts(spec, info)
    log(
        f"sandbox {spec.name}: container {container.short_id} started, SSH on "
        f"{info.address}:{info.port}"
    )
    while not sshd_answers(info.address, info.port, 0.5):
        container.reload()
        if container.status != "running":
            raise SandboxError(f"The sandbox container exited while booting ({container.status}).")
        if time.monotonic() > deadline:
            raise SandboxError(
                f"Timed out waiting for sshd in the sandbox container on {info.address}:"
                f"{info.port}."
            )
        time.sleep(0.1)
    state = wait_system_running(info, deadline, info.state_dir)
    log(f"sandbox {spec.name}: systemd {state}")
    return info


def _check_subnet_free(spec: SandboxSpec, subnet: ipaddress.IPv4Network) -> None:
    """Refuse a subnet this machine already routes (e.g. a namespaces sandbox of the same
    index): Docker would create the network anyway, and SSH through the published port
    would then reach whichever host the kernel routes to."""
    for device, network in _local_routes():
        if network.overlaps(subnet):
            raise SandboxError(
                f"Subnet {subnet} for sandbox {spec.name!r} is already in use on this machine "
                f"({network} on {device}), possibly by another sandbox. Choose another index "
                "(1-254), or stop whatever uses that subnet."
            )


def _local_routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    # Only meaningful when the engine runs on this Linux machine; elsewhere (Docker Desktop's
    # VM) the engine's own overlap check is what there is.
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return []
    routes = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] == "00000000":
            continue
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        routes.append((fields[0], ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)))
    return routes


def _leftovers(client: Any, spec: SandboxSpec) -> bool:
    return _find(client.containers, spec) is not None or _find(client.networks, spec) is not None


def _teardown(client: Any, spec: SandboxSpec, log: Log) -> None:
    import docker.errors

    container = _find(client.containers, spec)
    if container is not None:
        start = time.monotonic()
        try:
            if container.status == "running":
                container.stop(timeout=STOP_TIMEOUT)  # SIGRTMIN+3: systemd powers off cleanly
            container.remove(v=True, force=True)  # v: its anonymous volumes too
        except docker.errors.NotFound:
            pass
        log(f"sandbox {spec.name}: container removed after {time.monotonic() - start:.2f}s")
    network = _find(client.networks, spec)
    if network is not None:
        with suppress(docker.errors.NotFound):
            network.remove()
    if not wait_until(lambda: not _leftovers(client, spec), 10):
        raise SandboxError(
            f"Sandbox {spec.name!r}: container or network {_container_name(spec)} is still "
            "there after removal; remove it with docker rm -f / docker network rm."
        )
    log(f"sandbox {spec.name} is down")


def _container_logs(client: Any, spec: SandboxSpec) -> str:
    try:
        container = _find(client.containers, spec)
        if container is None:
            return "(no container)"
        text = container.logs(tail=40).decode(errors="replace").strip()
    except Exception as exc:  # the engine itself may be what failed
        return f"(no logs: {exc})"
    return text or "(empty)"


# --------------------------------------------------------------------------- keys


def _ensure_keys(spec: SandboxSpec, log: Log) -> None:
    state = _state_dir(spec)
    keys = ((state / "id_ed25519", "client"), (state / "ssh_host_ed25519_key", "host"))
    ensure_keys(keys, spec.name, log)


def _keys_archive(spec: SandboxSpec) -> bytes:
    """Host key pair and authorized keys of deploy and root, as a tar to extract at /."""
    state = _state_dir(spec)
    client_pub = (state / "id_ed25519.pub").read_bytes()
    host_key = state / "ssh_host_ed25519_key"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (
            ("etc/ssh/ssh_host_ed25519_key", host_key.read_bytes(), 0o600),
            ("etc/ssh/ssh_host_ed25519_key.pub", host_key.with_suffix(".pub").read_bytes(), 0o644),
            (f"etc/ssh/authorized_keys/{spec.user}", client_pub, 0o644),
            ("etc/ssh/authorized_keys/root", client_pub, 0o644),
        ):
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), mode
            tar.addfile(member, io.BytesIO(data))
    return buf.getvalue()


def _write_known_hosts(spec: SandboxSpec, info: SandboxInfo) -> None:
    # We generated the host key ourselves, so trusting it needs no first-connection leap. The
    # published port changes with each container, so the pin is rewritten on every up.
    key_type, blob = (_state_dir(spec) / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    lines = [f"[{info.address}]:{info.port} {key_type} {blob}"]
    if info.services_at:
        lines.append(f"{info.services_at} {key_type} {blob}")
    info.known_hosts.write_text("\n".join(lines) + "\n")
