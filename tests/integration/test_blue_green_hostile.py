"""Blue/green when the front door's host is not as releasegate left it: the upstream file
deleted or pointed at the other slot by hand, nginx stopped, a Ctrl-C between the switch and
the end of the bake, two deploys at once. What is asserted is what a user sees afterwards: the
front door's real answers, nginx's real upstream file, the lock free."""

from __future__ import annotations

import json
import shlex
import signal
from collections.abc import Iterator

import pytest

from deploy.sandbox import SandboxInfo
from tests.conftest import wait_until
from tests.integration.test_blue_green import (
    HEALTH,
    STRATEGY,
    App,
    _bg_app,
    _slot_at,
    cli,
    new_commit,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def door(vps: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with _bg_app(vps, tmp_path_factory.mktemp("bgh")) as app:
        yield app


@pytest.fixture
def app(door: App) -> App:
    """The module's app with test_blue_green's default settings, whatever a test changed."""
    door.configure(health=dict(HEALTH), strategy=json.loads(json.dumps(STRATEGY)))
    door.configure(process={"instances": 2})
    return door


def consistent(app: App, rid: str) -> None:
    """`rid` serves through the front door, alone in the upstream file, `current`, lock free."""
    assert app.live() == rid
    assert app.t.current() == rid
    up = app.upstream()
    assert up is not None and up.backup is None, up
    assert app.slot_links().get(_slot_at(app.slots, up.live) or "") == rid
    assert not app.t.lock_exists()


def test_an_upstream_file_deleted_by_hand_is_a_clear_preflight_stop(app: App):
    good = app.good()
    saved = app.t.ssh(f"cat {app.paths.upstream}").stdout
    app.t.ssh(f"rm -f {app.paths.upstream}")
    try:
        code, rep = app.deploy()
    finally:
        app.t.ssh(f"printf %s {shlex.quote(saved)} > {app.paths.upstream}")
    text = "\n".join(rep.lines)
    assert code == 5, text
    assert "upstream" in text and "releasegate setup test" in text, text
    assert app.live() == good and not app.t.lock_exists()


def test_an_upstream_pointed_at_the_idle_slot_by_hand_stops_the_deploy(app: App):
    """The file names the idle (empty) slot, nginx not reloaded: it still sends every request
    to the live one. The deploy used to start the new release over the slot that serves
    (94 of 724 requests answered 502); it must stop, exit 5, nothing changed."""
    good = app.good()
    up = app.upstream()
    assert up is not None
    other = next(p for p in app.slots.values() if p != up.live)
    saved = app.t.ssh(f"cat {app.paths.upstream}").stdout
    app.t.ssh(f"sed -i 's/127.0.0.1:{up.live}/127.0.0.1:{other}/' {app.paths.upstream}")
    try:
        with app.traffic() as seen:
            code, rep = app.deploy()
    finally:
        app.t.ssh(f"printf %s {shlex.quote(saved)} > {app.paths.upstream}")
    text = "\n".join(rep.lines)
    assert code == 5, text
    assert "changed outside releasegate" in text and f"server 127.0.0.1:{up.live};" in text, text
    assert seen.failed == [], (seen.line(), seen.failed[:3])
    assert seen.releases() == {good}
    consistent(app, good)
    assert app.slot_apps().keys() == {_slot_at(app.slots, up.live)}
    # with the file put back, the next deploy goes through
    code, rep = app.deploy()
    assert code == 0, "\n".join(rep.lines)
    consistent(app, str(rep.outcomes[-1].release))


def test_nginx_not_running_stops_the_deploy_before_anything_changes(app: App):
    good = app.good()
    root = app.t.root
    view = f"cat {root}/.releasegate/journal.jsonl; ls -A {root}/releases; readlink {root}/current"
    before = app.t.ssh(view).stdout
    app.as_root("systemctl stop nginx")
    try:
        code, rep = app.deploy()
    finally:
        app.as_root("systemctl start nginx")
    text = "\n".join(rep.lines)
    assert code == 5, text
    assert "nginx" in text, text
    assert app.t.ssh(view).stdout == before and not app.t.lock_exists()
    assert app.live() == good


def test_ctrl_c_after_the_switch_leaves_a_healthy_front_door_and_a_free_lock(app: App):
    good = app.good()
    app.configure(strategy={"bake": {"seconds": 60}})
    new_commit(app)
    run = cli(app, "deploy", "test")
    wait_until(
        lambda: (u := app.upstream()) is not None and u.backup is not None,
        90,
        "the switch",
    )
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=120)
    assert "Traceback" not in output, output
    assert run.returncode != 0, output
    live = app.live()
    assert live is not None, output
    consistent(app, live)
    assert app.t.state_of(live) == "good" or live == good, output


def test_two_deploys_at_once_one_waits_or_refuses_the_front_door_stays_healthy(app: App):
    app.good()
    new_commit(app)
    first = cli(app, "deploy", "test")
    second = cli(app, "deploy", "test")
    out1, _ = first.communicate(timeout=240)
    out2, _ = second.communicate(timeout=240)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 4], (out1, out2)
    assert "Traceback" not in out1 + out2
    live = app.live()
    assert live is not None
    consistent(app, live)
