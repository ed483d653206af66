"""Unit-test fixtures shared by several files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.sandbox import SandboxInfo, SandboxSpec, state
from deploy.sandbox.hosts import STATE_ROOT_ENV


def sandbox_record(root: Path, name: str = "rg-local", **changes: object) -> SandboxInfo:
    """Write the record a running sandbox leaves (what `sandbox up` writes) under `root`."""
    spec = SandboxSpec(name=name, state_root=root)
    state_dir = root / name
    state_dir.mkdir(parents=True, exist_ok=True)
    fields: dict[str, object] = {
        "name": name,
        "address": "10.231.5.2",
        "port": 22,
        "user": "deploy",
        "identity_file": state_dir / "id_ed25519",
        "known_hosts": state_dir / "known_hosts",
        "pid1": 4242,
        "state_dir": state_dir,
    }
    fields.update(changes)
    info = SandboxInfo(**fields)  # type: ignore[arg-type]
    state.write(spec, info)
    return info


@pytest.fixture(autouse=True)
def rg_local_up(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The shipped local inventories name the sandbox rg-local: unit tests see it "up" (a
    record in a throwaway state root), never a real sandbox of this machine."""
    root = tmp_path_factory.mktemp("sandbox-records")
    sandbox_record(root)
    monkeypatch.setenv(STATE_ROOT_ENV, str(root))
    yield root
