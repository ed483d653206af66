"""The demo's traffic counter: a steady load on a real local HTTP server, each request on a new
connection, counted as users would see it (answered by which release, or failed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.traffic import Hit, Load, Tally, check_target, final_run_start, tail_is


class Release:
    """What the server answers: a release id, or an error status."""

    def __init__(self) -> None:
        self.answer: str | int = "r1"


@pytest.fixture
def server() -> Iterator[tuple[int, Release]]:
    release = Release()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if isinstance(release.answer, int):
                self.send_response(release.answer)
                self.end_headers()
                return
            body = json.dumps({"release": release.answer}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], release
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_load_counts_what_users_saw(server: tuple[int, Release]) -> None:
    port, release = server
    with Load("127.0.0.1", port, "/version", rate=100, max_seconds=10) as load:
        assert load.wait_for(tail_is("r1", 10), deadline=5)
        release.answer = 503
        seen = len(load.hits())
        assert load.wait_for(lambda hits: len(hits) >= seen + 10, deadline=5)
        release.answer = "r2"
        assert load.wait_for(tail_is("r2", 10), deadline=5)
    tally = Tally.of(load.hits())
    assert tally.requests == len(load.hits())
    assert tally.failed >= 10  # the 503s
    assert tally.served_by("r1") >= 10 and tally.served_by("r2") >= 10
    assert tally.served_by(None) == 0
    assert tally.failed + sum(tally.by_release.values()) == tally.requests
    start = final_run_start(load.hits(), "r2")
    assert start is not None and start.release == "r2"


def test_a_refused_connection_is_a_failed_request() -> None:
    with Load("127.0.0.1", 9, "/", rate=50, max_seconds=1, timeout=1) as load:
        assert load.wait_for(lambda hits: len(hits) >= 3, deadline=5)
    tally = Tally.of(load.hits())
    assert tally.failed == tally.requests >= 3
    assert all(h.status is None and h.error for h in load.hits())


def test_only_loopback_and_private_targets() -> None:
    check_target("10.231.5.2")
    check_target("127.0.0.1")
    with pytest.raises(ValueError, match="neither loopback nor private"):
        check_target("8.8.8.8")


def test_tally_of_nothing() -> None:
    assert Tally.of([]) == Tally(0, 0, {})
    assert Tally.of([Hit(0, 1, 200, None)]).by_release == {}
