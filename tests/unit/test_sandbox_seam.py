"""The sandbox seam: which provider `sandbox up` picks, and what down/status follow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy import sandbox
from deploy.sandbox import SandboxError, SandboxSpec, state
from tests.unit.conftest import sandbox_record


def test_root_on_linux_gets_namespaces_anyone_else_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert sandbox.default_provider() == "namespaces"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert sandbox.default_provider() == "docker"


def test_an_unknown_provider_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(
        SandboxError, match=r"Unknown sandbox provider 'vagrant'.*namespaces, docker"
    ):
        sandbox.up(SandboxSpec(state_root=tmp_path), provider_name="vagrant")


def test_down_and_status_follow_the_provider_the_record_names(tmp_path: Path) -> None:
    spec = SandboxSpec(name="rgx", state_root=tmp_path)
    assert state.recorded_provider(spec) is None
    sandbox_record(tmp_path, name="rgx", provider="docker", address="127.0.0.1", port=32770)
    assert state.recorded_provider(spec) == "docker"
    assert state.read(spec).port == 32770
    state.clear(spec)
    assert state.recorded_provider(spec) is None
