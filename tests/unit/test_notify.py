"""Notifications: which event each outcome is, the JSON and Slack payloads (redacted), and
delivery to a real HTTP receiver on 127.0.0.1 — of real outcomes of the flow against the
fake host. A webhook that fails is a warning and never changes the result."""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy import flow, notify
from deploy.artifact import Source
from deploy.deps import Deps
from deploy.inventory import NotifyConfig, WebhookConfig, parse
from deploy.model import Outcome
from deploy.redact import MASK, Redactor
from deploy.report import RecordingReporter
from tests.conftest import git
from tests.fakehost import FakeClock, FakeHost, FakeRemote, app_handler

CANARY = "canary-3b9f61d2-notify-secret"
URL_TOKEN = "T0CANARY/B0CANARY/hookcanary9a8b7c6d"  # the secret part of a webhook URL


class Receiver:
    """A real HTTP server on 127.0.0.1 in a thread. It records every request before it
    answers `status`; with `stall`, it answers only once the test is over."""

    def __init__(self, status: int = 200, stall: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = status
        self.stall = stall
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length).decode("utf-8"),
                    }
                )
                if receiver.stall:
                    receiver.released.wait(timeout=10)
                self.send_response(receiver.status)
                if 300 <= receiver.status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = f"/hooks/{URL_TOKEN}") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.requests]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just freed)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}/hooks/{URL_TOKEN}"


def outcome(**kw: Any) -> Outcome:
    values: dict[str, Any] = {
        "op": "deploy",
        "result": "promoted",
        "exit_code": 0,
        "release": "20261122120000-abc1234",
        "live": "20261122120000-abc1234",
        "message": "promoted 20261122120000-abc1234 on web1 (deploy@10.0.0.5:22)",
    }
    values.update(kw)
    return Outcome(**values)


CONTEXT = notify.Context(
    env="prod",
    app="shop",
    host="web1 (deploy@10.0.0.5:22)",
    actor="alice via GitHub Actions",
    at="2026-11-22T12:00:00+00:00",
    run_url="https://github.com/acme/shop/actions/runs/42",
)


def notice(event: str = "promoted", **kw: Any) -> notify.Notice:
    return notify.Notice(event=event, outcome=outcome(**kw), context=CONTEXT)


def hooks(
    *specs: tuple[str, str, str], timeout: float = 0.5, **env: str
) -> tuple[notify.Hook, ...]:
    """specs: (url_env, format, comma-separated events or ''). The short default timeout
    keeps the tests of a stalled receiver short; tests that count deliveries give more."""
    config = NotifyConfig(
        webhooks=tuple(
            WebhookConfig(
                url_env=name,
                format=fmt,  # type: ignore[arg-type]
                timeout=timeout,
                **({"events": tuple(events.split(","))} if events else {}),
            )
            for name, fmt, events in specs
        )
    )
    return notify.resolve(config, env)


# ---------------------------------------------------------------------------- deciding


@pytest.mark.parametrize(
    "result, code, event",
    [
        ("promoted", 0, "promoted"),
        ("rolled-back", 3, "rolled-back"),
        ("rolled-back", 0, "rolled-back"),  # a manual rollback that succeeded
        ("rolled-back", 143, "rolled-back"),  # SIGTERM after the switch: rolled back
        ("rollback-failed", 6, "rollback-failed"),
        ("rollback-impossible", 6, "rollback-failed"),
        ("error", 6, "rollback-failed"),  # HumanNeeded raised (lost SSH after activation …)
        ("error", 5, "aborted"),
        ("error", 4, "aborted"),
        ("error", 130, "aborted"),
        ("planned", 0, None),  # a dry run announces nothing
    ],
)
def test_event_of_each_outcome(result, code, event):
    assert notify.event_for(outcome(result=result, exit_code=code)) == event


def test_failed_checks_are_read_from_evidence_without_the_rollbacks_own_lines():
    evidence = (
        "smoke contract: 1/3 passed, 2 failed in 12 ms",
        "FAIL  items-list  GET /api/items  'items' is a required property",
        "ERROR version  GET /version  connection refused",
        "+  0.5s ok    200",
        "FAIL runtime node: v16 does not satisfy >=18 — fix: install node 18",
        "rollback: FAIL  items-list  GET /api/items  …",
    )
    assert notify.failed_checks(evidence) == evidence[1:3] + evidence[4:5]


def test_webhook_urls_are_read_from_the_environment_and_are_secrets():
    (hook, missing) = hooks(
        ("HOOK_URL", "json", ""),
        ("NOT_SET_HOOK", "slack", "rollback-failed"),
        HOOK_URL=f"https://hooks.example.com/services/{URL_TOKEN}",
    )
    assert hook.url == f"https://hooks.example.com/services/{URL_TOKEN}"
    assert hook.events == ("promoted", "rolled-back", "rollback-failed", "aborted")
    assert missing.url is None and missing.events == ("rollback-failed",)
    redact = Redactor(hook.secret_values())
    assert URL_TOKEN not in redact(f"POST /services/{URL_TOKEN} failed")
    assert "hooks.example.com" not in redact(str(hook.url))


def test_json_payload_has_the_outcome_and_masks_secrets():
    redact = Redactor([CANARY, 'quote"d-secret'])
    n = notice(
        "rolled-back",
        result="rolled-back",
        exit_code=3,
        release="20261122130000-bad0001",
        live="20261122120000-abc1234",
        message=f"20261122130000-bad0001 failed (smoke gate failed: token {CANARY})",
        evidence=(
            "smoke contract: 0/1 passed, 1 failed in 3 ms",
            f"FAIL  items-list  GET /api/items  got {CANARY}",
            'log: header quote"d-secret',
        ),
    )
    payload = notify.json_payload(n, redact)
    assert payload == {
        **payload,
        "source": "releasegate",
        "event": "rolled-back",
        "severity": "warning",
        "env": "prod",
        "app": "shop",
        "op": "deploy",
        "result": "rolled-back",
        "exit_code": 3,
        "release": "20261122130000-bad0001",
        "live": "20261122120000-abc1234",
        "failed_checks": [f"FAIL  items-list  GET /api/items  got {MASK}"],
        "run_url": "https://github.com/acme/shop/actions/runs/42",
    }
    text = json.dumps(payload)
    assert CANARY not in text and "quote" not in text  # masked before JSON escaped the quote
    assert payload["summary"] == "shop prod: deploy rolled-back (exit 3)"


def test_slack_text_is_loud_when_a_human_is_needed_and_escapes_control_characters():
    redact = Redactor([CANARY])
    loud = notify.slack_payload(
        notice(
            "rollback-failed",
            result="rollback-failed",
            exit_code=6,
            message=f"<b> & {CANARY} failed and the rollback failed too",
            evidence=("FAIL  ready  GET /health/ready  503",),
        ),
        redact,
    )
    assert set(loud) == {"text"}
    text = loud["text"]
    assert text.startswith(":rotating_light: <!channel> *HUMAN NEEDED*")
    assert "&lt;b&gt; &amp; ********" in text and CANARY not in text
    assert "• `FAIL  ready  GET /health/ready  503`" in text
    assert "<https://github.com/acme/shop/actions/runs/42|run>" in text
    quiet = notify.slack_payload(notice(), redact)["text"]
    assert quiet.startswith(":white_check_mark: *shop* `prod`: deploy *promoted* (exit 0)")
    assert "<!channel>" not in quiet


# ---------------------------------------------------------------------------- delivering


def test_delivered_to_a_real_receiver_as_json_and_slack(receiver: Receiver):
    rep = RecordingReporter()
    redact = Redactor([CANARY])
    hs = hooks(
        ("HOOK_URL", "json", ""),
        ("SLACK_URL", "slack", ""),
        timeout=10,
        HOOK_URL=receiver.url(),
        SLACK_URL=receiver.url(f"/slack/{URL_TOKEN}"),
    )
    for h in hs:
        redact.add(*h.secret_values())
    n = notice(message=f"promoted, token {CANARY}")
    assert notify.announce(hs, n, reporter=rep, redact=redact) == 2
    first, second = receiver.requests
    assert first["headers"]["Content-Type"] == "application/json"
    assert json.loads(first["body"])["event"] == "promoted"
    assert set(json.loads(second["body"])) == {"text"}
    for r in receiver.requests:
        assert CANARY not in r["body"] and URL_TOKEN not in r["body"]
    assert rep.lines == [
        "notified notify.webhooks[0] (HOOK_URL): promoted",
        "notified notify.webhooks[1] (SLACK_URL): promoted",
    ]


def test_only_subscribed_events_are_sent(receiver: Receiver):
    hs = hooks(("OPS_URL", "json", "rollback-failed"), timeout=10, OPS_URL=receiver.url())
    rep = RecordingReporter()
    assert notify.announce(hs, notice(), reporter=rep, redact=Redactor()) == 0
    assert receiver.requests == [] and rep.lines == []
    failed = notice("rollback-failed", result="rollback-failed", exit_code=6)
    assert notify.announce(hs, failed, reporter=rep, redact=Redactor()) == 1
    assert receiver.bodies()[0]["severity"] == "critical"


@pytest.mark.parametrize(
    "status, stall, words",
    [
        (500, False, "HTTP 500"),
        (302, False, "redirect, not followed"),
        (200, True, "no answer within 0.5s"),
    ],
)
def test_a_failing_receiver_is_a_warning_naming_the_variable_not_the_url(status, stall, words):
    with Receiver(status=status, stall=stall) as r:
        hs = hooks(("HOOK_URL", "json", ""), HOOK_URL=r.url())
        redact = Redactor(hs[0].secret_values())
        rep = RecordingReporter()
        assert notify.announce(hs, notice(), reporter=rep, redact=redact) == 0
        assert len(r.requests) == 1
    (line,) = rep.lines
    assert line.startswith("warning: notify.webhooks[0] (HOOK_URL): the promoted notification")
    assert words in line and "(exit 0) is unchanged" in line
    assert URL_TOKEN not in line and "127.0.0.1" not in line


def test_unset_variable_bad_url_and_closed_port_are_warnings():
    hs = hooks(
        ("NOT_SET_HOOK", "json", ""),
        ("FTP_HOOK", "json", ""),
        ("CLOSED_HOOK", "slack", ""),
        FTP_HOOK=f"ftp://example.com/{URL_TOKEN}",
        CLOSED_HOOK=closed_port_url(),
    )
    redact = Redactor([v for h in hs for v in h.secret_values()])
    rep = RecordingReporter()
    assert notify.announce(hs, notice(), reporter=rep, redact=redact) == 0
    unset, ftp, closed = rep.lines
    assert "NOT_SET_HOOK is not set here" in unset
    assert "FTP_HOOK does not hold an http(s):// URL" in ftp
    assert "ConnectError" in closed
    assert all(URL_TOKEN not in line for line in rep.lines)


# ------------------------------------------------------------ real outcomes of the flow

INVENTORY = """
hosts: [{name: web1, address: 10.0.0.5, user: deploy, root: /srv/app}]
app: {name: app, repo: .}  # the fake host runs PM2 processes named app
process: {command: server.js, port: 3000, instances: 2}
health: {deadline: 5, interval: 0.5, successes: 3}
"""
PACK = """
version: 1
name: contract
checks:
  - name: items-list
    request: {path: /api/items}
    expect: {status: 200, schema: {type: object, required: [items]}}
"""


def fake_world(tmp_path: Path, app_repo: Path) -> tuple[Deps, FakeRemote, Path]:
    """The fake host of test_flow, with a contract pack in the gate: a release whose fault
    starts with `wrong_contract` answers /api/items in the wrong shape."""
    pack = tmp_path / "contract.yml"
    pack.write_text(textwrap.dedent(PACK))
    inv = parse(
        INVENTORY + f"smoke: {{packs: [{pack}]}}\n",
        source=tmp_path / "inventories" / "prod.yml",
        env="prod",
    )
    clock = FakeClock()
    remote = FakeRemote(FakeHost(), clock)
    app = app_handler(remote)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/items":
            broken = remote.host.fault_of_running().startswith("wrong_contract")
            return httpx.Response(200, json={"data": []} if broken else {"items": []})
        return app.handle_request(request)

    deps = Deps(
        inventory=inv,
        remote=remote,
        reporter=RecordingReporter(),
        clock=clock,
        actor="tester",
        workdir=tmp_path / "work",
        http=lambda base, timeout: httpx.Client(
            base_url=base, transport=httpx.MockTransport(handle)
        ),
        redact=Redactor([CANARY]),
    )
    return deps, remote, app_repo


@pytest.fixture
def world(tmp_path: Path, app_repo: Path) -> tuple[Deps, FakeRemote, Path]:
    return fake_world(tmp_path, app_repo)


def ship(deps: Deps, remote: FakeRemote, repo: Path, fault: str = "") -> Outcome:
    remote.next_fault = fault
    (repo / "version.txt").write_text(f"{fault}{len(remote.log)}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release")
    deps.clock.sleep(2)
    return flow.deploy(deps, Source(repo=repo, revision="HEAD"))


def announce_real(deps: Deps, out: Outcome, hs: tuple[notify.Hook, ...]) -> None:
    for h in hs:
        deps.redact.add(*h.secret_values())
    event = notify.event_for(out)
    assert event is not None
    n = notify.Notice(event=event, outcome=out, context=CONTEXT)
    notify.announce(hs, n, reporter=deps.reporter, redact=deps.redact)


def test_outcomes_of_real_deploys_reach_the_receiver(world, receiver: Receiver):
    deps, remote, repo = world
    hs = hooks(
        ("HOOK_URL", "json", ""),
        ("SLACK_URL", "slack", "rolled-back,rollback-failed"),
        timeout=10,  # every delivery is counted below: a busy machine must not lose one
        HOOK_URL=receiver.url(),
        SLACK_URL=receiver.url(f"/slack/{URL_TOKEN}"),
    )
    good = ship(deps, remote, repo)
    assert good.result == "promoted", good.evidence
    announce_real(deps, good, hs)

    # the contract gate fails; the app's log line (forensics) carried a secret value
    bad = ship(deps, remote, repo, fault=f"wrong_contract {CANARY}")
    assert bad.exit_code == 3, bad.evidence
    assert f"log: sampleapp: fault wrong_contract {MASK}" in bad.evidence
    announce_real(deps, bad, hs)

    # the last good release crashes too: the rollback fails, a human is needed
    remote.host.faults[str(good.release)] = "boot_crash"
    worse = ship(deps, remote, repo, fault="ready_503")
    assert worse.result == "rollback-failed" and worse.exit_code == 6
    announce_real(deps, worse, hs)

    promoted, rolled_back, slack_back, failed, slack_failed = receiver.bodies()
    assert promoted["event"] == "promoted" and promoted["release"] == good.release
    assert rolled_back == {
        **rolled_back,
        "event": "rolled-back",
        "exit_code": 3,
        "release": bad.release,
        "live": good.release,
    }
    assert rolled_back["failed_checks"][0].startswith("FAIL  items-list  GET /api/items")
    assert "smoke gate failed" in rolled_back["message"]
    assert "items-list" in slack_back["text"]
    assert failed["event"] == "rollback-failed" and failed["severity"] == "critical"
    assert slack_failed["text"].startswith(":rotating_light: <!channel> *HUMAN NEEDED*")
    for r in receiver.requests:
        assert CANARY not in r["body"] and URL_TOKEN not in r["body"]
    assert MASK in json.dumps(rolled_back["evidence"])
