"""The sandbox VPS: a throwaway local host to rehearse deploys on (docs/sandbox.md).

One interface, one module per provider: ``up`` boots a sandbox (or returns the running one),
``down`` removes every trace of it, ``status`` says whether it is up; each hands back a
``SandboxInfo`` (address, port, user, client key, pinned known_hosts).

- ``namespaces`` (namespaces.py + pid1.sh): this machine's own OS booted in Linux namespaces;
  needs root on Linux, boots in about a second.
- ``docker`` (docker.py + image.py + image_setup.sh): a container from an image built once
  from Debian packages; needs a Docker engine, not root.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Protocol, cast

from deploy.sandbox import state
from deploy.sandbox.base import (
    SYSTEMD_EXAMPLE_APP,
    SYSTEMD_EXAMPLE_ROOT,
    Log,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
    nolog,
    sudoers_text,
)

__all__ = [
    "PROVIDERS",
    "SYSTEMD_EXAMPLE_APP",
    "SYSTEMD_EXAMPLE_ROOT",
    "SandboxError",
    "SandboxInfo",
    "SandboxSpec",
    "default_provider",
    "down",
    "status",
    "sudoers_text",
    "up",
]

PROVIDERS = ("namespaces", "docker")


class Provider(Protocol):
    def up(self, spec: SandboxSpec, log: Log = ..., timeout: float = ...) -> SandboxInfo: ...

    def down(self, spec: SandboxSpec, log: Log = ...) -> None: ...

    def status(self, spec: SandboxSpec) -> SandboxInfo | None: ...


def default_provider() -> str:
    """The provider `sandbox up` uses when none is named: namespaces where it can run (root on
    Linux), docker everywhere else."""
    if sys.platform.startswith("linux") and os.geteuid() == 0:
        return "namespaces"
    return "docker"


def provider(name: str | None = None) -> Provider:
    """The provider module called `name` (the default one for None); imported on demand."""
    name = name or default_provider()
    if name not in PROVIDERS:
        raise SandboxError(f"Unknown sandbox provider {name!r}: use one of {', '.join(PROVIDERS)}.")
    return cast(Provider, importlib.import_module(f"deploy.sandbox.{name}"))


def up(
    spec: SandboxSpec,
    log: Log = nolog,
    timeout: float | None = None,
    *,
    provider_name: str | None = None,
) -> SandboxInfo:
    """Boot the sandbox (or return the running one) and wait until its systemd finished booting.

    Refuses a sandbox of the same name already up on another provider: both would share
    one state dir (keys, known_hosts) and one subnet.
    """
    name = provider_name or default_provider()
    other = state.recorded_provider(spec)
    if other is not None and other != name and _running_on(other, spec):
        raise SandboxError(
            f"Sandbox {spec.name!r} is already up on the {other} provider. Stop it first "
            f"(`releasegate sandbox down --name {spec.name}`) or use it as it is."
        )
    chosen = provider(name)
    info = chosen.up(spec, log) if timeout is None else chosen.up(spec, log, timeout)
    state.write(spec, info)
    return info


def _running_on(name: str, spec: SandboxSpec) -> bool:
    try:
        return provider(name).status(spec) is not None
    except SandboxError:  # e.g. its Docker engine is gone: then nothing of it runs
        return False


def down(spec: SandboxSpec, log: Log = nolog, *, provider_name: str | None = None) -> None:
    """Stop the sandbox and remove every runtime trace; keys and known_hosts are kept.

    Without a provider name, the one that started it (its record says) stops it.
    """
    provider(provider_name or state.recorded_provider(spec)).down(spec, log)
    state.clear(spec)


def status(spec: SandboxSpec, *, provider_name: str | None = None) -> SandboxInfo | None:
    """The running sandbox's info, or None unless it is up and its sshd answers."""
    return provider(provider_name or state.recorded_provider(spec)).status(spec)
